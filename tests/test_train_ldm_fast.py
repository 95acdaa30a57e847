"""train_ldm.py's opt-in speed and scale devices against its plain path: --channels-last and --compile train what the
default path trains (to float rounding), and --fsdp (FSDP2 over two gloo processes) trains what DDP trains, writes the
same checkpoint format and resumes exactly."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_ldm
from ldm import logs, training
from tests.helpers import png_folder
from tests.test_multinode import free_port
from tests.test_train_ldm import args, save_vae

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two users x 5 random 16x16 grayscale PNGs."""
    return png_folder(tmp_path_factory.mktemp("pngs"), per_user=5, size=16)


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return save_vae(tmp_path_factory.mktemp("vae") / "model")


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in logs.JsonlLog(run / "log.jsonl").read() if "loss" in r]


def assert_same_losses_as_default(folder, vae, tmp_path, *flags, unet=()):
    """Two steps with ``flags`` and two without; the per-step losses agree to rtol 1e-5."""
    common = ("--steps", "2", "--log-every", "1", "--sample-every", "100", *unet)
    assert train_ldm.main(args(folder, vae, tmp_path / "default", *common)) == 0
    assert train_ldm.main(args(folder, vae, tmp_path / "fast", *common, *flags)) == 0
    assert len(losses(tmp_path / "fast")) == 2
    np.testing.assert_allclose(losses(tmp_path / "fast"), losses(tmp_path / "default"), rtol=1e-5)


def test_channels_last_trains_what_the_default_path_trains(folder, vae, tmp_path):
    """The same weights and latents, only stored NHWC: convolution kernels for that layout may sum in another order,
    so the losses may differ in the last bits. AdamW's first steps move each weight by about +-lr whatever the
    gradient's size, so a last-bit difference in a tiny gradient can show as a visible part of a step in a few weights
    (seen: 14 of 793,732 differ by more than 1e-6, the largest by 1.02e-5); the rest agree to 1e-6."""
    assert_same_losses_as_default(folder, vae, tmp_path, "--channels-last")
    fast, default = training.load_checkpoint(tmp_path / "fast"), training.load_checkpoint(tmp_path / "default")
    assert fast["model"]["unet.conv_in.weight"].is_contiguous(memory_format=torch.channels_last)   # it took effect
    assert fast["model"].keys() == default["model"].keys()                   # and the checkpoint is the same kind
    difference = torch.cat([(fast["model"][key] - value).flatten() for key, value in default["model"].items()]).abs()
    assert difference.max() < 1e-4                                           # under one AdamW step (lr 1e-4)
    assert (difference > 1e-6).sum() < 1e-4 * difference.numel()


@pytest.mark.slow
def test_compile_trains_what_the_default_path_trains(folder, vae, tmp_path):
    """torch.compile (inductor) fuses elementwise chains and reorders reductions (GroupNorm, softmax, the loss), so
    the same step differs by float rounding (seen: ~1e-7 relative in the second step's loss). A one-level UNet keeps
    the first compilation short (about 40 s on 2 CPU cores with an empty inductor cache, a few seconds with a warm
    one). Skipped, with the reason, where torch.compile cannot run (no C++ compiler, ...)."""
    problem = train_ldm.compile_problem("cpu")
    if problem is not None:
        pytest.skip(f"torch.compile does not work on this machine: {problem}")
    one_level = ("--unet-channels", "16", "--unet-attention", "1", "--unet-layers", "1", "--unet-heads", "2")
    assert_same_losses_as_default(folder, vae, tmp_path, "--compile", unet=one_level)


def test_fsdp_needs_several_processes_and_refuses_what_it_cannot_combine_with(folder, vae, tmp_path, capsys):
    for extra, message in [((), "torchrun"), (("--channels-last",), "non-contiguous"), (("--compile",), "recompile")]:
        assert train_ldm.main(args(folder, vae, tmp_path / "run", "--steps", "1", "--fsdp", *extra)) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_fsdp_trains_what_ddp_trains_and_resumes_exactly(folder, vae, tmp_path):
    """Two gloo processes, 3 steps each way. Both start from rank 0's initial weights and draw the same batches and
    noise, so FSDP's weights, EMA and AdamW moments equal DDP's up to float rounding: the gradients are reduced in
    another order (DDP all-reduces flat buckets, FSDP reduce-scatters each parameter's shards) and the norm for
    gradient clipping is summed from per-shard parts. AdamW divides by sqrt(v), which can turn a last-bit difference
    of a tiny gradient into a visible part of one step (lr 1e-4), so the weights are compared to atol 1e-5 (a tenth
    of the largest step); seen: 3e-7. A checkpoint written under FSDP holds full state dicts (the DDP run's keys,
    shapes and dtypes), and a run resumed from it under FSDP is bitwise the uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    common = ["--log-every", "1", "--sample-every", "100", "--device", "cpu", "--p-uncond", "0.5"]

    def torchrun(out: Path, steps: int, *extra: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(free_port()), str(ROOT / "train_ldm.py"),
                               *args(folder, vae, out, *common, "--steps", str(steps), *extra)],
                              env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(tmp_path / "ddp", 3)
    torchrun(tmp_path / "fsdp", 3, "--fsdp")
    ddp, fsdp = training.load_checkpoint(tmp_path / "ddp"), training.load_checkpoint(tmp_path / "fsdp")
    for part in ("model", "ema"):
        assert fsdp[part].keys() == ddp[part].keys()
        for key, value in ddp[part].items():
            assert fsdp[part][key].shape == value.shape and fsdp[part][key].dtype == value.dtype
            torch.testing.assert_close(fsdp[part][key], value, rtol=0, atol=1e-5, msg=f"{part}.{key}")
    assert fsdp["opt"]["param_groups"] == ddp["opt"]["param_groups"]
    for index, moments in ddp["opt"]["state"].items():
        for key, value in moments.items():   # step, exp_avg, exp_avg_sq: averaged (not summed) gradients
            torch.testing.assert_close(fsdp["opt"]["state"][index][key], value, rtol=1e-3, atol=1e-8)
    np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp_path / "ddp"), rtol=1e-4)
    for name in ("pipeline/unet/diffusion_pytorch_model.safetensors", "samples/step_000003.png"):
        assert (tmp_path / "fsdp" / name).is_file(), name

    torchrun(tmp_path / "resumed", 2, "--fsdp")
    torchrun(tmp_path / "resumed", 3, "--fsdp", "--resume", str(tmp_path / "resumed"))
    resumed = training.load_checkpoint(tmp_path / "resumed")
    for part in ("model", "ema"):
        for key, value in fsdp[part].items():
            assert torch.equal(resumed[part][key], value), f"{part}.{key}"
    assert losses(tmp_path / "resumed") == losses(tmp_path / "fsdp")
