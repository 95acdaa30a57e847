"""Does synthetic data help radar person identification? The few-shot augmentation experiment (docs/augmentation.md).

    python augment.py --real DATA --split RUN/split.json --generated GEN --shots 4,8,16 --seeds 5

For each shot count k (real training samples per person, drawn from the split's "train" part) and each seed, an
identity classifier (ldm.identity.train_classifier) is trained on
    real               the k real samples per person
    real+synthetic     ... plus every synthetic sample (GEN/<requested user>/<files>)
    real+margin        ... plus the synthetic samples the margin filter keeps
    real+physics       ... plus the synthetic samples the physics filter keeps
    classic            the k real samples with classic spectrogram augmentation (ldm.augment.ClassicAugment)
    classic+...        classic augmentation with the same three synthetic sets added
and tested on the split's real "test" files, the same for every classifier. Within a (k, seed) every variant shares
the real shots and the classifier's initialisation, so gains are paired per seed. Synthetic data earns its place
only by beating "classic". Writes OUT with .png (accuracy against k, 95% bands) and then OUT (JSON, recording every
option as resolved), each atomically, and prints a table. Every option is checked and the output folder tested for
writing before any work; bad input exits with status 2 and one line.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldm import cli, training
from ldm.radar import identity
from ldm.radar.augment import (ClassicAugment, balanced_indices, class_margins, margin_filter, margin_threshold,
                               physics_filter, physics_ranges)
from ldm.data import SpectrogramFolder, check_split, parse_size, read_split, relative_names
from ldm.io import atomic_write, check_outputs_apart
from ldm.radar.identity import ClassifierConfig, predict, train_classifier
from ldm.radar.physics import batch_physics_features, simulator_metadata, spectrogram_axes
from ldm.metrics import json_safe, mean_ci
from ldm.cli import option

FORMAT = "ldm-augmentation-1"
FILTERS = ("margin", "physics")


@dataclass
class AugmentConfig:
    real: str | None = option(None, "real data: DIR/<user>/<files>, the folder the split was made for")
    split: str | None = option(None, "split.json of the generator's run (or that run folder); required: shots come "
                                     "from its train part, accuracy from its test part")
    generated: str | None = option(None, "synthetic samples: DIR/<requested user>/<files>, user names as in --real")
    shots: str = option("4,8,16", "real training samples per person, a comma list (each >= 2)")
    seeds: int = option(5, "repeats per shot count; repeat r uses seed SEED + r (its shots and classifier init)",
                        at_least=1)
    seed: int = option(0, "first seed", at_least=0, below=2**62)
    out: str = option("augmentation.json", "JSON results; the plot goes next to it with .png")
    size: str = option("32", "the classifier's input (and the physics features'): N (N x N) or HxW (height x "
                             "width), each side >= 16")
    resize: str = cli.resize_option()
    channels: int = option(1, "1: grayscale (RGB -> luma), 3: RGB", choices=(1, 3))
    colormap: str = cli.colormap_option()
    npy_scale: str = cli.npy_scale_option()
    dynamic_range: float | None = option(None, "dB range mapped to [-1, 1] (default: the simulator's "
                                               "metadata.json value, else 50)", above=0)
    epochs: int = option(30, "classifier training epochs", at_least=0)
    min_steps: int = option(240, "classifier optimizer steps at least (few-shot sets are small)", at_least=0)
    batch_size: int = option(32, "classifier batch size", at_least=2)
    lr: float = option(2e-3, "classifier learning rate (AdamW, cosine decay)", above=0)
    margin_quantile: float = option(0.1, "margin filter: the threshold is this quantile of the margins real val "
                                         "samples get for their true person (at least 0)", at_least=0, at_most=1)
    filters: str = option("auto", "synthetic-sample filters to compare: a comma list of margin, physics; none; or "
                                  "auto = margin, and physics when the velocity/time axes are known (the "
                                  "simulator's metadata.json in --real, or --v-max/--duration)")
    physics_tolerance: float = option(1.0, "physics filter: each person's real range is widened by this many "
                                           "pooled within-person standard deviations on both sides", at_least=0)
    v_max: float | None = option(None, "velocity span of the image rows is [-v_max, v_max] m/s", above=0)
    duration: float | None = option(None, "seconds spanned by the image columns", above=0)
    threshold_db: float = option(-25.0, "physics: body pixels are within this many dB of the image max", below=0)
    time_scale: float = option(0.02, "classic augmentation: time scaling up to +-this (relative)", at_least=0,
                               below=0.5)
    doppler_shift: float = option(0.0025, "classic augmentation: Doppler shift up to +-this fraction of the height",
                                  at_least=0, below=0.5)
    doppler_scale: float = option(0.02, "classic augmentation: Doppler scaling up to +-this (relative)", at_least=0,
                                  below=0.5)
    gain_db: float = option(3.0, "classic augmentation: amplitude jitter up to +-this many dB", at_least=0)
    threads: int = option(1, "torch CPU threads (small classifiers train fastest on one)", at_least=1)
    progress: bool = option(True, "show a progress bar over the runs")


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
def parse_shots(text: str) -> list[int]:
    try:
        shots = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise ValueError(f"--shots must be a comma list of integers, got {text!r}") from None
    if shots[0] < 2:
        raise ValueError(f"--shots must all be >= 2 (the physics filter needs a within-person spread), got {text!r}")
    return shots


def parse_filters(text: str) -> list[str]:
    if text == "auto":
        return list(FILTERS)
    names = [] if text == "none" else [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in FILTERS]
    if unknown:
        raise ValueError(f"--filters takes auto, none or a comma list of {', '.join(FILTERS)}; got {text!r}")
    return [name for name in FILTERS if name in names]


def draw_shots(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k samples per person: the first k of a permutation seeded by (seed, person), so the shots of a
    smaller k are part of those of a larger k (the curve over k then changes one thing at a time)."""
    picked = []
    for person in np.unique(labels):
        own = np.flatnonzero(labels == person)
        picked += list(own[np.random.default_rng([seed, int(person)]).permutation(len(own))[:k]])
    return np.array(sorted(picked))


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x)[0].argmax(1) == y).float().mean())


def summary(values: list[float]) -> dict:
    mean, low, high = mean_ci(values)
    return {"mean": mean, "ci": [low, high]}


def print_table(rows: list[dict]) -> None:
    def interval(ci):
        return "" if ci[0] is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] < 0 else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    print(f"\n{'k':>3}  {'variant':<18}{'accuracy':>9}  {'95% CI':<17}{'gain':>7}  {'95% CI':<17}"
          f"{'vs classic':>10}  {'kept':>6}")
    for r in rows:
        print(f"{r['shots']:>3}  {r['variant']:<18}{r['accuracy']:>9.3f}  {interval(r['accuracy_ci']):<17}"
              f"{r['gain']:>+7.3f}  {interval(r['gain_ci']):<17}{r['gain_over_classic']:>+10.3f}  "
              f"{r['kept']:>6.1f}")


def plot_accuracy(rows: list[dict], variants: list[str], chance: float, path: str | Path) -> None:
    """Accuracy against k, one line per variant (solid: without, dashed: with classic augmentation; colour: which
    synthetic set) with its 95% band, a legend and, when within the plotted range, a dotted chance line; as PNG."""
    colours = {"": (60, 60, 60), "synthetic": (214, 39, 40), "margin": (31, 119, 180), "physics": (44, 160, 44)}
    width, height, left, right, top, bottom = 820, 440, 60, 640, 30, 390
    image = Image.new("RGB", (width, height), "white")
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw, shade = ImageDraw.Draw(image), ImageDraw.Draw(overlay)
    shots = sorted({r["shots"] for r in rows})
    lows = [r["accuracy_ci"][0] if r["accuracy_ci"][0] is not None else r["accuracy"] for r in rows]
    highs = [r["accuracy_ci"][1] if r["accuracy_ci"][1] is not None else r["accuracy"] for r in rows]
    y_lo, y_hi = max(0.0, min(lows) - 0.02), min(1.0, max(highs) + 0.02)

    def point(k, value):
        x = left + (shots.index(k) + 0.5) / len(shots) * (right - left)    # k values evenly spaced
        return x, bottom - (min(max(value, y_lo), y_hi) - y_lo) / (y_hi - y_lo) * (bottom - top)

    for i, variant in enumerate(variants):
        base, _, synthetic = variant.partition("+")
        colour = colours[synthetic]
        own = [r for r in rows if r["variant"] == variant]
        line = [point(r["shots"], r["accuracy"]) for r in own]
        band = [point(r["shots"], r["accuracy_ci"][1]) for r in own if r["accuracy_ci"][0] is not None]
        band += [point(r["shots"], r["accuracy_ci"][0]) for r in reversed(own) if r["accuracy_ci"][0] is not None]
        if len(band) >= 4:
            shade.polygon(band, fill=colour + (28,))
        for (x0, y0), (x1, y1) in zip(line, line[1:]):
            if base == "classic":                                        # dashed: 8-pixel pieces
                n = max(1, int(np.hypot(x1 - x0, y1 - y0) // 8))
                for j in range(0, n, 2):
                    draw.line([(x0 + (x1 - x0) * j / n, y0 + (y1 - y0) * j / n),
                               (x0 + (x1 - x0) * (j + 1) / n, y0 + (y1 - y0) * (j + 1) / n)], fill=colour, width=2)
            else:
                draw.line([(x0, y0), (x1, y1)], fill=colour, width=2)
        for x, y in line:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        legend_y = top + 18 * i
        if base == "classic":
            for x in (right + 20, right + 36):
                draw.line([(x, legend_y + 6), (x + 8, legend_y + 6)], fill=colour, width=2)
        else:
            draw.line([(right + 20, legend_y + 6), (right + 44, legend_y + 6)], fill=colour, width=2)
        draw.text((right + 52, legend_y), variant, fill=colour)
    image.paste(Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB"))
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    if y_lo <= chance <= y_hi:                                           # dotted chance line, when in view
        _, chance_y = point(shots[0], chance)
        for x in range(left, right, 6):
            draw.point((x, chance_y), fill=(120, 120, 120))
        draw.text((right - 80, chance_y - 14), f"chance {chance:.3f}", fill=(120, 120, 120))
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        value = y_lo + frac * (y_hi - y_lo)
        draw.text((8, bottom - frac * (bottom - top) - 6), f"{value:.2f}", fill=(0, 0, 0))
    for k in shots:
        x, _ = point(k, y_lo)
        draw.text((x - 4, bottom + 6), str(k), fill=(0, 0, 0))
    draw.text((left, bottom + 24), "real training samples per person (k); accuracy on the real test split, "
                                   "bands: 95% CI over seeds", fill=(0, 0, 0))
    draw.text((left, 8), f"identity accuracy with and without synthetic data (chance {chance:.3f})", fill=(0, 0, 0))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------------------------
def check_options(cfg: AugmentConfig) -> tuple[list[int], tuple[int, int], dict]:
    """Every check that needs no training: (shots, (height, width), the split); also that OUT and its plot can be
    written."""
    for name in ("real", "generated"):
        if getattr(cfg, name) is None:
            raise ValueError(f"--{name} is required")
    if cfg.split is None:
        raise ValueError("--split is required: the split.json of the run that trained the generator (train_vae.py "
                         "and train_ldm.py write one in their run folder), so that no real test file was ever "
                         "seen by the generator or used as a shot")
    shots = parse_shots(cfg.shots)
    size = parse_size(cfg.size, "--size")
    if min(size) < 16:
        raise ValueError(f"--size {cfg.size}: each side must be >= 16 (the classifier pools 4 times)")
    if (cfg.v_max is None) != (cfg.duration is None):
        raise ValueError("--v-max and --duration go together (the image's velocity span and time span)")
    if Path(cfg.generated).resolve() == Path(cfg.real).resolve():
        raise ValueError("--generated is the --real folder: the synthetic samples would include the real test files")
    out = Path(cfg.out)
    split_file = Path(cfg.split) / "split.json" if Path(cfg.split).is_dir() else Path(cfg.split)
    check_outputs_apart({"--out": out, "its plot": out.with_suffix(".png")},
                        {"--real": cfg.real, "--generated": cfg.generated, "--split": split_file})
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder, not a file")
    try:
        cli.check_writable(out.parent)
    except ValueError:
        raise ValueError(f"--out {out}: cannot write into {out.parent}") from None
    split = read_split(cfg.split)
    check_split(split, cfg.real, "--real")
    if not split["test"]:
        raise ValueError(f"{cfg.split}: the split has no test files to measure accuracy on")
    return shots, size, split


def run(cfg: AugmentConfig) -> dict:
    started = time.perf_counter()
    # ---- options, checked before any slow work ---------------------------------------------------------------------
    shots, (height, width), split = check_options(cfg)
    meta = simulator_metadata(cfg.real)
    axes = spectrogram_axes(meta, height, width, cfg.v_max, cfg.duration)
    filters = parse_filters(cfg.filters)
    if "physics" in filters and cfg.filters != "auto" and axes is None:
        raise ValueError("--filters physics needs --v-max and --duration (or the simulator's metadata.json in --real)")
    dynamic_range = cfg.dynamic_range or (meta["radar"]["dynamic_range_db"] if meta else 50.0)
    classic = ClassicAugment(time_scale=cfg.time_scale, doppler_shift=cfg.doppler_shift,
                             doppler_scale=cfg.doppler_scale, gain_db=cfg.gain_db, dynamic_range_db=dynamic_range)
    torch.set_num_threads(cfg.threads)

    # ---- data: the split's real parts and the synthetic samples, labelled with the split's user map --------------
    class_to_idx = split["class_to_idx"]
    load = dict(size=(height, width), resize=cfg.resize, channels=cfg.channels, npy_scale=cfg.npy_scale,
                colormap=None if cfg.colormap == "none" else cfg.colormap, dynamic_range_db=dynamic_range,
                class_to_idx=class_to_idx, cache=True)
    pool = SpectrogramFolder(cfg.real, subset=split["train"], **load)
    x_pool, y_pool = pool.tensors()
    pool_names = relative_names(cfg.real, pool.files)
    x_test, y_test = SpectrogramFolder(cfg.real, subset=split["test"], **load).tensors()
    x_val = y_val = None
    if split["val"]:
        x_val, y_val = SpectrogramFolder(cfg.real, subset=split["val"], **load).tensors()
    generated = SpectrogramFolder(cfg.generated, **load)
    x_gen, y_gen = generated.tensors()
    num_classes = len(class_to_idx)
    counts = np.bincount(y_pool.numpy(), minlength=num_classes)
    if counts.min() < shots[-1]:
        name = sorted(class_to_idx, key=class_to_idx.get)[int(counts.argmin())]
        raise ValueError(f"user {name} has only {counts.min()} train file(s) in the split; --shots goes up to "
                         f"{shots[-1]}")

    notes, sets = [], ["synthetic", *filters]
    if "margin" in sets and x_val is None:
        sets.remove("margin")
        notes.append("margin filter skipped: the split has no val files to choose its threshold on")
    if "physics" in sets and axes is None:
        sets.remove("physics")
        notes.append("physics filter skipped: no velocity/time axes (no simulator metadata.json in --real, no "
                     "--v-max/--duration)")
    if "physics" in sets:
        pool_physics = batch_physics_features(x_pool, axes, dynamic_range, cfg.threshold_db)
        gen_physics = batch_physics_features(x_gen, axes, dynamic_range, cfg.threshold_db)
    variants = [base + (f"+{s}" if s else "") for base in ("real", "classic") for s in ("", *sets)]
    classifier = ClassifierConfig(num_classes=num_classes, in_channels=cfg.channels,
                                  image_size=height if height == width else (height, width), epochs=cfg.epochs,
                                  min_steps=cfg.min_steps, batch_size=cfg.batch_size, lr=cfg.lr)

    # ---- loop: every (k, seed) trains every variant on the same shots from the same initialisation --------------
    from tqdm import tqdm
    runs = []
    bar = tqdm(total=len(shots) * cfg.seeds, desc="augmentation runs", disable=not cfg.progress)
    for k in shots:
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            bar.set_postfix(k=k, seed=seed)
            clf = replace(classifier, seed=seed)
            idx = draw_shots(y_pool.numpy(), k, seed)
            x_k, y_k = x_pool[idx], y_pool[idx]
            model = train_classifier(x_k, y_k, clf)
            acc, keep, threshold, physics_limits = {"real": accuracy(model, x_test, y_test)}, {}, None, None
            keep["synthetic"] = np.ones(len(y_gen), dtype=bool)
            if "margin" in sets:
                threshold = margin_threshold(class_margins(predict(model, x_val)[0], y_val), cfg.margin_quantile)
                keep["margin"] = margin_filter(predict(model, x_gen)[0], y_gen, threshold).numpy()
            if "physics" in sets:
                ranges = physics_ranges([pool_physics[i] for i in idx], y_k.numpy(), num_classes,
                                        cfg.physics_tolerance)
                keep["physics"] = physics_filter(gen_physics, y_gen.numpy(), ranges)
                physics_limits = {key: value.tolist() if isinstance(value, np.ndarray) else value
                                  for key, value in ranges.items()}
            for base, augment in (("real", None), ("classic", classic)):
                if base == "classic":
                    acc["classic"] = accuracy(train_classifier(x_k, y_k, clf, augment=augment), x_test, y_test)
                for name, mask in keep.items():
                    if not mask.any():                                  # nothing kept: the base training set
                        acc[f"{base}+{name}"] = acc[base]
                        continue
                    mask = torch.from_numpy(mask)
                    x_mix, y_mix = torch.cat([x_k, x_gen[mask]]), torch.cat([y_k, y_gen[mask]])
                    order = balanced_indices(y_mix, torch.Generator().manual_seed(seed))   # every person equally
                    model = train_classifier(x_mix[order], y_mix[order], clf, augment=augment)
                    acc[f"{base}+{name}"] = accuracy(model, x_test, y_test)
            kept = {v: int(keep[v.partition("+")[2]].sum()) if "+" in v else 0 for v in variants}
            runs.append({"shots": k, "seed": seed, "shot_files": [pool_names[i] for i in idx],
                         "margin_threshold": threshold, "physics_ranges": physics_limits,
                         "accuracy": acc, "kept": kept})
            bar.update()
    bar.close()

    # ---- summaries: mean and 95% CI over seeds; gains paired per seed ----------------------------------------------
    rows = []
    for k in shots:
        own = [r for r in runs if r["shots"] == k]
        for v in variants:
            accs = [r["accuracy"][v] for r in own]
            gain = summary([r["accuracy"][v] - r["accuracy"]["real"] for r in own])
            over_classic = summary([r["accuracy"][v] - r["accuracy"]["classic"] for r in own])
            acc_summary = summary(accs)
            rows.append({"shots": k, "variant": v, "accuracy": acc_summary["mean"], "accuracy_ci": acc_summary["ci"],
                         "gain": gain["mean"], "gain_ci": gain["ci"], "gain_over_classic": over_classic["mean"],
                         "gain_over_classic_ci": over_classic["ci"],
                         "kept": float(np.mean([r["kept"][v] for r in own])),
                         "kept_fraction": float(np.mean([r["kept"][v] for r in own])) / len(y_gen),
                         "per_seed_accuracy": accs})
    return {
        "format": FORMAT, "settings": {**asdict(cfg), "size": [height, width], "dynamic_range": dynamic_range},
        "shots": shots,
        "seeds": list(range(cfg.seed, cfg.seed + cfg.seeds)), "variants": variants,
        "class_to_idx": class_to_idx, "chance": 1 / num_classes,
        "counts": {"real_train_pool": len(y_pool), "real_val": 0 if y_val is None else len(y_val),
                   "real_test": len(y_test), "generated": len(y_gen),
                   "generated_per_user": {name: int((y_gen == i).sum()) for name, i in class_to_idx.items()}},
        "classifier": {key: v for key, v in asdict(classifier).items() if key != "seed"},
        "classic_augment": asdict(classic),
        "filters": {
            "margin": {"used": "margin" in sets, "quantile": cfg.margin_quantile, "floor": 0.0,
                       "rule": "keep when p(requested) - max p(other) > max(0, the quantile of the margins real val "
                               "samples get for their true person), from the classifier trained on the k shots"},
            "physics": {"used": "physics" in sets, "tolerance_pooled_std": cfg.physics_tolerance,
                        "threshold_db": cfg.threshold_db,
                        "rule": "keep when torso velocity and cadence lie within the requested person's range over "
                                "the k shots, widened by tolerance x the pooled within-person std"}},
        "notes": notes, "rows": rows, "runs": runs,
        "real_test_files": list(split["test"]), "real_val_files": list(split["val"]),
        "seconds": time.perf_counter() - started,
    }


def run_and_report(cfg: AugmentConfig) -> int:
    """Run the experiment, write the plot and then the results, print the table."""
    out = Path(cfg.out)
    png = out.with_suffix(".png")
    threads = torch.get_num_threads()                                   # run() sets --threads; restored after
    try:
        result = run(cfg)
    finally:
        torch.set_num_threads(threads)
    result["png"] = str(png)
    result = json_safe(result)
    plot_accuracy(result["rows"], result["variants"], result["chance"], png)
    text = json.dumps(result, indent=1, allow_nan=False)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))     # the results last
    print_table(result["rows"])
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\n{len(result['runs'])} runs in {result['seconds']:.0f} s; wrote {out} and {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse_config(AugmentConfig, argv, __doc__.split("\n\n")[0])
    return cli.run_main(run_and_report, cfg, prog="augment.py")


if __name__ == "__main__":
    sys.exit(main())
