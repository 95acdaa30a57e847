"""ldm.samplers against diffusers' DPMSolverMultistepScheduler, EulerDiscreteScheduler and
EulerAncestralDiscreteScheduler, bit for bit (torch.equal): timesteps, sigmas, init_noise_sigma, every
scale_model_input and step output, and the generator state after the run; over a grid and random configs. Then the
sampling loop and make_sampler against hand-written diffusers loops, config round trips, and every refusal."""
import inspect
import itertools
import random
import warnings

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler as RefDPM
from diffusers import EulerAncestralDiscreteScheduler as RefEulerA
from diffusers import EulerDiscreteScheduler as RefEuler
from diffusers import PNDMScheduler as RefPNDM

from ldm.pipeline import SAMPLERS, make_sampler
from ldm.samplers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from ldm.guided_sampling import sample
from ldm.unet import UNet2DConditionModel, UNetConfig
from train_ldm import make_scheduler

pytestmark = [pytest.mark.usefixtures("one_thread"),   # see tests/conftest.py
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]  # diffusers + numpy 2

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
SHAPE = (2, 3, 4, 4)  # (B, C, H, W): tiny, every step runs in microseconds
PAIRS = {"dpm": (DPMSolverMultistepScheduler, RefDPM), "euler": (EulerDiscreteScheduler, RefEuler),
         "euler_a": (EulerAncestralDiscreteScheduler, RefEulerA)}
# Stable Diffusion 1.x's scheduler folder as the Hub holds it: a PNDM config that names no timestep_spacing
SD_FOLDER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "skip_prk_steps": True,
             "set_alpha_to_one": False, "trained_betas": None, "num_train_timesteps": 1000, "clip_sample": False, **SD}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


WEIGHT = torch.randn(SHAPE, generator=gen(100))


def fake_model(x: torch.Tensor, t, learned_variance: bool = False) -> torch.Tensor:
    """A fixed deterministic "model" of x and t (parity needs identical inputs, not a trained network); with
    learned_variance a second set of C channels, as a learned-variance UNet outputs."""
    out = torch.tanh(0.7 * x + WEIGHT * (float(t) / 1000 - 0.5))
    return torch.cat([out, 0.3 * out.flip(1)], dim=1) if learned_variance else out


def assert_identical(ours: torch.Tensor, ref: torch.Tensor, what: str = ""):
    """torch.equal, with NaNs in the same places counting as equal (diffusers' Euler ancestral can give NaN)."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, what
    assert torch.equal(ours.isnan(), ref.isnan()), what
    assert torch.equal(ours.nan_to_num(), ref.nan_to_num()), f"{what}: max diff {(ours - ref).abs().max()}"


def run_both(kind: str, config: dict, steps: int, dtype=torch.float32, sample_dtype=None,
             **step_kwargs) -> torch.Tensor:
    """Build ours and diffusers' scheduler from `config`, set S = `steps` and compare the schedule; then step both
    through it from the same x_T (sample_dtype, default dtype) with the same model outputs (dtype) and equal
    generators, comparing every output."""
    cls, ref_cls = PAIRS[kind]
    ours, ref = cls(**config), ref_cls(**config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    what = f"{kind} {config} S={steps}"
    assert_identical(ours.timesteps, ref.timesteps, what)
    assert_identical(ours.sigmas, ref.sigmas, what)
    assert_identical(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(ref.init_noise_sigma), what)
    assert len(ref.timesteps) == 1 or ref.timesteps[0] != ref.timesteps[1], "see test_a_repeated_first_timestep"
    learned = config.get("variance_type") is not None
    x = (torch.randn(SHAPE, generator=gen(2)) * ref.init_noise_sigma).to(sample_dtype or dtype)
    x_ours, x_ref, g_ours, g_ref = x.clone(), x.clone(), gen(7), gen(7)
    for t in ref.timesteps:
        in_ours, in_ref = ours.scale_model_input(x_ours, t), ref.scale_model_input(x_ref, t)
        assert_identical(in_ours, in_ref, f"{what} scale_model_input t={t}")
        x_ours = ours.step(fake_model(in_ours, t, learned).to(dtype), t, x_ours, generator=g_ours, **step_kwargs)
        x_ref = ref.step(fake_model(in_ref, t, learned).to(dtype), t, x_ref, generator=g_ref, **step_kwargs)
        assert isinstance(x_ours, torch.Tensor)
        assert_identical(x_ours, x_ref.prev_sample, f"{what} t={t}")
        x_ref = x_ref.prev_sample
    assert torch.equal(g_ours.get_state(), g_ref.get_state()), what  # the same number of draws
    return x_ours


def first_timestep_repeats(kind: str, config: dict, steps: int) -> bool:
    with warnings.catch_warnings():  # at collection time, before the module's filterwarnings mark applies
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = PAIRS[kind][1](**config)
        ref.set_timesteps(steps)
    return len(ref.timesteps) > 1 and bool(ref.timesteps[0] == ref.timesteps[1])


# ---- a grid over the options Stable Diffusion users switch -----------------------------------------------------------

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
SPACINGS = ["leading", "trailing", "linspace"]
STEPS = [1, 2, 3, 7, 16]  # 16: at >= 15 steps lower_order_final no longer lowers the last steps


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_dpm_solver_grid(beta_schedule, prediction_type, spacing):
    """Orders 1, 2, 3, uniform and Karras σs (not with the cosine schedule: see the repeated-timestep test)."""
    for karras, order, steps in itertools.product([False, True], [1, 2, 3], STEPS):
        if karras and beta_schedule == "squaredcos_cap_v2":
            continue
        config = dict(SD, beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing,
                      use_karras_sigmas=karras, solver_order=order)
        assert run_both("dpm", config, steps).isfinite().all()


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_euler_grid(beta_schedule, prediction_type, spacing):
    for karras, steps in itertools.product([False, True], STEPS):
        config = dict(SD, beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing,
                      use_karras_sigmas=karras)
        assert run_both("euler", config, steps).isfinite().all()


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])  # diffusers refuses "sample" here
@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_euler_ancestral_grid(beta_schedule, prediction_type, spacing):
    for steps in STEPS:
        config = dict(SD, beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing)
        x = run_both("euler_a", config, steps)
        # diffusers' defect, kept: σ_down = sqrt(σ_to² - σ_up²) is NaN where rounding makes σ_up² > σ_to², here
        # the first step of 3 trailing cosine steps, σ 20291 -> 1.75 (both sides NaN in the same places)
        nan = beta_schedule == "squaredcos_cap_v2" and spacing == "trailing" and steps == 3
        assert x.isnan().any() if nan else x.isfinite().all()


# ---- random configs over every implemented option --------------------------------------------------------------------

def random_configs(kind: str, count: int, seed: int) -> list:
    """(config, steps) pairs drawn over every option we implement, built and checked with diffusers."""
    rng, cases = random.Random(seed), []
    while len(cases) < count:
        n = rng.choice([1000, 1000, 500, 100])
        config = dict(num_train_timesteps=n, beta_schedule=rng.choice(SCHEDULES),
                      beta_start=rng.choice([0.0001, 0.00085]), beta_end=rng.choice([0.012, 0.02]),
                      prediction_type=rng.choice(["epsilon", "v_prediction", "sample"]),
                      timestep_spacing=rng.choice(SPACINGS), steps_offset=rng.choice([0, 1]),
                      rescale_betas_zero_snr=rng.random() < 0.25)
        if rng.random() < 0.1:
            config["trained_betas"] = torch.linspace(0.0005, 0.03, n).tolist()
        if kind == "dpm":
            config.update(solver_order=rng.choice([1, 2, 3]), solver_type=rng.choice(["midpoint", "heun"]),
                          lower_order_final=rng.random() < 0.7, euler_at_final=rng.random() < 0.2,
                          use_karras_sigmas=rng.random() < 0.4, final_sigmas_type=rng.choice(["zero", "sigma_min"]),
                          lambda_min_clipped=rng.choice([-float("inf"), -5.1]), thresholding=rng.random() < 0.2,
                          dynamic_thresholding_ratio=rng.choice([0.995, 0.9]), sample_max_value=rng.choice([1.0, 1.5]),
                          variance_type=rng.choice([None, None, None, "learned", "learned_range"]))
            if config["variance_type"] is not None:  # diffusers uses the first 3 channels: right for C = 3 only
                config["prediction_type"] = "epsilon"
        elif kind == "euler":
            config.update(use_karras_sigmas=rng.random() < 0.5, final_sigmas_type=rng.choice(["zero", "sigma_min"]))
            if config["use_karras_sigmas"] and rng.random() < 0.5:
                config.update(sigma_min=0.05, sigma_max=2.0)
        elif config["prediction_type"] == "sample":
            continue
        steps = rng.choice([1, 2, 4, 5, 8, 14, 15, 20, 30])
        if config.get("use_karras_sigmas") and config["beta_schedule"] == "squaredcos_cap_v2":
            continue  # a repeated first timestep: see test_a_repeated_first_timestep
        if not first_timestep_repeats(kind, config, steps):
            cases.append((config, steps))
    return cases


@pytest.mark.parametrize("case", random_configs("dpm", 40, seed=0), ids=lambda c: f"S{c[1]}")
def test_dpm_solver_random_configs(case):
    run_both("dpm", *case)


@pytest.mark.parametrize("case", random_configs("euler", 25, seed=1), ids=lambda c: f"S{c[1]}")
def test_euler_random_configs(case):
    run_both("euler", *case)


@pytest.mark.parametrize("case", random_configs("euler_a", 15, seed=2), ids=lambda c: f"S{c[1]}")
def test_euler_ancestral_random_configs(case):
    run_both("euler_a", *case)


@pytest.mark.parametrize("churn", [dict(s_churn=1.0), dict(s_churn=5.0, s_tmin=0.1, s_tmax=3.0, s_noise=1.003)])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_churn_draws_the_same_noise(prediction_type, karras, churn):
    config = dict(SD, prediction_type=prediction_type, use_karras_sigmas=karras)
    run_both("euler", config, 10, **churn)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_half_precision_outputs(kind):
    """fp16 model outputs with fp16 or float32 samples: both step in float32 and return the same dtype (the model
    output's; DPM-Solver++: its x̂_0's, float32 from an epsilon output and a float32 sample)."""
    assert run_both(kind, dict(SD), 6, dtype=torch.float16).dtype == torch.float16
    for prediction_type in ["epsilon", "v_prediction"]:
        run_both(kind, dict(SD, prediction_type=prediction_type), 6, dtype=torch.float16, sample_dtype=torch.float32)


def test_a_repeated_first_timestep():
    """Where rounding makes timesteps[0] == timesteps[1] (cosine betas with Karras σs; σ_max above the training
    range), diffusers starts at the second match (its image-to-image rule) and runs past its σ table on the last step
    (IndexError). We take the first match: the same schedule, sampled to the end."""
    cases = [("dpm", dict(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True), 7),
             ("euler", dict(SD, num_train_timesteps=100, use_karras_sigmas=True, sigma_max=10.0), 15)]
    for kind, config, steps in cases:
        cls, ref_cls = PAIRS[kind]
        ours, ref = cls(**config), ref_cls(**config)
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        assert ref.timesteps[0] == ref.timesteps[1]
        assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
        x, x_ref = torch.randn(SHAPE, generator=gen(0)), torch.randn(SHAPE, generator=gen(0))
        for t in ours.timesteps:
            x = ours.step(fake_model(ours.scale_model_input(x, t), t), t, x)
        assert x.isfinite().all() and ours.step_index == steps
        with pytest.raises(IndexError):
            for t in ref.timesteps:
                x_ref = ref.step(fake_model(ref.scale_model_input(x_ref, t), t), t, x_ref).prev_sample


def test_euler_add_noise():
    ours, ref = EulerDiscreteScheduler(**SD, use_karras_sigmas=True), RefEuler(**SD, use_karras_sigmas=True)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    x0, noise = torch.randn(SHAPE, generator=gen(0)), torch.randn(SHAPE, generator=gen(1))
    t = ref.timesteps[[2, 7]]
    assert torch.equal(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))


# ---- the sampling loop -----------------------------------------------------------------------------------------------

def toy_model(x, t, cond):
    """Elementwise in the batch (so batching cannot change the numbers): depends on x, t and the condition."""
    return torch.tanh(0.5 * x + 0.1 * cond.view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1).float() / 1000)


def diffusers_loop(model, ref, shape, steps, cond, uncond, guidance_scale, generator):
    """A diffusers pipeline's loop, written out: x_T · init_noise_sigma; scale_model_input, one batched model call
    ([uncond; cond]) and guidance, step."""
    ref.set_timesteps(steps)
    x = torch.randn(shape, generator=generator) * ref.init_noise_sigma
    for t in ref.timesteps:
        x_in = ref.scale_model_input(x, t)
        if guidance_scale != 1.0:
            out_uncond, out_cond = model(torch.cat([x_in, x_in]), t.expand(2 * shape[0]),
                                         torch.cat([uncond, cond])).chunk(2)
            pred = out_uncond + guidance_scale * (out_cond - out_uncond)
        else:
            pred = model(x_in, t.expand(shape[0]), cond)
        x = ref.step(pred, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("config", [dict(SD), dict(SD, use_karras_sigmas=True, prediction_type="v_prediction")])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_sample_equals_a_diffusers_loop(kind, config, guidance_scale):
    if kind == "euler_a" and "use_karras_sigmas" in config:
        config = {k: v for k, v in config.items() if k != "use_karras_sigmas"}
    cls, ref_cls = PAIRS[kind]
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    got = sample(toy_model, cls(**config), SHAPE, cond=cond, uncond=uncond, guidance_scale=guidance_scale,
                 num_steps=8, generator=gen(11), progress=False)
    expected = diffusers_loop(toy_model, ref_cls(**config), SHAPE, 8, cond, uncond, guidance_scale, gen(11))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_sample_with_a_tiny_unet_equals_a_diffusers_loop(kind):
    """A real (random) UNet: the Euler samplers hand it fractional float32 timesteps (linspace, 6 steps)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNetConfig.preset("tiny")).eval()
    shape = (2, 4, 8, 8)
    cond, uncond = torch.randn(2, 3, 32, generator=gen(1)), torch.zeros(2, 3, 32)

    def model(x, t, context):
        return unet(x, t, encoder_hidden_states=context)

    cls, ref_cls = PAIRS[kind]
    got = sample(model, cls(**SD), shape, cond=cond, uncond=uncond, guidance_scale=2.0, num_steps=6,
                 generator=gen(5), progress=False)
    with torch.no_grad():
        expected = diffusers_loop(model, ref_cls(**SD), shape, 6, cond, uncond, 2.0, gen(5))
    assert torch.equal(got, expected)
    if kind != "dpm":
        assert cls(**SD).timesteps.dtype == torch.long  # until set_timesteps; then float32 with fractions
        scheduler = cls(**SD)
        scheduler.set_timesteps(6)
        assert scheduler.timesteps.dtype == torch.float32 and scheduler.timesteps[1] % 1 != 0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_make_sampler_sets_samplers_up_as_stable_diffusion_pipelines_do(prediction):
    """<Sampler>.from_config(pipe.scheduler.config) for Stable Diffusion's folder, with the model's prediction type."""
    training = make_scheduler(prediction)
    pndm = RefPNDM.from_config({**SD_FOLDER, "prediction_type": prediction})
    for kind, (cls, ref_cls) in zip(["dpm++2m", "euler", "euler_a"], PAIRS.values()):
        ours, ref = make_sampler(kind, training), ref_cls.from_config(pndm.config)
        assert type(ours) is cls
        assert_same_config(ours, ref)
        ours.set_timesteps(20)
        ref.set_timesteps(20)
        assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    dpm = make_sampler("dpm++2m", training).config
    assert (dpm.solver_order, dpm.algorithm_type, dpm.use_karras_sigmas, dpm.final_sigmas_type,
            dpm.lower_order_final, dpm.timestep_spacing) == (2, "dpmsolver++", False, "zero", True, "linspace")
    assert SAMPLERS == ("ddim", "ddpm", "dpm++2m", "euler", "euler_a")
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_sampler("heun", training)


# ---- configuration files ---------------------------------------------------------------------------------------------

def assert_same_config(ours, ref):
    """Our config file holds ref's values, and diffusers reading it builds ref's config (the keys we do not
    implement, absent from our file, at their defaults)."""
    written = {k: v for k, v in ours.to_diffusers().items() if not k.startswith("_")}
    keys = inspect.signature(type(ref).__init__).parameters  # (from_config keeps other classes' keys too)
    public = {k: v for k, v in ref.config.items() if k in keys}
    assert written == {k: v for k, v in public.items() if k in written}
    assert {k: v for k, v in type(ref)(**written).config.items() if not k.startswith("_")} == public


ROUND_TRIP = {
    "dpm": [{}, dict(SD, solver_order=3, use_karras_sigmas=True, prediction_type="v_prediction"),
            dict(SD, lambda_min_clipped=-5.1, final_sigmas_type="sigma_min", solver_type="heun", thresholding=True)],
    "euler": [{}, dict(SD, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0, timestep_spacing="leading")],
    "euler_a": [{}, dict(SD, rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")],
}


@pytest.mark.parametrize("kind,config", [(k, c) for k, configs in ROUND_TRIP.items() for c in configs])
def test_from_diffusers_round_trip(kind, config, tmp_path):
    cls, ref_cls = PAIRS[kind]
    ref = ref_cls(**config)
    ours = cls.from_diffusers(ref.config)
    assert_same_config(ours, ref)
    public = {k: v for k, v in ref.config.items() if not k.startswith("_")}
    ours.save_pretrained(tmp_path / "ours")  # diffusers reads our file ...
    loaded = ref_cls.from_pretrained(tmp_path / "ours")
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == public
    ref.save_pretrained(tmp_path / "ref")  # ... and we read diffusers' file
    again = cls.from_pretrained(tmp_path / "ref")
    again.set_timesteps(9)
    loaded.set_timesteps(9)
    assert torch.equal(again.timesteps, loaded.timesteps) and torch.equal(again.sigmas, loaded.sigmas)


def test_stable_diffusion_folders():
    """SD 1.x's PNDM folder (PNDM/DDIM-only keys are ignored), and an SDXL-style Euler folder for Euler ancestral."""
    for cls, ref_cls in PAIRS.values():
        ours, ref = cls.from_diffusers(SD_FOLDER), ref_cls.from_config(SD_FOLDER)
        ours.set_timesteps(20)
        ref.set_timesteps(20)
        assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    euler = RefEuler(**SD, timestep_spacing="leading").config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = RefEulerA.from_config(euler)
    ours = EulerAncestralDiscreteScheduler.from_diffusers(euler)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    assert torch.equal(ours.init_noise_sigma, ref.init_noise_sigma)


REFUSED = [  # diffusers keys that change the computation but are not implemented: named in the error
    (DPMSolverMultistepScheduler, "algorithm_type", "sde-dpmsolver++"),
    (DPMSolverMultistepScheduler, "algorithm_type", "dpmsolver"),
    (DPMSolverMultistepScheduler, "use_exponential_sigmas", True),
    (DPMSolverMultistepScheduler, "use_beta_sigmas", True),
    (DPMSolverMultistepScheduler, "use_lu_lambdas", True),
    (DPMSolverMultistepScheduler, "use_flow_sigmas", True),
    (DPMSolverMultistepScheduler, "use_dynamic_shifting", True),
    (DPMSolverMultistepScheduler, "prediction_type", "flow_prediction"),
    (DPMSolverMultistepScheduler, "solver_type", "bh2"),
    (EulerDiscreteScheduler, "interpolation_type", "log_linear"),
    (EulerDiscreteScheduler, "use_exponential_sigmas", True),
    (EulerDiscreteScheduler, "use_beta_sigmas", True),
    (EulerDiscreteScheduler, "timestep_type", "continuous"),
    (EulerAncestralDiscreteScheduler, "use_karras_sigmas", True),
    (EulerAncestralDiscreteScheduler, "final_sigmas_type", "sigma_min"),
]


@pytest.mark.parametrize("cls,key,value", REFUSED)
def test_unimplemented_diffusers_options_are_refused_by_name(cls, key, value):
    with pytest.raises(ValueError, match=key):
        cls.from_diffusers({**SD, key: value})
    cls.from_diffusers({**SD, "flow_shift": 3.0, "time_shift_type": "exponential"} if cls is
                       DPMSolverMultistepScheduler else SD)  # inert without use_flow_sigmas / use_dynamic_shifting


def _ready(cls, steps=10, **kwargs):
    scheduler = cls(**SD, **kwargs)
    scheduler.set_timesteps(steps)
    return scheduler


def _stepped_twice(cls):
    scheduler, x = _ready(cls), torch.zeros(SHAPE)
    for t in scheduler.timesteps[:2]:
        x = scheduler.step(x, t, x)
    return scheduler


def _stepped_through(cls):
    scheduler, x = _ready(cls, steps=2), torch.zeros(SHAPE)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x)
    return scheduler.step(x, scheduler.timesteps[-1], x)


X = torch.zeros(SHAPE)
BAD = {
    "solver_order must be": lambda: DPMSolverMultistepScheduler(solver_order=4),
    "solver_type must be": lambda: DPMSolverMultistepScheduler(solver_type="bh1"),
    "final_sigmas_type must be": lambda: EulerDiscreteScheduler(final_sigmas_type="one"),
    "final_sigmas_type must be one": lambda: DPMSolverMultistepScheduler(final_sigmas_type="one"),
    "variance_type must be": lambda: DPMSolverMultistepScheduler(variance_type="fixed_small"),
    "prediction_type must be": lambda: EulerAncestralDiscreteScheduler(prediction_type="noise"),
    "num_inference_steps must be": lambda: DPMSolverMultistepScheduler().set_timesteps(0),
    "num_inference_steps must be an int": lambda: EulerDiscreteScheduler().set_timesteps(1001),
    "timesteps must lie in": lambda: DPMSolverMultistepScheduler(timestep_spacing="trailing").set_timesteps(61),
    "timesteps must lie in [0": lambda: EulerDiscreteScheduler(**SD, timestep_spacing="leading").set_timesteps(1000),
    "needs set_timesteps": lambda: DPMSolverMultistepScheduler().step(X, 999, X),
    "needs set_timesteps(": lambda: EulerAncestralDiscreteScheduler().scale_model_input(X, 999.0),
    "is not one of scheduler.timesteps": lambda: _ready(EulerDiscreteScheduler).step(X, 500.0, X),
    "must follow scheduler.timesteps in order": lambda: _stepped_twice(DPMSolverMultistepScheduler).step(X, 999, X),
    "steps must follow": lambda: _stepped_twice(EulerAncestralDiscreteScheduler).step(X, 999.0, X),
    "every step of the schedule": lambda: _stepped_through(EulerDiscreteScheduler),
    "single timestep": lambda: _ready(DPMSolverMultistepScheduler).step(X, torch.tensor([999, 900]), X),
    "model_output must have shape": lambda: _ready(EulerDiscreteScheduler).step(torch.zeros(2, 6, 4, 4), 999.0, X),
    "model_output must have shape ": lambda: _ready(DPMSolverMultistepScheduler).step(torch.zeros(2, 6, 4, 4), 999, X),
    "noise must have": lambda: _ready(EulerDiscreteScheduler).add_noise(X, torch.zeros(1), 999.0),
    "unsupported config key": lambda: EulerDiscreteScheduler.from_diffusers({"solver_order": 2}),
    "takes no eta": lambda: sample(toy_model, EulerDiscreteScheduler(), SHAPE, cond=torch.ones(2), eta=0.5,
                                   progress=False),
}


@pytest.mark.parametrize("message", list(BAD))
def test_bad_input_raises_value_error(message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        BAD[message]()
