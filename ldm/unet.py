"""The conditional UNet: stage 2 of latent diffusion (Rombach et al. 2022, section 3.3; the UNet of Ho et al. 2020
with the spatial transformers of ``ldm.transformer``).

Given noisy latents x_t, the timestep t and a conditioning context (text embeddings, or a user-ID embedding), the UNet
predicts the noise eps (or v, or x_0: the scheduler decides how its output is read). t enters every resnet through
a time-embedding vector; an optional class label (``num_class_embeds``) is embedded and added to that vector; the
context enters every Transformer2D through cross-attention.

One forward pass of the ``microdoppler`` preset (block_out_channels (128, 256, 512), 2 resnets per level going down,
3 going up, a Transformer2D after every resnet, 4/8/16 heads of width 32), for sample (B, 4, 32, 32),
timestep (B,), class_labels (B,) and context (B, 4, 768) (the 4 user-ID tokens train_ldm.py feeds by default;
`python -m ldm.shapes --model unet --preset microdoppler` prints every module's shapes):

    stage                                           output shape        skip stack
    timestep_embedding(t, 128) -> time_embedding    temb (B, 512)       (+ class_embedding(labels))
    conv_in                                         (B, 128, 32, 32)    push s0
    down_blocks.0  2 x (resnet, attention L=1024)   (B, 128, 32, 32)    push s1, s2
                   downsampler (stride-2 conv)      (B, 128, 16, 16)    push s3
    down_blocks.1  2 x (resnet, attention L=256)    (B, 256, 16, 16)    push s4, s5
                   downsampler                      (B, 256, 8, 8)      push s6
    down_blocks.2  2 x (resnet, attention L=64)     (B, 512, 8, 8)      push s7, s8
    mid_block      resnet, attention, resnet        (B, 512, 8, 8)
    up_blocks.0    cat s8 (512): (B, 1024, 8, 8) -> resnet, attention -> (B, 512, 8, 8)
                   cat s7 (512): (B, 1024, 8, 8) -> ...               -> (B, 512, 8, 8)
                   cat s6 (256): (B, 768, 8, 8)  -> ...               -> (B, 512, 8, 8)
                   upsampler (nearest 2x, conv) -> (B, 512, 16, 16)
    up_blocks.1    cat s5 (256): (B, 768, 16, 16)  -> (B, 256, 16, 16)
                   cat s4 (256): (B, 512, 16, 16)  -> (B, 256, 16, 16)
                   cat s3 (128): (B, 384, 16, 16)  -> (B, 256, 16, 16);  upsampler -> (B, 256, 32, 32)
    up_blocks.2    cat s2 (128): (B, 384, 32, 32)  -> (B, 128, 32, 32)
                   cat s1 (128): (B, 256, 32, 32)  -> (B, 128, 32, 32)
                   cat s0 (128): (B, 256, 32, 32)  -> (B, 128, 32, 32)
    conv_norm_out, SiLU, conv_out                   (B, 4, 32, 32)

The skips form a stack: the down path pushes (conv_in's output, every resnet/attention output, every downsampled
map), the up path pops from the top, so each skip meets the up-path features of the same resolution. Every
attention's queries are the L = H*W positions of its level; its cross-attention keys are the S = 4 context tokens.

Shape legend: B batch, C channels, H W height width, L = H*W tokens, S context tokens, D context width,
T time-embedding width (4 * block_out_channels[0]). Module names equal diffusers' UNet2DConditionModel keys.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldm.convert import unet_config_to_diffusers, unet_values_from_diffusers
from ldm.io import PretrainedMixin
from ldm.layers import (Downsample2D, ResnetBlock2D, TimestepEmbedding, Upsample2D, check_class_labels, check_context,
                        check_image_batch, check_timestep_argument, checkpointed, timestep_embedding)
from ldm.transformer import Transformer2D

# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class UNetConfig:
    """Everything that decides the UNet's shape and numbers. The defaults are Stable Diffusion 1.5's.

    Per-level fields have one entry per resolution level, highest resolution first (the order of
    ``block_out_channels``); an int or bool is repeated for every level. There are len(block_out_channels)-1
    downsamplings. The up path mirrors the down path level by level, with one resnet more per level.
    """

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int | tuple[int, int] | None = 64   # the latent size trained at; forward accepts any H, W
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: tuple[int, ...] | int = 2      # resnets per level going down (going up: one more)
    down_attention: tuple[bool, ...] | bool = (True, True, True, False)   # a Transformer2D after each resnet?
    up_attention: tuple[bool, ...] | bool | None = None                  # None: the same as down_attention
    mid_block: str | None = "cross_attention"        # resnet-attention-resnet; "resnet": one resnet; None: skip it
    num_heads: tuple[int, ...] | int = 8             # attention heads per level; the mid block uses the last entry
    transformer_layers_per_block: tuple[int, ...] | int = 1   # BasicTransformerBlocks in each Transformer2D
    cross_attention_dim: int = 768                   # width D of the context tokens
    use_linear_projection: bool = False              # Transformer2D proj_in/out: Linear (SD 2.x) or 1x1 conv (1.x)
    only_cross_attention: bool = False               # down/up attn1 attends to the context too (not the mid block)
    # No effect: diffusers' default attention, F.scaled_dot_product_attention (which we use too), ignores it.
    # Kept so SD 2.1 configs round-trip.
    upcast_attention: bool = False
    num_class_embeds: int | None = None              # class (user) count; embeddings are added to the time embedding
    norm_num_groups: int = 32
    norm_eps: float = 1e-5                           # resnets and conv_norm_out (the transformers hard-code theirs)
    resnet_time_scale_shift: str = "default"         # or "scale_shift": norm2(h) * (1 + scale) + shift
    dropout: float = 0.0
    flip_sin_to_cos: bool = True                     # timestep features as [cos, sin] (SD) instead of [sin, cos]
    freq_shift: int = 0                              # frequencies exp(-ln(1e4) * i / (half - freq_shift))
    downsample_padding: int = 1                      # 1: symmetric, ceil(H/2); 0: pad bottom/right, floor(H/2)
    mid_block_scale_factor: float = 1.0              # mid-block resnet outputs are divided by this

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        n = len(self.block_out_channels)
        if n == 0:
            raise ValueError("UNetConfig.block_out_channels must name at least one level")
        if self.up_attention is None:
            self.up_attention = self.down_attention
        for name in ("layers_per_block", "down_attention", "up_attention", "num_heads", "transformer_layers_per_block"):
            value = getattr(self, name)
            value = (value,) * n if isinstance(value, (int, bool)) else tuple(value)
            if len(value) != n:
                raise ValueError(f"UNetConfig.{name} has {len(value)} entries, block_out_channels has {n} levels")
            setattr(self, name, value)
        for name in ("layers_per_block", "transformer_layers_per_block"):
            if any(not isinstance(v, int) or v < 1 for v in getattr(self, name)):
                raise ValueError(f"UNetConfig.{name} must hold positive ints, got {getattr(self, name)}")
        if isinstance(self.sample_size, list):
            self.sample_size = tuple(self.sample_size)

        for name in ("in_channels", "out_channels", "cross_attention_dim", "norm_num_groups"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if any(w % self.norm_num_groups for w in self.block_out_channels):
            raise ValueError(f"UNetConfig.block_out_channels {self.block_out_channels} must all be divisible by "
                             f"norm_num_groups={self.norm_num_groups}")
        attended = [lvl for lvl in range(n) if self.down_attention[lvl] or self.up_attention[lvl]]
        if self.mid_block == "cross_attention":
            attended.append(n - 1)
        for lvl in attended:
            width, heads = self.block_out_channels[lvl], self.num_heads[lvl]
            if heads < 1 or width % heads:
                raise ValueError(f"UNetConfig.num_heads: level {lvl} has {width} channels, which cannot be split "
                                 f"into {heads} heads")
        if self.mid_block not in ("cross_attention", "resnet", None):
            raise ValueError(f"UNetConfig.mid_block must be 'cross_attention', 'resnet' or None, "
                             f"got {self.mid_block!r}")
        if self.resnet_time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"UNetConfig.resnet_time_scale_shift must be 'default' or 'scale_shift', "
                             f"got {self.resnet_time_scale_shift!r}")
        if self.num_class_embeds is not None and self.num_class_embeds < 1:
            raise ValueError(f"UNetConfig.num_class_embeds must be None or positive, got {self.num_class_embeds}")
        if self.downsample_padding not in (0, 1):
            raise ValueError(f"UNetConfig.downsample_padding must be 0 or 1, got {self.downsample_padding}")

    @property
    def time_embed_dim(self) -> int:
        """T: width of the time embedding that every resnet receives."""
        return 4 * self.block_out_channels[0]

    @property
    def head_dims(self) -> tuple[int, ...]:
        """Channels per attention head at each level."""
        return tuple(w // h for w, h in zip(self.block_out_channels, self.num_heads))

    @property
    def has_cross_attention(self) -> bool:
        return any(self.down_attention) or any(self.up_attention) or self.mid_block == "cross_attention"

    @classmethod
    def preset(cls, name: str) -> "UNetConfig":
        """A named configuration: one of ``UNET_PRESETS``."""
        if name not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}; expected one of {sorted(UNET_PRESETS)}")
        return dataclasses.replace(UNET_PRESETS[name])

    # ---- diffusers config.json (the translation lives with the key tables, in ldm/convert.py) -------------------

    @classmethod
    def from_diffusers(cls, mapping: dict) -> "UNetConfig":
        """Build from a diffusers ``UNet2DConditionModel`` config mapping (the contents of its config.json).

        Missing keys take diffusers' defaults (which are not SD 1.5's: cross_attention_dim 1280). Keys starting
        with "_" are informational and ignored. A key that would change the computation but is not supported
        raises ValueError naming it.
        """
        return cls(**unet_values_from_diffusers(mapping))

    def to_diffusers(self) -> dict:
        """The diffusers ``UNet2DConditionModel`` config mapping (without ``_class_name`` / ``_diffusers_version``)."""
        return unet_config_to_diffusers(self)


UNET_PRESETS = {
    # Stable Diffusion 1.x (CLIP ViT-L/14 text, 64x64x4 latents): 859.5M parameters, 8 heads at every level.
    "sd15": UNetConfig(),
    # Stable Diffusion 2.1 768-v (OpenCLIP ViT-H/14 text, 96x96x4 latents, v-prediction): 865.9M parameters,
    # heads of 64 channels, Linear projections in the transformers.
    "sd2": UNetConfig(sample_size=96, cross_attention_dim=1024, num_heads=(5, 10, 20, 20),
                      use_linear_projection=True, upcast_attention=True),
    # 256x256 micro-Doppler spectrograms -> 32x32x4 latents (the microdoppler VAE, f = 8). Three levels
    # (32, 16, 8 pixels) with attention at all of them, as the LDM paper's f8 models on 32x32 latents; heads of 32
    # channels; the user ID as cross-attention tokens of width 768 plus a class embedding of 64 rows: up to 63
    # users and the null ID (raise num_class_embeds for larger cohorts). 104.0M parameters, 1/8 of SD 1.5.
    "microdoppler": UNetConfig(sample_size=32, block_out_channels=(128, 256, 512), down_attention=True,
                               num_heads=(4, 8, 16), use_linear_projection=True, num_class_embeds=64),
    # For tests and CPU demos: two levels, 16x16 inputs, 0.8M parameters.
    "tiny": UNetConfig(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                       down_attention=(True, False), num_heads=4, cross_attention_dim=32, norm_num_groups=8),
}


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------


def _resnet(config: UNetConfig, in_channels: int, out_channels: int, output_scale_factor: float = 1.0):
    return ResnetBlock2D(in_channels, out_channels, config.time_embed_dim, config.norm_num_groups, config.norm_eps,
                         config.dropout, config.resnet_time_scale_shift, output_scale_factor)


def _transformer(config: UNetConfig, level: int, only_cross_attention: bool = False):
    return Transformer2D(config.block_out_channels[level], config.num_heads[level], config.cross_attention_dim,
                         config.transformer_layers_per_block[level], config.norm_num_groups,
                         config.use_linear_projection, only_cross_attention, config.dropout)


def _run(module: nn.Module, *args, checkpoint: bool):
    """``module(*args)``; with ``checkpoint``, its activations are recomputed in backward instead of stored."""
    return checkpointed(module, *args) if checkpoint else module(*args)


class DownBlock(nn.Module):
    """One level of the down path: ``layers_per_block`` x (resnet[, Transformer2D]), then a stride-2 downsampling
    (except at the last level). Pushes every resnet/attention output and the downsampled map onto the skip stack.

    diffusers' CrossAttnDownBlock2D (with attention) and DownBlock2D (without) in one class: same keys.
    """

    def __init__(self, config: UNetConfig, level: int):
        super().__init__()
        widths = config.block_out_channels
        in_channels, out_channels = widths[max(level - 1, 0)], widths[level]
        num_layers = config.layers_per_block[level]
        self.resnets = nn.ModuleList([_resnet(config, in_channels if j == 0 else out_channels, out_channels)
                                      for j in range(num_layers)])
        self.attentions = None
        if config.down_attention[level]:
            self.attentions = nn.ModuleList([_transformer(config, level, config.only_cross_attention)
                                             for _ in range(num_layers)])
        self.downsamplers = None
        if level < len(widths) - 1:
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=config.downsample_padding)])
        self.gradient_checkpointing = False

    def forward(self, x, temb, context, self_mask, context_mask, skips: list[torch.Tensor]) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, C, H/2, W/2) (ceil), pushing layers_per_block (+1) skips."""
        ckpt = self.gradient_checkpointing
        for j, resnet in enumerate(self.resnets):
            x = _run(resnet, x, temb, checkpoint=ckpt)                 # (B, Cin, H, W) -> (B, C, H, W)
            if self.attentions is not None:
                x = _run(self.attentions[j], x, context, self_mask, context_mask, checkpoint=ckpt)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)                                    # -> (B, C, H/2, W/2)
            skips.append(x)
        return x


class MidBlock(nn.Module):
    """The bottleneck, at the lowest resolution: resnet, Transformer2D, resnet (diffusers' UNetMidBlock2DCrossAttn),
    or a single resnet (diffusers' UNetMidBlock2D as its UNet builds it). Its resnets divide their output by
    ``mid_block_scale_factor``.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        width = config.block_out_channels[-1]
        attention = config.mid_block == "cross_attention"
        self.resnets = nn.ModuleList([_resnet(config, width, width, config.mid_block_scale_factor)
                                      for _ in range(2 if attention else 1)])
        # diffusers never passes only_cross_attention to this block
        self.attentions = nn.ModuleList([_transformer(config, len(config.block_out_channels) - 1)] if attention else [])
        self.gradient_checkpointing = False

    def forward(self, x, temb, context, self_mask, context_mask) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        ckpt = self.gradient_checkpointing
        x = _run(self.resnets[0], x, temb, checkpoint=ckpt)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = _run(attention, x, context, self_mask, context_mask, checkpoint=ckpt)
            x = _run(resnet, x, temb, checkpoint=ckpt)
        return x


class UpBlock(nn.Module):
    """One level of the up path: ``layers_per_block + 1`` x (concatenate a popped skip, resnet[, Transformer2D]),
    then a nearest-neighbour 2x upsampling (except at the top level).

    diffusers' CrossAttnUpBlock2D (with attention) and UpBlock2D (without) in one class: same keys.
    """

    def __init__(self, config: UNetConfig, level: int):
        super().__init__()
        widths = config.block_out_channels
        out_channels = widths[level]
        below_channels = widths[min(level + 1, len(widths) - 1)]   # what the level below (or the mid block) hands up
        above_channels = widths[max(level - 1, 0)]                  # the last skip: the level above's downsampled map
        num_layers = config.layers_per_block[level] + 1
        self.resnets = nn.ModuleList([
            _resnet(config, (below_channels if j == 0 else out_channels)
                    + (above_channels if j == num_layers - 1 else out_channels), out_channels)
            for j in range(num_layers)
        ])
        self.attentions = None
        if config.up_attention[level]:
            self.attentions = nn.ModuleList([_transformer(config, level, config.only_cross_attention)
                                             for _ in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if level > 0 else None
        self.gradient_checkpointing = False

    def forward(self, x, temb, context, self_mask, context_mask, skips: list[torch.Tensor]) -> torch.Tensor:
        """x: (B, Cbelow, H, W) -> (B, C, H', W') with H', W' the size of the next skip, popping layers_per_block+1."""
        ckpt = self.gradient_checkpointing
        for j, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)                         # (B, Cx + Cs, H, W): features, then skip
            x = _run(resnet, x, temb, checkpoint=ckpt)                 # -> (B, C, H, W)
            if self.attentions is not None:
                x = _run(self.attentions[j], x, context, self_mask, context_mask, checkpoint=ckpt)
        if self.upsamplers is not None:
            # Upsample to exactly the next skip's size: the down path halved with ceil, so 2H can be one too many.
            # (diffusers passes the size only for such inputs; for nearest 2x both give identical values.)
            x = self.upsamplers[0](x, skips[-1].shape[-2:])                # -> (B, C, ~2H, ~2W)
        return x


# ----------------------------------------------------------------------------------------------------------------
# The UNet
# ----------------------------------------------------------------------------------------------------------------


class UNet2DConditionModel(PretrainedMixin, nn.Module):
    """The latent-diffusion UNet: predicts noise from noisy latents, a timestep, a context and optional class labels.

    State-dict keys equal diffusers' ``UNet2DConditionModel``, so its weights load with ``strict=True``.
    ``enable_gradient_checkpointing()`` recomputes resnet and attention activations in backward (same numbers).
    """

    config_class = UNetConfig

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config = config or UNetConfig()
        widths, n = config.block_out_channels, len(config.block_out_channels)
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], config.time_embed_dim)
        self.class_embedding = None
        if config.num_class_embeds is not None:
            self.class_embedding = nn.Embedding(config.num_class_embeds, config.time_embed_dim)
        self.down_blocks = nn.ModuleList([DownBlock(config, level) for level in range(n)])
        self.mid_block = MidBlock(config) if config.mid_block is not None else None
        self.up_blocks = nn.ModuleList([UpBlock(config, level) for level in reversed(range(n))])
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, widths[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, kernel_size=3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the model output for noisy latents.

        Args:
            sample: (B, in_channels, H, W) noisy latents x_t; any H, W (the down path rounds halvings up).
            timestep: t in [0, num_train_timesteps), as a number, a 0-d tensor, or a (B,) / (1,) tensor; int or float.
            encoder_hidden_states: (B, S, cross_attention_dim) context tokens; required iff the model has attention.
            class_labels: (B,) integer labels in [0, num_class_embeds); required iff num_class_embeds is set.
            attention_mask: (B, H*W of the attention level) with 1 = keep, 0 = drop, applied to the self-attention;
                only usable when all attention runs at one resolution.
            encoder_attention_mask: (B, S) with 1 = keep, 0 = drop context tokens in the cross-attention.
        Returns: (B, out_channels, H, W).
        """
        self._check_inputs(sample, timestep, encoder_hidden_states, class_labels, attention_mask,
                           encoder_attention_mask)
        # Masks become additive biases, 0 to keep and -10000 (not -inf, as diffusers) to drop, shaped to broadcast
        # over heads and queries: (B, 1, 1, tokens).
        self_mask = context_mask = None
        if attention_mask is not None:
            self_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0)[:, None, None, :]
        if encoder_attention_mask is not None:
            context_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0)[:, None, None, :]
        context = encoder_hidden_states

        # 1. the conditioning vector every resnet receives
        temb = self._time_embedding(timestep, sample)                      # (B, T)
        if self.class_embedding is not None:
            temb = temb + self.class_embedding(class_labels).to(sample.dtype)   # + (B, T)

        # 2. down: every level pushes its skips
        x = self.conv_in(sample)                                           # (B, Cin, H, W) -> (B, C0, H, W)
        skips = [x]
        for block in self.down_blocks:
            x = block(x, temb, context, self_mask, context_mask, skips)  # -> (B, Ci, H/2^i, W/2^i)

        # 3. mid
        if self.mid_block is not None:
            x = self.mid_block(x, temb, context, self_mask, context_mask)  # (B, Cn, h, w)

        # 4. up: every level pops its skips
        for block in self.up_blocks:
            x = block(x, temb, context, self_mask, context_mask, skips)  # -> (B, Ci, H/2^i, W/2^i)

        # 5. out
        x = F.silu(self.conv_norm_out(x))
        return self.conv_out(x)                                            # (B, C0, H, W) -> (B, Cout, H, W)

    def enable_gradient_checkpointing(self, enabled: bool = True):
        """Recompute resnet and attention activations in backward instead of storing them (same numbers)."""
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            if block is not None:
                block.gradient_checkpointing = enabled

    def disable_gradient_checkpointing(self):
        self.enable_gradient_checkpointing(False)

    # ---- internals ------------------------------------------------------------------------------------------------

    def _time_embedding(self, timestep, sample: torch.Tensor) -> torch.Tensor:
        """timestep -> (B, T): sinusoidal features of width C0 (float32, then sample's dtype), then the MLP."""
        if not isinstance(timestep, torch.Tensor):   # as diffusers: int64 for ints, float64 for floats
            dtype = torch.int64 if isinstance(timestep, numbers.Integral) else torch.float64
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        timestep = timestep.reshape(-1).to(sample.device).expand(sample.shape[0])   # () or (1,) or (B,) -> (B,)
        features = timestep_embedding(timestep, self.config.block_out_channels[0],
                                      self.config.flip_sin_to_cos, self.config.freq_shift)
        return self.time_embedding(features.to(sample.dtype))             # (B, C0) -> (B, T)

    def _check_inputs(self, sample, timestep, context, class_labels, self_mask, context_mask):
        cfg = self.config
        check_image_batch(sample, cfg.in_channels, "sample", weight=self.conv_in.weight)
        batch = sample.shape[0]
        check_timestep_argument(timestep, batch)
        check_context(context, context_mask, batch, cfg.cross_attention_dim if cfg.has_cross_attention else None,
                      self.conv_in.weight)
        if self_mask is not None and (self_mask.ndim != 2 or self_mask.shape[0] != batch
                                      or not cfg.has_cross_attention):
            raise ValueError(f"attention_mask must have shape ({batch}, H*W of the attention level) and needs a UNet "
                             f"with attention, got shape {tuple(self_mask.shape)}")
        check_class_labels(class_labels, batch, cfg.num_class_embeds)
