"""UNet2DConditionModel parity with diffusers 0.42 (the reference), config translation, and input errors."""
import dataclasses

import pytest
import torch
from diffusers import UNet2DConditionModel as RefUNet

from diffusers.models.transformers.transformer_2d import Transformer2DModel as RefTransformer2D

from ldm.transformer import Transformer2D
from ldm import fast
from ldm.unet import UNET_PRESETS, UNet2DConditionModel, UNetConfig
from tests.helpers import assert_close, assert_same_keys, cuda_pair, perturb_, sd15_inputs

# Tiny diffusers configs (16x16 inputs, 8 norm groups), each exercising one feature of the listed blocks.
SD1 = dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
           block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=8,
           cross_attention_dim=48, attention_head_dim=4)                     # 4 heads everywhere (SD-1.x style)
TWO_LEVELS = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                  cross_attention_dim=32, attention_head_dim=4)
DIFFUSERS_CONFIGS = {
    "sd1_style": SD1,
    # linear projections, heads per level (constant head dim 16), upcast_attention, transformer depth per level
    "sd2_style": dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                      block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=40,
                      attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True,
                      transformer_layers_per_block=(1, 2)),
    "class_embeddings": dict(TWO_LEVELS, num_class_embeds=10),
    "scale_shift": dict(TWO_LEVELS, resnet_time_scale_shift="scale_shift"),
    "two_transformer_layers": dict(TWO_LEVELS, transformer_layers_per_block=2),
    "mid_block_without_attention": dict(TWO_LEVELS, mid_block_type="UNetMidBlock2D"),
    "no_mid_block": dict(TWO_LEVELS, mid_block_type=None),
    # attention going down only at level 1, going up only at level 0; per-level resnet counts; the rest non-default
    "assorted": dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 48),
                     layers_per_block=(1, 2), norm_num_groups=8, cross_attention_dim=24, attention_head_dim=(2, 3),
                     only_cross_attention=True, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
                     downsample_padding=0, mid_block_scale_factor=1.5, dropout=0.1),
}


def make_pair(name: str, seed: int = 0):
    torch.manual_seed(seed)
    ref = perturb_(RefUNet(sample_size=16, **DIFFUSERS_CONFIGS[name]), seed=seed).eval()
    ours = UNet2DConditionModel(UNetConfig.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def inputs(model: UNet2DConditionModel, batch: int = 2, size=(16, 16), tokens: int = 5, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    kwargs = dict(sample=torch.randn(batch, cfg.in_channels, *size, generator=g),
                  timestep=torch.tensor([10, 980])[:batch],
                  encoder_hidden_states=torch.randn(batch, tokens, cfg.cross_attention_dim, generator=g))
    if cfg.num_class_embeds:
        kwargs["class_labels"] = torch.randint(0, cfg.num_class_embeds, (batch,), generator=g)
    return kwargs


def reference(ref: RefUNet, **kwargs) -> torch.Tensor:
    return ref(**kwargs).sample


@pytest.mark.parametrize("name", DIFFUSERS_CONFIGS)
def test_state_dict_keys_and_shapes_match_diffusers(name):
    ours, ref = make_pair(name)
    assert_same_keys(ours, ref)


@pytest.mark.parametrize("name", DIFFUSERS_CONFIGS)
@torch.no_grad()
def test_forward_matches_diffusers(name):
    ours, ref = make_pair(name)
    x = inputs(ours)
    assert_close(ours(**x), reference(ref, **x), what=name)


@pytest.mark.parametrize("size", [(15, 13), (9, 10), (17, 16)])
@torch.no_grad()
def test_sizes_not_multiple_of_the_downsampling_factor_match_diffusers(size):
    ours, ref = make_pair("sd1_style")                    # 3 levels: 15 -> 8 -> 4 going down, 4 -> 8 -> 15 going up
    x = inputs(ours, size=size)
    out = ours(**x)
    assert out.shape == x["sample"].shape
    assert_close(out, reference(ref, **x), what=f"size {size}")


@torch.no_grad()
def test_encoder_attention_mask_matches_diffusers():
    ours, ref = make_pair("sd1_style")
    x = inputs(ours, tokens=6)
    mask = torch.ones(2, 6)
    mask[0, 4:] = 0                                        # sample 0 ignores its last two context tokens
    masked = ours(**x, encoder_attention_mask=mask)
    assert_close(masked, reference(ref, **x, encoder_attention_mask=mask), what="masked")
    assert_close(ours(**x, encoder_attention_mask=mask.bool()), masked, tol=0, what="bool mask")
    assert (masked - ours(**x)).abs().max() > 1e-3         # the mask changed the result
    # Masking adds -10000 to the scores (not -inf): keys that score above that still leak through, as in diffusers.
    x["encoder_hidden_states"][0, 4:] *= 1e4
    assert_close(ours(**x, encoder_attention_mask=mask), reference(ref, **x, encoder_attention_mask=mask),
                 what="masked, huge scores")


@pytest.mark.parametrize("linear", [False, True])
@torch.no_grad()
def test_transformer2d_matches_diffusers_where_the_norm_eps_matters(linear):
    torch.manual_seed(0)
    ref = perturb_(RefTransformer2D(4, 8, in_channels=32, num_layers=2, cross_attention_dim=24, norm_num_groups=8,
                                    use_linear_projection=linear)).eval()
    ours = Transformer2D(32, 4, 24, num_layers=2, norm_groups=8, use_linear_projection=linear).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    x = 1e-3 * torch.randn(2, 32, 6, 5, generator=g)      # variance near the GroupNorm eps, so a wrong eps shows
    context = torch.randn(2, 3, 24, generator=g)
    assert_close(ours(x, context), ref(x, context, return_dict=False)[0], what="Transformer2D")


@torch.no_grad()
def test_resnet_norm_eps_matches_diffusers_where_it_matters():
    ours, ref = make_pair("assorted")                      # norm_eps 1e-6, not the default 1e-5
    for model in (ours, ref):
        model.conv_in.bias.zero_()                         # so the first GroupNorm sees variance near its eps
    x = inputs(ours)
    x["sample"] *= 1e-3
    assert_close(ours(**x), reference(ref, **x), what="small inputs")


@torch.no_grad()
def test_self_attention_mask_matches_diffusers():
    # Self-attention masks only make sense when every attention runs at one resolution: here 8x8 = 64 tokens.
    torch.manual_seed(0)
    ref = perturb_(RefUNet(**dict(TWO_LEVELS, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                  mid_block_type="UNetMidBlock2D"))).eval()
    ours = UNet2DConditionModel(UNetConfig.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = inputs(ours)
    mask = (torch.arange(64) % 3 != 0).float().expand(2, 64)
    assert_close(ours(**x, attention_mask=mask), reference(ref, **x, attention_mask=mask), what="self mask")
    with pytest.raises(ValueError, match="attention_mask has 63 entries.*64 tokens"):
        ours(**x, attention_mask=mask[:, :63])


@pytest.mark.parametrize("timestep", [10, 10.0, torch.tensor(10), torch.tensor([10]), torch.tensor([10, 10]),
                                      torch.tensor([10.0, 10.0], dtype=torch.float64)])
@torch.no_grad()
def test_timestep_forms_match_diffusers_and_each_other(timestep):
    ours, ref = make_pair("class_embeddings")
    x = inputs(ours)
    x["timestep"] = timestep
    out = ours(**x)
    assert_close(out, reference(ref, **x), what=f"timestep {timestep!r}")
    x["timestep"] = torch.tensor([10, 10])
    assert_close(out, ours(**x), tol=0, what="same as a (B,) tensor")


def test_gradients_match_diffusers_with_and_without_checkpointing():
    ours, ref = make_pair("sd1_style")
    x = inputs(ours)
    ref(**x).sample.square().mean().backward()
    expected = torch.cat([p.grad.flatten() for _, p in sorted(ref.named_parameters())])
    for enabled in (False, True):
        ours.zero_grad()
        ours.enable_gradient_checkpointing(enabled)
        ours(**x).square().mean().backward()
        grads = torch.cat([p.grad.flatten() for _, p in sorted(ours.named_parameters())])
        assert_close(grads, expected, what=f"gradients (checkpointing={enabled})")


def test_checkpointing_gives_the_same_gradients_and_really_recomputes():
    ours, _ = make_pair("two_transformer_layers")
    x = inputs(ours)
    grads = []
    for enabled in (False, True):
        ours.zero_grad()
        ours.enable_gradient_checkpointing(enabled)
        calls = []
        hook = ours.down_blocks[0].attentions[0].register_forward_pre_hook(lambda *args: calls.append(1))
        ours(**x).square().mean().backward()
        hook.remove()
        assert len(calls) == (2 if enabled else 1)           # checkpointed modules run again in backward
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters()]))
    assert_close(grads[1], grads[0], tol=1e-6, what="gradients with checkpointing")


# ---- configs and presets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIFFUSERS_CONFIGS)
def test_config_round_trips_through_diffusers(name):
    ref = RefUNet(**DIFFUSERS_CONFIGS[name])
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    rebuilt = RefUNet(**cfg.to_diffusers())
    assert UNetConfig.from_diffusers(dict(rebuilt.config)) == cfg
    assert_same_keys(rebuilt, ref)


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_presets_round_trip_and_build_the_same_keys_as_diffusers(name):
    cfg = UNetConfig.preset(name)
    assert UNetConfig.from_diffusers(cfg.to_diffusers()) == cfg
    with torch.device("meta"):
        ours, ref = UNet2DConditionModel(cfg), RefUNet(**cfg.to_diffusers())
    assert_same_keys(ours, ref)
    assert UNetConfig.from_diffusers(dict(ref.config)) == cfg


def test_sd_presets_have_the_stable_diffusion_sizes():
    for name, keys, params in (("sd15", 686, 859_520_964), ("sd2", 686, 865_910_724)):
        with torch.device("meta"):
            model = UNet2DConditionModel(UNetConfig.preset(name))
        assert len(model.state_dict()) == keys
        assert sum(p.numel() for p in model.parameters()) == params


def test_attention_head_dim_is_translated_to_num_heads():
    sd2 = UNetConfig.from_diffusers({"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024})
    assert sd2.num_heads == (5, 10, 20, 20) and sd2.head_dims == (64, 64, 64, 64)
    sd1 = UNetConfig.from_diffusers({"attention_head_dim": 8})
    assert sd1.num_heads == (8, 8, 8, 8) and sd1.head_dims == (40, 80, 160, 160)
    assert sd1.to_diffusers()["attention_head_dim"] == 8


def test_microdoppler_preset_runs_forward_and_backward():
    cfg = UNetConfig.preset("microdoppler")
    assert (cfg.sample_size, cfg.in_channels, cfg.cross_attention_dim, cfg.num_class_embeds) == (32, 4, 768, 64)
    torch.manual_seed(0)
    model = UNet2DConditionModel(cfg)
    sample = torch.randn(2, 4, 32, 32)
    out = model(sample, torch.tensor([3, 700]), torch.randn(2, 1, 768), class_labels=torch.tensor([0, 63]))
    assert out.shape == sample.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.class_embedding.weight.grad[[0, 63]].abs().sum() > 0


# ---- errors ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return UNet2DConditionModel(UNetConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def tiny_with_classes():
    return UNet2DConditionModel(dataclasses.replace(UNetConfig.preset("tiny"), num_class_embeds=5)).eval()


def test_missing_encoder_hidden_states_is_named(tiny):
    with pytest.raises(ValueError, match="encoder_hidden_states is required"):
        tiny(torch.zeros(1, 4, 16, 16), 1)


def test_class_labels_without_a_class_embedding_are_refused(tiny):
    with pytest.raises(ValueError, match="class_labels were given.*num_class_embeds"):
        tiny(torch.zeros(2, 4, 16, 16), 1, torch.zeros(2, 3, 32), class_labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("labels, message", [
    (None, "class_labels are required"),
    (torch.tensor([0, 5]), r"class_labels must lie in \[0, 4\], got \[5\]"),
    (torch.tensor([-1, 2]), r"class_labels must lie in \[0, 4\], got \[-1\]"),
    (torch.tensor([0.0, 1.0]), "class_labels must be an integer tensor"),
    (torch.tensor([0, 1, 2]), r"class_labels must have shape \(2,\)"),
])
def test_bad_class_labels_are_named(tiny_with_classes, labels, message):
    with pytest.raises(ValueError, match=message):
        tiny_with_classes(torch.zeros(2, 4, 16, 16), 1, torch.zeros(2, 3, 32), class_labels=labels)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sample=torch.zeros(1, 3, 16, 16)), "sample has 3 channels, the config expects 4"),
    (dict(sample=torch.zeros(4, 16, 16)), r"sample must have 4 dims \(B, C, H, W\)"),
    (dict(encoder_hidden_states=torch.zeros(1, 3, 48)), "encoder_hidden_states has width 48.*cross_attention_dim=32"),
    (dict(encoder_hidden_states=torch.zeros(1, 32)), r"encoder_hidden_states must have 3 dims \(B, S, D\)"),
    (dict(encoder_hidden_states=torch.zeros(2, 3, 32)), "encoder_hidden_states has batch size 2, sample has 1"),
    (dict(timestep=torch.tensor([1, 2, 3])), r"timestep must be a number, a 0-d tensor or a \(1,\) tensor, got \(3,\)"),
    (dict(encoder_attention_mask=torch.ones(1, 4)), r"encoder_attention_mask must have shape \(1, 3\)"),
])
def test_bad_inputs_are_named(tiny, kwargs, message):
    x = dict(sample=torch.zeros(1, 4, 16, 16), timestep=1, encoder_hidden_states=torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match=message):
        tiny(**{**x, **kwargs})


def test_context_for_a_model_without_cross_attention_is_refused():
    cfg = UNetConfig.from_diffusers(dict(TWO_LEVELS, down_block_types=("DownBlock2D",) * 2,
                                         up_block_types=("UpBlock2D",) * 2, mid_block_type="UNetMidBlock2D"))
    model = UNet2DConditionModel(cfg)
    assert model(torch.zeros(1, 4, 8, 8), 3).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="encoder_hidden_states were given.*no cross-attention"):
        model(torch.zeros(1, 4, 8, 8), 3, torch.zeros(1, 2, 32))


@pytest.mark.parametrize("mapping, key", [
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"addition_embed_type": "text_time"}, "addition_embed_type"),
    ({"down_block_types": ["AttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
      "block_out_channels": [32, 64]}, "down_block_types"),
    ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type"),
    ({"act_fn": "gelu"}, "act_fn"),
    ({"num_attention_heads": 8}, "num_attention_heads"),
    ({"transformer_layers_per_block": [[1, 2], [1, 2], [1, 2], [1, 2]]}, "transformer_layers_per_block"),
    ({"cross_attention_dim": [768, 768, 1024, 1024]}, "cross_attention_dim"),
    ({"time_cond_proj_dim": 256}, "time_cond_proj_dim"),
    ({"attention_type": "gated"}, "attention_type"),
    ({"center_input_sample": True}, "center_input_sample"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_from_diffusers_names_unsupported_keys(mapping, key):
    with pytest.raises(ValueError, match=key):
        UNetConfig.from_diffusers(mapping)


def test_from_diffusers_ignores_informational_keys_and_uses_diffusers_defaults():
    cfg = UNetConfig.from_diffusers({"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.42.1",
                                     "_use_default_values": ["act_fn"]})
    assert cfg.cross_attention_dim == 1280 and cfg.num_heads == (8, 8, 8, 8)   # diffusers' defaults, not SD 1.5's


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_out_channels=(32, 60)), "divisible by norm_num_groups"),
    (dict(num_heads=(4, 5)), "level 1 has 64 channels, which cannot be split into 5 heads"),
    (dict(layers_per_block=(1, 1, 1)), "layers_per_block has 3 entries"),
    (dict(mid_block="attention"), "mid_block must be"),
    (dict(resnet_time_scale_shift="film"), "resnet_time_scale_shift"),
])
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(UNetConfig.preset("tiny"), **kwargs)
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'"):
        UNetConfig.preset("huge")


# ---- full size, on a GPU -----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@torch.no_grad()
def test_full_sd15_unet_matches_diffusers_on_gpu():
    ours, ref = cuda_pair(RefUNet, UNet2DConditionModel, UNetConfig.preset("sd15"))
    x = sd15_inputs()
    expected = ref(**x).sample
    assert_close(ours(**x), expected, tol=1e-4, what="SD 1.5 UNet")
    assert_close(fast.optimize(ours)(**x), expected, tol=1e-4, what="SD 1.5 UNet, ldm.fast path")


@pytest.mark.parametrize("timestep, message", [
    (torch.tensor([float("nan"), 3.0]), r"timestep must be finite and >= 0, got \[nan\]"),
    (torch.tensor([-1, 5]), r"timestep must be finite and >= 0, got \[-1\]"),
    (float("inf"), "timestep must be finite and >= 0, got inf"),
    (True, "timestep must be a number or a tensor, got bool"),
])
def test_nonsense_timesteps_are_refused_naming_the_value(timestep, message):
    unet = UNet2DConditionModel(UNetConfig.preset("tiny")).eval()
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match=message):
        unet(x, timestep, context)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_inputs_of_another_dtype_than_the_weights_are_refused_with_the_fix(dtype):
    unet = UNet2DConditionModel(UNetConfig.preset("tiny")).eval()
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match=rf"sample is {dtype}, the model's weights are torch.float32; convert"):
        unet(x.to(dtype), 10, context)
    with pytest.raises(ValueError, match=rf"encoder_hidden_states is {dtype}, the model's weights are torch.float32"):
        unet(x, 10, context.to(dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):   # autocast casts for itself: allowed
        unet(x.to(torch.bfloat16), 10, context)
