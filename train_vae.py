"""Stage 1 of latent diffusion: train an AutoencoderKL (or a VQModel) on a folder of spectrograms.

    python train_vae.py --data DIR                  # DIR/<user>/*.png|.jpg|.npy, or a flat folder
    python train_vae.py --data microdoppler         # the built-in simulated walking-person dataset
    torchrun --nproc_per_node 4 train_vae.py ...    # several GPUs (or CPU processes); only rank 0 writes

The recipe is the LDM one (Rombach et al. 2022, appendix G; Esser et al. 2021): per-image L1 (or L2) error summed
over pixels, plus kl_weight times the KL to N(0, I) (or, for VQ, the codebook and commitment losses), plus an
optional LPIPS term from a weights file you provide, plus from --disc-start a PatchGAN hinge loss whose weight is
balanced against the reconstruction gradient at the decoder's last layer. Adam(0.5, 0.9) for both players.

The first run on a data folder decides its split (per user: train, val, and the held-out test files no generator
may see; --holdout-fraction, --val-fraction, --group-regex) and writes it to split.json, which train_ldm.py,
evaluate.py and fewshot.py reuse. The weights that are evaluated and exported are an EMA whose decay warms up as
diffusers' EMAModel does (ldm.training.ema_decay); every evaluation also reports the raw weights.

The run folder (--out) holds config.json (every option as resolved), split.json, checkpoint.pt (everything needed
to resume exactly), model/ (a diffusers-format folder of the --export weights, EMA by default, with the measured
latent scaling factor in its config.json), log.jsonl, loss.png, samples/ (held-out inputs above their
reconstructions) and class_to_idx.json. It belongs to one run: every option is checked before anything is written,
a folder that holds a run is continued only with --resume (with the same options but those MAY_CHANGE_ON_RESUME
lists) or moved aside with --overwrite, and every file and folder is written beside and renamed into place, so a
kill or a full disk keeps the last checkpoint and the last model/ whole.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ldm import cli, files, logs, metrics, runs, training
from ldm.radar import identity
from ldm.data import SpectrogramFolder, parse_size
from ldm.autoencoder_losses import (LPIPS, PatchDiscriminator, adaptive_generator_weight, hinge_discriminator_loss,
                                    reconstruction_loss)
from ldm.cli import option
from ldm.training import batch_indices, sample_generators
from ldm.runs import resolve_data, resolve_split
from ldm.vae import AutoencoderKL, VAEConfig
from ldm.vq import VQConfig, VQModel


@dataclass
class TrainVAEConfig:
    data: str = option("microdoppler", "image/.npy folder (ROOT/<user>/files or flat), or 'microdoppler' to "
                                       "simulate the built-in 8-person dataset")
    out: str = option("runs/vae", "run folder (config.json, checkpoint.pt, model/, log.jsonl, samples/, loss.png); "
                                  "a new run needs an empty or new folder")
    resume: str | None = cli.resume_option()
    overwrite: bool = cli.overwrite_option()
    model: str = option("kl", "autoencoder kind: KL-regularised (Stable Diffusion) or vector-quantised",
                        choices=("kl", "vq"))
    preset: str = option("microdoppler", "model preset (ldm.vae.VAE_PRESETS / ldm.vq.VQ_PRESETS); its in/out "
                                         "channels are set from --channels")
    size: str = option("128", "image size in pixels: N (N x N) or HxW (height x width, e.g. 256x128); each side a "
                              "multiple of the preset's downsampling factor")
    channels: int = option(1, "image channels: 1 (grayscale spectrograms) or 3 (RGB)", choices=(1, 3))
    resize: str = cli.resize_option()
    colormap: str = cli.colormap_option()
    npy_scale: str = cli.npy_scale_option()
    dynamic_range: float = option(50.0, ".npy in dB: the dB range below the reference mapped to [-1, 1]", above=0,
                                  at_most=400)
    db_reference: str = option("max", ".npy in dB: 0 dB is each image's maximum ('max') or this fixed dB value")
    split: str | None = option(None, "reuse this split.json (or run folder holding one) instead of deciding a new "
                                     "split; a resumed run reuses its own")
    holdout_fraction: float = option(0.25, "new split: fraction of each user's files held out as the real test set "
                                           "that no generator sees (evaluate.py measures on it)",
                                     at_least=0, below=1)
    val_fraction: float = option(0.1, "new split: fraction of each user's files held out for evaluations during "
                                      "training", at_least=0, below=1)
    group_regex: str | None = option(None, "new split: files whose names share this regex's first group (e.g. "
                                           "'(.*)_w\\d+' for windows of one recording) stay on one side")
    steps: int = option(4000, "optimizer steps", at_least=1)
    batch_size: int = option(8, "images per process per micro-step (global batch = this x processes x accumulation)",
                             at_least=1)
    grad_accum: int = option(1, "micro-steps accumulated per optimizer step", at_least=1)
    lr: float = option(1e-4, "Adam learning rate for the autoencoder and the discriminator", above=0, at_most=1)
    seed: int = option(0, "seeds data order, initialisation, posterior noise and the simulator (per-image "
                          "generators are seeded with seed x 10^12 + ..., which must stay below 2^64)",
                       at_least=0, at_most=10_000_000)
    device: str = option("auto", "cpu, cuda, cuda:N, mps, or auto (cuda when available)")
    rec_loss: str = option("l1", "reconstruction error per pixel, summed per image", choices=("l1", "l2"))
    kl_weight: float = option(1e-6, "weight of the per-image KL sum (the LDM configs' kl_weight)", at_least=0)
    lpips: str | None = option(None, "LPIPS(net='vgg') weights file; enables the perceptual loss (nothing is "
                                     "downloaded)")
    perceptual_weight: float = option(1.0, "LPIPS weight, added per pixel as in the LDM code (needs --lpips)",
                                      at_least=0)
    disc_weight: float = option(0.5, "PatchGAN generator-loss weight (0 disables the discriminator)", at_least=0)
    disc_start: int = option(2000, "first step at which the discriminator trains and its loss is used", at_least=0)
    disc_layers: int = option(3, "stride-2 layers in the PatchGAN discriminator (the image side must be at least "
                                 "3 x 2^layers)", at_least=1, at_most=10)
    vq_codebook_size: int | None = option(None, "VQ: override the preset's number of codes", at_least=2)
    vq_beta: float = option(0.25, "VQ: commitment/codebook weight beta (see ldm.vq.VectorQuantizer, legacy flag)",
                            at_least=0)
    vq_ema: float | None = option(None, "VQ: learn codes by EMA with this decay instead of the codebook loss",
                                  above=0, below=1)
    vq_kmeans: int = option(0, "VQ: k-means iterations to initialise the codebook on the first batch (0 = off)",
                            at_least=0)
    vq_restart: bool = option(False, "VQ: move codes unused for --vq-usage-window batches onto encoder outputs")
    vq_usage_window: int = option(100, "VQ: batches without use after which a code is dead", at_least=1)
    ema_decay: float = option(0.999, "largest decay of the EMA of the weights (see --ema-warmup)", at_least=0,
                              below=1)
    ema_warmup: bool = option(True, "warm the EMA decay up as diffusers' EMAModel and the LDM code do: "
                                    "min(ema_decay, (1 + s) / (10 + s)) at update s + 1 (ldm.training.ema_decay)")
    export: str = option("ema", "which weights model/ holds: the EMA or the raw (last optimizer step) weights",
                         choices=("ema", "raw"))
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)", at_least=0)
    mixed_precision: bool = option(True, "bf16 autocast on CUDA (CPU always runs fp32)")
    compile: bool = option(False, "torch.compile the autoencoder's forward")
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")
    log_every: int = option(10, "steps between log.jsonl records", at_least=1)
    eval_every: int = option(500, "steps between evaluations on the held-out split (PSNR, SSIM, identity)",
                             at_least=1)
    sample_every: int = option(500, "steps between reconstruction grids in samples/", at_least=1)
    checkpoint_every: int = option(500, "steps between checkpoints", at_least=1)
    eval_images: int = option(256, "held-out images used per evaluation", at_least=1)
    eval_classifier: bool = option(True, "train the identity classifier on the training split and report its "
                                         "accuracy on reconstructions next to originals (labelled data only)")
    max_nonfinite: int = option(20, "consecutive NaN/Inf steps before the run stops", at_least=1)
    sim_users: int = option(8, "--data microdoppler: simulated people", at_least=1, at_most=1000)
    sim_per_user: int = option(64, "--data microdoppler: spectrograms per person", at_least=1, at_most=100_000)
    progress: bool = option(True, "show progress bars")


SSIM_WINDOW = 11   # metrics.ssim's default window: the evaluations need images at least this large

# What train() reads from a checkpoint it resumes (save_checkpoint writes these and a few more).
CHECKPOINT_KEYS = ("train_config", "model_kind", "model_config", "class_to_idx", "model", "ema", "opt", "rng")
# Options a resumed run may change: how long and where it runs, what it logs and keeps; every other option must be
# the one the checkpoint was trained with (training.check_resume). --data may name the same files by another path
# (the split's file-list hash is checked).
MAY_CHANGE_ON_RESUME = ("steps", "resume", "overwrite", "out", "device", "progress", "data", "log_every",
                        "eval_every", "sample_every", "checkpoint_every", "eval_images", "eval_classifier",
                        "max_nonfinite", "export", "compile", "gradient_checkpointing", "mixed_precision")


# ----------------------------------------------------------------------------------------------------------------
# Set-up helpers
# ----------------------------------------------------------------------------------------------------------------


def check_options(cfg: TrainVAEConfig) -> None:
    """What parse_config's per-option ranges cannot see: options that must fit together, and what options only used
    late in the run need (the discriminator from --disc-start, the evaluations' SSIM), all checked before anything
    is loaded."""
    if cfg.holdout_fraction + cfg.val_fraction >= 1:
        raise ValueError(f"--holdout-fraction {cfg.holdout_fraction} + --val-fraction {cfg.val_fraction} must be < 1 "
                         "(files are left for training)")
    cli.check_regex(cfg.group_regex, "--group-regex")
    cli.db_reference(cfg.db_reference)
    defaults = TrainVAEConfig()
    if cfg.model == "kl":
        given = [f for f in ("vq_codebook_size", "vq_ema", "vq_kmeans", "vq_restart", "vq_usage_window", "vq_beta")
                 if getattr(cfg, f) != getattr(defaults, f)]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to --model vq only (this run trains --model kl)")
    if cfg.perceptual_weight != defaults.perceptual_weight and not cfg.lpips:
        raise ValueError("--perceptual-weight needs --lpips FILE (the LPIPS weights)")
    if cfg.lpips and not Path(cfg.lpips).is_file():
        raise FileNotFoundError(f"--lpips {cfg.lpips}: no such file (LPIPS(net='vgg') weights; nothing is downloaded)")
    height, width = parse_size(cfg.size, "--size")
    factor = model_config(cfg).downsample_factor
    if height % factor or width % factor:
        raise ValueError(f"--size {cfg.size}: both sides must be multiples of preset {cfg.preset!r}'s downsampling "
                         f"factor {factor}")
    if cfg.data == "microdoppler":
        runs.check_simulator_size(height, width)
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"--size {cfg.size}: the evaluations' SSIM needs both sides >= {SSIM_WINDOW} pixels")
    if cfg.disc_weight > 0 and cfg.disc_start < cfg.steps and min(height, width) // 2 ** cfg.disc_layers < 3:
        raise ValueError(f"--disc-layers {cfg.disc_layers}: the discriminator halves the image {cfg.disc_layers} times "
                         f"and needs at least 3 pixels left, so both sides of --size must be >= "
                         f"{3 * 2 ** cfg.disc_layers} (it is {cfg.size}); use fewer --disc-layers, or --disc-weight 0")


def model_config(cfg: TrainVAEConfig) -> VAEConfig | VQConfig:
    """The autoencoder config of --model/--preset with --channels in and out. Its sample_size is the image size, N or
    [height, width] as diffusers writes it (tiled encoding uses tiles of its first entry)."""
    size = parse_size(cfg.size, "--size")
    if cfg.model == "kl":
        return dataclasses.replace(VAEConfig.preset(cfg.preset), in_channels=cfg.channels, out_channels=cfg.channels,
                                   sample_size=size)
    config = dataclasses.replace(VQConfig.preset(cfg.preset), in_channels=cfg.channels, out_channels=cfg.channels,
                                 sample_size=size, beta=cfg.vq_beta, ema_decay=cfg.vq_ema,
                                 kmeans_init_iters=cfg.vq_kmeans, dead_code_restart=cfg.vq_restart,
                                 usage_window=cfg.vq_usage_window)
    if cfg.vq_codebook_size:
        config = dataclasses.replace(config, num_vq_embeddings=cfg.vq_codebook_size)
    return config


def build_model(cfg: TrainVAEConfig):
    """The autoencoder of model_config(cfg)."""
    config = model_config(cfg)
    return AutoencoderKL(config) if cfg.model == "kl" else VQModel(config)


@dataclass
class Models:
    """What is trained, and what a checkpoint holds besides the options: the autoencoder, its EMA (and how many
    updates it has had), the PatchGAN discriminator (None with --disc-weight 0 or a --disc-start past --steps), and
    the two Adam optimizers."""
    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    disc: torch.nn.Module | None
    opt_disc: torch.optim.Optimizer | None
    ema_updates: int = 0


def build_models(cfg: TrainVAEConfig, device: str, state: dict | None) -> Models:
    """The autoencoder of --model/--preset on ``device`` (checked against a resumed checkpoint's), its EMA, the
    discriminator and Adam(0.5, 0.9) for both players."""
    model = build_model(cfg)
    check_same_model(cfg, model, state)
    model.to(device)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    disc = opt_disc = None
    if cfg.disc_weight > 0 and cfg.disc_start < cfg.steps:
        disc = PatchDiscriminator(cfg.channels, num_layers=cfg.disc_layers,
                                  generator=torch.Generator().manual_seed(cfg.seed)).to(device)
        opt_disc = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    return Models(model, ema, opt, disc, opt_disc)


def save_checkpoint(run: runs.Run, m: Models, guard, class_to_idx: dict, step: int) -> None:
    """OUT/checkpoint.pt of ``step``: everything an exact resume needs (runs.write_checkpoint)."""
    runs.write_checkpoint(run, step, {
        "model": m.model.state_dict(), "ema": m.ema.state_dict(), "opt": m.opt.state_dict(),
        "disc": m.disc.state_dict() if m.disc is not None else None,
        "opt_disc": m.opt_disc.state_dict() if m.disc is not None else None,
    }, model_kind=run.cfg.model, model_config=m.model.config.to_diffusers(), class_to_idx=class_to_idx,
        ema_updates=m.ema_updates, nonfinite_total=guard.total,
        # the VQ codebook statistics (EMA counts, usage) are not in the state dict; kept for exact resume
        quantizer_buffers=dict(m.model.quantize.named_buffers()) if run.cfg.model == "vq" else None)


def data_options(cfg: TrainVAEConfig, state: dict | None) -> dict:
    """How SpectrogramFolder reads the files: --size, --channels and the loader options (a resumed run keeps its
    checkpoint's user-name -> ID map)."""
    return dict(size=parse_size(cfg.size, "--size"), channels=cfg.channels, resize=cfg.resize,
                npy_scale=cfg.npy_scale, dynamic_range_db=cfg.dynamic_range,
                db_reference=cli.db_reference(cfg.db_reference),
                colormap=None if cfg.colormap == "none" else cfg.colormap, cache=True,
                class_to_idx=state["class_to_idx"] if state else None)


def check_same_model(cfg: TrainVAEConfig, model, state: dict | None) -> None:
    """A resumed checkpoint must hold this model (kind and config; the measured latent statistics aside)."""
    if state is None:
        return
    expected, found = model.config.to_diffusers(), state["model_config"]
    differ = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k)
                    and k not in ("scaling_factor", "latents_mean", "latents_std"))
    if state.get("model_kind") != cfg.model or differ:
        raise ValueError(f"--resume {cfg.resume}: the checkpoint is for another model ({state.get('model_kind')} "
                         f"with different {differ or 'kind'}); use the same --model/--preset/--size/--channels")


def load_state(cfg: TrainVAEConfig, state: dict | None, m: Models, guard) -> None:
    """Load a resumed checkpoint into the models, optimizers, EMA count, random state and non-finite count."""
    if state is None:
        return
    with training.checkpoint_parts(cfg.resume):
        m.model.load_state_dict(state["model"])
        m.ema.load_state_dict(state["ema"])
        m.opt.load_state_dict(state["opt"])
        if m.disc is not None and state.get("disc") is not None:   # else saved before it existed (shorter --steps)
            m.disc.load_state_dict(state["disc"])
            m.opt_disc.load_state_dict(state["opt_disc"])
        training.set_rng_state(state["rng"])
        if cfg.model == "vq":
            for name, buffer in m.model.quantize.named_buffers():
                buffer.copy_(state["quantizer_buffers"][name])
    guard.total = state.get("nonfinite_total", 0)
    m.ema_updates = state.get("ema_updates", state["step"])


def identity_classifier(cfg: TrainVAEConfig, train_set, info):
    """The identity classifier the evaluations score reconstructions with (rank 0, labelled data, --eval-classifier),
    trained now on the training split; None otherwise."""
    if not (cfg.eval_classifier and len(train_set.class_to_idx) > 1 and info.is_main):
        return None
    print("training the identity classifier the evaluations use (on the training split; --no-eval-classifier "
          "skips it)", flush=True)
    x_train, y_train = train_set.tensors()
    return identity.train_classifier(x_train, y_train, identity.ClassifierConfig(
        num_classes=len(train_set.class_to_idx), in_channels=cfg.channels, seed=cfg.seed),
        progress=cfg.progress and sys.stderr.isatty())


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Reconstructions (through the posterior mode, or the codebook) of x, in batches, in eval mode (a VQ
    codebook's statistics do not move; the training loop puts the model back into train mode)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        out.append(model(x[i:i + batch_size])[0].float().clamp(-1, 1))
    return torch.cat(out)


@torch.no_grad()
def evaluate(model, x_val: torch.Tensor, y_val: torch.Tensor, classifier, device) -> dict:
    """PSNR/SSIM of reconstructions of held-out images (in [0, 1]), and the classifier's accuracy on both."""
    x_rec = reconstruct(model, x_val.to(device)).cpu()
    unit, unit_rec = (x_val + 1) / 2, (x_rec + 1) / 2
    result = {"psnr": float(metrics.psnr(unit_rec, unit).mean()), "ssim": float(metrics.ssim(unit_rec, unit).mean())}
    if classifier is not None:
        result["acc_original"] = float((identity.predict(classifier, x_val)[0].argmax(1) == y_val).float().mean())
        result["acc_reconstruction"] = float((identity.predict(classifier, x_rec)[0].argmax(1) == y_val).float().mean())
    return result


def evaluate_both(ema, model, x_val, y_val, classifier, device) -> dict:
    """evaluate() of the EMA and of the raw weights: an EMA that lags far behind the raw weights shows here."""
    return {"ema": evaluate(ema, x_val, y_val, classifier, device),
            "raw": evaluate(model, x_val, y_val, classifier, device)}


def describe_eval(result: dict) -> str:
    """One line of evaluate_both()'s figures (or of one of its entries)."""
    return "; ".join(f"{name} weights: held-out PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}"
                     + (f", identity {r['acc_reconstruction']:.1%} on reconstructions vs {r['acc_original']:.1%} on "
                        "originals" if "acc_original" in r else "") for name, r in result.items())


@torch.no_grad()
def latent_statistics(model, x: torch.Tensor, device, generator: torch.Generator, batch_size: int = 32) -> dict:
    """1/std of the latents the diffusion model will see (LDM paper, section 4.3.2: posterior samples for KL, the
    pre-quantization latents for VQ) over the training images, and their per-channel mean and std."""
    latents = []
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size].to(device)
        if isinstance(model, AutoencoderKL):
            latents.append(model.encode(batch).sample(generator).float().cpu())
        else:
            latents.append(model.encode(batch).float().cpu())
    z = torch.cat(latents)                                               # (N, Cz, h, w)
    return {"scaling_factor": float(1.0 / z.std()),
            "latents_mean": z.mean(dim=(0, 2, 3)).tolist(), "latents_std": z.std(dim=(0, 2, 3)).tolist()}


# ----------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------


def vae_loss(cfg: TrainVAEConfig, forward, disc, perceptual, last_layer: torch.Tensor, x: torch.Tensor,
             generators: list[torch.Generator], disc_active: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The autoencoder's loss on one micro-batch x: (B, C, H, W) in [-1, 1]. Returns (loss, reconstruction, parts).

        loss = rec + regulariser + d_weight * g
        rec         = per-image L1 (or L2) summed over pixels [+ perceptual_weight * pixels * LPIPS]
        regulariser = kl_weight * KL(q(z|x) || N(0, I))   (KL; a posterior sample per image from its generator)
                    | codebook + beta * commitment loss   (VQ)
        g           = -mean D(x_rec), the PatchGAN generator loss (from --disc-start)
        d_weight    = disc_weight * ||grad_L rec|| / ||grad_L g|| at the decoder's last layer L (VQGAN, Eq. 7)

    ``parts`` holds the detached terms as tensors (kl or vq, rec, and g, d_weight while the discriminator is on): the
    caller sums them and reads them once per log interval, so no part costs a host sync per micro-step."""
    if cfg.model == "kl":
        x_rec, posterior = forward(x, sample_posterior=True, generator=generators)
        kl = posterior.kl().mean()
        regulariser, parts = cfg.kl_weight * kl, {"kl": kl.detach()}
    else:   # k-means init / dead-code restart draw from the first image's generator (see ldm/vq.py)
        x_rec, vq_loss, _ = forward(x, generator=generators[0])
        regulariser, parts = vq_loss, {"vq": vq_loss.detach()}
    rec = reconstruction_loss(x.float(), x_rec.float(), cfg.rec_loss)
    if perceptual is not None:   # the LDM code adds the per-image LPIPS to every pixel's error
        rec = rec + cfg.perceptual_weight * x[0].numel() * perceptual(x.float(), x_rec.float()).mean()
    loss = rec + regulariser
    if disc_active:
        gen_loss = -disc(x_rec).mean()
        d_weight = cfg.disc_weight * adaptive_generator_weight(rec, gen_loss, last_layer)
        loss = loss + d_weight * gen_loss
        parts.update(g=gen_loss.detach(), d_weight=d_weight)
    parts["rec"] = rec.detach()
    return loss, x_rec, parts


def log_record(cfg: TrainVAEConfig, sums: dict, steps: int, info, model) -> dict:
    """The log.jsonl record of the last log interval: each part's mean over its finite steps and the processes (the
    one host sync of the interval), the weighted KL term (what loss.png draws beside rec), and for VQ the codebook
    usage."""
    names = sorted(sums)
    means = training.all_reduce_mean(torch.stack([sums[k].double() for k in names]).cpu() / max(steps, 1), info)
    record = dict(zip(names, means.tolist()))
    if "kl" in record:
        record["kl_term"] = cfg.kl_weight * record["kl"]
    record["loss"] = record["rec"] + record.get("kl_term", 0.0) + record.get("vq", 0.0)
    if cfg.model == "vq":
        record["perplexity"] = float(model.quantize.perplexity)
        record["dead_codes"] = float(model.quantize.dead_fraction())
    return record


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
CPU_RECIPE = "--preset tiny --size 32 --batch-size 16 --lr 5e-4 --steps 200 --disc-weight 0 --checkpoint-every 100"
CURVES = ["rec", "kl_term", "vq", "g", "d"]   # loss.png: the terms as they enter the loss


def train(cfg: TrainVAEConfig) -> int:
    # ---- set-up: every option checked before anything is loaded or written ------------------------------------------
    check_options(cfg)
    cfg = dataclasses.replace(cfg, size=cli.size_text(*parse_size(cfg.size, "--size")))   # what config.json records
    run = runs.start(cfg, "train_vae.py", CHECKPOINT_KEYS, MAY_CHANGE_ON_RESUME)
    state, info, device, out = run.state, run.info, run.device, run.out

    # ---- data: the split's train files, and held-out images spread over the users ----------------------------------
    root = resolve_data(cfg, info.is_main)
    split, split_origin = resolve_split(root, cfg.split, cfg.resume, dict(
        test_fraction=cfg.holdout_fraction, val_fraction=cfg.val_fraction, seed=cfg.seed, group_regex=cfg.group_regex))
    train_set = SpectrogramFolder(root, subset=split["train"], **data_options(cfg, state))     # never split["test"]
    val_set = SpectrogramFolder(root, subset=split["val"], **data_options(cfg, state)) if split["val"] else train_set
    x_val, y_val = val_set.tensors()
    shown = runs.spread_over_users(y_val, cfg.eval_images)
    x_val, y_val = x_val[shown], y_val[shown]

    # ---- the autoencoder, its EMA, the discriminator, their optimizers -------------------------------------------
    m = build_models(cfg, device, state)
    model, ema, opt, disc, opt_disc = m.model, m.ema, m.opt, m.disc, m.opt_disc
    perceptual = LPIPS.from_file(cfg.lpips).to(device) if cfg.lpips else None
    guard = training.NonFiniteGuard(cfg.max_nonfinite)
    load_state(cfg, state, m, guard)
    if cfg.model == "vq" and info.enabled:
        model.quantize.processes = training.CodebookSync()             # one codebook in every process
    forward = DistributedDataParallel(model) if info.enabled else model
    forward = torch.compile(forward) if cfg.compile else forward
    ddp_disc = DistributedDataParallel(disc) if info.enabled and disc is not None else disc
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.mixed_precision and device.startswith("cuda"))

    # ---- outputs (only now: a bad input above leaves nothing behind) -----------------------------------------------
    log = runs.claim(run, train_set.class_to_idx, split, [
        f"data     {root}: {len(split['class_to_idx'])} user(s), "
        f"{sum(len(split[k]) for k in ('train', 'val', 'test'))} files; split ({split_origin}) "
        f"{len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} held-out test",
        f"model    {cfg.model} autoencoder, preset {cfg.preset}, {cfg.channels}x{'x'.join(map(str, x_val.shape[2:]))}"
        f" -> latents 1/{model.config.downsample_factor} the side; {sum(p.numel() for p in model.parameters()):,} "
        "parameters" + (f"; discriminator from step {cfg.disc_start}" if disc is not None else "")], out / "model")
    if log is None:                                                      # resumed a finished run
        return 0
    classifier = identity_classifier(cfg, train_set, info)

    # ---- the loop ------------------------------------------------------------------------------------------------
    loop = runs.Loop(run, functools.partial(save_checkpoint, run, m, guard, train_set.class_to_idx), "train_vae",
                         CPU_RECIPE)
    sums, finite_steps, images_seen, timer, last_eval = {}, 0, 0, time.perf_counter(), None
    for step in loop:
        disc_active = disc is not None and step >= cfg.disc_start
        model.train()
        opt.zero_grad(set_to_none=True)
        micro_batches, parts = [], {}
        for micro in range(cfg.grad_accum):
            idx = batch_indices(len(train_set), step * cfg.grad_accum + micro, cfg.batch_size, cfg.seed, info)
            x = torch.stack([train_set[i][0] for i in idx]).to(device)
            generators = sample_generators(cfg.seed, idx, step * cfg.grad_accum + micro)
            with autocast:
                loss, x_rec, micro_parts = vae_loss(cfg, forward, ddp_disc, perceptual, model.decoder.conv_out.weight,
                                                    x, generators, disc_active)
            (loss / cfg.grad_accum).backward()
            for name, value in micro_parts.items():
                parts[name] = parts.get(name, 0) + value / cfg.grad_accum
            micro_batches.append((x, x_rec.detach()))

        finite = guard.check(loss.detach(), model.parameters())       # generator step (the discriminator's
        if finite:                                                    # gradients from g are discarded)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            m.ema_updates += 1
            training.ema_update(ema, model, training.ema_decay(m.ema_updates, cfg.ema_decay, cfg.ema_warmup))
        if disc_active and finite:                                    # discriminator step on detached reconstructions
            opt_disc.zero_grad(set_to_none=True)
            for x, x_rec in micro_batches:
                with autocast:
                    d_loss = hinge_discriminator_loss(ddp_disc(x), ddp_disc(x_rec))
                (d_loss / cfg.grad_accum).backward()
                parts["d"] = parts.get("d", 0) + d_loss.detach() / cfg.grad_accum
            if guard.check(d_loss.detach(), disc.parameters()):
                opt_disc.step()
        if finite:
            sums = {k: sums.get(k, 0) + v for k, v in parts.items()}
            finite_steps += 1
        images_seen += cfg.batch_size * cfg.grad_accum * info.world_size

        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            record = log_record(cfg, sums, finite_steps, info, model) if sums else {}
            log.write({"step": done, **record, "skipped_steps": guard.total,
                       "images_per_s": images_seen / max(time.perf_counter() - timer, 1e-9)})
            sums, finite_steps, images_seen, timer = {}, 0, 0, time.perf_counter()
        if info.is_main and (done % cfg.sample_every == 0 or done == cfg.steps):
            rows = [x_val[:8], reconstruct(ema, x_val[:8].to(device)).cpu()]   # one image of each user in turn
            files.save_image(logs.image_grid(rows), out / "samples" / f"step_{done:06d}.png")
        if info.is_main and (done % cfg.eval_every == 0 or done == cfg.steps):
            last_eval = evaluate_both(ema, model, x_val, y_val, classifier, device)
            log.write({"step": done, "eval": True, **last_eval})
            loop.write(f"step {done}: " + describe_eval(last_eval))
            logs.plot_curves(log.read(), CURVES, out / "loss.png", title="train_vae losses (as weighted)")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            loop.checkpoint(done)

    # ---- save: model/ with its measured latent scale ----------------------------------------------------------------
    if info.is_main:
        exported = ema if cfg.export == "ema" else model.eval()               # training is over
        stats = latent_statistics(exported, train_set.tensors()[0], device, torch.Generator().manual_seed(cfg.seed))
        log.write({"step": cfg.steps, "latent_statistics": True, "weights": cfg.export, **stats})
        keep = ("scaling_factor",) if cfg.model == "vq" else tuple(stats)   # diffusers' VQModel: only the factor
        exported.config = dataclasses.replace(exported.config, **{k: stats[k] for k in keep})
        files.replace_folder(out / "model", exported.save_pretrained)       # a kill at any moment keeps the old model/
        log.write({"step": cfg.steps, "exported": True})
        last_eval = last_eval or evaluate_both(ema, model, x_val, y_val, classifier, device)   # resumed at the end
        logs.plot_curves(log.read(), CURVES, out / "loss.png", title="train_vae losses (as weighted)")
        runs.report(run, guard, out / "model", [f"  {describe_eval(last_eval)}", f"  latent scaling factor "
                        f"{stats['scaling_factor']:.5f} (stored in {out / 'model' / 'config.json'})"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return runs.main(train, TrainVAEConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
