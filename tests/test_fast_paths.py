"""The speed paths of the models, checked against diffusers on CPU: ldm.fast (fused projections, in-place ops,
channels-last pass-through) bit-equal to the plain model and within tolerance of diffusers, torch.compile(fullgraph=True)
without graph breaks on both paths, channels-last memory format, and the sync-free class-label check."""
import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers import UNet2DConditionModel as RefUNet
from diffusers import VQModel as RefVQModel

from ldm import fast
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from ldm.vq import VQConfig, VQModel
from tests.helpers import assert_close, perturb_

CHANNELS_LAST = torch.channels_last
PATHS = pytest.mark.parametrize("path", ["plain", "fast"])


def on_path(model, path: str):
    return fast.optimize(model) if path == "fast" else model


def unet_pair(path: str = "plain", **changes):
    """The tiny UNet preset with class labels, ours (on `path`) and diffusers', same perturbed weights."""
    cfg = dataclasses.replace(UNetConfig.preset("tiny"), num_class_embeds=10, **changes)
    torch.manual_seed(0)
    ref = perturb_(RefUNet(**cfg.to_diffusers())).eval()
    ours = UNet2DConditionModel(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return on_path(ours, path), ref


def unet_inputs(cfg: UNetConfig, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(batch, cfg.in_channels, 16, 16, generator=g), timestep=torch.tensor([7, 901]),
                encoder_hidden_states=torch.randn(batch, 3, cfg.cross_attention_dim, generator=g),
                class_labels=torch.tensor([3, 9]))


def vae_pair(cls, ref_cls, config, path: str = "plain"):
    torch.manual_seed(0)
    ref = perturb_(ref_cls(**config.to_diffusers())).eval()
    ours = cls(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return on_path(ours, path), ref


def images(channels: int = 3) -> torch.Tensor:
    return torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1


# ---- torch.compile(fullgraph=True) ---------------------------------------------------------------------------------
# fullgraph=True makes any graph break an error. The "eager" backend stops after dynamo's trace (where graph breaks
# happen) and "aot_eager" after AOTAutograd's forward/backward trace, without inductor's code generation, which keeps
# these tests fast on a CPU; scripts/gpu_check.sh compiles with inductor.


@PATHS
@torch.no_grad()
def test_unet_compiles_as_one_graph_and_matches_diffusers(path):
    ours, ref = unet_pair(path)
    x = unet_inputs(ours.config)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    assert_close(compiled(**x), ref(**x).sample, what="compiled UNet")


@PATHS
def test_compiled_unet_training_step_gives_diffusers_gradients(path):
    ours, ref = unet_pair(path)
    x = unet_inputs(ours.config)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    compiled(**x).square().mean().backward()
    ref(**x).sample.square().mean().backward()
    for name in ("conv_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight",
                 "class_embedding.weight", "up_blocks.1.resnets.0.conv1.weight"):
        assert_close(ours.get_parameter(name).grad, ref.get_parameter(name).grad, what=f"gradient of {name}")


@PATHS
def test_vae_and_vq_compile_as_one_graph_and_match_diffusers(path):
    vae, ref = vae_pair(AutoencoderKL, RefAutoencoderKL, VAEConfig.preset("tiny"), path)
    x = images()
    compiled = torch.compile(lambda t: vae.decode(vae.encode(t).mean), fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_close(compiled(x), ref.decode(ref.encode(x).latent_dist.mean).sample, what="compiled VAE")
    vq, ref_vq = vae_pair(VQModel, RefVQModel, VQConfig.preset("tiny"), path)
    compiled = torch.compile(lambda t: vq.decode(vq.encode(t)), fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_close(compiled(x), ref_vq.decode(ref_vq.encode(x).latents).sample, what="compiled VQModel")


def test_out_of_range_class_label_is_caught_inside_a_compiled_graph():
    ours, _ = unet_pair("fast")
    x = unet_inputs(ours.config)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    with pytest.raises(RuntimeError, match=r"class_labels must lie in \[0, 9\]"):
        compiled(**dict(x, class_labels=torch.tensor([3, 10])))
    with pytest.raises(ValueError, match=r"got \[-1\]"):   # eager on the CPU: the friendly error, naming the label
        ours(**dict(x, class_labels=torch.tensor([-1, 2])))


# ---- channels-last ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("linear", [False, True], ids=["conv_projections", "linear_projections"])
@torch.no_grad()
def test_channels_last_unet_matches_diffusers_and_keeps_the_layout(linear):
    ours, ref = unet_pair("fast", use_linear_projection=linear)
    x = unet_inputs(ours.config)
    expected = ref(**x).sample
    ours = ours.to(memory_format=CHANNELS_LAST)
    out = ours(**dict(x, sample=x["sample"].contiguous(memory_format=CHANNELS_LAST)))
    assert_close(out, expected, what="channels-last UNet")
    assert out.is_contiguous(memory_format=CHANNELS_LAST) and not out.is_contiguous()
    block = ours.down_blocks[0].attentions[0]   # the transformer hands a channels-last map on unchanged in layout
    h = torch.randn(2, 32, 16, 16).contiguous(memory_format=CHANNELS_LAST)
    assert block(h, x["encoder_hidden_states"]).is_contiguous(memory_format=CHANNELS_LAST)
    fast.restore(ours)   # the plain transformer hands back diffusers' contiguous layout, with the same values
    assert_close(ours(**dict(x, sample=x["sample"].contiguous(memory_format=CHANNELS_LAST))), expected,
                 what="channels-last plain UNet")


@PATHS
@torch.no_grad()
def test_channels_last_autoencoders_match_diffusers(path):
    vae, ref = vae_pair(AutoencoderKL, RefAutoencoderKL, VAEConfig.preset("tiny"), path)
    x = images()
    expected = ref.decode(ref.encode(x).latent_dist.mean).sample
    vae = vae.to(memory_format=CHANNELS_LAST)
    out = vae.decode(vae.encode(x.contiguous(memory_format=CHANNELS_LAST)).mean)
    assert_close(out, expected, what="channels-last VAE")
    vq, ref_vq = vae_pair(VQModel, RefVQModel, VQConfig.preset("tiny"), path)
    expected = ref_vq.decode(ref_vq.encode(x).latents).sample
    vq = vq.to(memory_format=CHANNELS_LAST)
    assert_close(vq.decode(vq.encode(x.contiguous(memory_format=CHANNELS_LAST))), expected, what="channels-last VQ")


# ---- in-place inference ops ---------------------------------------------------------------------------------------


def test_inference_ops_leave_inputs_untouched_and_training_still_differentiates():
    ours, ref = unet_pair("fast")
    x = unet_inputs(ours.config)
    before = {k: v.clone() for k, v in x.items()}
    with torch.no_grad():
        ours(**x)
    for k in x:
        assert torch.equal(x[k], before[k]), f"{k} was modified in place"
    # with gradients on, the same code must take its out-of-place branches (autograd raises otherwise); the
    # gradients themselves are compared with diffusers' in test_compiled_unet_training_step_gives_diffusers_gradients
    sample = x["sample"].clone().requires_grad_()
    out = ours(**dict(x, sample=sample))
    with torch.no_grad():
        assert_close(out, ref(**x).sample, what="output with gradients on")
    out.sum().backward()
    assert sample.grad is not None and torch.isfinite(sample.grad).all()


@torch.no_grad()
def test_cached_fused_weights_follow_every_change_of_the_weights():
    """The stacked q/k/v (and cross-attention k/v) weights are cached without autograd; each way of changing the
    weights must reach the output: in-place edits, load_state_dict, an optimizer step, and a dtype change."""
    ours, ref = unet_pair("fast")
    x = unet_inputs(ours.config)

    def check(what):
        assert_close(ours(**x), ref(**x).sample, what=what)

    check("first call (cache filled)")
    check("second call (cache reused)")
    for model in (ours, ref):   # in place, as an EMA update or a manual edit would do it
        model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_k.weight.mul_(1.5)
        model.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v.weight.add_(0.1)
    check("after in-place edits")
    torch.manual_seed(5)
    ref.load_state_dict(perturb_(RefUNet(**ours.config.to_diffusers()), seed=5).state_dict())
    ours.load_state_dict(ref.state_dict())
    check("after load_state_dict")
    with torch.enable_grad():   # an optimizer step on both, then inference again
        for model, out in ((ours, lambda: ours(**x)), (ref, lambda: ref(**x).sample)):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            out().square().mean().backward()
            optimizer.step()
    check("after an optimizer step")
    ours.double(), ref.double()
    x = {k: v.double() if v.is_floating_point() else v for k, v in x.items()}
    check("after .double()")


def test_sampling_and_graph_wrapper_refuse_cuda_graphs_without_cuda():
    from ldm.cuda_graph import CUDAGraphModel
    from ldm.ddpm import DDIMScheduler
    from ldm.guided_sampling import sample

    ours, _ = unet_pair()
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device, got device cpu"):
        sample(lambda x, t, c: ours(x, t, None), DDIMScheduler(), (1, 4, 16, 16), num_steps=2, progress=False,
               cuda_graph=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDAGraphModel needs a CUDA device"):
            CUDAGraphModel(ours)


# ---- the fast path equals the plain path bit for bit ---------------------------------------------------------------

UNET_VARIANTS = {
    "tiny": {},
    "linear_projections": dict(use_linear_projection=True),
    "scale_shift": dict(resnet_time_scale_shift="scale_shift"),
    "only_cross_attention": dict(only_cross_attention=True),
    "mid_scale": dict(mid_block_scale_factor=1.5),
}


@pytest.mark.parametrize("variant", list(UNET_VARIANTS))
def test_fast_unet_equals_the_plain_unet_bit_for_bit(variant):
    """Forward (no grad), forward with a context mask, and the gradients of a training step: torch.equal."""
    plain, _ = unet_pair(**UNET_VARIANTS[variant])
    quick, _ = unet_pair("fast", **UNET_VARIANTS[variant])
    assert fast.is_optimized(quick) and not fast.is_optimized(plain)
    x = unet_inputs(plain.config)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    with torch.no_grad():
        assert torch.equal(quick(**x), plain(**x))
        assert torch.equal(quick(**x, encoder_attention_mask=mask), plain(**x, encoder_attention_mask=mask))
    for model in (plain, quick):
        model.train()
        model(**x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), quick.parameters()):
        assert torch.equal(p.grad, q.grad), f"gradient of {name}"


@pytest.mark.parametrize("kind", ["vae", "vq_spatial_norm"])
@torch.no_grad()
def test_fast_autoencoders_equal_the_plain_ones_bit_for_bit(kind):
    x = images()
    if kind == "vae":
        plain, _ = vae_pair(AutoencoderKL, RefAutoencoderKL, VAEConfig.preset("tiny"))
        quick, _ = vae_pair(AutoencoderKL, RefAutoencoderKL, VAEConfig.preset("tiny"), "fast")
        assert torch.equal(quick.decode(quick.encode(x).mean), plain.decode(plain.encode(x).mean))
    else:
        config = dataclasses.replace(VQConfig.preset("tiny"), norm_type="spatial")
        plain, _ = vae_pair(VQModel, RefVQModel, config)
        quick, _ = vae_pair(VQModel, RefVQModel, config, "fast")
        assert torch.equal(quick.decode(quick.encode(x)), plain.decode(plain.encode(x)))


def test_optimize_and_restore_keep_the_state_dict_and_swap_only_classes():
    model, _ = unet_pair()
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    fast.optimize(model)
    assert list(model.state_dict()) == list(keys)
    model.load_state_dict(keys, strict=True)   # diffusers' keys still load into the optimized model
    fast.restore(model)
    assert [type(m) for m in model.modules()] == classes
    assert not any(hasattr(m, "_fused") for m in model.modules())
    assert all(torch.equal(v, keys[k]) for k, v in model.state_dict().items())
