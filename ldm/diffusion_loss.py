"""The diffusion training loss: how a denoiser learns to undo the noise schedule of ldm.ddpm. (Its sampling-time
twin, the loop from noise to a sample, is ldm.guided_sampling.)

Papers: Ho, Jain, Abbeel 2020 (DDPM, the simplified loss, Eq. (14)); Hang et al. 2023 (Min-SNR weighting).
"""
import torch
import torch.nn.functional as F

from ldm.ddpm import DiffusionScheduler
from ldm.layers import randn_tensor


def diffusion_loss(model, scheduler: DiffusionScheduler, x0: torch.Tensor, cond=None, generator=None,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """The simplified training objective (Ho et al. 2020, Eq. (14)) for the scheduler's prediction type.

    Draws, in this order from `generator`: ε = randn(x0.shape), then t ~ U{0, ..., N-1} of shape (B,). With a list of
    B generators, image i draws its ε and then its t from generator i, so a batch split across processes draws what
    one process would (train_ldm.py under DDP). Forms
    x_t = add_noise(x0, ε, t) (Eq. (4)) and returns mean ||target - model(x_t, t, cond)||² (a 0-d float32 tensor), where
    target = ε (epsilon), v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x0 (v_prediction) or x0 (sample).
    min_snr_gamma: Min-SNR-γ weighting (Hang et al. 2023; γ = 5 in the paper), SNR_t = ᾱ_t / (1 - ᾱ_t). Each sample's
    loss is weighted so that it equals min(SNR_t, γ)·||x0 - x̂0||²: weight min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1)
    for v, min(SNR, γ) for x0. x0: (B, C, ...), e.g. VAE latents; model(x, t, cond) as in `sample`.
    """
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be a positive number (the paper uses 5), got {min_snr_gamma}")
    n = scheduler.config.num_train_timesteps
    noise = randn_tensor(x0.shape, generator, x0.device, x0.dtype)
    if isinstance(generator, (list, tuple)):   # one generator per image (randn_tensor checks the count)
        t = torch.cat([torch.randint(0, n, (1,), generator=g, device=g.device) for g in generator]).to(x0.device)
    else:
        draw_device = generator.device if isinstance(generator, torch.Generator) else x0.device
        t = torch.randint(0, n, (x0.shape[0],), generator=generator, device=draw_device).to(x0.device)  # (B,)
    noisy = scheduler.add_noise(x0, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:  # sample
        target = x0
    pred = model(noisy, t, cond)
    if pred.shape != target.shape:
        raise ValueError(f"model output must have shape {tuple(target.shape)} (learned-variance outputs are not "
                         f"supported by this loss), got {tuple(pred.shape)}")
    if min_snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    alpha_prod = scheduler.alphas_cumprod.to(x0.device)[t]  # (B,) float32
    snr = alpha_prod / (1 - alpha_prod)
    if kind == "epsilon":
        weight = (min_snr_gamma / snr).clamp(max=1.0)  # = min(SNR, γ)/SNR, and 1 (not 0/0) where SNR = 0
    elif kind == "v_prediction":
        weight = snr.clamp(max=min_snr_gamma) / (snr + 1)
    else:
        weight = snr.clamp(max=min_snr_gamma)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.dim())))
    return (weight * per_sample).mean()
