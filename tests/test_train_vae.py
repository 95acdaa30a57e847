"""train_vae.py end to end on tiny generated folders: smoke runs, exact resume, the two players' steps, the
non-finite guard, DDP against one process, and every bad-input case."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers import VQModel as RefVQModel

import train_vae
from ldm import io, logs, training
from tests.helpers import png_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two users x 6 random 32x32 grayscale PNGs."""
    return png_folder(tmp_path_factory.mktemp("pngs"), per_user=6, size=32)


def args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--preset", "tiny", "--size", "32", "--batch-size", "2",
            "--val-fraction", "0.2", "--no-progress", "--no-eval-classifier", "--eval-images", "4", *extra]


@pytest.mark.parametrize("model", ["kl", "vq"])
def test_two_step_smoke_run_exports_a_diffusers_folder(folder, tmp_path, model):
    out = tmp_path / "run"
    assert train_vae.main(args(folder, out, "--model", model, "--steps", "2", "--disc-start", "1")) == 0
    for name in ("checkpoint.pt", "log.jsonl", "loss.png", "class_to_idx.json", "samples/step_000002.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "class_to_idx.json").read_text()) == {"alice": 0, "bob": 1}
    ours = io.load_pretrained(out / "model")
    reference = (RefAutoencoderKL if model == "kl" else RefVQModel).from_pretrained(out / "model").eval()
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["scaling_factor"] > 0
    if model == "kl":
        assert len(config["latents_mean"]) == len(config["latents_std"]) == 4
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ours(x)[0], reference(x).sample)


def test_resume_is_bitwise_exact(folder, tmp_path):
    common = ("--steps", "4", "--disc-start", "1", "--checkpoint-every", "2", "--log-every", "1")
    assert train_vae.main(args(folder, tmp_path / "straight", *common)) == 0
    assert train_vae.main(args(folder, tmp_path / "split", "--steps", "2", "--disc-start", "1",
                                "--log-every", "1")) == 0
    assert train_vae.main(args(folder, tmp_path / "split", *common,
                                "--resume", str(tmp_path / "split"))) == 0
    a = training.load_checkpoint(tmp_path / "straight")
    b = training.load_checkpoint(tmp_path / "split")
    for part in ("model", "ema", "disc"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    losses = lambda run: [r["rec"] for r in logs.JsonlLog(tmp_path / run / "log.jsonl").read() if "rec" in r]
    assert losses("straight") == losses("split")


def test_each_player_changes_only_in_its_own_step(folder, tmp_path, monkeypatch):
    changed = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *a, **k):
        params = [p for group in self.param_groups for p in group["params"]]
        everything = list(model_and_disc())
        before = [p.detach().clone() for p in everything]
        result = original_step(self, *a, **k)
        mine = {id(p) for p in params}
        moved = {id(p) for p, old in zip(everything, before) if not torch.equal(p, old)}
        changed.append((moved - mine, bool(moved & mine)))
        return result

    holder = {}
    real_build = train_vae.build_model
    real_disc = train_vae.PatchDiscriminator

    def model_and_disc():
        yield from holder["model"].parameters()
        yield from holder["disc"].parameters()

    monkeypatch.setattr(train_vae, "build_model", lambda cfg: holder.setdefault("model", real_build(cfg)))
    monkeypatch.setattr(train_vae, "PatchDiscriminator",
                        lambda *a, **k: holder.setdefault("disc", real_disc(*a, **k)))
    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    assert train_vae.main(args(folder, tmp_path / "run", "--steps", "2", "--disc-start", "0")) == 0
    assert len(changed) == 4                                         # generator, discriminator, twice
    assert all(not foreign and own for foreign, own in changed)


def test_non_finite_steps_are_skipped_then_stop_the_run(folder, tmp_path, monkeypatch, capsys):
    real = train_vae.reconstruction_loss
    calls = {"n": 0}

    def nan_on_second_call(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(train_vae, "reconstruction_loss", nan_on_second_call)
    out = tmp_path / "one_nan"
    assert train_vae.main(args(folder, out, "--steps", "3", "--disc-weight", "0", "--log-every", "1")) == 0
    records = [r for r in logs.JsonlLog(out / "log.jsonl").read() if "skipped_steps" in r]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1]
    assert training.all_finite(io.load_pretrained(out / "model"))

    monkeypatch.setattr(train_vae, "reconstruction_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    out = tmp_path / "all_nan"
    assert train_vae.main(args(folder, out, "--steps", "5", "--disc-weight", "0", "--max-nonfinite", "3")) == 2
    assert "3 consecutive steps had a non-finite loss" in capsys.readouterr().err
    assert not (out / "checkpoint.pt").exists() and not (out / "model").exists()


@pytest.mark.parametrize("model", ["kl", "vq"])
def test_ddp_with_two_cpu_processes_matches_one_process(folder, tmp_path, model):
    """KL: per-image posterior noise. VQ with an EMA codebook: the code counts and sums are summed over the two
    processes, so the codebook moves as one process's would (without that, each process moves its own codebook)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = ["--steps", "3", "--disc-weight", "0", "--log-every", "1", "--device", "cpu", "--model", model]
    if model == "vq":
        common += ["--vq-ema", "0.5", "--vq-codebook-size", "16"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(29533 if model == "kl" else 29535), str(ROOT / "train_vae.py"),
                          *args(folder, tmp_path / "ddp", *common)], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    single_args = args(folder, tmp_path / "single", *common)
    single_args[single_args.index("--batch-size") + 1] = "4"        # the same global batch in one process
    assert train_vae.main(single_args) == 0
    read = lambda run: [r["rec"] for r in logs.JsonlLog(tmp_path / run / "log.jsonl").read() if "rec" in r]
    np.testing.assert_allclose(read("ddp"), read("single"), rtol=1e-4)


# ---- bad input: one line, non-zero exit, nothing half-written ----------------------------------------------------


def run_expecting_error(argv, capsys, message):
    assert train_vae.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err


def test_missing_and_empty_data_folders(tmp_path, capsys):
    run_expecting_error(args(tmp_path / "missing", tmp_path / "out", "--steps", "1"), capsys, "missing")
    (tmp_path / "empty").mkdir()
    run_expecting_error(args(tmp_path / "empty", tmp_path / "out", "--steps", "1"), capsys, "empty")
    assert not (tmp_path / "out").exists()


def test_corrupt_image_is_named(folder, tmp_path, capsys):
    bad = tmp_path / "data"
    (bad / "u").mkdir(parents=True)
    for i, png in enumerate(sorted((folder / "alice").glob("*.png"))):
        (bad / "u" / png.name).write_bytes(png.read_bytes())
    (bad / "u" / "broken.png").write_bytes(b"not a png")
    run_expecting_error(args(bad, tmp_path / "out", "--steps", "1"), capsys, "broken.png")
    assert not (tmp_path / "out").exists()


def test_unknown_preset_and_bad_size(folder, tmp_path, capsys):
    run_expecting_error(args(folder, tmp_path / "out", "--steps", "1", "--preset", "huge"), capsys,
                        "unknown VAE preset 'huge'")
    argv = args(folder, tmp_path / "out", "--steps", "1")
    argv[argv.index("--size") + 1] = "31"
    run_expecting_error(argv, capsys, "must be multiples of preset")
    argv[argv.index("--size") + 1] = "64"
    run_expecting_error(argv, capsys, "smaller than the requested size")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(folder, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    run_expecting_error(args(folder, blocker / "run", "--steps", "1"), capsys, "cannot write there")


def test_resume_of_another_models_checkpoint(folder, tmp_path, capsys):
    assert train_vae.main(args(folder, tmp_path / "kl", "--steps", "1", "--disc-weight", "0")) == 0
    before = (tmp_path / "kl" / "checkpoint.pt").read_bytes()
    run_expecting_error(args(folder, tmp_path / "kl", "--steps", "2", "--model", "vq", "--disc-weight", "0",
                             "--resume", str(tmp_path / "kl")), capsys, "--model vq (the checkpoint's: kl)")
    assert (tmp_path / "kl" / "checkpoint.pt").read_bytes() == before


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        train_vae.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--out", "--model", "--preset", "--steps", "--batch-size", "--lr", "--resume",
                 "--kl-weight", "--disc-start", "--ema-decay", "--mixed-precision", "--grad-accum", "--compile"):
        assert flag in text


def test_evaluations_log_ema_and_raw_weights_and_export_says_which(folder, tmp_path, capsys):
    """Each evaluation logs the EMA's and the raw weights' figures; model/ holds the weights --export names
    (compared with the checkpoint's copies)."""
    for export in ("ema", "raw"):
        out = tmp_path / export
        assert train_vae.main(args(folder, out, "--steps", "3", "--disc-weight", "0", "--export", export)) == 0
        assert f"holds the {export.upper() if export == 'ema' else export} weights" in capsys.readouterr().out
        record = [r for r in logs.JsonlLog(out / "log.jsonl").read() if r.get("eval")][-1]
        assert set(record["ema"]) == set(record["raw"]) == {"psnr", "ssim"}
        saved = io.load_pretrained(out / "model").state_dict()
        state = training.load_checkpoint(out)
        assert state["ema_updates"] == 3
        for key, value in saved.items():
            assert torch.equal(value, state["model" if export == "raw" else "ema"][key]), key
    assert not all(torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])   # 3 steps: they differ
