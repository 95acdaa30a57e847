"""Ctrl-C keeps the work (issue 27): an interrupt in the training loop writes the checkpoint of the step under way
once that step ends and says which step --resume continues from; ``--resume RUN`` alone (every other option read
from the run's config.json) then finishes the run, and the result equals an uninterrupted run's bitwise. An interrupt
before the loop leaves no checkpoint and says there is nothing to resume.

The VAE case sends a real SIGINT to a training process (as a terminal's Ctrl-C does) from inside its third loss
evaluation; the LDM case does the same in this process (the loop's handler replaces pytest's for the loop)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_ldm
import train_vae
from ldm import logs, training
from tests.helpers import png_folder
from tests.test_train_ldm import save_vae

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# Runs train_vae.main(argv) in a fresh process that sends itself SIGINT in the middle of its third loss evaluation
# (step index 2 of a new run), with stderr a pipe, not a terminal.
INTERRUPTED_VAE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train_vae
real, calls = train_vae.vae_loss, []

def interrupted_loss(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGINT)
    return real(*args, **kwargs)

train_vae.vae_loss = interrupted_loss
sys.exit(train_vae.main({argv!r}))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return png_folder(tmp_path_factory.mktemp("interrupt"), per_user=5, size=16)


def vae_args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--preset", "tiny", "--size", "16", "--batch-size", "2",
            "--steps", "5", "--disc-start", "1", "--disc-layers", "2", "--log-every", "1", "--val-fraction", "0.2",
            "--no-eval-classifier", "--eval-images", "4", *extra]


def assert_same_weights(a: dict, b: dict, parts) -> None:
    for part in parts:
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"


def test_ctrl_c_in_train_vae_writes_the_step_and_resume_run_alone_matches_an_uninterrupted_run(data, tmp_path):
    assert train_vae.main(vae_args(data, tmp_path / "straight", "--no-progress")) == 0
    out = tmp_path / "interrupted"
    argv = vae_args(data, out)                                           # progress bars on, stderr not a terminal
    code = INTERRUPTED_VAE.format(root=str(ROOT), argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert f"interrupted after step 3: its checkpoint is written ({out / 'checkpoint.pt'}); --resume {out} " \
           "continues from step 3" in proc.stderr
    assert "\r" not in proc.stderr                                       # no progress bar into a log file
    assert "Traceback" not in proc.stderr
    assert training.load_checkpoint(out)["step"] == 3                   # the default --checkpoint-every is 500
    assert not (out / "model").exists()

    assert train_vae.main(["--resume", str(out), "--no-progress"]) == 0   # every other option from config.json
    a, b = training.load_checkpoint(tmp_path / "straight"), training.load_checkpoint(out)
    assert b["step"] == 5 and b["train_config"] == {**a["train_config"], "out": str(out), "resume": str(out)}
    assert_same_weights(a, b, ("model", "ema", "disc"))
    losses = lambda run: [r["rec"] for r in logs.JsonlLog(run / "log.jsonl").read() if "rec" in r]  # noqa: E731
    assert losses(tmp_path / "straight") == losses(out) and len(losses(out)) == 5


def test_ctrl_c_in_train_ldm_writes_the_step_and_resume_matches_an_uninterrupted_run(data, tmp_path, monkeypatch,
                                                                                    capsys):
    vae = save_vae(tmp_path / "vae")
    common = ["--data", str(data), "--vae", str(vae), "--preset", "tiny", "--batch-size", "2", "--steps", "4",
              "--log-every", "1", "--val-fraction", "0.2", "--no-progress", "--sample-steps", "2",
              "--sample-per-user", "1", "--sample-every", "100"]
    assert train_ldm.main([*common, "--out", str(tmp_path / "straight")]) == 0
    real, calls = train_ldm.ldm_loss, []

    def interrupted_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:                                              # during step index 1
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_ldm, "ldm_loss", interrupted_loss)
    out = tmp_path / "interrupted"
    capsys.readouterr()
    assert train_ldm.main([*common, "--out", str(out)]) == 130
    assert f"--resume {out} continues from step 2" in capsys.readouterr().err
    assert training.load_checkpoint(out)["step"] == 2
    monkeypatch.setattr(train_ldm, "ldm_loss", real)
    assert train_ldm.main(["--resume", str(out)]) == 0
    a, b = training.load_checkpoint(tmp_path / "straight"), training.load_checkpoint(out)
    assert b["step"] == 4
    assert_same_weights(a, b, ("model", "ema"))
    losses = lambda run: [r["loss"] for r in logs.JsonlLog(run / "log.jsonl").read() if "loss" in r]  # noqa: E731
    assert losses(tmp_path / "straight") == losses(out)


def test_an_interrupt_before_the_first_step_says_there_is_nothing_to_resume(data, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_vae, "identity_classifier", interrupted)   # after the run folder is claimed
    out = tmp_path / "run"
    assert train_vae.main(vae_args(data, out, "--no-progress")) == 130
    err = capsys.readouterr().err
    assert f"{out} holds no checkpoint, so there is nothing to resume" in err and "--resume" not in err
    monkeypatch.undo()
    assert train_vae.main(vae_args(data, out, "--no-progress")) == 2     # a plain rerun: no advice to --resume
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and "--overwrite" in err and "--resume" not in err
    assert train_vae.main(vae_args(data, out, "--no-progress", "--steps", "1", "--overwrite")) == 0


def test_resume_run_alone_takes_the_runs_options_and_out_and_may_change_only_the_allowed_ones(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_vae.main(vae_args(data, out, "--no-progress", "--steps", "2", "--lr", "0.0003")) == 0
    assert train_vae.main(["--resume", str(out / "checkpoint.pt"), "--steps", "3", "--log-every", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.0003 and config["steps"] == 3 and config["size"] == "16" and config["log_every"] == 2
    assert training.load_checkpoint(out)["step"] == 3
    capsys.readouterr()
    assert train_vae.main(["--resume", str(out), "--steps", "4", "--lr", "0.001"]) == 2
    assert "--lr 0.001 (the checkpoint's: 0.0003)" in capsys.readouterr().err
