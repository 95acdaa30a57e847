"""The sampling loop: from noise to a sample with any callable model(x_t, t, cond) and any scheduler, from
ldm.ddpm (DDPM, DDIM) or ldm.samplers (DPM-Solver++, Euler, Euler ancestral), with classifier-free guidance.
(Its training-time twin, the loss, is ldm.diffusion_loss.)

Papers: Ho, Jain, Abbeel 2020 (DDPM); Ho & Salimans 2022 (classifier-free guidance).
"""
import torch
from tqdm.auto import tqdm

from ldm.cuda_graph import CUDAGraphModel
from ldm.ddpm import DDIMScheduler, DiffusionScheduler
from ldm.layers import randn_tensor


@torch.no_grad()
def sample(model, scheduler: DiffusionScheduler, shape, cond=None, uncond=None, guidance_scale: float = 1.0,
           num_steps: int = 50, generator=None, progress: bool = True, device=None, dtype=None,
           eta: float = 0.0, cuda_graph: bool = False) -> torch.Tensor:
    """Generate samples: draw x_T = init_noise_sigma · z, z ~ N(0, I) of `shape` (B, C, ...), then step through
    scheduler.timesteps, each step calling the model on scheduler.scale_model_input(x, t) (x itself for DDPM, DDIM and
    DPM-Solver++; x / sqrt(σ² + 1) for the Euler samplers, whose x_T has std σ_max), as diffusers pipelines do.

    model: any callable model(x, t, cond) -> prediction of scheduler.config.prediction_type shaped like x (2C channels
    for learned variance), with x: (B', C, ...) and t: (B',) timesteps (LongTensor; float32 for the Euler samplers,
    whose timesteps can be fractional). cond / uncond: conditioning for the model with batch B (e.g. user-ID
    embeddings and the null-ID embedding), or None for an unconditional model.
    Classifier-free guidance (Ho & Salimans 2022, Eq. (6) with w = guidance_scale - 1) when guidance_scale != 1:
        pred = pred(x, uncond) + guidance_scale · (pred(x, cond) - pred(x, uncond)),
    where both passes run as ONE model call on a batch of 2B ([uncond; cond], as diffusers pipelines order it).
    generator draws x_T and every step's noise (DDPM, DDIM with eta > 0, Euler ancestral); eta is DDIM's η (DDIM
    only); progress=False hides the tqdm bar.
    device / dtype default to the model's first parameter (CPU, float32 for a plain function). Returns x_0: shape.
    cuda_graph=True (CUDA only) replays every model call as one captured CUDA graph (ldm.cuda_graph): same numbers,
    much faster where the host cannot launch kernels as fast as the GPU runs them (small batches). The capture
    costs about three model calls; to pay it once for many sample() calls, pass model=CUDAGraphModel(model).
    """
    if guidance_scale != 1.0:
        if not (isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor)):
            raise ValueError("guidance_scale != 1 needs both cond and uncond tensors (uncond: the null condition)")
        if cond.shape != uncond.shape or cond.shape[0] != shape[0]:
            raise ValueError(f"cond and uncond must have equal shapes with batch {shape[0]}, "
                             f"got {tuple(cond.shape)} and {tuple(uncond.shape)}")
    if eta != 0.0 and not isinstance(scheduler, DDIMScheduler):
        raise ValueError(f"eta is DDIM's η; {type(scheduler).__name__} takes no eta (got {eta})")
    inner = model.model if isinstance(model, CUDAGraphModel) else model
    first_param = next(inner.parameters(), None) if isinstance(inner, torch.nn.Module) else None
    device = torch.device(device or (first_param.device if first_param is not None else "cpu"))
    dtype = dtype or (first_param.dtype if first_param is not None else torch.float32)
    step_kwargs = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
    if cuda_graph and not isinstance(model, CUDAGraphModel):
        if device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, got device {device}")
        model = CUDAGraphModel(model)
    batch, channels = shape[0], shape[1]

    scheduler.set_timesteps(num_steps, device=device)
    x = randn_tensor(shape, generator, device, dtype) * scheduler.init_noise_sigma  # x_T
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="sampling"):
        x_in = scheduler.scale_model_input(x, t)  # the model's input: x itself, or x / sqrt(σ² + 1) (Euler)
        if guidance_scale != 1.0:
            out = model(torch.cat([x_in, x_in]), t.expand(2 * batch), torch.cat([uncond, cond]))  # (2B, C or 2C, ...)
            out_uncond, out_cond = out[:batch, :channels], out[batch:, :channels]  # (B, C, ...) each
            guided = out_uncond + guidance_scale * (out_cond - out_uncond)
            out = torch.cat([guided, out[batch:, channels:]], dim=1)  # a learned variance is taken unguided from cond
        else:
            out = model(x_in, t.expand(batch), cond)
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs)  # x_t -> x_{t'}
    return x
