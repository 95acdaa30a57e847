"""Image and identity metrics for (micro-Doppler) spectrograms; docs/evaluation.md describes the protocol.

    psnr, ssim                      stage-1 reconstruction quality on [0, 1] images
    EvalCNN, train_classifier,      a small identity classifier trained on real data only; its penultimate
    predict                         features feed the distribution distances and the memorisation check
    frechet_distance,               Frechet distance and the unbiased MMD^2 behind KID (kernel inception
    mmd2_unbiased                   distance) between two feature sets
    pca_basis                       the reduced feature space Frechet distance is measured in
    wilson_interval, mean_ci,       95% intervals: a binomial proportion (accuracies), the mean of repeats,
    bootstrap, percentile_interval  and any statistic of resampled sets (distances)
    nearest_neighbour_distances,    the memorisation check: is each generated sample closer to a training
    memorisation_ratios,            sample than real test samples are?
    memorisation_summary
    condition_control_ratio         correct-ID hits over wrong-ID hits per requested user
    physics_features                torso velocity, Doppler envelopes, bandwidth, cadence of one spectrogram

Shapes: B batch, C channels, H (velocity rows) x W (time columns), N/M/T samples, D feature dim, K classes.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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
# The evaluation classifier
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ClassifierConfig:
    """EvalCNN architecture and training recipe (defaults: about 90k parameters; a few hundred 64x64 images
    train in under a minute on two CPU cores)."""
    num_classes: int
    in_channels: int = 1
    image_size: int | tuple[int, int] = 64   # inputs are resized to N x N, or to (H, W), before the network
    widths: tuple[int, ...] = (8, 16, 32, 64)
    feature_dim: int = 128      # penultimate features used by Frechet distance and KID
    epochs: int = 30
    min_steps: int = 240        # optimizer steps at least, whatever the data size (30 epochs of 256 images)
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _height_width(size: int | tuple[int, int]) -> tuple[int, int]:
    """An image size N or (H, W) -> (H, W)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, C, H', W') -> (B, C, H, W) for size N = (N, N) or (H, W), antialiased bilinear; a no-op at that size."""
    size = _height_width(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


class EvalCNN(nn.Module):
    """conv3x3-BN-ReLU-maxpool blocks; the last map is averaged over time (W) but pooled to only 4 bands along
    velocity (H), since absolute Doppler (walking speed) is an identity cue while the gait phase is not; then
    Linear -> ReLU gives the `feature_dim` penultimate features and a last Linear gives K logits."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        blocks, c_in = [], cfg.in_channels
        for c_out in cfg.widths:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.cfg = cfg
        self.body = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d((4, 1))
        self.features_head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 4, cfg.feature_dim), nn.ReLU())
        self.classifier = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> (B, feature_dim) penultimate features."""
        x = _resize(x, self.cfg.image_size)
        h = self.body(x)                                                # (B, C', H/16, W/16)
        return self.features_head(self.pool(h))                         # (B, C', 4, 1) -> (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> (B, K) logits."""
        return self.classifier(self.features(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, cfg: ClassifierConfig, progress: bool = False,
                     augment=None) -> EvalCNN:
    """Train an EvalCNN on images x: (N, C, H, W) in [-1, 1] with labels y: (N,) in [0, K).

    Runs max(epochs * ceil(N / batch_size), min_steps) AdamW steps with cosine learning-rate decay; each batch is
    augmented by a random circular shift along time (W), which changes only the gait phase, and then, if given, by
    ``augment(batch, generator) -> batch`` (same shape; e.g. classic spectrogram augmentation). Deterministic for
    a given cfg.seed (on one machine and torch build); the global torch RNG is left untouched. Returns the model
    in eval mode.
    """
    if x.dim() != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need x (N, C, H, W) and y (N,) with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= cfg.num_classes:
        raise ValueError(f"labels must lie in [0, {cfg.num_classes}), got [{int(y.min())}, {int(y.max())}]")
    from tqdm import tqdm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = EvalCNN(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = _resize(x.float(), cfg.image_size), y.long()
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = max(cfg.epochs * steps_per_epoch, cfg.min_steps)          # small sets still get min_steps updates
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    model.train()
    for step in tqdm(range(total), desc="classifier", disable=not progress):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(x), generator=gen)
        i = step % steps_per_epoch
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        if len(idx) < 2:                                                # BatchNorm needs two samples
            continue
        shift = int(torch.randint(x.shape[-1], (1,), generator=gen))
        batch = torch.roll(x[idx], shifts=shift, dims=-1)               # random gait phase
        if augment is not None:
            batch = augment(batch, gen)
        loss = F.cross_entropy(model(batch), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: EvalCNN, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, K) and penultimate features (N, D) for images x: (N, C, H, W) in [-1, 1]."""
    model.eval()
    probs, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size].float())
        feats.append(f)
        probs.append(model.classifier(f).softmax(dim=-1))
    return torch.cat(probs), torch.cat(feats)


def save_classifier(model: EvalCNN, path: str, class_to_idx: dict[str, int], *,
                    trained_on: dict | None = None) -> None:
    """Write the weights as safetensors with the config and the class-name -> ID map in its metadata, and, if
    given, `trained_on`: a JSON-able record of the training files (evaluate.py stores hashes of the file lists,
    so a saved classifier is never reused with a split whose test files it may have trained on). Atomic: a
    temporary file renamed into place."""
    from ldm.io import write_safetensors
    meta = {"config": json.dumps(asdict(model.cfg)), "class_to_idx": json.dumps(class_to_idx)}
    if trained_on is not None:
        meta["trained_on"] = json.dumps(trained_on, sort_keys=True)
    write_safetensors(model.state_dict(), path, metadata=meta)


def _classifier_metadata(path: str) -> dict[str, str]:
    """The metadata of a classifier file; FileNotFoundError / ValueError naming it when it is missing or is not
    a safetensors file."""
    from safetensors import SafetensorError, safe_open
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such classifier file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def _metadata_json(path: str, meta: dict[str, str], key: str):
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise ValueError(f"{path}: its {key!r} metadata is not JSON") from None


def classifier_trained_on(path: str) -> dict | None:
    """The `trained_on` record save_classifier stored in the file at path, or None when it has none."""
    meta = _classifier_metadata(path)
    return _metadata_json(path, meta, "trained_on") if "trained_on" in meta else None


def load_classifier(path: str) -> tuple[EvalCNN, dict[str, int]]:
    """Inverse of save_classifier: (model in eval mode, class_to_idx). A missing, corrupt or foreign file is a
    FileNotFoundError / ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    meta = _classifier_metadata(path)
    if "config" not in meta or "class_to_idx" not in meta:
        raise ValueError(f"{path}: not an evaluation classifier written by ldm.metrics.save_classifier")
    cfg_dict, class_to_idx = _metadata_json(path, meta, "config"), _metadata_json(path, meta, "class_to_idx")
    try:
        cfg_dict["widths"] = tuple(cfg_dict["widths"])
        if not isinstance(cfg_dict["image_size"], int):
            cfg_dict["image_size"] = tuple(cfg_dict["image_size"])
        model = EvalCNN(ClassifierConfig(**cfg_dict))
        model.load_state_dict(load_file(path), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: its weights or config are not a valid EvalCNN ({reason})") from None
    return model.eval(), class_to_idx


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


# ----------------------------------------------------------------------------------------------------------------
# Identity control
# ----------------------------------------------------------------------------------------------------------------
def condition_control_ratio(predicted: np.ndarray, requested: np.ndarray, num_classes: int) -> dict[int, float]:
    """For each requested user i: P(classified i | generated for i) / P(classified i | generated for j != i).

    predicted, requested: (N,) integer labels. When no sample of another user is classified as i, the
    denominator is floored at one such sample (1 / N_other), so the ratio is then a lower bound.
    Users never requested, or with no other users' samples, are left out. Target > 2, >> 2 when well conditioned.
    """
    predicted, requested = np.asarray(predicted), np.asarray(requested)
    ratios = {}
    for i in range(num_classes):
        own, other = requested == i, requested != i
        if own.sum() == 0 or other.sum() == 0:
            continue
        hit = float(np.mean(predicted[own] == i))
        false_hit = max(float(np.mean(predicted[other] == i)), 1.0 / other.sum())
        ratios[i] = hit / false_hit
    return ratios


# ----------------------------------------------------------------------------------------------------------------
# Physics / kinematic checks
# ----------------------------------------------------------------------------------------------------------------
def physics_features(db: np.ndarray, velocities: np.ndarray, frame_rate_hz: float,
                     threshold_db: float = -25.0) -> dict[str, float]:
    """Kinematic summary of one spectrogram db: (F, T) in dB (rows = velocities (F,) m/s, columns at frame_rate_hz).

    Pixels within `threshold_db` of the image maximum count as body returns. Returns
      torso_velocity_mps   power-weighted Doppler centroid of those pixels (all body parts average to the
                           walking speed over whole cycles; the strongest, the torso, sits there throughout)
      upper_envelope_mps   95th percentile over frames of the highest body velocity (peak foot velocity)
      lower_envelope_mps   5th percentile over frames of the lowest body velocity
      bandwidth_mps        mean over frames of (highest - lowest body velocity)
      cadence_steps_per_s  1 / the dominant period of the image's column autocorrelation (steps, i.e. half
                           gait cycles), searched between 1 and 3.3 steps/s, parabolic peak interpolation
    """
    db = np.asarray(db, dtype=np.float64)
    if db.ndim != 2 or db.shape[0] != len(velocities):
        raise ValueError(f"need db (F, T) with F = len(velocities) = {len(velocities)}, got {db.shape}")
    db = db - db.max()
    body = db >= threshold_db
    power = np.where(body, 10 ** (db / 10), 0.0)
    torso = float((power * velocities[:, None]).sum() / power.sum())
    has = body.any(axis=0)
    top = velocities[np.argmax(body, axis=0)][has]                     # first body row from the top, per frame
    bottom = velocities[len(velocities) - 1 - np.argmax(body[::-1], axis=0)][has]
    # Cadence: autocorrelation over time lags of the clipped, row-centred image.
    x = np.maximum(db, threshold_db - 15)
    x = x - x.mean(axis=1, keepdims=True)
    n = x.shape[1]
    lo, hi = max(2, int(frame_rate_hz / 3.3)), min(int(frame_rate_hz / 1.0), n - n // 4)
    cadence = float("nan")
    if hi - lo >= 3:
        ac = np.array([np.sum(x[:, :n - lag] * x[:, lag:]) / (n - lag) for lag in range(hi + 2)])
        lag = lo + int(np.argmax(ac[lo:hi]))
        a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
        offset = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) < 0 else 0.0
        cadence = frame_rate_hz / (lag + offset)
    return {"torso_velocity_mps": torso, "upper_envelope_mps": float(np.percentile(top, 95)),
            "lower_envelope_mps": float(np.percentile(bottom, 5)), "bandwidth_mps": float(np.mean(top - bottom)),
            "cadence_steps_per_s": cadence}


def simulator_metadata(folder) -> dict | None:
    """The metadata.json that ldm.microdoppler (which lists the "people") or ldm.radar (which gives the axes,
    "velocity_step_mps") writes into a data folder, or None when the folder has none or some other tool's."""
    path = Path(folder) / "metadata.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return meta if isinstance(meta, dict) and ("people" in meta or "velocity_step_mps" in meta) else None


def spectrogram_axes(meta: dict | None, height: int, width: int, v_max: float | None = None,
                     duration: float | None = None) -> tuple[np.ndarray, float] | None:
    """The velocity of each of the ``height`` rows (top row first, m/s) and the frame rate of the ``width`` columns
    (1/s) of an image resized from a data folder: from ``v_max``/``duration`` when given (rows span
    [-v_max, v_max], columns ``duration`` seconds), else from the simulator's metadata.json dict ``meta``; None
    when neither is known."""
    if v_max is not None and duration is not None:
        top, bottom, seconds = v_max, -v_max, duration
    elif meta is not None and "velocity_step_mps" in meta:
        step = meta["velocity_step_mps"]
        rows, columns = meta.get("height", meta.get("size")), meta.get("width", meta.get("size"))   # radar: H x W
        top = meta["velocity_top_mps"] + step / 2                      # edge of the top row
        bottom = top - step * rows
        seconds = columns / meta["frame_rate_hz"]
    else:
        return None
    rows = top - (np.arange(height) + 0.5) * (top - bottom) / height
    return rows, width / seconds


def batch_physics_features(x: torch.Tensor, axes: tuple[np.ndarray, float], dynamic_range_db: float,
                           threshold_db: float = -25.0) -> list[dict[str, float]]:
    """physics_features of every image of x: (N, C, H, W) in [-1, 1], mapped back to dB (x = -1 is
    -dynamic_range_db, x = 1 is 0 dB; channels averaged). axes: (velocities (H,), frame rate) as from
    spectrogram_axes."""
    velocities, frame_rate = axes
    db = ((x.mean(dim=1) + 1) / 2 * dynamic_range_db - dynamic_range_db).numpy()
    return [physics_features(d, velocities, frame_rate, threshold_db) for d in db]
