"""Identity evaluation of generated spectrograms against real ones (shared/reference/micro_doppler.md, section 5).

    python evaluate.py --real DIR --generated DIR --out report.json

Both folders are ROOT/<user>/<files> (PNG/JPEG/.npy, see ldm/data.py); generated samples sit in the folder of the
user they were requested for, with the same user folder names as the real data. Steps:
  1. split the real files per user into train / test (seeded); train the evaluation CNN on real train only
     (or load it with --classifier PATH; a missing PATH is trained and then saved there);
  2. real-test accuracy (the ceiling); train-on-real-test-on-generated (TRTS) accuracy per user and overall,
     mean confidence, the confusion matrix (also as a PNG) and the condition-control ratio;
  3. train-on-generated-test-on-real (TSTR): a fresh CNN with the same recipe, trained on generated only;
  4. Frechet distance and KID on the real-trained CNN's penultimate features: generated vs real test half B,
     next to the floor real test half A vs half B (same samples per user on both sides);
  5. for simulator data (DIR/metadata.json from ldm.microdoppler) or with --v-max/--duration: per-user physics
     (torso velocity, Doppler envelope, cadence), real vs generated and, for simulator data, vs the truth.
Prints a table, writes the JSON report and the confusion-matrix PNG. Bad input exits with status 2 and one line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ldm.data import SpectrogramFolder, split_indices
from ldm.metrics import (ClassifierConfig, batch_physics_features, condition_control_ratio, frechet_distance, kid,
                         load_classifier, predict, save_classifier, spectrogram_axes, train_classifier)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--real", required=True, help="real (or simulated) data: DIR/<user>/<files>")
    p.add_argument("--generated", required=True, help="generated samples: DIR/<requested user>/<files>")
    p.add_argument("--out", default="report.json", help="JSON report path")
    p.add_argument("--confusion-png", default=None, help="confusion-matrix image (default: <out>_confusion.png)")
    p.add_argument("--size", type=int, default=64, help="images are resized to size x size for the classifier")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1: grayscale (RGB -> luma), 3: RGB")
    p.add_argument("--npy-scale", default="db", choices=("db", "magnitude", "power", "unit", "minmax"),
                   help="what .npy values are (ldm/data.py)")
    p.add_argument("--dynamic-range", type=float, default=None,
                   help="dB range mapped to [-1, 1] (default: the simulator's metadata.json value, else 50)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of each real user's files held out")
    p.add_argument("--group-regex", default=None, help="keep files whose stems share this regex's group in one split")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the classifiers and KID subsets")
    p.add_argument("--epochs", type=int, default=30, help="classifier training epochs")
    p.add_argument("--min-steps", type=int, default=240, help="classifier optimizer steps at least (small data sets)")
    p.add_argument("--batch-size", type=int, default=32, help="classifier batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="classifier learning rate (AdamW, cosine decay)")
    p.add_argument("--classifier", default=None, help="load the real-data classifier from this .safetensors, or "
                                                      "train it and save it there when the file does not exist "
                                                      "(reuse it only with the same --real, --seed, --test-fraction)")
    p.add_argument("--kid-subset", type=int, default=50, help="KID subset size (capped by the sample counts)")
    p.add_argument("--kid-subsets", type=int, default=100, help="number of KID subsets")
    p.add_argument("--physics", default="auto", choices=("auto", "on", "off"),
                   help="physics checks: auto = when --real holds the simulator's metadata.json or --v-max is given")
    p.add_argument("--v-max", type=float, default=None, help="velocity span of the image rows is [-v_max, v_max] m/s")
    p.add_argument("--duration", type=float, default=None, help="seconds spanned by the image columns")
    p.add_argument("--threshold-db", type=float, default=-25.0, help="physics: body pixels are within this of the max")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files (their count is reported)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Report helpers
# ----------------------------------------------------------------------------------------------------------------
def accuracy_by_user(pred: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    return {classes[k]: float(np.mean(pred[labels == k] == k)) for k in np.unique(labels)}


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: rows = requested user, columns = predicted user."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


def save_confusion_png(matrix: np.ndarray, classes: list[str], path: str) -> None:
    """Row-normalised confusion matrix as a white-to-blue grid with counts, requested users as rows."""
    from PIL import Image, ImageDraw, ImageFont
    k = len(classes)
    cell, margin = max(24, min(48, 640 // k)), 90
    img = Image.new("RGB", (margin + k * cell + 10, margin + k * cell + 10), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for i in range(k):
        for j in range(k):
            v = rows[i, j]
            colour = (int(255 * (1 - v)), int(255 * (1 - 0.6 * v)), 255)
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(200, 200, 200))
            if matrix[i, j]:
                draw.text((x0 + 3, y0 + cell // 3), str(matrix[i, j]), fill="white" if v > 0.5 else "black", font=font)
        draw.text((4, margin + i * cell + cell // 3), f"{i}: {classes[i][:10]}", fill="black", font=font)
        draw.text((margin + i * cell + cell // 3, margin - 14), str(i), fill="black", font=font)
    draw.text((4, 4), "rows: requested user, columns: predicted user (by ID)", fill="black", font=font)
    img.save(path)


def physics_by_user(x: torch.Tensor, labels: np.ndarray, axes, dynamic_range: float, threshold_db: float) -> dict:
    """Per-user mean of every physics feature; x: (N, C, H, W) in [-1, 1] mapped back to dB."""
    feats = batch_physics_features(x, axes, dynamic_range, threshold_db)
    out = {}
    for k in np.unique(labels):
        rows = [f for f, lab in zip(feats, labels) if lab == k]
        values = {name: [r[name] for r in rows if np.isfinite(r[name])] for name in rows[0]}
        out[int(k)] = {name: float(np.mean(v)) if v else float("nan") for name, v in values.items()}
    return out


def print_table(report: dict) -> None:
    print(f"\n{'user':<14}{'real acc':>9}{'TRTS acc':>9}{'conf':>7}{'CCR':>8}{'n gen':>7}")
    for user, row in report["per_user"].items():
        cells = [row.get("real_test_accuracy"), row.get("trts_accuracy"), row.get("mean_confidence"), row.get("ccr")]
        text = "".join(f"{c:>9.3f}" if c is not None else f"{'-':>9}" for c in cells[:2])
        text += f"{cells[2]:>7.3f}" if cells[2] is not None else f"{'-':>7}"
        text += f"{cells[3]:>8.2f}" if cells[3] is not None else f"{'-':>8}"
        print(f"{user[:13]:<14}{text}{row.get('generated', 0):>7}")
    o, d = report["overall"], report["distances"]
    print(f"\noverall: real-test accuracy {o['real_test_accuracy']:.3f} | TRTS {o['trts_accuracy']:.3f} "
          f"(mean confidence {o['mean_confidence']:.3f}) | TSTR {o['tstr_accuracy']:.3f} | mean CCR "
          + (f"{o['mean_ccr']:.2f}" if o["mean_ccr"] is not None else "-"))
    print(f"Frechet distance {d['fd']:.3f} (real-vs-real floor {d['fd_floor']:.3f}); KID {d['kid']:.4f} +- "
          f"{d['kid_std']:.4f} (floor {d['kid_floor']:.4f}); n = {d['n']} per set")
    if "physics" in report:
        print(f"\n{'physics':<14}{'V true':>8}{'V real':>8}{'V gen':>8}{'env real':>9}{'env gen':>9}"
              f"{'cad true':>9}{'cad real':>9}{'cad gen':>9}")
        for user, row in report["physics"]["per_user"].items():
            def cell(key, width):
                v = row.get(key)
                return f"{v:>{width}.2f}" if v is not None else f"{'-':>{width}}"
            print(f"{user[:13]:<14}{cell('true_speed_mps', 8)}{cell('real_torso_velocity_mps', 8)}"
                  f"{cell('gen_torso_velocity_mps', 8)}{cell('real_upper_envelope_mps', 9)}"
                  f"{cell('gen_upper_envelope_mps', 9)}{cell('true_cadence_steps_per_s', 9)}"
                  f"{cell('real_cadence_steps_per_s', 9)}{cell('gen_cadence_steps_per_s', 9)}")


# ----------------------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------------------
def evaluate(args: argparse.Namespace) -> dict:
    meta_path = Path(args.real) / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and "people" not in meta:
        meta = None                                                    # some other tool's metadata.json
    # Option checks first, before any slow work.
    if (args.v_max is None) != (args.duration is None):
        raise ValueError("--v-max and --duration go together (the image's velocity span and time span)")
    if args.physics == "on" and args.v_max is None and meta is None:
        raise ValueError("--physics on needs --v-max and --duration (or the simulator's metadata.json in --real)")
    if args.size < 16 or not 0 < args.test_fraction < 1 or args.epochs < 0 or args.batch_size < 2:
        raise ValueError(f"need --size >= 16, 0 < --test-fraction < 1, --epochs >= 0, --batch-size >= 2; got "
                         f"{args.size}, {args.test_fraction}, {args.epochs}, {args.batch_size}")
    dynamic_range = args.dynamic_range or (meta["radar"]["dynamic_range_db"] if meta else 50.0)
    load = dict(size=args.size, channels=args.channels, npy_scale=args.npy_scale, dynamic_range_db=dynamic_range,
                skip_bad=args.skip_bad, cache=True)

    # Data: real split per user by file; generated labelled with the real class map.
    real = SpectrogramFolder(args.real, **load)
    if len(real.classes) < 2:
        raise ValueError(f"{args.real} needs at least two user folders to evaluate identity")
    gen = SpectrogramFolder(args.generated, class_to_idx=real.class_to_idx, **load)
    x_real, y_real = real.tensors()
    x_gen, y_gen = gen.tensors()
    split = split_indices(real.files, real.labels, 0.0, args.test_fraction, args.seed, args.group_regex)
    if not split["test"]:
        raise ValueError(f"--test-fraction {args.test_fraction} leaves no real test files")
    train, test = torch.tensor(split["train"]), torch.tensor(split["test"])
    k, classes = len(real.classes), real.classes
    cfg = ClassifierConfig(num_classes=k, in_channels=args.channels, image_size=args.size, epochs=args.epochs,
                           min_steps=args.min_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)

    # 1. The evaluation classifier, trained on real train only.
    if args.classifier and Path(args.classifier).is_file():
        model, saved_map = load_classifier(args.classifier)
        if saved_map != real.class_to_idx:
            raise ValueError(f"{args.classifier} was trained on users {sorted(saved_map)}, "
                             f"not {sorted(real.class_to_idx)}")
        if model.cfg.in_channels != args.channels:
            raise ValueError(f"{args.classifier} takes {model.cfg.in_channels} channel(s), "
                             f"not --channels {args.channels}")
    else:
        model = train_classifier(x_real[train], y_real[train], cfg, progress=not args.quiet)
        if args.classifier:
            save_classifier(model, args.classifier, real.class_to_idx)

    # 2. Real-test accuracy and train-on-real-test-on-generated.
    p_test, f_test = predict(model, x_real[test])
    p_gen, f_gen = predict(model, x_gen)
    y_test, yg = y_real[test].numpy(), y_gen.numpy()
    pred_test, pred_gen = p_test.argmax(1).numpy(), p_gen.argmax(1).numpy()
    confidence = p_gen[torch.arange(len(yg)), y_gen].numpy()          # probability of the requested user
    ccr = condition_control_ratio(pred_gen, yg, k)
    matrix = confusion_matrix(pred_gen, yg, k)

    # 3. Train on generated, test on real (only the users that were generated).
    tstr_model = train_classifier(x_gen, y_gen, cfg, progress=not args.quiet)
    covered = np.isin(y_test, np.unique(yg))
    tstr_pred = predict(tstr_model, x_real[test][torch.from_numpy(covered)])[0].argmax(1).numpy()
    tstr = float(np.mean(tstr_pred == y_test[covered]))

    # 4. Distances on penultimate features, centred on the real-train mean and divided by one scalar, the real-train
    #    RMS deviation, so the KID kernel (x.y / D + 1)^3 sees unit-scale inputs (a per-dimension scale would blow
    #    up dimensions that are nearly constant on real data). Generated vs real-test half B; floor: real-test
    #    half A vs B, with the same number of samples per user on both sides (class imbalance alone inflates FD).
    f_train = predict(model, x_real[train])[1]
    mu = f_train.mean(0)
    scale = (f_train - mu).pow(2).mean().sqrt().clamp_min(1e-12)
    f_test, f_gen = (f_test - mu) / scale, (f_gen - mu) / scale
    halves = split_indices([real.files[i] for i in split["test"]], list(y_test), 0.0, 0.5, args.seed + 1)
    a_idx, b_idx = np.array(halves["test"]), np.array(halves["train"])
    rng = np.random.default_rng(args.seed)
    pick_a, pick_gen = [], []
    for j in np.unique(yg):
        own_a, own_gen = a_idx[y_test[a_idx] == j], np.flatnonzero(yg == j)
        m = min(len(own_a), len(own_gen))
        pick_a += list(own_a[:m])
        pick_gen += list(rng.permutation(own_gen)[:m])
    n = len(pick_a)
    if n < 2 or len(b_idx) < 2:
        raise ValueError(f"distances need >= 2 generated samples of users with >= 2 real test samples; got n = {n}")
    a, b, fg = f_test[pick_a], f_test[b_idx], f_gen[pick_gen]
    g = torch.Generator().manual_seed(args.seed)
    kid_gen, kid_gen_std = kid(fg, b, args.kid_subset, args.kid_subsets, g)
    kid_floor, _ = kid(a, b, args.kid_subset, args.kid_subsets, g)
    distances = {"n": n, "n_reference": len(b_idx), "fd": frechet_distance(fg, b), "fd_floor": frechet_distance(a, b),
                 "kid": kid_gen, "kid_std": kid_gen_std, "kid_floor": kid_floor,
                 "features": f"EvalCNN penultimate ({model.cfg.feature_dim}-d, real-trained), "
                             "centred and scaled by real train"}

    per_user = {}
    for j, name in enumerate(classes):
        own = yg == j
        per_user[name] = {
            "real_test_accuracy": float(np.mean(pred_test[y_test == j] == j)) if (y_test == j).any() else None,
            "trts_accuracy": float(np.mean(pred_gen[own] == j)) if own.any() else None,
            "mean_confidence": float(confidence[own].mean()) if own.any() else None,
            "ccr": ccr.get(j), "generated": int(own.sum())}
    report = {
        "real": str(args.real), "generated": str(args.generated), "class_to_idx": real.class_to_idx,
        "counts": {"real_train": len(train), "real_test": len(test), "generated": len(yg),
                   "skipped_real": len(real.skipped), "skipped_generated": len(gen.skipped)},
        "classifier": {**{key: v for key, v in vars(cfg).items()}, "loaded_from": args.classifier},
        "overall": {"real_test_accuracy": float(np.mean(pred_test == y_test)),
                    "trts_accuracy": float(np.mean(pred_gen == yg)),
                    "mean_confidence": float(confidence.mean()), "tstr_accuracy": tstr,
                    "mean_ccr": float(np.mean(list(ccr.values()))) if ccr else None},
        "per_user": per_user,
        "confusion_matrix": {"rows": "requested", "columns": "predicted", "counts": matrix.tolist()},
        "distances": distances,
    }

    # 5. Physics checks.
    axes = spectrogram_axes(meta, x_real.shape[-2], x_real.shape[-1], args.v_max, args.duration)
    if args.physics != "off" and axes is not None:
        real_phys = physics_by_user(x_real[test], y_test, axes, dynamic_range, args.threshold_db)
        gen_phys = physics_by_user(x_gen, yg, axes, dynamic_range, args.threshold_db)
        rows = {}
        for j, name in enumerate(classes):
            row = {f"real_{key}": v for key, v in real_phys.get(j, {}).items()}
            row.update({f"gen_{key}": v for key, v in gen_phys.get(j, {}).items()})
            if meta is not None and j < len(meta["people"]) and meta["people"][j]["user"] == name:
                row["true_speed_mps"] = meta["people"][j]["speed_mps"]
                row["true_cadence_steps_per_s"] = meta["people"][j]["cadence_steps_per_s"]
            for key in real_phys.get(j, {}):
                if j in gen_phys:
                    row[f"abs_diff_{key}"] = abs(real_phys[j][key] - gen_phys[j][key])
            rows[name] = row
        report["physics"] = {"threshold_db": args.threshold_db, "per_user": rows}
    return report


def _json_safe(value):
    """NaN / inf (e.g. a cadence that could not be measured) become null, so the report is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = evaluate(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"evaluate.py: error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    out = Path(args.out)
    png = args.confusion_png or str(out.with_name(out.stem + "_confusion.png"))
    report["confusion_png"] = png
    report = _json_safe(report)
    out.write_text(json.dumps(report, indent=1, allow_nan=False))
    save_confusion_png(np.array(report["confusion_matrix"]["counts"]), list(report["per_user"]), png)
    print_table(report)
    print(f"\nwrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
