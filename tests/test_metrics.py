"""Metrics against known answers: PSNR of a known MSE, SSIM closed forms, Frechet distance of Gaussians,
KID of one distribution, the condition-control ratio by hand, physics features of synthetic spectrograms,
and the evaluation classifier's determinism and save/load."""
import math

import numpy as np
import pytest
import torch

from ldm.metrics import (ClassifierConfig, EvalCNN, condition_control_ratio, frechet_distance, kid, load_classifier,
                         physics_features, predict, psnr, save_classifier, ssim, train_classifier)


pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


def test_psnr_of_known_mse():
    x = torch.zeros(2, 1, 8, 8)
    y = torch.full((2, 1, 8, 8), 0.1)                                   # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 20.0]))
    torch.testing.assert_close(psnr(x, y * 2, data_range=2.0), torch.tensor([20.0, 20.0]))   # MSE 0.04, L = 2
    with pytest.raises(ValueError):
        psnr(x, y[:, :, :4])


def test_ssim_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 32, 32, generator=g)
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert float(ssim(x, noisy).max()) < 0.9
    # Constant images: variances and covariance vanish, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.2, 0.6, 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    torch.testing.assert_close(ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)),
                               torch.tensor([expected]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="H, W >= 11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_frechet_distance_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    # Same covariance exactly, shifted mean: FD = |mu|^2.
    assert frechet_distance(a, a + mu) == pytest.approx(float(mu.pow(2).sum()), rel=1e-6)
    # Two independent large draws of N(0, I) and N(mu, I): FD -> |mu|^2.
    b = torch.randn(20000, 6, generator=g) + mu
    c = torch.randn(20000, 6, generator=g)
    assert frechet_distance(c, b) == pytest.approx(float(mu.pow(2).sum()), abs=0.4)   # sd of the estimate ~0.08
    # N(0, I) vs N(0, 4 I) in D dims: Tr(I + 4 I - 2 * 2 I) = D.
    assert frechet_distance(c, 2 * torch.randn(20000, 6, generator=g)) == pytest.approx(6.0, abs=0.1)


def test_kid_near_zero_for_one_distribution():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    same, std = kid(x, y, generator=torch.Generator().manual_seed(1))
    assert abs(same) < 3 * std + 1e-3
    shifted, _ = kid(x, y + 1.0, generator=torch.Generator().manual_seed(1))
    assert shifted > 0.5 and shifted > 50 * abs(same)


def test_condition_control_ratio_by_hand():
    requested = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 0, 1, 2, 1])
    ratios = condition_control_ratio(predicted, requested, 3)
    assert ratios[0] == pytest.approx(1.0 / (1 / 4))                    # hit 2/2, other users -> 0: 1 of 4
    assert ratios[1] == pytest.approx(0.5 / (1 / 4))                    # hit 1/2, other users -> 1: 1 of 4
    assert ratios[2] == pytest.approx(0.5 / (1 / 4))                    # hit 1/2, none of 4 others: floored at 1/4
    assert condition_control_ratio(np.array([0, 1]), np.array([0, 0]), 2) == {}   # no other user's samples


def test_physics_features_of_synthetic_spectrograms():
    velocities = np.linspace(6, -6, 121)                                # 0.1 m/s rows, approaching on top
    frame_rate, n = 50.0, 128
    t = np.arange(n) / frame_rate
    db = np.full((121, n), -60.0)
    torso_row = int(np.argmin(np.abs(velocities - 1.2)))
    db[torso_row] = 0.0                                                 # torso line at 1.2 m/s
    steps_per_s = 1.7
    limb = 1.2 + 2.0 * np.sin(2 * np.pi * steps_per_s * t)             # a limb swinging -0.8..3.2 m/s about it
    for j, v in enumerate(limb):
        db[np.abs(velocities - v) < 0.051, j] = -10.0
    f = physics_features(db, velocities, frame_rate)
    assert f["torso_velocity_mps"] == pytest.approx(1.2, abs=0.05)
    # 95th / 5th percentiles over frames of 1.2 + 2 sin: 1.2 +- 2 sin(0.45 pi) = 1.2 +- 1.975.
    assert f["upper_envelope_mps"] == pytest.approx(3.175, abs=0.1)
    assert f["lower_envelope_mps"] == pytest.approx(-0.775, abs=0.1)
    assert f["bandwidth_mps"] == pytest.approx(np.mean(np.abs(limb - 1.2)), abs=0.1)
    assert f["cadence_steps_per_s"] == pytest.approx(steps_per_s, rel=0.02)
    with pytest.raises(ValueError):
        physics_features(db[:10], velocities, frame_rate)


def _toy_data(n_per_class=24, size=32, seed=0):
    """Class k: a bright horizontal line at row 4 + 8 k plus noise (position along velocity is the cue)."""
    g = torch.Generator().manual_seed(seed)
    x = -1 + 0.3 * torch.rand(3 * n_per_class, 1, size, size, generator=g)
    y = torch.arange(3).repeat_interleave(n_per_class)
    for i, k in enumerate(y.tolist()):
        x[i, 0, 4 + 8 * k] = 1.0
    return x, y


def test_classifier_learns_is_deterministic_and_round_trips(tmp_path):
    x, y = _toy_data()
    cfg = ClassifierConfig(num_classes=3, image_size=32, epochs=4, min_steps=0, seed=3)
    state = torch.get_rng_state()
    first = train_classifier(x, y, cfg)
    assert torch.equal(state, torch.get_rng_state())                    # the global RNG is left alone
    second = train_classifier(x, y, cfg)
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(p, q), name
    x_test, y_test = _toy_data(8, seed=1)
    probs, feats = predict(first, x_test)
    assert probs.shape == (24, 3) and feats.shape == (24, cfg.feature_dim)
    assert float((probs.argmax(1) == y_test).float().mean()) == 1.0
    assert 5e4 < sum(p.numel() for p in EvalCNN(ClassifierConfig(num_classes=8)).parameters()) < 2e5
    save_classifier(first, str(tmp_path / "clf.safetensors"), {"a": 0, "b": 1, "c": 2})
    loaded, class_map = load_classifier(str(tmp_path / "clf.safetensors"))
    assert class_map == {"a": 0, "b": 1, "c": 2}
    torch.testing.assert_close(predict(loaded, x_test)[0], probs)
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(x, y + 5, cfg)
    assert math.isfinite(float(feats.sum()))


def test_mean_ci_uses_the_student_t_quantile():
    """The table's t_{0.975, df} leaves 95% of torch.distributions.StudentT(df) between -t and t (numerical
    integration of its density), and the interval has the closed form mean +- t s / sqrt(n)."""
    from ldm.metrics import _T975, mean_ci
    for df, t in enumerate(_T975, start=1):
        grid = torch.linspace(-t, t, 200_001, dtype=torch.float64)
        density = torch.distributions.StudentT(torch.tensor(float(df), dtype=torch.float64)).log_prob(grid).exp()
        assert abs(float(torch.trapezoid(density, grid)) - 0.95) < 2e-4, df
    values = [0.61, 0.70, 0.64, 0.58]
    mean, low, high = mean_ci(values)
    half = 3.182 * np.std(values, ddof=1) / 2
    assert mean == pytest.approx(np.mean(values)) and (low, high) == pytest.approx((mean - half, mean + half))
    assert np.isnan(mean_ci([0.5])[1])
    with pytest.raises(ValueError, match="finite"):
        mean_ci([0.5, float("nan")])
