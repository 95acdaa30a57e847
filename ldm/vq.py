"""VQModel: the vector-quantised alternative to the KL autoencoder for stage 1 of latent diffusion
(van den Oord et al. 2017, "Neural Discrete Representation Learning"; Esser et al. 2021, taming-transformers;
the "VQ-reg" autoencoders of Rombach et al. 2022, section 3.1).

The encoder and decoder are those of ldm.vae (the encoder without the doubled mean/log-variance output). In between,
every latent vector is replaced by its nearest entry of a learned codebook of K vectors. Diffusion runs on the
continuous pre-quantization latents h; ``decode`` snaps them to the codebook before decoding (as the LDM code does).

Shapes for the LDM VQ-f4 config (preset "ldm_vq_f4") and one 256x256 RGB image, f = 4:

    stage                                shape
    x                                    (1, 3, 256, 256)
    encoder (3 levels, mid attention)    (1, 3, 64, 64)     conv_out: Cz = latent_channels
    quant_conv -> h = encode(x)          (1, 3, 64, 64)     D = vq_embed_dim channels
    quantize: indices                    (4096,)            one code of K = 8192 per latent pixel (B*h*w)
    quantize: z_q                        (1, 3, 64, 64)     codebook rows, with straight-through gradients
    post_quant_conv, decoder.conv_in     (1, 512, 64, 64)
    decoder (mid block, 3 levels)        (1, 128, 256, 256)
    decoder.conv_out                     (1, 3, 256, 256)

Shape legend: B batch, C channels, H W height width, Cz latent channels, D code dim, h w latent height width,
N = B*h*w latent vectors, K codebook size. Module names equal diffusers' VQModel state-dict keys.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ldm.convert import DIFFUSERS_VQ_DEFAULTS as _DIFFUSERS_VQ_DEFAULTS
from ldm.convert import autoencoder_values_from_diffusers
from ldm.io import PretrainedMixin
from ldm.layers import check_image_batch
from ldm.vae import Decoder, Encoder, LatentScaling

# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VQConfig:
    """Everything that decides the VQModel's shape and numbers, plus the quantizer's training options.

    ``vq_embed_dim`` (D) is the code width; None means ``latent_channels``. ``norm_type="spatial"`` gives the MoVQ
    decoder (Zheng et al. 2022), whose norms are modulated by the quantized latents; it needs D == latent_channels
    and widths divisible by 32 (SpatialNorm hard-codes 32 groups). ``scaling_factor`` is not used by the model:
    latents are multiplied by it before diffusion (LDM paper, section 4.3.2); None means "measure it on the data".

    The fields after ``force_upcast`` are not diffusers config keys: they only change training, never the
    outputs of a trained model in eval mode, and ``to_diffusers()`` leaves them out. Their defaults reproduce
    diffusers (beta 0.25, legacy loss placement, codebook learned by the loss, no codebook maintenance).
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    num_vq_embeddings: int = 8192             # K
    vq_embed_dim: int | None = None           # D; None: latent_channels
    norm_type: str = "group"                  # "group" or "spatial" (decoder only)
    sample_size: int | tuple[int, int] = 256  # N or (H, W) trained at; informational (VQModel has no tiling)
    scaling_factor: float | None = 1.0
    lookup_from_codebook: bool = False        # decode(h, force_not_quantize=True) reads h as code indices
    force_upcast: bool = False                # kept only so a diffusers config round-trips
    # ---- training options (see VectorQuantizer) ----
    beta: float = 0.25
    legacy: bool = True
    ema_decay: float | None = None            # None: learn codes by the codebook loss; e.g. 0.99: by EMA
    kmeans_init_iters: int = 0                # > 0: k-means initialisation of the codebook on the first batch
    usage_window: int = 100                   # a code unused for this many training batches is dead
    dead_code_restart: bool = False

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        if isinstance(self.sample_size, (list, tuple)):
            self.sample_size = tuple(self.sample_size)
            if self.sample_size[0] == self.sample_size[-1]:
                self.sample_size = self.sample_size[0]                   # square: one int, as diffusers writes it
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
                     "num_vq_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VQConfig.{name} must be a positive int, got {value!r}")
        if not self.block_out_channels:
            raise ValueError("VQConfig.block_out_channels must name at least one level")
        if any(width % self.norm_num_groups for width in self.block_out_channels):
            raise ValueError(f"VQConfig.block_out_channels {self.block_out_channels} must all be divisible by "
                             f"norm_num_groups={self.norm_num_groups}")
        if self.vq_embed_dim is not None and (not isinstance(self.vq_embed_dim, int) or self.vq_embed_dim < 1):
            raise ValueError(f"VQConfig.vq_embed_dim must be a positive int or None, got {self.vq_embed_dim!r}")
        if self.norm_type not in ("group", "spatial"):
            raise ValueError(f"VQConfig.norm_type must be 'group' or 'spatial', got {self.norm_type!r}")
        if self.norm_type == "spatial":
            if self.embed_dim != self.latent_channels:
                raise ValueError(f"norm_type='spatial' conditions the decoder on the quantized latents, so "
                                 f"vq_embed_dim ({self.vq_embed_dim}) must equal latent_channels "
                                 f"({self.latent_channels})")
            if any(width % 32 for width in self.block_out_channels):
                raise ValueError(f"norm_type='spatial' uses GroupNorm with 32 groups: block_out_channels "
                                 f"{self.block_out_channels} must all be divisible by 32")
        _check_quantizer_options(self.beta, self.ema_decay, self.kmeans_init_iters, self.usage_window)

    @property
    def embed_dim(self) -> int:
        """D: the width of a codebook vector."""
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels

    @property
    def downsample_factor(self) -> int:
        """f: how many image pixels one latent pixel covers along each side."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def preset(cls, name: str) -> "VQConfig":
        """A named configuration: one of ``VQ_PRESETS``."""
        if name not in VQ_PRESETS:
            raise ValueError(f"unknown VQ preset {name!r}; expected one of {sorted(VQ_PRESETS)}")
        return dataclasses.replace(VQ_PRESETS[name])

    @classmethod
    def from_diffusers(cls, mapping: dict) -> "VQConfig":
        """Build from a diffusers ``VQModel`` config mapping (the contents of its config.json).

        Missing keys take diffusers' defaults. Keys starting with "_" are informational and ignored; any other
        key diffusers' VQModel does not have, or a value ldm.vq does not implement, raises ValueError naming it.
        """
        return cls(**autoencoder_values_from_diffusers(mapping, _DIFFUSERS_VQ_DEFAULTS, "VQModel"))

    def to_diffusers(self) -> dict:
        """The diffusers ``VQModel`` config mapping (without ``_class_name``; without the training options)."""
        values = {key: getattr(self, key) for key in _DIFFUSERS_VQ_DEFAULTS if hasattr(self, key)}
        n = len(self.block_out_channels)
        values.update(block_out_channels=list(self.block_out_channels), act_fn="silu",
                      down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n)
        return values


def _check_quantizer_options(beta: float, ema_decay: float | None, kmeans_init_iters: int, usage_window: int):
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be None (codebook loss) or in (0, 1), got {ema_decay!r}")
    if not isinstance(kmeans_init_iters, int) or kmeans_init_iters < 0:
        raise ValueError(f"kmeans_init_iters must be an int >= 0, got {kmeans_init_iters!r}")
    if not isinstance(usage_window, int) or usage_window < 1:
        raise ValueError(f"usage_window must be a positive int (training batches), got {usage_window!r}")


VQ_PRESETS = {
    # CompVis LDM VQ-f4 (first_stage_models/vq-f4; ldm-celebahq-256, LDM super-resolution): 64x64x3 latents,
    # 8192 codes. scaling_factor 1.0: configs/latent-diffusion/celebahq-ldm-vq-4.yaml sets no scale_factor, so
    # LatentDiffusion's default 1.0 applied (a diffusers config.json without the key would get 0.18215).
    "ldm_vq_f4": VQConfig(),
    # 256x256 single-channel spectrograms -> 32x32x4 latents (f = 8): the widths and latent shape of the KL preset
    # VAEConfig.preset("microdoppler"), so the two stage-1 models and the same UNet can be compared directly.
    "microdoppler": VQConfig(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(64, 128, 256, 256),
                             num_vq_embeddings=1024, sample_size=256, scaling_factor=None),
    # For tests and CPU demos: f = 2, 64 codes.
    "tiny": VQConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, num_vq_embeddings=64,
                     sample_size=32),
}


# ----------------------------------------------------------------------------------------------------------------
# The quantizer
# ----------------------------------------------------------------------------------------------------------------


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantisation with a straight-through gradient (van den Oord et al. 2017).

    Each latent vector z (a pixel of (B, D, h, w)) is replaced by its nearest codebook row e_k,
    k = argmin_j ||z - e_j|| (``torch.cdist`` then ``argmin``: diffusers' distances and tie-breaking, lowest index
    wins). The output is ``z + sg(e_k - z)`` (sg = stop-gradient): the value of e_k, the gradient of z.

    The loss is ``a * mean((sg(e_k) - z)^2) + b * mean((e_k - sg(z))^2)``: the first (commitment) term pulls the
    encoder towards its codes, the second (codebook) term pulls the codes towards the encoder outputs. The paper
    (eq. 3) has a = beta, b = 1. taming-transformers' VectorQuantizer2, copied into the LDM code and diffusers,
    put beta on the wrong term: a = 1, b = beta. ``legacy=True`` keeps that historical bug (diffusers' default, and
    the weighting the taming/CompVis VQ checkpoints were trained with); ``legacy=False`` is the paper. The value is
    ``(1 + beta) * mse`` either way; only the gradients differ.

    Training options (all off by default, so outputs equal diffusers'; they run only in training mode):
        ema_decay: learn the codes by exponential moving averages instead of the codebook loss (van den Oord
            et al. 2017, appendix A.1; the VQ-VAE-2 recipe, Razavi et al. 2019). The loss is then
            ``beta * commitment`` alone (``legacy`` does not apply) and the codebook gets no gradient
            (its ``requires_grad`` is False).
        kmeans_init_iters: on the first training batch, set the codebook by k-means (this many Lloyd iterations)
            on the batch's vectors, so every code starts where the data is. Cancelled by loading a codebook.
        usage_window, dead_code_restart: a code no vector chose in the last ``usage_window`` training batches is
            dead; with ``dead_code_restart`` it is moved onto a random vector of the current batch.
    Usage statistics are kept in training mode: ``perplexity`` (of the last batch; K means every code equally
    used, 1 means collapse) and ``dead_fraction()``. These buffers are not saved, so the state dict stays exactly
    diffusers'; loading a codebook restarts them.
    Under DDP the codebook stays identical in every process when ``processes`` is set (train_vae.py sets it to
    ldm.training.CodebookSync() in each process): the code counts and vector sums are summed over the processes
    before the statistics and the EMA use them (so the EMA sees the global batch, as one process would), and the
    codebook that k-means or a restart produces is taken from rank 0. None (the default): one process.

    Args:
        num_embeddings: K, the codebook size.
        embed_dim: D, the width of a code.
        beta: the weight of the legacy-dependent term above (0.25 in diffusers and the paper).
        sane_index_shape: return indices as (B, h, w) instead of diffusers' flat (B*h*w,).
    """

    def __init__(self, num_embeddings: int, embed_dim: int, beta: float = 0.25, legacy: bool = True,
                 sane_index_shape: bool = False, ema_decay: float | None = None, kmeans_init_iters: int = 0,
                 usage_window: int = 100, dead_code_restart: bool = False):
        super().__init__()
        _check_quantizer_options(beta, ema_decay, kmeans_init_iters, usage_window)
        self.num_embeddings, self.embed_dim = num_embeddings, embed_dim
        self.beta, self.legacy, self.sane_index_shape = beta, legacy, sane_index_shape
        self.ema_decay, self.kmeans_init_iters = ema_decay, kmeans_init_iters
        self.usage_window, self.dead_code_restart = usage_window, dead_code_restart
        self.embedding = nn.Embedding(num_embeddings, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)   # diffusers' init
        if ema_decay is not None:
            # learned by the EMA, never by a gradient (none reaches it): marked so, an optimizer leaves it alone and
            # DDP does not wait for its gradient (which it would report as an unused parameter)
            self.embedding.weight.requires_grad_(False)
        self.needs_kmeans_init = kmeans_init_iters > 0
        self.processes = None   # under DDP: what sums a tensor over the processes and copies rank 0's (see above)
        # training statistics, not in the state dict
        self.register_buffer("batches_unused", torch.zeros(num_embeddings, dtype=torch.long), persistent=False)
        self.register_buffer("cluster_size", torch.zeros(num_embeddings), persistent=False)   # EMA of counts, N
        self.register_buffer("perplexity", torch.tensor(float("nan")), persistent=False)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None):
        """z: (B, D, h, w) -> (z_q (B, D, h, w), loss (0-d), indices (B*h*w,) or (B, h, w) int64).

        ``generator`` drives the random choices of k-means initialisation and dead-code restart.
        """
        check_image_batch(z, self.embed_dim, "quantizer input z")
        b, _, h, w = z.shape
        z = z.permute(0, 2, 3, 1).contiguous()                           # (B, D, h, w) -> (B, h, w, D)
        z_flat = z.view(-1, self.embed_dim)                              # -> (N, D)
        if self.training and self.needs_kmeans_init:
            self._kmeans_init(z_flat.detach(), generator)
        with torch.no_grad():
            indices = torch.argmin(torch.cdist(z_flat, self.embedding.weight), dim=1)   # (N, K) -> (N,)
        z_q = self.embedding(indices).view(z.shape)                      # (N,) -> (B, h, w, D)

        if self.ema_decay is not None:                                   # the EMA moves the codes: commitment only
            loss = self.beta * torch.mean((z_q.detach() - z) ** 2)
        elif self.legacy:
            loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        else:
            loss = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)

        # straight-through; in floating point z + (e - z) is not bit-equal to e, and diffusers returns the former
        z_q = z + (z_q - z).detach()
        z_q = z_q.permute(0, 3, 1, 2).contiguous()                       # (B, h, w, D) -> (B, D, h, w)
        if self.training:
            self._update_codebook(z_flat.detach(), indices, generator)
        if self.sane_index_shape:
            indices = indices.view(b, h, w)                              # (N,) -> (B, h, w)
        return z_q, loss, indices

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """The codes of ``indices``: (B, h, w) -> (B, D, h, w); flat (N,) with diffusers' ``shape=(B, h, w, D)``
        -> (B, D, h, w); flat (N,) without shape -> (N, D)."""
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"code indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_embeddings):
            raise ValueError(f"code indices must lie in [0, {self.num_embeddings}), got values from "
                             f"{int(indices.min())} to {int(indices.max())}")
        if shape is None and indices.ndim == 3:
            shape = (*indices.shape, self.embed_dim)
        z_q = self.embedding(indices)                                    # (..., D)
        if shape is None:
            return z_q
        shape = tuple(shape)
        if len(shape) != 4 or shape[3] != self.embed_dim or shape[0] * shape[1] * shape[2] != indices.numel():
            raise ValueError(f"shape must be (B, h, w, D={self.embed_dim}) with B*h*w = {indices.numel()} "
                             f"indices, got {shape}")
        return z_q.view(shape).permute(0, 3, 1, 2).contiguous()          # (B, h, w, D) -> (B, D, h, w)

    def dead_fraction(self) -> torch.Tensor:
        """The fraction of codes no vector chose in the last ``usage_window`` training batches (0-d tensor)."""
        return (self.batches_unused >= self.usage_window).float().mean()

    # ---- codebook maintenance (training mode only) ----------------------------------------------------------------

    @torch.no_grad()
    def _update_codebook(self, z_flat: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None):
        counts = torch.bincount(indices, minlength=self.num_embeddings)  # n_k per code, (K,)
        if self.processes is not None:
            self.processes.sum_(counts)                                  # over the global batch
        self.perplexity.copy_(_perplexity_from_counts(counts))
        self.batches_unused.add_(1).masked_fill_(counts > 0, 0)
        weight = self.embedding.weight
        if self.ema_decay is not None:
            # Appendix A.1: N <- g N + (1-g) n, m <- g m + (1-g) sum z, e = m / N. With m = N e this is
            # e <- e + (1-g) (sum z - n e) / N_new, which changes only codes with n > 0 (where N_new > 0), so
            # no Laplace smoothing is needed. N starts at 0: the first step moves a code to the mean of its vectors.
            g = self.ema_decay
            sums = torch.zeros_like(weight).index_add_(0, indices, z_flat.to(weight.dtype))      # (K, D)
            if self.processes is not None:
                self.processes.sum_(sums)
            counts = counts.to(weight.dtype)
            self.cluster_size.mul_(g).add_((1 - g) * counts)
            step = (1 - g) * (sums - counts[:, None] * weight) / self.cluster_size.clamp_min(1e-12)[:, None]
            weight.add_(step)
        if self.dead_code_restart:
            dead = self.batches_unused >= self.usage_window              # (K,)
            # a random batch vector for every code, kept where the code is dead (no host sync, no count needed)
            pick = _randint(z_flat.shape[0], self.num_embeddings, generator, z_flat.device)
            weight.copy_(torch.where(dead[:, None], z_flat[pick].to(weight.dtype), weight))
            if self.processes is not None:
                self.processes.copy_rank_0_(weight)                      # each process picked from its own batch
            self.batches_unused.masked_fill_(dead, 0)                    # a fresh window to be chosen
            self.cluster_size.masked_fill_(dead, 0.0)

    @torch.no_grad()
    def _kmeans_init(self, z_flat: torch.Tensor, generator: torch.Generator | None):
        """Lloyd's k-means on the batch vectors, from K distinct random ones (with repeats if N < K);
        a code no vector chooses keeps its place."""
        n, k = z_flat.shape[0], self.num_embeddings
        if n >= k:
            device = generator.device if generator is not None else z_flat.device
            pick = torch.randperm(n, generator=generator, device=device)[:k].to(z_flat.device)
        else:
            pick = _randint(n, k, generator, z_flat.device)
        centers = z_flat[pick].float()                                   # (K, D)
        for _ in range(self.kmeans_init_iters):
            assign = torch.argmin(torch.cdist(z_flat.float(), centers), dim=1)          # (N,)
            counts = torch.bincount(assign, minlength=k).float()
            sums = torch.zeros_like(centers).index_add_(0, assign, z_flat.float())
            centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], centers)
        self.embedding.weight.copy_(centers)
        if self.processes is not None:
            self.processes.copy_rank_0_(self.embedding.weight)           # each process clustered its own batch
        self.needs_kmeans_init = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        loaded = state_dict.get(prefix + "embedding.weight")
        if loaded is None:
            return
        self.needs_kmeans_init = False                                   # a loaded codebook is not re-initialised
        for name in ("batches_unused", "cluster_size"):                  # and its statistics start afresh
            stat = getattr(self, name)
            # a model built on the meta device (ldm.io) gets its statistics where the loaded codebook lives
            setattr(self, name, torch.zeros_like(stat, device=loaded.device if stat.is_meta else stat.device))
        self.perplexity = torch.full_like(self.perplexity, float("nan"), device=self.cluster_size.device)


def codebook_perplexity(indices: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """exp(entropy) of the code histogram of ``indices``: the effective number of codes in use, from 1 (one code)
    to K (all equally often). 0-d float tensor."""
    return _perplexity_from_counts(torch.bincount(indices.flatten(), minlength=num_embeddings))


def _perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-torch.sum(p * torch.log(p.clamp_min(1e-30))))      # 0 * log 0 counts as 0


def _randint(high: int, size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``size`` uniform indices in [0, high), drawn where the generator lives and moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.randint(high, (size,), generator=generator, device=draw_device).to(device)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class VQModel(LatentScaling, PretrainedMixin, nn.Module):
    """Vector-quantised autoencoder: ``encode`` gives continuous latents h, ``quantize`` snaps them to the
    codebook, ``decode`` maps (quantized) latents back to images. State-dict keys equal diffusers' ``VQModel``;
    ``from_pretrained`` / ``save_pretrained`` read and write diffusers model folders (see ldm.io)."""

    config_class = VQConfig

    def __init__(self, config: VQConfig | None = None):
        super().__init__()
        self.config = config = config or VQConfig()
        self.encoder = Encoder(config.in_channels, config.latent_channels, config.block_out_channels,
                               config.layers_per_block, config.norm_num_groups, config.mid_block_add_attention,
                               double_z=False)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.embed_dim, 1)
        self.quantize = VectorQuantizer(config.num_vq_embeddings, config.embed_dim, beta=config.beta,
                                        legacy=config.legacy, ema_decay=config.ema_decay,
                                        kmeans_init_iters=config.kmeans_init_iters,
                                        usage_window=config.usage_window, dead_code_restart=config.dead_code_restart)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, 1)
        self.decoder = Decoder(config.latent_channels, config.out_channels, config.block_out_channels,
                               config.layers_per_block, config.norm_num_groups, config.mid_block_add_attention,
                               norm_type=config.norm_type)

    @property
    def latent_channels(self) -> int:
        """D, the channels of the latents h that encode returns and decode quantizes (diffusion works on them)."""
        return self.config.embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) in [-1, 1], H and W multiples of f -> pre-quantization latents h (B, D, H/f, W/f)."""
        check_image_batch(x, self.config.in_channels, "x", self.config.downsample_factor, self.encoder.conv_in.weight)
        h = self.encoder(x)                                              # (B, Cin, H, W) -> (B, Cz, h, w)
        return self.quant_conv(h)                                        # -> (B, D, h, w)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False,
               shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Latents h (B, D, h, w) -> image (B, Cout, h*f, w*f), about [-1, 1].

        h is quantized first unless ``force_not_quantize``. With ``config.lookup_from_codebook`` and
        ``force_not_quantize``, h holds code indices instead and ``shape`` is (B, h, w, D) (diffusers' convention;
        ``decode_indices`` is the plain way to do this).
        """
        if force_not_quantize and self.config.lookup_from_codebook:
            return self._decode_codes(self.quantize.get_codebook_entry(h, shape))
        check_image_batch(h, self.config.embed_dim, "latents h", weight=self.post_quant_conv.weight)
        if not force_not_quantize:
            h, _, _ = self.quantize(h)                                   # (B, D, h, w), on the codebook
        return self._decode_codes(h)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) in [0, K) -> image (B, Cout, h*f, w*f): decodes the codebook rows themselves."""
        if indices.ndim != 3:
            raise ValueError(f"indices must have shape (B, h, w), got {tuple(indices.shape)}")
        return self._decode_codes(self.quantize.get_codebook_entry(indices))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruct x through the codebook. Returns (x_rec (B, Cout, H, W), vq loss (0-d), indices (B*h*w,))."""
        z_q, loss, indices = self.quantize(self.encode(x), generator=generator)
        return self._decode_codes(z_q), loss, indices

    def enable_gradient_checkpointing(self, enabled: bool = True):
        """Recompute encoder/decoder block activations in backward instead of storing them (same numbers)."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def _decode_codes(self, z_q: torch.Tensor) -> torch.Tensor:
        h = self.post_quant_conv(z_q)                                    # (B, D, h, w) -> (B, Cz, h, w)
        # the spatial (MoVQ) norms are conditioned on the codes before post_quant_conv, as in diffusers
        return self.decoder(h, z_q if self.config.norm_type == "spatial" else None)   # -> (B, Cout, H, W)
