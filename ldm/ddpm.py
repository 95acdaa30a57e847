"""Noise schedules and samplers: the forward process q(x_t | x_0) and the DDPM and DDIM reverse steps. The sampling
loop with classifier-free guidance is ldm/guided_sampling.py, the training loss ldm/diffusion_loss.py.

Papers cited by equation number below:
    Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM)
    Song, Meng, Ermon 2021, "Denoising Diffusion Implicit Models" (DDIM; its alpha_t is DDPM's alpha-bar_t)
    Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" (cosine betas, learned variance)
    Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models" (v-prediction)
    Saharia et al. 2022, "Imagen" (dynamic thresholding)
    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed" (zero terminal SNR, spacings)
    Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"; Hang et al. 2023, "Min-SNR Weighting Strategy"

Index convention. N = num_train_timesteps training steps are indexed t = 0 .. N-1 (0-based, as in diffusers), and
alphas_cumprod[t] = prod_{s <= t} (1 - betas[s]) is the papers' ᾱ_{t+1}: our x_t is the papers' x_{t+1}. Stepping from
t with "previous timestep" -1 produces the clean sample x_0. `timesteps` run from noisy to clean (descending).

Calling convention. DDPMScheduler and DDIMScheduler take diffusers' keyword names and defaults and reproduce its float32
arithmetic and random draws exactly, with one change: step() returns the previous sample as a Tensor.
    diffusers:  x = scheduler.step(noise_pred, t, x, generator=g).prev_sample
    ldm:        x = scheduler.step(noise_pred, t, x, generator=g)
Schedulers are plain Python objects holding tensors (no nn.Module, no state_dict); their configuration round-trips
through diffusers' scheduler_config.json (save_pretrained / from_pretrained / from_diffusers / to_diffusers).
"""
import inspect
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ldm.io import DIFFUSERS_VERSION, SCHEDULER_CONFIG_NAME
from ldm.files import read_json, write_json
from ldm.layers import randn_tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
MAX_BETA = 0.999  # Nichol & Dhariwal 2021, Sec. 3.2: betas from an ᾱ curve are capped below 1 to avoid singularities
VARIANCE_FLOOR = 1e-20  # DDPM clamps the posterior variance here so that its log stays finite


# ---------------------------------------------------------------------------------------------------------------------
# Beta schedules: betas[t] for t = 0 .. N-1, float32, shape (N,)
# ---------------------------------------------------------------------------------------------------------------------

def _betas_from_alpha_bar(num_train_timesteps: int, alpha_bar) -> torch.Tensor:
    """betas[i] = min(1 - ᾱ((i+1)/N) / ᾱ(i/N), 0.999) for a continuous ᾱ(τ), τ in [0, 1]; float64, then float32."""
    n = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), MAX_BETA) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def _cosine_alpha_bar(tau: float) -> float:
    """Nichol & Dhariwal 2021, Eq. (17): ᾱ(τ) ∝ cos²((τ + s)/(1 + s) · π/2), offset s = 0.008 (1 + s written 1.008)."""
    return math.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(tau: float) -> float:
    """diffusers' "laplace" curve: log-SNR λ(τ) = -½·sign(½ - τ)·log(1 - 2|½ - τ| + 1e-6); ᾱ = sqrt(SNR / (1 + SNR))."""
    log_snr = -0.5 * math.copysign(1, 0.5 - tau) * math.log(1 - 2 * math.fabs(0.5 - tau) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(ᾱ_t) so that ᾱ_{N-1} = 0 (zero SNR: pure noise at the last
    step) while ᾱ_0 is unchanged. betas: (N,) float32 -> (N,) float32, with betas[-1] = 1. Pair it with v_prediction
    (epsilon cannot recover x_0 from pure noise) and "trailing" spacing (so sampling starts at t = N-1)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last  # the last step now has ᾱ = 0 ...
    alphas_bar_sqrt *= first / (first - last)  # ... and the first one its old value
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])  # undo the cumulative product
    return 1 - alphas


def make_betas(beta_schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 0.0001,
               beta_end: float = 0.02, trained_betas=None, rescale_betas_zero_snr: bool = False) -> torch.Tensor:
    """The variance schedule β_t, t = 0 .. N-1, as a float32 (N,) tensor, computed exactly as diffusers does.

    linear:            β evenly spaced from beta_start to beta_end (Ho et al. 2020, Sec. 4: 1e-4 .. 0.02, N = 1000).
    scaled_linear:     sqrt(β) evenly spaced, then squared. This is what the CompVis LDM / Stable Diffusion code calls
                       "linear" (its make_beta_schedule("linear")); SD uses beta_start=0.00085, beta_end=0.012.
    squaredcos_cap_v2: the cosine schedule of Nichol & Dhariwal 2021, Eq. (17) (beta_start/beta_end unused).
    sigmoid:           GeoDiff's beta_start + (beta_end - beta_start) · sigmoid(linspace(-6, 6, N)).
    laplace:           diffusers' Laplace log-SNR curve (beta_start/beta_end unused).
    trained_betas:     a user-given sequence of N betas; overrides beta_schedule.
    rescale_betas_zero_snr: then apply rescale_zero_terminal_snr.
    """
    n = num_train_timesteps
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float32).clone()
        if betas.shape != (n,):
            raise ValueError(f"trained_betas must hold num_train_timesteps={n} values, got shape {tuple(betas.shape)}")
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = _betas_from_alpha_bar(n, _cosine_alpha_bar)
    elif beta_schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, n, dtype=torch.float32)) * (beta_end - beta_start) + beta_start
    elif beta_schedule == "laplace":
        betas = _betas_from_alpha_bar(n, _laplace_alpha_bar)
    else:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES} (or trained_betas), got {beta_schedule!r}")
    return rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas


# ---------------------------------------------------------------------------------------------------------------------
# What DDPM and DDIM share: the schedule, the forward process, the timestep grid, x̂_0 clipping and the config file
# ---------------------------------------------------------------------------------------------------------------------

class DiffusionScheduler:
    """Base of DDPMScheduler and DDIMScheduler (see those for the keyword arguments).

    Attributes: betas, alphas = 1 - betas, alphas_cumprod = ᾱ (all float32 (N,)), timesteps (LongTensor, descending),
    num_inference_steps (None until set_timesteps), config (the constructor arguments, as `scheduler.config.name`).
    """
    order = 1  # model evaluations per step (diffusers' attribute)
    init_noise_sigma = 1.0  # sampling starts from x_T ~ N(0, I)
    _FIXES = ()  # our keyword arguments that diffusers does not have (options that correct a diffusers defect)
    _NOT_APPLICABLE = ()  # keys other diffusers schedulers write that do not change this scheduler's computation

    def __init__(self, config: dict):
        self.config = SimpleNamespace(**config)
        c = self.config
        if c.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {c.prediction_type!r}")
        if c.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {c.timestep_spacing!r}")
        if not isinstance(c.num_train_timesteps, int) or c.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {c.num_train_timesteps!r}")
        self.betas = make_betas(c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end, c.trained_betas,
                                c.rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.num_inference_steps = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(c.num_train_timesteps - 1, -1, -1, dtype=torch.long)  # before set_timesteps

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self.config).items())})"

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity (DDPM/DDIM do not rescale the model input); kept so diffusers-style loops run unchanged."""
        return sample

    # ---- the forward process q(x_t | x_0) -----------------------------------------------------------------------

    def _sqrt_alphas(self, timesteps, like: torch.Tensor):
        """sqrt(ᾱ_t) and sqrt(1 - ᾱ_t) for a scalar or (B,) `timesteps`, shaped (B, 1, ..., 1) to broadcast over
        `like`. ᾱ is cast to like.dtype *before* the square root, as diffusers does."""
        timesteps = torch.as_tensor(timesteps, device=like.device)
        if timesteps.is_floating_point() or timesteps.is_complex():
            raise ValueError(f"timesteps must hold integers, got dtype {timesteps.dtype}")
        if timesteps.numel() not in (1, like.shape[0]):
            raise ValueError(f"timesteps must be a scalar or hold one timestep per batch element ({like.shape[0]}), "
                             f"got shape {tuple(timesteps.shape)}")
        n = self.config.num_train_timesteps
        if timesteps.min() < 0 or timesteps.max() >= n:
            raise ValueError(f"timesteps must lie in [0, {n - 1}] (num_train_timesteps={n}), got {timesteps.tolist()}")
        alphas_cumprod = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        broadcast = (-1,) + (1,) * (like.dim() - 1)
        sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten().reshape(broadcast)
        sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten().reshape(broadcast)
        return sqrt_alpha_prod, sqrt_one_minus_alpha_prod

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, a sample of q(x_t | x_0) (Ho et al. 2020, Eq. (4)).
        original_samples x_0 and noise ε: (B, ...) of equal shape; timesteps: int, or (B,) integers in [0, N-1]."""
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise must have the shape of original_samples {tuple(original_samples.shape)}, "
                             f"got {tuple(noise.shape)}")
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._sqrt_alphas(timesteps, original_samples)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The v-prediction target v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (Salimans & Ho 2022, Sec. 4).
        sample is the clean x_0 (as in diffusers), noise ε of the same shape, timesteps as in add_noise."""
        if noise.shape != sample.shape:
            raise ValueError(f"noise must have the shape of sample {tuple(sample.shape)}, got {tuple(noise.shape)}")
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = self._sqrt_alphas(timesteps, sample)
        return sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample

    # ---- the sampling grid ---------------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None) -> None:
        """Choose the S timesteps that sampling visits, written to self.timesteps (LongTensor, descending, on `device`).

        Spacings (Lin et al. 2024, Table 2), N = num_train_timesteps, S = num_inference_steps:
            leading:  k · (N // S) + steps_offset for k = S-1 .. 0  (SD: 10 steps -> 901, 801, ..., 1)
            trailing: round(N - k · N/S) - 1 for k = 0 .. S-1       (10 steps -> 999, 899, ..., 99)
            linspace: round(linspace(0, N-1, S)), reversed           (10 steps -> 999, 888, ..., 0)
        Or pass `timesteps`, a custom strictly descending list in [0, N-1] (then not num_inference_steps).
        """
        n = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps needs exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            grid = np.array([int(t) for t in timesteps], dtype=np.int64)
            if grid.size == 0 or np.any(np.diff(grid) >= 0):
                raise ValueError(f"timesteps must be a non-empty, strictly descending list, got {grid.tolist()}")
            self.custom_timesteps = True
        else:
            s = num_inference_steps
            if not isinstance(s, (int, np.integer)) or not 1 <= s <= n:
                raise ValueError(f"num_inference_steps must be an int in [1, num_train_timesteps={n}], got {s!r}")
            if self.config.timestep_spacing == "linspace":
                grid = np.linspace(0, n - 1, s).round()[::-1].copy().astype(np.int64)
            elif self.config.timestep_spacing == "leading":
                grid = (np.arange(0, s) * (n // s)).round()[::-1].copy().astype(np.int64) + self.config.steps_offset
            else:  # trailing; np.arange with a float step, exactly as diffusers does
                grid = np.round(np.arange(n, 0, -n / s)).astype(np.int64) - 1
            self.custom_timesteps = False
        if grid.min() < 0 or grid.max() >= n:
            # e.g. leading with steps_offset=1 and S = N gives timestep N; trailing with S = 61 of N = 1000 gives an
            # extra timestep -1 (float arange); diffusers would index alphas_cumprod out of range or from the end.
            raise ValueError(f"timesteps must lie in [0, {n - 1}] (num_train_timesteps={n}); this setting gives "
                             f"{grid.tolist()[:3]} ... {grid.tolist()[-3:]}")
        self.num_inference_steps = len(grid)
        self.timesteps = torch.from_numpy(grid).to(device)

    def _check_timestep(self, timestep) -> int:
        """The timestep of a step() call as a Python int in [0, N-1] (accepts an int or a 1-element tensor)."""
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single timestep, got shape {tuple(timestep.shape)}")
            timestep = timestep.item()
        n = self.config.num_train_timesteps
        if not 0 <= timestep < n:
            raise ValueError(f"timestep must lie in [0, {n - 1}] (num_train_timesteps={n}), got {timestep}")
        return int(timestep)

    def _next_in_schedule(self, t: int) -> int:
        """The entry of self.timesteps after t, or -1 (meaning "x_0") after the last one."""
        matches = (self.timesteps == t).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {t} is not one of scheduler.timesteps ({self.timesteps.tolist()[:5]} ...)")
        index = int(matches[0, 0]) + 1
        return int(self.timesteps[index]) if index < len(self.timesteps) else -1

    def _check_model_output(self, model_output: torch.Tensor, sample: torch.Tensor, learned_variance: bool = False):
        expected = tuple(sample.shape)
        allowed = [expected] + ([(expected[0], 2 * expected[1], *expected[2:])] if learned_variance else [])
        if tuple(model_output.shape) not in allowed:
            raise ValueError(f"model_output must have shape {' or '.join(map(str, allowed))} (sample is {expected}), "
                             f"got {tuple(model_output.shape)}")

    def _clip_or_threshold(self, pred_original_sample: torch.Tensor) -> torch.Tensor:
        """Keep x̂_0 in range: dynamic thresholding if `thresholding`, else clamp to ±clip_sample_range (`clip_sample`).

        Dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per sample, s = the dynamic_thresholding_ratio quantile of
        |x̂_0|, clamped to [1, sample_max_value]; then x̂_0 <- clamp(x̂_0, -s, s) / s (computed in float32 or higher).
        """
        c = self.config
        if c.thresholding:
            dtype, shape = pred_original_sample.dtype, pred_original_sample.shape
            flat = pred_original_sample.reshape(shape[0], -1)  # (B, C*H*W)
            if dtype not in (torch.float32, torch.float64):
                flat = flat.float()
            s = torch.quantile(flat.abs(), c.dynamic_thresholding_ratio, dim=1)
            s = torch.clamp(s, min=1, max=c.sample_max_value).unsqueeze(1)  # (B, 1)
            return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)
        if c.clip_sample:
            return pred_original_sample.clamp(-c.clip_sample_range, c.clip_sample_range)
        return pred_original_sample

    # ---- configuration files --------------------------------------------------------------------------------------

    @classmethod
    def from_diffusers(cls, mapping) -> "DiffusionScheduler":
        """Build from a diffusers scheduler config: a scheduler_config.json dict or a diffusers scheduler's `.config`.
        Keys starting with "_" (_class_name, _diffusers_version, ...) are informational and ignored, and so are keys
        that sibling schedulers write but that do not affect this one (e.g. PNDM's skip_prk_steps in SD's folder).
        Any other unknown key raises ValueError naming it."""
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = [k for k in mapping if k not in accepted and not k.startswith("_") and k not in cls._NOT_APPLICABLE]
        if unknown:
            raise ValueError(f"{cls.__name__}.from_diffusers: unsupported config key(s) {unknown}; "
                             f"expected a subset of {sorted(accepted)}")
        return cls(**{k: v for k, v in mapping.items() if k in accepted})

    def to_diffusers(self) -> dict:
        """The diffusers config dict (what scheduler_config.json holds), with _class_name and _diffusers_version.
        Our defect-fixing options appear only when switched on; diffusers ignores them with a warning (and then
        computes its own, uncorrected behaviour)."""
        config = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_VERSION}
        for key, value in vars(self.config).items():
            if key in self._FIXES and not value:
                continue
            if key == "trained_betas" and value is not None:
                value = torch.as_tensor(value, dtype=torch.float32).tolist()  # float32 values survive as floats
            config[key] = value
        return config

    def save_pretrained(self, path) -> None:
        """Write `path`/scheduler_config.json (creating the folder), loadable by diffusers' from_pretrained."""
        write_json(self.to_diffusers(), Path(path) / SCHEDULER_CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, path, subfolder: str | None = None) -> "DiffusionScheduler":
        """Read a diffusers scheduler folder (or its scheduler_config.json); subfolder e.g. "scheduler"."""
        path = Path(path) / subfolder if subfolder else Path(path)
        return cls.from_diffusers(read_json(path / SCHEDULER_CONFIG_NAME if path.is_dir() else path))


# ---------------------------------------------------------------------------------------------------------------------
# DDPM: ancestral sampling from the posterior q(x_{t-1} | x_t, x̂_0)
# ---------------------------------------------------------------------------------------------------------------------

class DDPMScheduler(DiffusionScheduler):
    """The DDPM sampler (Ho et al. 2020, Algorithm 2), with diffusers' keyword names and defaults.

    Note: the defaults are diffusers' (linear 1e-4 .. 0.02, clip_sample=True), not Stable Diffusion's (scaled_linear
    0.00085 .. 0.012, clip_sample=False, steps_offset=1). variance_type picks σ_t² of the reverse step:
    fixed_small β̃_t (Eq. (7)), fixed_large β_t (Sec. 3.2), *_log the same through exp(½ log), learned (the model's
    second C channels are σ²) or learned_range (Nichol & Dhariwal 2021, Eq. (15)).
    fix_fixed_large_log: diffusers' fixed_large_log takes the square root of log β_t and gives NaN (matched by default);
    True uses the intended σ_t = exp(½ log β_t).
    """
    _FIXES = ("fix_fixed_large_log",)
    _NOT_APPLICABLE = ("set_alpha_to_one", "skip_prk_steps")  # DDIM's / PNDM's keys

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, fix_fixed_large_log: bool = False):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})  # the arguments
        self.one = torch.tensor(1.0)  # ᾱ "before" the first step, used when stepping to x_0

    def previous_timestep(self, timestep) -> int:
        """The timestep step(timestep) moves to: the next entry of self.timesteps once set_timesteps has been called
        (-1, i.e. x_0, after the last one), otherwise timestep - 1."""
        t = self._check_timestep(timestep)
        return self._next_in_schedule(t) if self.num_inference_steps is not None else t - 1

    def _noise_std(self, alpha_prod_t, alpha_prod_t_prev, predicted_variance):
        """σ_t of the reverse step for the configured variance_type (see the class docstring)."""
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev  # β_t of this (possibly strided) step
        variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t  # posterior variance β̃_t, Eq. (7)
        variance = torch.clamp(variance, min=VARIANCE_FLOOR)
        kind = self.config.variance_type
        if kind == "fixed_small":
            return variance**0.5
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if kind == "fixed_large":
            return current_beta_t**0.5
        if kind == "fixed_large_log":
            if self.config.fix_fixed_large_log:
                return torch.exp(0.5 * torch.log(current_beta_t))
            # diffusers defect, kept for parity: its _get_variance returns log β_t (< 0) and step() takes ** 0.5 of
            # it, so every step with t > 0 is NaN. fix_fixed_large_log=True computes the intended exp(½ log β_t).
            return torch.log(current_beta_t) ** 0.5
        if kind == "learned":
            return predicted_variance**0.5  # the model predicts σ² itself
        # learned_range: the model's v in [-1, 1] interpolates log σ² between log β̃_t and log β_t, Eq. (15)
        frac = (predicted_variance + 1) / 2
        log_variance = frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
        return torch.exp(0.5 * log_variance)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """One ancestral step x_t -> x_{t'} with t' = previous_timestep(t) (t - 1 in the paper's unstrided chain).

        model_output: (B, C, ...) the model's prediction at x_t (ε, v or x_0 per prediction_type), or (B, 2C, ...) for
        variance_type learned/learned_range, whose second half is the variance output. timestep t: int or 1-element
        tensor, an entry of self.timesteps. sample: x_t, (B, C, ...). generator: draws the noise z, only when t > 0.
        Returns x_{t'}, (B, C, ...). (diffusers returns an output object; use its .prev_sample to compare.)
        """
        learned = self.config.variance_type in ("learned", "learned_range")
        self._check_model_output(model_output, sample, learned_variance=learned)
        t = self._check_timestep(timestep)
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] == 2 * sample.shape[1]:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        elif learned:
            raise ValueError(f"variance_type={self.config.variance_type!r} needs model_output with 2C channels "
                             f"(prediction, variance), got {model_output.shape[1]} for sample's {sample.shape[1]}")

        # 1. ᾱ_t, ᾱ_{t'} and the step's own α_t = ᾱ_t / ᾱ_{t'}, β_t = 1 - α_t (not betas[t]: a strided step spans
        #    several training steps).
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        # 2. Predicted x̂_0. epsilon: Eq. (15), x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t); v: x̂_0 = sqrt(ᾱ_t) x_t
        #    - sqrt(1 - ᾱ_t) v (Salimans & Ho 2022); sample: the model predicts x̂_0 directly.
        if self.config.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        elif self.config.prediction_type == "sample":
            pred_original_sample = model_output
        else:  # v_prediction
            pred_original_sample = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output

        # 3. Clip or threshold x̂_0.
        pred_original_sample = self._clip_or_threshold(pred_original_sample)

        # 4. Posterior mean, Eq. (7):
        #    μ̃_t(x_t, x̂_0) = sqrt(ᾱ_{t'}) β_t / (1 - ᾱ_t) · x̂_0 + sqrt(α_t) (1 - ᾱ_{t'}) / (1 - ᾱ_t) · x_t
        pred_original_sample_coeff = (alpha_prod_t_prev**0.5 * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
        pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        # 5. x_{t'} = μ̃_t + σ_t z, z ~ N(0, I) (Algorithm 2, line 4). No noise, and no random draw, when t = 0 (so
        #    with steps_offset=1 the last step, from t = 1, still draws: σ ≈ 0 for fixed_small, not for fixed_large).
        if t > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            std = self._noise_std(alpha_prod_t, alpha_prod_t_prev, predicted_variance)
            pred_prev_sample = pred_prev_sample + std * noise
        return pred_prev_sample


# ---------------------------------------------------------------------------------------------------------------------
# DDIM: the non-Markovian sampler with η-controlled noise
# ---------------------------------------------------------------------------------------------------------------------

class DDIMScheduler(DiffusionScheduler):
    """The DDIM sampler (Song et al. 2021, Eq. (12)), with diffusers' keyword names and defaults.

    set_alpha_to_one: at the last step ᾱ_{t'} is 1 (True, diffusers' default) or ᾱ_0 (False, as Stable Diffusion).
    prev_timestep_from_schedule: diffusers steps from t to t - N // S whatever the spacing (matched by default); True
    steps to the next entry of `timesteps` instead (and then custom timestep lists are allowed).
    beta_schedule may also be "sigmoid" or "laplace", which diffusers' DDIMScheduler does not accept.
    """
    _FIXES = ("prev_timestep_from_schedule",)
    _NOT_APPLICABLE = ("variance_type", "skip_prk_steps")  # DDPM's / PNDM's keys

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", rescale_betas_zero_snr: bool = False,
                 prev_timestep_from_schedule: bool = False):
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})  # the arguments
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None) -> None:
        """As DiffusionScheduler.set_timesteps; custom `timesteps` need prev_timestep_from_schedule=True."""
        if timesteps is not None and not self.config.prev_timestep_from_schedule:
            raise ValueError("timesteps: custom lists need DDIMScheduler(prev_timestep_from_schedule=True); diffusers' "
                             "DDIM steps t -> t - N // S and cannot follow an arbitrary list")
        super().set_timesteps(num_inference_steps, device, timesteps)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise=None) -> torch.Tensor:
        """One DDIM step x_t -> x_{t'}.

        model_output: (B, C, ...) the prediction at x_t (ε, v or x_0 per prediction_type). timestep t: int or 1-element
        tensor in [0, N-1]. sample: x_t, (B, C, ...). eta: η >= 0, 0 = deterministic DDIM, 1 = DDPM-like noise.
        use_clipped_model_output: recompute ε̂ from the clipped x̂_0. generator / variance_noise: the source of z
        (one of them; drawn only when eta > 0). Returns x_{t'}, (B, C, ...) (diffusers: its .prev_sample).
        """
        if self.num_inference_steps is None:
            raise ValueError("DDIMScheduler.step needs set_timesteps(num_inference_steps) to be called first")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self._check_model_output(model_output, sample)
        t = self._check_timestep(timestep)

        # 1. The previous timestep t'.
        if self.config.prev_timestep_from_schedule:
            prev_t = self._next_in_schedule(t)
        else:
            # diffusers defect, kept for parity: t' = t - N // S for every spacing. That is the next entry of
            # `timesteps` for "leading" (and "trailing" when S divides N), but not for "linspace" (10 steps: 999 -> 899
            # while the next timestep is 888), so each step lands on a noise level the next one does not start from.
            # prev_timestep_from_schedule=True uses the next entry of `timesteps`.
            prev_t = t - self.config.num_train_timesteps // self.num_inference_steps

        # 2. ᾱ_t and ᾱ_{t'} (past the end: final_alpha_cumprod).
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t

        # 3. Predicted x̂_0 = f_θ(x_t), Eq. (9), and the noise ε̂ it implies; for v see Salimans & Ho 2022.
        if self.config.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif self.config.prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original_sample) / beta_prod_t**0.5
        else:  # v_prediction
            pred_original_sample = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
            pred_epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample

        # 4. Clip or threshold x̂_0.
        pred_original_sample = self._clip_or_threshold(pred_original_sample)

        # 5. σ_t(η) = η · sqrt((1 - ᾱ_{t'}) / (1 - ᾱ_t)) · sqrt(1 - ᾱ_t / ᾱ_{t'}), Eq. (16).
        variance = ((1 - alpha_prod_t_prev) / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance**0.5

        # 6. Optionally re-derive ε̂ from the clipped x̂_0 (as GLIDE does).
        if use_clipped_model_output:
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original_sample) / beta_prod_t**0.5

        # 7. Eq. (12): x_{t'} = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'} - σ_t²) ε̂ ("direction pointing to x_t") + σ_t z.
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
        prev_sample = alpha_prod_t_prev**0.5 * pred_original_sample + pred_sample_direction
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise to DDIMScheduler.step, not both")
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            elif variance_noise.shape != model_output.shape:
                raise ValueError(f"variance_noise must have shape {tuple(model_output.shape)}, "
                                 f"got {tuple(variance_noise.shape)}")
            prev_sample = prev_sample + std_dev_t * variance_noise
        return prev_sample
