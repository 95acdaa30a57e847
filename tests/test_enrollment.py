"""ldm.enrollment and enroll.py: new people learned from k shots with the base frozen (base weights torch.equal before
and after, and equal in the new pipeline and its folder, which diffusers' UNet reads); the provenance of every
pipeline through train_ldm.py, enroll.py, sample.py and evaluate.py, and its refusals; and an enrolled person's
samples recognised by a classifier trained only on that person's held-out files, on a briefly trained pipeline."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel as RefUNet
from PIL import Image

import enroll as enroll_script
import evaluate
import sample
import train_ldm
from ldm.conditioning import ConditionedUNet, UserIDEmbedder
from ldm.splits import files_digest, make_split, write_split
from ldm.ddpm import DDPMScheduler
from ldm.diffusion_loss import diffusion_loss
from ldm.enrollment import EnrollConfig, enroll, grown_denoiser
from ldm.pipeline import PROVENANCE_NAME, Pipeline, check_provenance, file_record
from ldm.radar.simulator import simulate_dataset
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from tests.helpers import perturb_

BASE = {"alice": 0, "bob": 1, "carol": 2}
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                clip_sample=False, steps_offset=1)
FAST = EnrollConfig(steps=6, batch_size=4, lr=5e-2)


def tiny_pipeline(route: str = "both", provenance: dict | None = None) -> Pipeline:
    """Three people, random weights, 16x16 images (8x8x4 latents)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1, sample_size=16,
                                            scaling_factor=0.5))
    unet = UNet2DConditionModel(dataclasses.replace(UNetConfig.preset("tiny"), sample_size=8,
                                                    num_class_embeds=None if route == "cross" else len(BASE) + 1))
    perturb_(unet), perturb_(vae)
    embedder = UserIDEmbedder(len(BASE), 32, 4, route, BASE)
    return Pipeline(ConditionedUNet(unet, embedder).eval(), vae.eval(), DDPMScheduler(**SCHEDULE), provenance)


def shots_of(names, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shots = {name: torch.rand(k, 1, 16, 16, generator=g) * 2 - 1 for name in names}
    return shots, {name: [f"{name}/{i:02d}.png" for i in range(k)] for name in names}


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# Enrolment changes only the new rows
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["both", "cross", "class"])
def test_enrolment_learns_only_the_new_rows_and_leaves_the_base_bit_identical(route, tmp_path):
    base = tiny_pipeline(route)
    before, vae_before = state(base.denoiser), state(base.vae)
    shots, sources = shots_of(["zoe", "dan"])
    new = enroll(base, shots, sources, FAST, progress=False)

    # the base pipeline is untouched
    assert all(torch.equal(before[k], v) for k, v in base.denoiser.state_dict().items())
    assert all(torch.equal(vae_before[k], v) for k, v in base.vae.state_dict().items())
    assert base.users == ["alice", "bob", "carol"]
    # old people keep their IDs, new ones follow in name order, the null ID is last
    assert new.users == ["alice", "bob", "carol", "dan", "zoe"] and new.embedder.null_id == 5
    after = new.denoiser.state_dict()
    tables = {"embedder.embedding", "unet.class_embedding.weight"}
    assert set(after) == set(before)
    for key, value in before.items():
        if key not in tables:
            assert torch.equal(after[key], value), key                  # every UNet weight, bit for bit
    assert all(torch.equal(v, vae_before[k]) for k, v in new.vae.state_dict().items())
    read = {"both": tables, "cross": {"embedder.embedding"}, "class": {"unet.class_embedding.weight"}}[route]
    for key in tables & set(before):
        old, grown = before[key], after[key]
        assert grown.shape[0] == old.shape[0] + 2
        assert torch.equal(grown[:3], old[:3]) and torch.equal(grown[-1], old[-1])   # old rows, the null row
        if key in read:
            assert not torch.equal(grown[3], old[:3].mean(0))          # the new rows trained off their start
            assert not torch.equal(grown[3], grown[4])                 # ... each towards its own shots
        else:                                                          # the "class" route never reads the tokens
            assert torch.equal(grown[3], old[:3].mean(0)) and torch.equal(grown[4], old[:3].mean(0))

    # the old people's samples are the base pipeline's, to the bit
    old_images = base.generate([0, 2], 2, steps=3, seed=1, progress=False)
    new_images = new.generate([0, 2], 2, steps=3, seed=1, progress=False)
    assert all(torch.equal(old_images[u], new_images[u]) for u in (0, 2))


def test_the_enrolled_folder_loads_in_ldm_and_in_diffusers_with_the_base_weights(tmp_path):
    base = tiny_pipeline(provenance={"trained_on": file_record(["alice/1.png", "bob/2.png"]), "enrolled": {}})
    base.save_pretrained(tmp_path / "base")
    shots, sources = shots_of(["zoe"])
    new = enroll(Pipeline.from_pretrained(tmp_path / "base"), shots, sources, FAST, progress=False)
    new.save_pretrained(tmp_path / "new")
    loaded = Pipeline.from_pretrained(tmp_path / "new")
    assert loaded.users == ["alice", "bob", "carol", "zoe"] and loaded.provenance == new.provenance

    for file in ("vae/diffusion_pytorch_model.safetensors", "vae/config.json", "scheduler/scheduler_config.json"):
        assert (tmp_path / "new" / file).read_bytes() == (tmp_path / "base" / file).read_bytes(), file
    # diffusers' UNet reads the grown folder; its output for the new person equals ours
    ref = RefUNet.from_pretrained(tmp_path / "new", subfolder="unet").eval()
    base_ref = RefUNet.from_pretrained(tmp_path / "base", subfolder="unet").eval()
    assert ref.config.num_class_embeds == 5
    base_weights = base_ref.state_dict()
    for key, value in ref.state_dict().items():
        if key != "class_embedding.weight":
            assert torch.equal(value, base_weights[key]), key
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700])
    table = loaded.embedder.embedding.detach()
    ids = torch.tensor([3, 4])                                          # zoe, the null ID
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=table[ids], class_labels=ids).sample
        ours = loaded.denoiser(x, t, ids)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_a_low_rank_adapter_changes_only_the_cross_attention_keys_and_values_by_rank_r():
    base = tiny_pipeline()
    before = state(base.denoiser)
    shots, sources = shots_of(["zoe"])
    new = enroll(base, shots, sources, dataclasses.replace(FAST, lora_rank=2), progress=False)
    after = new.denoiser.state_dict()
    adapted = [k for k in before if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    assert adapted
    for key, value in before.items():
        if key in adapted:
            change = after[key] - value
            assert 0 < torch.linalg.matrix_rank(change.double(), rtol=1e-6) <= 2, key
        elif key not in ("embedder.embedding", "unet.class_embedding.weight"):
            assert torch.equal(after[key], value), key
    assert new.provenance["enrolled"]["zoe"]["lora_rank"] == 2


def test_bad_shots_are_refused_in_one_line():
    base = tiny_pipeline()
    shots, sources = shots_of(["zoe"])
    cases = [
        (({"bob": shots["zoe"]}, {"bob": sources["zoe"]}), "'bob' is already a person of the base pipeline"),
        (({"zoe": shots["zoe"][:, :, :8]}, sources), r"expected \(k, 1, 16, 16\), the pipeline's image size"),
        (({"zoe": shots["zoe"] * 3}, sources), r"in \[-1, 1\]"),
        ((shots, {"zoe": sources["zoe"][:2]}), "expected the 3 distinct file names"),
        ((shots, {"eve": sources["zoe"]}), "must name the same people"),
        (({}, {}), "at least one new person"),
    ]
    for (s, src), message in cases:
        with pytest.raises(ValueError, match=message) as error:
            enroll(base, s, src, FAST, progress=False)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="steps >= 1"):
        EnrollConfig(steps=0)


# ----------------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------------


def test_provenance_refuses_a_generator_that_saw_a_test_file_or_more_shots_than_allowed():
    base = tiny_pipeline(provenance={"trained_on": file_record(["alice/00.png", "bob/03.png"]), "enrolled": {}})
    shots, sources = shots_of(["zoe"], k=4)
    new = enroll(base, shots, sources, FAST, progress=False)
    record = new.provenance["enrolled"]["zoe"]
    assert record["files"] == sorted(sources["zoe"]) and record["sha256"] == files_digest(sources["zoe"])
    assert new.provenance["trained_on"] == base.provenance["trained_on"]

    check_provenance(new.provenance, {"alice/01.png", "zoe/07.png"}, {"zoe": 4})     # fair: passes
    with pytest.raises(ValueError, match=r"saw the test file bob/03.png \(trained on it\)"):
        check_provenance(new.provenance, {"bob/03.png", "zoe/07.png"}, None)
    with pytest.raises(ValueError, match=r"saw the test file zoe/02.png \(enrolled zoe from it\)"):
        check_provenance(new.provenance, {"zoe/02.png"}, {"zoe": 4})
    with pytest.raises(ValueError, match=r"saw 4 files of the scored person zoe \(e.g. zoe/00.png\), more than the "
                                         r"2 the scored method may see"):
        check_provenance(new.provenance, set(), {"zoe": 2})
    with pytest.raises(ValueError, match=r"saw 1 files of the scored person alice \(e.g. alice/00.png\)"):
        check_provenance(new.provenance, set(), {"alice": 0})          # a base person trained the generator
    with pytest.raises(ValueError, match="provenance is unknown"):
        check_provenance(None, set(), None)
    again = enroll(new, *shots_of(["amy"], k=2), FAST, progress=False)     # a second enrolment keeps the first's
    assert again.users[-2:] == ["zoe", "amy"] and set(again.provenance["enrolled"]) == {"zoe", "amy"}
    with pytest.raises(ValueError, match=r"saw the test file zoe/01.png \(enrolled zoe from it\)"):
        check_provenance(again.provenance, {"zoe/01.png"}, None)
    unknown_base = enroll(tiny_pipeline(), shots, sources, FAST, progress=False)
    assert unknown_base.provenance["trained_on"] is None
    with pytest.raises(ValueError, match="training files are not recorded"):
        check_provenance(unknown_base.provenance, set(), None)


def test_provenance_is_saved_with_the_folder_and_an_edited_list_is_refused(tmp_path):
    provenance = {"trained_on": file_record(["alice/00.png"]), "enrolled": {}}
    tiny_pipeline(provenance=provenance).save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / PROVENANCE_NAME).read_text()) == provenance
    assert Pipeline.from_pretrained(tmp_path / "p").provenance == provenance
    tiny_pipeline().save_pretrained(tmp_path / "p")                     # no provenance: no stale file left
    assert not (tmp_path / "p" / PROVENANCE_NAME).exists()
    assert Pipeline.from_pretrained(tmp_path / "p").provenance is None
    edited = {"trained_on": {**provenance["trained_on"], "files": ["bob/00.png"]}, "enrolled": {}}
    tiny_pipeline().save_pretrained(tmp_path / "p")
    (tmp_path / "p" / PROVENANCE_NAME).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="does not match its sha256"):
        Pipeline.from_pretrained(tmp_path / "p")


def test_evaluate_says_when_the_generators_provenance_is_unknown(tmp_path, capsys):
    (tmp_path / "samples" / "alice").mkdir(parents=True)
    assert evaluate.generator_provenance(str(tmp_path / "samples"), ["alice/00.png"]) == {"record": None,
                                                                                          "checked": False}
    assert "the provenance of" in capsys.readouterr().err
    (tmp_path / "samples.json").write_text(json.dumps({"provenance": None}))       # a pipeline without one
    assert not evaluate.generator_provenance(str(tmp_path / "samples"), ["alice/00.png"])["checked"]
    provenance = {"trained_on": file_record(["alice/01.png"]), "enrolled": {}}
    (tmp_path / "samples.json").write_text(json.dumps({"provenance": provenance}))
    assert evaluate.generator_provenance(str(tmp_path / "samples"), ["alice/00.png"])["checked"]
    with pytest.raises(ValueError, match=r"saw the test file alice/01.png \(trained on it\)"):
        evaluate.generator_provenance(str(tmp_path / "samples"), ["alice/01.png"])
    enrolled_only = {"trained_on": None, "enrolled": {"eve": file_record(["eve/00.png"])}}   # base without one
    (tmp_path / "samples.json").write_text(json.dumps({"provenance": enrolled_only}))
    capsys.readouterr()
    assert not evaluate.generator_provenance(str(tmp_path / "samples"), ["alice/01.png"])["checked"]
    assert "is unknown" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"saw the test file eve/00.png \(enrolled eve from it\)"):
        evaluate.generator_provenance(str(tmp_path / "samples"), ["eve/00.png"])


def png_people(root, people, per_person: int, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    for person in people:
        (root / person).mkdir(parents=True)
        for i in range(per_person):
            Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(root / person / f"{i:02d}.png")
    return root


def test_the_chain_train_ldm_enroll_sample_evaluate_carries_the_provenance_and_evaluate_refuses(tmp_path, capsys):
    # train_ldm.py records the split's train files (and its VAE's)
    data = png_people(tmp_path / "base_data", ["alice", "bob"], 6)
    vae_dir = tmp_path / "vae"
    torch.manual_seed(0)
    AutoencoderKL(dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1, sample_size=16,
                                      scaling_factor=0.5)).save_pretrained(vae_dir)
    assert train_ldm.main(["--data", str(data), "--vae", str(vae_dir), "--out", str(tmp_path / "run"), "--preset",
                           "tiny", "--steps", "2", "--batch-size", "2", "--no-progress", "--sample-steps", "2",
                           "--sample-per-user", "1"]) == 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    base = Pipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert base.provenance == {"trained_on": file_record(split["train"]), "enrolled": {}}

    # enroll.py: the new people's --shots files are drawn, recorded, and the rest listed as unused
    new_data = png_people(tmp_path / "new_data", ["eve", "zed"], 5, seed=1)
    out = tmp_path / "enrolled"
    assert enroll_script.main(["--pipeline", str(tmp_path / "run" / "pipeline"), "--data", str(new_data), "--out",
                               str(out), "--shots", "2", "--steps", "3", "--batch-size", "2", "--no-progress"]) == 0
    record = json.loads((out / "enroll.json").read_text())
    enrolled = Pipeline.from_pretrained(out / "pipeline")
    assert enrolled.users == ["alice", "bob", "eve", "zed"]
    for person in ("eve", "zed"):
        assert len(record["shots"][person]) == 2 and len(record["unused"][person]) == 3
        assert enrolled.provenance["enrolled"][person]["files"] == record["shots"][person]
    assert enrolled.provenance["trained_on"] == base.provenance["trained_on"]

    # sample.py copies it into its record
    samples = tmp_path / "samples"
    assert sample.main(["--model", str(out / "pipeline"), "--out", str(samples), "--num", "2", "--steps", "2",
                        "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "samples.json").read_text())["provenance"] == enrolled.provenance

    # evaluate.py refuses when a file the generator enrolled eve from is in its test part, naming the file
    real = tmp_path / "real"
    for folder in (data, new_data):
        for person in folder.iterdir():
            (real / person.name).mkdir(parents=True)
            for f in person.iterdir():
                (real / person.name / f.name).write_bytes(f.read_bytes())
    leaky = make_split(real, test_fraction=0.4, val_fraction=0.0, seed=0)
    shot = record["shots"]["eve"][0]
    if shot not in leaky["test"]:                                       # put the shot on the test side
        leaky["train"].remove(shot)
        leaky["test"] = sorted(leaky["test"] + [shot])
    write_split(tmp_path / "leaky.json", leaky)
    capsys.readouterr()
    assert evaluate.main(["--real", str(real), "--split", str(tmp_path / "leaky.json"), "--generated", str(samples),
                          "--out", str(tmp_path / "report.json"), "--size", "16", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert f"the generator saw the test file {shot} (enrolled eve from it)" in error and "\n" not in error
    assert not (tmp_path / "report.json").exists()


def test_enroll_py_draws_the_shots_from_the_train_part_of_a_split(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "base")
    data = png_people(tmp_path / "new", ["eve", "zed"], 8)
    split = make_split(data, test_fraction=0.5, val_fraction=0.0, seed=0)
    write_split(tmp_path / "split.json", split)
    assert enroll_script.main(["--pipeline", str(tmp_path / "base"), "--data", str(data), "--out", str(tmp_path / "o"),
                               "--split", str(tmp_path / "split.json"), "--shots", "3", "--steps", "2",
                               "--no-progress"]) == 0
    provenance = Pipeline.from_pretrained(tmp_path / "o" / "pipeline").provenance
    for person in ("eve", "zed"):
        assert len(provenance["enrolled"][person]["files"]) == 3
        assert set(provenance["enrolled"][person]["files"]) <= set(split["train"])
    check_provenance({**provenance, "trained_on": file_record([])}, set(split["test"]), {"eve": 3, "zed": 3})


def test_enroll_py_refuses_bad_inputs_in_one_line_and_writes_nothing(tmp_path, capsys):
    tiny_pipeline().save_pretrained(tmp_path / "base")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(flat / "0.png")
    few = png_people(tmp_path / "few", ["eve"], 2)
    known = png_people(tmp_path / "known", ["bob"], 4)
    small = png_people(tmp_path / "small", ["eve"], 4, size=8)
    cases = [
        (["--data", str(small)], "is 8x8, smaller than the requested size 16x16"),
        (["--data", str(small), "--resize", "none"], "but resize='none' needs exactly 16x16"),
        (["--data", str(few), "--shots", "3"], "eve has 2 file(s), fewer than --shots 3"),
        (["--data", str(known)], "'bob' is already a person of --pipeline"),
        (["--data", str(flat)], "is a flat folder"),
        (["--data", str(tmp_path / "missing")], "no such folder"),
        (["--data", str(few), "--shots", "2", "--out", str(few / "out")], "which this command reads"),
        ([], "--data is required"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        argv = ["--pipeline", str(tmp_path / "base"), "--out", str(tmp_path / "out"), "--no-progress", *extra]
        assert enroll_script.main(argv) == 2, extra
        error = capsys.readouterr().err.strip()
        assert message in error and error.count("\n") == 0, (extra, error)
        assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# An enrolled person's samples are that person's
# ----------------------------------------------------------------------------------------------------------------

NOVEL = (2, 9)         # two simulated people whose real Doppler profiles a nearest-mean classifier tells apart
SHOTS, SAMPLES = 4, 32


def train_base_pipeline(x: torch.Tensor, y: torch.Tensor, names: list[str], seed: int = 0) -> Pipeline:
    """A tiny pipeline trained briefly on x: (N, 1, 16, 16) in [-1, 1] of people y: a KL VAE (f = 2; MSE and a small
    KL weight) and then an ID-conditioned UNet on its 8x8x4 latents (the LDM loss, 10% null IDs), as train_vae.py
    and train_ldm.py train them, in fewer steps."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1, sample_size=16,
                                            block_out_channels=(16, 32)))
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    for _ in range(150):
        batch = x[torch.randint(len(x), (16,), generator=g)]
        posterior = vae.encode(batch)
        loss = F.mse_loss(vae.decode(posterior.sample(generator=g)), batch) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        mean = vae.encode(x).mean                                       # (N, 4, 8, 8)
    vae.config = dataclasses.replace(vae.config, scaling_factor=float(1 / mean.std()))
    z = vae.scale_latents(mean)
    unet = UNet2DConditionModel(dataclasses.replace(UNetConfig.preset("tiny"), sample_size=8,
                                                    block_out_channels=(16, 32), num_class_embeds=len(names) + 1))
    embedder = UserIDEmbedder(len(names), 32, 4, "both", {name: i for i, name in enumerate(names)})
    denoiser, scheduler = ConditionedUNet(unet, embedder), DDPMScheduler(**SCHEDULE)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=2e-3)
    for _ in range(400):
        idx = torch.randint(len(z), (16,), generator=g)
        loss = diffusion_loss(denoiser, scheduler, z[idx], embedder.drop_ids(y[idx], 0.1, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Pipeline(denoiser.eval().requires_grad_(False), vae, scheduler)


def binomial_threshold(n: int, p: float = 0.5, alpha: float = 0.01) -> int:
    """The smallest c with P(X >= c) < alpha for X ~ Binomial(n, p): more correct answers than chance allows."""
    tail = lambda c: sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(c, n + 1))   # noqa: E731
    return next(c for c in range(n + 1) if tail(c) < alpha)


@pytest.mark.slow
def test_an_enrolled_persons_samples_are_recognised_by_a_classifier_fitted_on_their_held_out_files(one_thread):
    """12 simulated people (classic profile, 16 spectrograms each, 16x16 pixels): a pipeline trained briefly on 10 of
    them; the other two enrolled from their first 4 spectrograms. A nearest-class-mean classifier of the Doppler
    profile (each image's mean over time), fitted on the two people's 12 other spectrograms only, must assign their
    generated samples to the right person more often than chance (one-sided binomial test at 1%). The same pipeline
    with the two new rows before enrolment (identical: the old people's mean) is the control: its samples of either
    person come from one distribution, so it scores chance on average and must not pass."""
    db, labels, meta = simulate_dataset(users=12, per_user=16, size=64, seed=0)
    x = torch.from_numpy(db / meta["radar"]["dynamic_range_db"] * 2 + 1).clamp(-1, 1)[:, None]       # (N, 1, 64, 64)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    y = torch.from_numpy(labels)
    base = [k for k in range(12) if k not in NOVEL]
    keep = torch.isin(y, torch.tensor(base))
    pipe = train_base_pipeline(x[keep], torch.tensor([base.index(int(k)) for k in y[keep]]),
                               [f"user_{k:02d}" for k in base])

    names = [f"user_{k:02d}" for k in NOVEL]
    shots = {name: x[y == k][:SHOTS] for name, k in zip(names, NOVEL)}
    sources = {name: [f"{name}/{i:04d}" for i in range(SHOTS)] for name in names}
    held_out = [x[y == k][SHOTS:] for k in NOVEL]                          # never shown to the generator

    def profile(images: torch.Tensor) -> torch.Tensor:
        return images.mean(-1).flatten(1)                                # (n, 16): mean power per Doppler row

    means = torch.stack([profile(h).mean(0) for h in held_out])          # the classifier: (2, 16) class means

    def correct(images: dict[int, torch.Tensor], ids: list[int]) -> int:
        return sum(int(((profile(images[i])[:, None] - means[None]) ** 2).sum(-1).argmin(1).eq(j).sum())
                   for j, i in enumerate(ids))

    assert correct({0: shots[names[0]], 1: shots[names[1]]}, [0, 1]) == 2 * SHOTS, (
        "the classifier does not tell the two people's real shots apart (has the simulator changed?): choose two other "
        "NOVEL people whose Doppler profiles differ")
    new = enroll(pipe, shots, sources, EnrollConfig(steps=100, batch_size=16, lr=2e-2), progress=False)
    ids = new.user_ids(",".join(names))
    threshold = binomial_threshold(2 * SAMPLES)
    enrolled = correct(new.generate(ids, SAMPLES, steps=20, guidance=6.0, seed=1, progress=False), ids)
    control_pipe = Pipeline(grown_denoiser(pipe, names), pipe.vae, pipe.scheduler)
    control = correct(control_pipe.generate(ids, SAMPLES, steps=20, guidance=6.0, seed=1, progress=False), ids)
    assert enrolled >= threshold > control, (enrolled, control, threshold)
