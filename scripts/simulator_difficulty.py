"""How hard is a simulator profile? Identity accuracy of the evaluation CNN on held-out files, and a scalar baseline.

    python scripts/simulator_difficulty.py --profile realistic --users 10 --per-user 64 --seeds 0,1,2

For each seed: simulate users x per_user spectrograms (ldm.radar.simulator.write_dataset) into a temporary folder,
split it as every stage does (ldm.splits.make_split: per user 25% test, 10% val, the rest train; the realistic
profile's sessions, recorded in metadata.json, stay whole on one side, so the test walks come from sessions the
classifier never saw), train the evaluation CNN with evaluate.py's recipe (ldm.radar.identity.train_classifier,
default ClassifierConfig, 64x64 inputs) on the train + val files and score it on the test files. The scalar baseline, on the same files: nearest centroid
on two numbers per file, the walking speed |torso velocity| and the cadence (ldm.radar.physics.physics_features),
standardised with the training files' mean and standard deviation. Each seed (other people, other sessions and
walks) gives an accuracy with its 95% Wilson interval; the headline is the mean over the seeds, with the pooled
figure and its interval beside it.
Published person-identification accuracies on real radar data, for comparison: 83.7% for 10 people and 68.2% for
60 (Glasgow walking data), about 78% for 5 people (IDRad).
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldm.radar import simulator as microdoppler
from ldm.data import SpectrogramFolder, relative_names
from ldm.splits import make_split
from ldm.files import write_json
from ldm.radar.identity import ClassifierConfig, predict, train_classifier
from ldm.radar.physics import batch_physics_features, spectrogram_axes
from ldm.metrics import wilson_interval
from ldm.cli import option, parse_config


@dataclass
class DifficultyConfig:
    profile: str = option("realistic", "simulator profile (ldm.radar.simulator.PROFILES)",
                          choices=tuple(microdoppler.PROFILES))
    users: int = option(10, "simulated people", at_least=2, at_most=1000)
    per_user: int = option(64, "spectrograms per person (split 65/10/25 into train/val/test)", at_least=8)
    seeds: str = option("0,1,2", "comma-separated seeds: each simulates other people and walks")
    spacing: float | None = option(None, "person-to-person spread (default: the profile's)", above=0,
                                   at_most=microdoppler.MAX_SPACING)
    size: int = option(64, "simulated image side (the CNN resizes to 64 anyway)", choices=microdoppler.SIZES)
    epochs: int = option(30, "CNN training epochs (evaluate.py's default)", at_least=1)
    out: str | None = option(None, "also write the figures to this JSON file")
    quiet: bool = option(False, "no progress bars")


def nearest_centroid(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, classes: int) -> np.ndarray:
    """Labels of test (N, F) by the nearest class mean of train (M, F), after standardising every feature with the
    training mean and standard deviation (NaN features become the training mean)."""
    mean, std = np.nanmean(train, axis=0), np.nanstd(train, axis=0) + 1e-12
    z_train = np.nan_to_num((train - mean) / std)
    z_test = np.nan_to_num((test - mean) / std)
    centroids = np.stack([z_train[y_train == k].mean(axis=0) for k in range(classes)])     # (K, F)
    return np.argmin(((z_test[:, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)


def scalar_features(x: torch.Tensor, meta: dict) -> np.ndarray:
    """(N, 2): |torso velocity| (m/s) and cadence (steps/s) of images x (N, 1, H, W) in [-1, 1]."""
    axes = spectrogram_axes(meta, x.shape[-2], x.shape[-1])
    feats = batch_physics_features(x, axes, meta["radar"]["dynamic_range_db"])
    return np.array([[abs(f["torso_velocity_mps"]), f["cadence_steps_per_s"]] for f in feats])


def one_seed(cfg: DifficultyConfig, seed: int, folder: Path) -> dict:
    """Simulate, split, train on train + val, score on test: {"cnn": (correct, n), "baseline": (correct, n)}."""
    meta = microdoppler.write_dataset(folder, cfg.users, cfg.per_user, cfg.size, seed, cfg.spacing,
                                      progress=not cfg.quiet, profile=cfg.profile)
    split = make_split(folder, seed=seed)
    data = SpectrogramFolder(folder, size=64, dynamic_range_db=meta["radar"]["dynamic_range_db"])
    x, y = data.tensors()
    names = relative_names(data.root, data.files)
    test_names = set(split["test"])
    test = torch.tensor([n in test_names for n in names])
    model = train_classifier(x[~test], y[~test], ClassifierConfig(num_classes=cfg.users, epochs=cfg.epochs,
                                                                  seed=seed), progress=not cfg.quiet)
    cnn_correct = int((predict(model, x[test])[0].argmax(1) == y[test]).sum())
    features = scalar_features(x, meta)
    guess = nearest_centroid(features[~test.numpy()], y[~test].numpy(), features[test.numpy()], cfg.users)
    baseline_correct = int((guess == y[test].numpy()).sum())
    n = int(test.sum())
    return {"seed": seed, "test_files": n, "cnn": cnn_correct / n, "baseline": baseline_correct / n,
            "cnn_correct": cnn_correct, "baseline_correct": baseline_correct, "spacing": meta["spacing"]}


def figure(correct: int, n: int) -> dict:
    low, high = wilson_interval(correct, n)
    return {"value": correct / n, "ci": [low, high], "correct": correct, "n": n}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DifficultyConfig, argv, __doc__.split("\n\n")[0])
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds {cfg.seeds!r}: expected comma-separated integers, e.g. 0,1,2", file=sys.stderr)
        return 2
    torch.set_num_threads(1)                       # many tiny CNN steps: one thread is fastest (tests/conftest.py)
    start, rows = time.perf_counter(), []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in seeds:
                rows.append(one_seed(cfg, seed, Path(tmp) / f"seed{seed}"))
                r = rows[-1]
                low, high = wilson_interval(r["cnn_correct"], r["test_files"])
                r["cnn_ci"] = [low, high]
                print(f"seed {seed}: CNN {r['cnn']:.1%} [{low:.1%}, {high:.1%}], speed+cadence baseline "
                      f"{r['baseline']:.1%} ({r['test_files']} test files)", flush=True)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    n = sum(r["test_files"] for r in rows)
    report = {"config": dataclasses.asdict(cfg), "spacing": rows[0]["spacing"], "seeds": rows,
              "cnn": figure(sum(r["cnn_correct"] for r in rows), n),
              "baseline": figure(sum(r["baseline_correct"] for r in rows), n),
              "cnn_mean_over_seeds": float(np.mean([r["cnn"] for r in rows])),
              "chance": 1 / cfg.users, "seconds": time.perf_counter() - start}
    for key, name in (("cnn", "evaluation CNN"), ("baseline", "nearest centroid on speed + cadence")):
        f = report[key]
        print(f"{cfg.profile}, {cfg.users} people, {len(seeds)} seed(s): {name} {f['value']:.1%} "
              f"[{f['ci'][0]:.1%}, {f['ci'][1]:.1%}] on {n} held-out files (chance {1 / cfg.users:.1%})")
    print(f"{cfg.profile}, {cfg.users} people: evaluation CNN mean over {len(seeds)} seed(s) "
          f"{report['cnn_mean_over_seeds']:.1%} (per seed: "
          + ", ".join(f"{r['cnn']:.1%} [{r['cnn_ci'][0]:.1%}, {r['cnn_ci'][1]:.1%}]" for r in rows) + ")")
    if cfg.out:
        write_json(report, cfg.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
