"""The generation pipeline: a trained, user-ID-conditioned latent diffusion model in, users' spectrograms out.

    from ldm.pipeline import Pipeline
    pipe = Pipeline.from_pretrained("runs/ldm/pipeline")          # the folder train_ldm.py exports
    images = pipe.generate(pipe.user_ids("all"), num=4, steps=50, guidance=3.0, sampler="ddim", seed=0)
    # {user ID: (4, 1, 256, 256) in [-1, 1]}; pipe.users[ID] is the user's name

Generation runs the reverse process in latent space and decodes the result:

    z_T ~ N(0, I)                     (B, Cz, h, w), Cz = vae.latent_channels, (h, w) = the UNet's sample_size
    z_{t-1} = step(eps_guided, t, z_t)  for the sampler's timesteps, with classifier-free guidance
        eps_guided = eps(z_t, t, null) + w * (eps(z_t, t, u) - eps(z_t, t, null))   (Ho & Salimans 2022)
    x = vae.decode(vae.unscale_latents(z_0))   z / scaling_factor + shift (LDM paper, section 4.3.2), then decode

The folder is diffusers' pipeline layout, so diffusers reads each model and the scheduler on its own:

    pipeline/model_index.json     {"_class_name": "UserIDLatentDiffusionPipeline", "vae": ["diffusers", ...], ...}
    pipeline/vae/                 AutoencoderKL (or VQModel): config.json (with scaling_factor) + safetensors
    pipeline/unet/                UNet2DConditionModel
    pipeline/scheduler/           DDPMScheduler, the training noise schedule
    pipeline/embedder/            ldm's UserIDEmbedder: config.json (users, route, name -> ID map) + model.safetensors
                                  holding "embedding", a (U + 1, S, D) table; row U is the null ID

diffusers has no pipeline class for ID conditioning, so the index names a class of its own (DiffusionPipeline
refuses to load the whole folder) and the README shows the loop with diffusers' components.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ldm.conditioning import ConditionedUNet, UserIDEmbedder, check_compatible
from ldm.cuda_graph import CUDAGraphModel
from ldm.ddpm import DDIMScheduler, DDPMScheduler
from ldm.io import PIPELINE_INDEX_NAME, load_pipeline, save_pipeline
from ldm.samplers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from ldm.guided_sampling import sample

PIPELINE_CLASS = "UserIDLatentDiffusionPipeline"
COMPONENTS = ("vae", "unet", "scheduler", "embedder")

FAST_SAMPLERS = {"dpm++2m": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
                 "euler_a": EulerAncestralDiscreteScheduler}
SAMPLERS = ("ddim", "ddpm", *FAST_SAMPLERS)  # sample.py --sampler
# what a sampler takes over from the training scheduler: its noise schedule and what the model predicts
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "rescale_betas_zero_snr", "prediction_type", "steps_offset")


def make_sampler(kind: str, scheduler: DDPMScheduler):
    """A sampler on the training scheduler's noise schedule, set up as Stable Diffusion pipelines set it up:

        "ddpm"     the training scheduler itself (ancestral DDPM; Ho et al. 2020)
        "ddim"     DDIM on its full config, with SD's set_alpha_to_one=False (the last step lands on ᾱ_0, not 1)
        "dpm++2m"  DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++"): DPMSolverMultistepScheduler with diffusers'
                   defaults (solver_order=2, midpoint, lower_order_final=True, final_sigmas_type="zero", no Karras σs)
        "euler"    Euler (Karras et al. 2022): EulerDiscreteScheduler with diffusers' defaults
        "euler_a"  Euler ancestral: EulerAncestralDiscreteScheduler with diffusers' defaults
    The last three take only the schedule and the prediction type (SCHEDULE_KEYS) and leave timestep_spacing at
    their default, "linspace": what diffusers' <Sampler>.from_config(pipe.scheduler.config) gives for a Stable
    Diffusion 1.x folder, whose scheduler config names no spacing.
    """
    if kind == "ddpm":
        return scheduler
    if kind == "ddim":
        return DDIMScheduler.from_diffusers({**scheduler.to_diffusers(), "set_alpha_to_one": False})
    if kind not in FAST_SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {kind!r}")
    return FAST_SAMPLERS[kind](**{key: getattr(scheduler.config, key) for key in SCHEDULE_KEYS})


def resolve_users(requested: str, class_to_idx: dict[str, int]) -> list[int]:
    """'all', a user name, an ID number, or a comma list of those -> sorted unique IDs.

    ``name:X`` and ``id:N`` say which one is meant; a bare item that is both a user's name and another user's ID
    (user folders named 1, 10, 2 have IDs 0, 1, 2) is refused as ambiguous. An unknown user is a ValueError listing
    the valid ones."""
    names = sorted(class_to_idx, key=class_to_idx.get)
    valid = ", ".join(f"{i}={name}" for i, name in enumerate(names))
    if requested.strip() == "all":
        return list(range(len(names)))
    ids = []
    for item in (s.strip() for s in requested.split(",") if s.strip()):
        kind, _, value = item.partition(":") if item.startswith(("name:", "id:")) else ("", "", item)
        by_name = class_to_idx.get(value) if kind in ("", "name") else None
        by_id = int(value) if kind in ("", "id") and value.isdigit() and int(value) < len(names) else None
        if by_name is not None and by_id is not None and by_name != by_id:
            raise ValueError(f"user {item!r} is ambiguous: the user named {value!r} has ID {by_name}, and ID {by_id} "
                             f"is user {names[by_id]!r}; write name:{value} or id:{value}")
        if by_name is None and by_id is None:
            raise ValueError(f"unknown user {item!r}; valid users are 'all' or one of: {valid}")
        ids.append(by_name if by_name is not None else by_id)
    if not ids:
        raise ValueError("no user given; pass all, a name or an ID number")
    return sorted(set(ids))


@dataclass
class Pipeline:
    """A trained ID-conditioned LDM: the denoiser (UNet + user-ID embedder), the autoencoder whose latents it
    denoises (config.scaling_factor set), and the training noise schedule."""

    denoiser: ConditionedUNet
    vae: torch.nn.Module          # AutoencoderKL or VQModel
    scheduler: DDPMScheduler

    def __post_init__(self):
        check_compatible(self.unet.config, self.embedder)
        if self.unet.config.in_channels != self.vae.latent_channels:
            raise ValueError(f"the UNet takes {self.unet.config.in_channels} latent channels, the autoencoder gives "
                             f"{self.vae.latent_channels}")
        self.vae.latent_scale_and_shift()        # a missing or nonsensical scaling_factor fails here, not later

    @property
    def unet(self):
        return self.denoiser.unet

    @property
    def embedder(self) -> UserIDEmbedder:
        return self.denoiser.embedder

    @property
    def users(self) -> list[str]:
        """User names by ID."""
        return sorted(self.embedder.class_to_idx, key=self.embedder.class_to_idx.get)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(Cz, h, w) of one latent: the autoencoder's channels at the UNet's training size (a folder without one:
        the autoencoder's sample_size over its downsampling factor)."""
        size = self.unet.config.sample_size
        if size is None:
            image = self.vae.config.sample_size
            size = tuple(side // self.vae.config.downsample_factor
                         for side in ((image, image) if isinstance(image, int) else image))
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return self.vae.latent_channels, h, w

    def user_ids(self, requested: str) -> list[int]:
        """Names, ID numbers, 'all' or a comma list of them -> IDs (resolve_users on this pipeline's users)."""
        return resolve_users(requested, self.embedder.class_to_idx)

    # ---- folders ----------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> "Pipeline":
        """Load a folder written by ``save_pretrained`` (train_ldm.py's OUT/pipeline), in eval mode."""
        folder = Path(path)
        if not (folder / PIPELINE_INDEX_NAME).is_file():
            raise FileNotFoundError(f"{folder}: not a pipeline folder (no {PIPELINE_INDEX_NAME}); train_ldm.py "
                                    "writes one to OUT/pipeline")
        parts = load_pipeline(folder, dtype=dtype, device=device)
        missing = [name for name in COMPONENTS if name not in parts]
        if missing:
            raise ValueError(f"{folder}: the pipeline lacks {missing}")
        if not isinstance(parts["embedder"], UserIDEmbedder):
            raise ValueError(f"{folder}: its embedder is a {type(parts['embedder']).__name__}, not a UserIDEmbedder")
        try:
            return cls(ConditionedUNet(parts["unet"], parts["embedder"]).eval(), parts["vae"].eval(),
                       parts["scheduler"])
        except ValueError as error:
            raise ValueError(f"{folder}: {error}") from None

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the diffusers-layout folder described in the module docstring."""
        save_pipeline(path, {"vae": self.vae, "unet": self.unet, "scheduler": self.scheduler,
                             "embedder": self.embedder}, pipeline_class=PIPELINE_CLASS)

    # ---- generation -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, users: list[int], num: int, steps: int = 50, guidance: float = 3.0, sampler: str = "ddim",
                 seed: int = 0, batch_size: int = 16, eta: float = 0.0, progress: bool = True,
                 cuda_graph: bool = False) -> dict[int, torch.Tensor]:
        """Sample ``num`` images of each user in ``users``: {user ID: (num, C, H, W) in [-1, 1] on the CPU}.

        For each batch, ldm.guided_sampling.sample runs the sampler (make_sampler(sampler, training schedule)) in latent
        space, guided with cond = the user's ID and uncond = the null ID; the latents are unscaled and decoded (a VQ
        model quantizes first). Batch b of user u draws from a generator seeded by (seed, u, b), so a user's images
        do not depend on which other users are generated. eta: DDIM's noise (0 = deterministic), DDIM only.
        cuda_graph: capture the denoiser once per batch size as a CUDA graph (ldm.cuda_graph) and replay it.
        """
        if num < 1 or steps < 1 or batch_size < 1:
            raise ValueError(f"generate needs num, steps and batch_size >= 1, got {num}, {steps}, {batch_size}")
        if eta != 0.0 and sampler != "ddim":
            raise ValueError(f"eta={eta} is DDIM's; the {sampler} sampler has no eta")
        scheduler = make_sampler(sampler, self.scheduler)
        device = self.unet.conv_in.weight.device
        denoiser = CUDAGraphModel(self.denoiser) if cuda_graph else self.denoiser
        null = self.embedder.null_id
        result = {}
        for user in tqdm(users, desc="users", disable=not progress or len(users) < 2):
            images = []
            for b, start in enumerate(range(0, num, batch_size)):
                n = min(batch_size, num - start)
                generator = torch.Generator().manual_seed((seed * 1_000_003 + user) * 10_007 + b)
                cond = torch.full((n,), user, dtype=torch.long, device=device)
                uncond = torch.full((n,), null, dtype=torch.long, device=device)
                z = sample(denoiser, scheduler, (n, *self.latent_shape), cond=cond, uncond=uncond,
                           guidance_scale=guidance, num_steps=steps, generator=generator, progress=progress,
                           device=device, dtype=torch.float32, **({"eta": eta} if sampler == "ddim" else {}))
                x = self.vae.decode(self.vae.unscale_latents(z))                  # (n, C, H, W)
                images.append(x.float().clamp(-1, 1).cpu())
            result[user] = torch.cat(images)
        return result
