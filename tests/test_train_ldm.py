"""train_ldm.py end to end on a tiny labelled folder and a tiny random VAE: smoke runs per route and prediction type,
the exported pipeline in diffusers, exact resume, and every bad-input case."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers import DDPMScheduler as RefDDPMScheduler
from diffusers import UNet2DConditionModel as RefUNet
from PIL import Image

import train_ldm
from ldm import io, logs, training
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from tests.helpers import png_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two users x 5 random 16x16 grayscale PNGs."""
    return png_folder(tmp_path_factory.mktemp("pngs"), per_user=5, size=16)


def save_vae(path: Path, scaling_factor: float | None = 0.5) -> Path:
    torch.manual_seed(0)
    config = dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1, sample_size=16)
    AutoencoderKL(config).save_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    if scaling_factor is None:
        del raw["scaling_factor"]
    else:
        raw["scaling_factor"] = scaling_factor
    (path / "config.json").write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return save_vae(tmp_path_factory.mktemp("vae") / "model")


def args(data, vae, out, *extra):
    return ["--data", str(data), "--vae", str(vae), "--out", str(out), "--preset", "tiny", "--batch-size", "2",
            "--val-fraction", "0.2", "--no-progress", "--sample-steps", "2", "--sample-per-user", "1", *extra]


@pytest.mark.parametrize("cond, prediction", [("cross", "epsilon"), ("class", "epsilon"), ("both", "v_prediction")])
def test_two_step_smoke_run_exports_a_pipeline_diffusers_loads(folder, vae, tmp_path, cond, prediction):
    out = tmp_path / "run"
    extra = ("--min-snr-gamma", "5") if prediction == "v_prediction" else ()
    assert train_ldm.main(args(folder, vae, out, "--steps", "2", "--cond", cond, "--prediction", prediction,
                               *extra)) == 0
    for name in ("checkpoint.pt", "log.jsonl", "loss.png", "class_to_idx.json", "samples/step_000002.png",
                 "pipeline/model_index.json", "pipeline/embedder/config.json"):
        assert (out / name).is_file(), name
    assert Image.open(out / "samples/step_000002.png").size == (2 + 1 * 18, 2 + 2 * 18)   # one row per user
    parts = io.load_pipeline(out / "pipeline")
    assert parts["embedder"].class_to_idx == {"alice": 0, "bob": 1} and parts["embedder"].route == cond
    assert parts["unet"].config.num_class_embeds == (None if cond == "cross" else 3)
    assert parts["scheduler"].config.prediction_type == prediction

    ref_unet = RefUNet.from_pretrained(out / "pipeline" / "unet").eval()
    ref_vae = RefAutoencoderKL.from_pretrained(out / "pipeline" / "vae").eval()
    ref_scheduler = RefDDPMScheduler.from_pretrained(out / "pipeline" / "scheduler")
    assert ref_vae.config.scaling_factor == 0.5
    assert ref_scheduler.config.prediction_type == prediction
    torch.testing.assert_close(ref_scheduler.alphas_cumprod, parts["scheduler"].alphas_cumprod, rtol=0, atol=0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    context = parts["embedder"](torch.tensor([0, 2]))
    labels = None if cond == "cross" else torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(parts["unet"](x, t, context, labels),
                                   ref_unet(x, t, context, class_labels=labels).sample, rtol=1e-5, atol=1e-5)
        image = torch.rand(1, 1, 16, 16) * 2 - 1
        torch.testing.assert_close(parts["vae"](image)[0], ref_vae(image).sample, rtol=1e-5, atol=1e-5)


def test_resume_is_bitwise_exact_and_the_latent_cache_changes_nothing(folder, vae, tmp_path):
    common = ("--steps", "4", "--checkpoint-every", "2", "--log-every", "1", "--sample-every", "100")
    assert train_ldm.main(args(folder, vae, tmp_path / "straight", *common)) == 0
    assert train_ldm.main(args(folder, vae, tmp_path / "split", "--steps", "2", "--log-every", "1",
                               "--sample-every", "100")) == 0
    assert train_ldm.main(args(folder, vae, tmp_path / "split", *common, "--resume", str(tmp_path / "split"))) == 0
    assert train_ldm.main(args(folder, vae, tmp_path / "cached", *common, "--cache-latents")) == 0
    a, b = training.load_checkpoint(tmp_path / "straight"), training.load_checkpoint(tmp_path / "split")
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    losses = lambda run: [r["loss"] for r in logs.JsonlLog(tmp_path / run / "log.jsonl").read() if "loss" in r]
    assert len(losses("straight")) == 4 and losses("straight") == losses("split")
    evals = lambda run: [r for r in logs.JsonlLog(tmp_path / run / "log.jsonl").read() if r.get("eval")]
    assert evals("straight")[-1] == evals("split")[-1] and evals("straight")[-1]["step"] == 4
    np.testing.assert_allclose(losses("cached"), losses("straight"), rtol=1e-4)


def test_ddp_with_two_cpu_processes_matches_one_process(folder, vae, tmp_path):
    """Each image draws its posterior noise, ID dropout, diffusion noise and timestep from its own generator, so two
    processes with batch 2 train what one process with batch 4 trains (up to the gradient all-reduce's rounding)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = ["--steps", "3", "--log-every", "1", "--sample-every", "100", "--device", "cpu", "--p-uncond", "0.5"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29534", str(ROOT / "train_ldm.py"),
                          *args(folder, vae, tmp_path / "ddp", *common)], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    single_args = args(folder, vae, tmp_path / "single", *common)
    single_args[single_args.index("--batch-size") + 1] = "4"        # the same global batch in one process
    assert train_ldm.main(single_args) == 0
    losses = lambda run: [r["loss"] for r in logs.JsonlLog(tmp_path / run / "log.jsonl").read()   # noqa: E731
                          if "loss" in r]
    assert len(losses("single")) == 3
    np.testing.assert_allclose(losses("ddp"), losses("single"), rtol=1e-4)


def test_vae_without_scaling_factor_is_refused_unless_measured(folder, tmp_path):
    vae = save_vae(tmp_path / "unscaled", scaling_factor=None)
    out = tmp_path / "run"
    assert train_ldm.main(args(folder, vae, out, "--steps", "1")) == 2
    assert not out.exists()
    assert train_ldm.main(args(folder, vae, out, "--steps", "1", "--scaling-factor", "auto", "--posterior", "mean",
                               "--sample-every", "100")) == 0
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 127.5 - 1)[None]
                     for p in sorted(folder.glob("*/*.png")) if p.stem in {"0", "1", "2", "3"}])
    with torch.no_grad():                                    # 4 of 5 per user train (val 0.2): compare loosely
        scale = 1 / io.load_pretrained(vae).encode(x).mean.std()
    stored = json.loads((out / "pipeline" / "vae" / "config.json").read_text())["scaling_factor"]
    assert abs(stored - float(scale)) / float(scale) < 0.2


def test_bad_inputs_are_one_line_errors_and_write_nothing(folder, vae, tmp_path, capsys):
    # a UNet whose latent channels do not match the VAE's
    config = dataclasses.replace(UNetConfig.preset("tiny"), in_channels=3, out_channels=3, num_class_embeds=3)
    UNet2DConditionModel(config).save_pretrained(tmp_path / "unet3")
    out = tmp_path / "run"
    assert train_ldm.main(args(folder, vae, out, "--steps", "1", "--init-unet", str(tmp_path / "unet3"))) == 2
    assert "latent channels" in capsys.readouterr().err and not out.exists()
    # a folder that is not a VAE
    assert train_ldm.main(args(folder, tmp_path / "unet3", out, "--steps", "1")) == 2
    assert "UNet2DConditionModel" in capsys.readouterr().err and not out.exists()
    # resuming on data with a user the ID map does not know
    assert train_ldm.main(args(folder, vae, out, "--steps", "1", "--sample-every", "100")) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    grown = tmp_path / "grown"
    shutil.copytree(folder, grown)
    shutil.copytree(folder / "bob", grown / "carol")
    capsys.readouterr()
    assert train_ldm.main(args(grown, vae, out, "--steps", "2", "--resume", str(out))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "carol" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_split_is_decided_once_and_no_stage_trains_on_its_test_files(folder, tmp_path, monkeypatch, capsys):
    """train_vae.py decides the split; train_ldm.py on that VAE run reuses it whatever split options it is given,
    and neither loads a held-out test file for training; a split of another folder or one whose test files are
    also training files is refused before anything is written."""
    import train_vae
    from ldm.splits import make_split, read_split, write_split
    loaded = []

    class Recording(train_ldm.SpectrogramFolder):
        def __init__(self, root, subset=None, **kwargs):
            loaded.append(subset)
            super().__init__(root, subset=subset, **kwargs)

    monkeypatch.setattr(train_vae, "SpectrogramFolder", Recording)
    monkeypatch.setattr(train_ldm, "SpectrogramFolder", Recording)
    vae_run, ldm_run = tmp_path / "vae", tmp_path / "ldm"
    assert train_vae.main(["--data", str(folder), "--out", str(vae_run), "--preset", "tiny", "--size", "16",
                           "--steps", "1", "--batch-size", "2", "--disc-weight", "0", "--no-eval-classifier",
                           "--no-progress", "--holdout-fraction", "0.2", "--val-fraction", "0.2"]) == 0
    split = read_split(vae_run)
    assert len(split["test"]) == 2 and len(split["train"]) == 6           # one test file per user
    assert train_ldm.main(args(folder, vae_run, ldm_run, "--steps", "1", "--sample-every", "100",
                               "--holdout-fraction", "0.6", "--seed", "5")) == 0
    assert read_split(ldm_run) == split                                  # reused, not decided again
    assert train_ldm.main(args(folder, vae_run / "model", tmp_path / "ldm2", "--steps", "1", "--sample-every",
                               "100")) == 0
    assert read_split(tmp_path / "ldm2") == split                        # also found from the run's model/
    assert loaded and all(subset is not None and not set(subset) & set(split["test"]) for subset in loaded)
    capsys.readouterr()

    other = tmp_path / "other"                                           # the same users, one file more
    shutil.copytree(folder, other)
    shutil.copy(folder / "bob" / "0.png", other / "bob" / "extra.png")
    assert train_ldm.main(args(other, vae_run, tmp_path / "x", "--steps", "1")) == 2
    assert "not the data folder the split was made for" in capsys.readouterr().err
    leaky = {**make_split(folder, test_fraction=0.2)}
    leaky["train"] = leaky["train"] + leaky["test"]
    write_split(tmp_path / "leaky.json", leaky)
    assert train_ldm.main(args(folder, vae_run, tmp_path / "y", "--steps", "1", "--split",
                               str(tmp_path / "leaky.json"))) == 2
    assert "both in test and in train/val" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_non_square_images_train_both_stages_and_export_what_diffusers_loads(tmp_path):
    """40x16 files fitted into 32x16 (--resize pad keeps their aspect ratio): train_vae.py writes sample_size
    [32, 16] as diffusers does for a non-square model, train_ldm.py takes its image size from there, and the
    pipeline's UNet says [16, 8] (its latents); diffusers loads both models and computes what ours do."""
    import train_vae
    rng = np.random.default_rng(0)
    for user in ("alice", "bob"):
        (tmp_path / "data" / user).mkdir(parents=True)
        for i in range(5):
            Image.fromarray((rng.random((40, 16)) * 255).astype(np.uint8)).save(tmp_path / "data" / user / f"{i}.png")
    vae_run, ldm_run = tmp_path / "vae", tmp_path / "ldm"
    assert train_vae.main(["--data", str(tmp_path / "data"), "--out", str(vae_run), "--preset", "tiny", "--size",
                           "32x16", "--resize", "pad", "--steps", "2", "--batch-size", "2", "--disc-start", "1",
                           "--disc-layers", "2", "--val-fraction", "0.2", "--eval-images", "4", "--no-progress",
                           "--no-eval-classifier"]) == 0
    assert json.loads((vae_run / "model" / "config.json").read_text())["sample_size"] == [32, 16]
    assert Image.open(vae_run / "samples" / "step_000002.png").size == (2 + 2 * 18, 2 + 2 * 34)   # 2 val images
    assert train_ldm.main(args(tmp_path / "data", vae_run, ldm_run, "--steps", "2", "--resize", "pad")) == 0
    assert json.loads((ldm_run / "config.json").read_text())["size"] == "32x16"
    assert json.loads((ldm_run / "pipeline" / "unet" / "config.json").read_text())["sample_size"] == [16, 8]
    assert json.loads((ldm_run / "pipeline" / "vae" / "config.json").read_text())["sample_size"] == [32, 16]
    assert Image.open(ldm_run / "samples" / "step_000002.png").size == (2 + 18, 2 + 2 * 34)      # one row per user
    parts = io.load_pipeline(ldm_run / "pipeline")
    ref_unet = RefUNet.from_pretrained(ldm_run / "pipeline" / "unet").eval()
    ref_vae = RefAutoencoderKL.from_pretrained(ldm_run / "pipeline" / "vae").eval()
    x, t = torch.randn(2, 4, 16, 8), torch.tensor([3, 700])
    context, labels = parts["embedder"](torch.tensor([0, 2])), torch.tensor([0, 2])
    image = torch.rand(1, 1, 32, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(parts["unet"](x, t, context, labels),
                                   ref_unet(x, t, context, class_labels=labels).sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(parts["vae"](image)[0], ref_vae(image).sample, rtol=1e-5, atol=1e-5)
