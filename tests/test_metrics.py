"""Metrics against known answers: PSNR of a known MSE, SSIM closed forms, Frechet distance of Gaussians,
KID of one distribution, the condition-control ratio by hand, physics features of synthetic spectrograms,
and the evaluation classifier's determinism and save/load."""
import math

import numpy as np
import pytest
import torch

from ldm.radar.identity import (ClassifierConfig, EvalCNN, condition_control_ratio, load_classifier, predict,
                                save_classifier, train_classifier)
from ldm.metrics import frechet_distance, psnr, ssim
from ldm.radar.physics import physics_features


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


def test_a_non_square_classifier_learns_and_round_trips(tmp_path):
    """image_size (H, W): inputs are resized to 32 x 16 (time halved, the velocity rows that carry the class kept)."""
    x, y = _toy_data()
    model = train_classifier(x, y, ClassifierConfig(num_classes=3, image_size=(32, 16), min_steps=60, seed=3))
    x_test, y_test = _toy_data(8, seed=1)
    probs = predict(model, x_test)[0]
    assert float((probs.argmax(1) == y_test).float().mean()) == 1.0
    save_classifier(model, str(tmp_path / "clf.safetensors"), {"a": 0, "b": 1, "c": 2})
    loaded, _ = load_classifier(str(tmp_path / "clf.safetensors"))
    assert loaded.cfg.image_size == (32, 16)
    torch.testing.assert_close(predict(loaded, x_test)[0], probs)


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


# ----------------------------------------------------------------------------------------------------------------
# Intervals, distances with floors, memorisation
# ----------------------------------------------------------------------------------------------------------------
def test_wilson_interval_inverts_the_score_test_and_covers_95_percent():
    """Z975 is torch.distributions.Normal's 97.5% quantile; the Wilson interval's ends are the two p with
    (k/n - p)^2 = z^2 p (1 - p) / n; the textbook value for 8 of 10 is [0.4902, 0.9433]; and its exact coverage,
    summed over torch.distributions.Binomial's pmf, is close to 95%."""
    from ldm.metrics import Z975, wilson_interval
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.975, dtype=torch.float64)))
    assert Z975 == pytest.approx(z, abs=1e-9)
    for k, n in ((8, 10), (3, 48), (47, 48), (120, 256)):
        for p in wilson_interval(k, n):
            assert (k / n - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-9)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 12) == (0.0, pytest.approx(z * z / (12 + z * z)))      # 0 of n: [0, z^2 / (n + z^2)]
    assert wilson_interval(12, 12)[1] == 1.0 and np.isnan(wilson_interval(0, 0)[0])
    for n, p in ((20, 0.1), (50, 0.3), (50, 0.5), (200, 0.9)):
        binomial = torch.distributions.Binomial(n, torch.tensor(p, dtype=torch.float64))
        pmf = binomial.log_prob(torch.arange(n + 1, dtype=torch.float64)).exp()
        covered = torch.tensor([wilson_interval(k, n)[0] <= p <= wilson_interval(k, n)[1] for k in range(n + 1)])
        assert 0.93 < float(pmf[covered].sum()) < 0.98, (n, p)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_stratified_bootstrap_of_a_mean_matches_the_normal_interval():
    """The bootstrap keeps each set's label counts, and for the mean of n normal samples its 95% percentile
    interval is about mean +- 1.96 sigma / sqrt(n) (closed form), so it halves from n = 100 to n = 400."""
    from ldm.metrics import bootstrap, percentile_interval
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 10)
    counts = bootstrap(lambda i: tuple(np.bincount(labels[i].numpy(), minlength=2)), [labels], 20, g)
    assert (counts == [30, 10]).all()
    widths = {}
    for n in (100, 400):
        x = 3.0 + 2.0 * torch.randn(n, dtype=torch.float64, generator=g)
        values = bootstrap(lambda i: float(x[i].mean()), [torch.zeros(n, dtype=torch.long)], 400, g)[:, 0]
        low, high = percentile_interval(values)
        assert low < 3.0 < high
        widths[n] = high - low
        assert widths[n] == pytest.approx(2 * 1.959964 * float(x.std()) / math.sqrt(n), rel=0.2)
    assert widths[400] == pytest.approx(widths[100] / 2, rel=0.25)
    assert percentile_interval([1.0, float("nan"), 3.0], level=1.0) == (1.0, 3.0)
    assert percentile_interval([1.0, 3.0], level=1.0, estimate=4.0) == (3.0, 5.0)     # shifted by 4 - mean 2


def _frechet_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: |mu_a - mu_b|^2 + Tr S_a + Tr S_b - 2 sum sqrt(eigenvalues of S_a S_b)."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * root)


def test_frechet_bootstrap_interval_covers_the_truth_and_the_floor():
    """N(0, I) vs N(mu, I): FD = |mu|^2 (closed form), inside the shifted bootstrap interval, which halves from
    n = 125 to n = 500. Two samples of one Gaussian at n = 48 in 16-d: FD is biased (its mean, from numpy, is
    about 3.6, not 0); the shifted interval covers that mean, the plain percentile interval lies above it."""
    from ldm.metrics import bootstrap, percentile_interval
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([1.0, -0.5, 0.5, 0.0], dtype=torch.float64)      # |mu|^2 = 1.5
    widths = {}
    for n in (125, 500):
        a = torch.randn(n, 4, dtype=torch.float64, generator=g)
        b = torch.randn(n, 4, dtype=torch.float64, generator=g) + mu
        fd = frechet_distance(a, b)
        assert fd == pytest.approx(_frechet_numpy(a.numpy(), b.numpy()), rel=1e-6)
        lab = torch.zeros(n, dtype=torch.long)
        values = bootstrap(lambda i, j: frechet_distance(a[i], b[j]), [lab, lab], 200, g)[:, 0]
        low, high = percentile_interval(values, estimate=fd)
        assert low < 1.5 < high
        widths[n] = high - low
    assert widths[500] < 0.65 * widths[125]
    n, d = 48, 16
    rng = np.random.default_rng(0)
    expected = np.mean([_frechet_numpy(rng.standard_normal((n, d)), rng.standard_normal((n, d))) for _ in range(200)])
    assert 2.5 < expected < 5
    lab = torch.zeros(n, dtype=torch.long)
    inside = 0
    for _ in range(5):
        a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        values = bootstrap(lambda i, j: frechet_distance(a[i], b[j]), [lab, lab], 100, g)[:, 0]
        low, high = percentile_interval(values, estimate=frechet_distance(a, b))
        inside += low < expected < high
        assert percentile_interval(values)[0] > expected                # unshifted: resampling bias on top
    assert inside >= 4


def test_mmd2_unbiased_against_closed_forms():
    """KID's kernel (x y + 1)^3 in 1-d is the inner product of the features (1, sqrt3 x, sqrt3 x^2, x^3), so
    MMD^2 = 3 (dE x)^2 + 3 (dE x^2)^2 + (dE x^3)^2: 1.328125 for U(-1, 1) vs U(-0.5, 1.5). Without labels the
    estimate equals the textbook U-statistic (numpy); the bootstrap interval covers the truth and halves from
    n = 60 to n = 240;
    two samples of one distribution give an interval around 0 (the floor)."""
    from ldm.metrics import bootstrap, mmd2_unbiased, percentile_interval
    truth = 3 * 0.5**2 + 3 * (7 / 12 - 1 / 3) ** 2 + 0.625**2
    assert truth == pytest.approx(1.328125)
    g = torch.Generator().manual_seed(0)
    x = (2 * torch.rand(300, 3, generator=g) - 1).double()
    y = (2 * torch.rand(200, 3, generator=g) - 1).double() + 0.2
    kxx, kyy, kxy = [((p @ q.T).numpy() / 3 + 1) ** 3 for p, q in ((x, x), (y, y), (x, y))]
    textbook = ((kxx.sum() - np.trace(kxx)) / (300 * 299) + (kyy.sum() - np.trace(kyy)) / (200 * 199)
                - 2 * kxy.mean())
    assert mmd2_unbiased(x, y) == pytest.approx(textbook, rel=1e-9)
    widths, covered = {}, []
    for n, repeats in ((60, 30), (240, 2)):
        lab = torch.zeros(n, dtype=torch.long)
        for _ in range(repeats):
            p = 2 * torch.rand(n, 1, dtype=torch.float64, generator=g) - 1
            q = 2 * torch.rand(n, 1, dtype=torch.float64, generator=g) - 0.5
            values = bootstrap(lambda i, j: mmd2_unbiased(p[i], q[j], a_ids=i, b_ids=j), [lab, lab], 100, g)[:, 0]
            low, high = percentile_interval(values)
            covered.append(low < truth < high)
            widths.setdefault(n, []).append(high - low)
    assert sum(covered) >= 0.8 * len(covered)                           # nominal 95%; about 90% measured at n = 60
    assert np.mean(widths[240]) < 0.65 * np.mean(widths[60])
    p, q = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    lab = torch.zeros(200, dtype=torch.long)
    values = bootstrap(lambda i, j: mmd2_unbiased(p[i], q[j], a_ids=i, b_ids=j), [lab, lab], 200, g)[:, 0]
    low, high = percentile_interval(values)
    assert low < 0 < high and low < mmd2_unbiased(p, q) < high


def test_mmd2_with_users_and_repeats_stays_unbiased():
    """Sets with fixed counts per user (2 per user here, features clustered by user) from one distribution: the
    plain U-statistic averages far below 0, the user-balanced one averages 0. Bootstrap resamples of such sets
    average the full-set value only when pairs of repeated samples are left out (a_ids, b_ids)."""
    from ldm.metrics import mmd2_unbiased
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(3, 4, generator=g)
    labels = torch.arange(3).repeat_interleave(2)

    def draw(per_user: int) -> torch.Tensor:
        return centres.repeat_interleave(per_user, 0) + 0.3 * torch.randn(3 * per_user, 4, generator=g)

    def resample() -> torch.Tensor:                                     # 8 draws with replacement per user
        return torch.cat([u * 8 + torch.randint(8, (8,), generator=g) for u in range(3)])

    users = torch.arange(3).repeat_interleave(8)
    plain, balanced, resampled, with_repeats = [], [], [], []
    for _ in range(400):
        a, b = draw(2), draw(2)
        plain.append(mmd2_unbiased(a, b))
        balanced.append(mmd2_unbiased(a, b, labels, labels))
        a, b, i, j = draw(8), draw(8), resample(), resample()
        full = mmd2_unbiased(a, b, users, users)
        resampled.append(mmd2_unbiased(a[i], b[j], users, users, a_ids=i, b_ids=j) - full)
        with_repeats.append(mmd2_unbiased(a[i], b[j], users, users) - full)
    spread = np.std(balanced) / math.sqrt(len(balanced))
    assert np.mean(plain) < -10 * spread and abs(np.mean(balanced)) < 3 * spread
    assert abs(np.mean(resampled)) < 3 * np.std(resampled) / math.sqrt(400)
    assert np.mean(with_repeats) > 10 * np.std(with_repeats) / math.sqrt(400)
    with pytest.raises(ValueError, match="both sets"):
        mmd2_unbiased(draw(2), draw(2), labels, None)


def test_pca_basis_spans_the_leading_eigenvectors():
    """The axes are numpy's leading eigenvectors of the covariance (same projector, signs aside), capped at N - 1."""
    from ldm.metrics import pca_basis
    g = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(10, 10, generator=g))[0]
    x = torch.randn(200, 10, generator=g) * torch.linspace(3, 0.1, 10) @ rotation     # distinct variances, rotated
    mean, axes = pca_basis(x, 3)
    values, vectors = np.linalg.eigh(np.cov(x.numpy(), rowvar=False))
    top = vectors[:, np.argsort(values)[::-1][:3]]                      # (D, 3)
    np.testing.assert_allclose((axes.T @ axes).numpy(), top @ top.T, atol=1e-5)
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(0), atol=1e-6)
    assert pca_basis(x[:5], 16)[1].shape == (4, 10)


def test_memorisation_flags_copies_and_not_held_back_samples():
    """Copies of training samples (plus a little noise) sit far closer to the training set than real test samples
    do: all fall below the test samples' 5th percentile. Fresh draws from the same distribution put about 5% there,
    and the interval covers 5%. Nearest-neighbour distances equal numpy's brute force; images are flattened."""
    from ldm.metrics import memorisation_ratios, memorisation_summary, nearest_neighbour_distances
    g = torch.Generator().manual_seed(0)
    train, test, fresh = (torch.randn(n, 8, generator=g) for n in (300, 100, 120))
    brute = np.sqrt(((test.numpy()[:, None] - train.numpy()[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_neighbour_distances(test, train, batch_size=7).numpy(), brute, rtol=1e-6)
    images = train.reshape(300, 2, 2, 2)
    np.testing.assert_allclose(nearest_neighbour_distances(test.reshape(100, 2, 2, 2), images).numpy(), brute,
                               rtol=1e-6)
    copies = train[:120] + 0.01 * torch.randn(120, 8, generator=g)
    copy_ratios, test_ratios = memorisation_ratios(copies, test, train)
    assert np.median(test_ratios) == pytest.approx(1.0) and copy_ratios.max() < 0.1
    flagged = memorisation_summary(copy_ratios, test_ratios)
    assert flagged["fraction_closer"] == 1.0 and flagged["copying_suspected"]
    honest = memorisation_summary(*memorisation_ratios(fresh, test, train))
    assert honest["fraction_closer"] < 0.15 and not honest["copying_suspected"]
    assert honest["generated_ratio_quantiles"]["p50"] == pytest.approx(1.0, abs=0.2)
    assert honest["real_test_ratio_quantiles"]["p05"] == pytest.approx(honest["threshold_ratio"])
    with pytest.raises(ValueError, match="split leaks"):
        memorisation_ratios(fresh, train[:50], train)                  # the "test" set is part of training
    # Honest draws (96 test, 256 generated): the fraction scatters around 0.05, mostly through the threshold's own
    # noise; the bootstrap interval, which resamples the test samples too, covers 0.05 nearly always.
    fractions, covered = [], 0
    for _ in range(20):
        test, fresh = torch.randn(96, 8, generator=g), torch.randn(256, 8, generator=g)
        summary = memorisation_summary(*memorisation_ratios(fresh, test, train), num_resamples=400, generator=g)
        fractions.append(summary["fraction_closer"])
        covered += summary["fraction_closer_ci"][0] <= 0.05 <= summary["fraction_closer_ci"][1]
        assert not summary["copying_suspected"]
    assert covered >= 18 and abs(np.mean(fractions) - 0.05) < 0.02


def test_classifier_records_what_it_was_trained_on(tmp_path):
    from ldm.radar.identity import classifier_trained_on
    model = EvalCNN(ClassifierConfig(num_classes=2, image_size=16, widths=(4,), feature_dim=8))
    save_classifier(model, str(tmp_path / "a.safetensors"), {"a": 0, "b": 1})
    assert classifier_trained_on(str(tmp_path / "a.safetensors")) is None
    record = {"fit_files_sha256": "ab" * 32, "num_fit_files": 36}
    save_classifier(model, str(tmp_path / "b.safetensors"), {"a": 0, "b": 1}, trained_on=record)
    assert classifier_trained_on(str(tmp_path / "b.safetensors")) == record
    assert load_classifier(str(tmp_path / "b.safetensors"))[1] == {"a": 0, "b": 1}
