"""Few-step samplers on a DDPM noise schedule: DPM-Solver++ (multistep, orders 1-3) and the Euler and Euler-ancestral
samplers of Karras et al. The DDPM and DDIM samplers are in ldm/ddpm.py; the loop that runs any of them is
ldm/guided_sampling.py.

Papers cited by equation or algorithm number below:
    Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps"
    Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
    Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
    Song, Meng, Ermon 2021, "Denoising Diffusion Implicit Models" (DDIM)
    Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM)

Noise levels. All three samplers measure the noise of training step t by
    σ_t = sqrt((1 - ᾱ_t) / ᾱ_t),     so that     ᾱ_t = 1 / (1 + σ_t²)
(Karras et al. 2022, Sec. 2 and Table 1, "VP", with scaling s_t = sqrt(ᾱ_t)): the DDPM sample
x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, divided by sqrt(ᾱ_t), is x_0 + σ_t ε. `sigmas` hold these σ.
DPM-Solver++ steps the DDPM variable x_t itself; in its formulas (the paper's notation) α_t = sqrt(ᾱ_t) =
1 / sqrt(1 + σ²) is the signal scale, σ_t = α_t σ = sqrt(1 - ᾱ_t) the noise std, and λ_t = log(α_t / σ_t) = -log σ
the half log-SNR. The Euler samplers step the scaled variable x_0 + σ ε: they start from noise of std σ_max
(init_noise_sigma) and hand the model x / sqrt(σ² + 1), the DDPM input it was trained on (scale_model_input;
Table 1's c_in).

Index convention as in ldm/ddpm.py: training steps t = 0 .. N-1, `timesteps` descending. A schedule of S steps has
S + 1 noise levels `sigmas` (float32, on the CPU), the last one the target of the final step (0: the clean sample).
The model sees `timesteps`: integers for DPM-Solver++, float32 for the Euler samplers (fractional where the spacing
or Karras σs fall between training steps; the UNet's sinusoidal embedding takes any real t).

Calling convention as in ldm/ddpm.py: diffusers' keyword names and defaults, its float32 arithmetic and its random
draws, bit for bit; step() returns the previous sample as a Tensor. These samplers keep state between steps (the
position in the schedule; DPM-Solver++ also its last model outputs), so steps must follow `timesteps` in order, and
set_timesteps() starts a new run.
    diffusers:  x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    ldm:        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=g)
diffusers options these classes do not implement are refused by from_diffusers (a ValueError naming the key) unless
they hold diffusers' default, which leaves the computation unchanged.
"""
import numpy as np
import torch

from ldm.ddpm import DiffusionScheduler
from ldm.layers import randn_tensor

KARRAS_RHO = 7.0  # Karras et al. 2022, Eq. (5): ρ = 7 spaces the σs densely near σ_min
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24  # diffusers replaces ᾱ_{N-1} = 0 (zero terminal SNR) by this, so σ_max is finite


# ---------------------------------------------------------------------------------------------------------------------
# What the three share: σ on the training grid, Karras σs, σ -> t, the step counter, the refused diffusers options
# ---------------------------------------------------------------------------------------------------------------------

class SigmaScheduler(DiffusionScheduler):
    """Base of DPMSolverMultistepScheduler, EulerDiscreteScheduler and EulerAncestralDiscreteScheduler.

    Attributes beyond DiffusionScheduler's: train_sigmas (float32 (N,), σ_t of every training step), sigmas (float32
    (S + 1,), the schedule's noise levels, CPU), step_index (the position in `timesteps` of the next step; None
    before the first step). add_noise and get_velocity are DiffusionScheduler's forward process at integer training
    steps (the variable DPM-Solver++ steps; diffusers' DPM computes it from σ, equal up to rounding); the Euler
    samplers replace add_noise by their σ form.
    """
    # diffusers keys these classes do not implement -> the one value accepted, diffusers' default (a no-op)
    _UNSUPPORTED: dict = {}
    # keys other diffusers schedulers write (Stable Diffusion's PNDM folder, DDPM/DDIM configs) that these ignore
    _NOT_APPLICABLE = ("clip_sample", "clip_sample_range", "set_alpha_to_one", "skip_prk_steps")

    def __init__(self, config: dict):
        super().__init__(config)
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = ZERO_SNR_ALPHA_CUMPROD
        self.train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5  # (N,) float32, ascending
        self.sigmas = torch.cat([self.train_sigmas.flip(0), torch.zeros(1)])  # every training step, until set
        self.step_index = None

    @classmethod
    def from_diffusers(cls, mapping) -> "SigmaScheduler":
        """As DiffusionScheduler.from_diffusers; a key in _UNSUPPORTED is accepted only at diffusers' default."""
        for key, default in cls._UNSUPPORTED.items():
            if key in mapping and mapping[key] != default:
                raise ValueError(f"{cls.__name__}.from_diffusers: {key}={mapping[key]!r} is not implemented "
                                 f"(only {key}={default!r}, diffusers' default)")
        return super().from_diffusers({k: v for k, v in mapping.items() if k not in cls._UNSUPPORTED})

    def _check_num_steps(self, num_inference_steps) -> None:
        n = self.config.num_train_timesteps
        if not isinstance(num_inference_steps, (int, np.integer)) or not 1 <= num_inference_steps <= n:
            raise ValueError(f"num_inference_steps must be an int in [1, num_train_timesteps={n}], "
                             f"got {num_inference_steps!r}")

    def _check_grid(self, timesteps: np.ndarray) -> None:
        """Refuse grids that leave [0, N-1]: diffusers would feed the model that timestep and read σ clamped."""
        n = self.config.num_train_timesteps
        if timesteps.min() < 0 or timesteps.max() > n - 1:
            raise ValueError(f"timesteps must lie in [0, {n - 1}] (num_train_timesteps={n}); this setting gives "
                             f"{timesteps.tolist()[:3]} ... {timesteps.tolist()[-3:]}")

    def _final_sigma(self, final_sigmas_type: str) -> float:
        """The level the last step goes to: 0 (the clean sample) or σ of training step 0."""
        if final_sigmas_type == "zero":
            return 0.0
        return float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)

    @staticmethod
    def _karras_sigmas(sigma_max: float, sigma_min: float, num_steps: int) -> np.ndarray:
        """Karras et al. 2022, Eq. (5): σ_i = (σ_max^(1/ρ) + i/(S-1) (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ, i = 0 .. S-1,
        float64 (S,), from σ_max down to σ_min."""
        ramp = np.linspace(0, 1, num_steps)
        min_inv_rho = sigma_min ** (1 / KARRAS_RHO)
        max_inv_rho = sigma_max ** (1 / KARRAS_RHO)
        return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO

    @staticmethod
    def _sigma_to_t(sigma, log_sigmas: np.ndarray) -> np.ndarray:
        """The (fractional) training step whose σ is `sigma`: linear interpolation of t in log σ between the two
        neighbouring training steps, clamped to [0, N-1]. sigma: a float64 scalar; log_sigmas: float32 (N,)."""
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        dists = log_sigma - log_sigmas[:, np.newaxis]  # (N, 1)
        low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = np.clip((low - log_sigma) / (low - high), 0, 1)
        return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)

    def _index_for(self, timestep) -> int:
        """The position in `timesteps` of the step at `timestep`: looked up at the first step after set_timesteps
        (the first match), then counted, as diffusers counts (rounded Karras σs can repeat a timestep)."""
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__} needs set_timesteps(num_inference_steps) to be called first")
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single timestep, got shape {tuple(timestep.shape)}")
            timestep = timestep.item()
        if self.step_index is None:
            matches = (self.timesteps == timestep).nonzero()
            if len(matches) == 0:
                raise ValueError(f"timestep {timestep} is not one of scheduler.timesteps "
                                 f"({self.timesteps.tolist()[:5]} ...)")
            self.step_index = int(matches[0, 0])
        elif self.step_index >= len(self.timesteps):
            raise ValueError("every step of the schedule has been taken; call set_timesteps to sample again")
        elif self.timesteps[self.step_index] != timestep:
            raise ValueError(f"steps must follow scheduler.timesteps in order: step {self.step_index} is at timestep "
                             f"{self.timesteps[self.step_index].item()}, got {timestep}")
        return self.step_index

    def _reset(self, timesteps: torch.Tensor, sigmas: np.ndarray) -> None:
        """Install a new schedule (timesteps on their device, sigmas float32 on the CPU) and forget the last run."""
        self.timesteps = timesteps
        self.sigmas = torch.from_numpy(sigmas.astype(np.float32))
        self.num_inference_steps = len(timesteps)
        self.step_index = None


# ---------------------------------------------------------------------------------------------------------------------
# DPM-Solver++: the exponential integrator of the probability-flow ODE in the data prediction x_θ
# ---------------------------------------------------------------------------------------------------------------------

class DPMSolverMultistepScheduler(SigmaScheduler):
    """DPM-Solver++ (Lu et al. 2022b), multistep, with diffusers' keyword names and defaults: by default
    DPM-Solver++(2M), the second-order multistep solver of Algorithm 2 (the usual choice for Stable Diffusion).

    The probability-flow ODE of a DDPM has, in λ = log(α/σ) and the data prediction x_θ = (x_t - σ_t ε_θ) / α_t,
    the exact solution x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x_θ dλ; each step expands x_θ in λ and integrates
    the expansion exactly. solver_order 1 keeps x_θ constant over the step (this is DDIM, η = 0); 2 and 3 add its
    first and second divided differences over the last 2 or 3 steps' x_θ, so that every step costs one model call.
    The first steps of a run use lower orders until enough x_θ are stored.

    solver_type: "midpoint" (Algorithm 2's D = x_θ + (1/2r)(x_θ - x_θ')) or "heun" (keeps the exact coefficient
    (e^{-h} - 1)/h + 1 of the expansion's first-derivative term; the authors' code calls it "taylor"). Order 3 has
    one form.
    lower_order_final: with fewer than 15 steps, take the last step at order 1 and the one before at order <= 2
    (stabilises few-step sampling); euler_at_final: always take the last step at order 1. The last step is order 1
    anyway when final_sigmas_type="zero" (it goes to σ = 0, the clean sample; "sigma_min" stops at σ of step 0).
    use_karras_sigmas: σs of Karras et al. 2022, Eq. (5), between σ_{N-1} and σ_0, and the nearest (rounded)
    training steps as timesteps. lambda_min_clipped: leave out the noisiest training steps, those with λ below it.
    thresholding (dynamic_thresholding_ratio, sample_max_value): Imagen's dynamic thresholding of x_θ (pixel models;
    not for latents). variance_type "learned"/"learned_range": the model outputs 2C channels and the first C are used
    (diffusers takes the first 3, and only for epsilon: the same for 3-channel models, an error for others).
    timestep_spacing (diffusers' default "linspace"), steps_offset, the beta schedule and prediction_type are
    DDPMScheduler's. beta_schedule may also be "sigmoid" or "laplace", which diffusers does not accept here.

    Not implemented (refused by from_diffusers unless at the default): algorithm_type other than "dpmsolver++"
    (the noise-prediction "dpmsolver" and the SDE variants), use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas,
    use_flow_sigmas, use_dynamic_shifting, prediction_type "flow_prediction", custom timestep lists.
    """
    _UNSUPPORTED = {"use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
                    "use_flow_sigmas": False, "use_dynamic_shifting": False}
    # flow_shift and time_shift_type act only with use_flow_sigmas / use_dynamic_shifting, which are refused
    _NOT_APPLICABLE = SigmaScheduler._NOT_APPLICABLE + ("flow_shift", "time_shift_type")

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint",
                 lower_order_final: bool = True, euler_at_final: bool = False, use_karras_sigmas: bool = False,
                 final_sigmas_type: str = "zero", lambda_min_clipped: float = -float("inf"), variance_type=None,
                 timestep_spacing: str = "linspace", steps_offset: int = 0, rescale_betas_zero_snr: bool = False):
        if algorithm_type != "dpmsolver++":
            raise ValueError(f"algorithm_type={algorithm_type!r} is not implemented (only 'dpmsolver++', DPM-Solver++ "
                             "with the data prediction; not the noise-prediction 'dpmsolver' nor the SDE variants)")
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
        if final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS_TYPES}, got {final_sigmas_type!r}")
        if variance_type not in (None, "learned", "learned_range"):
            raise ValueError(f"variance_type must be None, 'learned' or 'learned_range', got {variance_type!r}")
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})  # the arguments
        self.model_outputs = [None] * solver_order  # x_θ of the last solver_order steps, oldest first
        self.lower_order_nums = 0  # steps taken so far, up to solver_order: the highest order the history allows

    @classmethod
    def from_diffusers(cls, mapping) -> "DPMSolverMultistepScheduler":
        """As SigmaScheduler.from_diffusers; DDPM's variance_type values "fixed_*" (a C-channel output) mean None."""
        if str(mapping.get("variance_type")).startswith("fixed"):
            mapping = {**mapping, "variance_type": None}
        return super().from_diffusers(mapping)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Choose the S timesteps (LongTensor, descending, on `device`) and their S + 1 noise levels `sigmas`.

        Spacings over the training steps 0 .. L-1 that lambda_min_clipped keeps (L = N by default):
            linspace: round(linspace(0, L-1, S+1)) reversed, without its last entry 0  (SD, 20 steps: 999, 949, ...)
            leading:  k · (L // (S+1)) + steps_offset for k = S .. 1
            trailing: round(L - k · N/S) - 1 for k = 0 .. S-1
        With use_karras_sigmas, the σs of Eq. (5) instead, and timesteps the training steps nearest to them.
        """
        self._check_num_steps(num_inference_steps)
        c, n, s = self.config, self.config.num_train_timesteps, num_inference_steps
        # 1. The training steps kept: those with λ_t >= lambda_min_clipped (all of them by default).
        lambda_t = torch.log(torch.sqrt(self.alphas_cumprod)) - torch.log(torch.sqrt(1 - self.alphas_cumprod))
        last = n - int(torch.searchsorted(torch.flip(lambda_t, [0]), c.lambda_min_clipped))
        # 2. The timestep grid.
        if c.timestep_spacing == "linspace":
            timesteps = np.linspace(0, last - 1, s + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif c.timestep_spacing == "leading":
            step_ratio = last // (s + 1)
            timesteps = (np.arange(0, s + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64)
            timesteps += c.steps_offset
        else:  # trailing; np.arange with a float step, exactly as diffusers does
            timesteps = np.arange(last, 0, -n / s).round().copy().astype(np.int64) - 1
        # 3. Their noise levels, σ read off the training grid (or Karras σs and the timesteps nearest to them).
        sigmas = self.train_sigmas.numpy()
        log_sigmas = np.log(sigmas)
        if c.use_karras_sigmas:
            sigmas = self._karras_sigmas(sigmas[-1].item(), sigmas[0].item(), s)
            timesteps = np.array([self._sigma_to_t(sigma, log_sigmas) for sigma in sigmas])
            if c.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()  # (else the int64 cast below truncates, as in diffusers)
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
        self._check_grid(timesteps)
        # 4. The level of the last step's target.
        sigmas = np.concatenate([sigmas, [self._final_sigma(c.final_sigmas_type)]])
        self._reset(torch.from_numpy(timesteps).to(device=device, dtype=torch.int64), sigmas)
        self.model_outputs = [None] * c.solver_order
        self.lower_order_nums = 0

    def _alpha_sigma_lambda(self, index: int):
        """α, σ_VP = α σ and λ = log α - log σ_VP of noise level sigmas[index] (0-d float32 tensors)."""
        sigma = self.sigmas[index]
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        sigma_t = sigma * alpha_t
        return alpha_t, sigma_t, torch.log(alpha_t) - torch.log(sigma_t)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """One DPM-Solver++ step x_s -> x_t, from timestep s = `timestep` to the next entry of `timesteps`.

        model_output: (B, C, ...) the model's prediction at x_s (ε, v or x_0 per prediction_type; (B, 2C, ...) with a
        learned variance_type). timestep: the current entry of self.timesteps (int or 1-element tensor); steps must
        follow `timesteps` in order. sample: x_s, (B, C, ...). generator: unused (the ODE solver draws nothing), taken
        so that every sampler is called alike. Returns x_t, (B, C, ...) (diffusers: its .prev_sample).
        """
        learned = self.config.variance_type in ("learned", "learned_range")
        self._check_model_output(model_output, sample, learned_variance=learned)
        i = self._index_for(timestep)
        c, num_steps = self.config, len(self.timesteps)

        # 1. The order this step may use: lower at the end of a short run (lower_order_final, euler_at_final) and
        #    when the last step goes to σ = 0.
        final_lower = i == num_steps - 1 and (c.euler_at_final or (c.lower_order_final and num_steps < 15)
                                              or c.final_sigmas_type == "zero")
        second_lower = i == num_steps - 2 and c.lower_order_final and num_steps < 15

        # 2. The data prediction x_θ(x_s, s): x_0 = (x_s - σ_s ε) / α_s (epsilon), α_s x_s - σ_s v (v_prediction,
        #    Salimans & Ho 2022), or the model output itself (sample); then optional dynamic thresholding.
        model_output = model_output[:, :sample.shape[1]]  # a learned variance's second half is not used
        alpha_s, sigma_s, _ = self._alpha_sigma_lambda(i)
        if c.prediction_type == "epsilon":
            x0_pred = (sample - sigma_s * model_output) / alpha_s
        elif c.prediction_type == "v_prediction":
            x0_pred = alpha_s * sample - sigma_s * model_output
        else:  # sample
            x0_pred = model_output
        if c.thresholding:
            x0_pred = self._clip_or_threshold(x0_pred)
        self.model_outputs = self.model_outputs[1:] + [x0_pred]  # the last solver_order x_θ, oldest first

        # 3. The update of the chosen order.
        sample = sample.to(torch.float32)
        if c.solver_order == 1 or self.lower_order_nums < 1 or final_lower:
            prev_sample = self._first_order_update(x0_pred, sample, i)
        elif c.solver_order == 2 or self.lower_order_nums < 2 or second_lower:
            prev_sample = self._second_order_update(self.model_outputs, sample, i)
        else:
            prev_sample = self._third_order_update(self.model_outputs, sample, i)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.step_index += 1
        return prev_sample.to(x0_pred.dtype)

    def _first_order_update(self, m0: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """DPM-Solver++1 (= DDIM with η = 0): x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x_θ(x_s), h = λ_t - λ_s."""
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        _, sigma_s, lambda_s = self._alpha_sigma_lambda(i)
        h = lambda_t - lambda_s
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * m0

    def _second_order_update(self, outputs: list, sample: torch.Tensor, i: int) -> torch.Tensor:
        """DPM-Solver++(2M), Algorithm 2: with r = h_0/h (h_0 the previous step in λ) and D1 = (x_θ - x_θ')/r,
        x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) (x_θ + D1/2)                          (midpoint)
        x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x_θ + α_t ((e^{-h} - 1)/h + 1) D1     (heun)."""
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
        _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
        m0, m1 = outputs[-1], outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        if self.config.solver_type == "midpoint":
            return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                    - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1)
        return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1)

    def _third_order_update(self, outputs: list, sample: torch.Tensor, i: int) -> torch.Tensor:
        """DPM-Solver++(3M): the expansion one order further, with first and second divided differences D1, D2 of
        the last three x_θ (steps h_0, h_1 before this one): coefficients φ_1 = e^{-h} - 1, φ_2 = φ_1/h + 1 and
        φ_3 = (φ_1 + h)/h² - 1/2."""
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
        _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
        _, _, lambda_s2 = self._alpha_sigma_lambda(i - 2)
        m0, m1, m2 = outputs[-1], outputs[-2], outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D0 = m0
        D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
                - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2)


# ---------------------------------------------------------------------------------------------------------------------
# Euler: first-order steps of the probability-flow ODE in the σ variable (Karras et al. 2022)
# ---------------------------------------------------------------------------------------------------------------------

class EulerDiscreteScheduler(SigmaScheduler):
    """Euler's method on the probability-flow ODE dx/dσ = (x - D(x; σ))/σ (Karras et al. 2022, Eqs. (1) and (3)),
    Algorithm 2 without its second-order correction, with diffusers' keyword names and defaults.

    The sampler steps x = x_0 + σ ε (see the module docstring): it starts from noise of std init_noise_sigma (σ_max;
    sqrt(σ_max² + 1) with "leading" spacing), feeds the model x / sqrt(σ² + 1) (scale_model_input), and reads the
    denoised D = x̂_0 off its output. step()'s s_churn, s_tmin, s_tmax, s_noise are Algorithm 2's stochastic
    "churn": at levels σ in [s_tmin, s_tmax] the sample is first noised up to σ̂ = σ (1 + γ) with
    γ = min(s_churn / S, sqrt(2) - 1) (0 by default: deterministic).
    use_karras_sigmas: the σs of Eq. (5) between the σs of the grid's first and last timesteps (or sigma_max,
    sigma_min when given), and the fractional timesteps that have them. final_sigmas_type: the last step goes to
    σ = 0 ("zero") or to σ of training step 0 ("sigma_min"). timestep_spacing (diffusers' default "linspace":
    fractional timesteps where S - 1 does not divide N - 1), steps_offset, the beta schedule and prediction_type are
    DDPMScheduler's; beta_schedule may also be "sigmoid" or "laplace", which diffusers does not accept here.

    Not implemented (refused by from_diffusers unless at the default): interpolation_type "log_linear",
    use_exponential_sigmas, use_beta_sigmas, timestep_type "continuous", custom timestep or σ lists.
    """
    _UNSUPPORTED = {"interpolation_type": "linear", "use_exponential_sigmas": False, "use_beta_sigmas": False,
                    "timestep_type": "discrete"}
    # DDPM/DDIM/DPM keys without a counterpart here (diffusers' Euler ignores them as well)
    _NOT_APPLICABLE = SigmaScheduler._NOT_APPLICABLE + ("variance_type", "thresholding", "dynamic_thresholding_ratio",
                                                        "sample_max_value")

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 use_karras_sigmas: bool = False, sigma_min: float | None = None, sigma_max: float | None = None,
                 timestep_spacing: str = "linspace", steps_offset: int = 0, rescale_betas_zero_snr: bool = False,
                 final_sigmas_type: str = "zero"):
        if final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS_TYPES}, got {final_sigmas_type!r}")
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})  # the arguments

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The std of the starting noise x_T (0-d float32): σ_max, or sqrt(σ_max² + 1) with "leading" spacing."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """x / sqrt(σ² + 1): the DDPM sample x_t the model was trained on (Karras et al. 2022, Table 1: c_in, "VP").
        sample: x at `timestep`, the current entry of self.timesteps."""
        sigma = self.sigmas[self._index_for(timestep)]
        return sample / ((sigma**2 + 1) ** 0.5)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x = x_0 + σ ε, the noisy sample in the variable this sampler steps (diffusers' Euler add_noise; DDPM's
        sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε divided by sqrt(ᾱ)). timesteps: (B,) or a scalar, entries of self.timesteps,
        whose noise levels σ are used (call set_timesteps first). x_0 and ε: (B, ...) of equal shape."""
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise must have the shape of original_samples {tuple(original_samples.shape)}, "
                             f"got {tuple(noise.shape)}")
        indices = []
        for t in torch.as_tensor(timesteps).reshape(-1).tolist():
            matches = (self.timesteps.cpu() == t).nonzero()
            if len(matches) == 0:
                raise ValueError(f"timestep {t} is not one of scheduler.timesteps ({self.timesteps.tolist()[:5]} ...)")
            indices.append(int(matches[0, 0]))
        sigma = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)[indices]
        sigma = sigma.reshape((-1,) + (1,) * (original_samples.dim() - 1))  # (B, 1, ..., 1)
        return original_samples + noise * sigma

    def _euler_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The float32 grid (descending): linspace(0, N-1, S) reversed (unrounded); leading k · (N // S) +
        steps_offset, k = S-1 .. 0; trailing round(N - k · N/S) - 1, k = 0 .. S-1."""
        self._check_num_steps(num_inference_steps)
        c, n, s = self.config, self.config.num_train_timesteps, num_inference_steps
        if c.timestep_spacing == "linspace":
            return np.linspace(0, n - 1, s, dtype=np.float32)[::-1].copy()
        if c.timestep_spacing == "leading":
            timesteps = (np.arange(0, s) * (n // s)).round()[::-1].copy().astype(np.float32)
            timesteps += c.steps_offset
            return timesteps
        timesteps = np.arange(n, 0, -n / s).round().copy().astype(np.float32)  # trailing; float arange as diffusers
        timesteps -= 1
        return timesteps

    def _set_euler_schedule(self, num_inference_steps: int, device, use_karras_sigmas: bool, final_sigmas_type: str,
                            sigma_min: float | None = None, sigma_max: float | None = None) -> None:
        timesteps = self._euler_timesteps(num_inference_steps)
        self._check_grid(timesteps)
        sigmas = self.train_sigmas.numpy()
        log_sigmas = np.log(sigmas)
        sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)  # σ at (fractional) t, linear in t
        if use_karras_sigmas:
            sigma_min = sigma_min if sigma_min is not None else sigmas[-1].item()
            sigma_max = sigma_max if sigma_max is not None else sigmas[0].item()
            sigmas = self._karras_sigmas(sigma_max, sigma_min, num_inference_steps)
            timesteps = np.array([self._sigma_to_t(sigma, log_sigmas) for sigma in sigmas])
        sigmas = np.concatenate([sigmas, [self._final_sigma(final_sigmas_type)]])
        self._reset(torch.from_numpy(timesteps.astype(np.float32)).to(device=device), sigmas)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Choose the S timesteps (float32, descending, on `device`; see _euler_timesteps) and their S + 1 noise
        levels `sigmas`: σ interpolated linearly in t on the training grid, or the Karras σs of Eq. (5)."""
        c = self.config
        self._set_euler_schedule(num_inference_steps, device, c.use_karras_sigmas, c.final_sigmas_type, c.sigma_min,
                                 c.sigma_max)

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma, sigma_hat) -> torch.Tensor:
        """D(x; σ) = x̂_0 from the model output: x - σ ε (epsilon; Table 1, c_skip = 1, c_out = -σ), the DDPM v
        relation in the σ variable (v_prediction), or the output itself (sample)."""
        if self.config.prediction_type == "epsilon":
            return sample - sigma_hat * model_output
        if self.config.prediction_type == "v_prediction":
            # uses σ, not σ̂ (as diffusers; they differ only with s_churn > 0)
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        return model_output

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator=None) -> torch.Tensor:
        """One Euler step x_i -> x_{i+1} from σ_i (at `timestep`) to σ_{i+1}.

        model_output: (B, C, ...) the model's prediction for scale_model_input(x_i) (ε, v or x_0 per
        prediction_type). timestep: the current entry of self.timesteps; steps must follow `timesteps` in order.
        sample: x_i, (B, C, ...). s_churn, s_tmin, s_tmax, s_noise: Algorithm 2's churn (see the class docstring).
        generator: draws the churn noise, only when γ > 0. Returns x_{i+1}, (B, C, ...) (diffusers: .prev_sample).
        """
        self._check_model_output(model_output, sample)
        i = self._index_for(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[i]

        # 1. Churn (Algorithm 2): raise the noise level to σ̂ = σ (1 + γ) by adding fresh noise of std
        #    sqrt(σ̂² - σ²) · s_noise. γ = 0 (and nothing drawn) by default or outside [s_tmin, s_tmax].
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        # 2. The denoised estimate D(x̂; σ̂) = x̂_0.
        pred_original_sample = self._denoised(model_output, sample, sigma, sigma_hat)

        # 3. Euler step: d = (x̂ - D)/σ̂ = dx/dσ (Eq. (3) in the ODE of Eq. (1)); x_{i+1} = x̂ + (σ_{i+1} - σ̂) d.
        derivative = (sample - pred_original_sample) / sigma_hat
        dt = self.sigmas[i + 1] - sigma_hat
        prev_sample = sample + derivative * dt
        self.step_index += 1
        return prev_sample.to(model_output.dtype)


class EulerAncestralDiscreteScheduler(EulerDiscreteScheduler):
    """Euler ancestral: each step to σ_{i+1} is an Euler step (EulerDiscreteScheduler) down to σ_down followed by
    fresh noise of std σ_up, with σ_down² + σ_up² = σ_{i+1}² and σ_up² = σ_{i+1}² (σ_i² - σ_{i+1}²) / σ_i²: the
    DDPM posterior's variance (DDIM's Eq. (16) with η = 1) in the σ variable, so that it samples like DDPM's
    ancestral sampler (Ho et al. 2020, Algorithm 2). Stochastic: every step draws noise from `generator`, the last
    one too (with σ_up = 0), as diffusers does. Kept from diffusers as well: σ_down = sqrt(σ_{i+1}² - σ_up²) is NaN
    where rounding makes σ_up² exceed σ_{i+1}², which takes a step over a σ ratio of about 10^3.5 or more (the
    first of 3 "trailing" steps on cosine betas, σ 20291 -> 1.75; not Stable Diffusion's schedule, σ_max 14.6).

    Keyword names and defaults are diffusers' EulerAncestralDiscreteScheduler's (no Karras σs, final σ = 0).
    prediction_type may also be "sample", which diffusers refuses here. from_diffusers also reads an
    EulerDiscreteScheduler config (SDXL's folder holds one) when its extra options are at the defaults used here.
    """
    _UNSUPPORTED = {**EulerDiscreteScheduler._UNSUPPORTED, "use_karras_sigmas": False, "sigma_min": None,
                    "sigma_max": None, "final_sigmas_type": "zero"}

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 timestep_spacing: str = "linspace", steps_offset: int = 0, rescale_betas_zero_snr: bool = False):
        # SigmaScheduler's constructor, not EulerDiscreteScheduler's: the config holds only this class's arguments
        SigmaScheduler.__init__(self, {k: v for k, v in locals().items() if k not in ("self", "__class__")})

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """As EulerDiscreteScheduler.set_timesteps with its defaults: σ interpolated in t, the last one 0."""
        self._set_euler_schedule(num_inference_steps, device, use_karras_sigmas=False, final_sigmas_type="zero")

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """One ancestral step x_i -> x_{i+1} from σ_i (at `timestep`) to σ_{i+1}.

        model_output, timestep, sample: as EulerDiscreteScheduler.step. generator: draws the step's noise z (every
        step). Returns x_{i+1}, (B, C, ...) (diffusers: .prev_sample).
        """
        self._check_model_output(model_output, sample)
        i = self._index_for(timestep)
        sigma = self.sigmas[i]
        sample = sample.to(torch.float32)

        # 1. The denoised estimate x̂_0 = D(x_i; σ_i).
        pred_original_sample = self._denoised(model_output, sample, sigma, sigma)

        # 2. Split σ_{i+1} into the deterministic part σ_down and the noise σ_up (see the class docstring).
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5

        # 3. Euler step to σ_down, then x_{i+1} = x + σ_up z, z ~ N(0, I).
        derivative = (sample - pred_original_sample) / sigma
        dt = sigma_down - sigma
        prev_sample = sample + derivative * dt
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = prev_sample + noise * sigma_up
        self.step_index += 1
        return prev_sample.to(model_output.dtype)

