"""The spatial transformer of the latent-diffusion UNet (Rombach et al. 2022, section 3.3 and appendix E.2.1).

A ``Transformer2D`` turns a feature map into tokens, lets every token attend to the other tokens and to a
conditioning context (text embeddings in Stable Diffusion, a user-ID embedding in the micro-Doppler setting),
and turns the tokens back into a feature map that is added to its input:

    x (B, C, H, W) -> GroupNorm -> proj_in -> tokens (B, L, C)
                   -> BasicTransformerBlock x num_layers:  self-attention, cross-attention to context, GEGLU MLP
                   -> proj_out -> (B, C, H, W) + x

Module names equal diffusers' ``Transformer2DModel`` / ``BasicTransformerBlock`` state-dict keys.

Shape legend: B batch, C channels, H W height width, L = H*W tokens, S context tokens, D context width,
nh heads, hd head dim (C = nh * hd).
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.layers import Attention, FeedForward

# Both norms below are hard-coded in diffusers and do NOT follow the UNet's norm_eps (1e-5 for its resnets):
TRANSFORMER_GROUPNORM_EPS = 1e-6   # Transformer2D.norm, before proj_in
TRANSFORMER_LAYERNORM_EPS = 1e-5   # BasicTransformerBlock.norm1/2/3


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block on tokens: self-attention, cross-attention, feed-forward, each with a residual.

        x = x + attn1(LayerNorm(x))             tokens attend to each other (or to the context, only_cross_attention)
        x = x + attn2(LayerNorm(x), context)    tokens attend to the S context tokens
        x = x + ff(LayerNorm(x))                GEGLU MLP of width 4*C

    q/k/v projections have no bias; the output projections do (diffusers' ``attention_bias=False``).

    Args:
        dim: token width C.
        num_heads, head_dim: nh and hd, with nh * hd = C.
        context_dim: width D of the context tokens.
        only_cross_attention: attn1 attends to the context too (no self-attention at all).
        dropout: after each attention's output projection and inside the MLP.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, context_dim: int,
                 only_cross_attention: bool = False, dropout: float = 0.0):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim, eps=TRANSFORMER_LAYERNORM_EPS)
        self.attn1 = Attention(dim, context_dim if only_cross_attention else None, num_heads, head_dim,
                               bias=False, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=TRANSFORMER_LAYERNORM_EPS)
        self.attn2 = Attention(dim, context_dim, num_heads, head_dim, bias=False, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim, eps=TRANSFORMER_LAYERNORM_EPS)
        self.ff = FeedForward(dim, mult=4, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, self_mask: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, L, C); context: (B, S, D); masks: additive biases broadcastable to (B, nh, L, L) and
        (B, nh, L, S). Returns (B, L, C)."""
        x = self.attn1(self.norm1(x), context if self.only_cross_attention else None, self_mask) + x
        x = self.attn2(self.norm2(x), context, context_mask) + x            # (B, L, C), keys from (B, S, D)
        return self.ff(self.norm3(x)) + x


class Transformer2D(nn.Module):
    """GroupNorm, project to tokens, ``num_layers`` BasicTransformerBlocks, project back, add the input.

    ``use_linear_projection`` picks Linear projections on tokens (Stable Diffusion 2.x) instead of 1x1 convolutions
    on the feature map (1.x). The two compute the same function; they differ in weight shape ([C, C] vs
    [C, C, 1, 1]) and in where the reshape to tokens happens.

    Args:
        channels: C; split into ``num_heads`` heads of C // num_heads channels.
        context_dim: width D of the context tokens.
        norm_groups: GroupNorm groups (the UNet's norm_num_groups).
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int, num_layers: int = 1, norm_groups: int = 32,
                 use_linear_projection: bool = False, only_cross_attention: bool = False, dropout: float = 0.0):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"Transformer2D: {channels} channels cannot be split into {num_heads} heads")
        head_dim = channels // num_heads
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_groups, channels, eps=TRANSFORMER_GROUPNORM_EPS, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(channels, num_heads, head_dim, context_dim, only_cross_attention, dropout)
            for _ in range(num_layers)
        ])
        if use_linear_projection:
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, self_mask: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W); context: (B, S, D); masks as in BasicTransformerBlock. Returns (B, C, H, W).

        The permute/reshape/contiguous calls below are diffusers' own, on purpose: on CPU a convolution picks its
        kernel by the input's memory layout, so another (equivalent) reshape changes the last bits of the result.
        """
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if self.use_linear_projection:
            x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)                 # (B, C, H, W) -> (B, L, C)
            x = self.proj_in(x)
        else:
            x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)                 # (B, C, H, W) -> (B, L, C)

        if self_mask is not None and self_mask.shape[-1] != h * w:
            raise ValueError(f"attention_mask has {self_mask.shape[-1]} entries per sample, but the self-attention "
                             f"at this {h}x{w} level attends over {h * w} tokens")
        for block in self.transformer_blocks:
            x = block(x, context, self_mask, context_mask)                 # (B, L, C)

        if self.use_linear_projection:
            x = self.proj_out(x)
            x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()   # -> (B, C, H, W)
        else:
            x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()   # -> (B, C, H, W)
            x = self.proj_out(x)
        return x + residual
