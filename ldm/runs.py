"""A training run's life, shared by train_vae.py and train_ldm.py: main() -> start() -> claim() -> Loop ->
write_checkpoint() -> report(), the data, split and device it resolves, and the run folder it owns. (What happens
inside a step is ldm/training.py; the log and pictures a run leaves behind are ldm/logs.py.)

A run folder belongs to one run: a new run refuses a folder that holds files unless it resumes that run (--resume)
or moves it aside (--overwrite); a resumed run refuses options that would change what is trained; a folder is
locked while a process writes it (ldm/lock.py); Ctrl-C finishes the step under way and writes its checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ldm import cli, files, lock
from ldm.cli import size_text
from ldm.data import parse_size
from ldm.logs import JsonlLog
from ldm.splits import check_split, make_split, read_split
from ldm.training import (Distributed, NonFiniteError, NonFiniteGuard, check_resume, load_checkpoint, rng_state,
                          save_checkpoint, setup_distributed, teardown_distributed)

# ----------------------------------------------------------------------------------------------------------------
# Data, split and device of a run
# ----------------------------------------------------------------------------------------------------------------


def resolve_data(cfg, is_main: bool, local_rank: int | None = None) -> Path:
    """The data folder of a training config (fields data, out, size, sim_users, sim_per_user, seed, progress);
    for ``--data microdoppler``, simulate it once next to the run folder and reuse it afterwards.

    Several processes: global rank 0 simulates while the others wait; then, on every machine that does not see
    that folder (one whose file system is not shared with rank 0's), the process of local rank 0 simulates the
    same data again (the simulator is seeded, so the files are identical) while that machine's others wait.
    ``local_rank`` defaults to the LOCAL_RANK torchrun sets. A --data DIR is read as it is, so on machines without
    a shared file system it must exist at the same path on each."""
    if cfg.data != "microdoppler":
        return Path(cfg.data)
    height, width = parse_size(str(cfg.size), "--size")
    check_simulator_size(height, width)
    name = f"microdoppler-{height}px-{cfg.sim_users}x{cfg.sim_per_user}-seed{cfg.seed}"
    folder = Path(cfg.out).resolve().parent / name
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if is_main:
        _simulate_once(cfg, folder, height)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        if local_rank == 0 and not is_main:                   # the first process of another machine
            _simulate_once(cfg, folder, height)
        torch.distributed.barrier()
    return folder


def _simulate_once(cfg, folder: Path, side: int) -> None:
    """Write the simulated dataset into ``folder`` unless it is there; a temporary folder renamed into place, so
    that a run killed half-way leaves nothing, and a second writer that loses the race discards its copy."""
    from ldm.radar.simulator import write_dataset
    if (folder / "metadata.json").is_file():
        return
    tmp = folder.with_name(folder.name + f".tmp-{socket.gethostname()}-{os.getpid()}")
    write_dataset(tmp, cfg.sim_users, cfg.sim_per_user, side, cfg.seed, progress=cfg.progress)
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "metadata.json").is_file():
            raise
        shutil.rmtree(tmp)                                    # another machine on this file system wrote it first


def resolve_split(root: Path, given: str | None, resume: str | None, new: dict) -> tuple[dict, str]:
    """The split of a training run, checked against the data folder ``root``, and where it came from: the
    split.json ``given`` (--split), else the resumed run's own split.json, else a new split decided now by
    ``ldm.splits.make_split(root, **new)``. The caller writes it into its run folder (``write_split``)."""
    if given is None and resume is not None:
        folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        if (folder / "split.json").is_file():
            given = str(folder / "split.json")
    if given is not None:
        split = read_split(given)
        check_split(split, root)
        return split, f"read from {given}"
    split = make_split(root, **new)
    return split, "decided now"


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """The device named by a --device option: cpu, cuda, cuda:N, mps, or auto (cuda when available, else cpu).
    ValueError naming the option when the name is not a device or that device is not on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{flag} {name!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: this machine has no CUDA device (torch {torch.__version__}); "
                             f"use --device cpu") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag} {name!r}: ldm runs on cpu, cuda or mps")
    return device


def check_simulator_size(height: int, width: int) -> None:
    """--data microdoppler simulates square images of the simulator's sizes."""
    from ldm.radar.simulator import SIZES
    if height != width or height not in SIZES:
        raise ValueError(f"--size {size_text(height, width)}: --data microdoppler simulates square spectrograms of "
                         f"side {', '.join(map(str, SIZES))}; pass one of those, or a folder of your own with --data")


# ----------------------------------------------------------------------------------------------------------------
# Run folders: checked before anything runs, claimed just before the first write
# ----------------------------------------------------------------------------------------------------------------


def run_folder_entries(out: Path) -> list[str]:
    """What ``out`` holds, without the temporary names of ldm.io (``.NAME.tmp-PID``, ``.NAME.old-PID``) and the run
    lock's file (ldm.lock.LOCK_NAME)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if not files.is_temp_name(p.name) and p.name != lock.LOCK_NAME)


def check_run_folder(out: Path, resume: str | None, overwrite: bool) -> None:
    """A run writes into a folder of its own: ``out`` must be empty or missing, unless this run resumes the run that
    is in it (--resume naming ``out`` or its checkpoint) or --overwrite moves it aside (claim_run_folder). A folder
    that a live process writes (ldm.lock) is refused in every case, naming that process."""
    lock.check_unlocked(out)
    resumed = None if resume is None else (Path(resume) if Path(resume).is_dir() else Path(resume).parent)
    if resumed is not None and resumed.resolve() == out.resolve():
        if overwrite:
            raise ValueError(f"--overwrite moves {out} aside, --resume {resume} continues the run in it: pass one")
        return
    entries = run_folder_entries(out)
    if not entries or overwrite:
        return
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    if "checkpoint.pt" not in entries:
        raise ValueError(f"--out {out} holds a run that stopped before its first checkpoint ({shown}), so there is "
                         "nothing to resume; start it again with --overwrite (the old folder is moved aside to "
                         f"{out.name}.old-<time>), or choose a new --out")
    raise ValueError(f"--out {out} already holds a run ({shown}); continue it with --resume {out}, or choose a new "
                     f"--out (--overwrite moves the old folder aside to {out.name}.old-<time>)")


def claim_run_folder(out: Path, overwrite: bool) -> list[str]:
    """Make ``out`` ready for this run (after every check passed, before the first write): with --overwrite a folder
    holding files is renamed to OUT.old-<time> (never deleted); what dead processes left in it is cleared
    (ldm.files.remove_stale_temps). Returns what was done, one phrase each, for the start-up summary."""
    done = []
    if overwrite and run_folder_entries(out):
        lock.check_unlocked(out)                                        # never move a live run aside
        stamp = time.strftime("%Y%m%d-%H%M%S")
        names = (f"{out.name}.old-{stamp}" + (f"-{n}" if n else "") for n in itertools.count())
        aside = next(out.with_name(name) for name in names if not out.with_name(name).exists())
        os.replace(out, aside)
        done.append(f"moved the old run aside to {aside}")
    out.mkdir(parents=True, exist_ok=True)
    done += files.remove_stale_temps(out)
    return done


def write_run_config(out: Path, script: str, options: dict) -> None:
    """OUT/config.json: the script and every resolved option of this run (the checkpoint keeps a copy)."""
    files.write_json({"script": script, **options}, out / "config.json")


def resumed_folder(resume: str) -> Path:
    """The run folder a --resume value names (the folder itself, or the folder of its checkpoint file)."""
    return Path(resume) if Path(resume).is_dir() or not Path(resume).suffix else Path(resume).parent


def saved_options(resume: str, fields: set[str]) -> dict:
    """The options the run named by --resume was started with: its config.json, else its checkpoint's copy; only
    those of ``fields``; {} when neither can be read (the resume itself then says why)."""
    folder = resumed_folder(resume)
    try:
        saved = files.read_json(folder / "config.json") if (folder / "config.json").is_file() else \
            load_checkpoint(resume).get("train_config") or {}
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in saved.items() if k in fields}


# ----------------------------------------------------------------------------------------------------------------
# A training script's life: main() -> start() -> claim() -> Loop -> write_checkpoint() -> report()
# ----------------------------------------------------------------------------------------------------------------
# Options a resumed run never takes from the run it resumes: where it runs and how it was started.
NOT_RESUMED = ("resume", "overwrite", "out", "device")


def main(train, config_class, argv: list[str] | None, doc: str) -> int:
    """A training script's main(): parse the options (with --resume RUN, every option not given is the run's own,
    from its config.json, and --out defaults to RUN), then run ``train(cfg)`` as ldm.cli.run_main does, with the
    interrupt reported truthfully: which step --resume continues from, or that there is nothing to resume."""
    description = doc.split("\n\n")[0] + " The defaults are sized for a GPU (many hours on a CPU); a run sized " \
        "for a CPU: docs/training.md, 'A run on a CPU'."
    cfg = cli.parse_config(config_class, argv, description)
    if cfg.resume is not None:
        fields = {f.name for f in dataclasses.fields(config_class)} - set(NOT_RESUMED)
        defaults = {**saved_options(cfg.resume, fields), "out": str(resumed_folder(cfg.resume))}
        cfg = cli.parse_config(config_class, argv, description, defaults=defaults)

    def guarded(cfg) -> int:
        try:
            return train(cfg)
        except Interrupted as stop:
            print(f"\n{stop}", file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            print("\n" + interrupted_message(Path(cfg.out)), file=sys.stderr)
            return 130
        finally:
            while _OPEN_RUNS:                                            # this run's lock, signal handler, ...
                _OPEN_RUNS.pop().close()

    return cli.run_main(guarded, cfg)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C ended the loop after a step whose checkpoint was written; ``str()`` says how to continue."""


def interrupted_message(out: Path) -> str:
    """What an interrupt outside the loop (or a second Ctrl-C inside it) leaves: the last checkpoint, or nothing."""
    try:
        step = load_checkpoint(out)["step"]
    except (OSError, ValueError):
        return f"interrupted; {out} holds no checkpoint, so there is nothing to resume (run the command again" + \
            (", with --overwrite)" if run_folder_entries(out) else ")")
    return f"interrupted; the last checkpoint ({out / 'checkpoint.pt'}, step {step}) is kept: --resume {out} " \
           f"continues from step {step}"


# What is open while a run runs (its folder's lock, the Ctrl-C handler); main() closes them however train() ends.
_OPEN_RUNS: list[contextlib.ExitStack] = []

# Environment variables torchrun sets; a process that finds some of them without torchrun would wait for peers that
# never come.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def check_launch_environment() -> None:
    """Refuse leftover torchrun variables: a process not started by torchrun (no TORCHELASTIC_RUN_ID) that finds
    RANK, WORLD_SIZE, LOCAL_RANK or MASTER_* but not the full set a manual multi-process launch needs would hang
    waiting for processes that do not exist."""
    found = [name for name in LAUNCH_VARIABLES if name in os.environ]
    if not found or "TORCHELASTIC_RUN_ID" in os.environ:
        return
    needed = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if needed:
        raise ValueError(f"the environment sets {', '.join(f'{n}={os.environ[n]}' for n in found)} but not "
                         f"{', '.join(needed)}, and this process was not started by torchrun: a run in one process "
                         f"needs them unset (unset {' '.join(found)}); several processes are launched with torchrun")


@dataclass
class Run:
    """A started run: its resolved options, device, processes, the checkpoint it resumes (or None) and where it
    writes. ``start`` makes it; ``claim`` takes its folder; everything it opens is closed when main() returns."""
    cfg: object
    script: str
    device: str
    info: Distributed
    state: dict | None
    out: Path
    stack: contextlib.ExitStack

    @property
    def start_step(self) -> int:
        return self.state["step"] if self.state is not None else 0


def start(cfg, script: str, checkpoint_keys: tuple[str, ...], may_change: tuple[str, ...]) -> Run:
    """Every check that needs no data and no model, then the processes: the device exists, --data is a folder (or
    'microdoppler'), --out and its samples/ are writable and free (not another run's, not locked by a live process),
    the checkpoint of --resume is this script's and was trained with these options; then torchrun's process group
    (leftover torchrun variables refused) and the seed of this process."""
    device = str(resolve_device(cfg.device))
    cli.check_data_option(cfg.data)
    out = Path(cfg.out)
    check_apart(out, {"--data": cfg.data} if cfg.data != "microdoppler" else {})
    cli.check_writable(out)
    if (out / "samples").is_dir():
        cli.check_writable(out / "samples", "--out")                    # found now, not after hours of training
    check_run_folder(out, cfg.resume, cfg.overwrite)
    state = load_checkpoint(cfg.resume, script, checkpoint_keys) if cfg.resume else None
    if state is not None:
        check_resume(state, cfg.resume, dataclasses.asdict(cfg), may_change, cfg.steps)
    check_launch_environment()
    info = setup_distributed(device)
    if device.startswith("cuda") and info.enabled:
        device = f"cuda:{info.local_rank}"
    torch.manual_seed(cfg.seed + info.rank)
    stack = contextlib.ExitStack()
    stack.callback(teardown_distributed, info)
    _OPEN_RUNS.append(stack)
    return Run(cfg, script, device, info, state, out, stack)


def check_apart(out: Path, inputs: dict[str, str]) -> None:
    """Nothing is written into an input: --out must not be, contain or lie inside an input folder (a run folder inside
    --data would become a user of the data set; --overwrite of a folder holding --data would move the data away)."""
    where = out.resolve()
    for flag_name, value in inputs.items():
        folder = Path(value).resolve()
        if where == folder or folder in where.parents or where in folder.parents:
            relation = "is" if where == folder else "lies inside" if folder in where.parents else "contains"
            raise ValueError(f"--out {out} {relation} {flag_name} {value}: a run writes nothing into its inputs; "
                             "choose an --out outside it")


def claim(run: Run, class_to_idx: dict, split: dict, summary: list[str], export: Path) -> JsonlLog | None:
    """Take the run folder (rank 0, after every check passed): lock it for this process (ldm.lock), move an old run
    aside with --overwrite, write config.json, class_to_idx.json and split.json, print the start-up summary (the
    caller's lines, then the run's). Returns the run's log with the records of steps after the checkpoint dropped,
    or None (nothing written) when a resumed run is already finished and ``export`` holds its last step."""
    from ldm.data import write_class_map
    from ldm.splits import write_split
    log = JsonlLog(run.out / "log.jsonl", enabled=run.info.is_main)
    cfg, out = run.cfg, run.out
    if finished_before(run, log, export):                               # every process returns
        if run.info.is_main:
            print(f"{out}: the run is already finished at step {cfg.steps} and {export.name}/ holds its export; "
                  f"nothing to do (pass --steps N > {cfg.steps} to train further)")
        return None
    if not run.info.is_main:
        return log
    cleared = claim_run_folder(out, cfg.overwrite)
    run.stack.enter_context(lock.hold_run_lock(out))
    (out / "samples").mkdir(exist_ok=True)
    write_run_config(out, run.script, {**dataclasses.asdict(cfg), "device": run.device})
    write_class_map(out / "class_to_idx.json", class_to_idx)
    write_split(out / "split.json", split)
    where = f"{run.device}" + (f" x {run.info.world_size} processes; global rank 0 runs on {socket.gethostname()} "
                               "and alone writes" if run.info.enabled else "")
    steps = f"(resumed at step {run.start_step} of {cfg.steps})" if run.state is not None else f"({cfg.steps} steps)"
    print("\n".join([*summary, f"device   {where}", f"run      {out.resolve()} {steps}", *cleared]), flush=True)
    log.truncate_after(run.start_step)
    return log


def write_checkpoint(run: Run, step: int, weights: dict, **extra) -> None:
    """OUT/checkpoint.pt of ``step`` (rank 0 only): ``weights`` (state dicts: "model", "ema", optimizers, ...) must be
    finite, then they are written atomically with the run's options, the random state and ``extra``."""
    if not run.info.is_main:
        return
    for part in ("model", "ema"):
        if not all(bool(torch.isfinite(t).all()) for t in weights[part].values() if t.is_floating_point()):
            raise NonFiniteError(f"step {step}: the weights are not finite; not saving them")
    save_checkpoint({"step": step, "script": run.script, "train_config": dataclasses.asdict(run.cfg), **weights,
                     "rng": rng_state(), **extra}, run.out / "checkpoint.pt")


def finished_before(run: Run, log: JsonlLog, export: Path) -> bool:
    """Whether a resumed run has nothing left to do: its checkpoint is at --steps and the export of that step was
    written whole (the log records it), so the final work is not redone."""
    return run.state is not None and run.start_step == run.cfg.steps and export.is_dir() and any(
        r.get("exported") and r.get("step") == run.cfg.steps for r in JsonlLog(log.path).read())


def report(run: Run, guard: NonFiniteGuard, export: Path, lines: list[str]) -> None:
    """The final report: steps, skipped steps, which weights were exported, the caller's figures, and where each file
    of the run is."""
    if not run.info.is_main:
        return
    out, cfg = run.out, run.cfg
    weights = "EMA" if cfg.export == "ema" else "raw"
    print(f"\nfinished {cfg.steps} steps ({guard.total} skipped as non-finite); {export.name}/ holds the {weights} "
          f"weights (--export {cfg.export})", *lines, sep="\n")
    for name, path in (("checkpoint", "checkpoint.pt"), (export.name, export.name), ("log", "log.jsonl"),
                       ("loss curve", "loss.png"), ("samples", "samples")):
        print(f"  {name:<11} {out / path}")


# ----------------------------------------------------------------------------------------------------------------
# The loop: progress, the duration estimate, Ctrl-C
# ----------------------------------------------------------------------------------------------------------------


class Loop:
    """The steps of a run, ``for step in Loop(...)``: a progress bar (only on a terminal: a log file gets no carriage
    returns), the duration estimate after the first steps (and when the first checkpoint comes), and Ctrl-C.

    The first Ctrl-C asks the loop to stop after the step under way; the caller's ``checkpoint(step)`` then writes
    that step (unless it just did) and the run ends with Interrupted, saying which step --resume continues from. A
    second Ctrl-C stops at once (the last checkpoint is kept). Several processes agree on stopping every step.
    ``cpu_recipe``: options of a run sized for a CPU, named when this one would take more than an hour."""

    def __init__(self, run: Run, checkpoint, desc: str, cpu_recipe: str):
        from tqdm.auto import tqdm
        self.run, self.save, self.cpu_recipe = run, checkpoint, cpu_recipe
        self.saved_step, self.stop_requested, self.times = run.start_step, False, []
        self.bar = tqdm(total=run.cfg.steps, initial=run.start_step, desc=desc, dynamic_ncols=True,
                        disable=not (run.cfg.progress and run.info.is_main and sys.stderr.isatty()))
        run.stack.callback(self.bar.close)
        self.restore = lambda: None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_interrupt)
            self.restore = lambda: signal.signal(signal.SIGINT, previous)   # when the loop ends, however it ends
            run.stack.callback(self.restore)

    def _on_interrupt(self, signum, frame) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nCtrl-C: stopping after this step and writing its checkpoint (Ctrl-C again stops at once, keeping "
              "the last checkpoint)", file=sys.stderr, flush=True)

    def checkpoint(self, step: int) -> None:
        self.save(step)
        self.saved_step = step

    def write(self, text: str) -> None:
        """Print a line on rank 0 without breaking the progress bar."""
        if self.run.info.is_main:
            self.bar.write(text, file=sys.stdout)

    def __iter__(self):
        run = self.run
        for step in range(run.start_step, run.cfg.steps):
            yield step
            self.bar.update(1)
            self.times.append(time.perf_counter())
            if len(self.times) == 3:                                     # the first step pays warm-ups: skip it
                self._estimate(step + 1, (self.times[2] - self.times[0]) / 2)
            if self._agreed_stop():
                if self.saved_step != step + 1:
                    self.checkpoint(step + 1)
                raise Interrupted(f"interrupted after step {step + 1}: its checkpoint is written "
                                  f"({run.out / 'checkpoint.pt'}); --resume {run.out} continues from step {step + 1}")
        self.restore()                                                   # Ctrl-C during the export: at once

    def _agreed_stop(self) -> bool:
        if not self.run.info.enabled:
            return self.stop_requested
        flag = torch.tensor([1 if self.stop_requested else 0], device=self.run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _estimate(self, done: int, seconds_per_step: float) -> None:
        cfg = self.run.cfg
        left = (cfg.steps - done) * seconds_per_step
        first = min(cfg.steps, (done // cfg.checkpoint_every + 1) * cfg.checkpoint_every)
        self.write(f"time     {seconds_per_step:.3g} s a step on {self.run.device}: about {duration(left)} to step "
                   f"{cfg.steps}; the next checkpoint (step {first}) in about "
                   f"{duration((first - done) * seconds_per_step)}")
        if left > 3600:
            self.write(f"note     that is more than an hour on {self.run.device}; a run sized for a CPU takes minutes: "
                       f"{self.cpu_recipe} (docs/training.md, 'A run on a CPU')")


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 20 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def spread_over_users(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of up to ``count`` items taking the users in turn (the first item of each user, then the second, ...),
    so a picture of ``count`` images shows every user rather than the first one's."""
    per_user = [torch.nonzero(labels == u).flatten().tolist() for u in torch.unique(labels).tolist()]
    order = [items[i] for i in range(max(map(len, per_user), default=0)) for items in per_user if i < len(items)]
    return torch.tensor(order[:count], dtype=torch.long)


def weights_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 over the weight files of a model folder (name and bytes of each *.safetensors / *.bin, sorted): what
    a resumed train_ldm.py run compares to know that its frozen VAE is the one it started with."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*.bin")):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
