"""Stage 2 of latent diffusion: train a user-ID-conditioned UNet on the latents of a frozen stage-1 autoencoder.

    python train_ldm.py --vae runs/vae --data DIR          # DIR/<user>/*.png|.jpg|.npy (the VAE's data)
    python train_ldm.py --vae runs/vae --data microdoppler # the built-in simulated 8-person dataset
    torchrun --nproc_per_node 4 train_ldm.py ...           # several GPUs (or CPU processes); only rank 0 writes
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:PORT train_ldm.py ...
                                                           # several machines (run on each; see --fsdp for sharding)

The recipe is the LDM one (Rombach et al. 2022, section 3.3): latents z = (E(x) - shift) * scaling_factor of the
frozen VAE (KL: a posterior sample per step, or its mean with --posterior mean; VQ: the pre-quantization latents),
the simplified DDPM loss (epsilon or v targets, optional min-SNR-gamma weighting) with Stable Diffusion's
scaled-linear schedule, AdamW, an EMA of the weights for sampling and export. The user ID reaches the UNet through
cross-attention tokens and/or its class embedding (--cond, see ldm/conditioning.py); with probability --p-uncond it
is replaced by the null ID, so the same network serves classifier-free guidance.

The LDM trains on the "train" part of the VAE run's split.json (copied into --out; --split names another one), so
neither stage ever sees the held-out "test" files that evaluate.py measures on.

The run folder (--out) holds config.json (every option as resolved), split.json, checkpoint.pt (everything needed
to resume exactly), pipeline/ (a diffusers-layout folder: vae/, unet/, scheduler/ load in diffusers; embedder/ holds
the ID table and the user-name -> ID map), log.jsonl, loss.png, samples/ (EMA samples, one row per user) and
class_to_idx.json. As in train_vae.py, it belongs to one run (--resume with the same options but those
MAY_CHANGE_ON_RESUME lists, or --overwrite to move it aside), and a kill or a full disk keeps the last checkpoint
and the last pipeline/ whole.

Several processes (torchrun) split each global batch: process r of N trains on its batch_size images, the gradients
are averaged (DDP, or with --fsdp reduce-scattered onto weight shards), and the run trains what one process with the
N-fold batch would. Only global rank 0 writes files; each process uses the GPU of its LOCAL_RANK.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from ldm import cli, fast, files, logs, runs, training
from ldm.conditioning import ROUTES, ConditionedUNet, UserIDEmbedder, check_compatible
from ldm.data import SpectrogramFolder, parse_size
from ldm.splits import read_split
from ldm.ddpm import DDPMScheduler
from ldm.io import load_pretrained
from ldm.files import read_json
from ldm.layers import ResnetBlock2D
from ldm.pipeline import Pipeline, file_record, make_sampler
from ldm.diffusion_loss import diffusion_loss
from ldm.cli import option
from ldm.training import batch_indices, sample_generators
from ldm.runs import resolve_data, resolve_split
from ldm.transformer import Transformer2D
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL


@dataclass
class TrainLDMConfig:
    data: str = option("microdoppler", "image/.npy folder ROOT/<user>/files, or 'microdoppler' to simulate the "
                                       "built-in dataset (shared with train_vae.py when --out is a sibling folder)")
    out: str = option("runs/ldm", "run folder (config.json, checkpoint.pt, pipeline/, log.jsonl, samples/, loss.png); "
                                  "a new run needs an empty or new folder")
    resume: str | None = cli.resume_option()
    overwrite: bool = cli.overwrite_option()
    vae: str = option("runs/vae", "a train_vae.py run folder (its model/) or a diffusers AutoencoderKL/VQModel folder")
    scaling_factor: str = option("config", "'config': the factor in the VAE's config.json (an error if it has none); "
                                           "'auto': 1/std of the training latents, measured now; or a number")
    posterior: str = option("sample", "KL VAE: train on a posterior sample per step, or on the posterior mean",
                            choices=("sample", "mean"))
    cache_latents: bool = option(False, "encode the dataset once before training (KL: the posterior mean and std, "
                                        "so per-step samples are drawn exactly as without the cache)")
    preset: str = option("microdoppler", "UNet preset (ldm.unet.UNET_PRESETS); in/out channels and sample size "
                                         "come from the VAE")
    unet_channels: str | None = option(None, "override the preset's block_out_channels, e.g. '32,64,128'")
    unet_attention: str | None = option(None, "override which levels have attention, e.g. '0,1,1'")
    unet_layers: int | None = option(None, "override the preset's resnets per level", at_least=1, at_most=64)
    unet_heads: int | None = option(None, "override the preset's attention heads (every level)", at_least=1)
    context_dim: int | None = option(None, "override the preset's cross_attention_dim (width of the ID tokens)",
                                     at_least=1)
    init_unet: str | None = option(None, "start from the weights of this diffusers UNet folder (e.g. an earlier "
                                         "pipeline/unet) instead of the preset")
    cond: str = option("both", "how the user ID reaches the UNet: cross-attention tokens, the class embedding "
                               "added to the time embedding, or both", choices=ROUTES)
    num_tokens: int = option(4, "cross-attention tokens per user (>= 2 so the attention weights carry information)",
                             at_least=1, at_most=1024)
    p_uncond: float = option(0.1, "probability of replacing a user ID by the null ID (classifier-free guidance)",
                             at_least=0, below=1)
    prediction: str = option("epsilon", "what the UNet predicts", choices=("epsilon", "v_prediction"))
    min_snr_gamma: float | None = option(None, "min-SNR-gamma loss weighting (Hang et al. 2023; 5 in the paper)",
                                         above=0)
    size: str | None = option(None, "image size in pixels: N (N x N) or HxW (height x width, e.g. 256x128); "
                                    "default: the VAE's sample_size (its [height, width] when not square)")
    resize: str = cli.resize_option()
    colormap: str = cli.colormap_option()
    npy_scale: str = cli.npy_scale_option()
    dynamic_range: float = option(50.0, ".npy in dB: the dB range below the reference mapped to [-1, 1]", above=0,
                                  at_most=400)
    db_reference: str = option("max", ".npy in dB: 0 dB is each image's maximum ('max') or this fixed dB value")
    split: str | None = option(None, "the split.json to use (default: the --vae run folder's, so both stages train "
                                     "on the same files and never on the held-out test files; a resumed run "
                                     "reuses its own)")
    holdout_fraction: float = option(0.25, "only when neither --split nor the VAE run has a split: fraction of each "
                                           "user's files held out as the real test set", at_least=0, below=1)
    val_fraction: float = option(0.1, "only for a new split: fraction of each user's files held out for the "
                                      "held-out loss during training", at_least=0, below=1)
    group_regex: str | None = option(None, "only for a new split: files whose names share this regex's first group "
                                           "stay on one side")
    steps: int = option(20000, "optimizer steps", at_least=1)
    batch_size: int = option(16, "images per process per step (global batch = this x processes)", at_least=1)
    lr: float = option(1e-4, "AdamW learning rate", above=0, at_most=1)
    weight_decay: float = option(0.0, "AdamW weight decay", at_least=0, at_most=10)
    seed: int = option(0, "seeds data order, initialisation, noise, timesteps, ID dropout and the simulator "
                          "(per-image generators are seeded with seed x 10^12 + ..., which must stay below 2^64)",
                       at_least=0, at_most=10_000_000)
    device: str = option("auto", "cpu, cuda, cuda:N, mps, or auto (cuda when available)")
    ema_decay: float = option(0.999, "largest decay of the EMA of the weights (see --ema-warmup)", at_least=0,
                              below=1)
    ema_warmup: bool = option(True, "warm the EMA decay up as diffusers' EMAModel and the LDM code do: "
                                    "min(ema_decay, (1 + s) / (10 + s)) at update s + 1 (ldm.training.ema_decay)")
    export: str = option("ema", "which weights pipeline/ holds: the EMA or the raw (last optimizer step) weights",
                         choices=("ema", "raw"))
    eval_every: int = option(500, "steps between held-out losses of the EMA and the raw weights in log.jsonl",
                             at_least=1)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)", at_least=0)
    mixed_precision: bool = option(True, "bf16 autocast on CUDA (CPU always runs fp32)")
    gradient_checkpointing: bool = option(False, "recompute UNet activations in backward to save memory")
    compile: bool = option(False, "torch.compile the denoiser's forward (and so its backward) for training: the "
                                  "first step pays the compilation (minutes for the microdoppler preset), later "
                                  "steps run fused elementwise kernels with fewer launches, typically faster on a "
                                  "GPU (on a CPU it can be slower); the loss agrees with eager up to float rounding. "
                                  "Evaluation, sample grids and export stay eager")
    channels_last: bool = option(False, "hold the denoiser's weights and the latents in torch.channels_last (NHWC) "
                                        "memory format, on ldm.fast's path (which keeps NHWC maps NHWC through the "
                                        "transformers): typically faster convolutions on tensor-core GPUs with bf16 "
                                        "(little gain on a CPU); the same numbers up to float rounding, checkpoints "
                                        "as without it")
    fused_adamw: bool = option(True, "on CUDA, AdamW's fused kernel: one launch updates every parameter instead of "
                                     "several per group of tensors, a shorter optimizer step; the CPU always runs "
                                     "the default AdamW")
    fsdp: bool = option(False, "under torchrun (2+ processes): shard the denoiser's weights, gradients and AdamW "
                               "state across the processes with FSDP2 (torch.distributed.fsdp.fully_shard) instead "
                               "of a full copy per process with DDP, for a model that does not fit on one GPU. "
                               "The EMA is sharded too; rank 0 keeps one unsharded copy of the weights for the "
                               "held-out loss, sample grids and export. Checkpoints hold full state dicts as "
                               "without --fsdp, so either kind of run resumes the other's. Not with --compile or "
                               "--channels-last")
    log_every: int = option(10, "steps between log.jsonl records", at_least=1)
    sample_every: int = option(500, "steps between EMA sample grids in samples/ (one row per user)", at_least=1)
    sample_per_user: int = option(4, "images per user in each grid", at_least=1, at_most=64)
    sample_steps: int = option(50, "DDIM steps for the grids (at most 999: DDIM on the training schedule's 1000 "
                                   "steps with Stable Diffusion's steps_offset 1)", at_least=1, at_most=999)
    sample_guidance: float = option(3.0, "classifier-free guidance scale for the grids", at_least=0, at_most=100)
    checkpoint_every: int = option(500, "steps between checkpoints", at_least=1)
    max_nonfinite: int = option(20, "consecutive NaN/Inf steps before the run stops", at_least=1)
    sim_users: int = option(8, "--data microdoppler: simulated people", at_least=1, at_most=1000)
    sim_per_user: int = option(64, "--data microdoppler: spectrograms per person", at_least=1, at_most=100_000)
    progress: bool = option(True, "show progress bars")


# What train() reads from a checkpoint it resumes (save_checkpoint writes these and a few more).
CHECKPOINT_KEYS = ("train_config", "unet_config", "embedder_config", "class_to_idx", "scaling_factor", "model",
                   "ema", "opt", "rng")
# Options a resumed run may change: how long and where it runs, how it computes the same numbers, what it logs and
# keeps; every other option must be the one the checkpoint was trained with (training.check_resume). --data may name
# the same files by another path (the split's file-list hash is checked).
MAY_CHANGE_ON_RESUME = ("steps", "resume", "overwrite", "out", "device", "progress", "data", "log_every",
                        "eval_every", "sample_every", "checkpoint_every", "sample_per_user", "sample_steps",
                        "sample_guidance", "max_nonfinite", "export", "cache_latents", "compile", "channels_last",
                        "fused_adamw", "fsdp", "gradient_checkpointing", "mixed_precision")


# ----------------------------------------------------------------------------------------------------------------
# Set-up helpers
# ----------------------------------------------------------------------------------------------------------------


def load_vae(path: str) -> tuple[torch.nn.Module, dict, Path]:
    """The frozen autoencoder of a train_vae.py run folder (its model/) or of a diffusers folder, its raw
    config.json (to tell a stored scaling factor from a default one) and the folder it was read from."""
    folder = Path(path)
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--vae {path}: neither a train_vae.py run folder (with model/) nor a diffusers "
                                "AutoencoderKL/VQModel folder (with config.json)")
    raw = read_json(folder / "config.json")
    if raw.get("script") == "train_vae.py":                              # the run folder's own config.json
        raise FileNotFoundError(f"--vae {path}: a train_vae.py run folder without model/ (the run has not finished; "
                                "continue it with train_vae.py --resume)")
    if raw.get("_class_name") not in ("AutoencoderKL", "VQModel"):
        raise ValueError(f"--vae {path}: holds a {raw.get('_class_name')}, expected an AutoencoderKL or a VQModel")
    vae = load_pretrained(folder).eval().requires_grad_(False)
    return vae, raw, folder


def vae_image_size(raw_config: dict, path: str) -> tuple[int, int]:
    """(height, width) of the images a VAE was trained on: its config.json's sample_size, an int N (N x N) or, as
    diffusers writes a non-square size and train_vae.py follows, [height, width]."""
    size = raw_config.get("sample_size")
    if isinstance(size, list) and len(size) == 2:
        return int(size[0]), int(size[1])
    if isinstance(size, int) and size > 0:
        return size, size
    raise ValueError(f"--vae {path}: its config.json has sample_size {size!r}, not an image size; pass --size")


def vae_run_split(path: str) -> str | None:
    """The split.json of the train_vae.py run that made the VAE at ``path`` (the run folder or its model/), if any."""
    folder = Path(path)
    for candidate in (folder / "split.json", folder.parent / "split.json" if folder.name == "model" else None):
        if candidate is not None and candidate.is_file():
            return str(candidate)
    return None


@torch.no_grad()
def encode_moments(vae, x: torch.Tensor, device, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, C, H, W) in [-1, 1] -> (mean, std), each (N, Cz, h, w) on the CPU: the KL posterior's, or for a VQ
    model the pre-quantization latents and zeros."""
    means, stds = [], []
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size].to(device)
        if isinstance(vae, AutoencoderKL):
            posterior = vae.encode(batch)
            means.append(posterior.mean.float().cpu())
            stds.append(posterior.std.float().cpu())
        else:
            h = vae.encode(batch).float().cpu()
            means.append(h)
            stds.append(torch.zeros_like(h))
    return torch.cat(means), torch.cat(stds)


def draw_latents(mean: torch.Tensor, std: torch.Tensor, generators: list[torch.Generator], posterior: str
                 ) -> torch.Tensor:
    """The autoencoder latents of a batch: mean + std * eps with eps drawn per image from its generator (posterior
    'sample'), or the mean ('mean'). mean, std: (B, Cz, h, w). The VAE's scale_latents then gives diffusion's z."""
    if posterior == "sample":
        eps = torch.cat([torch.randn((1, *mean.shape[1:]), generator=g) for g in generators]).to(mean.device)
        mean = mean + std * eps
    return mean


def parse_levels(text: str, kind, name: str) -> tuple:
    try:
        return tuple(kind(int(v)) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of integers, got {text!r}") from None


def build_unet(cfg: TrainLDMConfig, channels: int, latent_size: tuple[int, int],
               num_users: int) -> UNet2DConditionModel:
    """The UNet of --preset (with the --unet-* overrides) or of --init-unet, fitted to the latents and the route.
    Its sample_size is the latent size (h, w), an int when square, as diffusers writes it."""
    class_embeds = None if cfg.cond == "cross" else num_users + 1
    h, w = latent_size
    side = h if h == w else (h, w)
    if cfg.init_unet:
        unet = load_pretrained(cfg.init_unet)
        if not isinstance(unet, UNet2DConditionModel):
            raise ValueError(f"--init-unet {cfg.init_unet}: holds a {type(unet).__name__}, not a UNet2DConditionModel")
        if unet.config.in_channels != channels or unet.config.out_channels != channels:
            raise ValueError(f"--init-unet {cfg.init_unet}: the UNet takes {unet.config.in_channels} latent channels "
                             f"and gives {unet.config.out_channels}, but the VAE's latents have {channels}")
        unet.config = dataclasses.replace(unet.config, sample_size=side)   # informational: sample.py reads it
        return unet
    config = UNetConfig.preset(cfg.preset)
    overrides = dict(in_channels=channels, out_channels=channels, sample_size=side, num_class_embeds=class_embeds)
    if cfg.unet_channels:
        overrides["block_out_channels"] = parse_levels(cfg.unet_channels, int, "unet-channels")
        levels = len(overrides["block_out_channels"])
        for name in ("layers_per_block", "down_attention", "num_heads", "transformer_layers_per_block"):
            value = getattr(config, name)                    # repeat the preset's first level for a new level count
            overrides[name] = value[0] if len(value) != levels else value
        overrides["up_attention"] = None
    if cfg.unet_attention:
        overrides["down_attention"] = parse_levels(cfg.unet_attention, bool, "unet-attention")
        overrides["up_attention"] = None
    if cfg.unet_layers:
        overrides["layers_per_block"] = cfg.unet_layers
    if cfg.unet_heads:
        overrides["num_heads"] = cfg.unet_heads
    if cfg.context_dim:
        overrides["cross_attention_dim"] = cfg.context_dim
    return UNet2DConditionModel(dataclasses.replace(config, **overrides))


def make_scheduler(prediction: str) -> DDPMScheduler:
    """Stable Diffusion's training schedule: 1000 steps, scaled-linear betas 0.00085 .. 0.012, no clipping."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, prediction_type=prediction, steps_offset=1)


def compile_problem(device: str) -> str | None:
    """Why torch.compile cannot run on ``device`` here (no C++ compiler for the CPU backend, no Triton for CUDA, an
    unsupported Python, ...), or None when it can. Compiles and runs a one-line function, so that --compile fails
    at start-up with this reason rather than with a compiler traceback at the first training step."""
    try:
        torch.compile(lambda x: x * 2 + 1, dynamic=False)(torch.ones(2, device=device))
    except Exception as error:   # inductor raises many types (InvalidCxxCompiler, BackendCompilerFailed, ...)
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0] if lines else ''}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Sharding across processes (--fsdp)
# ----------------------------------------------------------------------------------------------------------------


def shard(model: ConditionedUNet) -> None:
    """FSDP2, in place: the parameters of each resnet and each transformer of the UNet become DTensors split along
    dim 0 across the processes, all-gathered only around that module's forward and backward; the rest (conv_in/out,
    the time and class embeddings, the resamplers, the ID table) forms the root unit. State-dict keys stay those of
    the unsharded model. (A whole down/up block cannot be a unit: it pushes or pops the UNet's list of skip
    connections in place, and FSDP2's pre-forward hook passes a module a rebuilt copy of its argument lists.)"""
    for module in model.unet.modules():
        if isinstance(module, (ResnetBlock2D, Transformer2D)):
            fully_shard(module)
    fully_shard(model)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def check_options(cfg: TrainLDMConfig) -> None:
    """What parse_config's per-option ranges cannot see: options that must fit together or are read as text, all
    checked before anything is loaded."""
    if cfg.holdout_fraction + cfg.val_fraction >= 1:
        raise ValueError(f"--holdout-fraction {cfg.holdout_fraction} + --val-fraction {cfg.val_fraction} must be < 1 "
                         "(files are left for training)")
    cli.check_regex(cfg.group_regex, "--group-regex")
    cli.db_reference(cfg.db_reference)
    parse_scaling_factor(cfg.scaling_factor)
    for text, kind, name in ((cfg.unet_channels, int, "unet-channels"), (cfg.unet_attention, bool, "unet-attention")):
        if text is not None:
            parse_levels(text, kind, name)
    if cfg.channels_last and cfg.fsdp:
        raise ValueError("--channels-last and --fsdp together are not supported: FSDP2 shards only contiguous "
                         "parameters (torch: 'FSDP does not support non-contiguous parameters yet'); use one of the "
                         "two")
    try:   # the grids' sampler: its real step limit on the training schedule, found now rather than at the first grid
        make_sampler("ddim", make_scheduler(cfg.prediction)).set_timesteps(cfg.sample_steps)
    except ValueError as error:
        raise ValueError(f"--sample-steps {cfg.sample_steps}: the sample grids' DDIM sampler cannot take that many "
                         f"steps on the training schedule ({error})") from None
    if cfg.compile and cfg.fsdp:
        raise ValueError("--compile and --fsdp together are not supported: compiling the FSDP2-sharded UNet "
                         "recompiles per sharded module until torch._dynamo's recompile limit and runs the rest "
                         "eagerly (and with dynamic shapes inductor fails); use one of the two")


def parse_scaling_factor(text: str) -> str | float:
    """--scaling-factor: 'config', 'auto', or a finite positive number."""
    if text in ("config", "auto"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--scaling-factor must be 'config', 'auto' or a finite number > 0, got {text!r}")
    return value


def image_size(cfg: TrainLDMConfig, vae, raw_config: dict) -> tuple[int, int]:
    """(height, width) of the training images: --size, else the VAE's; each side a multiple of its downsampling
    factor, and for --data microdoppler a size the simulator makes (the error says where a size not typed came
    from)."""
    height, width = parse_size(cfg.size, "--size") if cfg.size else vae_image_size(raw_config, cfg.vae)
    factor = vae.config.downsample_factor
    if height % factor or width % factor:
        raise ValueError(f"--size {cli.size_text(height, width)}: both sides must be multiples of the VAE's "
                         f"downsampling factor {factor}")
    if cfg.data == "microdoppler" and not cfg.size:
        try:
            runs.check_simulator_size(height, width)
        except ValueError:
            raise ValueError(f"--data microdoppler (the default: no --data was given) simulates square spectrograms "
                             f"of side 64, 128 or 256, but the VAE {cfg.vae} takes {cli.size_text(height, width)} "
                             "images: pass --data DIR, the folder that VAE was trained on") from None
    elif cfg.data == "microdoppler":
        runs.check_simulator_size(height, width)
    return height, width


def check_same_vae(cfg: TrainLDMConfig, vae_sha256: str, state: dict | None) -> None:
    """The generator's provenance is one thing: a resumed run trains on the VAE it started with, and --init-unet
    from an earlier pipeline/ continues in that pipeline's latent space (the same VAE weights)."""
    if state is not None and state.get("vae_sha256") not in (None, vae_sha256):
        raise ValueError(f"--vae {cfg.vae}: its weights are not those this run started with (SHA-256 "
                         f"{vae_sha256[:12]}... now, {state['vae_sha256'][:12]}... in the checkpoint): the VAE was "
                         "retrained or replaced; resume with the VAE it started with, or start a new --out")
    if cfg.init_unet and (Path(cfg.init_unet).parent / "vae").is_dir():
        theirs = runs.weights_sha256(Path(cfg.init_unet).parent / "vae")
        if theirs != vae_sha256:
            raise ValueError(f"--init-unet {cfg.init_unet}: that UNet was trained on the latents of "
                             f"{Path(cfg.init_unet).parent / 'vae'}, not of --vae {cfg.vae} (other weights); pass "
                             "the VAE it was trained with")


def check_split_against_vae(split: dict, vae_split_path: str | None, origin: str) -> None:
    """No file the VAE trained on may be in this run's test part (which evaluate.py measures on), when the VAE run's
    split is of the same data folder."""
    if vae_split_path is None:
        return
    vae_split = read_split(vae_split_path)
    if vae_split.get("files_sha256") != split.get("files_sha256"):
        return
    leaked = sorted(set(split["test"]) & set(vae_split["train"]))
    if leaked:
        raise ValueError(f"the split ({origin}) puts {len(leaked)} file(s) the VAE trained on in test (e.g. "
                         f"{leaked[0]}; the VAE's split is {vae_split_path}): evaluation would measure on files a "
                         "generator has seen; use the VAE run's split (leave out --split)")


def latent_scale(cfg: TrainLDMConfig, raw_config: dict, state: dict | None, moments, shift: float) -> float:
    """The latent scaling factor of this run (LDM paper, section 4.3.2): a resumed run's own; else the VAE's
    config.json's (--scaling-factor config), 1/std of the training latents measured now ('auto', from ``moments``),
    or the number given."""
    if state is not None:
        return state["scaling_factor"]
    if cfg.scaling_factor == "config":
        if raw_config.get("scaling_factor") is None:
            raise ValueError(f"--vae {cfg.vae}: its config.json has no scaling_factor; pass --scaling-factor auto to "
                             "measure 1/std of the training latents now (LDM paper, section 4.3.2) or a number")
        return float(raw_config["scaling_factor"])
    if cfg.scaling_factor == "auto":
        generators = [torch.Generator().manual_seed(cfg.seed * 7919 + i) for i in range(len(moments[0]))]
        return float(1.0 / (draw_latents(*moments, generators, cfg.posterior) - shift).std())
    return parse_scaling_factor(cfg.scaling_factor)


def check_processes(cfg: TrainLDMConfig, info, device: str) -> None:
    """What the process group and the machine must allow: --fsdp needs several processes, --compile a compiler."""
    if cfg.fsdp and not info.enabled:
        raise ValueError("--fsdp shards the model across processes: launch with torchrun --nproc-per-node N (N >= 2), "
                         "or drop --fsdp for one process")
    if cfg.compile and (problem := compile_problem(device)) is not None:
        raise ValueError(f"--compile: torch.compile does not work on this machine ({problem}); run without --compile")


def held_out_latents(root: Path, split: dict, options: dict, vae, shift: float, scale: float, device
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The held-out loss's inputs: the validation files' scaled posterior means, each repeated for several (noise,
    t) draws (about 256 in all), and their user IDs; (None, None) without validation files."""
    if not split["val"]:
        return None, None
    x_val, y_val = SpectrogramFolder(root, subset=split["val"], **options).tensors()
    repeats = max(1, 256 // len(x_val))
    z_val = (encode_moments(vae, x_val, device)[0] - shift) * scale                # (N, Cz, h, w)
    return z_val.repeat(repeats, 1, 1, 1), y_val.repeat(repeats).to(device)


def build_denoiser(cfg: TrainLDMConfig, vae, image_size, class_to_idx: dict, state: dict | None) -> ConditionedUNet:
    """The UNet (build_unet) on the VAE's latents with the user-ID embedder of --cond/--num-tokens, checked to fit
    each other and a resumed checkpoint."""
    factor, channels = vae.config.downsample_factor, vae.latent_channels
    unet = build_unet(cfg, channels, (image_size[0] // factor, image_size[1] // factor), len(class_to_idx))
    embedder = UserIDEmbedder(len(class_to_idx), unet.config.cross_attention_dim, cfg.num_tokens, cfg.cond,
                              class_to_idx)
    check_compatible(unet.config, embedder)
    check_same_denoiser(cfg, unet, embedder, state, channels)
    return ConditionedUNet(unet, embedder)


@dataclass
class Trained:
    """What the optimizer changes, and what a checkpoint holds besides the options: the denoiser, its EMA (and how
    many updates it has had), AdamW, and the non-finite guard's count."""
    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    guard: training.NonFiniteGuard
    ema_updates: int = 0


def save_checkpoint(run: runs.Run, t: Trained, class_to_idx: dict, scale: float, vae_sha256: str,
                    step: int) -> None:
    """OUT/checkpoint.pt of ``step``: full state dicts (gathered from every process under --fsdp, a collective) and
    everything an exact resume needs, with the latent scale and the hash of the VAE weights it belongs to."""
    if run.cfg.fsdp:
        weights = {"model": training.gather_state_dict(t.model, run.info.is_main),
                   "ema": training.gather_state_dict(t.ema, run.info.is_main),
                   "opt": training.gather_optimizer_state(t.opt, run.info.is_main)}
    else:
        weights = {"model": t.model.state_dict(), "ema": t.ema.state_dict(), "opt": t.opt.state_dict()}
    runs.write_checkpoint(run, step, weights, unet_config=t.model.unet.config.to_diffusers(),
                              embedder_config=t.model.embedder.config(), class_to_idx=class_to_idx,
                              scaling_factor=scale, vae_sha256=vae_sha256, ema_updates=t.ema_updates,
                              nonfinite_total=t.guard.total)


def place_denoiser(cfg: TrainLDMConfig, model: ConditionedUNet, state: dict | None, info
                   ) -> tuple[ConditionedUNet, ConditionedUNet | None]:
    """Make the denoiser ready to train, in place: the same initial weights in every process (--fsdp), NHWC weights
    (--channels-last), activation recomputation (--gradient-checkpointing), a resumed checkpoint's weights (full
    state dicts, loaded before sharding), and the shards (--fsdp). Returns its EMA (sharded like it) and, with
    --fsdp, rank 0's unsharded copy for evaluation, sampling and export (else None)."""
    if cfg.fsdp:   # every process starts from rank 0's initial weights (DDP does this when it wraps the model)
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)                     # the 4-d (convolution) weights: NHWC
        fast.optimize(model)                # its transformers keep NHWC maps NHWC (and its other devices come along)
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if state is not None:
        with training.checkpoint_parts(cfg.resume):
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
    rank0_copy = copy.deepcopy(ema) if cfg.fsdp and info.is_main else None
    if cfg.fsdp:
        shard(model)
        shard(ema)                                                       # its shards match the model's
    return ema, rank0_copy


def provenance(split: dict, vae_split: str | None) -> dict:
    """pipeline/provenance.json: every file the generator saw (this run's training files, with its VAE's when the
    VAE run's split is of the same data folder)."""
    seen = set(split["train"])
    if vae_split is not None and read_split(vae_split)["files_sha256"] == split["files_sha256"]:
        seen |= set(read_split(vae_split)["train"])
    return {"trained_on": file_record(sorted(seen)), "enrolled": {}}


def describe_eval(result: dict) -> str:
    """One line of the held-out losses of the EMA and the raw weights (empty off rank 0, where they are None)."""
    if result["ema_val_loss"] is None:
        return ""
    return f"held-out loss {result['ema_val_loss']:.4f} (EMA weights), {result['raw_val_loss']:.4f} (raw weights)"


def load_optimizer(cfg: TrainLDMConfig, state: dict | None, t: Trained) -> None:
    """A resumed checkpoint's optimizer state (cut to this process's shards under --fsdp), random state, EMA count and
    non-finite count."""
    if state is None:
        return
    with training.checkpoint_parts(cfg.resume):
        opt_state = training.shard_optimizer_state(state["opt"], list(t.model.parameters())) if cfg.fsdp \
            else state["opt"]
        for group in opt_state["param_groups"]:
            group["fused"] = t.opt.defaults["fused"]                     # this run's --fused-adamw, not the saved one
        t.opt.load_state_dict(opt_state)
        training.set_rng_state(state["rng"])
    t.guard.total = state.get("nonfinite_total", 0)
    t.ema_updates = state.get("ema_updates", state["step"])


# ----------------------------------------------------------------------------------------------------------------
# The loss, the held-out loss, the sample grid
# ----------------------------------------------------------------------------------------------------------------


def ldm_loss(denoiser, scheduler: DDPMScheduler, embedder: UserIDEmbedder, mean: torch.Tensor, std: torch.Tensor,
             users: torch.Tensor, generators: list[torch.Generator], cfg: TrainLDMConfig, scale: float, shift: float
             ) -> torch.Tensor:
    """The LDM training loss of one batch (LDM paper, Eq. (2)), one step per line:

        latents         E(x) = mean + std * eps   (a posterior sample per image; its mean with --posterior mean)
        scaled latents  z0 = (E(x) - shift) * scale
        IDs             each user ID replaced by the null ID with probability p_uncond (classifier-free guidance)
        noised, prediction, loss: ldm.diffusion_loss (x_t = sqrt(a_t) z0 + sqrt(1 - a_t) noise, then
                        mean ||target - denoiser(x_t, t, ID)||^2, target noise or v)

    mean, std: (B, Cz, h, w) posterior moments from encode_moments; users: (B,) IDs. Image i draws everything from
    generators[i], in this order: posterior noise, ID dropout, diffusion noise, timestep."""
    latents = draw_latents(mean, std, generators, cfg.posterior)                 # (B, Cz, h, w)
    z0 = ((latents - shift) * scale).to(users.device)                           # (B, Cz, h, w), unit variance
    if cfg.channels_last:
        z0 = z0.contiguous(memory_format=torch.channels_last)                   # stored NHWC
    ids = embedder.drop_ids(users, cfg.p_uncond, generators)                     # (B,)
    return diffusion_loss(denoiser, scheduler, z0, ids, generator=generators, min_snr_gamma=cfg.min_snr_gamma)


def unsharded(module, cfg: TrainLDMConfig, info, copy_on_rank0) -> torch.nn.Module | None:
    """``module`` (the model or the EMA) with all its weights, for evaluation, sampling and export on rank 0; None on
    the other ranks. With --fsdp every process takes part in gathering the shards into rank 0's copy."""
    if not cfg.fsdp:
        return module if info.is_main else None
    weights = training.gather_state_dict(module, keep=info.is_main)
    if not info.is_main:
        return None
    copy_on_rank0.load_state_dict(weights)
    return copy_on_rank0


@torch.no_grad()
def held_out_loss(denoiser, scheduler, z_val: torch.Tensor, ids_val: torch.Tensor, cfg: TrainLDMConfig,
                  device) -> float | None:
    """The diffusion loss of ``denoiser`` on the validation latents z_val (scaled posterior means, each repeated with
    several draws), with noise and timesteps from fixed generators: every evaluation, the EMA and the raw weights see
    the same draws. None off rank 0 (``denoiser`` None)."""
    if denoiser is None:
        return None
    denoiser.eval()
    generators = [torch.Generator().manual_seed(cfg.seed * 1_000_003 + i) for i in range(len(z_val))]
    losses = [diffusion_loss(denoiser, scheduler, z_val[i:i + 64].to(device), ids_val[i:i + 64],
                             generator=generators[i:i + 64], min_snr_gamma=cfg.min_snr_gamma) * len(z_val[i:i + 64])
              for i in range(0, len(z_val), 64)]
    return float(sum(losses) / len(z_val))


def sample_grid(weights, vae, scheduler, cfg: TrainLDMConfig, num_users: int, path: Path) -> None:
    """samples/step_N.png: --sample-per-user EMA samples of every user, one row each (rank 0: ``weights`` not None)."""
    if weights is None:
        return
    images = Pipeline(weights, vae, scheduler).generate(list(range(num_users)), cfg.sample_per_user, cfg.sample_steps,
                                                        cfg.sample_guidance, "ddim", cfg.seed,
                                                        batch_size=cfg.sample_per_user, progress=False)
    files.save_image(logs.image_grid([images[u] for u in range(num_users)]), path)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
CPU_RECIPE = ("--preset tiny --unet-channels 32,64 --unet-attention 0,1 --context-dim 64 --batch-size 32 --lr 1e-3 "
              "--cache-latents --posterior mean --steps 400 --sample-steps 20 --checkpoint-every 100")


def train(cfg: TrainLDMConfig) -> int:
    # ---- set-up: every option checked before anything is loaded or written ------------------------------------------
    check_options(cfg)
    vae, vae_raw, vae_folder = load_vae(cfg.vae)                      # frozen; moved to the device below
    cfg = dataclasses.replace(cfg, size=cli.size_text(*image_size(cfg, vae, vae_raw)))   # what config.json records
    run = runs.start(cfg, "train_ldm.py", CHECKPOINT_KEYS, MAY_CHANGE_ON_RESUME)
    state, info, device, out = run.state, run.info, run.device, run.out
    check_processes(cfg, info, device)
    vae_sha256 = runs.weights_sha256(vae_folder)
    check_same_vae(cfg, vae_sha256, state)
    vae.to(device)

    # ---- data: the training split, labelled by user ----------------------------------------------------------------
    root = resolve_data(cfg, info.is_main, info.local_rank)
    vae_split = vae_run_split(cfg.vae)
    split, split_origin = resolve_split(root, cfg.split or vae_split, cfg.resume, dict(
        test_fraction=cfg.holdout_fraction, val_fraction=cfg.val_fraction, seed=cfg.seed, group_regex=cfg.group_regex))
    check_split_against_vae(split, vae_split, split_origin)
    if split_origin == "decided now" and info.is_main:
        print(f"note: --vae {cfg.vae} comes without a split.json, so a new split was decided; if that VAE was trained "
              "on this data folder, pass its run's split with --split, or its training files may be in the test part")
    options = dict(size=parse_size(cfg.size, "--size"), channels=vae.config.in_channels, resize=cfg.resize,
                   npy_scale=cfg.npy_scale, dynamic_range_db=cfg.dynamic_range, cache=True,
                   db_reference=cli.db_reference(cfg.db_reference), class_to_idx=state and state["class_to_idx"],
                   colormap=None if cfg.colormap == "none" else cfg.colormap)
    train_set = SpectrogramFolder(root, subset=split["train"], **options)             # never split["test"]
    class_to_idx, num_users = train_set.class_to_idx, len(train_set.class_to_idx)
    x_train, y_train = train_set.tensors()                               # (N, C, H, W), (N,)

    # ---- the latent scale: z0 = (E(x) - shift) * scale, decided here once for the whole run -----------------------
    shift = float(vae_raw.get("shift_factor") or 0.0)
    moments = encode_moments(vae, x_train, device) if cfg.cache_latents or cfg.scaling_factor == "auto" else None
    scale = latent_scale(cfg, vae_raw, state, moments, shift)
    moments = moments if cfg.cache_latents else None                     # else encoded per step
    vae.config = dataclasses.replace(vae.config, scaling_factor=scale)   # what the grids and pipeline/ decode with
    z_val, ids_val = held_out_latents(root, split, options, vae, shift, scale, device) if info.is_main else (None, None)

    # ---- the denoiser (UNet + user-ID embedder), its EMA, the optimizer -------------------------------------------
    model = build_denoiser(cfg, vae, x_train.shape[2:], class_to_idx, state).to(device)
    unet, embedder = model.unet, model.embedder
    ema, rank0_copy = place_denoiser(cfg, model, state, info)          # (with --fsdp: sharded, and rank 0's copy)
    fused = cfg.fused_adamw and torch.device(device).type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    scheduler, guard = make_scheduler(cfg.prediction), training.NonFiniteGuard(cfg.max_nonfinite)
    t = Trained(model, ema, opt, guard)
    load_optimizer(cfg, state, t)
    forward = DistributedDataParallel(model) if info.enabled and not cfg.fsdp else model
    if cfg.compile:   # static shapes: every step has the same batch, and a dynamic-shape recompile is avoided
        forward = torch.compile(forward, dynamic=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.mixed_precision and device.startswith("cuda"))

    # ---- outputs (only now: a bad input above leaves nothing behind) -----------------------------------------------
    log = runs.claim(run, class_to_idx, split, [
        f"data     {root}: {num_users} user(s), {sum(len(split[k]) for k in ('train', 'val', 'test'))} files; "
        f"split ({split_origin}) {len(split['train'])} train / {len(split['val'])} held-out loss / "
        f"{len(split['test'])} held-out test (never used)",
        f"model    UNet {sum(p.numel() for p in unet.parameters()):,} parameters + ID table "
        f"{sum(p.numel() for p in embedder.parameters()):,} on {vae.latent_channels}x"
        f"{'x'.join(str(side // vae.config.downsample_factor) for side in x_train.shape[2:])} latents of {cfg.vae} "
        f"(frozen, scaling factor {scale:.5f})" + (" with FSDP" if cfg.fsdp else "")], out / "pipeline")
    if log is None:                                                      # resumed a finished run
        return 0

    # ---- the loop ------------------------------------------------------------------------------------------------
    loop = runs.Loop(run, functools.partial(save_checkpoint, run, t, class_to_idx, scale, vae_sha256), "train_ldm",
                         CPU_RECIPE)
    losses, images_seen, timer, last_eval = [], 0, time.perf_counter(), None
    for step in loop:
        model.train()
        opt.zero_grad(set_to_none=True)
        idx = batch_indices(len(train_set), step, cfg.batch_size, cfg.seed, info)
        mean, std = (moments[0][idx], moments[1][idx]) if moments else encode_moments(vae, x_train[idx], device)
        generators = sample_generators(cfg.seed, idx, step)
        with autocast:
            loss = ldm_loss(forward, scheduler, embedder, mean, std, y_train[idx].to(device), generators, cfg, scale,
                            shift)
        loss.backward()
        if guard.check(loss.detach(), model.parameters(), info if cfg.fsdp else None):   # FSDP: shards differ
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            t.ema_updates += 1
            training.ema_update(ema, model, training.ema_decay(t.ema_updates, cfg.ema_decay, cfg.ema_warmup))
        losses.append(loss.detach())
        images_seen += cfg.batch_size * info.world_size

        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            mean_loss = training.all_reduce_mean(torch.stack(losses).double().mean().cpu().reshape(1), info)
            log.write({"step": done, "loss": float(mean_loss), "images_per_s": images_seen / max(
                time.perf_counter() - timer, 1e-9), "skipped_steps": guard.total})
            losses, images_seen, timer = [], 0, time.perf_counter()
        if split["val"] and (done % cfg.eval_every == 0 or done == cfg.steps):
            last_eval = {f"{name}_val_loss": held_out_loss(unsharded(m, cfg, info, rank0_copy), scheduler, z_val,
                                                           ids_val, cfg, device)
                         for name, m in (("ema", ema), ("raw", model))}
            log.write({"step": done, "eval": True, **last_eval})
            loop.write(f"step {done}: " + describe_eval(last_eval))
        if done % cfg.sample_every == 0 or done == cfg.steps:
            sample_grid(unsharded(ema, cfg, info, rank0_copy), vae, scheduler, cfg, num_users,
                        out / "samples" / f"step_{done:06d}.png")
            if info.is_main:
                logs.plot_curves(log.read(), ["loss"], out / "loss.png", title="train_ldm loss")
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            loop.checkpoint(done)

    # ---- save: a diffusers-layout pipeline of the exported weights --------------------------------------------------
    exported = unsharded(ema if cfg.export == "ema" else model, cfg, info, rank0_copy)
    if info.is_main:
        pipeline = Pipeline(exported, vae, scheduler, provenance(split, vae_split))
        files.replace_folder(out / "pipeline", pipeline.save_pretrained)     # kill-safe
        log.write({"step": cfg.steps, "exported": True})
        logs.plot_curves(log.read(), ["loss"], out / "loss.png", title="train_ldm loss")
        runs.report(run, guard, out / "pipeline", [f"  latent scaling factor {scale:.5f}"] + (
            [f"  {describe_eval(last_eval)}"] if last_eval is not None else []))
    return 0


def check_same_denoiser(cfg: TrainLDMConfig, unet, embedder, state: dict | None, channels: int) -> None:
    """A resumed checkpoint must hold this denoiser: the UNet's config and the ID embedder's."""
    if state is None:
        return
    expected, found = unet.config.to_diffusers(), state["unet_config"]
    if found.get("in_channels") != channels:
        raise ValueError(f"--resume {cfg.resume}: the checkpoint's UNet takes {found.get('in_channels')} latent "
                         f"channels, the VAE gives {channels}")
    differ = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
    if differ or state["embedder_config"] != embedder.config():
        raise ValueError(f"--resume {cfg.resume}: the checkpoint is for another model (different "
                         f"{differ or 'ID embedder'}); use the same --preset/--unet-*/--cond/--num-tokens/--vae")


def main(argv: list[str] | None = None) -> int:
    return runs.main(train, TrainLDMConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
