"""The identity classifier behind every identity figure: a small CNN trained on real spectrograms only, whose
accuracy on held-out real files is the floor, and whose penultimate features feed the distances of ldm.metrics.

    ClassifierConfig, EvalCNN       the network and its training recipe
    train_classifier, predict       training and prediction (probabilities and features)
    save_classifier,                safetensors with the config, the class map and the files it trained on
    load_classifier,
    classifier_trained_on
    condition_control_ratio         correct-ID hits over wrong-ID hits per requested user

Shapes: B batch, C channels, H (velocity rows) x W (time columns), N samples, D feature dim, K classes.
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
        raise ValueError(f"{path}: not an evaluation classifier written by ldm.radar.identity.save_classifier")
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
