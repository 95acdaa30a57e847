"""ldm.pipeline: a saved pipeline folder runs in diffusers' own components (the README's loop) and gives the images
Pipeline.generate gives; user names and IDs; the checks at loading."""
import dataclasses
import json

import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers import DDIMScheduler as RefDDIMScheduler
from diffusers import UNet2DConditionModel as RefUNet
from diffusers.utils.torch_utils import randn_tensor as ref_randn_tensor
from safetensors.torch import load_file

from ldm.conditioning import ConditionedUNet, UserIDEmbedder
from ldm.ddpm import DDPMScheduler
from ldm.pipeline import PIPELINE_CLASS, Pipeline, image_seed, make_sampler, resolve_users
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from tests.helpers import perturb_

USERS = {"alice": 0, "bob": 1, "carol": 2}
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                clip_sample=False, steps_offset=1)


def tiny_pipeline(route: str = "both", sample_size=(8, 4), scaling_factor=0.5) -> Pipeline:
    torch.manual_seed(0)
    vae = AutoencoderKL(dataclasses.replace(VAEConfig.preset("tiny"), in_channels=1, out_channels=1,
                                            scaling_factor=scaling_factor, shift_factor=0.1))
    classes = None if route == "cross" else len(USERS) + 1
    unet = UNet2DConditionModel(dataclasses.replace(UNetConfig.preset("tiny"), sample_size=sample_size,
                                                    num_class_embeds=classes))
    perturb_(unet), perturb_(vae)
    embedder = UserIDEmbedder(len(USERS), 32, 4, route, USERS)
    return Pipeline(ConditionedUNet(unet, embedder).eval(), vae.eval(), DDPMScheduler(**SCHEDULE))


@pytest.mark.parametrize("route", ["both", "cross"])
def test_a_saved_pipeline_runs_in_diffusers_components_as_the_readme_shows(tmp_path, route):
    pipe = tiny_pipeline(route)
    pipe.save_pretrained(tmp_path / "pipeline")
    index = json.loads((tmp_path / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINE_CLASS != "LDMPipeline"   # not a diffusers pipeline's name
    images = pipe.generate([1], num=2, steps=4, guidance=3.0, sampler="ddim", seed=7, progress=False)[1]

    # the README's loop, with diffusers' classes only
    folder, user, w, n = tmp_path / "pipeline", 1, 3.0, 2
    unet = RefUNet.from_pretrained(folder, subfolder="unet").eval()
    vae = RefAutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    scheduler = RefDDIMScheduler.from_pretrained(folder, subfolder="scheduler", set_alpha_to_one=False)
    table = load_file(folder / "embedder" / "model.safetensors")["embedding"]     # (U + 1, S, D); row U: null
    null = table.shape[0] - 1
    ids = torch.tensor([null] * n + [user] * n)                                    # [uncond; cond]
    labels = ids if unet.config.num_class_embeds else None                         # route "both": also the label
    scheduler.set_timesteps(4)
    generators = [torch.Generator().manual_seed(image_seed(7, user, i)) for i in range(n)]   # one per image
    z = ref_randn_tensor((n, 4, 8, 4), generator=generators)                       # diffusers' per-image draws
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(torch.cat([z, z]), t, encoder_hidden_states=table[ids], class_labels=labels).sample
            eps_uncond, eps_cond = eps.chunk(2)
            z = scheduler.step(eps_uncond + w * (eps_cond - eps_uncond), t, z).prev_sample
        x = vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor).sample
    torch.testing.assert_close(images, x.clamp(-1, 1), rtol=1e-5, atol=1e-5)

    loaded = Pipeline.from_pretrained(folder)
    assert loaded.users == ["alice", "bob", "carol"] and loaded.latent_shape == (4, 8, 4)
    assert torch.equal(loaded.generate([1], num=2, steps=4, guidance=3.0, seed=7, progress=False)[1], images)


def reference_loop(model, scheduler, x, ids, null, scale, steps):
    """Classifier-free guidance written out: two separate passes per step, Ho & Salimans 2022 Eq. (6)."""
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        tt = t.expand(len(x))
        out = model(x, tt, ids)
        if scale != 1.0:
            out_null = model(x, tt, torch.full_like(ids, null))
            out = out_null + scale * (out - out_null)
        x = scheduler.step(out, t, x)
    return x


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_generate_equals_the_written_out_guidance_loop_and_uses_the_null_id(scale):
    pipe = tiny_pipeline()
    calls = []
    pipe.denoiser.register_forward_pre_hook(lambda m, args: calls.append(args[2].clone()))
    images = pipe.generate([1], 2, steps=3, guidance=scale, seed=0, progress=False)[1]
    if scale == 1.0:
        assert calls[0].tolist() == [1, 1]                              # the conditional-only loop: no null pass
    else:
        assert calls[0].tolist() == [3, 3, 1, 1]                        # [uncond; cond]: the null ID is 3
    x = torch.cat([torch.randn(1, 4, 8, 4, generator=torch.Generator().manual_seed(image_seed(0, 1, i)))
                   for i in range(2)])                                   # image i of user 1: its own generator
    with torch.no_grad():
        z = reference_loop(pipe.denoiser, make_sampler("ddim", pipe.scheduler), x, torch.tensor([1, 1]), 3, scale, 3)
        expected = pipe.vae.decode(z / 0.5 + 0.1).clamp(-1, 1)          # scaling_factor 0.5, shift_factor 0.1
    torch.testing.assert_close(images, expected, rtol=1e-4, atol=1e-5)


def test_user_names_ids_and_the_ambiguous_numeric_names():
    assert resolve_users("all", USERS) == [0, 1, 2]
    assert resolve_users("bob, 2,alice", USERS) == [0, 1, 2]
    numeric = {"1": 0, "10": 1, "2": 2}                                # folders 1, 10, 2 sorted as strings
    assert resolve_users("2", numeric) == [2]                          # name and ID agree: fine
    with pytest.raises(ValueError, match=r"user '1' is ambiguous: the user named '1' has ID 0, and ID 1 is user '10'; "
                                         r"write name:1 or id:1"):
        resolve_users("1", numeric)
    assert resolve_users("name:1", numeric) == [0] and resolve_users("id:1", numeric) == [1]
    with pytest.raises(ValueError, match=r"unknown user 'dave'; valid users are 'all' or one of: 0=alice, 1=bob"):
        resolve_users("dave", USERS)
    for item in ("3", "id:3", "name:0"):
        with pytest.raises(ValueError, match=f"unknown user '{item}'"):
            resolve_users(item, USERS)


def test_pipeline_checks_its_parts_when_built_and_loaded(tmp_path):
    with pytest.raises(ValueError, match=r"config.scaling_factor is None: latent scaling needs a positive number"):
        tiny_pipeline(scaling_factor=None)
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="the UNet takes 4 latent channels, the autoencoder gives 8"):
        Pipeline(pipe.denoiser, AutoencoderKL(dataclasses.replace(pipe.vae.config, latent_channels=8)),
                 pipe.scheduler)
    with pytest.raises(FileNotFoundError, match="not a pipeline folder"):
        Pipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="eta=0.5 is DDIM's; the euler sampler has no eta"):
        pipe.generate([0], num=1, steps=2, sampler="euler", eta=0.5, progress=False)


def test_image_seed_is_sha256_of_seed_user_index():
    import hashlib
    digest = hashlib.sha256(b"7/1/0").digest()
    assert image_seed(7, 1, 0) == int.from_bytes(digest[:8], "little") % 2**63
    assert len({image_seed(s, u, i) for s in range(3) for u in range(3) for i in range(3)}) == 27


@pytest.mark.parametrize("sampler", ["ddpm", "euler_a"])
def test_images_depend_on_seed_user_and_index_only_not_on_the_batch_size(sampler):
    """The README's promise: the same --seed with another --batch-size (or other users) gives the same images. The
    stochastic samplers draw per-step noise too, so every draw must come from the image's own generator."""
    pipe = tiny_pipeline()
    one = pipe.generate([1], 3, steps=3, sampler=sampler, seed=5, batch_size=1, progress=False)[1]
    three = pipe.generate([0, 1], 3, steps=3, sampler=sampler, seed=5, batch_size=3, progress=False)[1]
    two = pipe.generate([1], 3, steps=3, sampler=sampler, seed=5, batch_size=2, progress=False)[1]
    torch.testing.assert_close(three, one, rtol=0, atol=1e-5)          # batched convolutions round differently
    torch.testing.assert_close(two, one, rtol=0, atol=1e-5)
    other_seed = pipe.generate([1], 3, steps=3, sampler=sampler, seed=6, batch_size=3, progress=False)[1]
    assert (other_seed - one).abs().max() > 0.05


def test_generate_takes_user_names_in_any_unicode_normal_form():
    import unicodedata
    users = {unicodedata.normalize("NFD", "zoë"): 0, "bob": 1, "carol": 2}      # a folder name written on macOS
    pipe = tiny_pipeline()
    pipe.embedder.class_to_idx = users
    by_id = pipe.generate([0, 1], 1, steps=2, progress=False)
    by_name = pipe.generate([unicodedata.normalize("NFC", "zoë"), "bob"], 1, steps=2, progress=False)
    assert by_name.keys() == by_id.keys() == {0, 1}
    assert all(torch.equal(by_name[k], by_id[k]) for k in by_id)
    assert resolve_users(unicodedata.normalize("NFC", "zoë") + ",2", users) == [0, 2]
    with pytest.raises(ValueError, match=r"^unknown user 'dave': users are names \(zo.+, bob, carol\) or IDs 0..2$"):
        pipe.generate(["dave"], 1, steps=2, progress=False)
    with pytest.raises(ValueError, match=r"^unknown user 7: "):
        pipe.generate([7], 1, steps=2, progress=False)


def test_a_float16_pipeline_generates_without_blaming_the_callers_dtype(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "pipeline")
    half = Pipeline.from_pretrained(tmp_path / "pipeline", dtype=torch.float16)
    full = Pipeline.from_pretrained(tmp_path / "pipeline")
    images = half.generate([1], 2, steps=3, seed=1, progress=False)[1]
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    # float16 weights and latents: the same images to half precision's rounding, not other images
    assert (images - full.generate([1], 2, steps=3, seed=1, progress=False)[1]).abs().max() < 0.05


def test_step_limits_are_where_diffusers_own_samplers_break():
    """step_limit(kind): the most steps whose timesteps diffusers' own scheduler also gives as distinct values inside
    the schedule; one more repeats a timestep (DPM-Solver++: a zero step, NaN images) or leaves the schedule."""
    from diffusers import DDIMScheduler as RefDDIM, DPMSolverMultistepScheduler as RefDPM
    from diffusers import EulerDiscreteScheduler as RefEuler
    from ldm.pipeline import step_limit
    pipe = tiny_pipeline()
    schedule = {key: SCHEDULE[key] for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
                                               "steps_offset")}          # what make_sampler hands on
    references = {"ddim": RefDDIM(**SCHEDULE, set_alpha_to_one=False), "dpm++2m": RefDPM(**schedule),
                  "euler": RefEuler(**schedule)}
    for kind, ref in references.items():
        limit = step_limit(kind, pipe.scheduler)
        ref.set_timesteps(limit)
        assert len(set(ref.timesteps.tolist())) == limit and int(ref.timesteps.max()) <= 999, kind
        if limit < 1000:
            ref.set_timesteps(limit + 1)
            broken = len(set(ref.timesteps.tolist())) < limit + 1 or int(ref.timesteps.max()) > 999
            assert broken, kind
    assert (step_limit("ddim", pipe.scheduler), step_limit("dpm++2m", pipe.scheduler),
            step_limit("euler", pipe.scheduler)) == (999, 999, 1000)
    with pytest.raises(ValueError, match=r"^steps=1000: the dpm\+\+2m sampler takes at most 999 steps"):
        pipe.generate([0], 1, steps=1000, sampler="dpm++2m", progress=False)
    with pytest.raises(ValueError, match=r"^eta=5.0: DDIM's eta lies in \[0, 1\]"):
        pipe.generate([0], 1, steps=2, eta=5.0, progress=False)


def test_a_schedule_with_betas_outside_0_1_is_refused_when_the_pipeline_is_built():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=r"^scheduler: its betas must lie in \(0, 1\], but beta_schedule='linear', "
                                         r"beta_start=0.0001, beta_end=2.0 give"):
        Pipeline(pipe.denoiser, pipe.vae, DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=2.0))
