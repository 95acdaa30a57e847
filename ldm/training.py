"""What train_vae.py and train_ldm.py share inside the loop: distributed set-up (DDP, FSDP state dicts, the VQ
codebook's sync), the EMA with warm-up, the non-finite guard, random state, checkpoints that cannot be corrupted
and resume exactly, and the data order that makes a batch split over processes train what one process would.
A run's life around the loop (folders, start-up, progress, logs and pictures) is ldm/runs.py.

Checkpoints hold only tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)`` reads
them; they are written with ``ldm.files.atomic_write`` (a temporary file in the same folder, fsynced, renamed into
place), so killing the process at any moment, or a full disk, leaves the previous checkpoint intact.
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from ldm import files
from ldm.cli import RunError, flag
from ldm.io import torch_load_weights_only

# ----------------------------------------------------------------------------------------------------------------
# Distributed
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str) -> Distributed:
    """Join the process group when launched by torchrun (``RANK`` is set): nccl on CUDA, gloo on CPU. ``rank`` is the
    global rank (0 .. world_size - 1 over all machines; rank 0 alone writes files), ``local_rank`` the rank on this
    machine (which GPU this process uses)."""
    if "RANK" not in os.environ:
        return Distributed()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    info = Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    return info


def teardown_distributed(info: Distributed) -> None:
    """Leave the process group at the end of a run: a barrier, then destroy_process_group.

    The barrier is not decoration. Without it, a process that has nothing left to do after its last all-reduce (every
    rank but 0) can destroy the gloo group while gloo's worker thread is still releasing that all-reduce's tensor:
    the worker waits for the GIL to drop the tensor's Python object, the main thread holds the GIL while joining the
    worker, and the process never exits (seen with gloo on CPU in about one run of six). While the barrier is waited
    for, the GIL is free and the worker finishes."""
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, info: Distributed) -> torch.Tensor:
    """Average a tensor over processes (a no-op in a single process). nccl reduces only CUDA tensors: the value
    travels through this process's GPU and comes back where it was."""
    if info.enabled:
        where = value.device
        value = value.to(f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else where, copy=True)
        dist.all_reduce(value)
        value = (value / info.world_size).to(where)
    return value


class CodebookSync:
    """What keeps a VQ codebook (ldm.vq.VectorQuantizer) identical in every DDP process: set it as the quantizer's
    ``processes`` (train_vae.py does, under torchrun) and the code counts and sums are summed over the processes,
    and a codebook that k-means or a dead-code restart produced is rank 0's."""

    def sum_(self, t: torch.Tensor) -> None:
        """t summed over the processes, in place."""
        dist.all_reduce(t)

    def copy_rank_0_(self, t: torch.Tensor) -> None:
        """t overwritten with rank 0's t, in place."""
        dist.broadcast(t, src=0)


# ----------------------------------------------------------------------------------------------------------------
# Sharded weights (train_ldm.py --fsdp): full state dicts in and out, so checkpoints look as without sharding
# ----------------------------------------------------------------------------------------------------------------


def gather_state_dict(module: torch.nn.Module, keep: bool) -> dict:
    """The unsharded module's state dict, on the CPU: each FSDP shard is all-gathered (a collective: every process
    calls this at the same point); only where ``keep`` (rank 0) are the full tensors kept, elsewhere {}."""
    state = {}
    for name, value in module.state_dict().items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if keep:
            state[name] = full.detach().cpu()
    return state


def gather_optimizer_state(opt: torch.optim.Optimizer, keep: bool) -> dict:
    """opt.state_dict() as an unsharded model's optimizer gives it (integer parameter indices, full-shape moments,
    on the CPU); a collective like gather_state_dict."""
    state = opt.state_dict()
    per_param = {}
    for index, entries in state["state"].items():
        full = {key: value.full_tensor() if isinstance(value, DTensor) else value for key, value in entries.items()}
        if keep:
            per_param[index] = {key: value.cpu() if torch.is_tensor(value) else value for key, value in full.items()}
    return {"state": per_param, "param_groups": state["param_groups"]} if keep else {}


def shard_optimizer_state(state: dict, params: list[torch.Tensor]) -> dict:
    """The inverse, for resuming under FSDP: each full-shape moment of parameter i cut to this process's shard of
    params[i] (the same split as the parameter's; every process holds the whole checkpoint, so nothing is sent)."""
    per_param = {}
    for index, entries in state["state"].items():
        p = params[index]
        per_param[index] = {
            key: distribute_tensor(value.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            if isinstance(p, DTensor) and torch.is_tensor(value) and value.shape == p.shape else value
            for key, value in entries.items()}
    return {"state": per_param, "param_groups": state["param_groups"]}


# ----------------------------------------------------------------------------------------------------------------
# Exponential moving average of the weights
# ----------------------------------------------------------------------------------------------------------------


def ema_decay(num_updates: int, max_decay: float, warmup: bool = True) -> float:
    """The decay of EMA update number ``num_updates`` (1 for the first update after initialisation).

    Without warm-up it is ``max_decay`` throughout, so after N updates the random initial weights still weigh
    max_decay**N (0.999: 67% after 400 updates, 37% after 1000). With warm-up (the default of diffusers'
    ``EMAModel`` and of the LDM code's ``LitEma``) it is

        decay_n = min(max_decay, (1 + s) / (10 + s)),   s = n - 1,   and decay_1 = 0,

    so the first update copies the model, the weights after update k weigh about 9 k^8 / n^9 in the average after
    n updates (its mean age is about n / 10 updates), and ``max_decay`` is reached only after
    s = (10 max_decay - 1) / (1 - max_decay) updates (8991 for 0.999).
    """
    if num_updates < 1:
        raise ValueError(f"EMA updates are counted from 1, got {num_updates}")
    if not warmup:
        return max_decay
    s = num_updates - 1
    return 0.0 if s == 0 else min(max_decay, (1 + s) / (10 + s))


@torch.no_grad()
def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for every trained parameter. Parameters that are not trained by
    gradients (``requires_grad=False``, e.g. a VQ codebook learnt by its own EMA) and buffers are copied, as
    diffusers' EMAModel does."""
    for ema_p, p in zip(ema_model.parameters(), model.parameters()):
        if p.requires_grad:
            ema_p.lerp_(p.detach(), 1.0 - decay)
        else:
            ema_p.copy_(p)
    for ema_b, b in zip(ema_model.buffers(), model.buffers()):
        ema_b.copy_(b)


# ----------------------------------------------------------------------------------------------------------------
# Non-finite guard
# ----------------------------------------------------------------------------------------------------------------


class NonFiniteError(RunError):
    """Training diverged: too many consecutive steps with a NaN/Inf loss or gradient."""


class NonFiniteGuard:
    """Counts steps whose loss or gradients are NaN/Inf. The caller skips such a step; after ``limit``
    consecutive ones the run stops with a message, because training has diverged."""

    def __init__(self, limit: int = 20):
        self.limit = limit
        self.consecutive = 0
        self.total = 0

    def check(self, loss: torch.Tensor, parameters, info: Distributed | None = None) -> bool:
        """True if this step is finite (and may be applied); False if it must be skipped.

        With FSDP each process holds a different shard of the gradients (and its own loss): pass ``info`` and the
        verdict is agreed over all processes (one all-reduce), so every process skips the same steps."""
        finite = bool(torch.isfinite(loss).all())
        if finite:
            grads = [p.grad for p in parameters if p.grad is not None]
            grads = [g.to_local() if isinstance(g, DTensor) else g for g in grads]   # this process's shard
            finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if info is not None and info.enabled:
            flag = torch.tensor([1 if finite else 0], device=loss.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item())
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.limit:
            raise NonFiniteError(f"{self.consecutive} consecutive steps had a non-finite loss or gradient; training "
                                 "diverged (try a lower --lr, or fp32); no non-finite weights were saved")
        return False


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


# ----------------------------------------------------------------------------------------------------------------
# Random state (for exact resume)
# ----------------------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """Every global random state, as tensors/lists that weights_only checkpoints can hold."""
    state = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate()),
             "numpy": _numpy_state_to_dict(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    np.random.set_state(_numpy_state_from_dict(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def _numpy_state_to_dict(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_dict(state: dict):
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` atomically (ldm.files.atomic_write): a full disk or a kill keeps the previous checkpoint. A failed
    write is reported with the operating system's reason (torch.save itself would say only "unexpected pos ..."):
    "No space left on device", "Permission denied", or "File too large" with this process's file-size limit."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            recorder = _RecordingWriter(f)
            try:
                torch.save(state, recorder)
            except RuntimeError:
                if recorder.error is None:
                    raise
                raise _explained(recorder.error) from None

    files.atomic_write(path, write)


class _RecordingWriter:
    """A file's write() that keeps the first OSError it raised: torch.save swallows it into a RuntimeError."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


def _explained(error: OSError) -> OSError:
    """The OSError with its reason completed where the bare one misleads: a file-size limit names the limit."""
    if error.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return OSError(error.errno, f"{error.strerror}: this process may write files of at most "
                                        f"{limit / 2**20:.1f} MiB (ulimit -f)")
    return error


def load_checkpoint(path: str | os.PathLike, script: str | None = None, keys: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint (a file, or a run folder's checkpoint.pt) with ``weights_only=True``; a one-line error if
    it is missing, empty, corrupt, not an ldm checkpoint, (given ``script``, e.g. "train_vae.py") another script's,
    or lacks one of ``keys``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    state = torch_load_weights_only(path)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{path}: not an ldm training checkpoint (no 'step')")
    if script is not None:
        found = state.get("script") or ("train_ldm.py" if "unet_config" in state
                                        else "train_vae.py" if "model_kind" in state else None)
        if found != script:
            raise ValueError(f"{path}: " + (f"a {found} checkpoint; resume it with {found}, not {script}" if found
                                            else f"not a {script} checkpoint"))
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {', '.join(missing)} (not written by this version of "
                         f"{script or 'the training scripts'})")
    return state


def check_resume(state: dict, path, options: dict, may_change: tuple[str, ...], steps: int) -> None:
    """Refuse to resume the checkpoint ``state`` (read from ``path``) with options that change what is trained.

    ``options``: this run's resolved options (field name -> value); every one the checkpoint also recorded must
    equal the recorded value, except those in ``may_change`` (how long to train, how often to log, where to run).
    ``steps``: a run cannot end before the step the checkpoint is already at.
    """
    saved = state.get("train_config") or {}
    differ = sorted(k for k in saved.keys() & options.keys()   # str(): --size was an int before it took "HxW"
                    if k not in may_change and saved[k] != options[k] and str(saved[k]) != str(options[k]))
    if differ:
        listed = ", ".join(f"{flag(k)} {options[k]} (the checkpoint's: {saved[k]})" for k in differ)
        flags = [flag(k) for k in may_change if not k.endswith("_every") and k not in ("resume", "overwrite", "out")]
        flags += ["--*-every"] if any(k.endswith("_every") for k in may_change) else []
        raise ValueError(f"--resume {path}: {listed}; a resumed run may change only {', '.join(flags)} (start a new "
                         "--out to train with other settings)")
    if state["step"] > steps:
        raise ValueError(f"--steps {steps}: the checkpoint {path} is already at step {state['step']}; pass --steps "
                         f"{state['step']} (to export it again) or more")


@contextlib.contextmanager
def checkpoint_parts(path):
    """Around the code that loads a checkpoint's parts into the models: a part that is missing or does not fit (a
    checkpoint edited by hand, or written by another version) becomes one ValueError naming the file."""
    try:
        yield
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # torch's load_state_dict says "Error(s) in loading state_dict for X:", then one line per key
        what = f"no {error.args[0]!r} entry" if isinstance(error, KeyError) else " ".join(lines[:2])
        raise ValueError(f"--resume {path}: the checkpoint's contents do not fit this run ({what})") from None


# ----------------------------------------------------------------------------------------------------------------
# Data order, per-image noise, data and output folders (shared by train_vae.py and train_ldm.py)
# ----------------------------------------------------------------------------------------------------------------


def batch_indices(num_items: int, micro_step: int, batch_size: int, seed: int, info: Distributed) -> list[int]:
    """The dataset indices of this process's micro-batch number ``micro_step``.

    The data order is a pure function of (seed, position): epoch e is a permutation drawn from a generator seeded
    with (seed, e), and micro-batches take consecutive global slices of batch_size x world_size, rank r taking the
    r-th part. So resuming needs only the step counter, and N processes see exactly the batches one process with
    an N-times larger batch would see.
    """
    global_batch = batch_size * info.world_size
    start = micro_step * global_batch + info.rank * batch_size
    indices = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_items)
        order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.append(int(order[offset]))
    return indices


def sample_generators(seed: int, indices: list[int], micro_step: int) -> list[torch.Generator]:
    """One fresh generator per image of the micro-batch, seeded by (seed, micro-step, dataset index).

    Posterior noise is drawn per image from these, so it depends neither on the process count (DDP draws what
    one process would) nor on earlier steps (resume is exact without saving generator states).
    """
    return [torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 1_000_033 + i) for i in indices]
