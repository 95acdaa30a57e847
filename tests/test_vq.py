"""VQModel parity with diffusers 0.42 (the reference); the quantizer's losses, gradients and codebook-health
extras against closed forms and toy training runs."""
import dataclasses
import math

import pytest
import torch
from diffusers import VQModel as RefVQModel

from ldm.vq import VectorQuantizer, VQConfig, VQModel, codebook_perplexity
from tests.helpers import assert_close, assert_same_keys, perturb_

# Several diffusers configs: 1/3 channels, 1-3 levels, mid attention on/off, vq_embed_dim != latent_channels,
# the spatial-norm (MoVQ) decoder, decoding from indices.
DIFFUSERS_CONFIGS = {
    "rgb_2levels_embed5": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=3,
                               num_vq_embeddings=16, vq_embed_dim=5),
    "gray_3levels_noattn": dict(in_channels=1, out_channels=1, block_out_channels=(16, 32, 32), layers_per_block=2,
                                norm_num_groups=8, mid_block_add_attention=False, latent_channels=4,
                                num_vq_embeddings=32),
    "rgb_spatial": dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                        num_vq_embeddings=24, norm_type="spatial"),
    "gray_spatial_1level_lookup": dict(in_channels=1, out_channels=1, block_out_channels=(32,), layers_per_block=2,
                                       norm_num_groups=4, latent_channels=2, num_vq_embeddings=8, norm_type="spatial",
                                       lookup_from_codebook=True),
}


def diffusers_kwargs(config: dict) -> dict:
    n = len(config["block_out_channels"])
    return dict(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n, **config)


def make_pair(name: str, seed: int = 0):
    torch.manual_seed(seed)
    ref = perturb_(RefVQModel(**diffusers_kwargs(DIFFUSERS_CONFIGS[name])), seed=seed).eval()
    ours = VQModel(VQConfig.from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def images(model: VQModel, batch: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, model.config.in_channels, size, size, generator=g) * 2 - 1


# ---- parity with diffusers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIFFUSERS_CONFIGS)
def test_state_dict_keys_and_shapes_match_diffusers(name):
    ours, ref = make_pair(name)
    assert_same_keys(ours, ref)


@pytest.mark.parametrize("name", DIFFUSERS_CONFIGS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@torch.no_grad()
def test_encode_quantize_decode_forward_match_diffusers(name, training):
    ours, ref = make_pair(name)
    ours.train(training)            # training mode only adds bookkeeping; with the extras off the numbers are equal
    x = images(ours)

    h, ref_h = ours.encode(x), ref.encode(x).latents
    assert_close(h, ref_h, what="encode")
    z_q, loss, indices = ours.quantize(h)
    ref_z_q, ref_loss, (_, _, ref_indices) = ref.quantize(h)
    assert torch.equal(indices, ref_indices), "indices differ"
    assert indices.unique().numel() > 2, "too few codes used for a meaningful comparison"
    # same h in both: z + (e - z) must be bit-equal (it is not bit-equal to the codebook row e)
    assert torch.equal(z_q, ref_z_q), "quantized latents differ"
    assert_close(loss, ref_loss, what="codebook + commitment loss")

    assert_close(ours.decode(h), ref.decode(h).sample, what="decode")
    if not ours.config.lookup_from_codebook:          # with it, force_not_quantize means "h holds indices" (below)
        assert_close(ours.decode(h, force_not_quantize=True), ref.decode(h, force_not_quantize=True).sample,
                     what="decode without quantization")
    x_rec, loss, indices = ours(x)
    ref_rec, ref_loss = ref(x, return_dict=False)
    assert_close(x_rec, ref_rec, what="forward")
    assert_close(loss, ref_loss, what="forward loss")


@torch.no_grad()
def test_decode_from_indices_matches_diffusers_codebook_lookup():
    ours, ref = make_pair("gray_spatial_1level_lookup")
    h = ours.encode(images(ours))
    _, _, indices = ours.quantize(h)                                        # flat (B*h*w,), as diffusers
    b, c, hh, ww = h.shape
    expected = ref.decode(indices, force_not_quantize=True, shape=(b, hh, ww, c)).sample
    assert_close(ours.decode(indices, force_not_quantize=True, shape=(b, hh, ww, c)), expected, what="lookup decode")
    assert_close(ours.decode_indices(indices.view(b, hh, ww)), expected, what="decode_indices")
    # the quantize path adds the straight-through rounding, so it is close to but not exactly the lookup
    assert_close(ours.decode(h), expected, tol=1e-4, what="quantize path vs lookup")


def test_quantizer_matches_diffusers_for_legacy_off_and_sane_index_shape():
    from diffusers.models.autoencoders.vae import VectorQuantizer as RefVectorQuantizer
    torch.manual_seed(0)
    ref = RefVectorQuantizer(12, 3, beta=0.4, legacy=False, sane_index_shape=True)
    ours = VectorQuantizer(12, 3, beta=0.4, legacy=False, sane_index_shape=True)
    with torch.no_grad():
        ref.embedding.weight[7] = ref.embedding.weight[2]              # exact ties: the lower index must win
    ours.load_state_dict(ref.state_dict(), strict=True)
    z = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(3)) * 0.2
    z_q, loss, indices = ours(z.clone().requires_grad_())
    ref_z_q, ref_loss, (_, _, ref_indices) = ref(z.clone().requires_grad_())
    assert indices.shape == (2, 5, 7) and torch.equal(indices, ref_indices)
    assert (indices == 2).any() and not (indices == 7).any()
    assert_close(z_q, ref_z_q, what="z_q")
    assert_close(loss, ref_loss, what="loss")
    loss.backward()
    ref_loss.backward()
    assert_close(ours.embedding.weight.grad, ref.embedding.weight.grad, what="codebook gradient")


def test_full_size_presets_have_diffusers_keys():
    for name in ("ldm_vq_f4", "microdoppler"):
        cfg = VQConfig.preset(name)
        with torch.device("meta"):
            ours, ref = VQModel(cfg), RefVQModel(**cfg.to_diffusers())
        assert_same_keys(ours, ref)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_diffusers_folders_load_both_ways(tmp_path):
    ours, ref = make_pair("rgb_spatial")
    x = images(ours)
    ref.save_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    loaded = VQModel.from_pretrained(tmp_path / "theirs").eval()       # built on the meta device by ldm.io
    theirs = RefVQModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        expected = ref(x).sample
        assert_close(loaded(x)[0], expected, what="ours loaded from a diffusers folder")
        assert_close(theirs(x).sample, expected, what="diffusers loaded from our folder")
    loaded.train()(x)                                                   # training statistics live off the meta device
    assert loaded.quantize.perplexity.item() >= 1.0


def full_size_parity(device: str, tol: float = 1e-5):
    """The LDM VQ-f4 preset at 256x256 against diffusers, and the training extras, on ``device``."""
    torch.manual_seed(0)
    ref = perturb_(RefVQModel(**VQConfig.preset("ldm_vq_f4").to_diffusers()), seed=0, scale=0.02).to(device).eval()
    ours = VQModel(VQConfig.from_diffusers(dict(ref.config))).to(device).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    with torch.no_grad():
        h = ours.encode(x)
        assert_close(h, ref.encode(x).latents, tol=tol, what="full-size encode")
        assert_close(ours.decode(h), ref.decode(h).sample, tol=tol, what="full-size decode")
    extras = VQModel(dataclasses.replace(VQConfig.preset("tiny"), ema_decay=0.99, kmeans_init_iters=3,
                                         usage_window=1, dead_code_restart=True)).to(device).train()
    _, loss, _ = extras(images(extras).to(device), generator=torch.Generator().manual_seed(0))   # a CPU generator
    loss.backward()
    assert extras.quantize.dead_fraction().item() == 0.0


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
def test_full_size_preset_and_extras_on_cuda():
    # as the other full-size GPU tests: TF32 off (the no_tf32 fixture), within 1e-4
    full_size_parity("cuda", tol=1e-4)


# ---- quantizer math against closed forms -------------------------------------------------------------------------


def quantizer_with_codes(codes, **kwargs) -> VectorQuantizer:
    codes = torch.as_tensor(codes, dtype=torch.float32)
    vq = VectorQuantizer(codes.shape[0], codes.shape[1], **kwargs)
    with torch.no_grad():
        vq.embedding.weight.copy_(codes)
    return vq


def test_nearest_code_straight_through_and_loss_value():
    codes = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    vq = quantizer_with_codes(codes, beta=0.25)
    z = torch.tensor([[0.2, 0.1], [0.9, -0.3], [0.1, 1.2], [5.0, 0.0]]).T.reshape(1, 2, 2, 2).requires_grad_()
    z_q, loss, indices = vq(z)
    assert indices.tolist() == [0, 1, 2, 1]
    expected = torch.tensor(codes)[indices].T.reshape(1, 2, 2, 2)
    assert_close(z_q, expected, tol=1e-7, what="z_q")
    mse = ((expected - z.detach()) ** 2).mean()
    assert_close(loss, 1.25 * mse, tol=1e-6, what="loss = (1 + beta) * mse")
    # straight-through estimator: d z_q / d z is the identity
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    (z_q * w).sum().backward()
    assert torch.equal(z.grad, w)


@pytest.mark.parametrize("legacy", [True, False])
def test_legacy_flag_moves_beta_between_codebook_and_commitment_terms(legacy):
    vq = quantizer_with_codes([[0.0, 0.0], [1.0, 1.0]], beta=0.25, legacy=legacy)
    z = torch.tensor([[0.3, -0.2], [0.6, 0.9], [0.8, 1.5]]).T.reshape(1, 2, 1, 3).requires_grad_()
    _, loss, indices = vq(z)
    loss.backward()
    e = vq.embedding.weight.detach()[indices].T.reshape(1, 2, 1, 3)
    m = z.numel()
    commitment_w, codebook_w = (1.0, 0.25) if legacy else (0.25, 1.0)
    # d/dz of w * mean((sg(e) - z)^2) and d/de of w * mean((e - sg(z))^2), summed over the vectors of each code
    assert_close(z.grad, commitment_w * 2 * (z.detach() - e) / m, tol=1e-6, what="encoder gradient")
    per_vector = (codebook_w * 2 * (e - z.detach()) / m).reshape(2, -1).T              # (N, D)
    expected = torch.zeros(2, 2).index_add_(0, indices, per_vector)
    assert_close(vq.embedding.weight.grad, expected, tol=1e-6, what="codebook gradient")


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = VQModel(VQConfig.preset("tiny")).train()
    x_rec, _, _ = model(images(model))
    x_rec.square().mean().backward()                                    # reconstruction only, no codebook loss
    for name in ("encoder.conv_in.weight", "encoder.conv_out.weight", "quant_conv.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, f"no gradient reached {name}"
    assert model.quantize.embedding.weight.grad is None                # codes learn only from the codebook loss


def test_lookup_by_index_returns_codebook_rows():
    vq = quantizer_with_codes(torch.arange(12.0).reshape(4, 3))
    indices = torch.tensor([[[3, 0], [1, 1]]])                          # (B=1, h=2, w=2)
    codes = vq.get_codebook_entry(indices)
    assert codes.shape == (1, 3, 2, 2)
    assert codes[0, :, 0, 0].tolist() == [9.0, 10.0, 11.0] and codes[0, :, 1, 1].tolist() == [3.0, 4.0, 5.0]
    assert torch.equal(vq.get_codebook_entry(indices.flatten(), shape=(1, 2, 2, 3)), codes)


# ---- codebook usage statistics ------------------------------------------------------------------------------------


def test_perplexity_known_answers():
    assert codebook_perplexity(torch.tensor([0, 1, 2, 3]), 8).item() == pytest.approx(4.0)      # uniform over 4
    assert codebook_perplexity(torch.tensor([5, 5, 5]), 8).item() == pytest.approx(1.0)         # one code
    # p = (1/2, 1/4, 1/4): entropy 1.5 bits, perplexity 2**1.5
    assert codebook_perplexity(torch.tensor([0, 0, 1, 2]), 8).item() == pytest.approx(2 ** 1.5)


def test_usage_statistics_over_a_window():
    codes = torch.eye(8)                                                # 8 codes in 8-D
    vq = quantizer_with_codes(codes, usage_window=3).train()
    batch = codes[[0, 1, 2, 2]].T.reshape(1, 8, 1, 4)                  # uses codes 0, 1, 2 (p = 1/4, 1/4, 1/2)
    for step in range(1, 4):
        vq(batch)
        assert vq.perplexity.item() == pytest.approx(2 ** 1.5)
        assert vq.dead_fraction().item() == (5 / 8 if step >= 3 else 0.0), f"after {step} batches"
    vq(codes[[7]].T.reshape(1, 8, 1, 1))                               # code 7 used once more: 4 of 8 unused
    assert vq.dead_fraction().item() == 4 / 8
    vq.eval()
    vq(codes[[3, 4, 5, 6]].T.reshape(1, 8, 1, 4))                      # eval batches do not count
    assert vq.dead_fraction().item() == 4 / 8


# ---- codebook maintenance: k-means init, dead-code restart, EMA ---------------------------------------------------


def test_kmeans_init_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-3.0, 0.0], [3.0, 1.0]])
    z = (centers.repeat_interleave(50, 0) + 0.1 * torch.randn(100, 2, generator=g)).T.reshape(1, 2, 10, 10)
    vq = VectorQuantizer(2, 2, kmeans_init_iters=10).train()
    vq(z, generator=torch.Generator().manual_seed(1))
    found = vq.embedding.weight.detach()
    found = found[found[:, 0].argsort()]
    assert_close(found, centers, tol=0.05, what="k-means codes")
    # a Lloyd fixed point: each code is the mean of the vectors assigned to it
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    nearest = torch.cdist(flat, vq.embedding.weight.detach()).argmin(1)
    for i in range(2):
        assert_close(vq.embedding.weight[i].detach(), flat[nearest == i].mean(0), tol=1e-5, what=f"code {i}")
    before = vq.embedding.weight.detach().clone()
    vq(z + 10.0)                                                        # only the first batch initialises
    assert torch.equal(vq.embedding.weight.detach(), before)


def test_loading_a_codebook_cancels_kmeans_init():
    trained = quantizer_with_codes([[1.0, 2.0], [3.0, 4.0]])
    vq = VectorQuantizer(2, 2, kmeans_init_iters=5).train()
    vq.load_state_dict(trained.state_dict(), strict=True)
    vq(torch.randn(1, 2, 4, 4))
    assert torch.equal(vq.embedding.weight, trained.embedding.weight)


def train_toy_quantizer(dead_code_restart: bool, ema_decay: float | None = None, steps: int = 100) -> float:
    """Learn a 16-code codebook for 16 clusters on a circle (by the codebook loss, or by EMA), starting from the
    collapsed state (all codes far away in one corner, so one code wins everything). Returns the final perplexity."""
    g = torch.Generator().manual_seed(0)
    angles = torch.arange(16) * (2 * math.pi / 16)
    centers = 5 * torch.stack([angles.cos(), angles.sin()], dim=1)
    vq = VectorQuantizer(16, 2, usage_window=5, dead_code_restart=dead_code_restart, ema_decay=ema_decay).train()
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([20.0, 20.0]) + 0.01 * torch.randn(16, 2, generator=g))
    opt = torch.optim.Adam(vq.parameters(), lr=0.1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                   # hundreds of tiny steps: far faster without thread hand-offs
    try:
        for _ in range(steps):
            z = centers[torch.randint(16, (256,), generator=g)] + 0.1 * torch.randn(256, 2, generator=g)
            _, loss, _ = vq(z.T.reshape(1, 2, 16, 16), generator=g)
            if ema_decay is None:                                       # EMA codes need no optimiser
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return vq.perplexity.item()


def test_dead_code_restart_raises_codebook_usage():
    without, with_restart = train_toy_quantizer(False), train_toy_quantizer(True)
    assert without < 1.5, f"the collapsed codebook should stay collapsed, perplexity {without:.2f}"
    assert with_restart > 8.0, f"restart should revive most codes, perplexity {with_restart:.2f}"
    ema_without, ema_with = train_toy_quantizer(False, ema_decay=0.9), train_toy_quantizer(True, ema_decay=0.9)
    assert ema_without < 1.5 and ema_with > 8.0, f"EMA: perplexity {ema_without:.2f} -> {ema_with:.2f}"


def test_dead_codes_restart_to_batch_vectors():
    vq = quantizer_with_codes([[0.0, 0.0], [100.0, 100.0], [-100.0, 50.0]], usage_window=2,
                              dead_code_restart=True).train()
    z = torch.tensor([[0.1, 0.2], [0.3, -0.1], [-0.2, 0.0], [0.05, 0.05]]).T.reshape(1, 2, 2, 2)
    vq(z)
    assert torch.equal(vq.embedding.weight[1:], torch.tensor([[100.0, 100.0], [-100.0, 50.0]]))
    vq(z, generator=torch.Generator().manual_seed(0))                   # codes 1, 2 unused for 2 batches: restart
    batch_rows = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for i in (1, 2):
        assert (vq.embedding.weight[i] == batch_rows).all(dim=1).any(), f"code {i} not restarted to a batch vector"
    assert vq.dead_fraction().item() == 0.0                            # restarted codes get a fresh window


def test_ema_steps_match_the_closed_form():
    """Two EMA steps (van den Oord et al. 2017, appendix A.1): N <- g N + (1-g) n, m <- g m + (1-g) sum z,
    e = m / N, starting from N = 0 (so the first step moves each used code to the mean of its vectors)."""
    gamma = 0.9
    codes = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    vq = quantizer_with_codes(codes, ema_decay=gamma, beta=0.25).train()
    g = torch.Generator().manual_seed(0)
    n_state, m_state, e = torch.zeros(3), torch.zeros(3, 2), codes.clone()
    for step in range(2):
        flat = torch.cat([torch.randn(5, 2, generator=g) * 0.5 + 0.5,          # near code 0
                          torch.randn(3, 2, generator=g) * 0.5 + torch.tensor([3.5, 0.5])])   # near code 1
        z = flat.T.reshape(1, 2, 2, 4).requires_grad_()
        _, loss, indices = vq(z)
        nearest = ((flat[:, None, :] - e[None]) ** 2).sum(-1).argmin(1)
        assert torch.equal(indices, nearest) and set(nearest.tolist()) == {0, 1}
        expected_loss = 0.25 * ((e[nearest] - flat) ** 2).mean()        # commitment only, with the old codes
        assert_close(loss, expected_loss, tol=1e-6, what="EMA loss")
        n = torch.bincount(nearest, minlength=3).float()
        s = torch.zeros(3, 2).index_add_(0, nearest, flat)
        n_state, m_state = gamma * n_state + (1 - gamma) * n, gamma * m_state + (1 - gamma) * s
        used = n_state > 0
        e = torch.where(used[:, None], m_state / n_state.clamp_min(1e-12)[:, None], e)
        assert_close(vq.embedding.weight.detach(), e, tol=1e-6, what=f"codebook after EMA step {step + 1}")
    assert torch.equal(vq.embedding.weight[2], codes[2])                # an unused code stays put


def test_ema_moves_codes_towards_their_vectors_and_uses_commitment_only():
    vq = quantizer_with_codes([[0.0, 0.0], [4.0, 4.0]], ema_decay=0.99, beta=0.25).train()
    z = torch.full((1, 2, 2, 2), 1.0).requires_grad_()                 # all four vectors at (1, 1): code 0
    _, loss, _ = vq(z)
    assert_close(loss, torch.tensor(0.25 * 1.0), tol=1e-6, what="EMA loss = beta * commitment")
    loss.backward()
    assert vq.embedding.weight.grad is None                            # the codes learn only from the EMA
    assert not vq.embedding.weight.requires_grad                       # so optimizers and DDP skip them
    assert torch.equal(vq.embedding.weight[0].detach(), torch.ones(2))  # N = 0: the first step lands on the mean
    z2 = torch.full((1, 2, 2, 2), 2.0)                                  # new vectors at (2, 2), still code 0
    for _ in range(3):
        distance = (vq.embedding.weight[0].detach() - 2.0).norm()
        vq(z2)
        assert (vq.embedding.weight[0].detach() - 2.0).norm() < distance
    assert torch.equal(vq.embedding.weight[1].detach(), torch.tensor([4.0, 4.0]))


# ---- errors and configs -----------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    model = VQModel(VQConfig.preset("tiny"))
    with pytest.raises(ValueError, match="channels"):
        model.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="multiples"):
        model.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="5 channels, the config expects 3"):
        model.quantize(torch.zeros(1, 5, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        model.decode(torch.zeros(1, 4, 4, 4))
    k = model.config.num_vq_embeddings
    with pytest.raises(ValueError, match=rf"\[0, {k}\)"):
        model.decode_indices(torch.full((1, 4, 4), k))
    with pytest.raises(ValueError, match=rf"\[0, {k}\)"):
        model.decode_indices(torch.full((1, 4, 4), -1))
    with pytest.raises(ValueError, match="integer"):
        model.decode_indices(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        model.quantize.get_codebook_entry(torch.zeros(16, dtype=torch.long), shape=(1, 4, 4, 7))


@pytest.mark.parametrize("changes, message", [
    (dict(norm_type="spatial", vq_embed_dim=5), "vq_embed_dim"),
    (dict(norm_type="spatial", block_out_channels=(32, 48)), "32"),
    (dict(norm_type="batch"), "norm_type"),
    (dict(block_out_channels=(32, 60)), "norm_num_groups"),
    (dict(num_vq_embeddings=0), "num_vq_embeddings"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(usage_window=0), "usage_window"),
    (dict(beta=-0.1), "beta"),
])
def test_inconsistent_configs_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(VQConfig.preset("tiny"), **changes)


def test_unsupported_diffusers_keys_are_rejected():
    base = VQConfig.preset("tiny").to_diffusers()
    for key, value, message in [("act_fn", "gelu", "act_fn"), ("down_block_types", ["AttnDownEncoderBlock2D"] * 2,
                                "down_block_types"), ("dropout", 0.1, "dropout")]:
        with pytest.raises(ValueError, match=message):
            VQConfig.from_diffusers({**base, key: value})
    VQConfig.from_diffusers({**base, "_class_name": "VQModel", "_diffusers_version": "0.42.1"})


def test_config_round_trips_through_diffusers():
    for name in ("ldm_vq_f4", "microdoppler", "tiny"):
        cfg = VQConfig.preset(name)
        assert VQConfig.from_diffusers(cfg.to_diffusers()) == cfg
    cfg = VQConfig.preset("tiny")
    assert VQConfig.from_diffusers(dict(RefVQModel(**cfg.to_diffusers()).config)) == cfg
    assert VQConfig.from_diffusers({}) == VQConfig.from_diffusers(dict(RefVQModel().config))    # same defaults


def test_vq_latent_space_is_the_code_width_with_the_configs_scaling():
    vq = VQModel(dataclasses.replace(VQConfig.preset("tiny"), scaling_factor=2.0)).eval()
    h = torch.randn(1, vq.latent_channels, 4, 4)
    assert vq.latent_channels == vq.config.embed_dim
    assert torch.equal(vq.scale_latents(h), h * 2.0) and torch.equal(vq.unscale_latents(h), h / 2.0)
    with pytest.raises(ValueError, match=r"latents h is torch.float64, the model's weights are torch.float32"):
        vq.decode(h.double())
