"""Opt-in speed devices for ldm's models, kept out of the model files (as gpt-fast keeps its speed outside its model).

    from ldm import fast
    fast.optimize(unet)      # in place, returns the model; vae, vq and ConditionedUNet work the same way
    fast.restore(unet)       # back to the plain classes

The model files (``ldm/layers.py``, ``ldm/transformer.py``, ``ldm/unet.py``, ``ldm/vae.py``, ``ldm/vq.py``) compute
every block the plain way, as diffusers does: ``q = self.to_q(x)``, ``h = x + h``, ``F.silu(h)``. ``optimize`` swaps
the class of each block it knows for a subclass below whose ``forward`` computes the same numbers with less work.
A subclass adds no parameter or buffer, so the state dict, its keys and ``load_state_dict`` are unchanged, and
``restore`` swaps the classes back. On the CPU in float32 the outputs equal the plain path's bit for bit
(tests/test_fast_paths.py checks both paths against diffusers). Call ``optimize`` before ``torch.compile``,
FSDP's ``fully_shard`` or ``.to(memory_format=...)``-dependent captures: those wrap or record the classes they see.

What each device buys, and what it costs (the numbers are in the README's benchmark section):

1. Fused projections (``FastAttention``). Self-attention computes q, k and v as ONE matmul of x with the three
   weights stacked, cross-attention k and v as one matmul of the context: one pass over the input instead of three,
   and fewer kernel launches (on a GPU, where the host only queues kernels, launches are what an eager UNet call
   waits on). Each output element is the same dot product, so the values do not change. Cost: the stacked weights
   are a second copy (in Stable Diffusion 1.5, 56M values: 6.6% of the UNet), rebuilt when a weight changes (its
   storage or its version counter, which ``.to()``, an optimizer step and ``load_state_dict`` move) and restacked
   at every call under torch.compile and CUDA-graph capture. Under autograd the projections run separately, as in
   the plain path, so gradients are bit-equal too.
2. In-place arithmetic (``FastResnetBlock2D``, ``FastBasicTransformerBlock``, ``FastTransformer2D``,
   ``FastGEGLU``): residuals are added into the fresh output of the last Linear or conv (whose backward does not
   read it), and, when no gradient flows, SiLU overwrites the normalised map it activates and GEGLU multiplies into
   its GELU (their backward would need the inputs). Each saves an allocation the size of the activation (on the
   CPU, fresh pages the kernel must fault in). Divisions by an output scale of 1.0 (every Stable Diffusion config) are skipped.
3. Channels-last pass-through (``FastTransformer2D``): a (B, C, H, W) map stored as (B, H, W, C) stays so through
   the transformer, so the reshapes to and from tokens are free views and the next convolutions keep their NHWC
   kernels. Use it with ``model.to(memory_format=torch.channels_last)`` and channels-last inputs.
4. Dropout is not called in eval mode (one Python call per attention).

Two devices of earlier versions are gone rather than moved here, because measurement showed no gain worth a
reader's time: the SiLU of the time embedding computed once per UNet call instead of once per resnet, and a
per-device cache of the sinusoidal frequencies (together 26 tiny kernels per call; a CUDA graph, ``ldm/cuda_graph.py``,
removes all launch costs at once).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ldm.layers import GEGLU, Attention, ResnetBlock2D
from ldm.transformer import BasicTransformerBlock, Transformer2D


def optimize(model: nn.Module) -> nn.Module:
    """Swap every block of ``model`` that has a fast variant to it, in place; returns ``model``."""
    for module in model.modules():
        fast_class = _FAST.get(type(module))
        if fast_class is not None:
            module.__class__ = fast_class
            if isinstance(module, FastAttention):
                module._fused = FusedWeightCache()
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo ``optimize``: every fast block gets its plain class back (and drops its cached weights)."""
    plain = {fast: base for base, fast in _FAST.items()}
    for module in model.modules():
        if type(module) in plain:
            module.__dict__.pop("_fused", None)
            module.__class__ = plain[type(module)]
    return model


def is_optimized(model: nn.Module) -> bool:
    """True if any block of ``model`` runs a fast variant."""
    return any(type(m) in _FAST.values() for m in model.modules())


def _add_into(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, written into ``fresh`` when dtypes and shapes agree (else the out-of-place sum, which
    promotes and broadcasts). Float addition is commutative, so the values equal ``other + fresh``. ``fresh`` must be
    a new activation that no backward reads (a Linear, conv or dropout output; autograd's version check would catch
    a mistake)."""
    if fresh.dtype != other.dtype or fresh.shape != other.shape:
        return fresh + other
    return fresh.add_(other)


def _silu_into(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a freshly computed tensor nobody else reads: in place when no gradient flows through it (backward of
    SiLU needs its input)."""
    return F.silu(x, inplace=not x.requires_grad)


# ----------------------------------------------------------------------------------------------------------------
# Residual block
# ----------------------------------------------------------------------------------------------------------------


class FastResnetBlock2D(ResnetBlock2D):
    """ResnetBlock2D with in-place SiLUs and residual, and no division by an output scale of 1.0."""

    def forward(self, x, temb=None, zq=None):
        h = self.norm1(x, zq) if self.spatial else self.norm1(x)
        h = self.conv1(_silu_into(h))

        scale_shift = None
        if self.time_emb_proj is not None and temb is not None:
            emb = self.time_emb_proj(F.silu(temb))[:, :, None, None]     # temb is shared by every resnet: no in-place
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
        h = self.conv2(self.dropout(_silu_into(h)))

        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x.contiguous() if self.training else x)    # as the plain block (and diffusers)
        h = _add_into(h, x)
        return h if self.output_scale_factor == 1.0 else h / self.output_scale_factor


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


class FastAttention(Attention):
    """Attention with the q/k/v projections as one matmul (cached stacked weights) and an in-place residual."""

    _fused: "FusedWeightCache"

    def forward(self, x, context=None, mask=None, zq=None):
        residual = x
        if self.spatial_norm is not None:
            x = self.spatial_norm(x, zq)
        image_shape = x.shape if x.ndim == 4 else None
        if image_shape is not None:
            x = rearrange(x, "b c h w -> b (h w) c")                      # (B, C, H, W) -> (B, L, C)
        if self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
        if context is None:
            q, k, v = self._fused_linear(x, self.to_q, self.to_k, self.to_v)          # 3 x (B, L, nh*hd)
        else:
            q = self.to_q(x)                                                          # (B, L, nh*hd)
            k, v = self._fused_linear(context, self.to_k, self.to_v)                  # 2 x (B, S, nh*hd)
        # view/transpose instead of einops: the UNet splits heads 4 x 32 times per call, and on a GPU einops' parsing
        # showed in the timings
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, nh, L or S, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                 # (B, nh, L, hd)
        out = self.to_out[0](out.transpose(1, 2).flatten(2))                          # (B, L, C)
        if self.training:
            out = self.to_out[1](out)
        if image_shape is not None:
            b, c, h, w = image_shape
            out = out.transpose(1, 2).reshape(b, c, h, w)                             # (B, C, H, W)
        if self.residual:
            out = _add_into(out, residual)
        return out if self.rescale_output_factor == 1.0 else out / self.rescale_output_factor

    def _fused_linear(self, x: torch.Tensor, *linears: nn.Linear) -> tuple[torch.Tensor, ...]:
        """linears[0](x), linears[1](x), ... as ONE matmul with the weights stacked. x: (B, L, C) -> n x (B, L, out).

        Under autograd the Linears run one by one: the input gradient of a stacked matmul sums the three products
        inside one kernel, which rounds differently from the plain path's three matmuls and a sum."""
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for m in linears
                                                                for p in m.parameters())):
            return tuple(linear(x) for linear in linears)
        weight, bias = self._fused.get(linears)                                       # (n*out, C), (n*out,)
        return F.linear(x, weight, bias).chunk(len(linears), dim=-1)


class FusedWeightCache:
    """The concatenated weights (and biases) of several Linears, rebuilt only when one of them has changed.

    The stacked tensors are kept until a weight gets a new storage (``.to()``) or a new version (an optimizer step,
    ``load_state_dict``, any in-place change); both are in the cache key. While torch.compile traces (which fuses
    the copy itself) and while a CUDA graph is captured, the weights are stacked afresh at every call, so graph
    replays follow in-place weight changes.
    """

    def __init__(self):
        self.key, self.tensors = None, None

    def get(self, linears) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = [p for m in linears for p in (m.weight, m.bias) if p is not None]
        if torch.compiler.is_compiling() or (params[0].is_cuda and torch.cuda.is_current_stream_capturing()):
            return _stack(linears)
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if key != self.key:
            self.tensors, self.key = None, None   # drop the old copy before making the new one
            with torch.no_grad(), torch.inference_mode(False):   # a normal tensor, usable outside inference_mode too
                self.tensors = _stack(linears)
            self.key = key
        return self.tensors


def _stack(linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([m.weight for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
    return weight, bias


# ----------------------------------------------------------------------------------------------------------------
# Transformer
# ----------------------------------------------------------------------------------------------------------------


class FastGEGLU(GEGLU):
    """GEGLU whose product is written into the GELU's output when no gradient flows."""

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        if value.requires_grad:
            return value * F.gelu(gate)
        return F.gelu(gate).mul_(value)


class FastBasicTransformerBlock(BasicTransformerBlock):
    """BasicTransformerBlock whose residuals are added into each sublayer's fresh output."""

    def forward(self, x, context, self_mask=None, context_mask=None):
        x = _add_into(self.attn1(self.norm1(x), context if self.only_cross_attention else None, self_mask), x)
        x = _add_into(self.attn2(self.norm2(x), context, context_mask), x)
        return _add_into(self.ff(self.norm3(x)), x)


class FastTransformer2D(Transformer2D):
    """Transformer2D that keeps a channels-last input channels-last, with an in-place residual."""

    def forward(self, x, context, self_mask=None, context_mask=None):
        b, c, h, w = x.shape
        residual = x
        # stored (B, H, W, C) and not also plainly contiguous (C = 1 or H = W = 1)?
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        layout = torch.channels_last if channels_last else torch.contiguous_format
        x = self.norm(x)
        if self.use_linear_projection:
            x = self.proj_in(x.permute(0, 2, 3, 1).reshape(b, h * w, c))                 # (B, L, C)
        else:
            x = self.proj_in(x).permute(0, 2, 3, 1).reshape(b, h * w, c)                 # (B, L, C)
        if self_mask is not None and self_mask.shape[-1] != h * w:
            raise ValueError(f"attention_mask has {self_mask.shape[-1]} entries per sample, but the self-attention "
                             f"at this {h}x{w} level attends over {h * w} tokens")
        for block in self.transformer_blocks:
            x = block(x, context, self_mask, context_mask)
        if self.use_linear_projection:
            x = self.proj_out(x).reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=layout)
        else:
            x = self.proj_out(x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=layout))
        return _add_into(x, residual)


_FAST: dict[type, type] = {
    ResnetBlock2D: FastResnetBlock2D,
    Attention: FastAttention,
    GEGLU: FastGEGLU,
    BasicTransformerBlock: FastBasicTransformerBlock,
    Transformer2D: FastTransformer2D,
}
