"""Data augmentation for few-shot radar person identification: the classic baseline and two filters for synthetic
spectrograms (the few-shot experiment itself is fewshot.py; docs/augmentation.md explains it).

    ClassicAugment      label-preserving spectrogram transforms (time shift and scaling, Doppler frequency shift,
                        drifting frequency disturbance and scaling, amplitude jitter in dB): the `classic`
                        baseline; a callable for the ``augment`` hook of ldm.radar.identity.train_classifier
    class_margins,      margin filter: keep a synthetic sample when a classifier trained on real data prefers the
    margin_threshold,   requested person by a margin p_requested - max_other above a threshold chosen on real
    margin_filter       validation data
    physics_ranges,     physics filter: keep a synthetic sample whose torso velocity and cadence lie inside the
    physics_filter      requested person's real range, widened by a tolerance
    balanced_indices    repeat samples so that every person is seen equally often (filters keep unequal numbers)

Shapes: B/N samples, C channels, H (velocity rows, approaching on top) x W (time columns), K persons.
Images are in [-1, 1], where -1 is the bottom of the display range (e.g. -50 dB re the image maximum) and 1 its top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# The per-sample physics features the physics filter compares (names from ldm.metrics.physics_features).
PHYSICS_KEYS = ("torso_velocity_mps", "cadence_steps_per_s")


# ----------------------------------------------------------------------------------------------------------------
# Classic spectrogram augmentation
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ClassicAugment:
    """Random label-preserving transforms of a batch of spectrograms, drawn per sample from the given generator.

    Per sample, in this order:
      1. time: resample the columns at (j - c) / s_t + c + shift (c the centre column), with a uniform time scale
         s_t in [1 - time_scale, 1 + time_scale] (a slightly faster or slower gait) and, if ``time_shift``, a
         uniform shift in [0, W) (a new gait phase); columns wrap around, as a walk continues in time;
      2. Doppler: resample the rows at (i - c) / s_d + c + d + e(j), with s_d in [1 - doppler_scale,
         1 + doppler_scale] about the centre row (0 m/s on a symmetric velocity axis: all body velocities scale
         together), a frequency shift d uniform in [-doppler_shift, doppler_shift] * H rows (the whole body
         walks a little faster or slower towards the radar), and a frequency disturbance that drifts over time,
         e(j) = a sin(2 pi f j / W + phi) with a uniform in [-doppler_disturbance, doppler_disturbance] * H rows,
         f uniform in [0.5, 2] cycles per image and phi uniform (the walking speed wanders within one recording);
         rows from outside the image read as -1 (the noise floor). Shift and disturbance are the Doppler-axis
         transforms of RadarSpecAugment-style augmentation;
      3. amplitude: add g dB, g uniform in [-gain_db, gain_db] (x + 2 g / dynamic_range_db), clipped to [-1, 1].
    Resampling is linear. All amounts 0 (and time_shift False) return the input unchanged.

    Walking speed and cadence are what tells people apart, so the amounts that help are those within the spread one
    person shows from walk to walk; fewshot.py expresses them in units of that spread, measured on the base people,
    and chooses the multiple on the base people's validation files (docs/augmentation.md). The defaults here are the
    small amounts of the earlier experiment.
    """
    time_shift: bool = True
    time_scale: float = 0.02        # relative, e.g. 0.02 = +-2% cadence
    doppler_shift: float = 0.0025   # fraction of the image height: 0.0025 of a +-6.25 m/s axis = +-0.03 m/s
    doppler_scale: float = 0.02     # relative, e.g. 0.02 = +-2% of every body velocity
    gain_db: float = 3.0            # +-dB added to the whole image
    dynamic_range_db: float = 50.0  # dB spanned by [-1, 1]
    doppler_disturbance: float = 0.0   # fraction of the image height: peak of the slowly drifting Doppler offset

    def __post_init__(self):
        for name in ("time_scale", "doppler_scale"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must lie in [0, 0.5), got {getattr(self, name)}")
        for name in ("doppler_shift", "doppler_disturbance"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must lie in [0, 0.5) (a fraction of the image height), got "
                                 f"{getattr(self, name)}")
        if self.gain_db < 0 or self.dynamic_range_db <= 0:
            raise ValueError(f"need gain_db >= 0, dynamic_range_db > 0; got {self.gain_db}, {self.dynamic_range_db}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1] -> (B, C, H, W) in [-1, 1]; random draws come from ``generator`` only (the
        global RNG when None), so the same generator state gives the same output."""
        if x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"ClassicAugment needs a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        b, _, h, w = x.shape
        u = torch.rand(b, 8, generator=generator, dtype=torch.float64)   # (B, 8) uniform draws, one row per sample
        time_scale = 1 + self.time_scale * (2 * u[:, 0] - 1)
        time_shift = u[:, 1] * w if self.time_shift else torch.zeros(b, dtype=torch.float64)
        doppler_scale = 1 + self.doppler_scale * (2 * u[:, 2] - 1)
        doppler_shift = self.doppler_shift * h * (2 * u[:, 3] - 1)
        gain_db = self.gain_db * (2 * u[:, 4] - 1)
        amplitude = self.doppler_disturbance * h * (2 * u[:, 5] - 1)                  # (B,) rows
        cycles, phase = 0.5 + 1.5 * u[:, 6], 2 * math.pi * u[:, 7]
        j = torch.arange(w, dtype=torch.float64)
        drift = amplitude[:, None] * torch.sin(2 * math.pi * cycles[:, None] * j / w + phase[:, None])   # (B, W)

        columns = _source_positions(w, time_scale, time_shift).to(x.device)       # (B, W)
        rows = _source_positions(h, doppler_scale, doppler_shift)                  # (B, H)
        rows = (rows[:, :, None] + drift[:, None, :]).to(x.device)                 # (B, H, W): per column
        x = _resample(x, columns, dim=-1, circular=True)
        x = _resample(x, rows, dim=-2, circular=False)
        x = x + (2 * gain_db / self.dynamic_range_db).to(x)[:, None, None, None]
        return x.clamp(-1, 1)


def _source_positions(n: int, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Where output index i reads from: (i - c) / scale + c + shift, c = (n - 1) / 2. scale, shift: (B,) -> (B, n)."""
    centre = (n - 1) / 2
    i = torch.arange(n, dtype=torch.float64)
    return (i[None] - centre) / scale[:, None] + centre + shift[:, None]


def _resample(x: torch.Tensor, positions: torch.Tensor, dim: int, circular: bool) -> torch.Tensor:
    """Linear interpolation of x: (B, C, H, W) along dim (-2 rows, -1 columns) at per-sample fractional source
    positions in pixels: (B, n), or for rows (B, H, W) (a row position per column). Circular: positions wrap
    modulo n; otherwise outside the image reads as -1."""
    n = x.shape[dim]
    if positions.dim() == 3:                                           # (B, H, W): broadcasts over C only
        shape = (x.shape[0], 1, *positions.shape[1:])
    else:
        shape = (x.shape[0], 1, n, 1) if dim == -2 else (x.shape[0], 1, 1, n)   # over C and the other axis
    low = positions.floor()
    weight = (positions - low).to(x.dtype).view(shape)                 # share of the upper neighbour
    values = []
    for index in (low.long(), low.long() + 1):
        inside = (index >= 0) & (index < n)
        index = index % n                                              # wraps, or any valid index to mask below
        picked = torch.gather(x, dim, index.view(shape).expand_as(x))
        if not circular:
            picked = torch.where(inside.view(shape), picked, torch.full_like(picked, -1.0))
        values.append(picked)
    return values[0] * (1 - weight) + values[1] * weight


# ----------------------------------------------------------------------------------------------------------------
# Margin filter (SynCheck-style: Gong et al., MobiSys 2025)
# ----------------------------------------------------------------------------------------------------------------
def class_margins(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Margin of each sample for its label: p[label] - max over other classes of p. probs: (N, K) class
    probabilities (rows sum to 1), labels: (N,) in [0, K). Returns (N,) in [-1, 1]; > 0 exactly when the label
    is the unique top class."""
    if probs.dim() != 2 or labels.shape != probs.shape[:1] or probs.shape[1] < 2:
        raise ValueError(f"need probs (N, K >= 2) and labels (N,), got {tuple(probs.shape)}, {tuple(labels.shape)}")
    own = probs.gather(1, labels[:, None].long())[:, 0]
    others = probs.scatter(1, labels[:, None].long(), float("-inf"))   # the label's own column cannot win
    return own - others.max(dim=1).values


def margin_threshold(val_margins: torch.Tensor, quantile: float = 0.1, floor: float = 0.0) -> float:
    """The margin a synthetic sample must exceed: max(floor, the ``quantile`` quantile of val_margins).

    val_margins: (N,) margins that real validation samples get for their true person (class_margins) from the
    same classifier. A synthetic sample that is as recognisable as a real one then passes with probability about
    1 - quantile; the floor (default 0) additionally demands that the requested person is the top class, which
    decides whenever the classifier is too weak for its val quantile to be positive."""
    if val_margins.dim() != 1 or len(val_margins) == 0 or not 0 <= quantile <= 1:
        raise ValueError(f"need non-empty (N,) margins and 0 <= quantile <= 1, got {tuple(val_margins.shape)}, "
                         f"{quantile}")
    return max(floor, float(torch.quantile(val_margins.double(), quantile)))


def margin_filter(probs: torch.Tensor, requested: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep mask (N,) bool: class_margins(probs, requested) > threshold. probs: (N, K) from a classifier trained
    on real data; requested: (N,) the person each synthetic sample was generated for."""
    return class_margins(probs, requested) > threshold


# ----------------------------------------------------------------------------------------------------------------
# Physics filter (kinematic sifting in the spirit of Erol, Gurbuz & Amin, IEEE TAES 2020)
# ----------------------------------------------------------------------------------------------------------------
def physics_ranges(features: list[dict[str, float]], labels, num_classes: int,
                   tolerance: float = 1.0) -> dict[str, np.ndarray]:
    """Per person, the range of each physics feature (PHYSICS_KEYS) over real samples, widened on both sides by
    ``tolerance`` pooled within-person standard deviations.

    features: N dicts from ldm.metrics.batch_physics_features; labels: (N,) person IDs in [0, num_classes).
    The pooled standard deviation s = sqrt(sum over persons of sum (f - person mean)^2 / (N - persons)) uses every
    person's samples, so it is well defined with two samples per person, where a single person's spread is not.
    Non-finite values (e.g. a cadence that could not be measured) are left out. Returns {key: (K, 2) array of
    [low, high]}, NaN for a person without finite values, and {key + "_pooled_std": s}.
    """
    labels = np.asarray(labels)
    if len(features) != len(labels) or tolerance < 0:
        raise ValueError(f"need one label per feature dict and tolerance >= 0, got {len(features)} dicts, "
                         f"{len(labels)} labels, tolerance {tolerance}")
    out = {}
    for key in PHYSICS_KEYS:
        values = np.array([f[key] for f in features], dtype=np.float64)
        finite = np.isfinite(values)
        groups = [values[finite & (labels == k)] for k in range(num_classes)]
        groups = [g for g in groups if len(g)]
        squares = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
        count, persons = sum(len(g) for g in groups), len(groups)
        if count - persons < 1:
            raise ValueError(f"physics_ranges needs at least two real samples of one person with a finite {key}")
        pooled = (squares / (count - persons)) ** 0.5
        ranges = np.full((num_classes, 2), np.nan)
        for k in range(num_classes):
            own = values[finite & (labels == k)]
            if len(own):
                ranges[k] = own.min() - tolerance * pooled, own.max() + tolerance * pooled
        out[key], out[key + "_pooled_std"] = ranges, pooled
    return out


def physics_filter(features: list[dict[str, float]], requested, ranges: dict[str, np.ndarray]) -> np.ndarray:
    """Keep mask (N,) bool: every PHYSICS_KEYS feature of sample n lies in ranges[key][requested[n]] (inclusive).
    A sample whose feature could not be measured (NaN), or whose person has no real range, is discarded.
    features: N dicts from batch_physics_features; requested: (N,) person IDs; ranges: from physics_ranges."""
    requested = np.asarray(requested)
    if len(features) != len(requested):
        raise ValueError(f"need one requested person per feature dict, got {len(features)} and {len(requested)}")
    keep = np.ones(len(requested), dtype=bool)
    for key in PHYSICS_KEYS:
        values = np.array([f[key] for f in features], dtype=np.float64)
        low, high = ranges[key][requested, 0], ranges[key][requested, 1]
        keep &= (values >= low) & (values <= high)                     # NaN compares False: discarded
    return keep


# ----------------------------------------------------------------------------------------------------------------
# Class balance
# ----------------------------------------------------------------------------------------------------------------
def balanced_indices(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices into a training set that give every person as many samples as the best-represented one: all
    indices once, plus, for each person with fewer, extra copies of their own samples taken in turn from a random
    order drawn from ``generator``. labels: (N,) person IDs. Returns (N',) LongTensor; a set that is already
    balanced (k real shots per person) comes back unchanged, as arange(N).

    Why: a filter keeps unequal numbers per person (the margin filter kept 32 samples of one person and 1 of
    another in the demo), and a classifier trained on that learns the imbalance: it predicts the well-represented
    people more often, and accuracy on the balanced real test set falls below that of the real samples alone."""
    counts = torch.bincount(labels)
    target = int(counts.max())
    extra = []
    for person in torch.nonzero(counts).flatten().tolist():
        own = torch.nonzero(labels == person).flatten()
        missing = target - len(own)
        if missing > 0:
            order = own[torch.randperm(len(own), generator=generator)]
            extra.append(order.repeat(missing // len(own) + 1)[:missing])
    return torch.cat([torch.arange(len(labels)), *extra])
