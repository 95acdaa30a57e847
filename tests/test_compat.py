"""ldm.compat against diffusers 0.42 (the reference): code written for diffusers' API, run once with diffusers'
classes and once with ldm.compat's, must give identical tensors; train-mode outputs and gradients of the three models
equal diffusers' on diffusers' own test configurations; the convention layer (constructors, from_config, output
objects, dict configs, processors) behaves as diffusers'; unimplemented options are refused by name."""
import inspect
import json

import diffusers
import pytest
import torch
import torch.nn.functional as F

import ldm.compat as compat
from ldm import ddpm, samplers, unet, vae, vq
from tests.helpers import perturb_

# diffusers' own tiny test configurations (tests/models/... of the diffusers repository) and their input shapes
VAE_KWARGS = dict(block_out_channels=[2, 4], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
VQ_KWARGS = dict(block_out_channels=[8, 16], norm_num_groups=8, in_channels=3, out_channels=3, latent_channels=3,
                 down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
UNET_KWARGS = dict(block_out_channels=(4, 8), norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D",
                   "CrossAttnUpBlock2D"), out_channels=4, in_channels=4, layers_per_block=1, sample_size=16)
SCHEDULERS = ["DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler"]


def pair(name: str, kwargs: dict, seed: int = 0):
    """(diffusers model, ldm.compat model) built from the same kwargs, with diffusers' perturbed weights in both."""
    torch.manual_seed(seed)
    ref = perturb_(getattr(diffusers, name)(**kwargs), seed=seed)
    ours = getattr(compat, name)(**kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def as_dict(config) -> dict:
    """A config as a dict without ``_use_default_values`` (diffusers records it in set order and does not save it)."""
    return {k: v for k, v in config.items() if k != "_use_default_values"}


def grads(model) -> dict:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------------------------------------------
# Code written against diffusers' API, run with both libraries
# ----------------------------------------------------------------------------------------------------------------


def diffusers_style_train_step(vae_model, unet_model, scheduler, images, context, seed: int):
    """A latent-diffusion training step as diffusers' train_text_to_image.py writes it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = vae_model.encode(images).latent_dist.sample(generator=generator)
    latents = latents * vae_model.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise,
                                                                                                 timesteps)
    model_pred = unet_model(noisy_latents, timesteps, context, return_dict=False)[0]
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    loss.backward()
    return loss


def diffusers_style_sampling(vae_model, unet_model, scheduler, context, steps: int, seed: int):
    """A sampling loop as diffusers' pipelines write it: scale_model_input, unet(...).sample, step(...).prev_sample."""
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    latents = torch.randn((context.shape[0], unet_model.config.in_channels, 8, 8), generator=generator)
    latents = latents * scheduler.init_noise_sigma
    outputs = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        noise_pred = unet_model(model_input, t, encoder_hidden_states=context).sample
        out = scheduler.step(noise_pred, t, latents, generator=generator)
        latents = out.prev_sample
        outputs.append(out.get("pred_original_sample"))
    image = vae_model.decode(latents / vae_model.config.scaling_factor, return_dict=False)[0]
    return image, outputs


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_step_written_for_diffusers_gives_identical_loss_and_gradients(prediction_type):
    ref_vae, our_vae = pair("AutoencoderKL", VAE_KWARGS)
    ref_unet, our_unet = pair("UNet2DConditionModel", UNET_KWARGS, seed=1)
    ref_sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type)
    our_sched = compat.DDPMScheduler.from_config(ref_sched.config)
    images, context = randn(2, 3, 32, 32, seed=2), randn(2, 4, 8, seed=3)
    ref_loss = diffusers_style_train_step(ref_vae.eval(), ref_unet.train(), ref_sched, images, context, seed=4)
    our_loss = diffusers_style_train_step(our_vae.eval(), our_unet.train(), our_sched, images, context, seed=4)
    assert torch.equal(ref_loss, our_loss)
    ref_grads, our_grads = grads(ref_unet), grads(our_unet)
    assert ref_grads.keys() == our_grads.keys() and len(ref_grads) > 50
    for name, grad in ref_grads.items():
        assert torch.equal(grad, our_grads[name]), name


@pytest.mark.parametrize("name", SCHEDULERS)
def test_sampling_loop_written_for_diffusers_gives_identical_samples(name):
    ref_vae, our_vae = pair("AutoencoderKL", VAE_KWARGS)
    ref_unet, our_unet = pair("UNet2DConditionModel", UNET_KWARGS, seed=1)
    ref_sched = getattr(diffusers, name)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    our_sched = getattr(compat, name).from_config(ref_sched.config)
    context = randn(2, 4, 8, seed=3)
    with torch.no_grad():
        ref_image, ref_x0 = diffusers_style_sampling(ref_vae.eval(), ref_unet.eval(), ref_sched, context, 4, seed=5)
        our_image, our_x0 = diffusers_style_sampling(our_vae.eval(), our_unet.eval(), our_sched, context, 4, seed=5)
    assert torch.equal(ref_image, our_image)
    for ref, ours in zip(ref_x0, our_x0):
        assert (ref is None and ours is None) or torch.equal(ref, ours)


# ----------------------------------------------------------------------------------------------------------------
# Train mode: outputs and gradients of the three models equal diffusers' (diffusers' upstream test configurations)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs, inputs", [
    ("AutoencoderKL", VAE_KWARGS, lambda: dict(sample=randn(4, 3, 32, 32))),
    ("VQModel", VQ_KWARGS, lambda: dict(sample=randn(4, 3, 32, 32))),
    ("UNet2DConditionModel", UNET_KWARGS, lambda: dict(sample=randn(4, 4, 16, 16), timestep=torch.tensor([10]),
                                                       encoder_hidden_states=randn(4, 4, 8, seed=1))),
])
def test_train_mode_outputs_and_gradients_equal_diffusers(name, kwargs, inputs):
    ref, ours = pair(name, kwargs)
    ref.train(), ours.train()
    ref_out = ref(**inputs(), return_dict=False)
    our_out = ours(**inputs(), return_dict=False)
    assert len(ref_out) == len(our_out)
    for a, b in zip(ref_out, our_out):
        assert torch.equal(a, b)
    target = randn(*ref_out[0].shape, seed=7)
    for model, out in ((ref, ref_out), (ours, our_out)):
        loss = F.mse_loss(out[0], target) + (out[1].sum() if len(out) > 1 else 0)   # VQ: + the commitment loss
        loss.backward()
    ref_grads, our_grads = grads(ref), grads(ours)
    assert ref_grads.keys() == our_grads.keys()
    for key, grad in ref_grads.items():
        assert torch.equal(grad, our_grads[key]), key


# ----------------------------------------------------------------------------------------------------------------
# The convention layer
# ----------------------------------------------------------------------------------------------------------------


def test_compat_never_imports_diffusers():
    import subprocess
    import sys
    code = "import sys, ldm.compat; sys.exit('diffusers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_compat_classes_are_the_plain_classes():
    assert issubclass(compat.AutoencoderKL, vae.AutoencoderKL) and issubclass(compat.VQModel, vq.VQModel)
    assert issubclass(compat.UNet2DConditionModel, unet.UNet2DConditionModel)
    assert issubclass(compat.DDIMScheduler, ddpm.DDIMScheduler)
    assert issubclass(compat.EulerDiscreteScheduler, samplers.EulerDiscreteScheduler)
    for name in ("AutoencoderKL", "VQModel", "UNet2DConditionModel", *SCHEDULERS):
        ours = set(inspect.signature(getattr(compat, name).__init__).parameters)   # keyword-only: order is free
        assert ours == set(inspect.signature(getattr(diffusers, name).__init__).parameters), name


@pytest.mark.parametrize("name, kwargs", [("AutoencoderKL", VAE_KWARGS), ("VQModel", VQ_KWARGS),
                                          ("UNet2DConditionModel", UNET_KWARGS)])
def test_model_configs_are_diffusers_dicts_both_ways(name, kwargs):
    ref, ours = pair(name, kwargs)
    assert as_dict(ours.config) == as_dict(ref.config)
    assert sorted(ours.config["_use_default_values"]) == sorted(ref.config["_use_default_values"])
    assert ours.config.block_out_channels is not None and ours.config["in_channels"] == ref.config.in_channels
    assert as_dict(getattr(compat, name).from_config(ref.config).config) == as_dict(ref.config)
    assert as_dict(getattr(diffusers, name).from_config(ours.config).config) == as_dict(ref.config)
    ours.register_to_config(note=5)
    assert ours.config["note"] == 5
    with pytest.warns(FutureWarning):
        assert ours.note == 5
    assert ours.dtype == torch.float32 and ours.device == torch.device("cpu")


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_configs_round_trip_with_diffusers(name, tmp_path):
    ref = getattr(diffusers, name)(num_train_timesteps=500, timestep_spacing="trailing")
    ours = getattr(compat, name)(num_train_timesteps=500, timestep_spacing="trailing")
    assert as_dict(ours.config) == as_dict(ref.config)
    assert sorted(c.__name__ for c in ours.compatibles) == sorted(SCHEDULERS)
    ours.save_config(tmp_path / "s")
    assert as_dict(getattr(diffusers, name).from_pretrained(tmp_path / "s").config) == as_dict(ours.config)
    ref.save_pretrained(tmp_path / "r")
    assert as_dict(getattr(compat, name).from_pretrained(tmp_path, subfolder="r").config) == as_dict(ref.config)
    other = compat.EulerDiscreteScheduler.from_config(ours.config)
    assert other.config.num_train_timesteps == 500 and other.config.timestep_spacing == "trailing"


def test_output_objects_and_return_dict():
    ref, ours = pair("AutoencoderKL", VAE_KWARGS)
    x = randn(2, 3, 32, 32)
    with torch.no_grad():
        posterior = ours.encode(x).latent_dist
        assert torch.equal(posterior.mean, ref.encode(x).latent_dist.mean)
        assert ours.encode(x, return_dict=False)[0].mean.shape == (2, 4, 16, 16)
        out = ours.decode(posterior.mode())
        assert torch.equal(out.sample, out[0]) and torch.equal(out["sample"], out.to_tuple()[0])
        assert list(out.keys()) == ["sample"] and out.commit_loss is None
        assert torch.equal(ours(sample=x).sample, ref(sample=x).sample)
        qref, qours = pair("VQModel", VQ_KWARGS)
        assert torch.equal(qours.encode(x).latents, qref.encode(x).latents)
        ours_sample, ours_loss = qours(x, return_dict=False)
        assert torch.equal(ours_sample, qref(x).sample) and torch.equal(ours_loss, qref(x).commit_loss)
    scheduler = compat.DDIMScheduler()
    scheduler.set_timesteps(5)
    step = scheduler.step(randn(1, 3, 4, 4), scheduler.timesteps[0], randn(1, 3, 4, 4, seed=1), return_dict=False)
    assert isinstance(step, tuple) and len(step) == 2


def test_from_pretrained_reads_diffusers_folders_with_dtype_and_subfolder(tmp_path):
    ref, _ = pair("UNet2DConditionModel", UNET_KWARGS)
    ref.save_pretrained(tmp_path / "unet", variant="fp16")
    ours = compat.UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet", variant="fp16",
                                                       torch_dtype=torch.float16, low_cpu_mem_usage=False)
    assert isinstance(ours, compat.UNet2DConditionModel) and ours.dtype == torch.float16 and not ours.training
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value.half())
    with pytest.raises(OSError, match="Error no file named diffusion_pytorch_model.bin"):
        compat.UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    ours.float().save_pretrained(tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"
    assert isinstance(diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "back"),
                      diffusers.UNet2DConditionModel)


def test_attention_processor_api_with_the_default_processor():
    ref, ours = pair("UNet2DConditionModel", UNET_KWARGS)
    assert sorted(ours.attn_processors) == sorted(ref.attn_processors)
    inputs = dict(sample=randn(2, 4, 16, 16), timestep=3, encoder_hidden_states=randn(2, 4, 8, seed=1))
    with torch.no_grad():
        expected = ref(**inputs).sample
        ours.set_attn_processor(diffusers.models.attention_processor.AttnProcessor2_0())
        ours.set_attention_slice("auto")
        ours.fuse_qkv_projections()
        fused = ours(**inputs, cross_attention_kwargs={"scale": 1.0}).sample
        # one matmul of a stacked weight instead of three: BLAS may block it differently (so does diffusers' fusion)
        assert (fused - expected).abs().max() <= 1e-5 * expected.abs().max()
        ours.unfuse_qkv_projections()
        ours.set_default_attn_processor()
        assert torch.equal(ours(**inputs).sample, expected)
    with pytest.raises(ValueError, match="number of processors"):
        ours.set_attn_processor({"mid_block.attentions.0.transformer_blocks.0.attn1.processor": compat.AttnProcessor()})
    with pytest.raises(ValueError, match="IPAdapterAttnProcessor2_0 is not offered"):
        ours.set_attn_processor(diffusers.models.attention_processor.IPAdapterAttnProcessor2_0(8, 8))


def test_gradient_checkpointing_flags_and_equal_gradients():
    _, ours = pair("UNet2DConditionModel", UNET_KWARGS)
    assert compat.UNet2DConditionModel._supports_gradient_checkpointing and not ours.is_gradient_checkpointing
    inputs = dict(sample=randn(2, 4, 16, 16), timestep=torch.tensor([10]), encoder_hidden_states=randn(2, 4, 8))
    ours(**inputs).sample.square().mean().backward()
    plain = grads(ours)
    ours.zero_grad(set_to_none=True)
    ours.enable_gradient_checkpointing()
    assert ours.is_gradient_checkpointing
    ours(**inputs).sample.square().mean().backward()
    for key, grad in grads(ours).items():
        assert torch.equal(grad, plain[key]), key
    ours.disable_gradient_checkpointing()
    assert not ours.is_gradient_checkpointing


def test_custom_timesteps_and_sigmas_match_diffusers():
    sample, eps = randn(1, 3, 4, 4), randn(1, 3, 4, 4, seed=1)
    for name, kwargs in [("DDPMScheduler", dict(timesteps=[700, 420, 99, 0])),
                         ("DPMSolverMultistepScheduler", dict(timesteps=[900, 600, 300, 10])),
                         ("EulerDiscreteScheduler", dict(timesteps=[900.0, 600.5, 300.0, 10.0])),
                         ("EulerDiscreteScheduler", dict(sigmas=[14.0, 5.0, 1.5, 0.3, 0.0]))]:
        ref, ours = getattr(diffusers, name)(), getattr(compat, name)()
        ref.set_timesteps(**kwargs), ours.set_timesteps(**kwargs)
        assert torch.equal(ref.timesteps, ours.timesteps), name
        x_ref = x_ours = sample
        for t in ref.timesteps:
            x_ref = ref.step(eps, t, x_ref, generator=torch.manual_seed(0)).prev_sample
            x_ours = ours.step(eps, t, x_ours, generator=torch.manual_seed(0)).prev_sample
        assert torch.equal(x_ref, x_ours), name


def test_euler_scale_model_input_before_set_timesteps_and_begin_index():
    ref, ours = diffusers.EulerDiscreteScheduler(), compat.EulerDiscreteScheduler()
    x = randn(1, 3, 4, 4)
    assert torch.equal(ref.scale_model_input(x, ref.timesteps[10]), ours.scale_model_input(x, ours.timesteps[10]))
    for scheduler in (ref, ours):
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(4)
    t = ref.timesteps[4]
    assert torch.equal(ref.step(x, t, x).prev_sample, ours.step(x, t, x).prev_sample)


def test_default_valued_diffusers_options_are_accepted_and_others_refused_by_name():
    full = dict(diffusers.DPMSolverMultistepScheduler().config)
    assert compat.DPMSolverMultistepScheduler(**{k: v for k, v in full.items() if not k.startswith("_")})
    compat.EulerDiscreteScheduler(use_exponential_sigmas=False, use_beta_sigmas=False, interpolation_type="linear",
                                  timestep_type="discrete")
    for cls, option in [(compat.DPMSolverMultistepScheduler, dict(use_lu_lambdas=True)),
                        (compat.EulerDiscreteScheduler, dict(interpolation_type="log_linear")),
                        (compat.EulerDiscreteScheduler, dict(timestep_type="continuous"))]:
        key = next(iter(option))
        with pytest.raises(ValueError, match=f"{key}=.* is not implemented"):
            cls(**option)
    _, model = pair("UNet2DConditionModel", UNET_KWARGS)
    inputs = dict(sample=randn(1, 4, 16, 16), timestep=1, encoder_hidden_states=randn(1, 4, 8))
    for key, value in [("timestep_cond", randn(1, 4)), ("added_cond_kwargs", {"text_embeds": randn(1, 4)}),
                       ("mid_block_additional_residual", randn(1, 8, 8, 8))]:
        with pytest.raises(ValueError, match=key):
            model(**inputs, **{key: value})
    with pytest.raises(ValueError, match="number"):
        model(**inputs, cross_attention_kwargs={"number": 1})
    with pytest.raises(ValueError, match="class_embed_type"):
        compat.UNet2DConditionModel(**UNET_KWARGS, class_embed_type="timestep")
    with pytest.raises(TypeError, match="not_a_key"):
        compat.AutoencoderKL(not_a_key=1)



def test_an_exported_pipeline_opens_in_diffusers_without_network(tmp_path, monkeypatch):
    from tests.test_pipeline import tiny_pipeline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe", custom_pipeline="pipeline",
                                                         trust_remote_code=True)
    assert type(loaded).__name__ == "UserIDLatentDiffusionPipeline"
    assert isinstance(loaded.unet, diffusers.UNet2DConditionModel) and isinstance(loaded.vae, diffusers.AutoencoderKL)
    assert isinstance(loaded.scheduler, diffusers.DDPMScheduler)
    for ours, theirs in ((pipe.denoiser.unet, loaded.unet), (pipe.vae, loaded.vae), (pipe.denoiser.embedder,
                                                                                      loaded.embedder)):
        for key, value in ours.state_dict().items():
            assert torch.equal(theirs.state_dict()[key], value), key
    ids = torch.tensor([0, 2])
    assert torch.equal(loaded.embedder(ids), pipe.denoiser.embedder(ids))
