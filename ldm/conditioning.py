"""User-ID conditioning for the latent-diffusion UNet, with a null ID for classifier-free guidance.

A user ID u in [0, U) (from the data's user-name -> ID map) reaches the UNet by one or both of two routes:

    route "cross"  UserIDEmbedder(u): a learned table of U + 1 rows, each num_tokens x D, read as S = num_tokens
                   context tokens of width D = the UNet's cross_attention_dim. Every Transformer2D cross-attends to
                   them (the way Stable Diffusion reads CLIP text tokens).
    route "class"  u as the UNet's class label: nn.Embedding(U + 1, T) added to the time embedding, so every resnet
                   is modulated by the user: its scale-and-shift (FiLM) route through every resnet's time input.
    route "both"   both at once (the default: identity is the weak signal in this domain, give it every path).

Row U (``null_id``) of both tables is the "no user" condition. Training replaces a fraction p_uncond of the IDs by
it, so one network learns p(x | u) and p(x); sampling with guidance scale w combines the two predictions
(Ho & Salimans 2022): pred = pred(x, null) + w * (pred(x, u) - pred(x, null)).

Why several tokens: with a single context token, the softmax over the S = 1 keys is identically 1, so each
cross-attention returns to_out(to_v(token)) whatever the query: a per-user constant bias, and to_q / to_k get
zero gradient. With num_tokens >= 2 the attention weights depend on the position (query) and the user, so
cross-attention can put different user features at different places of the spectrogram. The default is 4.
With the "class" route alone, the UNet's cross-attention (if it has any) reads the null ID's tokens for every
sample: a learned constant context that carries no user information.

``ldm.pipeline.Pipeline.generate`` samples images of chosen users this way and decodes them.

Shape legend: B batch, S = num_tokens context tokens, D context width, U users.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ldm.io import write_safetensors
from ldm.files import read_json, write_json
from ldm.layers import check_indices

ROUTES = ("cross", "class", "both")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class UserIDEmbedder(nn.Module):
    """A learned table of (num_users + 1) x num_tokens tokens of width dim; the last row is the null ID.

    Args:
        num_users: U, the number of users; IDs are 0..U-1 and U is the null ID.
        dim: D, the context width (the UNet's cross_attention_dim; 768 in the microdoppler preset).
        num_tokens: S, context tokens per user (see the module docstring for why more than one).
        route: "cross", "class" or "both": how ConditionedUNet feeds the ID to the UNet (stored with the weights).
        class_to_idx: the user-name -> ID map of the training data (stored with the weights; names for sample.py).
    """

    def __init__(self, num_users: int, dim: int = 768, num_tokens: int = 4, route: str = "both",
                 class_to_idx: dict[str, int] | None = None):
        super().__init__()
        if num_users < 1 or dim < 1 or num_tokens < 1:
            raise ValueError(f"UserIDEmbedder needs num_users, dim, num_tokens >= 1, got {num_users}, {dim}, "
                             f"{num_tokens}")
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        class_to_idx = dict(class_to_idx) if class_to_idx is not None else {str(i): i for i in range(num_users)}
        if sorted(class_to_idx.values()) != list(range(num_users)):
            raise ValueError(f"class_to_idx must number the {num_users} users 0..{num_users - 1}, got {class_to_idx}")
        self.num_users, self.dim, self.num_tokens, self.route = num_users, dim, num_tokens, route
        self.class_to_idx = class_to_idx
        # std 1/sqrt(D) keeps each token's norm near 1, like the layer-normed text tokens SD attends to
        self.embedding = nn.Parameter(torch.randn(num_users + 1, num_tokens, dim) * dim ** -0.5)

    @property
    def null_id(self) -> int:
        """The ID of "no user" (classifier-free guidance's unconditional branch)."""
        return self.num_users

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B,) integers in [0, U] (U = null) -> context tokens (B, S, D)."""
        if ids.ndim != 1 or ids.is_floating_point():
            raise ValueError(f"user IDs must be a (B,) integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}")
        check_indices(ids, 0, self.num_users, f"user IDs ({self.num_users} = null)")   # no GPU sync
        return self.embedding[ids]                                       # (B,) -> (B, S, D)

    def null_ids(self, batch: int, device=None) -> torch.Tensor:
        """(batch,) null IDs, the unconditional condition."""
        return torch.full((batch,), self.null_id, dtype=torch.long, device=device)

    def drop_ids(self, ids: torch.Tensor, p_uncond: float,
                 generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """Replace each ID by the null ID with probability p_uncond: draws (B,) uniforms on the CPU from generator, or
        one from each of a list of B generators (one per image)."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != ids.shape[0]:
                raise ValueError(f"drop_ids: {len(generator)} generators for {ids.shape[0]} IDs")
            uniforms = torch.cat([torch.rand(1, generator=g) for g in generator])
        else:
            uniforms = torch.rand(ids.shape[0], generator=generator)
        drop = uniforms < p_uncond                                                       # (B,) bool
        return torch.where(drop.to(ids.device), torch.full_like(ids, self.null_id), ids)

    # ---- weights in and out ---------------------------------------------------------------------------------------

    def config(self) -> dict:
        return {"_class_name": type(self).__name__, "num_users": self.num_users, "dim": self.dim,
                "num_tokens": self.num_tokens, "route": self.route, "class_to_idx": self.class_to_idx}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write path/config.json (sizes, route, user-name -> ID map) and path/model.safetensors."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors({"embedding": self.embedding.detach().float().cpu().contiguous()}, folder / WEIGHTS_NAME)
        write_json(self.config(), folder / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "UserIDEmbedder":
        """Read a folder written by save_pretrained; a clear error if a file is missing or does not fit."""
        from safetensors.torch import load_file
        folder = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing (not a UserIDEmbedder folder)")
        config = read_json(folder / CONFIG_NAME)
        known = {"num_users", "dim", "num_tokens", "route", "class_to_idx"}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"{folder / CONFIG_NAME}: unknown key(s) {unknown}")
        embedder = cls(**{k: v for k, v in config.items() if k in known})
        weights = load_file(str(folder / WEIGHTS_NAME))
        if set(weights) != {"embedding"} or weights["embedding"].shape != embedder.embedding.shape:
            raise ValueError(f"{folder / WEIGHTS_NAME}: expected one tensor 'embedding' of shape "
                             f"{tuple(embedder.embedding.shape)}, got "
                             f"{ {k: tuple(v.shape) for k, v in weights.items()} }")
        embedder.load_state_dict(weights, strict=True)
        return embedder.to(device) if device is not None else embedder


class ConditionedUNet(nn.Module):
    """The denoiser as the sampling loop and the loss call it: model(x_t, t, ids) -> UNet output.

    Holds the UNet and the UserIDEmbedder (so one optimizer, one EMA and one DDP wrapper cover both) and routes the
    IDs as the embedder's ``route`` says: tokens to encoder_hidden_states ("cross"), IDs to class_labels ("class"),
    or both. The UNet's num_class_embeds must be U + 1 for the class route (the null ID needs its own row) and
    None for "cross"; its cross_attention_dim must equal the embedder's dim.
    """

    def __init__(self, unet: nn.Module, embedder: UserIDEmbedder):
        super().__init__()
        check_compatible(unet.config, embedder)
        self.unet, self.embedder = unet, embedder

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x: (B, C, h, w) noisy latents, t: (B,) timesteps, ids: (B,) user IDs in [0, U] -> (B, C, h, w)."""
        route = self.embedder.route
        context = None
        if self.unet.config.has_cross_attention:
            # the class route alone gives every sample the null ID's tokens: a constant, user-free context
            context = self.embedder(ids if route != "class" else self.embedder.null_ids(len(ids), ids.device))
            context = context.to(x.dtype)                                # (B, S, D)
        labels = ids if route != "cross" else None                       # (B,) or None
        return self.unet(x, t, encoder_hidden_states=context, class_labels=labels)


def check_compatible(unet_config, embedder: UserIDEmbedder) -> None:
    """ValueError unless the UNet config can take the embedder's IDs by its route."""
    if unet_config.has_cross_attention and unet_config.cross_attention_dim != embedder.dim:
        raise ValueError(f"the UNet cross-attends to width {unet_config.cross_attention_dim}, the user-ID embedder "
                         f"gives width {embedder.dim}")
    if embedder.route == "cross" and not unet_config.has_cross_attention:
        raise ValueError("route 'cross' needs a UNet with cross-attention; this one has none (use --cond class)")
    wanted = None if embedder.route == "cross" else embedder.num_users + 1
    if unet_config.num_class_embeds != wanted:
        raise ValueError(f"route {embedder.route!r} with {embedder.num_users} users needs the UNet's "
                         f"num_class_embeds = {wanted} (users + the null ID), got {unet_config.num_class_embeds}")
