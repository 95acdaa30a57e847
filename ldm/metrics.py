"""Image and identity metrics for (micro-Doppler) spectrograms (shared/reference/micro_doppler.md, section 5).

    psnr, ssim                      stage-1 reconstruction quality on [0, 1] images (5.1)
    EvalCNN, train_classifier,      a small identity classifier trained on real data only; its penultimate
    predict                         features feed the distribution distances (5.2, 5.3)
    frechet_distance, kid           Frechet distance and unbiased KID between two feature sets (5.3)
    condition_control_ratio         correct-ID hits over wrong-ID hits per requested user (5.2)
    physics_features                torso velocity, Doppler envelopes, bandwidth, cadence of one spectrogram (5.4)

Shapes: B batch, C channels, H (velocity rows) x W (time columns), N/M samples, D feature dim, K classes.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------------------------
# PSNR and SSIM (5.1)
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
# The evaluation classifier (5.2)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ClassifierConfig:
    """EvalCNN architecture and training recipe (defaults: about 90k parameters; a few hundred 64x64 images
    train in under a minute on two CPU cores)."""
    num_classes: int
    in_channels: int = 1
    image_size: int = 64        # inputs are resized to image_size x image_size before the network
    widths: tuple[int, ...] = (8, 16, 32, 64)
    feature_dim: int = 128      # penultimate features used by Frechet distance and KID
    epochs: int = 30
    min_steps: int = 240        # optimizer steps at least, whatever the data size (30 epochs of 256 images)
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), antialiased bilinear; a no-op at that size already."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


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
        h = self.body(x)                                                # (B, C', s/16, s/16)
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
        shift = int(torch.randint(cfg.image_size, (1,), generator=gen))
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


def save_classifier(model: EvalCNN, path: str, class_to_idx: dict[str, int]) -> None:
    """Write the weights as safetensors with the config and the class-name -> ID map in its metadata."""
    from safetensors.torch import save_file
    meta = {"config": json.dumps(asdict(model.cfg)), "class_to_idx": json.dumps(class_to_idx)}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata=meta)


def load_classifier(path: str) -> tuple[EvalCNN, dict[str, int]]:
    """Inverse of save_classifier: (model in eval mode, class_to_idx)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta or "class_to_idx" not in meta:
        raise ValueError(f"{path} is not an evaluation classifier written by ldm.metrics.save_classifier")
    cfg_dict = json.loads(meta["config"])
    cfg_dict["widths"] = tuple(cfg_dict["widths"])
    model = EvalCNN(ClassifierConfig(**cfg_dict))
    model.load_state_dict(load_file(path), strict=True)
    return model.eval(), json.loads(meta["class_to_idx"])


# ----------------------------------------------------------------------------------------------------------------
# Distribution distances on features (5.3)
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


def kid(a: torch.Tensor, b: torch.Tensor, subset_size: int = 100, num_subsets: int = 100,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """Kernel inception distance (Binkowski et al. 2018) on features a: (N, D), b: (M, D): the unbiased MMD^2 with
    kernel k(x, y) = (x.y / D + 1)^3, averaged over `num_subsets` random subsets of m = min(subset_size, N, M)
    samples from each set. Returns (mean, std over subsets); near 0 for one distribution (can be slightly < 0)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need (N, D) and (M, D) features with N, M >= 2, got {tuple(a.shape)}, {tuple(b.shape)}")
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    a, b = a.double(), b.double()
    m, d = min(subset_size, len(a), len(b)), a.shape[1]
    values = []
    for _ in range(num_subsets):
        x = a[torch.randperm(len(a), generator=gen)[:m]]
        y = b[torch.randperm(len(b), generator=gen)[:m]]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        values.append(float((kxx.sum() - kxx.trace()) / off + (kyy.sum() - kyy.trace()) / off - 2 * kxy.mean()))
    return float(np.mean(values)), float(np.std(values))


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


# ----------------------------------------------------------------------------------------------------------------
# Identity control (5.2)
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
# Physics / kinematic checks (5.4)
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


def spectrogram_axes(meta: dict | None, height: int, width: int, v_max: float | None = None,
                     duration: float | None = None) -> tuple[np.ndarray, float] | None:
    """The velocity of each of the ``height`` rows (top row first, m/s) and the frame rate of the ``width`` columns
    (1/s) of an image resized from a data folder: from ``v_max``/``duration`` when given (rows span
    [-v_max, v_max], columns ``duration`` seconds), else from the simulator's metadata.json dict ``meta``; None
    when neither is known."""
    if v_max is not None and duration is not None:
        top, bottom, seconds = v_max, -v_max, duration
    elif meta is not None and "velocity_step_mps" in meta:
        step, native = meta["velocity_step_mps"], meta["size"]
        top = meta["velocity_top_mps"] + step / 2                      # edge of the top row
        bottom = top - step * native
        seconds = native / meta["frame_rate_hz"]
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
