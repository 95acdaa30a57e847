"""bench.py runs end to end on the tiny configs and writes the JSON the README and issue describe.
Nothing here is timed: the benchmark measures, the tests only check that it runs and reports every row."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["vae_encode", "vae_decode", "vq_encode_decode", "unet_forward_b1", "unet_forward_b8", "unet_train_step",
        "vae_train_step", "ddim_sampling", "denoiser_train_step"]
ROW_KEYS = {"name", "ldm_ms", "diffusers_ms", "ratio", "ldm_tflops", "ldm_peak_mb", "diffusers_peak_mb"}


def test_bench_runs_on_cpu_and_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--config", "tiny", "--device", "cpu", "--repeats", "1",
           "--warmup", "0", "--steps", "2", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"machine", "torch", "diffusers", "rows"} <= result.keys()
    assert result["diffusers"].startswith("0.42")
    assert sorted(r["name"] for r in result["rows"]) == sorted(ROWS)
    for row in result["rows"]:
        assert ROW_KEYS <= row.keys(), f"{row['name']}: missing {ROW_KEYS - row.keys()}"
        for key in ("ldm_ms", "diffusers_ms", "ratio", "ldm_tflops"):
            assert math.isfinite(row[key]) and row[key] > 0, f"{row['name']}.{key} = {row[key]}"
        # one repeat: the ratio is exactly the quotient of the two times
        assert math.isclose(row["ratio"], row["ldm_ms"] / row["diffusers_ms"], rel_tol=1e-9)
        assert row["ldm_peak_mb"] is None and row["diffusers_peak_mb"] is None   # not measurable on a CPU
        # both sides ran the same model on the same inputs (training steps: the same first loss)
        assert row["max_rel_diff"] < 1e-4, f"{row['name']}: ldm and diffusers differ by {row['max_rel_diff']:.2e}"
        assert row["name"] in proc.stdout
    flops = {r["name"]: r["gflop"] for r in result["rows"]}
    # every FLOP of a forward is per sample, so batch 8 is exactly 8 x batch 1 (each row ran its own inputs)
    assert abs(flops["unet_forward_b8"] / flops["unet_forward_b1"] - 8) < 1e-6
    # a training step (4 x 32x32 latents, forward and backward) costs more than a forward of 8 x 16x16 latents
    assert flops["unet_train_step"] > 2 * flops["unet_forward_b8"] > 0
    # train_ldm's step: the same UNet and latents with 4 ID tokens instead of 8 context tokens: slightly fewer FLOPs
    assert 0.9 * flops["unet_train_step"] < flops["denoiser_train_step"] < flops["unet_train_step"]


def test_bench_help_lists_every_option(capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--device", "--dtype", "--config", "--compile", "--channels-last", "--repeats", "--warmup",
                   "--steps", "--threads", "--rows", "--out", "--markdown"):
        assert option in text
    with pytest.raises(SystemExit):   # a nonsense value is refused with a usage message, not a traceback
        bench.parse_args(["--repeats", "0"])


def test_bench_help_and_option_errors_work_without_diffusers(monkeypatch, capsys):
    """diffusers is a test dependency: without it --help still answers, and a run says what to install."""
    import runpy
    monkeypatch.setitem(sys.modules, "diffusers", None)                # import diffusers now raises ImportError
    monkeypatch.setattr(sys, "argv", ["bench.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "bench.py"), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--device" in text and "--rows" in text
    monkeypatch.setattr(sys, "argv", ["bench.py", "--config", "tiny", "--out", ""])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "bench.py"), run_name="__main__")
    assert exit_info.value.code == ("error: bench.py compares ldm with diffusers, which is not installed; install the "
                                    "test dependencies (make setup, or pip install diffusers==0.42.1)")
