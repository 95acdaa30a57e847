"""Side-by-side benchmark of ldm against diffusers: the same models, weights and inputs, in one process.

    python scripts/bench.py                              # CPU, float32, the tiny configs
    python scripts/bench.py --device cuda --dtype bf16 --config sd --compile --out bench.json

For each row, the diffusers model is built first (seeded random weights), the ldm model loads its state dict with
strict=True, and both run the same inputs. After warm-up the two are timed interleaved, alternating which goes first,
so that drifting machine load hits both alike: CUDA events on a GPU, time.perf_counter on the CPU. Reported per row:

    ldm_ms / diffusers_ms   median over --repeats timed calls (and min/max as the spread)
    ratio                   median over repeats of the paired ratio ldm_ms[i] / diffusers_ms[i]  (< 1: ldm faster)
    ldm_tflops              FLOPs of one ldm call (torch.utils.flop_counter, matmuls/convs/attention only)
                            divided by ldm's median time
    *_peak_mb               CUDA only: torch.cuda.max_memory_allocated during one call minus the memory allocated
                            just before it (activations and workspace; weights, inputs and optimizer state that exist
                            before the call are not counted). None on the CPU (no per-call peak is measurable there).

Rows: VAE encode, VAE decode, VQ encode+decode, UNet forward at batch 1 and 8, a UNet training step (forward,
backward, AdamW) on 32x32x4 latents, a VAE training step on 256x256 images (L1 + KL, AdamW), DDIM sampling with
classifier-free guidance, and train_ldm.py's own step (denoiser_train_step: the UNet with its user-ID embedder, 8 users,
4 ID tokens to cross-attention and the ID as class label; noise added at random timesteps, epsilon MSE, backward,
gradient clipping at 1, AdamW, fused on CUDA as train_ldm.py runs it; the diffusers side is its UNet fed the same
tokens and labels). On CUDA without --compile two more rows time ldm's CUDA-graph path (ldm.cuda_graph) against
diffusers eager: the UNet forward at batch 8 and the sampling run. Inference rows run in --dtype; training rows keep float32 weights and run the forward under
torch.autocast(--dtype) (plain float32 when --dtype fp32). Sizes depend on --config and the device (SIZES below);
the tiny config shrinks every size so the whole run takes seconds on a CPU.

--ldm-path picks the ldm side: the plain model code (the default, the reference path) or the same models after
ldm.fast.optimize (fused q/k/v projections, in-place ops, channels-last pass-through). Run it once per path to
compare them; the README gives both.

This is a benchmark, not a test: it asserts nothing about speed. Every row records the largest relative difference
between the two sides' first outputs (max_rel_diff; training rows: the first loss), a check that both compute the
same thing, and flags a row whose difference exceeds AGREEMENT (per dtype) with a printed warning and a note.
"""
from __future__ import annotations

import copy
import dataclasses
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


from ldm import fast
from ldm.conditioning import ConditionedUNet, UserIDEmbedder
from ldm.cuda_graph import CUDAGraphModel
from ldm.ddpm import DDIMScheduler, DDPMScheduler
from ldm.files import write_json
from ldm.pipeline import SCHEDULE_KEYS
from ldm.samplers import DPMSolverMultistepScheduler
from ldm.guided_sampling import sample
from ldm.cli import check_writable, option, parse_config
from ldm.runs import resolve_device
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from ldm.vq import VQConfig, VQModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROW_NAMES = ("vae_encode", "vae_decode", "vq_encode_decode", "unet_forward_b1", "unet_forward_b8",
             "unet_train_step", "vae_train_step", "ddim_sampling", "denoiser_train_step", "unet_forward_b8_graph",
             "ddim_sampling_graph", "dpm20_sampling_graph")
# ldm's CUDA-graph path against diffusers eager
CUDA_ONLY_ROWS = ("unet_forward_b8_graph", "ddim_sampling_graph", "dpm20_sampling_graph")
# Stable Diffusion's DDIM settings (the scheduler_config.json of SD 1.5)
SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1)
# train_ldm.py's set-up for denoiser_train_step: its schedule (make_scheduler), the simulator's 8 people, its ID tokens
TRAIN_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       clip_sample=False, prediction_type="epsilon", steps_offset=1)
USERS, ID_TOKENS = 8, 4
# the largest max_rel_diff a row may show before it is flagged: float32 agrees to rounding; bf16/fp16 carry about
# 3 significant digits, and a sampling run compounds 50 steps of them
AGREEMENT = {"fp32": 1e-4, "bf16": 0.1, "fp16": 0.1}
# rows whose two sides compute different things on purpose (DPM-Solver++ 20 steps against DDIM 50 steps)
DIFFERENT_OUTPUTS = ("dpm20_sampling_graph",)


# ----------------------------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    """Model presets and input sizes for one --config. Image sizes are pixels, latent sizes latent pixels."""

    vae: str
    vq: str
    unet: str
    image: int            # VAE / VQ encode and decode: image side
    ae_batch: int         # ... batch
    latent: int           # UNet forward and sampling: latent side
    context_tokens: int   # S, the number of context tokens
    train_latent: int     # UNet training step: latent side (32: 256x256 images at f = 8)
    unet_train_batch: int
    vae_train_image: int  # VAE training step: image side (256, the spectrograms' size)
    vae_train_batch: int
    sample_batch: int     # images per sampling run (the UNet sees twice as many: guidance)
    denoiser_batch: int   # train_ldm.py's step (UNet + user-ID embedder, latents train_latent): batch


SIZES = {
    # every size small, so that a CPU runs all rows in seconds; the latents are still 16x16 / 32x32
    "tiny": Sizes("tiny", "tiny", "tiny", image=64, ae_batch=2, latent=16, context_tokens=8, train_latent=32,
                  unet_train_batch=4, vae_train_image=64, vae_train_batch=2, sample_batch=1, denoiser_batch=4),
    # the micro-Doppler presets: 256x256 one-channel spectrograms, 32x32x4 latents, one context token + class label
    "microdoppler": Sizes("microdoppler", "microdoppler", "microdoppler", image=256, ae_batch=8, latent=32,
                          context_tokens=1, train_latent=32, unet_train_batch=32, vae_train_image=256,
                          vae_train_batch=16, sample_batch=1, denoiser_batch=16),
    # Stable Diffusion 1.5 (VAE "sd", UNet "sd15", 77 CLIP tokens) at 512x512; the LDM VQ-f4 at 256x256
    "sd": Sizes("sd", "ldm_vq_f4", "sd15", image=512, ae_batch=8, latent=64, context_tokens=77, train_latent=32,
                unet_train_batch=32, vae_train_image=256, vae_train_batch=16, sample_batch=1, denoiser_batch=16),
}
# On a CPU the big configs use batch 1-2 (the GPU batches would take minutes per call)
CPU_BATCHES = dict(ae_batch=1, unet_train_batch=2, vae_train_batch=1, denoiser_batch=2)


def sizes_for(config: str, device: torch.device) -> Sizes:
    sizes = SIZES[config]
    if device.type == "cpu" and config != "tiny":
        sizes = dataclasses.replace(sizes, **CPU_BATCHES)
    return sizes


# ----------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device: torch.device) -> float:
    """Milliseconds of one call of fn: CUDA events around it on a GPU, wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_pair(ours, ref, device, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Warm both up, then time them interleaved, alternating which runs first."""
    for _ in range(warmup):
        ours()
        ref()
    sync(device)
    t_ours, t_ref = [], []
    for i in range(repeats):
        if i % 2 == 0:
            t_ours.append(time_once(ours, device))
            t_ref.append(time_once(ref, device))
        else:
            t_ref.append(time_once(ref, device))
            t_ours.append(time_once(ours, device))
    return t_ours, t_ref


def peak_mb(fn, device: torch.device) -> float | None:
    """CUDA: max_memory_allocated during one call minus memory_allocated before it, in MiB. CPU: None."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


# FlopCounterMode knows the CUDA attention kernels but not the CPU one; count that one with the same formulas.
_CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v),
}


def count_flops(fn) -> int:
    """FLOPs of one call of fn (matmuls, convolutions, attention; elementwise work is not counted).
    Compiled functions are counted running eagerly (the same FLOPs)."""
    with torch.compiler.set_stance("force_eager"), \
            FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def build_pair(ref_cls, ours_cls, ours_config, device, path: str, seed: int = 0):
    """A diffusers model with seeded random weights and the ldm model holding the same weights (strict load), on
    ldm's plain or fast path."""
    torch.manual_seed(seed)
    ref = ref_cls(**ours_config.to_diffusers())
    ours = ours_cls(ours_config)
    ours.load_state_dict(ref.state_dict(), strict=True)
    if path == "fast":
        fast.optimize(ours)
    return ours.to(device), ref.to(device)


def maybe_compile(fn, enabled: bool, notes: list, what: str, ours: bool):
    """torch.compile(fn, fullgraph=True) when enabled. ldm must compile without graph breaks (an error otherwise);
    diffusers falls back to fullgraph=False on a graph break, and the fallback is recorded in notes."""
    if not enabled:
        return fn
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    if ours:
        return compiled
    state = {"fn": compiled, "checked": False}

    def call(*args, **kwargs):
        if state["checked"]:
            return state["fn"](*args, **kwargs)
        try:
            out = state["fn"](*args, **kwargs)
        except Exception as e:   # dynamo raises Unsupported (and friends) on a graph break under fullgraph=True
            notes.append(f"diffusers {what}: fullgraph=True failed ({type(e).__name__}), compiled with fullgraph=False")
            state["fn"] = torch.compile(fn, dynamic=False)
            out = state["fn"](*args, **kwargs)
        state["checked"] = True
        return out

    return call


def to_memory_format(module: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    return module.to(memory_format=torch.channels_last) if channels_last else module


def cl(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


# ----------------------------------------------------------------------------------------------------------------
# Rows: each returns {name: (ours_fn, ref_fn, shape_text[, eager_fn])}; each fn returns a tensor to compare.
# eager_fn, for CUDA-graph rows, is the same computation without the graph (what the FLOP counter runs).
# ----------------------------------------------------------------------------------------------------------------


def autoencoder_rows(args, sizes, device, dtype, notes) -> dict:
    g = torch.Generator().manual_seed(1)
    rows = {}

    ours, ref = build_pair(RefAutoencoderKL, AutoencoderKL, VAEConfig.preset(sizes.vae), device, args.ldm_path)
    ours_tr, ref_tr = copy.deepcopy(ours), copy.deepcopy(ref)   # float32 copies for the training step
    ours_inf = to_memory_format(ours.eval().to(dtype), args.channels_last)
    ref_inf = to_memory_format(ref.eval().to(dtype), args.channels_last)
    c_in, f = ours.config.in_channels, ours.config.downsample_factor
    x = torch.rand(sizes.ae_batch, c_in, sizes.image, sizes.image, generator=g) * 2 - 1
    x = cl(x.to(device, dtype), args.channels_last)
    z = torch.randn(sizes.ae_batch, ours.config.latent_channels, sizes.image // f, sizes.image // f, generator=g)
    z = cl(z.to(device, dtype), args.channels_last)
    ours_enc = maybe_compile(lambda t: ours_inf.encode(t).mean, args.compile, notes, "vae encode", True)
    ref_enc = maybe_compile(lambda t: ref_inf.encode(t).latent_dist.mean, args.compile, notes, "vae encode", False)
    ours_dec = maybe_compile(ours_inf.decode, args.compile, notes, "vae decode", True)
    ref_dec = maybe_compile(lambda t: ref_inf.decode(t).sample, args.compile, notes, "vae decode", False)
    rows["vae_encode"] = (no_grad(ours_enc, x), no_grad(ref_enc, x), f"{tuple(x.shape)}")
    rows["vae_decode"] = (no_grad(ours_dec, z), no_grad(ref_dec, z), f"{tuple(z.shape)}")

    # VAE training step: encode, posterior sample, decode, L1 + 1e-6 KL, backward, AdamW
    ours_tr, ref_tr = to_memory_format(ours_tr, args.channels_last), to_memory_format(ref_tr, args.channels_last)
    xt = torch.rand(sizes.vae_train_batch, c_in, sizes.vae_train_image, sizes.vae_train_image, generator=g) * 2 - 1
    xt = cl(xt.to(device), args.channels_last)

    def ours_vae_loss(model):   # the same posterior noise on both sides, so the two losses can be compared
        post = model.encode(xt)
        rec = model.decode(post.sample(torch.Generator(device).manual_seed(0)))
        return F.l1_loss(rec.float(), xt) + 1e-6 * post.kl().float().mean()

    def ref_vae_loss(model):
        post = model.encode(xt).latent_dist
        rec = model.decode(post.sample(torch.Generator(device).manual_seed(0))).sample
        return F.l1_loss(rec.float(), xt) + 1e-6 * post.kl().float().mean()

    rows["vae_train_step"] = (train_step(ours_tr, ours_vae_loss, args, device, notes, True),
                              train_step(ref_tr, ref_vae_loss, args, device, notes, False), f"{tuple(xt.shape)}")

    vq_ours, vq_ref = build_pair(RefVQModel, VQModel, VQConfig.preset(sizes.vq), device, args.ldm_path)
    vq_ours = to_memory_format(vq_ours.eval().to(dtype), args.channels_last)
    vq_ref = to_memory_format(vq_ref.eval().to(dtype), args.channels_last)
    c_vq = vq_ours.config.in_channels
    xq = torch.rand(sizes.ae_batch, c_vq, sizes.image, sizes.image, generator=g) * 2 - 1
    xq = cl(xq.to(device, dtype), args.channels_last)
    ours_vq = maybe_compile(lambda t: vq_ours.decode(vq_ours.encode(t)), args.compile, notes, "vq", True)
    ref_vq = maybe_compile(lambda t: vq_ref.decode(vq_ref.encode(t).latents).sample, args.compile, notes, "vq", False)
    rows["vq_encode_decode"] = (no_grad(ours_vq, xq), no_grad(ref_vq, xq), f"{tuple(xq.shape)}")
    return rows


def unet_rows(args, sizes, device, dtype, notes) -> dict:
    g = torch.Generator().manual_seed(2)
    rows = {}
    ours, ref = build_pair(RefUNet, UNet2DConditionModel, UNetConfig.preset(sizes.unet), device, args.ldm_path)
    ours_tr, ref_tr = copy.deepcopy(ours), copy.deepcopy(ref)   # float32 copies for the training step
    cfg = ours.config
    ours_inf = to_memory_format(ours.eval().to(dtype), args.channels_last)
    ref_inf = to_memory_format(ref.eval().to(dtype), args.channels_last)
    ours_fwd = maybe_compile(ours_inf, args.compile, notes, "unet", True)
    ref_fwd = maybe_compile(ref_inf, args.compile, notes, "unet", False)

    def inputs(batch: int, side: int, float_dtype):
        x = torch.randn(batch, cfg.in_channels, side, side, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        ctx = torch.randn(batch, sizes.context_tokens, cfg.cross_attention_dim, generator=g)
        labels = torch.randint(0, cfg.num_class_embeds, (batch,), generator=g) if cfg.num_class_embeds else None
        return (cl(x.to(device, float_dtype), args.channels_last), t.to(device), ctx.to(device, float_dtype),
                None if labels is None else labels.to(device))

    for batch in (1, 8):
        x, t, ctx, labels = inputs(batch, sizes.latent, dtype)
        rows[f"unet_forward_b{batch}"] = (   # (inputs bound now, not looked up when called: no late binding)
            no_grad(ours_fwd, x, t, ctx, class_labels=labels),
            no_grad(lambda *a, **k: ref_fwd(*a, **k).sample, x, t, encoder_hidden_states=ctx, class_labels=labels),
            f"{tuple(x.shape)}, context {tuple(ctx.shape)}",
        )

    # UNet training step: epsilon-prediction MSE at random timesteps, backward, AdamW (float32 weights)
    ours_tr, ref_tr = to_memory_format(ours_tr, args.channels_last), to_memory_format(ref_tr, args.channels_last)
    xt, tt, ctxt, labelst = inputs(sizes.unet_train_batch, sizes.train_latent, torch.float32)
    noise = torch.randn(xt.shape, generator=g).to(device)
    rows["unet_train_step"] = (
        train_step(ours_tr, lambda m: F.mse_loss(m(xt, tt, ctxt, class_labels=labelst).float(), noise),
                   args, device, notes, True),
        train_step(ref_tr, lambda m: F.mse_loss(m(xt, tt, encoder_hidden_states=ctxt,
                                                  class_labels=labelst).sample.float(), noise),
                   args, device, notes, False),
        f"{tuple(xt.shape)}, context {tuple(ctxt.shape)}",
    )

    # DDIM sampling with classifier-free guidance (scale 7.5); both sides start from the same x_T
    b = sizes.sample_batch
    _, _, ctx_c, labels_c = inputs(b, sizes.latent, dtype)
    ctx_u = torch.zeros_like(ctx_c)
    shape = (b, cfg.in_channels, sizes.latent, sizes.latent)
    ours_sched, ref_sched = DDIMScheduler(**SD_SCHEDULER), RefDDIMScheduler(**SD_SCHEDULER)
    if labels_c is not None:   # class-conditional: guidance contrasts the labels with label 0, the context is fixed
        ctx_2b = torch.cat([ctx_c, ctx_c])
        labels_u = torch.zeros_like(labels_c)

        def ours_model(x, t, c):
            return ours_fwd(x, t, ctx_2b, class_labels=c)

        cond, uncond = labels_c, labels_u
        ref_kwargs = dict(encoder_hidden_states=ctx_2b, class_labels=torch.cat([labels_u, labels_c]))
    else:
        def ours_model(x, t, c):
            return ours_fwd(x, t, c)

        cond, uncond = ctx_c, ctx_u
        ref_kwargs = dict(encoder_hidden_states=torch.cat([ctx_u, ctx_c]))

    def ours_sample():
        torch.manual_seed(3)
        return sample(ours_model, ours_sched, shape, cond=cond, uncond=uncond, guidance_scale=7.5,
                      num_steps=args.steps, progress=False, device=device, dtype=dtype)

    @torch.no_grad()
    def ref_sample():   # the denoising loop of diffusers' StableDiffusionPipeline, without text encoder and VAE
        torch.manual_seed(3)
        ref_sched.set_timesteps(args.steps, device=device)
        x = torch.randn(shape, device=device, dtype=dtype) * ref_sched.init_noise_sigma
        for t in ref_sched.timesteps:
            inp = ref_sched.scale_model_input(torch.cat([x, x]), t)
            out = ref_fwd(inp, t, **ref_kwargs).sample
            out_u, out_c = out.chunk(2)
            out = out_u + 7.5 * (out_c - out_u)
            x = ref_sched.step(out, t, x).prev_sample
        return x

    rows["ddim_sampling"] = (ours_sample, ref_sample, f"{shape} x {args.steps} steps, guidance (UNet batch {2 * b})")

    if device.type == "cuda" and not args.compile:
        # ldm's CUDA-graph path (captured on the first call, which is untimed; replayed after) against diffusers
        # eager. The FLOPs are counted on the eager call: a replay launches no operators the counter could see.
        graphed_fwd = CUDAGraphModel(ours_fwd)
        x, t, ctx, labels = inputs(8, sizes.latent, dtype)
        rows["unet_forward_b8_graph"] = (
            no_grad(graphed_fwd, x, t, ctx, class_labels=labels),
            no_grad(lambda *a, **k: ref_fwd(*a, **k).sample, x, t, encoder_hidden_states=ctx, class_labels=labels),
            f"{tuple(x.shape)}, context {tuple(ctx.shape)}; ldm CUDA graph vs diffusers eager",
            no_grad(ours_fwd, x, t, ctx, class_labels=labels),
        )
        graphed_model = CUDAGraphModel(ours_model)

        def ours_sample_graph():
            torch.manual_seed(3)
            return sample(graphed_model, ours_sched, shape, cond=cond, uncond=uncond, guidance_scale=7.5,
                          num_steps=args.steps, progress=False, device=device, dtype=dtype, cuda_graph=True)

        rows["ddim_sampling_graph"] = (ours_sample_graph, ref_sample,
                                       f"{shape} x {args.steps} steps, guidance; ldm CUDA graph vs diffusers eager",
                                       ours_sample)
        # what a user generating many spectrograms would run: DPM-Solver++(2M), 20 steps, CUDA graph, against
        # diffusers' DDIM with --steps (50) eager. The images differ (another sampler): the ratio is the time saved.
        dpm = DPMSolverMultistepScheduler(**{key: getattr(ours_sched.config, key) for key in SCHEDULE_KEYS})

        def ours_dpm20_graph():
            torch.manual_seed(3)
            return sample(graphed_model, dpm, shape, cond=cond, uncond=uncond, guidance_scale=7.5, num_steps=20,
                          progress=False, device=device, dtype=dtype, cuda_graph=True)

        def ours_dpm20():   # the same, eager: FLOPs are counted on it
            torch.manual_seed(3)
            return sample(ours_model, dpm, shape, cond=cond, uncond=uncond, guidance_scale=7.5, num_steps=20,
                          progress=False, device=device, dtype=dtype)

        rows["dpm20_sampling_graph"] = (ours_dpm20_graph, ref_sample,
                                        f"{shape}: ldm DPM-Solver++ 20 steps + CUDA graph vs diffusers DDIM "
                                        f"{args.steps} steps eager, guidance (other images: max_rel_diff is moot)",
                                        ours_dpm20)
    return rows


class RefDenoiser(torch.nn.Module):
    """diffusers' UNet fed a user ID the way ldm.conditioning.ConditionedUNet feeds ours (route "both"): the ID's row
    of the token table as encoder_hidden_states, the ID itself as the class label."""

    def __init__(self, unet: RefUNet, table: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.embedding = torch.nn.Parameter(table.detach().clone())    # (U + 1, S, D), as UserIDEmbedder's

    def forward(self, x, t, ids):
        context = self.embedding[ids].to(x.dtype)                      # (B,) -> (B, S, D)
        return self.unet(x, t, encoder_hidden_states=context, class_labels=ids).sample


def denoiser_rows(args, sizes, device, dtype, notes) -> dict:
    """train_ldm.py's training step: its UNet (the --config preset with USERS + 1 class embeddings) and user-ID
    embedder, against diffusers' UNet with the same table, on the same noisy latents (each library's DDPM scheduler
    adds the same noise at the same timesteps, once, outside the timed step): epsilon MSE, backward, gradient
    clipping at 1.0 and AdamW (fused on CUDA), as train_ldm.py runs with its defaults. With --compile the denoiser and
    the loss are compiled, as train_ldm.py --compile compiles the denoiser. Left out: drawing the noise, timesteps and
    ID dropout (a few small CPU draws per image), adding the noise (one elementwise op) and the EMA update."""
    g = torch.Generator().manual_seed(4)
    config = dataclasses.replace(UNetConfig.preset(sizes.unet), num_class_embeds=USERS + 1)
    ours_unet, ref_unet = build_pair(RefUNet, UNet2DConditionModel, config, device, args.ldm_path)
    torch.manual_seed(1)
    embedder = UserIDEmbedder(USERS, config.cross_attention_dim, ID_TOKENS, "both").to(device)
    ours = to_memory_format(ConditionedUNet(ours_unet, embedder), args.channels_last)
    ref = to_memory_format(RefDenoiser(ref_unet, embedder.embedding), args.channels_last)
    b, side = sizes.denoiser_batch, sizes.train_latent
    z = cl(torch.randn(b, config.in_channels, side, side, generator=g).to(device), args.channels_last)
    noise = cl(torch.randn(z.shape, generator=g).to(device), args.channels_last)
    t = torch.randint(0, 1000, (b,), generator=g).to(device)
    ids = torch.randint(0, USERS + 1, (b,), generator=g).to(device)   # USERS is the null ID (guidance dropout)
    ours_noisy = DDPMScheduler(**TRAIN_SCHEDULER).add_noise(z, noise, t)
    ref_noisy = RefDDPMScheduler(**TRAIN_SCHEDULER).add_noise(z, noise, t)

    def ours_loss(model):
        return F.mse_loss(model(ours_noisy, t, ids).float(), noise)

    def ref_loss(model):
        return F.mse_loss(model(ref_noisy, t, ids).float(), noise)

    options = dict(grad_clip=1.0, fused=device.type == "cuda")
    return {"denoiser_train_step": (
        train_step(ours, ours_loss, args, device, notes, True, **options),
        train_step(ref, ref_loss, args, device, notes, False, **options),
        f"{tuple(z.shape)}, {USERS} users x {ID_TOKENS} ID tokens of {config.cross_attention_dim} + class label; "
        f"clip, AdamW{' fused' if options['fused'] else ''}",
    )}


def no_grad(fn, *args, **kwargs):
    """A no-argument function computing fn(*args, **kwargs) without autograd."""
    def call():
        with torch.no_grad():
            return fn(*args, **kwargs)
    return call


def train_step(model, loss_fn, args, device, notes, ours: bool, grad_clip: float = 0.0, fused: bool = False):
    """One optimisation step: loss_fn(model) under autocast (unless fp32), backward, gradient clipping to grad_clip
    (0: none), AdamW (fused: its one-kernel implementation). Returns the loss. With --compile, the forward and the
    loss are compiled together (the backward through AOTAutograd)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused or None)
    autocast_dtype = DTYPES[args.dtype]

    def forward_and_loss():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            return loss_fn(model)

    forward_and_loss = maybe_compile(forward_and_loss, args.compile, notes, f"{type(model).__name__} training", ours)

    def step():
        loss = forward_and_loss()
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def import_diffusers() -> None:
    """Import diffusers, the reference, only when a benchmark runs: --help and the option checks work without it
    (it is a test and benchmark dependency, not a runtime one)."""
    global diffusers, RefAutoencoderKL, RefDDIMScheduler, RefDDPMScheduler, RefUNet, RefVQModel
    try:
        import diffusers
    except ImportError:
        raise SystemExit("error: bench.py compares ldm with diffusers, which is not installed; install the test "
                         "dependencies (make setup, or pip install diffusers==0.42.1)") from None
    from diffusers import AutoencoderKL as RefAutoencoderKL
    from diffusers import DDIMScheduler as RefDDIMScheduler
    from diffusers import DDPMScheduler as RefDDPMScheduler
    from diffusers import UNet2DConditionModel as RefUNet
    from diffusers import VQModel as RefVQModel


def run(args) -> dict:
    import_diffusers()
    diffusers.utils.logging.set_verbosity_error()   # its "cast with from_pretrained instead" advice, once per model
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = sizes_for(args.config, device)
    notes: list[str] = []
    result = {"machine": machine(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
              "device": device.type, "dtype": args.dtype, "config": args.config, "ldm_path": args.ldm_path,
              "compile": args.compile,
              "channels_last": args.channels_last, "repeats": args.repeats, "warmup": args.warmup,
              "sampling_steps": args.steps, "timing": "CUDA events" if device.type == "cuda" else "perf_counter",
              "peak_memory": "CUDA max_memory_allocated during a call minus allocated before it"
                             if device.type == "cuda" else "n/a on CPU",
              "ratio": "median over repeats of paired ldm_ms/diffusers_ms", "rows": [], "notes": notes}
    wanted = [r for r in ROW_NAMES if not args.rows or r in args.rows]
    if device.type != "cuda" or args.compile:
        skipped = [r for r in wanted if r in CUDA_ONLY_ROWS]
        if skipped and args.rows:
            notes.append(f"{', '.join(skipped)}: CUDA-graph rows run only on CUDA without --compile")
        wanted = [r for r in wanted if r not in CUDA_ONLY_ROWS]
    groups = {autoencoder_rows: ("vae_encode", "vae_decode", "vq_encode_decode", "vae_train_step"),
              unet_rows: ("unet_forward_b1", "unet_forward_b8", "unet_train_step", "ddim_sampling", *CUDA_ONLY_ROWS),
              denoiser_rows: ("denoiser_train_step",)}
    for group, names in groups.items():
        if not set(names) & set(wanted):
            continue   # build only the models that some wanted row needs
        rows = group(args, sizes, device, dtype, notes)
        for name in ROW_NAMES:
            if name not in rows or name not in wanted:
                continue
            ours_fn, ref_fn, shape, *eager_fn = rows[name]   # eager_fn: the eager equivalent of a CUDA-graph row
            first_ours, first_ref = ours_fn(), ref_fn()
            diff = rel_diff(first_ours, first_ref)
            flops = count_flops(eager_fn[0] if eager_fn else ours_fn)
            t_ours, t_ref = time_pair(ours_fn, ref_fn, device, args.warmup, args.repeats)
            m_ours, m_ref = statistics.median(t_ours), statistics.median(t_ref)
            row = {
                "name": name, "shape": shape,
                "ldm_ms": m_ours, "diffusers_ms": m_ref,
                "ratio": statistics.median(a / b for a, b in zip(t_ours, t_ref)),
                "ldm_tflops": flops / (m_ours / 1e3) / 1e12,
                "ldm_peak_mb": peak_mb(ours_fn, device), "diffusers_peak_mb": peak_mb(ref_fn, device),
                "ldm_ms_min": min(t_ours), "ldm_ms_max": max(t_ours),
                "diffusers_ms_min": min(t_ref), "diffusers_ms_max": max(t_ref),
                "gflop": flops / 1e9, "max_rel_diff": diff,
            }
            result["rows"].append(row)
            print_row(row, header=len(result["rows"]) == 1)
            if name not in DIFFERENT_OUTPUTS and not diff <= AGREEMENT[args.dtype]:
                notes.append(f"{name}: ldm and diffusers differ by {diff:.2e} (relative), above {args.dtype}'s "
                             f"{AGREEMENT[args.dtype]:.0e}")
                print(f"warning: {notes[-1]}", flush=True)
            if args.out:   # rewritten after every row, so a run cut short still leaves the rows it finished
                write_json(result, args.out)
        del rows
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def print_row(row: dict, header: bool = False):
    if header:
        print(f"{'row':<20} {'ldm ms':>18} {'diffusers ms':>18} {'ratio':>6} {'TFLOP/s':>8} "
              f"{'ldm MB':>8} {'diff MB':>8}  shape", flush=True)

    def ms(key):
        return f"{row[key]:.2f} [{row[key + '_min']:.1f}-{row[key + '_max']:.1f}]"

    def mb(v):
        return "n/a" if v is None else f"{v:.0f}"

    print(f"{row['name']:<20} {ms('ldm_ms'):>18} {ms('diffusers_ms'):>18} {row['ratio']:>6.3f} "
          f"{row['ldm_tflops']:>8.3f} {mb(row['ldm_peak_mb']):>8} {mb(row['diffusers_peak_mb']):>8}  {row['shape']}",
          flush=True)


def markdown_table(result: dict) -> str:
    """The table for the README."""
    lines = ["| row | shape | ldm ms | diffusers ms | ratio | ldm TFLOP/s | ldm peak MB | diffusers peak MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        mb = ["n/a" if v is None else f"{v:.0f}" for v in (r["ldm_peak_mb"], r["diffusers_peak_mb"])]
        lines.append(f"| {r['name']} | {r['shape']} | {r['ldm_ms']:.2f} | {r['diffusers_ms']:.2f} | "
                     f"{r['ratio']:.3f} | {r['ldm_tflops']:.3f} | {mb[0]} | {mb[1]} |")
    return "\n".join(lines)


@dataclass
class BenchConfig:
    device: str = option("cpu", "where both models run", choices=["cpu", "cuda"])
    dtype: str = option("fp32", "inference rows: weights and inputs in this dtype; training rows: float32 weights "
                        "under torch.autocast(this dtype)", choices=list(DTYPES))
    config: str = option("tiny", "model presets and sizes: tiny (seconds on a CPU), microdoppler (the project's "
                         "256x256 spectrogram models), sd (Stable Diffusion 1.5 at 512x512); CPU runs use batch 1-2 "
                         "for the last two", choices=list(SIZES))
    ldm_path: str = option("plain", "which ldm runs: plain (the model code as written) or fast (after "
                           "ldm.fast.optimize: fused q/k/v projections, in-place ops, channels-last pass-through)",
                           choices=["plain", "fast"])
    compile: bool = option(False, "torch.compile both sides (ldm with fullgraph=True; diffusers too, falling back to "
                           "fullgraph=False on a graph break, recorded in the JSON notes)")
    channels_last: bool = option(False, "both sides: models and 4-d inputs in torch.channels_last memory format")
    repeats: int = option(5, "timed calls per side and row (interleaved)", at_least=1)
    warmup: int = option(1, "untimed calls per side and row before timing", at_least=0)
    steps: int = option(50, "DDIM steps in the sampling row (fewer for quick CPU runs)", at_least=1)
    threads: int = option(0, "torch.set_num_threads (0: leave torch's default); 1 gives the steadiest CPU numbers on a "
                          "machine shared with other jobs", at_least=0)
    rows: str = option("all", f"a comma list of rows to run, or all: {', '.join(ROW_NAMES)}")
    out: str = option("bench.json", "where the JSON results go ('' for none); rewritten after every row")
    markdown: bool = option(False, "also print the table as Markdown (for the README)")


def parse_args(argv=None) -> BenchConfig:
    """The options, checked before any model is built: ranges, the rows, the device, a writable --out."""
    args = parse_config(BenchConfig, argv, __doc__.split("\n\n")[0])
    args.rows = None if args.rows == "all" else [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(args.rows or []) - set(ROW_NAMES))
    if unknown or args.rows == []:
        raise SystemExit(f"error: --rows {','.join(unknown) or '(empty)'}: not a row; expected a comma list of "
                         f"{', '.join(ROW_NAMES)}, or all")
    try:
        resolve_device(args.device)
        if args.out:
            check_writable(Path(args.out).resolve().parent, flag="--out")
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    for note in result["notes"]:
        print("note:", note)
    if args.markdown:
        print()
        print(f"{result['machine']}; torch {result['torch']}, diffusers {result['diffusers']}; {args.config}, "
              f"ldm {args.ldm_path} path, {args.dtype}{', compiled' if args.compile else ''}{', channels-last' if args.channels_last else ''}; "
              f"median of {args.repeats}")
        print(markdown_table(result))
    if args.out:
        write_json(result, args.out)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
