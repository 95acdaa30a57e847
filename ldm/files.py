"""Files ldm reads and writes whole: a JSON object read with a one-line error, and atomic writes (a file or folder
appears whole or not at all; an interrupted write leaves the previous one), and the check that a command's outputs
lie apart from its inputs and from each other.

    read_json                          a JSON object, or one line naming the file
    atomic_write, replace_folder       write beside, fsync, rename into place; folders moved aside and back
    save_image, write_json             the two kinds of file most outputs are
    temp_name, is_temp_name,           the hidden names of writes in progress, and clearing those a killed
    remove_stale_temps                 process left behind
    check_outputs_apart                no output inside an input, nor two outputs on one path
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from safetensors import SafetensorError


def first_line(error: Exception) -> str:
    """The first non-empty line of an error's message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else ""


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes: every file and folder ldm writes appears whole or not at all
# ----------------------------------------------------------------------------------------------------------------


def temp_name(path: Path, kind: str = "tmp", pid: int | None = None) -> Path:
    """The hidden name beside ``path`` that process ``pid`` (default: this one) writes to: ``.NAME.tmp-PID``, or
    ``.NAME.old-PID`` for a folder moved aside by replace_folder. remove_stale_temps recognises these names."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid() if pid is None else pid}")


class WriteError(OSError):
    """A file or folder could not be written (disk full, read-only, ...): ``str()`` is one line naming it, and
    ``reason`` says why."""

    def __init__(self, path: Path, reason: str):
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        super().__init__(f"{path}: could not write it ({reason}); {kept}")
        self.reason = reason


_UMASK = os.umask(0o022)   # read the process's umask (only by setting one), then put it back
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` for a temporary file beside ``path``, fsync it and rename it over ``path``.

    The rename is atomic (same folder, same file system), so readers and a crash at any moment see the old file or
    the new one, never a part. A failed write (disk full, read-only file system, ...) raises WriteError naming
    ``path`` in one line; the old file is kept and the temporary one removed. The file gets the mode an ordinary
    new file gets (0644 under umask 022), whatever mode the writer created it with (safetensors: 0600).
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, SafetensorError) as error:   # torch.save reports failed writes as RuntimeError
        raise WriteError(path, _write_failure(error, path)) from error
    finally:
        tmp.unlink(missing_ok=True)


def _write_failure(error: Exception, path: Path) -> str:
    """Why a write failed, and the free space left on that file system."""
    if isinstance(error, WriteError):
        return error.reason
    reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
    folder = next((p for p in (path.parent, *path.parent.parents) if p.is_dir()), None)
    if folder is not None:
        reason += f"; {shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    return reason


def replace_folder(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` to fill a temporary folder beside ``path``, then swap it in: the old folder is renamed
    aside (``.NAME.old-PID``), the new one renamed to ``path``, and only then the old one deleted.

    A crash while the new folder is written leaves the old one untouched; a crash between the two renames leaves
    the old one under its ``.old`` name, where remove_stale_temps (at the next start) puts it back.
    """
    path = Path(path)
    tmp, old = temp_name(path), temp_name(path, "old")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        write(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except (OSError, RuntimeError, SafetensorError) as error:
        if old.exists() and not path.exists():
            os.replace(old, path)                                        # undo the first rename
        raise WriteError(path, _write_failure(error, path)) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


_TEMP_PATTERN = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)")


def is_temp_name(name: str) -> bool:
    """Whether a file or folder name is one of temp_name's (``.NAME.tmp-PID`` or ``.NAME.old-PID``)."""
    return _TEMP_PATTERN.fullmatch(name) is not None


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Clear what killed processes left in ``folder``: temporary files and folders (``.NAME.tmp-PID``) are deleted,
    and a folder moved aside by replace_folder (``.NAME.old-PID``) is put back when NAME is missing (the crash came
    between the two renames), else deleted. Only names of processes that are no longer alive on this machine are
    touched, and with ``name`` only those of that NAME. Returns what was done, one phrase per entry."""
    folder, done = Path(folder), []
    if not folder.is_dir():
        return done
    for entry in sorted(folder.iterdir()):
        match = _TEMP_PATTERN.fullmatch(entry.name)
        if not match or (name is not None and match["name"] != name) or _pid_alive(int(match["pid"])):
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and not target.exists():
            os.replace(entry, target)
            done.append(f"restored {target.name} from {entry.name}")
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        done.append(f"removed {entry.name}")
    return done


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                                              # alive, another user's
        return True
    return True


def save_image(image, path: str | os.PathLike) -> None:
    """Write a PIL image as PNG, atomically."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_json(value: dict, path: str | os.PathLike) -> None:
    """Write JSON the way diffusers does (indent 2, sorted keys, trailing newline), atomically."""
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ----------------------------------------------------------------------------------------------------------------
# Outputs apart from inputs: a command never writes into what it reads, nor two of its outputs onto one path
# ----------------------------------------------------------------------------------------------------------------
def _overlap(a: Path, b: Path) -> str | None:
    """How path ``a`` relates to path ``b`` (both resolved): "is", "lies inside", "contains", or None."""
    if a == b:
        return "is"
    if b in a.parents:
        return "lies inside"
    if a in b.parents:
        return "contains"
    return None


def check_outputs_apart(outputs: dict[str, str | os.PathLike | None],
                        inputs: dict[str, str | os.PathLike | None]) -> None:
    """Raise ValueError unless every output path is apart from every input path and from the other outputs.

    outputs, inputs: {name shown to the user (an option such as "--out", or "the record OUT.json"): path or None}.
    An output that is, lies inside or contains an input would write into what the command reads (generated images
    into the real data folder, a report over the split it was made from); two outputs on one path, or one inside
    the other, would silently replace each other. Paths are compared resolved (links followed), so two spellings of
    one folder are caught. The error names both, in one line."""
    def resolved(path) -> Path:
        return Path(os.path.abspath(os.fspath(path))).resolve()

    outs = {name: resolved(path) for name, path in outputs.items() if path is not None and os.fspath(path) != ""}
    ins = {name: resolved(path) for name, path in inputs.items() if path is not None and os.fspath(path) != ""}
    for out_name, out in outs.items():
        for in_name, source in ins.items():
            relation = _overlap(out, source)
            if relation:
                raise ValueError(f"{out_name} {outputs[out_name]} {relation} {in_name} {inputs[in_name]}, which this "
                                 f"command reads: it never writes into its inputs; choose another {out_name}")
    names = list(outs)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            relation = _overlap(outs[first], outs[second])
            if relation:
                raise ValueError(f"{first} {outputs[first]} {relation} {second} {outputs[second]}: two outputs of one "
                                 f"command on one path would replace each other; choose another {first}")
