"""The speed paths of the models, checked against diffusers on CPU: torch.compile(fullgraph=True) without graph breaks,
channels-last memory format, the in-place inference ops, and the sync-free class-label check."""
import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers import UNet2DConditionModel as RefUNet
from diffusers import VQModel as RefVQModel

from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from ldm.vq import VQConfig, VQModel
from tests.helpers import assert_close, perturb_

CHANNELS_LAST = torch.channels_last


def unet_pair(**changes):
    """The tiny UNet preset with class labels and linear projections, ours and diffusers', same perturbed weights."""
    cfg = dataclasses.replace(UNetConfig.preset("tiny"), num_class_embeds=10, **changes)
    torch.manual_seed(0)
    ref = perturb_(RefUNet(**cfg.to_diffusers())).eval()
    ours = UNet2DConditionModel(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def unet_inputs(cfg: UNetConfig, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(batch, cfg.in_channels, 16, 16, generator=g), timestep=torch.tensor([7, 901]),
                encoder_hidden_states=torch.randn(batch, 3, cfg.cross_attention_dim, generator=g),
                class_labels=torch.tensor([3, 9]))


def vae_pair(cls, ref_cls, config):
    torch.manual_seed(0)
    ref = perturb_(ref_cls(**config.to_diffusers())).eval()
    ours = cls(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def images(channels: int = 3) -> torch.Tensor:
    return torch.rand(2, channels, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1


# ---- torch.compile(fullgraph=True) ---------------------------------------------------------------------------------
# fullgraph=True makes any graph break an error. The "eager" backend stops after dynamo's trace (where graph breaks
# happen) and "aot_eager" after AOTAutograd's forward/backward trace, without inductor's code generation, which keeps
# these tests fast on a CPU; scripts/gpu_check.sh compiles with inductor.


@torch.no_grad()
def test_unet_compiles_as_one_graph_and_matches_diffusers():
    ours, ref = unet_pair()
    x = unet_inputs(ours.config)
    compiled = torch.compile(ours, fullgraph=True, backend="eager")
    assert_close(compiled(**x), ref(**x).sample, what="compiled UNet")


def test_compiled_unet_training_step_gives_diffusers_gradients():
    ours, ref = unet_pair()
    x = unet_inputs(ours.config)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    compiled(**x).square().mean().backward()
    ref(**x).sample.square().mean().backward()
    for name in ("conv_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight",
                 "class_embedding.weight", "up_blocks.1.resnets.0.conv1.weight"):
        assert_close(ours.get_parameter(name).grad, ref.get_parameter(name).grad, what=f"gradient of {name}")


def test_vae_and_vq_compile_as_one_graph_and_match_diffusers():
    vae, ref = vae_pair(AutoencoderKL, RefAutoencoderKL, VAEConfig.preset("tiny"))
    x = images()
    compiled = torch.compile(lambda t: vae.decode(vae.encode(t).mean), fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_close(compiled(x), ref.decode(ref.encode(x).latent_dist.mean).sample, what="compiled VAE")
    vq, ref_vq = vae_pair(VQModel, RefVQModel, VQConfig.preset("tiny"))
    compiled = torch.compile(lambda t: vq.decode(vq.encode(t)), fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_close(compiled(x), ref_vq.decode(ref_vq.encode(x).latents).sample, what="compiled VQModel")


def test_out_of_range_class_label_is_caught_inside_a_compiled_graph():
    ours, _ = unet_pair()
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
    ours, ref = unet_pair(use_linear_projection=linear)
    x = unet_inputs(ours.config)
    expected = ref(**x).sample
    ours = ours.to(memory_format=CHANNELS_LAST)
    out = ours(**dict(x, sample=x["sample"].contiguous(memory_format=CHANNELS_LAST)))
    assert_close(out, expected, what="channels-last UNet")
    assert out.is_contiguous(memory_format=CHANNELS_LAST) and not out.is_contiguous()
    block = ours.down_blocks[0].attentions[0]   # the transformer hands a channels-last map on unchanged in layout
    h = torch.randn(2, 32, 16, 16).contiguous(memory_format=CHANNELS_LAST)
    assert block(h, x["encoder_hidden_states"]).is_contiguous(memory_format=CHANNELS_LAST)


@torch.no_grad()
def test_channels_last_autoencoders_match_diffusers():
    vae, ref = vae_pair(AutoencoderKL, RefAutoencoderKL, VAEConfig.preset("tiny"))
    x = images()
    expected = ref.decode(ref.encode(x).latent_dist.mean).sample
    vae = vae.to(memory_format=CHANNELS_LAST)
    out = vae.decode(vae.encode(x.contiguous(memory_format=CHANNELS_LAST)).mean)
    assert_close(out, expected, what="channels-last VAE")
    vq, ref_vq = vae_pair(VQModel, RefVQModel, VQConfig.preset("tiny"))
    expected = ref_vq.decode(ref_vq.encode(x).latents).sample
    vq = vq.to(memory_format=CHANNELS_LAST)
    assert_close(vq.decode(vq.encode(x.contiguous(memory_format=CHANNELS_LAST))), expected, what="channels-last VQ")


# ---- in-place inference ops ---------------------------------------------------------------------------------------


def test_inference_ops_leave_inputs_untouched_and_training_still_differentiates():
    ours, ref = unet_pair()
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
    ours, ref = unet_pair()
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
    from ldm.sampling import sample

    ours, _ = unet_pair()
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device, got device cpu"):
        sample(lambda x, t, c: ours(x, t, None), DDIMScheduler(), (1, 4, 16, 16), num_steps=2, progress=False,
               cuda_graph=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDAGraphModel needs a CUDA device"):
            CUDAGraphModel(ours)
