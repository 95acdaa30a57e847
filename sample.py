"""Generate spectrograms of chosen users from a pipeline folder written by train_ldm.py.

    python sample.py --model runs/ldm/pipeline --user 3 --num 16 --steps 50 --guidance 3.0 --sampler ddim --out samples/
    python sample.py --model runs/ldm/pipeline --user all          # every user of the ID map
    python sample.py --model runs/ldm/pipeline --user user_02,5    # names from the ID map or ID numbers
    python sample.py --model runs/ldm/pipeline --sampler dpm++2m --steps 20   # fewer steps, a higher-order solver

--sampler picks the reverse process, each on the pipeline's training noise schedule (ldm.pipeline.make_sampler):
ddim (Song et al. 2021; deterministic with --eta 0), ddpm (ancestral, Ho et al. 2020; needs many steps),
dpm++2m (DPM-Solver++(2M), Lu et al. 2022; good samples in 15-20 steps), euler (Karras et al. 2022) and euler_a
(Euler ancestral: stochastic, like DDPM); each computes what its diffusers scheduler computes, bit for bit.

Writes OUT/<user name>/<i>.png (8-bit, [-1, 1] -> [0, 255]; and <i>.npy, float32 (C, H, W) in [0, 1], with
--save-npy: read it back with npy_scale "unit") and, next to OUT, OUT_grid.png with one row per user and OUT.json,
the record of the run (every option as resolved, the users, how many images each got, and the pipeline's provenance:
the real files that trained and enrolled it, which evaluate.py checks against its test files); both outside OUT, so that
OUT stays a pure ROOT/<user>/files folder that evaluate.py reads. OUT is one run's, like a training run folder: an
OUT that holds anything is refused (--overwrite moves it aside to OUT.old-<time>, never deleted), and a second
sample.py writing the same OUT at the same time is refused naming the first (ldm.lock). No output may be, contain
or lie inside an input (--model, --classifier, --real, --split), and the outputs may not collide (--grid equal to
the record OUT.json, or inside OUT). Every option is checked, and the output folder tested for writing, before the
model runs (--steps against the sampler's real step limit, the memory --num and --batch-size need); the images are
written into a hidden folder beside OUT and moved into place only when all of them are written (OUT.json comes
last), so a failed or interrupted run (Ctrl-C: exit status 130) leaves no partial OUT. A NaN or infinite image
stops the run with one line naming the likely cause; nothing is written.

Classifier-free guidance (Ho & Salimans 2022) mixes the prediction for the user with the one for the null ID: scale 1
is the conditional model alone, larger values push samples harder towards the user. Image i of a user comes from
its own generator, seeded by (--seed, user ID, i) (ldm.pipeline.image_seed), so an image depends only on the seed,
the user and i: `--user 3` and `--user all` give user 3 the same images, and so does another --batch-size.

Filters (docs/augmentation.md) write only the samples they keep, under their unfiltered names (<i> stays the i-th
image of the unfiltered run), and print how many each user kept, so OUT is an augmented set as it stands:
    --filter margin --classifier CLF.safetensors [--margin-threshold 0]
        keep when p(requested user) - max p(other user) > threshold, by a classifier trained on real data and saved
        by ldm.radar.identity.save_classifier (evaluate.py --classifier PATH writes one) for the pipeline's user names
    --filter physics --real DATA --split RUN/split.json [--physics-tolerance 1]
        keep when torso velocity and cadence lie within the user's range over the real train files of the split,
        widened by the tolerance in pooled within-user standard deviations; needs the velocity and time axes
        (the simulator's DATA/metadata.json, or --v-max and --duration)
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm import cli, fast, lock, logs, runs
from ldm.radar.augment import class_margins, physics_filter, physics_ranges
from ldm.data import NPY_SCALES, SpectrogramFolder
from ldm.splits import check_split, read_split
from ldm.files import atomic_write, check_outputs_apart, remove_stale_temps, temp_name, write_json
from ldm.radar.physics import batch_physics_features, simulator_metadata, spectrogram_axes
from ldm.radar.identity import load_classifier, predict
from ldm.pipeline import SAMPLERS, Pipeline
from ldm.cli import option


@dataclass
class SampleConfig:
    model: str = option("runs/ldm/pipeline", "pipeline folder written by train_ldm.py (OUT/pipeline)")
    user: str = option("all", "'all', a user name from the ID map, an ID number, or a comma list of those")
    num: int = option(16, "images per user", at_least=1)
    steps: int = option(50, "sampling steps (at most the pipeline's number of training timesteps)", at_least=1)
    guidance: float = option(3.0, "classifier-free guidance scale (1 = conditional model only, 0 = unconditional)",
                             at_least=0)
    sampler: str = option("ddim", "DDIM (deterministic with --eta 0), ancestral DDPM, DPM-Solver++(2M) (good in 15-20 "
                                  "steps), Euler, or Euler ancestral (stochastic)", choices=SAMPLERS)
    eta: float = option(0.0, "DDIM's eta (0 = deterministic, 1 = DDPM's variance); --sampler ddim only",
                        at_least=0, at_most=1)
    seed: int = option(0, "seeds the starting noise (and the per-step noise of ddpm and euler_a)", at_least=0,
                       at_most=10**9)
    out: str = option("samples", "output folder: OUT/<user>/<i>.png; must be new or empty")
    overwrite: bool = option(False, "write into an --out that holds files: the old folder is moved aside to "
                                    "OUT.old-<time>, never deleted")
    grid: str | None = option(None, "grid PNG with one row per user (default: OUT_grid.png next to OUT)")
    batch_size: int = option(16, "images per model call (guidance doubles it)", at_least=1)
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    save_npy: bool = option(False, "also write OUT/<user>/<i>.npy, float32 (C, H, W) in [0, 1]")
    grid_columns: int = option(8, "images per user in the grid", at_least=1)
    progress: bool = option(True, "show progress bars")
    cuda_graph: bool = option(False, "CUDA only: replay each model call as one captured CUDA graph (same images, "
                                     "faster at small batches, where launching kernels limits the speed)")
    fast: bool = option(True, "run the models on ldm.fast's path (fused q/k/v projections, in-place ops): the same "
                        "images on a CPU (to rounding on a GPU), faster; --no-fast runs the plain model code")
    # Filters: write only kept samples.
    filter: str = option("none", "write only the samples a filter keeps: margin (needs --classifier) or physics "
                                 "(needs --real, --split and the velocity/time axes)",
                         choices=("none", "margin", "physics"))
    classifier: str | None = option(None, "margin filter: classifier .safetensors "
                                          "(ldm.radar.identity.save_classifier) trained on real data, with the "
                                          "pipeline's user names")
    margin_threshold: float = option(0.0, "margin filter: keep when p(requested) - max p(other) > this (0: the "
                                          "requested user is the classifier's top class)", at_least=-1, below=1)
    real: str | None = option(None, "physics filter: the real data folder DIR/<user>/<files> of the pipeline")
    split: str | None = option(None, "physics filter: its split.json (or the run folder); ranges use its train part")
    physics_tolerance: float = option(1.0, "physics filter: each user's real range is widened by this many pooled "
                                           "within-user standard deviations on both sides", at_least=0)
    v_max: float | None = option(None, "physics filter: velocity span of the image rows is [-v_max, v_max] m/s",
                                 above=0)
    duration: float | None = option(None, "physics filter: seconds spanned by the image columns", above=0)
    threshold_db: float = option(-25.0, "physics filter: body pixels are within this many dB of the image max",
                                 below=0)
    dynamic_range: float | None = option(None, "physics filter: dB range of [-1, 1] (default: the simulator's "
                                               "metadata.json value, else 50)", above=0)
    npy_scale: str = option("db", "physics filter: what .npy values in --real are (ldm/data.py)", choices=NPY_SCALES)


def save_images(images: torch.Tensor, folder: Path, save_npy: bool, keep: torch.Tensor | None = None) -> None:
    """(N, C, H, W) in [-1, 1] -> folder/<i>.png (and <i>.npy in [0, 1]); with keep (N,) bool only the kept i, and
    no folder at all when nothing is kept (data loaders refuse empty user folders)."""
    if keep is not None and not keep.any():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(logs.to_uint8(images)):                # (H, W, C) uint8
        if keep is not None and not keep[i]:
            continue
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / f"{i}.png")
        if save_npy:
            np.save(folder / f"{i}.npy", ((images[i] + 1) / 2).numpy().astype(np.float32))


def check_outputs(cfg: SampleConfig, out: Path, grid: Path, record: Path) -> None:
    """Before any work: the outputs are apart from the inputs and from each other (ldm.files.check_outputs_apart), OUT
    is new or empty unless --overwrite (and then not being written by a live process), and OUT (or, when it does
    not exist yet, the folder it will be made in) and the grid's folder take a file. ValueError naming the option
    otherwise."""
    split_file = None if cfg.split is None else Path(cfg.split) / "split.json" if Path(cfg.split).is_dir() \
        else Path(cfg.split)                                            # --split RUN reads RUN/split.json only
    check_outputs_apart({"--out": out, "--grid": grid, "the record": record},
                        {"--model": cfg.model, "--classifier": cfg.classifier, "--real": cfg.real,
                         "--split": split_file})
    entries = runs.run_folder_entries(out)
    if entries and not cfg.overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(f"--out {out} already holds files ({shown}); choose a new --out, or pass --overwrite to "
                         f"move the old folder aside to {out.name}.old-<time> (a folder mixing two runs would be "
                         "evaluated as one)")
    if cfg.overwrite and out.is_dir():
        lock.check_unlocked(out)                                        # never move a live run's folder
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    cli.check_writable(out if out.exists() else out.parent)
    try:
        cli.check_writable(grid.parent)
    except ValueError:
        raise ValueError(f"--grid {grid}: cannot write into {grid.parent}") from None


def publish(staging: Path, out: Path) -> None:
    """Move the finished OUT/<user> folders from ``staging`` into OUT: one rename per user folder (atomic, same file
    system), file by file into a user folder that exists already; a failure names the users moved completely."""
    done = []
    try:
        for user in sorted(staging.iterdir()):
            if not (out / user.name).exists():
                os.replace(user, out / user.name)
                done.append(user.name)
                continue
            (out / user.name).mkdir(exist_ok=True)
            for file in sorted(user.iterdir()):
                os.replace(file, out / user.name / file.name)
            done.append(user.name)
    except OSError as error:
        raise ValueError(f"--out {out}: moving the images in failed ({error.strerror}); users complete there: "
                         f"{done or 'none'}; run again for the others") from None
    shutil.rmtree(staging)


def make_judge(cfg: SampleConfig, class_to_idx: dict[str, int], channels: int,
               size: tuple[int, int]):
    """None for --filter none; else check the filter's options and return keep(images, user) -> (N,) bool."""
    if cfg.filter != "margin" and cfg.classifier is not None:
        raise ValueError(f"--classifier is used by --filter margin only, got --filter {cfg.filter}")
    if cfg.filter != "physics" and (cfg.real is not None or cfg.split is not None):
        raise ValueError(f"--real and --split are used by --filter physics only, got --filter {cfg.filter}")
    if cfg.filter == "none":
        return None
    if cfg.filter == "margin":
        return margin_judge(cfg, class_to_idx, channels)
    return physics_judge(cfg, class_to_idx, channels, size)


def margin_judge(cfg: SampleConfig, class_to_idx: dict[str, int], channels: int):
    """Check the margin filter's classifier; return keep(images (N, C, H, W), user) -> (N,) bool."""
    if cfg.classifier is None:
        raise ValueError("--filter margin needs --classifier PATH (a classifier trained on real data, saved by "
                         "ldm.radar.identity.save_classifier; evaluate.py --classifier PATH writes one)")
    if not Path(cfg.classifier).is_file():
        raise FileNotFoundError(f"--classifier {cfg.classifier} does not exist")
    try:
        classifier, classifier_map = load_classifier(cfg.classifier)
    except ValueError as error:
        raise ValueError(f"--classifier {error}") from None
    if classifier_map != class_to_idx:
        raise ValueError(f"--classifier {cfg.classifier} knows users {classifier_map}, the pipeline {class_to_idx}")
    if classifier.cfg.in_channels != channels:
        raise ValueError(f"--classifier {cfg.classifier} takes {classifier.cfg.in_channels} channel(s), the "
                         f"pipeline makes {channels}")

    def keep(images: torch.Tensor, user: int) -> torch.Tensor:
        requested = torch.full((len(images),), user, dtype=torch.long)
        return class_margins(predict(classifier, images)[0], requested) > cfg.margin_threshold

    return keep


def physics_judge(cfg: SampleConfig, class_to_idx: dict[str, int], channels: int, size: tuple[int, int]):
    """Check the physics filter's options, measure the real train files of the split once; return
    keep(images (N, C, H, W), user) -> (N,) bool, for the generated image size (H, W)."""
    if cfg.real is None or cfg.split is None:
        raise ValueError("--filter physics needs --real DATA and --split RUN/split.json (each user's range comes "
                         "from the real train files)")
    if (cfg.v_max is None) != (cfg.duration is None):
        raise ValueError("--v-max and --duration go together (the image's velocity span and time span)")
    split = read_split(cfg.split)
    check_split(split, cfg.real, "--real")
    if split["class_to_idx"] != class_to_idx:
        raise ValueError(f"--real {cfg.real} has users {split['class_to_idx']}, the pipeline {class_to_idx}")
    meta = simulator_metadata(cfg.real)
    axes = spectrogram_axes(meta, *size, cfg.v_max, cfg.duration)
    if axes is None:
        raise ValueError("--filter physics needs --v-max and --duration (or the simulator's metadata.json in --real)")
    dynamic_range = cfg.dynamic_range or (meta["radar"]["dynamic_range_db"] if meta else 50.0)
    real = SpectrogramFolder(cfg.real, size=size, channels=channels, npy_scale=cfg.npy_scale,
                             dynamic_range_db=dynamic_range, subset=split["train"], class_to_idx=class_to_idx)
    x_real, y_real = real.tensors()
    ranges = physics_ranges(batch_physics_features(x_real, axes, dynamic_range, cfg.threshold_db), y_real.numpy(),
                            len(class_to_idx), cfg.physics_tolerance)

    def keep(images: torch.Tensor, user: int) -> torch.Tensor:
        features = batch_physics_features(images, axes, dynamic_range, cfg.threshold_db)
        return torch.from_numpy(physics_filter(features, np.full(len(images), user), ranges))

    return keep


def run(cfg: SampleConfig) -> int:
    device = runs.resolve_device(cfg.device)
    if cfg.cuda_graph and device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, got --device {cfg.device}")
    if cfg.eta != 0 and cfg.sampler != "ddim":
        raise ValueError(f"--eta is DDIM's (--sampler ddim); --sampler {cfg.sampler} takes no eta, got --eta {cfg.eta}")
    if not cfg.out.strip():
        raise ValueError("--out '' names no folder (it would fill the current one); pass an output folder")
    if cfg.grid is not None and not cfg.grid.strip():
        raise ValueError("--grid '' names no file; leave --grid out for OUT_grid.png next to OUT")
    out = Path(cfg.out)
    target = out.resolve()                                              # --out . has a name this way
    grid = Path(cfg.grid) if cfg.grid else target.with_name(target.name + "_grid.png")
    record = target.with_name(target.name + ".json")
    check_outputs(cfg, out, grid, record)
    pipe = Pipeline.from_pretrained(cfg.model, device=device)
    if cfg.fast:                                                        # same images, less work (ldm/fast.py)
        fast.optimize(pipe.denoiser)
        fast.optimize(pipe.vae)
    limit = pipe.step_limit(cfg.sampler)
    if cfg.steps > limit:
        raise ValueError(f"--steps {cfg.steps}: --sampler {cfg.sampler} takes at most {limit} steps on this "
                         f"pipeline's schedule of {pipe.scheduler.config.num_train_timesteps} training timesteps "
                         "(beyond that its timesteps repeat or leave the schedule)")
    class_to_idx = pipe.embedder.class_to_idx
    users = pipe.user_ids(cfg.user)                                     # an unknown user fails before any writing
    check_memory(cfg, pipe, len(users), device)
    names = {i: name for name, i in class_to_idx.items()}
    _, h, w = pipe.latent_shape
    factor = pipe.vae.config.downsample_factor
    judge = make_judge(cfg, class_to_idx, pipe.vae.config.out_channels, (h * factor, w * factor))
                                                                        # checked before generating

    existed = out.exists()
    for done in runs.claim_run_folder(out, cfg.overwrite):         # --overwrite: the old OUT moved aside
        print(f"sample.py: {done}")
    try:
        with lock.hold_run_lock(out):                                   # one sample.py per OUT
            entries = runs.run_folder_entries(out)
            if entries:                                                 # filled since the check above
                raise ValueError(f"--out {out} was filled by another process meanwhile ({entries[0]}, ...); "
                                 "choose a new --out")
            kept, rows = write_samples(cfg, pipe, users, names, judge, out, target, grid)
            write_json({"format": "ldm-samples-1", "options": {**asdict(cfg), "device": str(device)},
                        "out": str(out), "grid": str(grid) if rows else None, "users": {names[u]: u for u in users},
                        "images": {names[u]: len(kept[u]) for u in users},
                        "provenance": pipe.provenance}, record)   # what the generator saw; evaluate.py checks it
    except BaseException:                                               # an error or Ctrl-C: no empty OUT left
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    if pipe.provenance is None:
        print(f"sample.py: {cfg.model} does not record which files trained it (no provenance.json), so {record} "
              "says the provenance is unknown", file=sys.stderr)
    if judge is None:
        print(f"wrote {cfg.num} image(s) for each of {len(users)} user(s) to {out}/<user>/, the grid {grid} and "
              f"the record {record}")
        return 0
    for user in users:
        print(f"{names[user]}: kept {len(kept[user])} of {cfg.num}")
    total = sum(len(k) for k in kept.values())
    print(f"--filter {cfg.filter} kept {total} of {cfg.num * len(users)} image(s); wrote them to {out}/<user>/"
          + (f", the grid {grid}" if rows else " (no grid: nothing kept)") + f" and the record {record}")
    return 0


def write_samples(cfg: SampleConfig, pipe: Pipeline, users: list[int], names: dict[int, str], judge, out: Path,
                  target: Path, grid: Path) -> tuple[dict, list]:
    """Generate, filter and write the images (into a hidden folder, then moved into OUT) and the grid. Returns
    ({user: kept images}, the grid rows)."""
    for done in remove_stale_temps(target.parent, name=target.name):   # a killed run's hidden folder
        print(f"sample.py: {done} (left by a killed run)")
    staging = temp_name(target)                                         # hidden until every image is written
    staging.mkdir(parents=True)
    try:
        try:
            images = pipe.generate(users, cfg.num, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed, cfg.batch_size,
                                   cfg.eta, cfg.progress, cfg.cuda_graph)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not isinstance(error, torch.OutOfMemoryError) and "memory" not in str(error):
                raise
            raise ValueError(f"--batch-size {cfg.batch_size}: out of memory while sampling ({_first_line(error)}); "
                             f"this needs about {memory_needed(cfg, pipe, len(users))[1] / 2**30:.1f} GiB per batch: "
                             "lower --batch-size") from None
        kept = {}
        for user in users:
            keep = None if judge is None else judge(images[user], user)
            save_images(images[user], staging / names[user], cfg.save_npy, keep)
            kept[user] = images[user] if keep is None else images[user][keep]
        rows = [kept[u][:cfg.grid_columns] for u in users if len(kept[u])]
        if rows:
            atomic_write(grid, lambda tmp: logs.image_grid(rows).save(tmp, format="PNG"))
        publish(staging, out)
    except OSError as error:                                            # disk full, ...: OUT is untouched
        raise ValueError(f"--out {out}: writing the images failed ({error.strerror or error}); nothing was written "
                         "there") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return kept, rows


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:120]


def memory_needed(cfg: SampleConfig, pipe: Pipeline, num_users: int) -> tuple[int, int]:
    """A rough estimate in bytes of (the images sample.py holds until it writes them, the peak of one batch).

    The images: --num per user, float32. One batch: the largest activations of the UNet (the batch doubled by
    guidance, its first level's channels at the latent size) and of the decoder (its last level's channels at
    the image size), times 4 for the tensors alive at once, plus a self-attention score matrix at the level that
    has one. A lower bound rather than a promise: it tells a batch that cannot fit from one that might."""
    cz, h, w = pipe.latent_shape
    factor = pipe.vae.config.downsample_factor
    image = pipe.vae.config.out_channels * h * factor * w * factor * 4
    images = num_users * cfg.num * image
    b = min(cfg.batch_size, cfg.num)
    passes = 2 if cfg.guidance != 1.0 else 1
    unet = passes * b * pipe.unet.config.block_out_channels[0] * h * w * 4 * 4
    decoder = b * pipe.vae.config.block_out_channels[0] * h * factor * w * factor * 4 * 4
    attention = b * (h * w // 4**(len(pipe.unet.config.block_out_channels) - 1)) ** 2 * 4 * passes
    return images, max(unet + attention, decoder)


def _available_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(bytes of RAM available, bytes free on the device or None for the CPU); None where it cannot be read."""
    ram = None
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        ram = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    return ram, free


def check_memory(cfg: SampleConfig, pipe: Pipeline, num_users: int, device: torch.device) -> None:
    """Refuse --num / --batch-size before sampling when the estimate (memory_needed) exceeds what is available."""
    images, batch = memory_needed(cfg, pipe, num_users)
    ram, free = _available_memory(device)
    need_ram = images + (batch if free is None else 0)
    gib = 2**30
    if ram is not None and need_ram > ram:
        raise ValueError(f"--num {cfg.num} --batch-size {cfg.batch_size}: needs about {need_ram / gib:.1f} GiB of "
                         f"memory ({images / gib:.1f} GiB for the {num_users * cfg.num} images held until written, "
                         f"{batch / gib:.1f} GiB for one batch), {ram / gib:.1f} GiB available; lower --batch-size, "
                         "or --num (run several times with other --seed values)")
    if free is not None and batch > free:
        raise ValueError(f"--batch-size {cfg.batch_size}: one batch needs about {batch / gib:.1f} GiB on {device}, "
                         f"{free / gib:.1f} GiB free there; lower --batch-size")


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse_config(SampleConfig, argv, __doc__.split("\n\n")[0])
    return cli.run_main(run, cfg)


if __name__ == "__main__":
    sys.exit(main())
