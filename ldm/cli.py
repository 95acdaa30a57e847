"""The command-line layer every script shares: options declared as dataclass fields, parsed into a config, and
one wrapper that turns a script's errors into one line and an exit status.

    @dataclass
    class Config:
        steps: int = option(1000, "optimizer steps", at_least=1)
        out: str = option("runs/x", "the run folder")

    def main(argv=None) -> int:
        cfg = parse_config(Config, argv, "what the script does")
        return run_main(run, cfg)

This module imports no torch and no other ldm module, so ``--help`` answers at once and any module may import it
without a cycle (``tests/test_imports.py`` checks both).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from pathlib import Path

# The loader policies of ldm.data, as option choices (ldm.data imports them from here).
NPY_SCALES = ("db", "magnitude", "power", "unit", "minmax")
RESIZE_POLICIES = ("resize", "center_crop", "random_crop", "pad", "none")


class RunError(RuntimeError):
    """A failure a command reports as one line without being a bad input (a diverged run, ...)."""


# ----------------------------------------------------------------------------------------------------------------
# Running a script
# ----------------------------------------------------------------------------------------------------------------


def run_main(run, cfg, prog: str | None = None) -> int:
    """Run a script's ``run(cfg)`` the way its command line promises: a bad input, a failed write or a diverged run
    end with one line ``error: ...`` on stderr and exit status 2, an interrupt (Ctrl-C) with exit status 130.
    ``run`` returns the exit status (None counts as 0). prog: a name put before ``error:``."""
    lead = f"{prog}: " if prog else ""
    try:
        return run(cfg) or 0
    except (ValueError, OSError, RunError) as error:         # OSError: ldm.files.WriteError and friends, one line
        print(f"{lead}error: " + str(error).replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{lead}interrupted", file=sys.stderr)
        return 130


def flag(name: str) -> str:
    """The command-line flag of a config field: ``num_steps`` -> ``--num-steps``."""
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------------------------------------------
# Checks of option values that need no torch
# ----------------------------------------------------------------------------------------------------------------


def check_regex(pattern: str | None, flag: str) -> None:
    """A regular-expression option compiles (else one line naming the flag and the reason)."""
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{flag} {pattern!r} is not a regular expression ({error})") from None


def db_reference(text: str) -> str | float:
    """A --db-reference value: 'max' (each image's maximum is 0 dB) or a finite number of dB."""
    if text == "max":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"--db-reference must be 'max' or a finite number of dB, got {text!r}")
    return value


def size_text(height: int, width: int) -> str:
    """The --size text of an image size: "N" for N x N, else "HxW" (ldm.data.parse_size reads both)."""
    return str(height) if height == width else f"{height}x{width}"


def check_data_option(data: str, flag: str = "--data") -> None:
    """A --data value must be 'microdoppler' or an existing folder: a one-line error for a file or a missing path."""
    path = Path(data)
    if data == "microdoppler" or path.is_dir():
        return
    if path.exists():
        raise ValueError(f"{flag} {data} is a file; expected a folder ROOT/<user>/<files> (or a flat ROOT/<files>), "
                         "or 'microdoppler'")
    raise FileNotFoundError(f"{flag} {data}: no such folder (expected ROOT/<user>/<files> or a flat ROOT/<files>, "
                            "or 'microdoppler')")


def check_writable(folder: str | os.PathLike, flag: str = "--out") -> None:
    """Raise ValueError naming ``flag`` unless ``folder`` is, or can be created as, a folder this process may write
    to. Probed in the nearest existing ancestor (a file created and removed), so nothing is left behind."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {folder}: cannot write there ({existing} is a file, not a folder)")
    probe = existing / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"{flag} {folder}: cannot write there ({error.strerror})") from None


# ----------------------------------------------------------------------------------------------------------------
# Command lines from config dataclasses
# ----------------------------------------------------------------------------------------------------------------


def option(default, help: str, choices=None, *, at_least=None, above=None, at_most=None, below=None):
    """A config field with its --help text, its allowed values, and its range.

    ``at_least``/``at_most`` are inclusive bounds, ``above``/``below`` exclusive ones; parse_config refuses a value
    outside them (and a NaN or infinite float) before anything runs, naming the flag. The range is shown in --help.
    """
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices,
                                                        "bounds": {k: v for k, v in bounds.items() if v is not None}})


# The loader options every script that reads a data folder takes (ldm.data's policies), written once.
def resize_option():
    return option("resize", "how files of another size become --size: stretched, cropped, scaled to fit and padded "
                            "with -1 (the aspect ratio kept), or none (must match); see ldm/data.py",
                  choices=RESIZE_POLICIES)


def colormap_option():
    return option("none", "PNG/JPEG files: grayscale levels, or a jet-coloured rendering mapped back to levels",
                  choices=("none", "jet"))


def npy_scale_option():
    return option("db", "what .npy values are (see ldm/data.py)", choices=NPY_SCALES)


# ... and the run-folder options of both training scripts.
def resume_option():
    return option(None, "resume from this checkpoint.pt or run folder, with the options it was started with (an "
                        "error names any that differ, and those that may)")


def overwrite_option():
    return option(False, "start a new run in an --out that holds one: the old folder is moved aside to "
                         "OUT.old-<time>, never deleted")


_BOUND_TEXT = {"at_least": ">= {}", "above": "> {}", "at_most": "<= {}", "below": "< {}"}
_BOUND_OK = {"at_least": lambda v, b: v >= b, "above": lambda v, b: v > b,
             "at_most": lambda v, b: v <= b, "below": lambda v, b: v < b}


def check_range(name: str, value, bounds: dict) -> str | None:
    """Why ``value`` is outside ``bounds`` (option()'s keywords) as one phrase, or None when it is inside.
    A float must also be finite."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    failed = [_BOUND_TEXT[k].format(b) for k, b in bounds.items() if not _BOUND_OK[k](value, b)]
    if failed:
        wanted = " and ".join(_BOUND_TEXT[k].format(b) for k, b in bounds.items())
        return f"{name} must be {wanted}, got {value}"
    return None


def parse_config(cls, argv: list[str] | None, description: str, prog: str | None = None, defaults: dict | None = None):
    """Turn the fields of dataclass ``cls`` into ``--kebab-case`` flags (booleans as --flag / --no-flag); every
    flag's --help shows its default (unless None, or the help text already says what the default is) and range, and
    options whose help says "(required)" are listed apart. Fields are annotated ``int``, ``float``, ``str`` or
    ``bool``, optionally ``| None``. A value outside its option() range is refused here, with exit status 2. prog: the
    name --help shows (a module run with python -m would otherwise show its file name). defaults: field name ->
    value replacing the field's default (a resumed run's own options)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    required = parser.add_argument_group("required options")
    flags = {}
    for f in dataclasses.fields(cls):
        flag = flags[f.name] = "--" + f.name.replace("_", "-")
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        base = annotation.split("|")[0].strip()
        help_text = f.metadata["help"]
        default = (defaults or {}).get(f.name, f.default)
        bounds = f.metadata.get("bounds") or {}
        if bounds:
            help_text += " [" + ", ".join(_BOUND_TEXT[k].format(b) for k, b in bounds.items()) + "]"
        if default is not None and not re.search(r"\bdefault\b", f.metadata["help"]):
            shown = ("--" if default else "--no-") + f.name.replace("_", "-") if base == "bool" else default
            help_text += f" (default: {shown})"
        group = required if "(required)" in f.metadata["help"] else parser
        if base == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            group.add_argument(flag, type={"int": int, "float": float}.get(base, str), default=default,
                               help=help_text, choices=f.metadata.get("choices"))
    args = parser.parse_args(argv)
    for f in dataclasses.fields(cls):
        problem = check_range(flags[f.name], getattr(args, f.name), f.metadata.get("bounds") or {})
        if problem:
            parser.error(problem)
    return cls(**vars(args))
