"""scripts/walkthrough.py and docs/walkthrough.md: the script draws its pictures and prints the stage shapes for a tiny
pipeline and data folder; every stage satisfies the closed forms the doc states (forward noising, the x0 estimate, the
DDIM step, latent scaling, classifier-free guidance computed from the UNet and the ID table directly); the input is a
held-out file read with the LDM run's data options; bad inputs are one line naming the option; every line anchor of
the doc still spans the function it names; and every preset shape in the doc is one that ldm.shapes traces."""
import ast
import dataclasses
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.conditioning import ConditionedUNet, UserIDEmbedder
from ldm.splits import make_split, write_split
from ldm.ddpm import DDPMScheduler
from ldm.pipeline import Pipeline
from ldm.shapes import build_model, example_inputs, trace
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from ldm.vq import VQConfig, VQModel
from tests.helpers import perturb_

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: thread hand-offs cost more than they save

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("walkthrough", ROOT / "scripts" / "walkthrough.py")
walkthrough = sys.modules["walkthrough"] = importlib.util.module_from_spec(spec)   # dataclasses look it up there
spec.loader.exec_module(walkthrough)

USERS = {"ann": 0, "ben": 1, "cat": 2}
LATENT = 8                       # the UNet's sample_size; the tiny autoencoders have f = 2, so images are 16x16
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                clip_sample=False, steps_offset=1)


def tiny_pipeline(autoencoder: str = "kl", prediction_type: str = "epsilon") -> Pipeline:
    torch.manual_seed(0)
    if autoencoder == "kl":
        vae = AutoencoderKL(dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1,
                                                scaling_factor=0.7, shift_factor=0.2))
    else:
        vae = VQModel(dataclasses.replace(VQConfig.preset("tiny"), in_channels=1, out_channels=1, scaling_factor=0.9))
    unet = UNet2DConditionModel(dataclasses.replace(UNetConfig.preset("tiny"), sample_size=LATENT,
                                                    in_channels=vae.latent_channels, out_channels=vae.latent_channels,
                                                    num_class_embeds=len(USERS) + 1))
    perturb_(unet), perturb_(vae)
    embedder = UserIDEmbedder(len(USERS), 32, 4, "both", USERS)
    perturb_(embedder, seed=1)
    return Pipeline(ConditionedUNet(unet, embedder).eval(), vae.eval(),
                    DDPMScheduler(**SCHEDULE, prediction_type=prediction_type))


def make_run(tmp_path: Path, pipe: Pipeline, side: int = 24) -> tuple[Path, Path, dict]:
    """tmp_path/data: 4 dB spectrograms (side x side .npy) per user; tmp_path/run: pipeline/ and the split beside it."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name in USERS:
        (data / name).mkdir(parents=True)
        for i in range(4):
            np.save(data / name / f"{i:04d}.npy", rng.uniform(-70, 0, (side, side)).astype(np.float32))
    split = make_split(data, test_fraction=0.25, val_fraction=0.0)
    run = tmp_path / "run"
    pipe.save_pretrained(run / "pipeline")
    write_split(run / "split.json", split)
    return run / "pipeline", data, split


def printed_table(text: str) -> dict[str, tuple[str, str]]:
    """The script's stage table -> {stage: (shape, what)}."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"(\S+)\s+(\(\d+(?:, \d+)*\))\s+(.*)$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


@pytest.mark.parametrize("autoencoder", ["kl", "vq"])
def test_the_script_draws_both_pictures_and_prints_every_stage_shape(tmp_path, capsys, autoencoder):
    pipe = tiny_pipeline(autoencoder)
    pipeline, data, split = make_run(tmp_path, pipe)
    out = tmp_path / "pictures" / "walk.png"
    code = walkthrough.main(["--pipeline", str(pipeline), "--data", str(data), "--user", "ben", "--t", "400",
                             "--levels", "50,950", "--out", str(out)])
    assert code == 0
    rows = printed_table(capsys.readouterr().out)
    cz = pipe.vae.latent_channels
    image, latent = str((1, 1, 16, 16)), str((1, cz, LATENT, LATENT))
    assert {name: shape for name, (shape, _) in rows.items()} == {
        "x": image, "z": latent, "D(z)": image, "eps": latent, "z_t": latent, "eps_hat": latent, "x0_hat": latent,
        "z_prev": latent, "D(x0_hat)": image}
    test_files = [f for f in split["test"] if f.startswith("ben/")]
    assert rows["x"][1] == f"test file {test_files[0]}"            # a held-out file of the requested user
    assert "t = 400 -> t' = 380" in rows["z_prev"][1]               # 50 DDIM steps: t' = t - 1000 / 50
    for picture in (out, tmp_path / "pictures" / "walk_levels.png"):
        with Image.open(picture) as figure:
            assert figure.format == "PNG" and figure.mode == "RGB"


def test_the_input_is_a_held_out_file_read_with_the_ldm_runs_data_options(tmp_path):
    pipe = tiny_pipeline()
    pipeline, data, split = make_run(tmp_path, pipe, side=16)          # the pipeline's size: no resizing
    (pipeline.parent / "config.json").write_text(json.dumps(
        {"script": "train_ldm.py", "npy_scale": "db", "dynamic_range": 20.0, "db_reference": "max",
         "colormap": "none", "resize": "resize", "lr": 1e-4}))
    cfg = walkthrough.WalkthroughConfig(pipeline=str(pipeline), data=str(data), user="2")
    x, user, file = walkthrough.held_out_file(cfg, pipe)
    assert user == 2 and file in split["test"] and file.startswith("cat/")
    db = np.load(data / file)
    expected = np.clip(db - db.max(), -20, 0) / 20 * 2 + 1                # 20 dB below the image max -> -1
    np.testing.assert_allclose(x.numpy(), expected[None, None], atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_every_stage_satisfies_the_closed_forms_of_the_doc(prediction_type):
    pipe = tiny_pipeline(prediction_type=prediction_type)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    user, t, steps, w = 2, 600, 25, 2.5
    s = walkthrough.walk(pipe, x, user, t, steps, w, torch.Generator().manual_seed(0))

    # alpha-bar from the scaled-linear betas, in float64, independently of ldm.ddpm
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1 - betas)
    a, a_prev = alpha_bar[t], alpha_bar[t - 1000 // steps]

    with torch.no_grad():
        mean = pipe.vae.encode(x).mean
        torch.testing.assert_close(s["z"], (mean - 0.2) * 0.7)                                  # LDM section 4.3.2
        torch.testing.assert_close(s["eps"], torch.randn(s["z"].shape, generator=torch.Generator().manual_seed(0)))
        torch.testing.assert_close(s["z_t"], math.sqrt(a) * s["z"] + math.sqrt(1 - a) * s["eps"])

        # classifier-free guidance from the UNet and the ID table directly (route "both": tokens and class label)
        table, null = pipe.embedder.embedding, pipe.embedder.null_id
        def unet(label):
            return pipe.unet(s["z_t"], torch.tensor([t]), encoder_hidden_states=table[[label]],
                             class_labels=torch.tensor([label]))
        guided = unet(null) + w * (unet(user) - unet(null))

    # the (eps_hat, x0_hat) pair reproduces z_t, and is what the model output means for its prediction type
    torch.testing.assert_close(s["z_t"], math.sqrt(a) * s["x0_hat"] + math.sqrt(1 - a) * s["eps_hat"])
    expected_output = {"epsilon": s["eps_hat"], "sample": s["x0_hat"],
                       "v_prediction": math.sqrt(a) * s["eps_hat"] - math.sqrt(1 - a) * s["x0_hat"]}
    torch.testing.assert_close(guided, expected_output[prediction_type], rtol=1e-4, atol=1e-5)
    # DDIM with eta = 0 (Song et al. 2021, Eq. (12)), and the error identity the doc uses
    torch.testing.assert_close(s["z_prev"], math.sqrt(a_prev) * s["x0_hat"] + math.sqrt(1 - a_prev) * s["eps_hat"])
    assert float((s["x0_hat"] - s["z"]).norm()) == pytest.approx(
        math.sqrt((1 - a) / a) * float((s["eps_hat"] - s["eps"]).norm()), rel=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(s["D(x0_hat)"], pipe.vae.decode(s["x0_hat"] / 0.7 + 0.2).clamp(-1, 1))


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "walk.png"
    assert walkthrough.main(["--pipeline", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pipeline") and "run make demo first" in err and err.count("\n") == 1

    pipeline, data, _ = make_run(tmp_path, tiny_pipeline())
    for flags, named in [(["--file", "5"], "--file 5"), (["--t", "1000"], "--t 1000"),
                         (["--user", "dan"], "--user: unknown user 'dan'"), (["--levels", "10,x"], "--levels"),
                         (["--levels", "10,1000"], "--levels 1000")]:
        code = walkthrough.main(["--pipeline", str(pipeline), "--data", str(data), "--out", str(out), *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and named in err and err.count("\n") == 1, (flags, err)
    assert not out.exists()


ANCHOR = re.compile(r"\[([^\]]+)\]\((\.\./[^)#\s]+)(?:#L(\d+)-L(\d+))?\)")


def test_every_code_link_of_the_doc_points_at_what_it_names():
    doc = ROOT / "docs" / "walkthrough.md"
    links = ANCHOR.findall(doc.read_text(encoding="utf-8"))
    anchored = [link for link in links if link[2]]
    assert len(anchored) >= 8
    for text, target, first, last in links:
        path = (doc.parent / target).resolve()
        assert path.is_file(), f"{target} does not exist"
        if not first:
            continue
        source = path.read_text(encoding="utf-8")
        first, last = int(first), int(last)
        assert 1 <= first <= last <= len(source.splitlines()), f"{target}#L{first}-L{last}: past the end of the file"
        names = re.findall(r"`([\w.]+)", text)
        assert names, f"link text {text!r} names no function in backticks"
        name = names[0].split(".")[-1]
        defined = {node.lineno: node for node in ast.walk(ast.parse(source))
                   if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        fix = "; python scripts/update_anchors.py docs/walkthrough.md re-points the links"
        assert first in defined and defined[first].name == name, f"{target}#L{first}: not the definition of {name}{fix}"
        assert last == defined[first].end_lineno, \
            f"{target}#L{first}-L{last}: {name} ends on line {defined[first].end_lineno}{fix}"


def test_the_docs_preset_shapes_are_those_ldm_shapes_traces():
    text = (ROOT / "docs" / "walkthrough.md").read_text(encoding="utf-8")
    table = text[text.index("The same stages for the `microdoppler` presets"):text.index("## 1.")]
    claimed = set(re.findall(r"\(\d+(?:, \d+)+\)", table))
    assert len(claimed) >= 6
    traced = set()
    for kind, batch in [("vae", 1), ("unet", 1), ("unet", 2)]:        # batch 2: the guided call
        model = build_model(kind, "microdoppler")                      # on the meta device: shapes only
        args, kwargs = example_inputs(model, batch=batch)
        for row in trace(model, *args, **kwargs):
            traced |= set(re.findall(r"\(\d+(?:, \d+)+\)", " ".join(map(str, row.inputs + row.outputs))))
    assert claimed <= traced, f"not in any traced module's shapes: {sorted(claimed - traced)}"
