"""ldm.ddpm against diffusers' DDPMScheduler / DDIMScheduler (bit-exact: torch.equal), closed forms for the options
that correct diffusers' defects, the guided sampling loop against a hand-written loop, the loss against a hand
computation, and every bad-input error."""
import warnings

import pytest
import torch
from diffusers import DDIMScheduler as RefDDIM
from diffusers import DDPMScheduler as RefDDPM
from diffusers.utils.torch_utils import randn_tensor as ref_randn_tensor

from ldm.ddpm import DDIMScheduler, DDPMScheduler, make_betas, randn_tensor
from ldm.diffusion_loss import diffusion_loss
from ldm.guided_sampling import sample

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)
SHAPE = (2, 3, 4, 4)  # (B, C, H, W): tiny, every test runs in milliseconds
CLIPPING = {  # every way x̂_0 can be kept in range
    "none": dict(clip_sample=False),
    "clip": dict(clip_sample=True),
    "clip_range": dict(clip_sample=True, clip_sample_range=2.0),
    "threshold": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def model_outputs(n: int, channels: int = SHAPE[1], seed: int = 1) -> list:
    """n random "model outputs" (B, channels, H, W); parity does not need a real model, only identical inputs."""
    g = gen(seed)
    return [torch.randn((SHAPE[0], channels, *SHAPE[2:]), generator=g) for _ in range(n)]


def assert_identical(ours: torch.Tensor, ref: torch.Tensor, what: str = ""):
    """torch.equal, with NaNs in the same places counting as equal (diffusers' fixed_large_log is NaN)."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, what
    assert torch.equal(ours.isnan(), ref.isnan()), what
    assert torch.equal(ours.nan_to_num(), ref.nan_to_num()), f"{what}: max diff {(ours - ref).abs().max()}"


# ---- beta schedules, timesteps, forward process ----------------------------------------------------------------------

@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"])
def test_betas_and_alphas_cumprod(schedule, rescale):
    kw = dict(beta_schedule=schedule, rescale_betas_zero_snr=rescale, beta_start=0.00085, beta_end=0.012)
    ours, ref = DDPMScheduler(**kw), RefDDPM(**kw)
    assert torch.equal(ours.betas, ref.betas) and torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    if schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):  # the schedules diffusers' DDIM accepts
        ours, ref = DDIMScheduler(**kw), RefDDIM(**kw)
        assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    if rescale:
        assert ours.alphas_cumprod[-1] == 0  # zero terminal SNR (Lin et al. 2024)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_trained_betas_and_final_alpha(set_alpha_to_one):
    betas = torch.linspace(0.001, 0.03, 50).tolist()
    kw = dict(num_train_timesteps=50, trained_betas=betas, set_alpha_to_one=set_alpha_to_one)
    ours, ref = DDIMScheduler(**kw), RefDDIM(**kw)
    assert torch.equal(ours.betas, ref.betas) and torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert torch.equal(ours.final_alpha_cumprod, ref.final_alpha_cumprod)
    assert torch.equal(make_betas(trained_betas=betas, num_train_timesteps=50), ref.betas)


def test_scaled_linear_is_the_ldm_linear_schedule():
    """CompVis LDM's "linear" is linspace(start**0.5, end**0.5, N, float64)**2: scaled_linear up to float32 rounding."""
    ldm = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(DDPMScheduler(**SD).betas, ldm.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("steps", [1, 10, 50, 1000, 7])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("cls,ref_cls", [(DDPMScheduler, RefDDPM), (DDIMScheduler, RefDDIM)])
def test_timesteps(cls, ref_cls, spacing, steps, offset):
    kw = dict(timestep_spacing=spacing, steps_offset=offset)
    ours, ref = cls(**kw), ref_cls(**kw)
    assert torch.equal(ours.timesteps, ref.timesteps)  # before set_timesteps: N-1 .. 0
    ref.set_timesteps(steps)
    if spacing == "leading" and steps == 1000 and offset == 1:
        assert ref.timesteps[0] == 1000  # diffusers emits a timestep past the table; we refuse
        with pytest.raises(ValueError, match="timesteps must lie in"):
            ours.set_timesteps(steps)
        return
    ours.set_timesteps(steps)
    assert ours.timesteps.dtype == torch.long and torch.equal(ours.timesteps, ref.timesteps)
    assert (ours.timesteps.diff() < 0).all()


def test_timesteps_table_from_the_parity_reference():
    ddim = DDIMScheduler(**SD)
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    ddpm = DDPMScheduler(**SD, timestep_spacing="trailing")
    ddpm.set_timesteps(7)
    assert ddpm.timesteps.tolist() == [999, 856, 713, 570, 428, 285, 142]


def test_trailing_float_arange_defect_is_refused():
    ref = RefDDPM(timestep_spacing="trailing")
    ref.set_timesteps(61)
    assert len(ref.timesteps) == 62 and ref.timesteps[-1] == -1  # diffusers' float arange overshoots
    with pytest.raises(ValueError, match="timesteps must lie in"):
        DDPMScheduler(timestep_spacing="trailing").set_timesteps(61)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("per_sample", [True, False])
def test_add_noise_and_velocity(dtype, per_sample):
    ours, ref = DDPMScheduler(**SD), RefDDPM(**SD)
    g = gen(0)
    x0, noise = torch.randn(SHAPE, generator=g).to(dtype), torch.randn(SHAPE, generator=g).to(dtype)
    t = torch.tensor([0, 999]) if per_sample else torch.tensor(500)
    assert torch.equal(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    assert torch.equal(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t))


def test_randn_tensor_matches_diffusers():
    assert torch.equal(randn_tensor(SHAPE, gen(4)), ref_randn_tensor(SHAPE, gen(4)))
    generators = [gen(5), gen(6)]
    assert torch.equal(randn_tensor(SHAPE, [gen(5), gen(6)]), ref_randn_tensor(SHAPE, generators))


# ---- whole step sequences, seeded ------------------------------------------------------------------------------------

def run_both(ours, ref, outputs, x, seed=7, ref_kwargs=None, **kwargs):
    """Step ours and diffusers side by side through ours.timesteps with equal generators; compare every x_{t'}."""
    g_ours, g_ref = gen(seed), gen(seed)
    x_ours, x_ref = x.clone(), x.clone()
    assert len(outputs) >= len(ours.timesteps)
    for t, out in zip(ours.timesteps, outputs):
        x_ours = ours.step(out, t, x_ours, generator=g_ours, **kwargs)
        x_ref = ref.step(out, t, x_ref, generator=g_ref, **(ref_kwargs or kwargs)).prev_sample
        assert isinstance(x_ours, torch.Tensor)
        assert_identical(x_ours, x_ref, f"t={int(t)}")
    assert torch.equal(g_ours.get_state(), g_ref.get_state())  # same number of draws
    return x_ours


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log",
                                           "learned", "learned_range"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddpm_steps(prediction_type, variance_type, clipping):
    kw = dict(prediction_type=prediction_type, variance_type=variance_type, **CLIPPING[clipping])
    ours, ref = DDPMScheduler(**kw), RefDDPM(**kw)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    outputs = model_outputs(10)
    if variance_type in ("learned", "learned_range"):  # (B, 2C): prediction, then variance (> 0) or v in [-1, 1]
        variances = [torch.rand_like(o, generator=gen(i)) for i, o in enumerate(outputs)]
        if variance_type == "learned_range":
            variances = [2 * v - 1 for v in variances]
        outputs = [torch.cat([o, v], dim=1) for o, v in zip(outputs, variances)]
    x = run_both(ours, ref, outputs, torch.randn(SHAPE, generator=gen(2)))
    assert x.isnan().all() if variance_type == "fixed_large_log" else x.isfinite().all()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddpm_steps_sd_config_each_spacing(spacing):
    ours, ref = DDPMScheduler(**SD, timestep_spacing=spacing), RefDDPM(**SD, timestep_spacing=spacing)
    ours.set_timesteps(13)
    ref.set_timesteps(13)
    run_both(ours, ref, model_outputs(13), torch.randn(SHAPE, generator=gen(2)))


def test_ddpm_steps_unstrided_and_custom():
    ours, ref = DDPMScheduler(num_train_timesteps=20), RefDDPM(num_train_timesteps=20)
    run_both(ours, ref, model_outputs(20), torch.randn(SHAPE, generator=gen(2)))  # no set_timesteps: t -> t - 1
    custom = [900, 700, 650, 300, 20, 3]
    ours, ref = DDPMScheduler(**SD), RefDDPM(**SD)
    ours.set_timesteps(timesteps=custom)
    ref.set_timesteps(timesteps=custom)
    assert torch.equal(ours.timesteps, ref.timesteps)
    run_both(ours, ref, model_outputs(6), torch.randn(SHAPE, generator=gen(2)))


def test_ddpm_zero_terminal_snr_v_prediction():
    kw = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing", **SD)
    ours, ref = DDPMScheduler(**kw), RefDDPM(**kw)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    run_both(ours, ref, model_outputs(10), torch.randn(SHAPE, generator=gen(2)))


@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize("clipping", ["none", "clip", "threshold"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_steps(prediction_type, eta, clipping, use_clipped):
    kw = dict(prediction_type=prediction_type, **CLIPPING[clipping])
    ours, ref = DDIMScheduler(**kw), RefDDIM(**kw)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    run_both(ours, ref, model_outputs(10), torch.randn(SHAPE, generator=gen(2)), eta=eta,
             use_clipped_model_output=use_clipped)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_steps_sd_config_each_spacing(spacing, set_alpha_to_one):
    kw = dict(SD, timestep_spacing=spacing, set_alpha_to_one=set_alpha_to_one)
    ours, ref = DDIMScheduler(**kw), RefDDIM(**kw)
    ours.set_timesteps(7)
    ref.set_timesteps(7)
    run_both(ours, ref, model_outputs(7), torch.randn(SHAPE, generator=gen(2)), eta=0.5)


def test_ddim_variance_noise_and_no_draw_at_eta_zero():
    ours, ref = DDIMScheduler(**SD), RefDDIM(**SD)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    x, out, z = (torch.randn(SHAPE, generator=gen(i)) for i in range(3))
    t = ours.timesteps[3]
    assert torch.equal(ours.step(out, t, x, eta=0.8, variance_noise=z),
                       ref.step(out, t, x, eta=0.8, variance_noise=z).prev_sample)
    g = gen(0)
    before = g.get_state()
    ours.step(out, t, x, eta=0.0, generator=g)
    assert torch.equal(g.get_state(), before)  # eta = 0 draws nothing


# ---- the options that correct diffusers' defects: closed forms ------------------------------------------------------

def test_fix_fixed_large_log_closed_form():
    kw = dict(variance_type="fixed_large_log", clip_sample=False)
    fixed, ref = DDPMScheduler(**kw, fix_fixed_large_log=True), RefDDPM(**kw)
    fixed.set_timesteps(10)
    ref.set_timesteps(10)
    x, eps = torch.randn(SHAPE, generator=gen(0)), torch.randn(SHAPE, generator=gen(1))
    t, prev_t = 900, 800
    got = fixed.step(eps, t, x, generator=gen(9))
    assert ref.step(eps, t, x, generator=gen(9)).prev_sample.isnan().all()  # the defect the option fixes
    a_t, a_prev = (ref.alphas_cumprod[i].double() for i in (t, prev_t))
    beta = 1 - a_t / a_prev  # β_t of the strided step; fixed_large: σ² = β_t (Ho et al. 2020, Sec. 3.2)
    x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()  # Eq. (15)
    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * x.double()  # (7)
    expected = mean + beta.sqrt() * torch.randn(SHAPE, generator=gen(9)).double()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_ddim_prev_timestep_from_schedule_follows_the_marginals(spacing):
    """With an oracle ε-model and η = 0, DDIM lands exactly on q(x_{t'} | x_0) at each scheduled t' (Song et al. 2021,
    Eq. (12) with σ = 0). The option does this for every spacing; diffusers' t - N // S drifts off for linspace."""
    x0, eps = torch.randn(SHAPE, generator=gen(0)), torch.randn(SHAPE, generator=gen(1))

    def run(scheduler):
        scheduler.set_timesteps(9)
        acp = scheduler.alphas_cumprod.double()
        x = (acp[999].sqrt() * x0 + (1 - acp[999]).sqrt() * eps).float()
        errors = []
        for i, t in enumerate(scheduler.timesteps.tolist()):
            oracle_eps = (x.double() - acp[t].sqrt() * x0) / (1 - acp[t]).sqrt()
            x = scheduler.step(oracle_eps.float(), t, x)
            nxt = scheduler.timesteps.tolist()[i + 1] if i + 1 < len(scheduler.timesteps) else None
            expected = x0 if nxt is None else acp[nxt].sqrt() * x0 + (1 - acp[nxt]).sqrt() * eps
            errors.append(float((x.double() - expected).abs().max()))
        return errors

    kw = dict(timestep_spacing=spacing, clip_sample=False, num_train_timesteps=1000)
    assert max(run(DDIMScheduler(**kw, prev_timestep_from_schedule=True))) < 1e-4
    if spacing == "linspace":
        assert max(run(DDIMScheduler(**kw))) > 1e-2  # the documented diffusers defect, reproduced by default


def test_ddim_prev_timestep_from_schedule_one_noisy_step_and_custom_list():
    s = DDIMScheduler(**SD, timestep_spacing="linspace", set_alpha_to_one=False, prev_timestep_from_schedule=True)
    s.set_timesteps(10)  # 999, 888, ...
    x, eps, z = (torch.randn(SHAPE, generator=gen(i)) for i in range(3))
    got = s.step(eps, 999, x, eta=0.5, variance_noise=z)
    a_t, a_prev = s.alphas_cumprod[999].double(), s.alphas_cumprod[888].double()
    sigma = 0.5 * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()  # Eq. (16)
    x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()  # Eq. (9)
    expected = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps.double() + sigma * z.double()  # Eq. (12)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    s.set_timesteps(timesteps=[800, 500, 100])
    got = s.step(eps, 100, x)  # last entry: t' = -1, ᾱ_{t'} = final_alpha_cumprod = ᾱ_0 (set_alpha_to_one=False)
    a_t, a_prev = s.alphas_cumprod[100].double(), s.alphas_cumprod[0].double()
    x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
    torch.testing.assert_close(got.double(), a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps.double(),
                               rtol=1e-5, atol=1e-5)


# ---- configuration round trips ---------------------------------------------------------------------------------------

CONFIGS = [
    {},
    SD,
    dict(SD, prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"),
    dict(num_train_timesteps=50, trained_betas=torch.linspace(0.001, 0.03, 50).tolist(), thresholding=True),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("cls,ref_cls", [(DDPMScheduler, RefDDPM), (DDIMScheduler, RefDDIM)])
def test_from_diffusers_round_trip(cls, ref_cls, config, tmp_path):
    ref = ref_cls(**config)
    ours = cls.from_diffusers(ref.config)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    public = {k: v for k, v in ref.config.items() if not k.startswith("_")}
    assert {k: v for k, v in ours.to_diffusers().items() if not k.startswith("_")} == public
    assert ours.to_diffusers()["_class_name"] == cls.__name__

    ours.save_pretrained(tmp_path / "ours")  # diffusers reads our file ...
    loaded = ref_cls.from_pretrained(tmp_path / "ours")
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
    assert loaded.config["_diffusers_version"] == "0.42.1"
    ours.set_timesteps(5)
    loaded.set_timesteps(5)
    assert torch.equal(ours.timesteps, loaded.timesteps) and torch.equal(ours.alphas_cumprod, loaded.alphas_cumprod)
    run_both(ours, loaded, model_outputs(5), torch.randn(SHAPE, generator=gen(2)), **(
        {"eta": 0.5} if cls is DDIMScheduler else {}))

    ref.save_pretrained(tmp_path / "ref")  # ... and we read diffusers' file
    assert torch.equal(cls.from_pretrained(tmp_path / "ref").alphas_cumprod, ref.alphas_cumprod)


def test_sd_folder_config_and_unknown_keys():
    """Stable Diffusion's scheduler folder holds a PNDMScheduler config; its PNDM-only key does not affect DDIM."""
    pndm = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "skip_prk_steps": True,
            "set_alpha_to_one": False, "trained_betas": None, "num_train_timesteps": 1000, **SD}
    ours, ref = DDIMScheduler.from_diffusers(pndm), RefDDIM.from_config(pndm)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    run_both(ours, ref, model_outputs(10), torch.randn(SHAPE, generator=gen(2)), eta=0.5)
    assert not DDPMScheduler.from_diffusers(pndm).config.clip_sample
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        DDIMScheduler.from_diffusers({**pndm, "use_karras_sigmas": True})


def test_fix_options_round_trip_through_our_config(tmp_path):
    assert "prev_timestep_from_schedule" not in DDIMScheduler().to_diffusers()  # absent unless switched on
    DDIMScheduler(timestep_spacing="linspace", prev_timestep_from_schedule=True).save_pretrained(tmp_path)
    assert DDIMScheduler.from_pretrained(tmp_path).config.prev_timestep_from_schedule
    with warnings.catch_warnings():  # diffusers warns that it ignores the key, and computes its own (defect) steps
        warnings.simplefilter("ignore")
        ref = RefDDIM.from_pretrained(tmp_path)
    ours = DDIMScheduler(timestep_spacing="linspace")
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    run_both(ours, ref, model_outputs(10), torch.randn(SHAPE, generator=gen(2)))


# ---- sampling loop and loss ------------------------------------------------------------------------------------------

def toy_model(x, t, cond):
    """Elementwise in the batch (so batching cannot change the numbers): depends on x, t and the condition."""
    return 0.5 * x + 0.1 * cond.view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1).float() / 1000


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("cls,ref_cls", [(DDPMScheduler, RefDDPM), (DDIMScheduler, RefDDIM)])
def test_guided_sampling_against_hand_written_two_steps(cls, ref_cls, guidance_scale):
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    calls = []

    def counting_model(x, t, c):
        calls.append(x.shape[0])
        return toy_model(x, t, c)

    eta = 0.5 if cls is DDIMScheduler else 0.0
    got = sample(counting_model, cls(**SD), SHAPE, cond=cond, uncond=uncond, guidance_scale=guidance_scale,
                 num_steps=2, generator=gen(11), progress=False, eta=eta)

    ref = ref_cls(**SD)  # the reference loop, written out: noise, then per step two model passes and one step
    ref.set_timesteps(2)
    g = gen(11)
    x = torch.randn(SHAPE, generator=g)
    for t in ref.timesteps:
        t_batch = t.expand(SHAPE[0])
        pred_cond = toy_model(x, t_batch, cond)
        pred_uncond = toy_model(x, t_batch, uncond)
        pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond) if guidance_scale != 1.0 else pred_cond
        x = ref.step(pred, t, x, generator=g, **({"eta": eta} if cls is DDIMScheduler else {})).prev_sample
    assert torch.equal(got, x)
    assert calls == ([2 * SHAPE[0]] * 2 if guidance_scale != 1.0 else [SHAPE[0]] * 2)  # one batched call per step


def test_sampling_progress_bar(capsys):
    kwargs = dict(cond=torch.ones(2), num_steps=2, generator=gen(0))
    sample(toy_model, DDIMScheduler(**SD), SHAPE, progress=False, **kwargs)
    assert capsys.readouterr().err == ""
    sample(toy_model, DDIMScheduler(**SD), SHAPE, progress=True, **kwargs)
    assert "sampling" in capsys.readouterr().err


@pytest.mark.parametrize("gamma", [None, 5.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_against_hand_computation(prediction_type, gamma):
    scheduler, ref = DDPMScheduler(**SD, prediction_type=prediction_type), RefDDPM(**SD)
    x0, cond = torch.randn(8, 3, 4, 4, generator=gen(0)), torch.arange(8.0)
    loss = diffusion_loss(toy_model, scheduler, x0, cond, generator=gen(3), min_snr_gamma=gamma)

    g = gen(3)  # the documented draw order: noise, then timesteps
    noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 1000, (8,), generator=g)
    a = ref.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    target = {"epsilon": noise.double(), "sample": x0.double(),
              "v_prediction": a.sqrt() * noise.double() - (1 - a).sqrt() * x0.double()}[prediction_type]
    per_sample = ((toy_model(ref.add_noise(x0, noise, t), t, cond).double() - target) ** 2).mean(dim=(1, 2, 3))
    snr = a.flatten() / (1 - a.flatten())
    clipped = torch.minimum(snr, torch.tensor(gamma or 0.0, dtype=torch.float64))
    weight = {None: torch.ones_like(snr), "epsilon": clipped / snr, "v_prediction": clipped / (snr + 1),
              "sample": clipped}[prediction_type if gamma else None]
    assert loss.dim() == 0 and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), (weight * per_sample).mean(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_diffusion_loss_with_one_generator_per_image_draws_each_images_noise_then_its_timestep(gamma):
    scheduler, ref = DDPMScheduler(**SD), RefDDPM(**SD)
    x0, cond = torch.randn(3, 3, 4, 4, generator=gen(0)), torch.arange(3.0)
    loss = diffusion_loss(toy_model, scheduler, x0, cond, generator=[gen(10 + i) for i in range(3)],
                          min_snr_gamma=gamma)

    noise, t = [], []
    for i in range(3):   # image i: its noise, then its timestep, from its own generator
        g = gen(10 + i)
        noise.append(torch.randn((1, 3, 4, 4), generator=g))
        t.append(torch.randint(0, 1000, (1,), generator=g))
    noise, t = torch.cat(noise), torch.cat(t)
    a = ref.alphas_cumprod[t].double()
    per_sample = ((toy_model(ref.add_noise(x0, noise, t), t, cond).double() - noise.double()) ** 2).mean(dim=(1, 2, 3))
    weight = torch.ones_like(a) if gamma is None else (gamma / (a / (1 - a))).clamp(max=1.0)
    torch.testing.assert_close(loss.double(), (weight * per_sample).mean(), rtol=1e-5, atol=0)
    # so a batch split in two (as across two DDP processes) gives the same mean
    halves = [diffusion_loss(toy_model, scheduler, x0[s], cond[s], generator=[gen(10 + i) for i in range(3)][s],
                             min_snr_gamma=gamma) for s in (slice(0, 1), slice(1, 3))]
    torch.testing.assert_close(loss, (halves[0] + 2 * halves[1]) / 3, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="one generator per batch element"):
        diffusion_loss(toy_model, scheduler, x0, cond, generator=[gen(1), gen(2)])


def test_diffusion_loss_trains_and_survives_zero_snr():
    net = torch.nn.Conv2d(3, 3, 1)
    x0 = torch.randn(8, 3, 4, 4, generator=gen(0))
    loss = diffusion_loss(lambda x, t, c: net(x), DDPMScheduler(), x0, generator=gen(1))
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    zero_snr = DDPMScheduler(num_train_timesteps=2, rescale_betas_zero_snr=True)  # ᾱ_1 = 0: SNR = 0 at t = 1
    g = gen(2)
    torch.randn(x0.shape, generator=g)
    assert 1 in torch.randint(0, 2, (8,), generator=g).tolist()  # the drawn t hits SNR = 0
    assert diffusion_loss(lambda x, t, c: net(x), zero_snr, x0, generator=gen(2), min_snr_gamma=5.0).isfinite()


# ---- bad input -------------------------------------------------------------------------------------------------------

def _ddim_ready():
    s = DDIMScheduler()
    s.set_timesteps(10)
    return s


X = torch.zeros(SHAPE)
BAD = {
    "beta_schedule": lambda: DDPMScheduler(beta_schedule="cubic"),
    "prediction_type": lambda: DDIMScheduler(prediction_type="noise"),
    "variance_type": lambda: DDPMScheduler(variance_type="huge"),
    "timestep_spacing": lambda: DDPMScheduler(timestep_spacing="even"),
    "trained_betas": lambda: DDPMScheduler(trained_betas=[0.1, 0.2]),
    "num_inference_steps": lambda: DDPMScheduler().set_timesteps(1001),
    "num_inference_steps must": lambda: DDIMScheduler().set_timesteps(0),
    "exactly one": lambda: DDPMScheduler().set_timesteps(10, timesteps=[5, 1]),
    "descending": lambda: DDPMScheduler().set_timesteps(timesteps=[5, 7]),
    "must lie in": lambda: DDPMScheduler().set_timesteps(timesteps=[1000, 5]),
    "custom lists need": lambda: DDIMScheduler().set_timesteps(timesteps=[900, 5]),
    "timestep must lie": lambda: DDPMScheduler().step(X, 1000, X),
    "timestep must lie in": lambda: _ddim_ready().step(X, -1, X),
    "timestep must be a single": lambda: DDPMScheduler().step(X, torch.tensor([5, 6]), X),
    "not one of scheduler.timesteps": lambda: (lambda s: (s.set_timesteps(10), s.step(X, 950, X)))(DDPMScheduler()),
    "timesteps must lie": lambda: DDPMScheduler().add_noise(X, X, torch.tensor([0, 1000])),
    "timesteps must hold integers": lambda: DDPMScheduler().add_noise(X, X, torch.tensor([0.5, 1.0])),
    "one timestep per batch": lambda: DDPMScheduler().get_velocity(X, X, torch.tensor([1, 2, 3])),
    "noise must have": lambda: DDPMScheduler().add_noise(X, torch.zeros(2, 3, 4, 5), 5),
    "model_output must have": lambda: DDPMScheduler().step(torch.zeros(2, 6, 4, 4), 5, X),
    "needs model_output with 2C": lambda: DDPMScheduler(variance_type="learned").step(X, 5, X),
    "model_output must have shape": lambda: _ddim_ready().step(torch.zeros(2, 3, 4), 901, X),
    "set_timesteps": lambda: DDIMScheduler().step(X, 5, X),
    "eta must be": lambda: _ddim_ready().step(X, 901, X, eta=-1.0),
    "either generator or variance_noise": lambda: _ddim_ready().step(X, 901, X, eta=1.0, generator=gen(0),
                                                                       variance_noise=X),
    "variance_noise must have": lambda: _ddim_ready().step(X, 901, X, eta=1.0, variance_noise=torch.zeros(3)),
    "unsupported config key": lambda: DDPMScheduler.from_diffusers({"num_train_timesteps": 10, "sigma_min": 0.1}),
    "needs both cond and uncond": lambda: sample(toy_model, DDIMScheduler(), SHAPE, cond=torch.ones(2),
                                                 guidance_scale=2.0, progress=False),
    "equal shapes": lambda: sample(toy_model, DDIMScheduler(), SHAPE, cond=torch.ones(2), uncond=torch.ones(3),
                                   guidance_scale=2.0, progress=False),
    "takes no eta": lambda: sample(toy_model, DDPMScheduler(), SHAPE, cond=torch.ones(2), eta=0.5, progress=False),
    "model output must have shape": lambda: diffusion_loss(lambda x, t, c: x[:, :1], DDPMScheduler(), X),
    "min_snr_gamma": lambda: diffusion_loss(lambda x, t, c: x, DDPMScheduler(), X, min_snr_gamma=0.0),
    "generator: a list": lambda: randn_tensor(SHAPE, [gen(0), gen(1), gen(2)]),
}


@pytest.mark.parametrize("message", list(BAD))
def test_bad_input_raises_value_error(message):
    with pytest.raises(ValueError, match=message):
        BAD[message]()


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        DDPMScheduler.from_pretrained(tmp_path)
