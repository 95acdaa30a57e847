"""ldm's models with diffusers' calling convention: ``AutoencoderKL(**diffusers_kwargs)`` and ``from_config``,
output objects (``vae.encode(x).latent_dist``, ``vae.decode(z).sample``, ``unet(...).sample``,
``vq.encode(x).latents``; tuples with ``return_dict=False``), ``forward(sample=...)``, a dict-like ``config``,
``from_pretrained(path, subfolder=, torch_dtype=, variant=, low_cpu_mem_usage=)``, ``.dtype`` / ``.device``,
gradient-checkpointing flags and the attention-processor API with the default processor.

Each class subclasses the plain one (``isinstance(vae, ldm.vae.AutoencoderKL)`` holds), so modules, state-dict keys
and numbers are the plain model's. Only the calling convention changes: ``vae.decode(z)`` returns a DecoderOutput
here; ``ldm.vae.AutoencoderKL.decode(vae, z)`` is the plain call on the same object.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ldm import convert, fast, io, unet, vae, vq
from ldm.compat.configuration import (AutoencoderKLOutput, ConfigMixin, DecoderOutput, UNet2DConditionOutput,
                                      VQEncoderOutput, _refuse_hub_options, signature_of)
from ldm.layers import Attention

# Processors diffusers uses by default; ldm's attention computes what they compute (F.scaled_dot_product_attention;
# the classic AttnProcessor's baddbmm/softmax is the same function, rounded differently).
DEFAULT_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor", "FusedAttnProcessor2_0")


class AttnProcessor2_0:
    """The default attention processor: scaled dot-product attention, as ldm.layers.Attention computes it. Setting
    it (or diffusers' AttnProcessor / AttnProcessor2_0) is accepted; other processors are refused by name."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


AttnProcessor = AttnProcessor2_0


class ModelMixin(ConfigMixin):
    """What the three compat models share. A class sets ``_plain`` (the ldm class it extends) and
    ``_diffusers_signature`` (diffusers' constructor keywords and defaults)."""

    _supports_gradient_checkpointing = True
    _keep_in_fp32_modules = None
    _no_split_modules = None
    _skip_layerwise_casting_patterns = None
    _plain: type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own_init = cls.__dict__["__init__"]

        def __init__(self, config=None, **kwargs):   # a function of this class's own, to carry diffusers' signature
            own_init(self, config, **kwargs)
        __init__.__signature__ = signature_of(cls._diffusers_signature)
        __init__.__doc__ = own_init.__doc__
        cls.__init__ = __init__

    def _build(self, config, kwargs: dict) -> None:
        """Build the plain model from an ldm config object or from diffusers keyword arguments."""
        private = {k: v for k, v in kwargs.items() if k.startswith("_")}
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        if config is not None and kwargs:
            raise ValueError(f"{type(self).__name__}: pass an ldm config object or diffusers keyword arguments, "
                             f"not both")
        if config is None:
            unknown = sorted(set(kwargs) - set(self._diffusers_signature))
            if unknown:
                raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {unknown}")
            config = self._plain.config_class.from_diffusers(kwargs)
        elif not isinstance(config, self._plain.config_class):
            raise ValueError(f"{type(self).__name__}: config must be a {self._plain.config_class.__name__}; "
                             f"for a diffusers mapping use {type(self).__name__}.from_config(mapping)")
        else:
            kwargs = config.to_diffusers()
        self._plain.__init__(self, config)
        self._register_init({**kwargs, **private}, config)
        self.__dict__["_processors"] = None

    def __getattr__(self, name: str):
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError:
            return self._config_getattr(name)

    # ---- dtype, device, loading ---------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        """Recompute block activations in backward (ldm's checkpointing; the same numbers)."""
        if gradient_checkpointing_func is not None:
            raise ValueError("gradient_checkpointing_func: ldm checkpoints with torch.utils.checkpoint "
                             "(use_reentrant=False) only")
        self._plain.enable_gradient_checkpointing(self, True)

    def disable_gradient_checkpointing(self) -> None:
        self._plain.enable_gradient_checkpointing(self, False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, variant: str | None = None,
                        low_cpu_mem_usage: bool = True, **kwargs):
        """Load a local diffusers model folder (``config.json`` + weights, single, sharded or a ``variant``).
        ``low_cpu_mem_usage`` is accepted either way: ldm always builds on the meta device and assigns the
        weights. Hub repositories, device maps and quantisation are not offered."""
        dtype = kwargs.pop("dtype", None) or torch_dtype
        device = kwargs.pop("device", None)
        _refuse_hub_options(kwargs)
        if kwargs:
            raise ValueError(f"{cls.__name__}.from_pretrained: unsupported argument(s) {sorted(kwargs)}")
        folder = Path(pretrained_model_name_or_path)
        if subfolder:
            folder = folder / subfolder
        if not folder.is_dir():
            raise OSError(f"{folder}: not a local model folder (ldm.compat does not access the Hugging Face Hub; "
                          "download it first, e.g. with huggingface_hub.snapshot_download)")
        try:
            config, state_dict = io.read_model_folder(folder, variant)
        except FileNotFoundError:
            name = io._add_variant(io.PICKLE_WEIGHTS_NAME, variant)
            raise OSError(f"Error no file named {name} found in directory {folder}.") from None
        if cls._plain in (vae.AutoencoderKL, vq.VQModel):
            state_dict = convert.rename_legacy_attention(state_dict)
        plain_config = cls._plain.config_class.from_diffusers(config)
        model = io.build_model(cls, plain_config, state_dict, folder, dtype, device)
        model.register_to_config(**{k: v for k, v in config.items() if k.startswith("_")})
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size: int | str = "10GB", push_to_hub: bool = False, **kwargs) -> None:
        """Write a diffusers model folder (as the plain save_pretrained); Hub pushing is not offered."""
        if push_to_hub:
            raise ValueError("push_to_hub=True: ldm.compat does not access the Hugging Face Hub")
        if is_main_process:
            io.save_pretrained(self, save_directory, variant=variant, max_shard_size=max_shard_size,
                               safe_serialization=safe_serialization)

    # ---- attention processors -----------------------------------------------------------------------------------

    def _attention_names(self) -> list[str]:
        return [f"{name}.processor" for name, m in self.named_modules() if isinstance(m, Attention)]

    @property
    def attn_processors(self) -> dict:
        """{"<module path>.processor": processor} for every attention module, as diffusers names them."""
        names = self._attention_names()
        processors = self.__dict__.get("_processors") or {}
        return {name: processors.get(name) or AttnProcessor2_0() for name in names}

    def set_attn_processor(self, processor) -> None:
        """Set one processor for every attention module, or a dict {name: processor} covering all of them. Only the
        default processors are offered (IP-adapter, custom-diffusion, LoRA and user processors are not)."""
        names = self._attention_names()
        if isinstance(processor, dict):
            if len(processor) != len(names):
                raise ValueError(f"A dict of processors was passed, but the number of processors {len(processor)} "
                                 f"does not match the number of attention layers: {len(names)}. Please make sure "
                                 f"to pass {len(names)} processor classes.")
            missing = sorted(set(names) - set(processor))
            if missing:
                raise ValueError(f"set_attn_processor: no processor for {missing[:3]}")
            chosen = dict(processor)
        else:
            chosen = dict.fromkeys(names, processor)
        for value in chosen.values():
            if type(value).__name__ not in DEFAULT_PROCESSORS:
                raise ValueError(f"attention processor {type(value).__name__} is not offered by ldm.compat: only the "
                                 f"default scaled-dot-product attention ({', '.join(DEFAULT_PROCESSORS)})")
        self.__dict__["_processors"] = chosen

    def set_default_attn_processor(self) -> None:
        self.__dict__["_processors"] = None

    def set_attention_slice(self, slice_size) -> None:
        """Accepted for diffusers code: ldm's attention is F.scaled_dot_product_attention, whose fused kernels already
        avoid the (L x S) score matrix that slicing bounds, so outputs are those of unsliced attention."""
        if slice_size not in ("auto", "max", None) and not (isinstance(slice_size, int) and slice_size > 0):
            raise ValueError(f"set_attention_slice: slice_size must be 'auto', 'max', None or a positive int, "
                             f"got {slice_size!r}")

    def fuse_qkv_projections(self) -> None:
        """ldm.fast.optimize: q/k/v (and cross-attention k/v) as one matmul, with ldm.fast's other bit-equal
        devices; outputs unchanged."""
        fast.optimize(self)

    def unfuse_qkv_projections(self) -> None:
        fast.restore(self)


def _check_no_extras(name: str, **options) -> None:
    """Refuse forward arguments ldm's model has no use for, naming them (None / empty mean unused)."""
    for key, value in options.items():
        if value is not None and value != {} and value != []:
            raise ValueError(f"{name}: {key} is not supported by ldm's UNet ({_WHY[key]})")


_WHY = {
    "timestep_cond": "time_cond_proj_dim (LCM guidance embedding) is not implemented",
    "added_cond_kwargs": "addition_embed_type (SDXL text_time, IP-adapter image_embeds) is not implemented",
    "down_block_additional_residuals": "ControlNet/T2I-adapter residuals are not implemented",
    "mid_block_additional_residual": "ControlNet residuals are not implemented",
    "down_intrablock_additional_residuals": "T2I-adapter residuals are not implemented",
}


# ----------------------------------------------------------------------------------------------------------------
# The three models
# ----------------------------------------------------------------------------------------------------------------


class AutoencoderKL(ModelMixin, vae.AutoencoderKL):
    """ldm.vae.AutoencoderKL with diffusers' calling convention (see the module docstring)."""

    _plain = vae.AutoencoderKL
    _diffusers_signature = convert.DIFFUSERS_VAE_DEFAULTS

    def __init__(self, config: vae.VAEConfig | None = None, **kwargs):
        """``AutoencoderKL(**diffusers_config)`` or ``AutoencoderKL(VAEConfig(...))``."""
        self._build(config, kwargs)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        posterior = vae.AutoencoderKL.encode(self, x)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        decoded = vae.AutoencoderKL.decode(self, z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        posterior = vae.AutoencoderKL.encode(self, sample)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        decoded = vae.AutoencoderKL.decode(self, z)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)


class VQModel(ModelMixin, vq.VQModel):
    """ldm.vq.VQModel with diffusers' calling convention (see the module docstring)."""

    _plain = vq.VQModel
    _diffusers_signature = convert.DIFFUSERS_VQ_DEFAULTS

    def __init__(self, config: vq.VQConfig | None = None, **kwargs):
        """``VQModel(**diffusers_config)`` or ``VQModel(VQConfig(...))``."""
        self._build(config, kwargs)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        h = vq.VQModel.encode(self, x)
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True, shape=None):
        """As diffusers: quantize h (unless force_not_quantize), decode; the output carries the VQ loss
        (``commit_loss``, zeros when nothing was quantized)."""
        if not force_not_quantize:
            z_q, commit_loss, _ = self.quantize(h)
        else:
            z_q = self.quantize.get_codebook_entry(h, shape) if self.config.lookup_from_codebook else h
            commit_loss = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype)
        decoded = self._decode_codes(z_q)
        return DecoderOutput(sample=decoded, commit_loss=commit_loss) if return_dict else (decoded, commit_loss)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        out = self.decode(vq.VQModel.encode(self, sample))
        return out if return_dict else (out.sample, out.commit_loss)


class UNet2DConditionModel(ModelMixin, unet.UNet2DConditionModel):
    """ldm.unet.UNet2DConditionModel with diffusers' calling convention (see the module docstring)."""

    _plain = unet.UNet2DConditionModel
    _diffusers_signature = convert._DIFFUSERS_UNET_DEFAULTS   # every key from_diffusers reads

    def __init__(self, config: unet.UNetConfig | None = None, **kwargs):
        """``UNet2DConditionModel(**diffusers_config)`` or ``UNet2DConditionModel(UNetConfig(...))``."""
        self._build(config, kwargs)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, timestep_cond: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cross_attention_kwargs: dict | None = None,
                added_cond_kwargs: dict | None = None, down_block_additional_residuals=None,
                mid_block_additional_residual=None, down_intrablock_additional_residuals=None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True):
        """diffusers' forward. ``cross_attention_kwargs`` may hold ``scale`` (LoRA scale: no LoRA here, so any value
        computes the same); the arguments of features ldm does not implement are refused by name unless unused."""
        _check_no_extras("UNet2DConditionModel.forward", timestep_cond=timestep_cond,
                         added_cond_kwargs=added_cond_kwargs,
                         down_block_additional_residuals=down_block_additional_residuals,
                         mid_block_additional_residual=mid_block_additional_residual,
                         down_intrablock_additional_residuals=down_intrablock_additional_residuals)
        extra = sorted(set(cross_attention_kwargs or {}) - {"scale"})
        if extra:
            raise ValueError(f"UNet2DConditionModel.forward: cross_attention_kwargs {extra} are not supported (they "
                             f"feed custom attention processors, which ldm.compat does not offer)")
        out = unet.UNet2DConditionModel.forward(self, sample, timestep, encoder_hidden_states, class_labels,
                                                attention_mask, encoder_attention_mask)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


MODELS = (AutoencoderKL, VQModel, UNet2DConditionModel)
