"""Bad input to train_vae.py, train_ldm.py and the library parts they stand on (ldm.io, ldm.training): each case
exits with status 2 (or raises the named exception) before any work, with an error line naming the offending option,
file, key or shape, no traceback, and nothing written (not even a partial run folder). And work is never lost: a
kill while a checkpoint or the pipeline is written, a full disk, a read-only file system, keep what was there.

The scripts run in this process through their main(argv) (a subprocess costs seconds of imports), except the two
kill cases, which need a process to die."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import train_ldm
import train_vae
from ldm import cli, files, io, logs, training
from ldm import runs as ldm_runs       # (tests here call their run-folder fixture 'runs')
from ldm.unet import UNet2DConditionModel, UNetConfig
from tests.helpers import png_folder
from tests.test_train_ldm import save_vae

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


def vae_args(data, out, *extra) -> list[str]:
    """A 2-step train_vae.py run on 16x16 images that uses every part: the discriminator from step 1, checkpoints
    at every step."""
    return ["--data", str(data), "--out", str(out), "--preset", "tiny", "--size", "16", "--batch-size", "2",
            "--steps", "2", "--disc-start", "1", "--disc-layers", "2", "--checkpoint-every", "1", "--val-fraction",
            "0.2", "--no-progress", "--no-eval-classifier", "--eval-images", "4", *extra]


def ldm_args(data, vae, out, *extra) -> list[str]:
    return ["--data", str(data), "--vae", str(vae), "--out", str(out), "--preset", "tiny", "--batch-size", "2",
            "--steps", "2", "--checkpoint-every", "1", "--val-fraction", "0.2", "--no-progress", "--sample-steps", "2",
            "--sample-per-user", "1", *extra]


class _Touch:
    """Unpickling this creates a file: the side effect a malicious checkpoint would have."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two users x 5 16x16 PNGs, a tiny VAE folder, a finished train_vae.py run and a finished train_ldm.py run
    (2 steps each), and broken files: a file where a folder belongs, empty / garbage / malicious / incomplete
    checkpoints, a UNet folder, and a train_vae.py run folder that never got to write model/."""
    root = tmp_path_factory.mktemp("bad")
    (root / "data").mkdir()
    data = png_folder(root / "data", per_user=5, size=16)
    vae = save_vae(root / "vae_model")
    assert train_vae.main(vae_args(data, root / "vae_run")) == 0
    assert train_ldm.main(ldm_args(data, vae, root / "ldm_run")) == 0
    (root / "a_file").write_text("not a folder")
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(b"\x80\x02garbage" * 10)
    torch.save({"step": 1, "payload": _Touch(root / "pwned")}, root / "evil.pt")
    torch.save({"step": 1, "script": "train_vae.py"}, root / "incomplete.pt")
    UNet2DConditionModel(UNetConfig.preset("tiny")).save_pretrained(root / "unet")
    (root / "unfinished_vae_run").mkdir()
    shutil.copy(root / "vae_run" / "config.json", root / "unfinished_vae_run" / "config.json")
    return root


def snapshot(folder: Path) -> dict:
    """Every file under folder (hidden ones too) -> (size, modification time): what 'nothing changed' compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(main, argv: list[str], capsys, *named: str) -> str:
    """Run a script's main(argv) here; assert exit status 2, no traceback, and a last stderr line ``error: ...``
    that names every string in ``named``. Returns that line."""
    try:
        status = main(argv)
    except SystemExit as stop:                                          # parse_config's refusals (argparse)
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert "error: " in line, line
    for text in named:
        assert text in line, line
    return line


# ----------------------------------------------------------------------------------------------------------------
# Both scripts, new runs: refused before anything is read or written
# ----------------------------------------------------------------------------------------------------------------
# case -> (script, extra arguments ({runs} is the fixture folder), strings the error line must hold)
NEW_RUN_CASES = {
    "vae_batch_size_zero": ("vae", ["--batch-size", "0"], ["--batch-size must be >= 1, got 0"]),
    "vae_batch_size_negative": ("vae", ["--batch-size", "-3"], ["--batch-size must be >= 1"]),
    "vae_grad_accum_zero": ("vae", ["--grad-accum", "0"], ["--grad-accum must be >= 1"]),
    "vae_log_every_zero": ("vae", ["--log-every", "0"], ["--log-every must be >= 1"]),
    "vae_checkpoint_every_zero": ("vae", ["--checkpoint-every", "0"], ["--checkpoint-every must be >= 1"]),
    "vae_steps_zero": ("vae", ["--steps", "0"], ["--steps must be >= 1"]),
    "vae_steps_negative": ("vae", ["--steps", "-5"], ["--steps must be >= 1"]),
    "vae_lr_huge": ("vae", ["--lr", "1e39"], ["--lr must be > 0 and <= 1"]),
    "vae_lr_nan": ("vae", ["--lr", "nan"], ["--lr must be a finite number"]),
    "vae_ema_decay_two": ("vae", ["--ema-decay", "2"], ["--ema-decay must be >= 0 and < 1"]),
    "vae_kl_weight_negative": ("vae", ["--kl-weight", "-1"], ["--kl-weight must be >= 0"]),
    "vae_seed_negative": ("vae", ["--seed", "-1"], ["--seed must be >= 0"]),
    "vae_seed_overflowing_the_generators": ("vae", ["--seed", "10000000000"], ["--seed must be >= 0 and <= 10000000"]),
    "vae_eval_images_zero": ("vae", ["--eval-images", "0"], ["--eval-images must be >= 1"]),
    "vae_dynamic_range_zero": ("vae", ["--dynamic-range", "0"], ["--dynamic-range must be > 0"]),
    "vae_vq_ema_above_one": ("vae", ["--model", "vq", "--vq-ema", "1.5"], ["--vq-ema must be > 0 and < 1"]),
    "vae_unknown_resize": ("vae", ["--resize", "squash"], ["--resize", "invalid choice"]),
    "vae_size_zero_height": ("vae", ["--size", "0x16"], ["--size '0x16'", "HxW"]),
    "vae_size_not_a_size": ("vae", ["--size", "big"], ["--size 'big'"]),
    "vae_size_not_a_multiple": ("vae", ["--size", "15"], ["--size 15", "multiples", "factor 2"]),
    "vae_size_below_the_ssim_window": ("vae", ["--size", "8", "--disc-weight", "0"], ["--size 8", "SSIM", ">= 11"]),
    "vae_unknown_preset": ("vae", ["--preset", "huge"], ["unknown VAE preset 'huge'"]),
    "vae_db_reference_not_a_number": ("vae", ["--db-reference", "loud"], ["--db-reference", "'loud'"]),
    "vae_db_reference_nan": ("vae", ["--db-reference", "nan"], ["--db-reference", "'nan'"]),
    "vae_fractions_leave_nothing": ("vae", ["--holdout-fraction", "0.6", "--val-fraction", "0.5"],
                                    ["--holdout-fraction 0.6 + --val-fraction 0.5 must be < 1"]),
    "vae_group_regex_broken": ("vae", ["--group-regex", "(walk"], ["--group-regex '(walk' is not a regular"]),
    "vae_vq_option_on_kl": ("vae", ["--vq-ema", "0.5"], ["--vq-ema applies to --model vq only"]),
    "vae_perceptual_weight_without_lpips": ("vae", ["--perceptual-weight", "2"], ["--perceptual-weight needs --lpips"]),
    "vae_discriminator_deeper_than_the_image": ("vae", ["--disc-layers", "3"],
                                                ["--disc-layers 3", "--size must be >= 24 (it is 16)"]),
    "vae_lpips_file_missing": ("vae", ["--lpips", "{runs}/no_lpips.safetensors"], ["no_lpips.safetensors"]),
    "vae_device_unknown": ("vae", ["--device", "foo"], ["--device 'foo' is not a device"]),
    "vae_device_not_here": ("vae", ["--device", "cuda:99"], ["--device cuda:99"]),
    "vae_data_is_a_file": ("vae", ["--data", "{runs}/a_file"], ["--data", "a_file is a file"]),
    "vae_data_missing": ("vae", ["--data", "{runs}/nowhere"], ["--data", "nowhere: no such folder"]),
    "vae_simulator_size": ("vae", ["--data", "microdoppler", "--size", "96"], ["--size 96", "64, 128, 256"]),
    "vae_out_inside_a_file": ("vae", ["--out", "{runs}/a_file/run"], ["--out", "a_file is a file"]),
    "vae_resume_missing": ("vae", ["--resume", "{runs}/nowhere"], ["nowhere", "no checkpoint to resume from"]),
    "vae_resume_empty_file": ("vae", ["--resume", "{runs}/empty.pt"], ["empty.pt", "the file is empty"]),
    "vae_resume_garbage": ("vae", ["--resume", "{runs}/garbage.pt"], ["garbage.pt: not a readable PyTorch"]),
    "vae_resume_malicious": ("vae", ["--resume", "{runs}/evil.pt"],
                             ["evil.pt: refused to load: the pickle asks for the Python object"]),
    "vae_resume_incomplete": ("vae", ["--resume", "{runs}/incomplete.pt"], ["incomplete.pt", "lacks train_config"]),
    "vae_resume_an_ldm_checkpoint": ("vae", ["--resume", "{runs}/ldm_run"],
                                     ["ldm_run/checkpoint.pt: a train_ldm.py checkpoint; resume it with train_ldm.py"]),
    "ldm_scaling_factor_zero": ("ldm", ["--scaling-factor", "0"], ["--scaling-factor", "> 0", "'0'"]),
    "ldm_scaling_factor_nan": ("ldm", ["--scaling-factor", "nan"], ["--scaling-factor", "'nan'"]),
    "ldm_scaling_factor_word": ("ldm", ["--scaling-factor", "measured"], ["--scaling-factor", "'measured'"]),
    "ldm_sample_steps_zero": ("ldm", ["--sample-steps", "0"], ["--sample-steps must be >= 1"]),
    "ldm_sample_steps_beyond_training": ("ldm", ["--sample-steps", "2000"],
                                         ["--sample-steps must be >= 1 and <= 999"]),
    "ldm_sample_steps_beyond_ddim": ("ldm", ["--sample-steps", "1000"],   # issue 27: failed at the first grid
                                     ["--sample-steps must be >= 1 and <= 999, got 1000"]),
    "ldm_sample_per_user_zero": ("ldm", ["--sample-per-user", "0"], ["--sample-per-user must be >= 1"]),
    "ldm_p_uncond_one": ("ldm", ["--p-uncond", "1"], ["--p-uncond must be >= 0 and < 1"]),
    "ldm_num_tokens_zero": ("ldm", ["--num-tokens", "0"], ["--num-tokens must be >= 1"]),
    "ldm_min_snr_gamma_zero": ("ldm", ["--min-snr-gamma", "0"], ["--min-snr-gamma must be > 0"]),
    "ldm_weight_decay_negative": ("ldm", ["--weight-decay", "-1"], ["--weight-decay must be >= 0"]),
    "ldm_unet_channels_words": ("ldm", ["--unet-channels", "wide,wider"], ["--unet-channels", "'wide,wider'"]),
    "ldm_size_not_a_multiple": ("ldm", ["--size", "16x15"], ["--size 16x15", "multiples", "factor 2"]),
    "ldm_vae_is_a_unet": ("ldm", ["--vae", "{runs}/unet"], ["--vae", "UNet2DConditionModel"]),
    "ldm_vae_run_without_model": ("ldm", ["--vae", "{runs}/unfinished_vae_run"],
                                  ["--vae", "unfinished_vae_run", "without model/"]),
    "ldm_resume_a_vae_checkpoint": ("ldm", ["--resume", "{runs}/vae_run/checkpoint.pt"],
                                    ["a train_vae.py checkpoint; resume it with train_vae.py"]),
    "ldm_out_is_a_file": ("ldm", ["--out", "{runs}/a_file"], ["--out", "a_file is a file"]),
    "ldm_compile_with_fsdp": ("ldm", ["--compile", "--fsdp"], ["--compile and --fsdp"]),
}


@pytest.mark.parametrize("case", NEW_RUN_CASES)
def test_a_new_run_with_bad_input_is_refused_and_writes_nothing(case, runs, tmp_path, capsys):
    script, extra, named = NEW_RUN_CASES[case]
    extra = [a.format(runs=runs) for a in extra]
    out = tmp_path / "run"
    before = snapshot(runs)
    if script == "vae":
        refused(train_vae.main, vae_args(runs / "data", out, *extra), capsys, *named)
    else:
        refused(train_ldm.main, ldm_args(runs / "data", runs / "vae_model", out, *extra), capsys, *named)
    assert not out.exists() and list(tmp_path.iterdir()) == []          # no run folder, no simulated data
    assert snapshot(runs) == before                                      # and nothing of the inputs touched
    assert not (runs / "pwned").exists()                                 # the malicious pickle never ran


# ----------------------------------------------------------------------------------------------------------------
# Both scripts, existing run folders: no silent overwrite, no silent change of options on resume
# ----------------------------------------------------------------------------------------------------------------
# case -> (script, extra arguments, strings the error line must hold); the run is {runs}/vae_run or {runs}/ldm_run
EXISTING_RUN_CASES = {
    "vae_new_run_into_a_run_folder": ("vae", [], ["--out", "already holds a run", "--resume", "new --out"]),
    "vae_resume_with_another_lr": ("vae", ["--resume", "{run}", "--lr", "0.001"],
                                   ["--lr 0.001 (the checkpoint's: 0.0001)", "may change only --steps"]),
    "vae_resume_with_another_model": ("vae", ["--resume", "{run}", "--model", "vq"],
                                      ["--model vq (the checkpoint's: kl)"]),
    "vae_resume_before_the_checkpoint": ("vae", ["--resume", "{run}", "--steps", "1"],
                                         ["--steps 1", "already at step 2"]),
    "vae_resume_and_overwrite": ("vae", ["--resume", "{run}", "--overwrite"], ["--overwrite", "--resume"]),
    "ldm_new_run_into_a_run_folder": ("ldm", [], ["--out", "already holds a run", "--resume", "new --out"]),
    "ldm_resume_with_another_lr_and_seed": ("ldm", ["--resume", "{run}", "--lr", "0.001", "--seed", "3"],
                                            ["--lr 0.001 (the checkpoint's: 0.0001)", "--seed 3"]),
    "ldm_resume_with_another_route": ("ldm", ["--resume", "{run}", "--cond", "cross"], ["--cond cross"]),
    "ldm_resume_before_the_checkpoint": ("ldm", ["--resume", "{run}", "--steps", "1"],
                                         ["--steps 1", "already at step 2"]),
}


@pytest.mark.parametrize("case", EXISTING_RUN_CASES)
def test_an_existing_run_is_neither_overwritten_nor_resumed_with_other_options(case, runs, capsys):
    script, extra, named = EXISTING_RUN_CASES[case]
    run = runs / f"{script}_run"
    extra = [a.format(run=run) for a in extra]
    before = snapshot(run)
    if script == "vae":
        refused(train_vae.main, vae_args(runs / "data", run, *extra), capsys, *named)
    else:
        refused(train_ldm.main, ldm_args(runs / "data", runs / "vae_model", run, *extra), capsys, *named)
    assert snapshot(run) == before


def test_overwrite_moves_the_old_run_aside_and_resume_may_change_how_long_and_how_often(runs, tmp_path, capsys):
    """--overwrite keeps the old run under OUT.old-<time>; a resumed run may change --steps and the --*-every
    options (and says where it resumed), and config.json records the options of the latest start."""
    out = tmp_path / "run"
    shutil.copytree(runs / "vae_run", out)
    old = snapshot(out)
    assert train_vae.main(vae_args(runs / "data", out, "--overwrite", "--steps", "1")) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and snapshot(aside[0]) == old
    assert training.load_checkpoint(out)["step"] == 1 and not (out / "samples" / "step_000002.png").exists()
    capsys.readouterr()
    assert train_vae.main(vae_args(runs / "data", out, "--resume", str(out), "--steps", "3", "--log-every", "2")) == 0
    assert "(resumed at step 1 of 3)" in capsys.readouterr().out
    assert training.load_checkpoint(out)["step"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["script"] == "train_vae.py" and config["steps"] == 3 and config["log_every"] == 2
    assert config["device"] == str(ldm_runs.resolve_device("auto")) and config["size"] == "16"   # as resolved


# ----------------------------------------------------------------------------------------------------------------
# Failed writes: disk full, read-only file system
# ----------------------------------------------------------------------------------------------------------------


def test_a_full_disk_at_a_checkpoint_ends_the_run_in_one_line_and_keeps_the_last_good_one(runs, tmp_path, capsys,
                                                                                          monkeypatch):
    real_save, calls = torch.save, []

    def full_disk_on_the_second_checkpoint(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"the first bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_on_the_second_checkpoint)
    out = tmp_path / "run"
    line = refused(train_vae.main, vae_args(runs / "data", out), capsys, f"{out / 'checkpoint.pt'}: could not write it",
                   "No space left on device", "the previous version is kept")
    assert "MiB free there" in line
    assert training.load_checkpoint(out)["step"] == 1
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_a_read_only_file_system_at_export_keeps_the_checkpoint_and_leaves_no_half_pipeline(runs, tmp_path, capsys,
                                                                                            monkeypatch):
    def read_only(tensors, filename, metadata=None):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", read_only)
    out = tmp_path / "run"
    refused(train_ldm.main, ldm_args(runs / "data", runs / "vae_model", out), capsys,
            f"{out / 'pipeline'}: could not write it (Read-only file system", "nothing was written")
    assert training.load_checkpoint(out)["step"] == 2
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------------------------------------------
# Killed processes: the previous checkpoint / pipeline survives, and the next start cleans up and finishes
# ----------------------------------------------------------------------------------------------------------------
# Runs a script's main(argv) in a fresh process that dies (os._exit, as a kill would) at a chosen write.
KILLER = """
import os, sys
sys.path.insert(0, {root!r})
import torch
import {script} as script

def die_when_the_checkpoint_is_written(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    f.flush()
    os._exit(9)

real_replace = os.replace

def die_between_the_two_renames(src, dst):
    if os.path.basename(dst) == "pipeline" and ".tmp-" in os.path.basename(src):
        os._exit(9)
    return real_replace(src, dst)

if {when!r} == "checkpoint":
    torch.save = die_when_the_checkpoint_is_written
else:
    os.replace = die_between_the_two_renames
script.main({argv!r})
"""


def run_killed(script: str, when: str, argv: list[str]) -> None:
    code = KILLER.format(root=str(ROOT), script=script, when=when, argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 9, proc.stderr[-2000:]


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_finishes(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs / "vae_run", out)
    previous = (out / "checkpoint.pt").read_bytes()
    argv = vae_args(runs / "data", out, "--resume", str(out), "--steps", "4")
    run_killed("train_vae", "checkpoint", argv)
    assert (out / "checkpoint.pt").read_bytes() == previous             # step 2, whole
    assert [p.name for p in out.iterdir() if p.name.startswith(".checkpoint.pt.tmp-")]   # what the kill left
    assert train_vae.main(argv) == 0
    assert training.load_checkpoint(out)["step"] == 4
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_a_kill_during_the_pipeline_export_keeps_the_previous_pipeline_and_resume_finishes(runs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs / "ldm_run", out)
    previous = snapshot(out / "pipeline")
    argv = ldm_args(runs / "data", runs / "vae_model", out, "--resume", str(out), "--steps", "3")
    run_killed("train_ldm", "export", argv)
    assert not (out / "pipeline").exists()                               # killed between the two renames
    aside = [p for p in out.iterdir() if p.name.startswith(".pipeline.old-")]
    assert len(aside) == 1 and snapshot(aside[0]) == previous            # the old pipeline, whole
    assert training.load_checkpoint(out)["step"] == 3
    assert train_ldm.main(argv) == 0                                     # puts it back, then exports step 3
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    unet = io.load_pretrained(out / "pipeline" / "unet")
    ema = training.load_checkpoint(out)["ema"]
    assert all(torch.equal(value, ema["unet." + key]) for key, value in unet.state_dict().items())


# ----------------------------------------------------------------------------------------------------------------
# The library: ldm.io and ldm.training
# ----------------------------------------------------------------------------------------------------------------


def test_a_malicious_pickle_is_refused_without_torchs_advice_to_unpickle_it(runs):
    with pytest.raises(ValueError) as raised:
        io.read_state_dict(runs / "evil.pt")
    message = str(raised.value)
    assert "evil.pt: refused to load" in message and "weights_only=False" not in message and "\n" not in message
    assert not (runs / "pwned").exists()


def test_an_empty_checkpoint_is_named(runs):
    with pytest.raises(ValueError, match=r"empty\.pt: not a readable PyTorch checkpoint \(the file is empty\)"):
        training.load_checkpoint(runs / "empty.pt")


def test_a_class_name_that_is_not_a_string_is_one_line(tmp_path):
    save_vae(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": ["AutoencoderKL"]}))
    with pytest.raises(ValueError, match=r"config.json: unknown _class_name \['AutoencoderKL'\]"):
        io.load_pretrained(tmp_path)


@pytest.mark.parametrize("entry", [["diffusers"], ["diffusers", "AutoencoderKL", "extra"], ["diffusers", 3]])
def test_a_wrong_model_index_entry_names_the_key_and_the_expected_form(runs, tmp_path, entry):
    shutil.copytree(runs / "ldm_run" / "pipeline", tmp_path / "pipeline")
    index = json.loads((tmp_path / "pipeline" / "model_index.json").read_text())
    (tmp_path / "pipeline" / "model_index.json").write_text(json.dumps({**index, "vae": entry}))
    expected = r"model_index.json: entry 'vae' is .*; expected \[\"library\", \"ClassName\"\]"
    with pytest.raises(ValueError, match=expected):
        io.load_pipeline(tmp_path / "pipeline")


def test_a_checkpoint_that_does_not_fit_the_model_is_one_line(runs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(runs / "vae_run", out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)      # not memory-mapped: it is overwritten below
    state["model"]["decoder.conv_out.weight"] = torch.zeros(3, 3)
    torch.save(state, out / "checkpoint.pt")
    refused(train_vae.main, vae_args(runs / "data", out, "--resume", str(out), "--steps", "3"), capsys,
            f"--resume {out}: the checkpoint's contents do not fit this run", "decoder.conv_out.weight")


def test_parse_config_refuses_nan_and_infinity_naming_the_flag(capsys):
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(SystemExit):
            cli.parse_config(train_vae.TrainVAEConfig, [f"--kl-weight={value}"], "")
        assert "--kl-weight must be a finite number" in capsys.readouterr().err


def test_resolve_device_names_the_flag():
    with pytest.raises(ValueError, match="--device 'tpu9' is not a device"):
        ldm_runs.resolve_device("tpu9")


def test_check_resume_names_each_differing_option_and_keeps_the_allowed_ones():
    state = {"step": 5, "train_config": {"lr": 1e-4, "steps": 10, "seed": 0, "log_every": 10}}
    training.check_resume(state, "ckpt", {"lr": 1e-4, "steps": 20, "seed": 0, "log_every": 1}, ("steps", "log_every"),
                          steps=20)
    with pytest.raises(ValueError, match=r"--lr 0.01 \(the checkpoint's: 0.0001\), --seed 1 \(the checkpoint's: 0\)"):
        training.check_resume(state, "ckpt", {"lr": 1e-2, "steps": 20, "seed": 1}, ("steps",), steps=20)
    with pytest.raises(ValueError, match="--steps 4: the checkpoint ckpt is already at step 5"):
        training.check_resume(state, "ckpt", {"lr": 1e-4}, ("steps",), steps=4)


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    files.write_json({"version": 1}, target)

    def full(tmp):
        tmp.write_bytes(b"{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(files.WriteError, match=r"config.json: could not write it \(No space left on device.*the "
                                            r"previous version is kept"):
        files.atomic_write(target, full)
    assert json.loads(target.read_text()) == {"version": 1} and os.listdir(tmp_path) == ["config.json"]


def test_a_log_that_cannot_be_appended_to_is_named(tmp_path):
    (tmp_path / "log.jsonl").mkdir()                                     # a folder where the log should be
    with pytest.raises(files.WriteError, match=r"log.jsonl: could not write it"):
        logs.JsonlLog(tmp_path / "log.jsonl").write({"step": 1})
