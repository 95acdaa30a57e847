"""Building blocks shared by the autoencoders (ldm.vae, ldm.vq) and the UNet (ldm.unet).

Every attribute name below reproduces a diffusers state-dict key (``norm1``, ``conv1``, ``to_out.0``,
``ff.net.0.proj``, ``downsamplers.0.conv``), so diffusers weights load with ``strict=True``.
The arithmetic follows diffusers 0.42 step for step, because floating-point results depend on op order.

Shape legend: B batch, C channels, H W height width, L = H*W tokens, S context tokens,
nh heads, hd head dim, D context width, T time-embedding width.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn


# ----------------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------------


class SpatialNorm(nn.Module):
    """GroupNorm whose scale and shift are predicted per pixel from the quantized latents (MoVQ, Zheng et al. 2022).

    Used only by the VQ decoder with ``norm_type="spatial"``: ``out = GN(f) * conv_y(zq) + conv_b(zq)``,
    with ``zq`` resized (nearest) to the feature map. diffusers hard-codes 32 groups and eps 1e-6.
    """

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, channels, kernel_size=1)
        self.conv_b = nn.Conv2d(zq_channels, channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")  # (B, Cz, h, w) -> (B, Cz, H, W)
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


# ----------------------------------------------------------------------------------------------------------------
# Residual block
# ----------------------------------------------------------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    """Pre-activation residual block: GN, SiLU, conv3x3, (+ time embedding), GN, SiLU, dropout, conv3x3, + skip.

    Args:
        in_channels, out_channels: channel counts; a 1x1 ``conv_shortcut`` is added when they differ
            (the original LDM code calls it ``nin_shortcut`` in the VAE and ``skip_connection`` in the UNet).
        temb_channels: width T of the time embedding, or None for no time input (the autoencoders).
        groups, eps: GroupNorm groups and epsilon. The VAE uses eps 1e-6, the UNet 1e-5.
        time_embedding_norm: "default" adds the projected embedding after conv1; "scale_shift" projects it to
            2*out channels and applies ``norm2(h) * (1 + scale) + shift`` (FiLM, as in Dhariwal & Nichol 2021).
        output_scale_factor: the sum is divided by this (1 in every Stable Diffusion config).
        spatial_norm_channels: if set, both norms are ``SpatialNorm`` conditioned on quantized latents with this
            many channels (the VQ decoder's ``norm_type="spatial"``); then ``forward`` takes ``zq`` and there is
            no time embedding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        temb_channels: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,                  # the VAE's GroupNorm eps; the UNet passes its norm_eps (1e-5)
        dropout: float = 0.0,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
        spatial_norm_channels: int | None = None,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"time_embedding_norm must be 'default' or 'scale_shift', got {time_embedding_norm!r}")
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.spatial = spatial_norm_channels is not None

        if self.spatial:
            self.norm1 = SpatialNorm(in_channels, spatial_norm_channels)
        else:
            self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        if temb_channels is not None and not self.spatial:
            proj_channels = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = nn.Linear(temb_channels, proj_channels)
        else:
            self.time_emb_proj = None
        if self.spatial:
            self.norm2 = SpatialNorm(out_channels, spatial_norm_channels)
        else:
            self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None,
                zq: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, Cin, H, W); temb: time embedding (B, T) or None; zq: (B, Cz, h, w) for spatial norms.
        Returns (B, Cout, H, W)."""
        # One operation per line, each result replacing the last: as in diffusers, so the same tensors are alive at
        # each step (on the CPU, holding one more feature map than needed showed as 8% slower encodes at 256x256).
        h = self.norm1(x, zq) if self.spatial else self.norm1(x)
        h = F.silu(h)
        h = self.conv1(h)                                                # (B, Cin, H, W) -> (B, Cout, H, W)

        scale_shift = None
        if self.time_emb_proj is not None and temb is not None:
            emb = self.time_emb_proj(F.silu(temb))[:, :, None, None]     # (B, T) -> (B, Cout or 2*Cout, 1, 1)
            if self.time_embedding_norm == "scale_shift":
                scale_shift = emb.chunk(2, dim=1)
            else:
                h = h + emb

        if self.spatial:
            h = self.norm2(h, zq)
        elif scale_shift is not None:
            scale, shift = scale_shift
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h)
        h = F.silu(h)
        h = self.dropout(h)
        h = self.conv2(h)

        if self.conv_shortcut is not None:
            # diffusers makes x contiguous in training only; a CPU conv picks its kernel by strides, so we do the same
            x = x.contiguous() if self.training else x
            x = self.conv_shortcut(x)                                    # (B, Cin, H, W) -> (B, Cout, H, W)
        return (x + h) / self.output_scale_factor


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017): self-attention, or cross-attention to a context.

    ``softmax(q k^T / sqrt(hd)) v`` is computed by ``F.scaled_dot_product_attention``, which picks a fused kernel
    (flash / memory-efficient) when one applies. This is also what diffusers' default processor does, so results
    are bit-identical on CPU in float32. SDPA always uses the 1/sqrt(hd) scale and computes the softmax in a
    numerically safe way, which is why diffusers' ``upcast_attention`` / ``upcast_softmax`` flags change nothing
    on this path and are not arguments here.

    Args:
        query_dim: channels C of the input.
        context_dim: width D of the context for cross-attention; None for self-attention.
        heads, head_dim: nh and hd; the inner width is nh*hd.
        bias: bias on to_q/to_k/to_v (the VAE's attention has it, the UNet's does not).
        norm_groups, norm_eps: if set, GroupNorm the input before the projections (the VAE mid block).
        spatial_norm_channels: if set, SpatialNorm the input on quantized latents instead (VQ spatial decoder).
        residual: add the input to the output (the VAE mid block).
        rescale_output_factor: the output is divided by this.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        head_dim: int = 64,
        bias: bool = False,
        out_bias: bool = True,
        dropout: float = 0.0,
        norm_groups: int | None = None,
        norm_eps: float = 1e-5,             # diffusers' Attention default; the VAE mid block passes its 1e-6
        spatial_norm_channels: int | None = None,
        residual: bool = False,
        rescale_output_factor: float = 1.0,
    ):
        super().__init__()
        inner_dim = heads * head_dim
        self.heads = heads
        self.residual = residual
        self.rescale_output_factor = rescale_output_factor

        self.group_norm = nn.GroupNorm(norm_groups, query_dim, eps=norm_eps, affine=True) if norm_groups else None
        self.spatial_norm = SpatialNorm(query_dim, spatial_norm_channels) if spatial_norm_channels else None
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner_dim, bias=bias)
        # diffusers keeps the output projection in a list with a dropout, so its key is `to_out.0`.
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=out_bias), nn.Dropout(dropout)])

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        zq: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from x to the context (or to x itself).

        Args:
            x: (B, C, H, W) feature map or (B, L, C) tokens.
            context: (B, S, D) tokens to attend to, or None for self-attention.
            mask: additive float bias broadcastable to (B, nh, L, S): 0 keeps a key, a large negative value drops it.
            zq: (B, Cz, h, w) quantized latents, only with a spatial norm.
        Returns: a tensor shaped like x.
        """
        residual = x
        if self.spatial_norm is not None:
            x = self.spatial_norm(x, zq)
        image_shape = x.shape if x.ndim == 4 else None
        if image_shape is not None:
            x = rearrange(x, "b c h w -> b (h w) c")                     # (B, C, H, W) -> (B, L, C)
        if self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)        # normalise over channels, keep (B, L, C)
        context = x if context is None else context

        q = self.to_q(x)                                                  # (B, L, C) -> (B, L, nh*hd)
        k = self.to_k(context)                                            # (B, S, D) -> (B, S, nh*hd)
        v = self.to_v(context)                                            # (B, S, D) -> (B, S, nh*hd)
        q, k, v = (rearrange(t, "b l (nh hd) -> b nh l hd", nh=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)     # (B, nh, L, hd)
        out = rearrange(out, "b nh l hd -> b l (nh hd)")                  # -> (B, L, nh*hd)
        out = self.to_out[0](out)                                         # -> (B, L, C)
        out = self.to_out[1](out)                                         # dropout

        if image_shape is not None:
            b, c, h, w = image_shape
            # transpose + reshape (not einops) to get diffusers' exact strides: the next conv picks its kernel by them
            out = out.transpose(1, 2).reshape(b, c, h, w)                 # (B, L, C) -> (B, C, H, W)
        if self.residual:
            out = out + residual
        return out / self.rescale_output_factor


# ----------------------------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------------------------


class Downsample2D(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution.

    ``padding=1`` (the UNet) pads symmetrically: output ceil(H/2). ``padding=0`` (the VAE encoder) first pads one
    zero row/column on the bottom/right only, as the original LDM code does: output floor(H/2).
    """

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)      # (B, C, H, W) -> (B, C, H+1, W+1)
        return self.conv(x)                                              # -> (B, C', H/2, W/2)


class Upsample2D(nn.Module):
    """Double H and W (or reach ``output_size``) by nearest-neighbour interpolation, then a 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        # legacy "nearest" (not "nearest-exact"), as in diffusers and the LDM code
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")      # (B, C, H, W) -> (B, C, 2H, 2W)
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")      # (B, C, H, W) -> (B, C, *output_size)
        return self.conv(x)


# ----------------------------------------------------------------------------------------------------------------
# Middle block (the bottleneck of the autoencoders, and the UNet's mid block without cross-attention)
# ----------------------------------------------------------------------------------------------------------------


class MidBlock2D(nn.Module):
    """resnet, then ``num_layers`` times (single-head self-attention, resnet), all at the same resolution.

    In the autoencoders the attention has one head whose dim is the full channel count C, Linear q/k/v/out
    with bias, GroupNorm before the projections and a residual connection (the LDM ``AttnBlock``).
    ``attentions`` holds None where ``add_attention`` is False, matching diffusers (no keys).
    """

    def __init__(
        self,
        channels: int,
        temb_channels: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,                  # the VAE's GroupNorm eps (this block is the VAE's mid block)
        num_layers: int = 1,
        add_attention: bool = True,
        time_embedding_norm: str = "default",
        spatial_norm_channels: int | None = None,
    ):
        super().__init__()

        def resnet():
            return ResnetBlock2D(channels, channels, temb_channels, groups, eps,
                                 time_embedding_norm=time_embedding_norm, spatial_norm_channels=spatial_norm_channels)

        def attention():
            if not add_attention:
                return None
            return Attention(channels, heads=1, head_dim=channels, bias=True, residual=True,
                             norm_groups=None if spatial_norm_channels else groups, norm_eps=eps,
                             spatial_norm_channels=spatial_norm_channels)

        self.attentions = nn.ModuleList([attention() for _ in range(num_layers)])
        self.resnets = nn.ModuleList([resnet() for _ in range(num_layers + 1)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None,
                zq: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); temb: the time embedding (B, T) or None."""
        x = self.resnets[0](x, temb, zq)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            if attn is not None:
                x = attn(x, zq=zq)
            x = resnet(x, temb, zq)
        return x


# ----------------------------------------------------------------------------------------------------------------
# Time embedding
# ----------------------------------------------------------------------------------------------------------------


def timestep_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017, section 3.5).

    With half = dim // 2, frequency i is ``exp(-ln(max_period) * i / (half - freq_shift))`` for i in [0, half),
    and the embedding is ``[sin(t*f), cos(t*f)]`` (or ``[cos, sin]`` with ``flip_sin_to_cos``, as Stable
    Diffusion uses). Float32 throughout, with the frequencies computed in exactly diffusers' op order (regrouping
    the exponent changes values by up to 6e-5).

    Args:
        timesteps: (B,) integer or float timesteps.
        dim: output width; odd widths get one zero column.
    Returns: (B, dim) float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))                    # (half,)
    angles = timesteps[:, None].float() * freqs[None, :]                 # (B, 1) * (1, half) -> (B, half)
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)   # (B, 2*half)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """The MLP after the sinusoidal features: Linear, SiLU, Linear (keys ``linear_1``, ``linear_2``)."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))                  # (B, Cin) -> (B, T)


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward
# ----------------------------------------------------------------------------------------------------------------


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): one Linear to 2*inner, split into value and gate, ``value * gelu(gate)``."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)                      # (B, L, C) -> 2 x (B, L, inner)
        return value * F.gelu(gate)                                      # exact (erf) GELU, as diffusers


class FeedForward(nn.Module):
    """The transformer MLP: GEGLU to ``mult*dim``, dropout, Linear back to dim.

    diffusers keeps the three in one list, so the keys are ``net.0.proj`` and ``net.2``.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)                                                 # (B, L, C) -> (B, L, inner) -> (B, L, C)
        return x


# ----------------------------------------------------------------------------------------------------------------
# Gradient checkpointing
# ----------------------------------------------------------------------------------------------------------------


def checkpointed(module: nn.Module, *args):
    """Run ``module(*args)`` without keeping its activations when gradients are on; recompute them in backward.

    Numerically identical to a plain call. Inactive under ``torch.no_grad()``.
    """
    if not torch.is_grad_enabled():
        return module(*args)
    return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------


def check_indices(indices: torch.Tensor, low: int, high: int, what: str) -> None:
    """ValueError unless every entry of the integer tensor ``indices`` lies in [low, high]; never syncs with a GPU.

    On the CPU the offending values are read and named. On a GPU (or inside torch.compile) reading them back would
    stall the host until the GPU has caught up (and break a compiled graph or a CUDA-graph capture), so the check runs
    on the device instead and fails the next CUDA call with a device-side assertion if any entry is out of range.
    """
    out_of_range = (indices < low) | (indices > high)
    if indices.device.type == "cpu" and not torch.compiler.is_compiling():
        if out_of_range.any():
            raise ValueError(f"{what} must lie in [{low}, {high}], got {indices[out_of_range].tolist()}")
    else:
        torch._assert_async(~out_of_range.any(), f"{what} must lie in [{low}, {high}]")


def check_image_batch(x: torch.Tensor, channels: int, name: str, multiple: int = 1,
                      weight: torch.Tensor | None = None) -> None:
    """A clear ValueError unless x is a floating (B, channels, H, W) tensor with H and W multiples of ``multiple``
    (and, given the ``weight`` it meets first, of that weight's dtype and device, unless autocast is on)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have 4 dims (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels, the config expects {channels} "
                         f"(shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"{name} height and width {tuple(x.shape[2:])} must be multiples of the downsampling "
                         f"factor {multiple} (2**(len(block_out_channels)-1))")
    if weight is not None:
        check_matches_weights(x, weight, name)


def check_matches_weights(x: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    """ValueError unless x has the dtype and device of the model weight it meets first (autocast casts for itself)."""
    if x.device != weight.device and not weight.is_meta:
        raise ValueError(f"{name} is on {x.device}, the model on {weight.device}; move one with .to()")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"{name} is {x.dtype}, the model's weights are {weight.dtype}; convert the input with "
                         f".to({weight.dtype}) or the model with .to({x.dtype})")


def check_timesteps(timesteps: torch.Tensor, what: str = "timestep") -> None:
    """ValueError unless every timestep is finite and >= 0; like check_indices, never syncs with a GPU."""
    bad = (timesteps < 0) | ~torch.isfinite(timesteps)
    if timesteps.device.type == "cpu" and not torch.compiler.is_compiling():
        if bad.any():
            raise ValueError(f"{what} must be finite and >= 0, got {timesteps[bad].tolist()}")
    else:
        torch._assert_async(~bad.any(), f"{what} must be finite and >= 0")


def check_timestep_argument(timestep, batch: int) -> None:
    """ValueError unless ``timestep`` is a number >= 0, a 0-d tensor or a (batch,) tensor of finite values >= 0."""
    if isinstance(timestep, torch.Tensor):
        if timestep.ndim > 1 or timestep.numel() not in (1, batch):
            raise ValueError(f"timestep must be a number, a 0-d tensor or a ({batch},) tensor, got "
                             f"{tuple(timestep.shape)}")
        if timestep.is_complex() or timestep.dtype == torch.bool:
            raise ValueError(f"timestep must be an integer or float tensor, got {timestep.dtype}")
        check_timesteps(timestep)   # no GPU sync
    elif not isinstance(timestep, numbers.Real) or isinstance(timestep, bool):
        raise ValueError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
    elif not (math.isfinite(timestep) and timestep >= 0):
        raise ValueError(f"timestep must be finite and >= 0, got {timestep}")


def check_context(context: torch.Tensor | None, mask: torch.Tensor | None, batch: int, width: int | None,
                  weight: torch.Tensor) -> None:
    """ValueError unless cross-attention ``context`` is (batch, S, width) like ``weight`` (None when ``width`` is
    None: no cross-attention) and its ``mask`` (optional) is (batch, S)."""
    if width is not None and context is None:
        raise ValueError(f"encoder_hidden_states is required: this UNet cross-attends to context tokens of "
                         f"shape (B, S, {width})")
    if width is None and context is not None:
        raise ValueError("encoder_hidden_states were given, but this UNet has no cross-attention to use them")
    if context is None:
        if mask is not None:
            raise ValueError("encoder_attention_mask was given without encoder_hidden_states")
        return
    if context.ndim != 3:
        raise ValueError(f"encoder_hidden_states must have 3 dims (B, S, D), got shape {tuple(context.shape)}")
    if context.shape[0] != batch:
        raise ValueError(f"encoder_hidden_states has batch size {context.shape[0]}, sample has {batch}")
    if context.shape[2] != width:
        raise ValueError(f"encoder_hidden_states has width {context.shape[2]}, the config expects "
                         f"cross_attention_dim={width}")
    check_matches_weights(context, weight, "encoder_hidden_states")
    if mask is not None and tuple(mask.shape) != tuple(context.shape[:2]):
        raise ValueError(f"encoder_attention_mask must have shape {tuple(context.shape[:2])} (B, S of "
                         f"encoder_hidden_states), got {tuple(mask.shape)}")


def check_class_labels(labels: torch.Tensor | None, batch: int, num_classes: int | None) -> None:
    """ValueError unless ``labels`` is a (batch,) integer tensor in [0, num_classes) (None when num_classes is
    None: no class embedding)."""
    if num_classes is None:
        if labels is not None:
            raise ValueError("class_labels were given, but this UNet has no class embedding "
                             "(set num_class_embeds in its config to train one)")
        return
    if labels is None:
        raise ValueError(f"class_labels are required: this UNet embeds {num_classes} classes")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"class_labels must be an integer tensor, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"class_labels must have shape ({batch},), got {tuple(labels.shape)}")
    check_indices(labels, 0, num_classes - 1, "class_labels")   # no GPU sync


# ----------------------------------------------------------------------------------------------------------------
# Randomness
# ----------------------------------------------------------------------------------------------------------------


def randn_tensor(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn exactly as diffusers' randn_tensor draws it: on the generator's device
    (a CPU generator feeding a GPU tensor draws on the CPU, then moves), and with a list of B generators one
    (1, ...) draw per batch element. generator: None, a torch.Generator, or a list of them."""
    device = torch.device(device or "cpu")
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator: a list needs one generator per batch element ({shape[0]}), "
                             f"got {len(generator)}")
        return torch.cat([randn_tensor((1, *shape[1:]), g, device, dtype) for g in generator])
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)
