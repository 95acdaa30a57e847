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
the record of the run (every option as resolved, the users and how many images each got); both outside OUT, so that
OUT stays a pure ROOT/<user>/files folder that evaluate.py reads. Every option is checked, and the output folder
tested for writing, before the model runs; the images are written into a hidden folder beside OUT and moved into
place only when all of them are written (OUT.json comes last), so a failed run leaves no partial OUT.

Classifier-free guidance (Ho & Salimans 2022) mixes the prediction for the user with the one for the null ID: scale 1
is the conditional model alone, larger values push samples harder towards the user. Every user's images come from
generators seeded by (--seed, user ID, batch), so `--user 3` and `--user all` give user 3 the same images.

Filters (docs/augmentation.md) write only the samples they keep, under their unfiltered names (<i> stays the i-th
image of the unfiltered run), and print how many each user kept, so OUT is an augmented set as it stands:
    --filter margin --classifier CLF.safetensors [--margin-threshold 0]
        keep when p(requested user) - max p(other user) > threshold, by a classifier trained on real data and saved
        by ldm.identity.save_classifier (evaluate.py --classifier PATH writes one) for the pipeline's user names
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

from ldm import cli, fast, training
from ldm.radar import identity
from ldm.radar.augment import class_margins, physics_filter, physics_ranges
from ldm.data import NPY_SCALES, SpectrogramFolder, check_split, read_split
from ldm.io import atomic_write, temp_name, write_json
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
    eta: float = option(0.0, "DDIM's eta (0 = deterministic); --sampler ddim only", at_least=0)
    seed: int = option(0, "seeds the starting noise (and the per-step noise of ddpm and euler_a)", at_least=0,
                       at_most=10**9)
    out: str = option("samples", "output folder: OUT/<user>/<i>.png")
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
    classifier: str | None = option(None, "margin filter: classifier .safetensors (ldm.identity.save_classifier) "
                                          "trained on real data, with the pipeline's user names")
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
    for i, array in enumerate(training.to_uint8(images)):                # (H, W, C) uint8
        if keep is not None and not keep[i]:
            continue
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / f"{i}.png")
        if save_npy:
            np.save(folder / f"{i}.npy", ((images[i] + 1) / 2).numpy().astype(np.float32))


def check_outputs(out: Path, grid: Path) -> None:
    """Before any work: OUT (or, when it does not exist yet, the folder it will be made in) and the grid's folder
    take a file. ValueError naming the option otherwise."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    cli.check_writable(out if out.exists() else out.parent)
    try:
        cli.check_writable(grid.parent)
    except ValueError:
        raise ValueError(f"--grid {grid}: cannot write into {grid.parent}") from None


def publish(staging: Path, out: Path) -> None:
    """Move the finished OUT/<user> folders from ``staging`` into OUT: one rename when OUT does not exist yet, else
    file by file (each rename atomic, same file system); a failure names the users moved completely."""
    if not out.exists():
        os.replace(staging, out)
        return
    done = []
    try:
        for user in sorted(staging.iterdir()):
            (out / user.name).mkdir(exist_ok=True)
            for file in sorted(user.iterdir()):
                os.replace(file, out / user.name / file.name)
            done.append(user.name)
    except OSError as error:
        raise ValueError(f"--out {out}: moving the images in failed ({error.strerror}); users complete there: "
                         f"{done or 'none'}; run again for the others") from None
    shutil.rmtree(staging)


def make_judge(cfg: SampleConfig, class_to_idx: dict[str, int], user_names: list[str], channels: int,
               size: tuple[int, int]):
    """None for --filter none; else check the filter's options and return keep(images, user) -> (N,) bool."""
    if cfg.filter != "margin" and cfg.classifier is not None:
        raise ValueError(f"--classifier is used by --filter margin only, got --filter {cfg.filter}")
    if cfg.filter != "physics" and (cfg.real is not None or cfg.split is not None):
        raise ValueError(f"--real and --split are used by --filter physics only, got --filter {cfg.filter}")
    if cfg.filter == "none":
        return None
    out = Path(cfg.out)
    stale = [name for name in user_names if (out / name).is_dir() and any((out / name).iterdir())]
    if stale:
        raise ValueError(f"--out {out}: user folder(s) {stale} already hold files, which would mix with the kept "
                         "samples; choose a new --out")
    if cfg.filter == "margin":
        return margin_judge(cfg, class_to_idx, channels)
    return physics_judge(cfg, class_to_idx, channels, size)


def margin_judge(cfg: SampleConfig, class_to_idx: dict[str, int], channels: int):
    """Check the margin filter's classifier; return keep(images (N, C, H, W), user) -> (N,) bool."""
    if cfg.classifier is None:
        raise ValueError("--filter margin needs --classifier PATH (a classifier trained on real data, saved by "
                         "ldm.identity.save_classifier; evaluate.py --classifier PATH writes one)")
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
    device = training.resolve_device(cfg.device)
    if cfg.cuda_graph and device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, got --device {cfg.device}")
    if cfg.eta != 0 and cfg.sampler != "ddim":
        raise ValueError(f"--eta is DDIM's (--sampler ddim); --sampler {cfg.sampler} takes no eta, got --eta {cfg.eta}")
    out = Path(cfg.out)
    target = out.resolve()                                              # --out . has a name this way
    grid = Path(cfg.grid) if cfg.grid else target.with_name(target.name + "_grid.png")
    record = target.with_name(target.name + ".json")
    check_outputs(out, grid)
    pipe = Pipeline.from_pretrained(cfg.model, device=device)
    if cfg.fast:                                                        # same images, less work (ldm/fast.py)
        fast.optimize(pipe.denoiser)
        fast.optimize(pipe.vae)
    if cfg.steps > pipe.scheduler.config.num_train_timesteps:
        raise ValueError(f"--steps must be <= {pipe.scheduler.config.num_train_timesteps}, the pipeline's training "
                         f"timesteps; got {cfg.steps}")
    class_to_idx = pipe.embedder.class_to_idx
    users = pipe.user_ids(cfg.user)                                     # an unknown user fails before any writing
    names = {i: name for name, i in class_to_idx.items()}
    _, h, w = pipe.latent_shape
    factor = pipe.vae.config.downsample_factor
    judge = make_judge(cfg, class_to_idx, [names[u] for u in users], pipe.vae.config.out_channels,
                       (h * factor, w * factor))                        # checked before generating

    staging = temp_name(target)                                         # hidden until every image is written
    staging.mkdir(parents=True)
    try:
        images = pipe.generate(users, cfg.num, cfg.steps, cfg.guidance, cfg.sampler, cfg.seed, cfg.batch_size,
                               cfg.eta, cfg.progress, cfg.cuda_graph)
        kept = {}
        for user in users:
            keep = None if judge is None else judge(images[user], user)
            save_images(images[user], staging / names[user], cfg.save_npy, keep)
            kept[user] = images[user] if keep is None else images[user][keep]
        rows = [kept[u][:cfg.grid_columns] for u in users if len(kept[u])]
        if rows:
            atomic_write(grid, lambda tmp: training.image_grid(rows).save(tmp, format="PNG"))
        publish(staging, out)
    except OSError as error:                                            # disk full, ...: OUT is untouched
        raise ValueError(f"--out {out}: writing the images failed ({error.strerror or error}); nothing was written "
                         "there") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    write_json({"format": "ldm-samples-1", "options": {**asdict(cfg), "device": str(device)}, "out": str(out),
                "grid": str(grid) if rows else None, "users": {names[u]: u for u in users},
                "images": {names[u]: len(kept[u]) for u in users}}, record)
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


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse_config(SampleConfig, argv, __doc__.split("\n\n")[0])
    return cli.run_main(run, cfg)


if __name__ == "__main__":
    sys.exit(main())
