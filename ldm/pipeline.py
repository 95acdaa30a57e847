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
    pipeline/provenance.json      which real files trained the pipeline and which enrolled each added person
                                  (ldm.enrollment); a folder without it loads with provenance None (unknown)

diffusers has no pipeline class for ID conditioning, so the index names a class of its own; save_pipeline writes a
pipeline.py (and embedder/ldm.py) beside it, so DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline",
trust_remote_code=True) opens the folder offline (docs/compat.md), and the README shows the loop with diffusers'
components.
"""
from __future__ import annotations

import hashlib
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ldm.conditioning import ConditionedUNet, UserIDEmbedder, check_compatible
from ldm.cuda_graph import CUDAGraphModel
from ldm.ddpm import DDIMScheduler, DDPMScheduler
from ldm.splits import files_digest
from ldm.io import PIPELINE_INDEX_NAME, load_pipeline, save_pipeline
from ldm.files import read_json, write_json
from ldm.samplers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from ldm.guided_sampling import sample

PIPELINE_CLASS = "UserIDLatentDiffusionPipeline"
COMPONENTS = ("vae", "unet", "scheduler", "embedder")
PROVENANCE_NAME = "provenance.json"

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
    the valid ones. Names are compared in Unicode normal form NFC, so a name typed on one system finds a folder name
    written by another (macOS stores "é" decomposed, NFD)."""
    names = sorted(class_to_idx, key=class_to_idx.get)
    by_nfc = {unicodedata.normalize("NFC", name): i for name, i in class_to_idx.items()}
    valid = ", ".join(f"{i}={name}" for i, name in enumerate(names))
    if requested.strip() == "all":
        return list(range(len(names)))
    ids = []
    for item in (s.strip() for s in requested.split(",") if s.strip()):
        kind, _, value = item.partition(":") if item.startswith(("name:", "id:")) else ("", "", item)
        by_name = by_nfc.get(unicodedata.normalize("NFC", value)) if kind in ("", "name") else None
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


# ---- provenance: which real files a pipeline has seen ------------------------------------------------------------
#
#   {"trained_on": {"files": [relative names], "sha256": files_digest(files)} or None (not recorded),
#    "enrolled":   {person: {"files": [...], "sha256": ..., ...what enrolled them}}}
#
# File names are relative to their data folder ("user_03/0007.npy"), as split.json holds them; a file's person is its
# first folder. The evaluation standard (no generator sees a file a figure is measured on; a generator that helps a
# few-shot method score person X has seen only the files of X the method may see) is checked by check_provenance.


def file_record(names: list[str]) -> dict:
    """{"files": the sorted relative names, "sha256": their ldm.splits.files_digest}: one entry of a provenance."""
    files = sorted(str(name) for name in names)
    twice = [a for a, b in zip(files, files[1:]) if a == b]
    if twice:
        raise ValueError(f"a provenance file list names the file {twice[0]} twice")
    return {"files": files, "sha256": files_digest(files)}


def check_provenance_format(provenance, source="provenance") -> dict:
    """The provenance mapping itself, after checking its keys and that every file list matches its hash (a list edited
    by hand is refused); one-line ValueError naming ``source`` otherwise."""
    def check_record(record, what: str) -> None:
        if not (isinstance(record, dict) and isinstance(record.get("files"), list)
                and all(isinstance(name, str) for name in record["files"]) and isinstance(record.get("sha256"), str)):
            raise ValueError(f"{source}: {what} must be {{\"files\": [names], \"sha256\": hash}}, got {record!r:.80}")
        if files_digest(record["files"]) != record["sha256"]:
            raise ValueError(f"{source}: the file list of {what} does not match its sha256 (edited by hand?)")

    if not isinstance(provenance, dict) or set(provenance) != {"trained_on", "enrolled"}:
        raise ValueError(f"{source}: expected the keys 'trained_on' and 'enrolled', got "
                         f"{sorted(provenance) if isinstance(provenance, dict) else type(provenance).__name__}")
    if provenance["trained_on"] is not None:
        check_record(provenance["trained_on"], "trained_on")
    if not isinstance(provenance["enrolled"], dict):
        raise ValueError(f"{source}: 'enrolled' must map person names to file records")
    for person, record in provenance["enrolled"].items():
        check_record(record, f"enrolled[{person!r}]")
    return provenance


def person_of(name: str) -> str:
    """The person of a relative file name: its first folder ("user_03/0007.npy" -> "user_03")."""
    return name.split("/", 1)[0]


def check_provenance(provenance: dict | None, test_files: set[str], allowed: dict[str, int] | None = None) -> None:
    """Refuse a generator that saw what a figure is measured on; return None when it did not.

    provenance: a Pipeline's provenance (None: not recorded, refused). test_files: relative names of the real files
    the figure is measured on. allowed: {scored person: the number of that person's files the scored method itself
    may see} (a k-shot method: k), or None to check only the test files. The files of person X the generator saw are
    the training files in folder X plus the files X was enrolled from. One-line ValueError naming the file otherwise.
    """
    if provenance is None:
        raise ValueError("the generator's provenance is unknown (its pipeline folder has no provenance.json), so it "
                         "may have seen the test files; export it again with train_ldm.py / enroll.py")
    check_provenance_format(provenance)
    if provenance["trained_on"] is None:
        raise ValueError("the generator's training files are not recorded (enrolled into a pipeline without "
                         "provenance.json), so it may have seen the test files")
    seen = {name: "trained on it" for name in provenance["trained_on"]["files"]}
    for person, record in provenance["enrolled"].items():
        seen.update({name: f"enrolled {person} from it" for name in record["files"] if name not in seen})
    leaked = sorted(set(seen) & set(test_files))
    if leaked:
        more = f" and {len(leaked) - 1} more" if len(leaked) > 1 else ""
        raise ValueError(f"the generator saw the test file {leaked[0]} ({seen[leaked[0]]}){more}; a generator must "
                         "never see a file a figure is measured on")
    for person, limit in (allowed or {}).items():
        files = sorted({name for name in provenance["trained_on"]["files"] if person_of(name) == person}
                       | set(provenance["enrolled"].get(person, {"files": []})["files"]))
        if len(files) > limit:
            raise ValueError(f"the generator saw {len(files)} files of the scored person {person} (e.g. {files[0]}), "
                             f"more than the {limit} the scored method may see")


def image_seed(seed: int, user: int, index: int) -> int:
    """The seed of image ``index`` of user ``user`` in a run seeded ``seed``: the first 8 bytes of
    sha256("seed/user/index"), below 2**63. Each image draws its starting noise and every step's noise from its own
    generator, so an image depends only on (seed, user, index): not on the batch size, nor on the other users."""
    digest = hashlib.sha256(f"{seed}/{user}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def step_limit(kind: str, scheduler: DDPMScheduler, at_most: int | None = None) -> int:
    """The most sampling steps sampler ``kind`` takes on ``scheduler``'s training schedule: the largest n up to
    num_train_timesteps (and up to ``at_most``) whose timesteps all lie in the schedule and are distinct (DDIM and
    DDPM with steps_offset 1 stop at N - 1; DPM-Solver++ repeats a timestep at N and divides by the zero step).
    0 when none works."""
    sampler = make_sampler(kind, scheduler)
    top = scheduler.config.num_train_timesteps
    top = top if at_most is None else min(at_most, top)
    for n in range(top, 0, -1):
        try:
            sampler.set_timesteps(n)
        except ValueError:
            continue
        if len(torch.unique(sampler.timesteps)) == len(sampler.timesteps) == n:
            return n
    return 0


def check_schedule(scheduler: DDPMScheduler) -> None:
    """ValueError naming the config values unless every beta of the training schedule lies in (0, 1] and the
    cumulative ᾱ in (0, 1) (a beta_end of 2.0 or a negative beta_start would make the sampler's square roots NaN)."""
    c = scheduler.config
    betas = scheduler.betas
    if not (torch.isfinite(betas).all() and (betas > 0).all() and (betas <= 1).all()):
        bad = betas[~(torch.isfinite(betas) & (betas > 0) & (betas <= 1))][0].item()
        raise ValueError(f"scheduler: its betas must lie in (0, 1], but beta_schedule={c.beta_schedule!r}, "
                         f"beta_start={c.beta_start!r}, beta_end={c.beta_end!r} give {bad:.4g} (Stable Diffusion: "
                         "scaled_linear, 0.00085, 0.012)")


@dataclass
class Pipeline:
    """A trained ID-conditioned LDM: the denoiser (UNet + user-ID embedder), the autoencoder whose latents it
    denoises (config.scaling_factor set), and the training noise schedule."""

    denoiser: ConditionedUNet
    vae: torch.nn.Module          # AutoencoderKL or VQModel
    scheduler: DDPMScheduler
    provenance: dict | None = None   # the real files it has seen (see check_provenance); None: not recorded

    def __post_init__(self):
        if self.provenance is not None:
            check_provenance_format(self.provenance)
        check_compatible(self.unet.config, self.embedder)
        if self.unet.config.in_channels != self.vae.latent_channels:
            raise ValueError(f"the UNet takes {self.unet.config.in_channels} latent channels, the autoencoder gives "
                             f"{self.vae.latent_channels}")
        self.vae.latent_scale_and_shift()        # a missing or nonsensical scaling_factor fails here, not later
        check_schedule(self.scheduler)

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

    def user_ids(self, requested) -> list[int]:
        """Names, ID numbers, 'all' or a comma list of them, or a list of names and IDs -> IDs (resolve_users on this
        pipeline's users)."""
        if isinstance(requested, str):
            return resolve_users(requested, self.embedder.class_to_idx)
        if isinstance(requested, int) and not isinstance(requested, bool):
            requested = [requested]
        by_nfc = {unicodedata.normalize("NFC", name): i for name, i in self.embedder.class_to_idx.items()}
        ids = []
        for item in requested:
            if isinstance(item, str) and unicodedata.normalize("NFC", item) in by_nfc:
                ids.append(by_nfc[unicodedata.normalize("NFC", item)])
            elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(self.users) \
                    or isinstance(item, torch.Tensor) and item.ndim == 0 and 0 <= int(item) < len(self.users):
                ids.append(int(item))
            else:
                raise ValueError(f"unknown user {item!r}: users are names ({', '.join(self.users[:4])}"
                                 f"{', ...' if len(self.users) > 4 else ''}) or IDs 0..{len(self.users) - 1}")
        if not ids:
            raise ValueError("no user given; pass names or IDs")
        return sorted(set(ids))

    def step_limit(self, sampler: str) -> int:
        """The most steps ``sampler`` takes on this pipeline's training schedule (ldm.pipeline.step_limit)."""
        return step_limit(sampler, self.scheduler)

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
        provenance = None
        if (folder / PROVENANCE_NAME).is_file():
            provenance = check_provenance_format(read_json(folder / PROVENANCE_NAME), folder / PROVENANCE_NAME)
        try:
            return cls(ConditionedUNet(parts["unet"], parts["embedder"]).eval(), parts["vae"].eval(),
                       parts["scheduler"], provenance)
        except ValueError as error:
            raise ValueError(f"{folder}: {error}") from None

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the diffusers-layout folder described in the module docstring (provenance.json when the provenance
        is known). Each file is written atomically; write through ldm.files.replace_folder to swap a whole folder."""
        save_pipeline(path, {"vae": self.vae, "unet": self.unet, "scheduler": self.scheduler,
                             "embedder": self.embedder}, pipeline_class=PIPELINE_CLASS)
        if self.provenance is not None:
            write_json(self.provenance, Path(path) / PROVENANCE_NAME)
        else:
            (Path(path) / PROVENANCE_NAME).unlink(missing_ok=True)          # never a stale record of other weights

    # ---- generation -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, users, num: int, steps: int = 50, guidance: float = 3.0, sampler: str = "ddim",
                 seed: int = 0, batch_size: int = 16, eta: float = 0.0, progress: bool = True,
                 cuda_graph: bool = False) -> dict[int, torch.Tensor]:
        """Sample ``num`` images of each user in ``users``: {user ID: (num, C, H, W) in [-1, 1] on the CPU}.

        users: IDs, names (as in ``pipe.users``), or a mixture; the result is keyed by ID. For each batch,
        ldm.guided_sampling.sample runs the sampler (make_sampler(sampler, training schedule)) in latent space,
        guided with cond = the user's ID and uncond = the null ID; the latents are unscaled and decoded (a VQ model
        quantizes first). Image i of user u draws its noise from its own generator, seeded image_seed(seed, u, i),
        so an image depends only on (seed, user, i), not on batch_size or the other users. eta: DDIM's noise in
        [0, 1] (0 = deterministic, 1 = DDPM's variance), DDIM only. The latents are drawn in the UNet's dtype (a
        pipeline loaded with dtype=torch.float16 samples in float16). cuda_graph: capture the denoiser once per
        batch size as a CUDA graph (ldm.cuda_graph) and replay it.
        A NaN or infinite result raises ValueError naming the likely cause (weights, config value, option).
        """
        users = self.user_ids(users)
        if num < 1 or steps < 1 or batch_size < 1:
            raise ValueError(f"generate needs num, steps and batch_size >= 1, got {num}, {steps}, {batch_size}")
        if eta != 0.0 and sampler != "ddim":
            raise ValueError(f"eta={eta} is DDIM's; the {sampler} sampler has no eta")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta={eta}: DDIM's eta lies in [0, 1] (0 deterministic, 1 DDPM's variance); larger "
                             "values make the step's variance exceed what the schedule allows (NaN images)")
        if not math.isfinite(guidance):
            raise ValueError(f"guidance={guidance}: expected a finite scale (1 = conditional model only)")
        if step_limit(sampler, self.scheduler, at_most=steps) < steps:       # steps itself is checked first
            limit = self.step_limit(sampler)
            raise ValueError(f"steps={steps}: the {sampler} sampler takes at most {limit} steps on this pipeline's "
                             f"schedule of {self.scheduler.config.num_train_timesteps} training timesteps (beyond "
                             "that its timesteps repeat or leave the schedule)")
        scheduler = make_sampler(sampler, self.scheduler)
        device, dtype = self.unet.conv_in.weight.device, self.unet.conv_in.weight.dtype
        denoiser = CUDAGraphModel(self.denoiser) if cuda_graph else self.denoiser
        null = self.embedder.null_id
        options = dict(sampler=sampler, steps=steps, guidance=guidance, eta=eta)
        result = {}
        for user in tqdm(users, desc="users", disable=not progress or len(users) < 2):
            images = []
            for start in range(0, num, batch_size):
                n = min(batch_size, num - start)
                generators = [torch.Generator().manual_seed(image_seed(seed, user, i)) for i in range(start, start + n)]
                cond = torch.full((n,), user, dtype=torch.long, device=device)
                uncond = torch.full((n,), null, dtype=torch.long, device=device)
                z = sample(denoiser, scheduler, (n, *self.latent_shape), cond=cond, uncond=uncond,
                           guidance_scale=guidance, num_steps=steps, generator=generators, progress=progress,
                           device=device, dtype=dtype, **({"eta": eta} if sampler == "ddim" else {}))
                if not torch.isfinite(z).all():
                    raise ValueError(self.nonfinite_cause("the sampled latents", options))
                unscaled = self.vae.unscale_latents(z)
                x = self.vae.decode(unscaled)                                   # (n, C, H, W)
                if not torch.isfinite(x).all():
                    raise ValueError(self.nonfinite_cause("the decoded images", options, unscaled))
                images.append(x.float().clamp(-1, 1).cpu())
            result[user] = torch.cat(images)
        return result

    def nonfinite_cause(self, what: str, options: dict, unscaled: torch.Tensor | None = None) -> str:
        """One line: ``what`` holds NaN or Inf, and the likely cause, checked in order: non-finite weights, the
        latent scaling (scaling_factor in vae/config.json), the guidance scale, the sampler and its step count."""
        for part, model in (("UNet", self.unet), ("user-ID embedder", self.embedder), ("autoencoder", self.vae)):
            bad = [name for name, t in model.state_dict().items()
                   if t.is_floating_point() and not torch.isfinite(t).all()]
            if bad:
                return (f"{what} hold NaN or Inf: the {part}'s weights do ({len(bad)} tensor(s), e.g. {bad[0]}); "
                        "the pipeline is broken (a diverged or damaged export), export it again")
        run = (f"--sampler {options['sampler']} --steps {options['steps']} --guidance {options['guidance']:g}"
               + (f" --eta {options['eta']:g}" if options["eta"] else ""))
        if unscaled is not None:
            scale = self.vae.config.scaling_factor
            peak = unscaled.abs().max().item() if torch.isfinite(unscaled).all() else math.inf
            if peak > 1e4:
                return (f"{what} hold NaN or Inf: the latents divided by the autoencoder's scaling_factor {scale:g} "
                        f"(vae/config.json) reach {peak:.3g}; train_vae.py measures it as 1 / std of the training "
                        "latents (Stable Diffusion: 0.18215), so this value is likely wrong")
            return f"{what} hold NaN or Inf although the latents are finite ({run}): the autoencoder overflows"
        if abs(options["guidance"]) > 100:
            return (f"{what} hold NaN or Inf with --guidance {options['guidance']:g}: a guidance scale this large "
                    "overflows the prediction; typical scales are 1-10")
        return (f"{what} hold NaN or Inf ({run}); try fewer --steps, another --sampler or a smaller --guidance")
