"""AutoencoderKL: stage 1 of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", section 3.1 and appendix G).

An encoder maps an image x (B, Cin, H, W) in [-1, 1] to the mean and log-variance of a diagonal Gaussian over
latents (B, Cz, H/f, W/f), f = 2**(levels-1); a decoder maps a latent sample back to an image. Training adds a
small KL term towards N(0, I) so the latent space stays smooth (the "KL-reg" autoencoder of the paper).

Shapes for the Stable Diffusion config (preset "sd") and one 256x256 RGB image, f = 8:

    stage                               shape
    x                                   (1, 3, 256, 256)
    encoder.conv_in                     (1, 128, 256, 256)
    encoder.down_blocks.0 (+downsample) (1, 128, 128, 128)
    encoder.down_blocks.1 (+downsample) (1, 256, 64, 64)
    encoder.down_blocks.2 (+downsample) (1, 512, 32, 32)
    encoder.down_blocks.3               (1, 512, 32, 32)
    encoder.mid_block (attention, L=1024)(1, 512, 32, 32)
    encoder.conv_out                    (1, 8, 32, 32)     mean and logvar, 4 channels each
    quant_conv -> DiagonalGaussian      mean, logvar: (1, 4, 32, 32)
    z = posterior.sample()              (1, 4, 32, 32)     (times scaling_factor before diffusion)
    post_quant_conv, decoder.conv_in    (1, 512, 32, 32)
    decoder.mid_block                   (1, 512, 32, 32)
    decoder.up_blocks.0 (+upsample)     (1, 512, 64, 64)
    decoder.up_blocks.1 (+upsample)     (1, 512, 128, 128)
    decoder.up_blocks.2 (+upsample)     (1, 256, 256, 256)
    decoder.up_blocks.3                 (1, 128, 256, 256)
    decoder.conv_out                    (1, 3, 256, 256)

Shape legend: B batch, C channels, H W height width, Cz latent channels, h w latent height width.
Module names equal diffusers' AutoencoderKL state-dict keys.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldm.convert import DIFFUSERS_VAE_DEFAULTS as _DIFFUSERS_VAE_DEFAULTS
from ldm.convert import autoencoder_values_from_diffusers
from ldm.io import PretrainedMixin
from ldm.layers import (Downsample2D, MidBlock2D, ResnetBlock2D, SpatialNorm, Upsample2D, check_image_batch,
                        checkpointed, randn_tensor)

# The VAE normalises with GroupNorm eps 1e-6 everywhere; diffusers hard-codes it. (The UNet's resnets and output
# norm use its norm_eps, 1e-5; its transformers' GroupNorm uses 1e-6 again: ldm.transformer.)
VAE_NORM_EPS = 1e-6


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VAEConfig:
    """Everything that decides the AutoencoderKL's shape and numbers.

    ``block_out_channels`` gives the width of each resolution level; there are len-1 downsamplings, so the
    latent is 2**(len-1) times smaller than the image. ``scaling_factor`` is not used by the model: latents are
    multiplied by it before diffusion so they have roughly unit variance (LDM paper, section 4.3.2; 0.18215 for
    the SD VAE). None means "not measured yet" (compute it from data after training).
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    sample_size: int | tuple[int, int] = 512   # N or (H, W) trained at; tiled encode/decode uses tiles of N or H
    scaling_factor: float | None = 0.18215
    shift_factor: float | None = None       # pipelines only (SD3/Flux): z = (z - shift) * scale
    # Kept only so a diffusers config round-trips; the model never reads them.
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    force_upcast: bool = True

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VAEConfig.{name} must be a positive int, got {value!r}")
        if not self.block_out_channels:
            raise ValueError("VAEConfig.block_out_channels must name at least one level")
        for width in self.block_out_channels:
            if width % self.norm_num_groups:
                raise ValueError(f"VAEConfig.block_out_channels {self.block_out_channels} must all be divisible by "
                                 f"norm_num_groups={self.norm_num_groups}")
        if isinstance(self.sample_size, (list, tuple)):
            self.sample_size = tuple(self.sample_size)
            if self.sample_size[0] == self.sample_size[-1]:
                self.sample_size = self.sample_size[0]                   # square: one int, as diffusers writes it

    @property
    def tile_size(self) -> int:
        """The side of a tile in tiled encode/decode: sample_size, or its first entry (height), as in diffusers."""
        return self.sample_size if isinstance(self.sample_size, int) else self.sample_size[0]

    @property
    def downsample_factor(self) -> int:
        """f: how many image pixels one latent pixel covers along each side."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def preset(cls, name: str) -> "VAEConfig":
        """A named configuration: one of ``VAE_PRESETS``."""
        if name not in VAE_PRESETS:
            raise ValueError(f"unknown VAE preset {name!r}; expected one of {sorted(VAE_PRESETS)}")
        return dataclasses.replace(VAE_PRESETS[name])

    # ---- diffusers config.json (the translation lives with the key tables, in ldm/convert.py) -------------------

    @classmethod
    def from_diffusers(cls, mapping: dict) -> "VAEConfig":
        """Build from a diffusers ``AutoencoderKL`` config mapping (the contents of its config.json).

        Missing keys take diffusers' defaults (which are not the SD values). Keys starting with "_" are
        informational and ignored. A key that would change the computation but is not supported raises
        ValueError naming it.
        """
        return cls(**autoencoder_values_from_diffusers(mapping, _DIFFUSERS_VAE_DEFAULTS, "AutoencoderKL"))

    def to_diffusers(self) -> dict:
        """The diffusers ``AutoencoderKL`` config mapping (without ``_class_name`` / ``_diffusers_version``)."""
        values = dataclasses.asdict(self)
        values["block_out_channels"] = list(self.block_out_channels)
        if not isinstance(self.sample_size, int):
            values["sample_size"] = list(self.sample_size)                 # [height, width]
        n = len(self.block_out_channels)
        values["down_block_types"] = ["DownEncoderBlock2D"] * n
        values["up_block_types"] = ["UpDecoderBlock2D"] * n
        values["act_fn"] = "silu"
        return values


VAE_PRESETS = {
    # Stable Diffusion 1.x / 2.x VAE: 83.65M parameters, f = 8.
    "sd": VAEConfig(),
    # 256x256 single-channel spectrograms -> 32x32x4 latents (f = 8): half the SD VAE's width at every level, a
    # quarter of its parameters (20.9M; python -m ldm.shapes --model vae --preset microdoppler).
    # scaling_factor is measured on the training data after stage 1 (train_vae.py does this).
    "microdoppler": VAEConfig(in_channels=1, out_channels=1, block_out_channels=(64, 128, 256, 256),
                              sample_size=256, scaling_factor=None),
    # For tests and CPU demos: f = 2, a few hundred thousand parameters.
    "tiny": VAEConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, sample_size=32),
}


# ----------------------------------------------------------------------------------------------------------------
# The posterior
# ----------------------------------------------------------------------------------------------------------------


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over latents, from the encoder's 2*Cz output channels.

    ``logvar`` is clamped to [-30, 20] before std and var are computed, as in the LDM code, so a freshly
    initialised or diverging encoder cannot produce inf/0 variances.

    Args:
        parameters: (B, 2*Cz, h, w): mean in the first Cz channels, log-variance in the rest.
    """

    def __init__(self, parameters: torch.Tensor):
        if parameters.ndim != 4 or parameters.shape[1] % 2:
            raise ValueError(f"DiagonalGaussian expects (B, 2*Cz, h, w) parameters, got {tuple(parameters.shape)}")
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)            # 2 x (B, Cz, h, w)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """A reparameterised draw ``mean + std * eps``, eps ~ N(0, I) from ``generator``; differentiable.

        Draws exactly what diffusers draws for the same generator: a CPU generator with a CUDA tensor draws on
        the CPU and moves the noise over; a list of B generators draws one image's noise from each.
        """
        noise = randn_tensor(self.mean.shape, generator, self.mean.device, self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean, (B, Cz, h, w)."""
        return self.mean

    def kl(self, other: "DiagonalGaussian | None" = None) -> torch.Tensor:
        """KL(self || other) summed over (Cz, h, w): (B,). ``other=None`` means the prior N(0, I):
        ``0.5 * sum(mean^2 + var - 1 - logvar)``."""
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=[1, 2, 3],
        )

    def nll(self, x: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of x under this Gaussian, summed over ``dims``:
        ``0.5 * sum(log(2 pi) + logvar + (x - mean)^2 / var)``."""
        return 0.5 * torch.sum(math.log(2.0 * math.pi) + self.logvar + (x - self.mean).pow(2) / self.var,
                               dim=list(dims))


# ----------------------------------------------------------------------------------------------------------------
# Encoder and decoder
# ----------------------------------------------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """One resolution level of the encoder: ``num_layers`` resnets, then an optional downsampling."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups=groups, eps=VAE_NORM_EPS)
            for i in range(num_layers)
        ])
        # the VAE pads right/bottom only, then convolves with padding 0 (LDM's Downsample)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)                                                # (B, Cin, H, W) -> (B, C, H, W)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)                                  # -> (B, C, H/2, W/2)
        return x


class DecoderBlock(nn.Module):
    """One resolution level of the decoder: ``num_layers`` resnets, then an optional 2x upsampling."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool,
                 spatial_norm_channels: int | None = None):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups=groups, eps=VAE_NORM_EPS,
                          spatial_norm_channels=spatial_norm_channels)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, zq=zq)                                         # (B, Cin, H, W) -> (B, C, H, W)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)                                    # -> (B, C, 2H, 2W)
        return x


class Encoder(nn.Module):
    """Image (B, Cin, H, W) -> (B, 2*Cz or Cz, H/f, W/f): conv_in, levels of resnets + downsampling, mid block
    (resnet, single-head attention, resnet), GroupNorm, SiLU, conv_out.

    ``double_z`` outputs mean and log-variance (AutoencoderKL); without it, one latent (VQModel).
    """

    def __init__(self, in_channels: int, latent_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, norm_num_groups: int, mid_block_add_attention: bool = True,
                 double_z: bool = True):
        super().__init__()
        widths = block_out_channels
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList([
            EncoderBlock(widths[max(i - 1, 0)], widths[i], layers_per_block, norm_num_groups,
                         downsample=i < len(widths) - 1)
            for i in range(len(widths))
        ])
        self.mid_block = MidBlock2D(widths[-1], groups=norm_num_groups, eps=VAE_NORM_EPS,
                                    add_attention=mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, widths[-1], eps=VAE_NORM_EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * latent_channels if double_z else latent_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)                                              # (B, Cin, H, W) -> (B, C0, H, W)
        for block in self.down_blocks:
            x = checkpointed(block, x) if self.gradient_checkpointing else block(x)   # -> (B, Ci, H/2^i, W/2^i)
        x = checkpointed(self.mid_block, x) if self.gradient_checkpointing else self.mid_block(x)
        x = F.silu(self.conv_norm_out(x))
        return self.conv_out(x)                                          # (B, C, h, w) -> (B, 2*Cz, h, w)


class Decoder(nn.Module):
    """Latent (B, Cz, h, w) -> image (B, Cout, h*f, w*f): conv_in, mid block, levels of resnets + upsampling
    (one more resnet per level than the encoder), GroupNorm, SiLU, conv_out.

    ``norm_type="spatial"`` (the VQ decoder of MoVQ) replaces every GroupNorm with a SpatialNorm conditioned
    on the latent itself; then ``forward`` needs ``zq``.
    """

    def __init__(self, latent_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, norm_num_groups: int, mid_block_add_attention: bool = True,
                 norm_type: str = "group"):
        super().__init__()
        if norm_type not in ("group", "spatial"):
            raise ValueError(f"Decoder norm_type must be 'group' or 'spatial', got {norm_type!r}")
        zq_channels = latent_channels if norm_type == "spatial" else None
        widths = tuple(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, widths[0], kernel_size=3, padding=1)
        self.mid_block = MidBlock2D(widths[0], groups=norm_num_groups, eps=VAE_NORM_EPS,
                                    add_attention=mid_block_add_attention, spatial_norm_channels=zq_channels)
        self.up_blocks = nn.ModuleList([
            DecoderBlock(widths[max(i - 1, 0)], widths[i], layers_per_block + 1, norm_num_groups,
                         upsample=i < len(widths) - 1, spatial_norm_channels=zq_channels)
            for i in range(len(widths))
        ])
        if zq_channels is None:
            self.conv_norm_out = nn.GroupNorm(norm_num_groups, widths[-1], eps=VAE_NORM_EPS)
        else:
            self.conv_norm_out = SpatialNorm(widths[-1], zq_channels)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, z: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv_in(z)                                              # (B, Cz, h, w) -> (B, C, h, w)
        ckpt = self.gradient_checkpointing
        x = checkpointed(self.mid_block, x, None, zq) if ckpt else self.mid_block(x, None, zq)
        for block in self.up_blocks:
            x = checkpointed(block, x, zq) if ckpt else block(x, zq)    # -> (B, Ci, 2h, 2w) per upsampling
        x = self.conv_norm_out(x) if zq is None else self.conv_norm_out(x, zq)
        x = F.silu(x)
        return self.conv_out(x)                                          # (B, C0, H, W) -> (B, Cout, H, W)


# ----------------------------------------------------------------------------------------------------------------
# The autoencoder
# ----------------------------------------------------------------------------------------------------------------


class LatentScaling:
    """The latent space stage 2 works in, shared by AutoencoderKL and VQModel (both have ``config.scaling_factor``).

    The LDM paper (Rombach et al. 2022, section 4.3.2) rescales the first stage's latents to about unit variance
    before diffusion: z_diffusion = (z - shift) * scaling_factor, with scaling_factor = 1 / std(z) measured on the
    training data (train_vae.py does this) and shift 0 (``shift_factor``, used by later pipelines, is honoured).
    Sampling ends with the inverse, z = z_diffusion / scaling_factor + shift, before ``decode``.
    """

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the diffusion model works on."""
        raise NotImplementedError

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder latents (B, Cz, h, w) -> diffusion latents (z - shift) * scaling_factor."""
        scale, shift = self.latent_scale_and_shift()
        return (z - shift) * scale

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latents (B, Cz, h, w) -> decoder latents z / scaling_factor + shift."""
        scale, shift = self.latent_scale_and_shift()
        return z / scale + shift

    def latent_scale_and_shift(self) -> tuple[float, float]:
        """(scaling_factor, shift) of the config; ValueError unless the factor is a positive number."""
        scale = self.config.scaling_factor
        if scale is None or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"{type(self).__name__}.config.scaling_factor is {scale!r}: latent scaling needs a "
                             "positive number (train_vae.py measures it as 1 / std of the training latents)")
        return float(scale), float(getattr(self.config, "shift_factor", None) or 0.0)


class AutoencoderKL(LatentScaling, PretrainedMixin, nn.Module):
    """The KL-regularised autoencoder of latent diffusion: ``encode`` gives a DiagonalGaussian over latents,
    ``decode`` maps latents back to images. State-dict keys equal diffusers' ``AutoencoderKL``.

    Large images: ``enable_tiling()`` encodes/decodes in overlapping tiles blended linearly (diffusers'
    algorithm and defaults: tiles of ``sample_size`` pixels, 25% overlap), ``enable_slicing()`` runs one image of
    the batch at a time. Both trade a little accuracy or speed for memory.
    ``from_pretrained`` / ``save_pretrained`` read and write diffusers model folders (see ldm.io).
    """

    config_class = VAEConfig

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config = config or VAEConfig()
        self.encoder = Encoder(config.in_channels, config.latent_channels, config.block_out_channels,
                               config.layers_per_block, config.norm_num_groups, config.mid_block_add_attention)
        self.decoder = Decoder(config.latent_channels, config.out_channels, config.block_out_channels,
                               config.layers_per_block, config.norm_num_groups, config.mid_block_add_attention)
        two_z = 2 * config.latent_channels
        self.quant_conv = nn.Conv2d(two_z, two_z, 1) if config.use_quant_conv else None
        self.post_quant_conv = (nn.Conv2d(config.latent_channels, config.latent_channels, 1)
                                if config.use_post_quant_conv else None)

        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_size = config.tile_size                                     # tile side in pixels
        self.tile_latent_min_size = int(config.tile_size / config.downsample_factor)     # ... in latent pixels
        self.tile_overlap_factor = 0.25

    # ---- public API -----------------------------------------------------------------------------------------------

    @property
    def latent_channels(self) -> int:
        """Cz, the channels of a posterior sample."""
        return self.config.latent_channels

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x: (B, Cin, H, W) in [-1, 1], H and W multiples of f -> posterior over (B, Cz, H/f, W/f)."""
        check_image_batch(x, self.config.in_channels, "x", self.config.downsample_factor, self.encoder.conv_in.weight)
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(x_i) for x_i in x.split(1)])
        else:
            moments = self._encode(x)
        return DiagonalGaussian(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, Cz, h, w) latents (already divided by scaling_factor) -> image (B, Cout, h*f, w*f), about [-1, 1]."""
        check_image_batch(z, self.config.latent_channels, "z", weight=self.decoder.conv_in.weight)
        if self.use_slicing and z.shape[0] > 1:
            return torch.cat([self._decode(z_i) for z_i in z.split(1)])
        return self._decode(z)

    def forward(self, x: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | list[torch.Generator] | None = None
                ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruct x through a posterior sample (or its mode). Returns (x_rec, posterior)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def enable_tiling(self, use_tiling: bool = True):
        """Encode/decode large inputs in overlapping tiles (results differ from untiled ones, by design)."""
        self.use_tiling = use_tiling

    def disable_tiling(self):
        self.enable_tiling(False)

    def enable_slicing(self):
        """Encode/decode one image of the batch at a time, to save memory."""
        self.use_slicing = True

    def disable_slicing(self):
        self.use_slicing = False

    def enable_gradient_checkpointing(self, enabled: bool = True):
        """Recompute encoder/decoder block activations in backward instead of storing them (same numbers)."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    # ---- internals ------------------------------------------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return self._tiled(x, self._encode_tile, self.tile_sample_min_size, self.tile_latent_min_size)
        return self._encode_tile(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return self._tiled(z, self._decode_tile, self.tile_latent_min_size, self.tile_sample_min_size)
        return self._decode_tile(z)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)                                        # (B, Cin, H, W) -> (B, 2*Cz, h, w)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)                                           # (B, Cz, h, w) -> (B, Cout, H, W)

    def _tiled(self, x: torch.Tensor, fn, tile_in: int, tile_out: int) -> torch.Tensor:
        """Apply ``fn`` to overlapping ``tile_in``-sized tiles of x and blend the ``tile_out``-sized results.

        Tiles start every ``tile_in * (1 - overlap)`` pixels. Going in raster order, each result tile is
        blended linearly with its (already blended) upper and left neighbours over ``tile_out * overlap`` rows /
        columns, then cropped to ``tile_out * (1 - overlap)``, and the crops are concatenated. This is diffusers'
        algorithm exactly, so results match diffusers' tiled path.
        """
        stride = int(tile_in * (1 - self.tile_overlap_factor))
        blend = int(tile_out * self.tile_overlap_factor)
        keep = tile_out - blend
        rows = [[fn(x[:, :, i:i + tile_in, j:j + tile_in]) for j in range(0, x.shape[3], stride)]
                for i in range(0, x.shape[2], stride)]
        out_rows = []
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                if i > 0:
                    _blend_(rows[i - 1][j], tile, blend, dim=2)
                if j > 0:
                    _blend_(row[j - 1], tile, blend, dim=3)
            out_rows.append(torch.cat([tile[:, :, :keep, :keep] for tile in row], dim=3))
        return torch.cat(out_rows, dim=2)


def _blend_(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int):
    """In place, fade the first ``extent`` rows (dim=2) or columns (dim=3) of b in from the last ones of a:
    ``b[k] = a[-extent + k] * (1 - k/extent) + b[k] * (k/extent)``."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent == 0:
        return
    # weights in float64, like Python's k/extent in diffusers' loop, each rounded once to the tensor dtype
    take = torch.arange(extent, dtype=torch.float64) / extent
    shape = (-1, 1) if dim == 2 else (1, -1)
    keep_w = (1 - take).to(device=b.device, dtype=b.dtype).view(shape)
    take_w = take.to(device=b.device, dtype=b.dtype).view(shape)
    a_edge = a.narrow(dim, a.shape[dim] - extent, extent)
    b_edge = b.narrow(dim, 0, extent)
    b_edge.copy_(a_edge * keep_w + b_edge * take_w)
