"""AutoencoderKL parity with diffusers 0.42 (the reference), and the posterior against closed forms."""
import dataclasses
import math

import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL

from ldm import fast
from ldm.vae import AutoencoderKL, DiagonalGaussian, VAEConfig
from tests.helpers import assert_close, assert_same_keys, cuda_pair, perturb_

# Several diffusers configs: 1/2/3 channels, 1-4 levels, 1-2 layers per block, mid attention on/off, quant convs on/off.
DIFFUSERS_CONFIGS = {
    "rgb_2levels": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, sample_size=32),
    "gray_3levels_noattn": dict(in_channels=1, out_channels=1, block_out_channels=(16, 32, 32), layers_per_block=2,
                                norm_num_groups=8, mid_block_add_attention=False, sample_size=32),
    "rgb_4levels_noquant": dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=4,
                                use_quant_conv=False, use_post_quant_conv=False, latent_channels=3, sample_size=32),
    "2to3_1level_nopostquant": dict(in_channels=2, out_channels=3, block_out_channels=(16,), layers_per_block=2,
                                    norm_num_groups=4, use_post_quant_conv=False, sample_size=16),
}


def diffusers_kwargs(config: dict) -> dict:
    n = len(config["block_out_channels"])
    return dict(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n, **config)


def make_pair(name: str, seed: int = 0):
    torch.manual_seed(seed)
    ref = perturb_(RefAutoencoderKL(**diffusers_kwargs(DIFFUSERS_CONFIGS[name])), seed=seed).eval()
    ours = AutoencoderKL(VAEConfig.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def images(config: AutoencoderKL, batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.config.in_channels, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("name", DIFFUSERS_CONFIGS)
def test_state_dict_keys_and_shapes_match_diffusers(name):
    ours, ref = make_pair(name)
    assert_same_keys(ours, ref)


@pytest.mark.parametrize("name", DIFFUSERS_CONFIGS)
@torch.no_grad()
def test_encode_sample_decode_forward_match_diffusers(name):
    ours, ref = make_pair(name)
    x = images(ours)

    post, ref_post = ours.encode(x), ref.encode(x).latent_dist
    assert_close(post.mean, ref_post.mean, what="posterior mean")
    assert_close(post.logvar, ref_post.logvar, what="posterior logvar")
    assert_close(post.std, ref_post.std, what="posterior std")
    sample = post.sample(torch.Generator().manual_seed(7))
    assert_close(sample, ref_post.sample(torch.Generator().manual_seed(7)), what="posterior sample")

    assert_close(ours.decode(sample), ref.decode(sample).sample, what="decode")
    x_rec, _ = ours(x)
    assert_close(x_rec, ref(x).sample, what="forward (mode)")
    x_rec, _ = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(3))
    assert_close(x_rec, ref(x, sample_posterior=True, generator=torch.Generator().manual_seed(3)).sample,
                 what="forward (sampled)")


@torch.no_grad()
def test_tiled_encode_and_decode_match_diffusers_tiled():
    ours, ref = make_pair("rgb_2levels")                   # sample_size 32: 32-pixel tiles, 16-latent-pixel tiles
    ours.enable_tiling()
    ref.enable_tiling()
    x = images(ours, batch=1, size=72)                       # 3x3 tiles, partial edge tiles
    assert_close(ours.encode(x).mean, ref.encode(x).latent_dist.mean, what="tiled encode")
    z = torch.randn(1, 4, 40, 40, generator=torch.Generator().manual_seed(2))
    tiled = ours.decode(z)
    assert_close(tiled, ref.decode(z).sample, what="tiled decode")
    ours.disable_tiling()
    assert (ours.decode(z) - tiled).abs().max() > 1e-3      # tiling really changed the computation


@torch.no_grad()
def test_sliced_encode_and_decode_match_diffusers_sliced():
    ours, ref = make_pair("gray_3levels_noattn")
    ours.enable_slicing()
    ref.enable_slicing()
    x = images(ours, batch=3)
    assert_close(ours.encode(x).mean, ref.encode(x).latent_dist.mean, what="sliced encode")
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert_close(ours.decode(z), ref.decode(z).sample, what="sliced decode")


def test_gradient_checkpointing_gives_the_same_gradients():
    ours, _ = make_pair("rgb_2levels")
    x = images(ours)
    grads = []
    for enabled in (False, True):
        ours.zero_grad()
        ours.enable_gradient_checkpointing(enabled)
        x_rec, post = ours(x)
        (x_rec.square().mean() + post.kl().mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters()]))
    assert_close(grads[1], grads[0], tol=1e-6, what="gradients with checkpointing")


def test_config_round_trips_through_diffusers():
    for name in ("sd", "microdoppler", "tiny"):
        cfg = VAEConfig.preset(name)
        ref = RefAutoencoderKL(**cfg.to_diffusers()) if name == "tiny" else None
        assert VAEConfig.from_diffusers(cfg.to_diffusers()) == cfg
        if ref is not None:
            assert VAEConfig.from_diffusers(dict(ref.config)) == cfg


def test_sd_preset_has_the_sd_vae_size():
    with torch.device("meta"):
        model = AutoencoderKL(VAEConfig.preset("sd"))
    assert len(model.state_dict()) == 248
    assert sum(p.numel() for p in model.parameters()) == 83_653_863


# ---- the posterior against closed forms ------------------------------------------------------------------------


def random_posterior(seed: int, shape=(3, 4, 5, 6)) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    return DiagonalGaussian(torch.randn(b, 2 * c, h, w, generator=g, dtype=torch.float64))


def normal(p: DiagonalGaussian) -> torch.distributions.Normal:
    return torch.distributions.Normal(p.mean, p.std)


def test_kl_to_prior_matches_torch_distributions():
    p = random_posterior(0)
    prior = torch.distributions.Normal(torch.zeros_like(p.mean), torch.ones_like(p.std))
    expected = torch.distributions.kl_divergence(normal(p), prior).sum(dim=(1, 2, 3))
    torch.testing.assert_close(p.kl(), expected)


def test_kl_between_posteriors_matches_torch_distributions():
    p, q = random_posterior(0), random_posterior(1)
    expected = torch.distributions.kl_divergence(normal(p), normal(q)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(p.kl(q), expected)


def test_nll_matches_the_gaussian_log_density():
    p = random_posterior(2)
    x = torch.randn(p.mean.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = -normal(p).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(p.nll(x), expected)
    # and by hand, once, for a 1-element Gaussian: N(1, e^2) at x = 3 -> 0.5*(log 2pi + 2 + 4/e^2)
    single = DiagonalGaussian(torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 2, 1, 1))
    x3 = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)
    assert single.nll(x3).item() == pytest.approx(0.5 * (math.log(2 * math.pi) + 2 + 4 / math.e**2))


def test_logvar_is_clamped_before_std():
    params = torch.tensor([0.0, 100.0]).view(1, 2, 1, 1)
    p = DiagonalGaussian(params)
    assert p.logvar.item() == 20.0 and p.std.item() == pytest.approx(math.exp(10.0))


def test_sample_is_reparameterised_and_seeded():
    p = random_posterior(4)
    g = torch.Generator().manual_seed(5)
    eps = torch.randn(p.mean.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(p.sample(g), p.mean + p.std * eps)


# ---- bad input ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return AutoencoderKL(VAEConfig.preset("tiny")).eval()


@pytest.mark.parametrize("x, message", [
    (torch.zeros(3, 32, 32), "4 dims"),
    (torch.zeros(1, 1, 32, 32), "1 channels, the config expects 3"),
    (torch.zeros(1, 3, 33, 32), "multiples of the downsampling factor 2"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.long), "floating-point"),
])
def test_encode_rejects_bad_input(tiny, x, message):
    with pytest.raises(ValueError, match=message):
        tiny.encode(x)


def test_decode_rejects_wrong_latent_channels(tiny):
    with pytest.raises(ValueError, match="z has 3 channels, the config expects 4"):
        tiny.decode(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("mapping, key", [
    ({"block_out_channels": [32], "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"],
      "norm_type": "spatial"}, "norm_type"),
    ({"act_fn": "gelu"}, "act_fn"),
    ({"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
      "up_block_types": ["AttnUpDecoderBlock2D"] * 2}, "up_block_types"),
])
def test_from_diffusers_names_unsupported_keys(mapping, key):
    with pytest.raises(ValueError, match=key):
        VAEConfig.from_diffusers(mapping)


def test_from_diffusers_ignores_informational_keys():
    cfg = VAEConfig.from_diffusers({"_class_name": "AutoencoderKL", "_diffusers_version": "0.42.1"})
    assert cfg.block_out_channels == (64,) and cfg.layers_per_block == 1   # diffusers' defaults, not SD's


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig(block_out_channels=(30,), norm_num_groups=8)
    with pytest.raises(ValueError, match="unknown VAE preset 'big'"):
        VAEConfig.preset("big")


# ---- full size, on a GPU -----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@torch.no_grad()
def test_full_sd_vae_matches_diffusers_on_gpu():
    ours, ref = cuda_pair(RefAutoencoderKL, AutoencoderKL, VAEConfig.preset("sd"))
    x = torch.rand(1, 3, 256, 256, device="cuda") * 2 - 1
    assert_close(ours.encode(x).mean, ref.encode(x).latent_dist.mean, tol=1e-4, what="SD encode")
    z = torch.randn(1, 4, 32, 32, device="cuda")
    assert_close(ours.decode(z), ref.decode(z).sample, tol=1e-4, what="SD decode")
    assert_close(fast.optimize(ours).decode(z), ref.decode(z).sample, tol=1e-4, what="SD decode, ldm.fast path")


def test_latent_scaling_is_the_ldm_papers_and_refuses_a_missing_factor():
    """scale_latents = (z - shift) * scaling_factor (LDM paper, section 4.3.2), unscale_latents its inverse."""
    vae = AutoencoderKL(dataclasses.replace(VAEConfig.preset("tiny"), scaling_factor=0.5, shift_factor=0.25))
    z = torch.randn(2, vae.latent_channels, 4, 4)
    assert vae.latent_channels == vae.config.latent_channels
    assert torch.equal(vae.scale_latents(z), (z - 0.25) * 0.5)
    torch.testing.assert_close(vae.unscale_latents(vae.scale_latents(z)), z)
    for bad in (None, 0.0, float("nan")):
        vae.config = dataclasses.replace(vae.config, scaling_factor=bad)
        with pytest.raises(ValueError, match=r"config.scaling_factor is .*: latent scaling needs a positive number"):
            vae.scale_latents(z)


def test_float64_images_into_a_float32_vae_are_refused_with_the_fix():
    vae = AutoencoderKL(VAEConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match=r"x is torch.float64, the model's weights are torch.float32; convert"):
        vae.encode(torch.rand(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"z is torch.float16, the model's weights are torch.float32"):
        vae.decode(torch.rand(1, 4, 8, 8, dtype=torch.float16))
