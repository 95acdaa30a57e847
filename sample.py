"""Generate spectrograms of chosen users from a pipeline folder written by train_ldm.py.

    python sample.py --model runs/ldm/pipeline --user 3 --num 16 --steps 50 --guidance 3.0 --sampler ddim --out samples/
    python sample.py --model runs/ldm/pipeline --user all          # every user of the ID map
    python sample.py --model runs/ldm/pipeline --user user_02,5    # names from the ID map or ID numbers

Writes OUT/<user name>/<i>.png (8-bit, [-1, 1] -> [0, 255]; and <i>.npy, float32 (C, H, W) in [0, 1], with
--save-npy: read it back with npy_scale "unit") and, next to OUT, OUT_grid.png with one row per user (outside OUT, so
that OUT stays a pure ROOT/<user>/files folder that evaluate.py reads). Classifier-free guidance
(Ho & Salimans 2022) mixes the prediction for the user with the one for the null ID: scale 1 is the conditional model
alone, larger values push samples harder towards the user. Every user's images come from generators seeded by
(--seed, user ID, batch), so `--user 3` and `--user all` give user 3 the same images.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm import training
from ldm.conditioning import ConditionedUNet, UserIDEmbedder, generate, make_sampler, resolve_users
from ldm.ddpm import DDPMScheduler
from ldm.io import load_pipeline
from ldm.training import option
from ldm.vae import AutoencoderKL


@dataclass
class SampleConfig:
    model: str = option("runs/ldm/pipeline", "pipeline folder written by train_ldm.py (OUT/pipeline)")
    user: str = option("all", "'all', a user name from the ID map, an ID number, or a comma list of those")
    num: int = option(16, "images per user")
    steps: int = option(50, "sampling steps")
    guidance: float = option(3.0, "classifier-free guidance scale (1 = conditional model only)")
    sampler: str = option("ddim", "DDIM (deterministic with --eta 0) or ancestral DDPM", choices=("ddim", "ddpm"))
    eta: float = option(0.0, "DDIM's eta (0 = deterministic)")
    seed: int = option(0, "seeds the starting noise (and DDPM's per-step noise)")
    out: str = option("samples", "output folder: OUT/<user>/<i>.png")
    grid: str | None = option(None, "grid PNG with one row per user (default: OUT_grid.png next to OUT)")
    batch_size: int = option(16, "images per model call (guidance doubles it)")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    save_npy: bool = option(False, "also write OUT/<user>/<i>.npy, float32 (C, H, W) in [0, 1]")
    grid_columns: int = option(8, "images per user in the grid")
    progress: bool = option(True, "show progress bars")
    cuda_graph: bool = option(False, "CUDA only: replay each model call as one captured CUDA graph (same images, "
                                     "faster at small batches, where launching kernels limits the speed)")


def load_model(path: str, device) -> tuple[ConditionedUNet, torch.nn.Module, DDPMScheduler, float, float]:
    """The denoiser (UNet + ID embedder), the VAE, the training scheduler and the latent scale/shift of a pipeline."""
    folder = Path(path)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"--model {path}: not a pipeline folder (no model_index.json); train_ldm.py writes "
                                "one to OUT/pipeline")
    parts = load_pipeline(folder, device=device)
    missing = [name for name in ("vae", "unet", "scheduler", "embedder") if name not in parts]
    if missing:
        raise ValueError(f"--model {path}: the pipeline lacks {missing}")
    vae, unet, embedder = parts["vae"].eval(), parts["unet"].eval(), parts["embedder"]
    if not isinstance(embedder, UserIDEmbedder):
        raise ValueError(f"--model {path}: its embedder is a {type(embedder).__name__}, not a UserIDEmbedder")
    channels = vae.config.latent_channels if isinstance(vae, AutoencoderKL) else vae.config.embed_dim
    if unet.config.in_channels != channels:
        raise ValueError(f"--model {path}: the UNet takes {unet.config.in_channels} latent channels, the VAE "
                         f"gives {channels}")
    if vae.config.scaling_factor is None:
        raise ValueError(f"--model {path}: vae/config.json has no scaling_factor")
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return ConditionedUNet(unet, embedder).eval(), vae, parts["scheduler"], float(vae.config.scaling_factor), shift


def save_images(images: torch.Tensor, folder: Path, save_npy: bool) -> None:
    """(N, C, H, W) in [-1, 1] -> folder/<i>.png (and <i>.npy in [0, 1])."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(training.to_uint8(images)):                # (H, W, C) uint8
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(folder / f"{i}.png")
        if save_npy:
            np.save(folder / f"{i}.npy", ((images[i] + 1) / 2).numpy().astype(np.float32))


def run(cfg: SampleConfig) -> int:
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("num", "steps", "batch_size", "grid_columns"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.cuda_graph and not str(device).startswith("cuda"):
        raise ValueError(f"--cuda-graph needs a CUDA device, got --device {device}")
    model, vae, scheduler, scale, shift = load_model(cfg.model, device)
    class_to_idx = model.embedder.class_to_idx
    users = resolve_users(cfg.user, class_to_idx)                        # an unknown user fails before any writing
    names = {i: name for name, i in class_to_idx.items()}
    scheduler = make_sampler(cfg.sampler, scheduler)
    side = model.unet.config.sample_size                                # train_ldm.py stores the latent side here
    if not isinstance(side, int):
        side = vae.config.sample_size // vae.config.downsample_factor
    latent_shape = (model.unet.config.in_channels, side, side)

    images = generate(model, vae, scheduler, users, cfg.num, latent_shape, scale, shift, cfg.guidance, cfg.steps,
                      cfg.seed, cfg.batch_size, device, cfg.progress, cfg.eta, cfg.cuda_graph)
    out = Path(cfg.out)
    for user in users:
        save_images(images[user], out / names[user], cfg.save_npy)
    grid = Path(cfg.grid) if cfg.grid else out.resolve().with_name(out.resolve().name + "_grid.png")
    training.image_grid([images[u][:cfg.grid_columns] for u in users]).save(grid)
    print(f"wrote {cfg.num} image(s) for each of {len(users)} user(s) to {out}/<user>/ and the grid {grid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = training.parse_config(SampleConfig, argv, __doc__.split("\n\n")[0])
    try:
        return run(cfg)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
