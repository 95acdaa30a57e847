"""One writer per run folder.

A script that writes a run folder (``train_vae.py``, ``train_ldm.py``, ``sample.py``) holds this lock for as long as
it writes. A second process that wants to write the same folder (a second run with the same ``--out``, a second
``--resume``, an ``--overwrite`` of a run that is still going) is refused with one line naming the holder:

    runs/vae is being written by process 4242 on host lab-3 since 2026-12-06 15:20:11 (python train_vae.py ...);
    wait for it to finish or stop it, or choose another --out

The lock is ``fcntl.flock`` on the file ``FOLDER/.ldm-lock``. The kernel drops a flock when its process ends, however
it ends (kill -9, power loss of a remote client aside), so a killed process never leaves a stale lock: the file
it leaves behind is locked by nobody and the next writer takes it over. The file's text (PID, host, start time,
command) serves only the message. Scripts listing what a run folder holds skip ``LOCK_NAME``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".ldm-lock"


def lock_holder(folder: str | os.PathLike) -> str | None:
    """Who holds the lock of ``folder`` ("process PID on host HOST since TIME (COMMAND)"), or None when nobody does
    (no lock file, or one left by a process that has ended)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_unlocked(folder: str | os.PathLike, what: str = "--out") -> None:
    """Raise ValueError naming the holder when a live process writes ``folder`` (for --overwrite, before the folder
    is moved aside)."""
    holder = lock_holder(folder)
    if holder is not None:
        raise ValueError(f"{folder} is being written by {holder}; wait for it to finish or stop it, "
                         f"or choose another {what}")


@contextlib.contextmanager
def hold_run_lock(folder: str | os.PathLike, what: str = "--out"):
    """Hold the write lock of run folder ``folder`` (created if missing) for the ``with`` block.

    Raises ValueError in one line naming the process that holds it ("FOLDER is being written by process PID on host
    HOST since TIME (COMMAND); ..."); ``what`` names the option the user can change instead (default ``--out``).
    On leaving the block the lock file is removed and the lock released.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    try:
        fd = _acquire(path, what)
    except PermissionError as error:            # a read-only folder, or a lock file of another user
        raise ValueError(f"{path.parent}: cannot write its lock file {path.name} ({error.strerror}); choose "
                         f"another {what}") from None
    try:
        record = (f"{os.getpid()}\n{socket.gethostname()}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  f"{' '.join(['python', *sys.argv])[:300]}\n")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)                     # while still locked, so no one takes over a file about to vanish
        os.close(fd)                            # closing the last descriptor releases the flock


def _acquire(path: Path, what: str) -> int:
    """Open and flock ``path`` exclusively without waiting; return the descriptor."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _describe(path) or "another process"
            raise ValueError(f"{path.parent} is being written by {holder}; wait for it to finish or stop it, "
                             f"or choose another {what}") from None
        except OSError as error:                # a file system without locks (some network mounts): ENOLCK
            os.close(fd)
            raise ValueError(f"{path.parent}: cannot take its write lock {path.name} ({error.strerror}); choose "
                             f"another {what} on a local file system") from None
        # The holder before us may have unlinked the file between our open and our flock: then we locked a file
        # nobody else can see, and must lock the one now at ``path`` instead.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise ValueError(f"{path.parent}: could not take the lock {path} (it keeps being replaced by other processes)")


def _describe(path: Path) -> str | None:
    """The lock file's record as "process PID on host HOST since TIME (COMMAND)"."""
    try:
        fields = path.read_text().splitlines()
    except OSError:
        return None
    if len(fields) < 3:
        return "another process (it is still starting)"
    pid, host, since = fields[:3]
    command = f" ({fields[3]})" if len(fields) > 3 and fields[3] else ""
    return f"process {pid} on host {host} since {since}{command}"
