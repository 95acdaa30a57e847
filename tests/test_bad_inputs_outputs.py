"""Bad outputs of sample.py, evaluate.py and augment.py, and the run lock (ldm.lock): an output path that is, holds
or lies in one of the command's inputs, two outputs of one command that collide, two processes writing one folder,
and results that are not finite. Each case exits with status 2 (or raises the named exception) with one line that
names what was wrong, and nothing is written."""
import os
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
