"""Few-shot enrolment: add new people to a trained pipeline from k spectrograms each, with the generator frozen.

A trained pipeline knows its U people through two learned tables (ldm/conditioning.py): the UserIDEmbedder's
cross-attention tokens, one (S, D) block per person, and the UNet's class embedding, one T-vector per person added
to the time embedding. Enrolment is textual inversion (Gal et al. 2023, "An Image is Worth One Word") on these
tables: for N new people it appends N rows to each table (the null ID moves to the last row, unchanged) and learns
only the new rows, by the diffusion loss on the VAE latents of the new people's k shots, with the VAE, the UNet and
the old rows frozen:

    rows* = argmin_rows  E_{i, eps, t} || eps - eps_theta(z_t(x_i, eps), t, u_i; rows) ||^2      (DDPM, Eq. (14))
    x_i: a shot of new person u_i;  z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps,  z_0 = the scaled VAE latent of x_i

The new rows start at the mean of the old people's rows (an "average person"), so the first samples of a new person
look like the training population and the optimisation moves them towards the shots. Old people's samples are
unchanged: their rows, the null row and every UNet and VAE weight are copied bit for bit.

Optionally (``lora_rank > 0``) a low-rank adapter W + B A (Hu et al. 2022) on the key and value projections of
every cross-attention, the layers that read the ID tokens (as Custom Diffusion, Kumari et al. 2023, fine-tunes them),
trains with the rows and is merged into those weights. It gives the new people more freedom, at a price: the merged
weights serve every person, so old people's samples change too, and the base weights are no longer bit-identical.

The new pipeline records which files enrolled each person (Pipeline.provenance["enrolled"]), so that an evaluation
can refuse a generator that saw more of a scored person than the scored method may (ldm.pipeline.check_provenance).

    from ldm.enrollment import EnrollConfig, enroll
    new = enroll(base, {"eve": shots}, {"eve": ["eve/0001.npy", ...]}, EnrollConfig(steps=300))
    new.generate(new.user_ids("eve"), num=16)

Shape legend: N new people, k shots each, S tokens per person, D token width, T time-embedding width.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from ldm.conditioning import ConditionedUNet, UserIDEmbedder
from ldm.diffusion_loss import diffusion_loss
from ldm.pipeline import Pipeline, file_record
from ldm.vae import AutoencoderKL


@dataclass
class EnrollConfig:
    """How new people are learned. With the defaults, 8 people of the CPU demo's size (32x32 images, its tiny UNet,
    4 shots each) enrolled in 27.5 s on one thread of a busy 2-core machine (docs/enrollment.md)."""
    steps: int = 100            # optimizer steps, each on batch_size shots of all new people together
    lr: float = 2e-2            # AdamW learning rate of the new rows (and of the adapter)
    batch_size: int = 16        # shots per step, drawn without replacement, cycling through all shots
    lora_rank: int = 0          # 0 = off: only the new people's rows train; r > 0: a rank-r adapter on the
                                # cross-attention key/value projections, merged into them (changes old people too)
    seed: int = 0               # the shot order, the posterior noise, the diffusion noise and timesteps

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lora_rank < 0 or not self.lr > 0:
            raise ValueError(f"EnrollConfig needs steps >= 1, lr > 0, batch_size >= 1, lora_rank >= 0; got "
                             f"steps={self.steps}, lr={self.lr}, batch_size={self.batch_size}, "
                             f"lora_rank={self.lora_rank}")


def image_size(pipe: Pipeline) -> tuple[int, int]:
    """(H, W) of the images the pipeline makes: its latent size times the autoencoder's downsampling factor."""
    _, h, w = pipe.latent_shape
    factor = pipe.vae.config.downsample_factor
    return h * factor, w * factor


def check_shots(pipe: Pipeline, shots: dict[str, torch.Tensor], sources: dict[str, list[str]]) -> None:
    """One-line ValueErrors for shots enrol() cannot take: no people, a name the pipeline knows, shots of another
    shape or outside [-1, 1], a source list that does not name each shot's file once."""
    if not shots:
        raise ValueError("enroll needs at least one new person (shots is empty)")
    dtypes = {t.dtype for t in (*pipe.denoiser.parameters(), *pipe.vae.parameters())}
    if dtypes != {torch.float32}:
        raise ValueError(f"enroll trains in float32; this pipeline holds {sorted(map(str, dtypes))} weights (load it "
                         "without a dtype)")
    if set(shots) != set(sources):
        raise ValueError(f"shots and sources must name the same people; shots: {sorted(shots)}, sources: "
                         f"{sorted(sources)}")
    known = [name for name in shots if name in pipe.embedder.class_to_idx]
    if known:
        raise ValueError(f"{known[0]!r} is already a person of the base pipeline (its people: "
                         f"{', '.join(pipe.users)}); enrol new people under new names")
    height, width = image_size(pipe)
    channels = pipe.vae.config.in_channels
    for name, x in shots.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"a person's name must be a non-empty string without '/', got {name!r}")
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (channels, height, width):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"shots of {name!r}: expected (k, {channels}, {height}, {width}), the pipeline's image "
                             f"size, got {shape}")
        if len(x) < 1 or not x.is_floating_point() or not torch.isfinite(x).all() or x.abs().max() > 1 + 1e-4:
            raise ValueError(f"shots of {name!r}: expected at least one finite image in [-1, 1]")
        files = list(sources[name])
        if len(files) != len(x) or len(set(files)) != len(files):
            raise ValueError(f"sources of {name!r}: expected the {len(x)} distinct file names its shots came from, "
                             f"got {len(files)} ({len(set(files))} distinct)")


@torch.no_grad()
def latent_moments(vae: nn.Module, x: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (n, C, H, W) in [-1, 1] -> (mean, std), each (n, Cz, h, w): the KL posterior's, or for a VQ model the
    pre-quantization latents and zeros (train_ldm.py's encoding)."""
    device = next(vae.parameters()).device
    means, stds = [], []
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size].to(device)
        if isinstance(vae, AutoencoderKL):
            posterior = vae.encode(batch)
            means.append(posterior.mean.float())
            stds.append(posterior.std.float())
        else:
            h = vae.encode(batch).float()
            means.append(h)
            stds.append(torch.zeros_like(h))
    return torch.cat(means), torch.cat(stds)


def grown_denoiser(pipe: Pipeline, names: list[str]) -> ConditionedUNet:
    """A copy of the pipeline's denoiser whose tables have a row for each of ``names`` after the old people (IDs
    U..U+N-1), the null ID last; old rows, null row and every other weight copied exactly, new rows at the old
    people's mean."""
    old, unet = pipe.embedder, copy.deepcopy(pipe.unet)
    u, n = old.num_users, len(names)
    class_to_idx = {**old.class_to_idx, **{name: u + i for i, name in enumerate(names)}}
    embedder = UserIDEmbedder(u + n, old.dim, old.num_tokens, old.route, class_to_idx).to(old.embedding.device)
    with torch.no_grad():
        table = old.embedding.detach()                                               # (U + 1, S, D)
        embedder.embedding.copy_(torch.cat([table[:u], table[:u].mean(0, keepdim=True).expand(n, -1, -1),
                                            table[u:]]))                             # (U + N + 1, S, D)
        if unet.class_embedding is not None:
            rows = unet.class_embedding.weight.detach()                              # (U + 1, T)
            grown = nn.Embedding(u + n + 1, rows.shape[1]).to(rows.device, rows.dtype)
            grown.weight.copy_(torch.cat([rows[:u], rows[:u].mean(0, keepdim=True).expand(n, -1), rows[u:]]))
            unet.class_embedding = grown
            unet.config = dataclasses.replace(unet.config, num_class_embeds=u + n + 1)
    return ConditionedUNet(unet, embedder).eval().requires_grad_(False)


def cross_attention_projections(denoiser: ConditionedUNet) -> dict[str, torch.Tensor]:
    """{state-dict name: weight} of the key and value projections of every cross-attention (attn2.to_k/to_v)."""
    return {name: p for name, p in denoiser.named_parameters()
            if name.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}


def enroll(pipe: Pipeline, shots: dict[str, torch.Tensor], sources: dict[str, list[str]],
           cfg: EnrollConfig = EnrollConfig(), progress: bool = True) -> Pipeline:
    """Add new people to a trained pipeline from k images each (textual inversion; module docstring).

    shots: {new person's name: (k, C, H, W) in [-1, 1] at the pipeline's image size}; sources: the same names ->
    the k relative file names the shots came from, recorded in the new pipeline's provenance. New people get IDs
    U, U+1, ... in sorted name order. Learns only the new people's ID tokens and class-embedding rows with the VAE and
    UNet frozen (and a merged low-rank adapter when cfg.lora_rank > 0). Returns a NEW Pipeline holding the old and the
    new people by name; the base pipeline is not modified, and with lora_rank 0 every base weight of the new one is
    bit-identical to the base's.
    """
    check_shots(pipe, shots, sources)
    names = sorted(shots)
    u, n = pipe.embedder.num_users, len(names)
    denoiser = grown_denoiser(pipe, names)
    vae = copy.deepcopy(pipe.vae).eval().requires_grad_(False)
    device = denoiser.unet.conv_in.weight.device

    # ---- the shots' latents: the posterior's moments, drawn afresh at every step ------------------------------------
    x = torch.cat([shots[name].float() for name in names])                          # (N k, C, H, W)
    ids = torch.cat([torch.full((len(shots[name]),), u + i, dtype=torch.long) for i, name in enumerate(names)])
    mean, std = latent_moments(vae, x)                                              # (N k, Cz, h, w) each

    # ---- what trains: the new rows, as separate tensors spliced into the frozen tables at every step ----------------
    embedder, unet = denoiser.embedder, denoiser.unet
    uses_tokens = unet.config.has_cross_attention and embedder.route != "class"
    uses_class = unet.class_embedding is not None
    tokens = nn.Parameter(embedder.embedding[u:u + n].detach().clone()) if uses_tokens else None   # (N, S, D)
    rows = nn.Parameter(unet.class_embedding.weight[u:u + n].detach().clone()) if uses_class else None  # (N, T)
    generator = torch.Generator().manual_seed(cfg.seed)
    adapters = {}
    if cfg.lora_rank > 0:
        for name, weight in cross_attention_projections(denoiser).items():
            out_features, in_features = weight.shape
            rank = min(cfg.lora_rank, out_features, in_features)
            down = torch.randn(rank, in_features, generator=generator) / in_features ** 0.5     # A (r, in)
            adapters[name] = (weight, nn.Parameter(down.to(weight)),
                              nn.Parameter(torch.zeros(out_features, rank).to(weight)))         # B (out, r) = 0
    trainable = [p for p in (tokens, rows) if p is not None]
    trainable += [p for _, down, up in adapters.values() for p in (down, up)]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)

    def tables() -> dict[str, torch.Tensor]:
        """The denoiser's parameters that differ from the frozen copy: the grown tables and the adapted weights."""
        values = {}
        if tokens is not None:
            table = embedder.embedding                                              # (U + N + 1, S, D)
            values["embedder.embedding"] = torch.cat([table[:u], tokens, table[u + n:]])
        if rows is not None:
            table = unet.class_embedding.weight                                     # (U + N + 1, T)
            values["unet.class_embedding.weight"] = torch.cat([table[:u], rows, table[u + n:]])
        for name, (weight, down, up) in adapters.items():
            values[name] = weight + up @ down                                       # W + B A
        return values

    def model(z_t: torch.Tensor, t: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return functional_call(denoiser, tables(), (z_t, t, user))

    # ---- the loop: the diffusion loss of the shots, conditioned on their new IDs (no ID dropout: the null row stays)
    order = torch.randperm(len(x), generator=generator)
    position = 0
    bar = tqdm(range(cfg.steps), desc="enrol", disable=not progress)
    for _ in bar:
        batch = []
        while len(batch) < min(cfg.batch_size, len(x)):                             # without replacement, cycling
            if position == len(order):
                order, position = torch.randperm(len(x), generator=generator), 0
            batch.append(int(order[position]))
            position += 1
        idx = torch.tensor(batch)
        eps = torch.randn(mean[idx].shape, generator=generator).to(device)
        z0 = vae.scale_latents(mean[idx] + std[idx] * eps)                           # (B, Cz, h, w)
        loss = diffusion_loss(model, pipe.scheduler, z0, ids[idx].to(device),
                              generator=torch.Generator().manual_seed(int(torch.randint(2**62, (1,),
                                                                                         generator=generator))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    if not all(torch.isfinite(p).all() for p in trainable):
        raise ValueError(f"enrolment diverged (non-finite rows after {cfg.steps} steps); lower the lr ({cfg.lr})")

    # ---- write the learned rows (and the merged adapter) into the grown denoiser ------------------------------------
    with torch.no_grad():
        for name, value in tables().items():
            denoiser.get_parameter(name).copy_(value)
    provenance = copy.deepcopy(pipe.provenance) if pipe.provenance is not None else {"trained_on": None,
                                                                                       "enrolled": {}}
    for name in names:
        provenance["enrolled"][name] = {**file_record(sources[name]), "shots": len(shots[name]),
                                        "steps": cfg.steps, "lr": cfg.lr, "lora_rank": cfg.lora_rank,
                                        "seed": cfg.seed}
    return Pipeline(denoiser, vae, copy.deepcopy(pipe.scheduler), provenance)
