"""Bad outputs of sample.py and evaluate.py, and the run lock (ldm.lock): an output path that is, holds
or lies in one of the command's inputs, two outputs of one command that collide, two processes writing one folder,
and results that are not finite. Each case exits with status 2 (or raises the named exception) with one line that
names what was wrong, and nothing is written."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ldm import lock

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------
# The run lock

HOLD = """
import sys, time
from ldm.lock import hold_run_lock
with hold_run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """A process that holds the lock of ``folder`` until killed (returns once it holds it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_lock_refuses_a_second_live_holder_and_names_it(tmp_path):
    process = _holder(tmp_path / "run")
    try:
        with pytest.raises(ValueError, match=rf"is being written by process {process.pid} on host .+ since "
                                             r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d") as error:
            with lock.hold_run_lock(tmp_path / "run"):
                pass
        assert "\n" not in str(error.value)
        assert lock.lock_holder(tmp_path / "run").startswith(f"process {process.pid} ")
        with pytest.raises(ValueError, match="is being written by"):
            lock.check_unlocked(tmp_path / "run")
    finally:
        process.kill()
        process.wait()


def test_lock_is_not_left_stale_by_a_killed_process(tmp_path):
    process = _holder(tmp_path / "run")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (tmp_path / "run" / lock.LOCK_NAME).exists()            # the file stays, locked by nobody
    assert lock.lock_holder(tmp_path / "run") is None
    with lock.hold_run_lock(tmp_path / "run") as path:
        assert path.read_text().splitlines()[0] == str(os.getpid())
    assert not path.exists()                                         # a clean exit removes it
    lock.check_unlocked(tmp_path / "run")


def test_lock_in_one_process_refuses_a_nested_second_holder(tmp_path):
    with lock.hold_run_lock(tmp_path / "run"):
        with pytest.raises(ValueError, match=f"process {os.getpid()} "):
            with lock.hold_run_lock(tmp_path / "run"):
                pass
    with lock.hold_run_lock(tmp_path / "run"):                       # released: free again
        pass


# ----------------------------------------------------------------------------------------------------------------
# sample.py: outputs apart from inputs and from each other, one run per OUT, no NaN written

def _sample(argv, capsys) -> tuple[int, str]:
    import sample
    capsys.readouterr()
    code = sample.main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from tests.test_sample import build_pipeline
    return build_pipeline(tmp_path_factory.mktemp("pipe") / "run" / "pipeline")


def sample_args(model, out, *extra):
    return ["--model", str(model), "--out", str(out), "--steps", "2", "--num", "1", "--batch-size", "2",
            "--no-progress", *extra]


def _only(folder: Path, *names) -> None:
    """folder holds exactly ``names`` (nothing was written beside them)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_sample_refuses_outputs_that_meet_its_inputs_or_each_other(pipeline, tmp_path, capsys):
    run = pipeline.parent
    data = tmp_path / "data"
    (data / "alice").mkdir(parents=True)
    (data / "alice" / "0.png").write_bytes(b"a real file")
    cases = [
        (sample_args(pipeline, pipeline), f"--out {pipeline} is --model {pipeline}, which this command reads"),
        (sample_args(pipeline, run), f"--out {run} contains --model {pipeline}"),
        (sample_args(pipeline, pipeline / "unet" / "s"), "lies inside --model"),
        (sample_args(pipeline, tmp_path / "s", "--grid", str(tmp_path / "s.json")),
         f"--grid {tmp_path / 's.json'} is the record {tmp_path / 's.json'}: two outputs of one command on one "
         "path would replace each other"),
        (sample_args(pipeline, tmp_path / "s", "--grid", str(tmp_path / "s" / "grid.png")),
         f"--out {tmp_path / 's'} contains --grid {tmp_path / 's' / 'grid.png'}"),
        (sample_args(pipeline, tmp_path / "s", "--grid", str(pipeline / "grid.png")), "lies inside --model"),
        # the real data folder by mistake: it holds files, so it is not a new --out (its files stay untouched)
        (sample_args(pipeline, data), f"--out {data} already holds files (alice); choose a new --out"),
        (sample_args(pipeline, ""), "--out '' names no folder (it would fill the current one)"),
    ]
    for argv, message in cases:
        code, err = _sample(argv, capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    _only(tmp_path, "data")
    _only(data / "alice", "0.png")
    _only(run, "pipeline")


def test_a_second_sample_into_a_live_out_is_refused_naming_the_process(pipeline, tmp_path, capsys):
    out = tmp_path / "s"
    with lock.hold_run_lock(out):
        code, err = _sample(sample_args(pipeline, out), capsys)
        assert code == 2 and err.startswith(f"error: {out} is being written by process {os.getpid()} on host ")
        (out / "bob").mkdir()
        code, err = _sample(sample_args(pipeline, out, "--overwrite"), capsys)   # moving a live run aside: never
        assert code == 2 and f"is being written by process {os.getpid()}" in err and err.count("\n") == 1
        _only(out, "bob", lock.LOCK_NAME)
    _only(tmp_path, "s")


def test_ctrl_c_in_sample_exits_130_in_one_line_and_leaves_no_output(pipeline, tmp_path, capsys, monkeypatch):
    from ldm.pipeline import Pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "generate", interrupted)
    code, err = _sample(sample_args(pipeline, tmp_path / "s"), capsys)
    assert (code, err) == (130, "interrupted\n")
    assert list(tmp_path.iterdir()) == []                               # no OUT, no hidden folder, no record


def test_a_batch_that_cannot_fit_in_memory_is_refused_with_an_estimate(pipeline, tmp_path, capsys):
    code, err = _sample(sample_args(pipeline, tmp_path / "s", "--num", "200000", "--batch-size", "200000"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert re.fullmatch(r"error: --num 200000 --batch-size 200000: needs about [\d.]+ GiB of memory \([\d.]+ GiB for "
                        r"the 600000 images held until written, [\d.]+ GiB for one batch\), [\d.]+ GiB available; "
                        r"lower --batch-size, or --num \(run several times with other --seed values\)\n", err), err
    assert list(tmp_path.iterdir()) == []


def _edited(pipeline: Path, root: Path, part: str, key: str, value) -> Path:
    """A copy of the pipeline folder with one config value changed."""
    copy = root / f"{part}-{key}-{json.dumps(value)}"
    shutil.copytree(pipeline, copy)
    path = copy / part / ("scheduler_config.json" if part == "scheduler" else "config.json")
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    return copy


def test_pipeline_configs_are_checked_like_options_naming_file_and_key(pipeline, tmp_path, capsys):
    cases = [("unet", "sample_size", 0, "a positive integer, [height, width] of them, or null"),
             ("unet", "sample_size", -8, "a positive integer, [height, width] of them, or null"),
             ("vae", "scaling_factor", "0.5", "a positive finite number"),
             ("scheduler", "beta_start", -0.1, "a number in [0, 1) (Stable Diffusion: 0.00085)"),
             ("scheduler", "beta_end", 2.0, "a number in (0, 1] (Stable Diffusion: 0.012)"),
             ("scheduler", "num_train_timesteps", "1000", "a positive integer"),
             ("embedder", "class_to_idx", None, "a map of user names to IDs 0, 1, ...")]
    for part, key, value, expected in cases:
        model = _edited(pipeline, tmp_path, part, key, value)
        file = model / part / ("scheduler_config.json" if part == "scheduler" else "config.json")
        code, err = _sample(sample_args(model, tmp_path / "s"), capsys)
        assert code == 2 and err == f"error: {file}: {key} is {json.dumps(value)}; expected {expected}\n", err
    assert not (tmp_path / "s").exists()


def test_no_nan_image_is_written_and_the_likely_cause_is_named(pipeline, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    broken = tmp_path / "nan-weights"
    shutil.copytree(pipeline, broken)
    weights = load_file(broken / "unet" / "diffusion_pytorch_model.safetensors")
    weights["conv_in.weight"][0, 0, 0, 0] = float("nan")
    save_file(weights, broken / "unet" / "diffusion_pytorch_model.safetensors")
    cases = [
        (sample_args(_edited(pipeline, tmp_path, "vae", "scaling_factor", 1e-30), tmp_path / "s"),
         r"the decoded images hold NaN or Inf: the latents divided by the autoencoder's scaling_factor 1e-30 "
         r"\(vae/config.json\) reach [\d.e+]+; train_vae.py measures it"),
        (sample_args(broken, tmp_path / "s"),
         r"the sampled latents hold NaN or Inf: the UNet's weights do \(1 tensor\(s\), e.g. conv_in.weight\)"),
        (sample_args(pipeline, tmp_path / "s", "--guidance", "1e30"),
         r"the sampled latents hold NaN or Inf with --guidance 1e\+30: a guidance scale this large overflows"),
        (sample_args(pipeline, tmp_path / "s", "--steps", "1000", "--sampler", "dpm++2m"),
         r"--steps 1000: --sampler dpm\+\+2m takes at most 999 steps on this pipeline's schedule of 1000 training "
         r"timesteps"),
        (sample_args(pipeline, tmp_path / "s", "--steps", "1000", "--sampler", "ddim"),
         r"--steps 1000: --sampler ddim takes at most 999 steps"),
    ]
    for argv, message in cases:
        code, err = _sample(argv, capsys)
        assert code == 2 and re.match("error: " + message, err) and err.count("\n") == 1, err
        assert not (tmp_path / "s").exists() and not (tmp_path / "s.json").exists()
    with pytest.raises(SystemExit):                                     # --eta 5: refused as an option
        _sample(sample_args(pipeline, tmp_path / "s", "--eta", "5"), capsys)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------------------------------
# evaluate.py and fewshot.py: a report never lands on an input or on another output

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """Two users x 8 grey 32x48 PNGs, a run folder holding their split.json, and a folder of 'generated' PNGs."""
    from ldm.splits import make_split, write_split
    from tests.helpers import png_folder
    from PIL import Image
    root = tmp_path_factory.mktemp("eval")
    data, generated = root / "data", root / "gen"
    data.mkdir()
    generated.mkdir()
    png_folder(data, 8, 32)
    png_folder(generated, 3, 32)
    for path in root.rglob("*.png"):                                    # 32 x 48 (height x width): not square
        Image.open(path).resize((48, 32)).save(path)
    (root / "run").mkdir()
    write_split(root / "run" / "split.json", make_split(data, test_fraction=0.5, val_fraction=0.0))
    return data, root / "run", generated


def _evaluate(argv, capsys) -> tuple[int, str]:
    import evaluate
    capsys.readouterr()
    code = evaluate.main(argv)
    return code, capsys.readouterr().err


def test_evaluate_refuses_outputs_that_meet_its_inputs_or_each_other(real_run, tmp_path, capsys):
    data, run, generated = real_run
    split = run / "split.json"
    before = split.read_bytes()

    def argv(*extra, split_arg=split):
        return ["--real", str(data), "--generated", str(generated), "--split", str(split_arg), "--quiet", *extra]

    cases = [
        (argv("--out", str(split)), f"--out {split} is --split {split}, which this command reads"),
        (argv("--out", str(split), split_arg=run), f"--out {split} is --split {split}, which this command reads"),
        (argv("--out", str(generated / "report.json")), f"--out {generated / 'report.json'} lies inside --generated"),
        (argv("--out", str(data)), f"--out {data} is --real {data}"),
        (argv("--out", str(tmp_path / "r.json"), "--confusion-png", str(tmp_path / "r.json")),
         f"--out {tmp_path / 'r.json'} is --confusion-png {tmp_path / 'r.json'}: two outputs of one command on one "
         "path would replace each other; choose another --out"),
        (argv("--out", str(tmp_path / "r.json"), "--classifier", str(tmp_path / "r.json")),
         "--out " + str(tmp_path / "r.json") + " is --classifier"),
    ]
    for args, message in cases:
        code, err = _evaluate(args, capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert split.read_bytes() == before and list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in run.iterdir()) == ["split.json"]


def test_evaluate_size_follows_the_data_and_the_report_lands_beside_the_split(real_run, tmp_path, capsys):
    data, run, generated = real_run
    out = run / "report.json"                                           # beside the split: fine
    code, err = _evaluate(["--real", str(data), "--generated", str(generated), "--split", str(run), "--out", str(out),
                           "--quiet", "--epochs", "1", "--min-steps", "1", "--bootstrap", "10", "--pca-dims", "2",
                           "--physics", "off"], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["options"]["size"] == [32, 48]                        # the files' size, not a fixed 64
    assert report["classifier"]["image_size"] == [32, 48]
    out.unlink()
    (run / "report_confusion.png").unlink()


def test_fewshot_refuses_an_experiment_folder_on_its_inputs(real_run, tmp_path, capsys):
    import fewshot
    data, run, _ = real_run
    before = sorted(p.name for p in data.iterdir())
    cases = [(["--data", str(data), "--out", str(data)], f"--out {data} is or lies in --data {data}"),
             (["--data", str(data), "--out", str(data / "fs")], f"--out {data / 'fs'} is or lies in --data {data}")]
    for argv, message in cases:
        capsys.readouterr()
        assert fewshot.main(argv + ["--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in data.iterdir()) == before


def test_a_real_ctrl_c_in_sample_exits_130_without_a_traceback_and_leaves_nothing(pipeline, tmp_path):
    """SIGINT to a running sample.py (as Ctrl-C sends it), once it is sampling: one line, status 130, and no OUT,
    no hidden folder, no grid and no record left behind."""
    out = tmp_path / "s"
    # SIGINT back to its default in the child: a shell starts background jobs (e.g. `make test &`) with SIGINT
    # ignored, and Python then leaves it ignored, so Ctrl-C would not reach sample.py as it does from a terminal.
    process = subprocess.Popen([sys.executable, str(ROOT / "sample.py"), *sample_args(pipeline, out, "--steps", "999",
                                                                                      "--num", "64")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".s.tmp-") for p in tmp_path.iterdir()):   # the hidden folder: it samples
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:                                      # a failed test leaves no sampler running
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert stderr == "interrupted\n" and "Traceback" not in stdout
    assert list(tmp_path.iterdir()) == []


def test_a_killed_sample_runs_hidden_folder_is_cleared_by_the_next_run(pipeline, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                         # a PID no process has now
    left = tmp_path / f".s.tmp-{dead.pid}"
    (left / "alice").mkdir(parents=True)
    (tmp_path / f".other.tmp-{dead.pid}").mkdir()                       # another output's: not sample.py's to touch
    assert _sample(sample_args(pipeline, tmp_path / "s"), capsys)[0] == 0
    _only(tmp_path, "s", "s.json", "s_grid.png", f".other.tmp-{dead.pid}")
