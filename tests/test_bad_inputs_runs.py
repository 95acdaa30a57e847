"""The training runs' part of the bad-input catalogue for issue 27: one case per loss or silent result found by a
new user, each failing before the fix. Runs go through the scripts' main(argv) in this process, on 16x16 PNGs and
the tiny presets (a few seconds each); see tests/test_bad_inputs.py for the older cases and tests/test_interrupt.py
for Ctrl-C."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_ldm
import train_vae
from ldm import lock, logs, training
from ldm import runs as ldm_runs       # (tests here call their run-folder fixture 'runs')
from ldm.splits import read_split, write_split
from tests.helpers import png_folder
from tests.test_bad_inputs import ldm_args, refused, snapshot, vae_args
from tests.test_train_ldm import save_vae

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two users x 5 16x16 PNGs, a finished 2-step train_vae.py run and a train_ldm.py run on its model/."""
    root = tmp_path_factory.mktemp("runs")
    (root / "data").mkdir()
    data = png_folder(root / "data", per_user=5, size=16)
    assert train_vae.main(vae_args(data, root / "vae_run")) == 0
    assert train_ldm.main(ldm_args(data, root / "vae_run", root / "ldm_run", "--sample-every", "100")) == 0
    return root


# ---- one writer per run folder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["resume", "overwrite", "same_out"])
def test_a_run_folder_that_a_live_process_writes_is_refused_naming_it(runs, tmp_path, capsys, how):
    out = tmp_path / "run"
    shutil.copytree(runs / "vae_run", out)
    extra = {"resume": ["--resume", str(out), "--steps", "3"], "overwrite": ["--overwrite"], "same_out": []}[how]
    with lock.hold_run_lock(out):                                        # a live writer (this process)
        before = snapshot(out)
        refused(train_vae.main, vae_args(runs / "data", out, *extra), capsys,
                f"{out} is being written by process {os.getpid()}")
        assert snapshot(out) == before and not list(tmp_path.glob("run.old-*"))
    if how == "resume":                                                  # the writer ended: no stale lock
        assert train_vae.main(vae_args(runs / "data", out, *extra)) == 0


def test_a_killed_writer_leaves_no_lock_behind(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs / "vae_run", out)
    code = f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); from ldm import lock\n" \
           f"with lock.hold_run_lock({str(out)!r}):\n    os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 9
    assert lock.lock_holder(out) is None
    assert train_vae.main(vae_args(runs / "data", out, "--resume", str(out), "--steps", "3")) == 0


# ---- provenance: the VAE an LDM run trains on, the split it tests on --------------------------------------------


def test_resuming_an_ldm_run_after_its_vae_was_retrained_is_refused(runs, tmp_path, capsys):
    vae = save_vae(tmp_path / "vae")
    out = tmp_path / "ldm"
    assert train_ldm.main(ldm_args(runs / "data", vae, out, "--sample-every", "100")) == 0
    before = snapshot(out)
    weights = vae / "diffusion_pytorch_model.safetensors"
    import safetensors.torch
    retrained = {k: v + 0.01 for k, v in safetensors.torch.load_file(weights).items()}
    safetensors.torch.save_file(retrained, weights, metadata={"format": "pt"})
    refused(train_ldm.main, ["--resume", str(out), "--steps", "3"], capsys,
            f"--vae {vae}: its weights are not those this run started with")
    assert snapshot(out) == before


def test_a_split_that_tests_on_a_file_the_vae_trained_on_is_refused(runs, tmp_path, capsys):
    split = read_split(runs / "vae_run")
    moved = split["train"][0]
    edited = {**split, "train": split["train"][1:], "test": split["test"] + [moved]}
    write_split(tmp_path / "edited.json", edited)
    out = tmp_path / "ldm"
    refused(train_ldm.main, ldm_args(runs / "data", runs / "vae_run", out, "--split", str(tmp_path / "edited.json")),
            capsys, "puts 1 file(s) the VAE trained on in test", moved)
    assert not out.exists()


# ---- messages that misled --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variables", [{"RANK": "0"}, {"WORLD_SIZE": "2", "MASTER_PORT": "29999"}])
def test_leftover_torchrun_variables_are_named_instead_of_a_silent_hang(runs, tmp_path, capsys, monkeypatch,
                                                                        variables):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    line = refused(train_vae.main, vae_args(runs / "data", tmp_path / "run"), capsys, "not started by torchrun",
                   *(f"{name}={value}" for name, value in variables.items()))
    assert "unset " + " ".join(variables) in line
    assert not (tmp_path / "run").exists()


def test_train_ldm_without_data_does_not_blame_a_size_nobody_typed(runs, tmp_path, capsys):
    argv = ldm_args("microdoppler", runs / "vae_run", tmp_path / "run")
    del argv[:2]                                                         # no --data at all
    line = refused(train_ldm.main, argv, capsys, "--data microdoppler (the default", "takes 16 images",
                   "pass --data DIR")
    assert "--size 16:" not in line


def test_a_checkpoint_beyond_the_file_size_limit_names_the_limit_not_torchs_internals(tmp_path):
    code = (f"import resource, sys, torch; sys.path.insert(0, {str(ROOT)!r}); from ldm import training\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
            f"training.save_checkpoint({{'step': 1, 'w': torch.zeros(100_000)}}, {str(tmp_path / 'c.pt')!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "c.pt: could not write it (File too large: this process may write files of at most 0.1 MiB (ulimit -f)" \
        in last and "unexpected pos" not in last, last
    assert os.listdir(tmp_path) == []


def test_a_read_only_samples_folder_is_found_before_training(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(runs / "vae_run", out)
    before = snapshot(out)

    def read_only(path, flag="--out"):                                  # root ignores chmod: the probe says so
        if Path(path).name == "samples":
            raise ValueError(f"{flag} {path}: cannot write there (Read-only file system)")

    monkeypatch.setattr(ldm_runs.cli, "check_writable", read_only)
    refused(train_vae.main, vae_args(runs / "data", out, "--resume", str(out), "--steps", "4"), capsys,
            f"--out {out / 'samples'}: cannot write there")
    assert snapshot(out) == before


def test_help_shows_no_none_default_and_every_real_default_once(capsys):
    with pytest.raises(SystemExit):
        train_ldm.main(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: runs/vae)" in text and "(default: 20000)" in text
    assert "default: the VAE's sample_size" in text.replace("\n", " ").replace("  ", " ") or "sample_size" in text


# ---- outputs that hid or repeated things -------------------------------------------------------------------------


def test_exported_weights_are_readable_by_colleagues(runs):
    for path in [*(runs / "vae_run" / "model").iterdir(), *(runs / "ldm_run" / "pipeline").rglob("*.safetensors")]:
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o644, path


def test_the_reconstruction_grid_shows_every_user_and_the_log_the_weighted_kl(runs):
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    assert ldm_runs.spread_over_users(labels, 5).tolist() == [0, 4, 6, 1, 5]
    records = [r for r in logs.JsonlLog(runs / "vae_run" / "log.jsonl").read() if "kl" in r]
    assert records and all(r["kl_term"] == pytest.approx(1e-6 * r["kl"]) for r in records)


def test_a_finished_run_resumed_does_not_redo_its_final_work_and_prints_its_evaluations(runs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(runs / "vae_run", out)
    before = snapshot(out)
    assert train_vae.main(vae_args(runs / "data", out, "--resume", str(out))) == 0
    assert "already finished at step 2" in capsys.readouterr().out
    assert snapshot(out) == before                                       # not even config.json rewritten
    assert train_vae.main(vae_args(runs / "data", out, "--resume", str(out), "--steps", "3", "--eval-every", "1")) == 0
    assert "step 3: ema weights: held-out PSNR" in capsys.readouterr().out


def test_an_out_that_held_a_run_without_checkpoint_is_not_called_resumable(runs, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(runs / "vae_run" / "config.json", out / "config.json")
    line = refused(train_vae.main, vae_args(runs / "data", out), capsys, "stopped before its first checkpoint",
                   "--overwrite")
    assert "--resume" not in line
    json.loads((out / "config.json").read_text())                        # untouched


@pytest.mark.parametrize("where", ["inside", "same", "around"])
def test_an_out_inside_or_around_the_data_folder_is_refused(runs, tmp_path, capsys, where):
    data = tmp_path / "runs" / "data"
    shutil.copytree(runs / "data", data)
    out = {"inside": data / "run", "same": data, "around": tmp_path / "runs"}[where]
    before = snapshot(tmp_path)
    refused(train_vae.main, vae_args(data, out), capsys, f"--out {out}", "--data", "writes nothing into its inputs")
    assert snapshot(tmp_path) == before
