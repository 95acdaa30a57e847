"""Stage-1 losses and the training utilities, against closed forms."""
import math
import os
import random

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from ldm import autoencoder_losses, cli, logs, runs, training


def test_reconstruction_loss_sums_pixels_and_averages_batch():
    x = torch.zeros(2, 1, 2, 2)
    x_rec = torch.tensor([1.0, -1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]).view(2, 1, 2, 2)
    assert autoencoder_losses.reconstruction_loss(x, x_rec, "l1").item() == pytest.approx((4 + 3) / 2)
    assert autoencoder_losses.reconstruction_loss(x, x_rec, "l2").item() == pytest.approx((6 + 9) / 2)
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        autoencoder_losses.reconstruction_loss(x, x_rec, "huber")


def test_hinge_loss_closed_form():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    expected = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.0) / 3)
    assert autoencoder_losses.hinge_discriminator_loss(real, fake).item() == pytest.approx(expected)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (3.0 * w).sum()          # grad (3, 3): norm 3*sqrt(2)
    gen = (w ** 2).sum()           # grad (2, 4): norm sqrt(20)
    weight = autoencoder_losses.adaptive_generator_weight(rec, gen, w)
    assert weight.item() == pytest.approx(3 * math.sqrt(2) / (math.sqrt(20) + 1e-4), rel=1e-6)
    assert not weight.requires_grad


def test_patch_discriminator_is_seeded_and_patchwise():
    a = autoencoder_losses.PatchDiscriminator(1, generator=torch.Generator().manual_seed(0))
    b = autoencoder_losses.PatchDiscriminator(1, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a(torch.zeros(2, 1, 64, 64)).shape == (2, 1, 6, 6)


def test_lpips_is_a_distance_and_loads_only_its_own_weights(tmp_path):
    model = autoencoder_losses.LPIPS()
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.abs_()              # learned channel weights are non-negative, as in the real file
    path = tmp_path / "lpips_vgg.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = autoencoder_losses.LPIPS.from_file(path)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded(x, x), torch.zeros(2))
    assert (loaded(x, y) > 0).all()
    torch.testing.assert_close(loaded(x, y), loaded(y, x))
    assert loaded(x[:, :1], y[:, :1]).shape == (2,)         # single-channel spectrograms work
    safetensors.torch.save_file({"net.slice1.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"bad.safetensors: not an LPIPS\(net='vgg'\) weights file"):
        autoencoder_losses.LPIPS.from_file(tmp_path / "bad.safetensors")


def test_ema_update_closed_form():
    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    before = ema.weight.detach().clone()
    training.ema_update(ema, model, decay=0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight.detach())


def test_ema_warmup_decay_is_the_closed_form_and_diffusers_schedule():
    """decay_1 = 0, decay_n = min(max, n / (9 + n)) afterwards: the schedule of diffusers' EMAModel (checked
    against its get_decay) and of the LDM code's LitEma; without warm-up the decay is constant."""
    from diffusers.training_utils import EMAModel
    reference = EMAModel(torch.nn.Linear(1, 1).parameters(), decay=0.999)
    for n in [1, 2, 3, 10, 400, 1000, 8991, 8992, 20000]:
        expected = 0.0 if n == 1 else min(0.999, n / (9 + n))
        assert training.ema_decay(n, 0.999) == pytest.approx(expected, rel=1e-15, abs=0)
        assert training.ema_decay(n, 0.999) == reference.get_decay(n)
        assert training.ema_decay(n, 0.999, warmup=False) == 0.999
    with pytest.raises(ValueError, match="counted from 1"):
        training.ema_decay(0, 0.999)


def test_ema_with_warmup_follows_diffusers_ema_model_and_forgets_the_initialisation():
    """Ten updates towards a moving model: our EMA equals diffusers' EMAModel.step to float precision, and the
    initial weights have no weight left (the first update copies the model); a frozen parameter is copied."""
    from diffusers.training_utils import EMAModel
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[1].bias.requires_grad_(False)
    ema = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).requires_grad_(False)
    reference = EMAModel(model.parameters(), decay=0.999, foreach=False)
    for n in range(1, 11):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        training.ema_update(ema, model, training.ema_decay(n, 0.999))
        reference.step(model.parameters())
        for ours, theirs in zip(ema.parameters(), reference.shadow_params):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert torch.equal(ema[1].bias, model[1].bias)


def test_non_finite_guard_skips_then_stops():
    guard = training.NonFiniteGuard(limit=3)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    assert guard.check(torch.tensor(1.0), [p])
    p.grad = torch.tensor([1.0, float("nan")])
    assert not guard.check(torch.tensor(1.0), [p])
    assert not guard.check(torch.tensor(float("inf")), [p])
    p.grad = torch.ones(2)
    assert guard.check(torch.tensor(1.0), [p]) and guard.consecutive == 0 and guard.total == 2
    p.grad = torch.tensor([float("nan"), 0.0])
    guard.check(torch.tensor(1.0), [p]); guard.check(torch.tensor(1.0), [p])
    with pytest.raises(training.NonFiniteError, match="3 consecutive steps"):
        guard.check(torch.tensor(1.0), [p])


def test_checkpoint_round_trip_with_rng_state(tmp_path):
    model = torch.nn.Linear(2, 2)
    torch.manual_seed(1); random.seed(2); np.random.seed(3)
    state = {"step": 5, "rng": training.rng_state(), "model": model.state_dict(), "names": ["a"]}
    training.save_checkpoint(state, tmp_path / "checkpoint.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(9); random.seed(9); np.random.seed(9)
    loaded = training.load_checkpoint(tmp_path)              # weights_only=True inside
    training.set_rng_state(loaded["rng"])
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (expected[0].tolist(), *expected[1:])
    assert loaded["step"] == 5 and loaded["names"] == ["a"]


def test_checkpoint_write_interrupted_keeps_previous(tmp_path, monkeypatch):
    training.save_checkpoint({"step": 1}, tmp_path / "checkpoint.pt")

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint({"step": 2}, tmp_path / "checkpoint.pt")
    monkeypatch.undo()
    assert training.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        training.load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        training.load_checkpoint(tmp_path)


def test_jsonl_log_truncates_redone_steps(tmp_path):
    log = logs.JsonlLog(tmp_path / "log.jsonl")
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step})
    log.truncate_after(3)
    assert [r["step"] for r in log.read()] == [1, 2, 3]


def test_jsonl_log_leaves_out_a_line_cut_short_by_a_kill_and_names_a_broken_one(tmp_path):
    log = logs.JsonlLog(tmp_path / "log.jsonl")
    log.write({"step": 1, "loss": 0.5})
    with open(log.path, "a") as f:
        f.write('{"step": 2, "lo')                                      # the process died while appending
    assert log.read() == [{"step": 1, "loss": 0.5}]
    log.truncate_after(1)
    assert log.path.read_text() == '{"step": 1, "loss": 0.5}\n'
    log.path.write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match="log.jsonl: line 1 is not a JSON record"):
        log.read()


def test_pictures(tmp_path):
    grid = logs.image_grid([torch.zeros(3, 1, 8, 8), -torch.ones(2, 1, 8, 8)], pad=2)
    assert grid.size == (3 * 10 + 2, 2 * 10 + 2) and grid.mode == "L"
    assert np.asarray(grid)[2, 2] == 128 and np.asarray(grid)[12, 2] == 0
    records = [{"step": s, "loss": 1.0 / s, "psnr": 20.0 + s} for s in range(1, 20)]
    logs.plot_curves(records, ["loss"], tmp_path / "curve.png", title="loss")
    assert Image.open(tmp_path / "curve.png").size == (720, 400)


def test_check_writable_probes_without_creating_anything(tmp_path):
    cli.check_writable(tmp_path / "a" / "b" / "run")              # would be created under tmp_path
    assert os.listdir(tmp_path) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"--out .*file/run: cannot write there \(.*file is a file, not a folder\)"):
        cli.check_writable(tmp_path / "file" / "run")


def test_a_run_folder_is_claimed_only_by_its_own_run_or_moved_aside(tmp_path):
    out = tmp_path / "run"
    runs.check_run_folder(out, resume=None, overwrite=False)         # new: fine
    out.mkdir()
    (out / f".checkpoint.pt.tmp-{os.getpid()}").write_bytes(b"")        # temporary names alone: still empty
    runs.check_run_folder(out, resume=None, overwrite=False)
    (out / "checkpoint.pt").write_bytes(b"old")
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint.pt\); continue it with --resume"):
        runs.check_run_folder(out, resume=None, overwrite=False)
    with pytest.raises(ValueError, match="already holds a run"):        # resuming another run into it
        runs.check_run_folder(out, resume=str(tmp_path / "other"), overwrite=False)
    runs.check_run_folder(out, resume=str(out / "checkpoint.pt"), overwrite=False)
    runs.check_run_folder(out, resume=None, overwrite=True)
    done = runs.claim_run_folder(out, overwrite=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "checkpoint.pt").read_bytes() == b"old" and str(aside[0]) in done[0]
    assert out.is_dir() and os.listdir(out) == []
