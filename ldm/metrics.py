"""Image metrics, distances between feature sets, and the intervals every reported figure carries; the
identity classifier is ldm.radar.identity, the physics features ldm.radar.physics; docs/evaluation.md describes
the protocol.

    psnr, ssim                      stage-1 reconstruction quality on [0, 1] images
    frechet_distance,               Frechet distance and the unbiased MMD^2 behind KID (kernel inception
    mmd2_unbiased                   distance) between two feature sets
    pca_basis                       the reduced feature space Frechet distance is measured in
    wilson_interval, mean_ci,       95% intervals: a binomial proportion (accuracies), the mean of repeats,
    bootstrap, percentile_interval  and any statistic of resampled sets (distances)
    hierarchical_bootstrap,         few-shot experiments: accuracies resampled over generator seeds, shot draws
    accuracy_estimate,              and test persons; a proportion clustered by person; bootstrap p-values and
    clustered_proportion,           Holm's step-down adjustment with intervals that agree with it; accuracy
    bootstrap_p_value, holm_adjust, intervals clipped to [0, 1]
    holm_levels, unit_interval
    nearest_neighbour_distances,    the memorisation check: is each generated sample closer to a training
    memorisation_ratios,            sample than real test samples are?
    memorisation_summary

Shapes: B batch, C channels, H (velocity rows) x W (time columns), N/M/T samples, D feature dim, K classes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------
# PSNR and SSIM
# ----------------------------------------------------------------------------------------------------------------
def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio 10 log10(L^2 / MSE) per image. x, y: (B, C, H, W) in [0, L]. Returns (B,) dB."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"psnr needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(data_range**2 / mse)).float()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]                                      # (size, size), sums to 1


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, 'valid'
    positions only, C1 = (0.01 L)^2, C2 = (0.03 L)^2, averaged over channels and positions.
    x, y: (B, C, H, W) in [0, L] with H, W >= window_size. Returns (B,)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"ssim needs H, W >= {window_size}, got {tuple(x.shape[-2:])}")
    channels = x.shape[1]
    w = _gaussian_window(window_size, sigma).to(x.device)[None, None].repeat(channels, 1, 1, 1)   # (C, 1, k, k)
    x, y = x.double(), y.double()

    def blur(t):
        return F.conv2d(t, w, groups=channels)                         # depthwise local mean

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3)).float()


# ----------------------------------------------------------------------------------------------------------------
# Distribution distances on features
# ----------------------------------------------------------------------------------------------------------------
def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative eigenvalues clamped to 0)."""
    e, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * e.clamp_min(0).sqrt()) @ v.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a: (N, D) and b: (M, D):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with Tr (S_a S_b)^(1/2) = Tr (S_a^(1/2) S_b S_a^(1/2))^(1/2).
    Biased for small N: compare only values computed at the same N (e.g. against a real-vs-real floor)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need (N, D) and (M, D) features with N, M >= 2, got {tuple(a.shape)}, {tuple(b.shape)}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(fd.clamp_min(0))


def mmd2_unbiased(a: torch.Tensor, b: torch.Tensor, a_labels: torch.Tensor | None = None,
                  b_labels: torch.Tensor | None = None, a_ids: torch.Tensor | None = None,
                  b_ids: torch.Tensor | None = None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012) with KID's kernel k(x, y) = (x.y / D + 1)^3 between all of a: (N, D)
    and b: (M, D): the mean of k over pairs of different samples within a, plus the same within b, minus twice the
    mean of k over a x b. Near 0 (either sign) when a and b come from one distribution.

    a_labels, b_labels: (N,), (M,) the user of each sample, for sets drawn with fixed counts per user (a split).
    Then each of those means is taken per pair of users (u, v) and averaged with equal weight over all (u, v):
    the unbiased MMD^2 between the user-balanced mixtures. Without labels, leaving out i = j removes same-user pairs
    from the within-set means only (2 samples per user of 3: 1 in 5 within pairs, 1 in 3 cross pairs), which
    pushes MMD^2 far below 0 when features cluster by user, as an identity classifier's do.
    a_ids, b_ids: the original sample behind each row when a, b are bootstrap resamples (rows drawn with
    replacement); pairs of two copies of one original are left out like i = j, since a sample's kernel with itself
    would bias MMD^2 upward. Default: every row its own sample. Returns nan when some user has fewer than two
    different samples in a set."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need (N, D) and (M, D) features with N, M >= 2, got {tuple(a.shape)}, {tuple(b.shape)}")
    if (a_labels is None) != (b_labels is None):
        raise ValueError("give labels for both sets or for neither")
    a, b, d = a.double(), b.double(), a.shape[1]
    a_labels = torch.zeros(len(a), dtype=torch.long) if a_labels is None else a_labels
    b_labels = torch.zeros(len(b), dtype=torch.long) if b_labels is None else b_labels
    a_ids = torch.arange(len(a)) if a_ids is None else a_ids
    b_ids = torch.arange(len(b)) if b_ids is None else b_ids
    users = torch.unique(torch.cat([a_labels, b_labels]))
    onehot_a = (a_labels[:, None] == users[None]).double()              # (N, K)
    onehot_b = (b_labels[:, None] == users[None]).double()              # (M, K)

    def block_means(k: torch.Tensor, keep: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(K, K): the mean of k over the kept pairs of every (row user, column user)."""
        return (rows.T @ (k * keep) @ cols) / (rows.T @ keep @ cols)   # 0 / 0 = nan: no pair to average

    def within(x: torch.Tensor, ids: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        distinct = (ids[:, None] != ids[None, :]).double()              # pairs of two different originals
        return block_means((x @ x.T / d + 1) ** 3, distinct, onehot, onehot)

    cross = block_means((a @ b.T / d + 1) ** 3, torch.ones(len(a), len(b), dtype=torch.float64), onehot_a, onehot_b)
    return float((within(a, a_ids, onehot_a) + within(b, b_ids, onehot_b) - 2 * cross).mean())


def pca_basis(x: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of features x: (N, D). Returns the mean (D,) and the leading `dims` axes as rows (dims', D),
    in order of decreasing variance (right singular vectors of the centred x), with dims' = min(dims, D, N - 1);
    project features f: (M, D) with (f - mean) @ axes.T -> (M, dims'). Both float64.

    Why: Frechet distance fits a D x D covariance to each set, and its bias grows roughly like D^2 / n. Two samples
    of 48 from one Gaussian give FD about 3.6 in 16-d but about 135 in 128-d, which swamps any real difference."""
    if x.dim() != 2 or len(x) < 2 or dims < 1:
        raise ValueError(f"need features (N, D) with N >= 2 and dims >= 1, got {tuple(x.shape)} and {dims}")
    x = x.double()
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)          # (min(N, D), D), by singular value
    return mean, vh[:min(dims, x.shape[1], len(x) - 1)]


# ----------------------------------------------------------------------------------------------------------------
# Intervals
# ----------------------------------------------------------------------------------------------------------------
# Two-sided 95% quantiles t_{0.975, df} of Student's t for df = 1..30 (beyond: the normal's 1.96 is within 2%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values) -> tuple[float, float, float]:
    """Mean and 95% confidence interval of independent repeats (e.g. one accuracy per seed), by Student's t:
    mean +- t_{0.975, n-1} * s / sqrt(n), s the sample standard deviation. Returns (mean, low, high); with one
    value the interval is (nan, nan), since one repeat says nothing about the spread."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
        raise ValueError(f"mean_ci needs a non-empty 1-d list of finite numbers, got {values!r}")
    mean = float(v.mean())
    if len(v) == 1:
        return mean, float("nan"), float("nan")
    t = _T975[len(v) - 2] if len(v) - 1 <= len(_T975) else 1.96
    half = t * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half


Z975 = 1.959963984540054       # the standard normal's 97.5% quantile: two-sided 95% intervals


def wilson_interval(successes: int, n: int, z: float = Z975) -> tuple[float, float]:
    """95% Wilson score interval (Wilson 1927) for a proportion, e.g. an accuracy of `successes` out of `n`
    independent trials: the p with |k/n - p| <= z sqrt(p (1 - p) / n), i.e.
        (p^ + z^2 / 2n  -+  z sqrt(p^ (1 - p^) / n + z^2 / 4n^2)) / (1 + z^2 / n),   p^ = k / n.
    Unlike p^ +- z sqrt(p^ (1 - p^) / n) it keeps its width at 0 or n successes (12 of 12 gives [0.76, 1]).
    Returns (low, high); (nan, nan) when n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)          # exact ends where rounding would miss them
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def percentile_interval(values, level: float = 0.95, estimate: float | None = None) -> tuple[float, float]:
    """The central `level` share of bootstrap values: their (1 - level) / 2 and (1 + level) / 2 quantiles (the
    percentile bootstrap interval). Non-finite values are ignored; (nan, nan) if none is left.

    estimate: the statistic on the full sets. When given, the interval is shifted by estimate - mean(values), the
    bias the resampling itself adds. Use it for Frechet distance: a resample repeats samples, so it holds about
    63% distinct ones, and FD, biased upward at small n, is then biased further (two resamples of 48 samples of one
    Gaussian in 16-d give FD 6 to 7 against about 4 for the full sets, and the plain interval misses 4)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    shift = 0.0 if estimate is None else estimate - float(v.mean())
    return float(low + shift), float(high + shift)


def bootstrap(statistic, labels: list[torch.Tensor], num_resamples: int = 200,
              generator: torch.Generator | None = None) -> np.ndarray:
    """Values of `statistic(idx_1, ..., idx_k)` on `num_resamples` bootstrap resamples of k sets at once.

    Set i is described by labels[i]: (N_i,) integers (e.g. the user of each sample). A resample draws, within
    every label of every set, as many positions with replacement as the set holds of that label (a stratified
    bootstrap: each set keeps its mix of users), and calls statistic with the positions idx_i: (N_i,) LongTensor.
    statistic returns a float or a tuple of S floats. Returns (num_resamples, S) float64; feed a column to
    percentile_interval."""
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    groups = [[torch.nonzero(lab == k).flatten() for k in torch.unique(lab)] for lab in labels]
    rows = []
    for _ in range(num_resamples):
        idx = [torch.cat([g[torch.randint(len(g), (len(g),), generator=gen)] for g in set_groups]).sort().values
               for set_groups in groups]
        rows.append(np.atleast_1d(np.asarray(statistic(*idx), dtype=np.float64)))
    return np.stack(rows)


# ----------------------------------------------------------------------------------------------------------------
# Few-shot experiments: hierarchical bootstrap, person-clustered proportions, Holm's multiplicity control
# ----------------------------------------------------------------------------------------------------------------
def unit_interval(low: float, high: float) -> tuple[float, float]:
    """An interval of a proportion (an accuracy) clipped to [0, 1]."""
    return min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)


def hierarchical_bootstrap(hits: list, totals, num_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of accuracies measured in a few-shot experiment, resampled at every level of its design:
    generator seeds, then shot draws within each seed, then the scored test files clustered by person.

    hits: one array per generator seed s, (D_s, P, V): hits[s][d, p, v] = how many of person p's test files
    variant v classified correctly in shot draw d (D_s draws, P persons, V variants). totals: (P,) test files per
    person. The accuracy of a (seed, draw) unit is sum_p hits / sum_p totals; the estimate is its mean over draws,
    then over seeds (accuracy_estimate). A replicate draws S seeds with replacement, for each drawn seed D_s of its
    draws with replacement, and one multinomial weight per person (P persons drawn with replacement; the same
    persons are scored in every unit, so they are drawn once per replicate), and recomputes the estimate with
    sum_p w_p hits / sum_p w_p totals. Variants share every draw, so differences of columns are paired.
    Returns (num_resamples, V) float64, each value in [0, 1]."""
    hits = [np.asarray(h, dtype=np.float64) for h in hits]
    totals = np.asarray(totals, dtype=np.float64)
    if not hits or any(h.ndim != 3 or len(h) == 0 or h.shape[1:] != hits[0].shape[1:] for h in hits):
        raise ValueError("hits must be a non-empty list of (draws >= 1, persons, variants) arrays of one "
                         f"persons x variants shape, got {[np.shape(h) for h in hits]}")
    if totals.shape != (hits[0].shape[1],) or (totals <= 0).any():
        raise ValueError(f"totals must be ({hits[0].shape[1]},) positive test-file counts, got {totals}")
    if any((h < 0).any() or (h > totals[None, :, None]).any() for h in hits):
        raise ValueError("hits must lie in [0, totals] for every person")
    rng = np.random.default_rng(seed)
    num_seeds, persons = len(hits), len(totals)
    out = np.empty((num_resamples, hits[0].shape[2]))
    for r in range(num_resamples):
        w = rng.multinomial(persons, np.full(persons, 1 / persons)).astype(np.float64)   # (P,) person weights
        denominator = float(w @ totals)
        seed_means = []
        for s in rng.integers(num_seeds, size=num_seeds):
            draws = hits[s][rng.integers(len(hits[s]), size=len(hits[s]))]              # (D_s, P, V)
            seed_means.append(np.einsum("dpv,p->v", draws, w) / denominator / len(draws))
        out[r] = np.mean(seed_means, axis=0)
    return out


def accuracy_estimate(hits: list, totals) -> np.ndarray:
    """The point estimate hierarchical_bootstrap resamples: per (seed, draw) sum_p hits / sum_p totals, averaged over
    draws, then over seeds. Returns (V,)."""
    totals = np.asarray(totals, dtype=np.float64)
    return np.mean([np.asarray(h, np.float64).sum(axis=1).mean(axis=0) / totals.sum() for h in hits], axis=0)


def clustered_proportion(hits, totals, num_resamples: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """A proportion of samples that cluster by person (e.g. generated samples identified as their requested person),
    with a percentile-bootstrap interval that resamples persons, not samples: samples of one person share that
    person's generator conditioning, so they are not independent trials. hits, totals: (P,) per person.
    Returns (sum hits / sum totals, low, high), the interval within [0, 1]."""
    hits, totals = np.asarray(hits, np.float64), np.asarray(totals, np.float64)
    if hits.ndim != 1 or hits.shape != totals.shape or len(hits) == 0 or (totals <= 0).any():
        raise ValueError(f"need (P,) hits and positive totals, got {hits.shape} and {totals.shape}")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(hits), np.full(len(hits), 1 / len(hits)), size=num_resamples)   # (R, P)
    low, high = percentile_interval((weights @ hits) / (weights @ totals), level)
    return float(hits.sum() / totals.sum()), *unit_interval(low, high)


def bootstrap_p_value(values, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of "the statistic equals null" from its R replicates: twice the smaller tail,
    each tail counted as (replicates on that side of null, null included, + 1) / (R + 1), at most 1. The + 1 keeps
    a p-value from being 0 with finitely many replicates (its floor is 2 / (R + 1)). The percentile interval at
    level 1 - a excludes null about when this p-value is below a."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        raise ValueError("bootstrap_p_value needs finite replicates")
    below, above = (np.sum(v <= null) + 1) / (len(v) + 1), (np.sum(v >= null) + 1) / (len(v) + 1)
    return float(min(1.0, 2 * min(below, above)))


def holm_adjust(p_values) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: with p_(1) <= ... <= p_(m), the adjusted value of the i-th
    smallest is max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where the adjusted value is below alpha
    controls the family-wise error rate at alpha. Returned in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise ValueError(f"p_values must be a 1-d list in [0, 1], got {p_values!r}")
    m, order = len(p), np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return adjusted


def holm_levels(p_values, alpha: float = 0.05) -> np.ndarray:
    """Confidence levels for intervals that agree with Holm's decisions: the i-th smallest p-value is tested at
    alpha / (m - i + 1); its interval gets level 1 - alpha / (m - i + 1) while every smaller p-value was rejected.
    From the first hypothesis Holm keeps on, every remaining one gets that step's level, so none of their
    intervals excludes the null where Holm does not reject. Returned in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    m, order = len(p), np.argsort(p, kind="stable")
    levels, stopped = np.empty(m), None
    for i, j in enumerate(order):
        if stopped is None and p[j] > alpha / (m - i):
            stopped = i
        levels[j] = 1 - alpha / (m - (i if stopped is None else stopped))
    return levels


# ----------------------------------------------------------------------------------------------------------------
# Memorisation: are generated samples closer to training samples than real test samples are?
# ----------------------------------------------------------------------------------------------------------------
def nearest_neighbour_distances(queries: torch.Tensor, reference: torch.Tensor,
                                batch_size: int = 256) -> torch.Tensor:
    """Euclidean distance from every query to its nearest reference sample. queries: (N, ...), reference: (M, ...)
    with the same trailing shape (feature vectors (N, D), or images (N, C, H, W), which are flattened).
    Returns (N,) float64."""
    if queries.shape[1:] != reference.shape[1:] or len(reference) == 0:
        raise ValueError(f"need queries (N, ...) and a non-empty reference (M, ...) of one sample shape, got "
                         f"{tuple(queries.shape)} and {tuple(reference.shape)}")
    ref = reference.double().flatten(1)                                 # (M, D)
    out = [torch.cdist(queries[i:i + batch_size].double().flatten(1), ref).min(dim=1).values   # (b, M) -> (b,)
           for i in range(0, len(queries), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def memorisation_ratios(generated: torch.Tensor, real_test: torch.Tensor,
                        real_train: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's distance to its nearest real training sample (what the generator trained on), divided by the
    typical such distance of a real test sample: the median over real test samples of their nearest-training
    distances. generated: (N, ...), real_test: (T, ...), real_train: (M, ...) features or images.

    Returns (generated ratios (N,), real test ratios (T,), whose median is 1 by construction). A generator that
    draws new samples from the data distribution gives ratios distributed like the real test ones; copies of
    training samples give ratios near 0. Raises ValueError when the median real test distance is 0 (half the
    test samples are copies of training samples: the split leaks)."""
    d_gen = nearest_neighbour_distances(generated, real_train).numpy()
    d_test = nearest_neighbour_distances(real_test, real_train).numpy()
    typical = float(np.median(d_test))
    if not typical > 0:
        raise ValueError("half the real test samples are exact copies of training samples: the split leaks")
    return d_gen / typical, d_test / typical


RATIO_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def memorisation_summary(generated_ratios: np.ndarray, test_ratios: np.ndarray, quantile: float = 0.05,
                         num_resamples: int = 1000, generator: torch.Generator | None = None) -> dict:
    """Summary of memorisation_ratios: quantiles of both ratio sets, the threshold ratio below which only
    `quantile` of the real test samples lie, and the fraction of generated samples below it. An honest generator
    puts about `quantile` of its samples there; one that copies training samples puts most.

    The interval of that fraction is a percentile bootstrap that resamples the real test ratios (and so the
    threshold, which rests on the few smallest of them) as well as the generated ratios: with 96 test samples the
    threshold's own noise moves an honest generator's fraction by about +-0.02, more than the binomial noise of
    256 generated samples, and a binomial interval alone missed the honest 0.05 in a third of simulated draws.
    copying_suspected: the interval's lower end exceeds twice `quantile`."""
    g = torch.as_tensor(np.asarray(generated_ratios, dtype=np.float64))
    t = torch.as_tensor(np.asarray(test_ratios, dtype=np.float64))
    if len(g) == 0 or len(t) == 0:
        raise ValueError(f"need generated and real test ratios, got {len(g)} and {len(t)}")
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    threshold = float(torch.quantile(t, quantile))
    fraction = float((g < threshold).double().mean())
    t_resampled = t[torch.randint(len(t), (num_resamples, len(t)), generator=gen)]       # (R, T)
    g_resampled = g[torch.randint(len(g), (num_resamples, len(g)), generator=gen)]       # (R, N)
    thresholds = torch.quantile(t_resampled, quantile, dim=1, keepdim=True)              # (R, 1)
    low, high = percentile_interval((g_resampled < thresholds).double().mean(dim=1).numpy())

    def quantiles(v: torch.Tensor) -> dict[str, float]:
        return {f"p{round(q * 100):02d}": float(torch.quantile(v, q)) for q in RATIO_QUANTILES}

    return {"generated_ratio_quantiles": quantiles(g), "real_test_ratio_quantiles": quantiles(t),
            "generated_min_ratio": float(g.min()), "threshold_ratio": threshold,
            "fraction_closer": fraction, "fraction_closer_ci": [low, high], "expected_if_honest": quantile,
            "copying_suspected": bool(low > 2 * quantile), "n_generated": len(g), "n_real_test": len(t)}


def json_safe(value):
    """A report made strict JSON: NaN and inf (a one-seed interval, a cadence that could not be measured) become
    None, tuples become lists; dicts and lists are walked."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
