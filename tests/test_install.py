"""ldm installs as a package: `pip install .` (not editable) into a fresh virtual environment, then its console
scripts and `python -m ldm.shapes` run from another folder, importing ldm from the installed copy, not the clone."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"          # the Makefile's pin; pip finds it as a local wheel here, in seconds
PACKAGE_FILES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE")


def run(*command, cwd) -> str:
    proc = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}: {proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_pip_install_then_console_scripts_and_the_package_from_another_folder(tmp_path):
    """The source is copied first (what a clone holds of the package), so the build leaves nothing in the working
    tree. About 25 s on 2 CPU cores, most of it installing torch."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "ldm", source / "ldm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in PACKAGE_FILES:
        shutil.copy(ROOT / name, source / name)
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(sys.executable, "-m", "venv", venv, cwd=elsewhere)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", TORCH, source, cwd=elsewhere)

    location = run(python, "-c", "import ldm, ldm.vae; print(ldm.__file__)", cwd=elsewhere).strip()
    assert Path(location).is_relative_to(venv) and not Path(location).is_relative_to(ROOT), location
    table = run(venv / "bin" / "ldm-shapes", "--model", "vae", "--preset", "tiny", cwd=elsewhere)
    assert "decoder.conv_out" in table and "(1, 3, 32, 32)" in table
    assert "decoder.conv_out" in run(python, "-m", "ldm.shapes", "--model", "vae", "--preset", "tiny", cwd=elsewhere)
    for script in ("ldm-microdoppler", "ldm-radar"):
        assert "usage:" in run(venv / "bin" / script, "--help", cwd=elsewhere)
    [dist_info] = venv.glob("lib/python*/site-packages/ldm_reference-0.1.0.dist-info")
    assert json.loads((dist_info / "direct_url.json").read_text())["dir_info"] == {}   # {"editable": true} if -e
    assert (dist_info / "licenses" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
