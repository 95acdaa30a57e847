"""ldm's schedulers with diffusers' calling convention: ``step()`` returns an output object (``.prev_sample``,
``.pred_original_sample``; a tuple with ``return_dict=False``), ``config`` is a dict, ``from_config`` /
``save_config`` / ``from_pretrained(subfolder=)`` / ``compatibles`` work, every keyword of diffusers' constructor is
accepted (options ldm does not implement only at their default: another value is a one-line ValueError naming
it), and ``set_timesteps`` takes explicit ``timesteps`` or ``sigmas`` where the sampler's math defines them.

Each class subclasses the plain one (``isinstance(s, ldm.samplers.EulerDiscreteScheduler)`` holds): the arithmetic
and the random draws are the plain class's, which match diffusers bit for bit.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch

from ldm import ddpm, samplers
from ldm.compat.configuration import (ConfigDict, ConfigMixin, DDIMSchedulerOutput, DDPMSchedulerOutput,
                                      EulerAncestralDiscreteSchedulerOutput, EulerDiscreteSchedulerOutput,
                                      SchedulerOutput, _refuse_hub_options, signature_of)

# diffusers' KarrasDiffusionSchedulers: the classes any of these five names as compatible
_KARRAS = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
           "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
           "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
           "DEISMultistepScheduler", "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "EDMEulerScheduler"]


class SchedulerMixin(ConfigMixin):
    """What the five compat schedulers share. A class sets ``_plain`` (the ldm class it extends), ``_extra`` (the
    diffusers keywords the plain class does not take, with the one value accepted) and ``_output``."""

    config_name = "scheduler_config.json"
    has_compatibles = True
    _compatibles = _KARRAS
    _plain: type
    _extra: dict = {}
    _output: type = SchedulerOutput

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        plain = inspect.signature(cls._plain.__init__).parameters
        params = {k: p.default for k, p in plain.items() if k != "self" and k not in cls._plain._FIXES}
        cls._diffusers_signature = {**params, **cls._extra}
        own_init = cls.__dict__.get("__init__", SchedulerMixin.__init__)

        def __init__(self, **kwargs):   # a function of this class's own, to carry diffusers' signature
            own_init(self, **kwargs)
        __init__.__signature__ = signature_of(cls._diffusers_signature)
        __init__.__doc__ = own_init.__doc__
        cls.__init__ = __init__

    def __init__(self, **kwargs):
        private = {k: v for k, v in kwargs.items() if k.startswith("_")}
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        unknown = sorted(set(kwargs) - set(self._diffusers_signature))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {unknown}")
        for key, accepted in self._extra.items():
            if key in kwargs and kwargs[key] != accepted:
                raise ValueError(f"{type(self).__name__}: {key}={kwargs[key]!r} is not implemented by ldm "
                                 f"(only {key}={accepted!r}, diffusers' default)")
        if isinstance(kwargs.get("trained_betas"), np.ndarray):
            kwargs["trained_betas"] = kwargs["trained_betas"].tolist()
        self._plain.__init__(self, **self._plain_arguments({k: v for k, v in kwargs.items() if k not in self._extra}))
        self._register_init({**kwargs, **private}, self.config)
        self._begin_index = None

    def __getattr__(self, name):
        return self._config_getattr(name)

    def _plain_arguments(self, kwargs: dict) -> dict:
        """The plain constructor's arguments for diffusers' (where diffusers spells a value differently)."""
        return kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def register_to_config(self, **kwargs) -> None:
        """As diffusers: entries the scheduler reads (e.g. timestep_spacing) take effect at the next set_timesteps."""
        plain = self.config.__dict__.get("_plain")
        for key, value in kwargs.items():
            if plain is not None and hasattr(plain, key):
                setattr(plain, key, value)
        super().register_to_config(**kwargs)

    # ---- files --------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Write ``save_directory/scheduler_config.json``, loadable by diffusers and by ``from_pretrained``."""
        self.save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_diffusers(self) -> dict:
        return {k: v for k, v in self.config.items() if k != "_use_default_values"}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None,
                        subfolder: str | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Load a local scheduler folder (``scheduler_config.json``), e.g. ``from_pretrained(pipe, subfolder=
        "scheduler")``; ``kwargs`` override config entries."""
        _refuse_hub_options(kwargs)
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_diffusers(cls, mapping):
        """The plain from_diffusers, building this class (diffusers' keys at any value this class accepts)."""
        return cls.from_config(dict(mapping))

    # ---- sampling conveniences ----------------------------------------------------------------------------------

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at position ``begin_index`` of ``timesteps`` (diffusers' img2img entry point)."""
        self._begin_index = begin_index

    def _capture(self, name: str, value):
        self.__dict__[name] = value
        return value


class _X0Capture:
    """Records the x̂_0 estimate the plain step computes (after clipping), for ``pred_original_sample``."""

    def _clip_or_threshold(self, pred_original_sample):
        return self._capture("_last_x0", super()._clip_or_threshold(pred_original_sample))


class DDPMScheduler(SchedulerMixin, _X0Capture, ddpm.DDPMScheduler):
    """ldm.ddpm.DDPMScheduler with diffusers' calling convention (see the module docstring)."""
    _plain = ddpm.DDPMScheduler
    _output = DDPMSchedulerOutput

    def _plain_arguments(self, kwargs: dict) -> dict:
        # diffusers computes variance_type=None (what DPM-Solver's config holds) as "fixed_small"
        return {**kwargs, "variance_type": kwargs.get("variance_type") or "fixed_small"}

    def previous_timestep(self, timestep) -> torch.Tensor:
        """As diffusers: the timestep after ``timestep`` in the schedule (-1 after the last), as a tensor."""
        return torch.tensor(ddpm.DDPMScheduler.previous_timestep(self, timestep))

    def _get_variance(self, t, predicted_variance=None, variance_type=None) -> torch.Tensor:
        """diffusers' private DDPM helper: σ_t² of the step from t (fixed_small: the posterior variance β̃_t,
        Eq. (7), clamped at 1e-20; fixed_large: β_t)."""
        prev_t = int(self.previous_timestep(t))
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        kind = variance_type or self.config.variance_type or "fixed_small"
        if kind not in ("fixed_small", "fixed_large"):
            raise ValueError(f"_get_variance: variance_type {kind!r} is not offered (fixed_small, fixed_large)")
        return variance if kind == "fixed_small" else current_beta_t

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        prev = ddpm.DDPMScheduler.step(self, model_output, timestep, sample, generator=generator)
        out = (prev, self.__dict__.pop("_last_x0"))
        return self._output(*out) if return_dict else out


class DDIMScheduler(SchedulerMixin, _X0Capture, ddpm.DDIMScheduler):
    """ldm.ddpm.DDIMScheduler with diffusers' calling convention (see the module docstring)."""
    _plain = ddpm.DDIMScheduler
    _output = DDIMSchedulerOutput

    def _get_variance(self, timestep, prev_timestep) -> torch.Tensor:
        """diffusers' private DDIM helper: (1 - ᾱ_{t'}) / (1 - ᾱ_t) · (1 - ᾱ_t / ᾱ_{t'}), σ_t² at η = 1 (Eq. (16))."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None) -> None:
        ddpm.DDIMScheduler.set_timesteps(self, num_inference_steps, device)

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        prev = ddpm.DDIMScheduler.step(self, model_output, timestep, sample, eta, use_clipped_model_output,
                                       generator, variance_noise)
        out = (prev, self.__dict__.pop("_last_x0"))
        return self._output(*out) if return_dict else out


class _SigmaCompat:
    """The step counter of the σ samplers as diffusers keeps it: before set_timesteps the training grid is the
    schedule (so scale_model_input works at once), and set_begin_index chooses where a run starts."""

    def _index_for(self, timestep) -> int:
        if self.step_index is None and self._begin_index is not None:
            self.step_index = self._begin_index
        if self.num_inference_steps is not None:
            return super()._index_for(timestep)
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.item()
        if self.step_index is None:
            matches = (self.timesteps == timestep).nonzero()
            if len(matches) == 0:
                raise ValueError(f"timestep {timestep} is not one of scheduler.timesteps (call set_timesteps first)")
            self.step_index = int(matches[0, 0])
        return self.step_index

    def _install(self, timesteps: np.ndarray, sigmas: np.ndarray, device, dtype) -> None:
        self._check_grid(timesteps)
        self._reset(torch.from_numpy(timesteps).to(device=device, dtype=dtype), sigmas)
        self._begin_index = None

    def _custom_sigmas(self, timesteps) -> np.ndarray:
        """σ of the given (fractional) training steps, linear in t, and the final σ of the config."""
        train = self.train_sigmas.numpy()
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        return np.concatenate([sigmas, [self._final_sigma(self.config.final_sigmas_type)]]).astype(np.float32)


class DPMSolverMultistepScheduler(SchedulerMixin, _SigmaCompat, samplers.DPMSolverMultistepScheduler):
    """ldm.samplers.DPMSolverMultistepScheduler with diffusers' calling convention (see the module docstring).
    ``set_timesteps(timesteps=[...])`` runs the solver on a custom descending list of integer training steps."""
    _plain = samplers.DPMSolverMultistepScheduler
    _extra = {**samplers.DPMSolverMultistepScheduler._UNSUPPORTED, "flow_shift": 1.0,
              "time_shift_type": "exponential"}

    def _plain_arguments(self, kwargs: dict) -> dict:
        # DDPM's variance types "fixed_*" (a C-channel output, as from a DDPM config) mean None here, as in diffusers
        if str(kwargs.get("variance_type")).startswith("fixed"):
            kwargs = {**kwargs, "variance_type": None}
        return kwargs

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu=None, timesteps=None) -> None:
        if mu is not None:
            raise ValueError("mu: dynamic shifting (use_dynamic_shifting) is not implemented by ldm")
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if timesteps is None:
            samplers.DPMSolverMultistepScheduler.set_timesteps(self, num_inference_steps, device)
        else:
            if self.config.use_karras_sigmas:
                raise ValueError("Cannot use `timesteps` with `config.use_karras_sigmas = True`")
            grid = np.array(timesteps).astype(np.int64)
            self._install(grid, self._custom_sigmas(grid), device, torch.int64)
            self.model_outputs = [None] * self.config.solver_order
            self.lower_order_nums = 0
        self._begin_index = None

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict: bool = True):
        if variance_noise is not None:
            raise ValueError("variance_noise: the SDE variants of DPM-Solver are not implemented by ldm")
        prev = samplers.DPMSolverMultistepScheduler.step(self, model_output, timestep, sample, generator)
        return SchedulerOutput(prev) if return_dict else (prev,)


class EulerDiscreteScheduler(SchedulerMixin, _SigmaCompat, samplers.EulerDiscreteScheduler):
    """ldm.samplers.EulerDiscreteScheduler with diffusers' calling convention (see the module docstring).
    ``set_timesteps(timesteps=[...])`` (σ linear in t) and ``set_timesteps(sigmas=[...])`` (timesteps read off the
    σ grid; the list's last entry is the final σ) as diffusers defines them."""
    _plain = samplers.EulerDiscreteScheduler
    _extra = dict(samplers.EulerDiscreteScheduler._UNSUPPORTED)
    _output = EulerDiscreteSchedulerOutput

    def __init__(self, **kwargs):
        SchedulerMixin.__init__(self, **kwargs)
        # diffusers' grid before set_timesteps: every training step, float32, descending
        n = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, n - 1, n, dtype=float)[::-1].copy()).to(torch.float32)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None,
                      sigmas=None) -> None:
        given = [v is not None for v in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps` or `sigmas`.")
        if num_inference_steps is not None:
            samplers.EulerDiscreteScheduler.set_timesteps(self, num_inference_steps, device)
        elif timesteps is not None:
            if self.config.use_karras_sigmas:
                raise ValueError("Cannot set `timesteps` with `config.use_karras_sigmas = True`.")
            grid = np.array(timesteps).astype(np.float32)
            self._install(grid, self._custom_sigmas(grid), device, torch.float32)
        else:
            sigmas = np.array(sigmas).astype(np.float32)
            log_sigmas = np.log(self.train_sigmas.numpy())
            grid = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas[:-1]])
            self._install(grid.astype(np.float32), sigmas, device, torch.float32)
        self._begin_index = None

    def _denoised(self, model_output, sample, sigma, sigma_hat):
        return self._capture("_last_x0", super()._denoised(model_output, sample, sigma, sigma_hat))

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, return_dict: bool = True):
        prev = samplers.EulerDiscreteScheduler.step(self, model_output, timestep, sample, s_churn, s_tmin, s_tmax,
                                                    s_noise, generator)
        out = (prev, self.__dict__.pop("_last_x0"))
        return self._output(*out) if return_dict else out


class EulerAncestralDiscreteScheduler(SchedulerMixin, _SigmaCompat, samplers.EulerAncestralDiscreteScheduler):
    """ldm.samplers.EulerAncestralDiscreteScheduler with diffusers' calling convention (see the module docstring)."""
    _plain = samplers.EulerAncestralDiscreteScheduler
    _output = EulerAncestralDiscreteSchedulerOutput

    def __init__(self, **kwargs):
        SchedulerMixin.__init__(self, **kwargs)
        n = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, n - 1, n, dtype=float)[::-1].copy()).to(torch.float32)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        samplers.EulerAncestralDiscreteScheduler.set_timesteps(self, num_inference_steps, device)
        self._begin_index = None

    def _denoised(self, model_output, sample, sigma, sigma_hat):
        return self._capture("_last_x0", super()._denoised(model_output, sample, sigma, sigma_hat))

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        prev = samplers.EulerAncestralDiscreteScheduler.step(self, model_output, timestep, sample, generator)
        out = (prev, self.__dict__.pop("_last_x0"))
        return self._output(*out) if return_dict else out


SCHEDULERS = (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
              EulerAncestralDiscreteScheduler)
