"""Identity evaluation of generated spectrograms against held-out real ones (docs/evaluation.md).

    python evaluate.py --real DIR --split RUN/split.json --generated SAMPLES --out report.json
    python evaluate.py --real DIR --real-test TEST_DIR --generated SAMPLES --out report.json

Folders are ROOT/<user>/<files> (PNG/JPEG/.npy, see ldm/data.py); generated samples sit in the folder of the user
they were requested for, with the real data's user folder names. Every real figure is measured on real test files
that no generator trained on: split["test"] of the split.json the training runs wrote (checked against --real), or
all of --real-test (then all of --real is training data). Without either the evaluation refuses to run. Steps:
  1. the real data: the classifier's training files (split train + val, or all of --real), the generators'
     training files (split train, or all of --real) and the real test files; test files whose pixels equal a
     training file's are dropped and listed; a generator whose provenance (sample.py's record GENERATED.json)
     names a test file among those it trained or enrolled on is refused, naming the file;
  2. the evaluation CNN, trained on the real training files (or loaded with --classifier PATH, only if it records
     that it was trained on exactly these files; a missing PATH is trained and then saved there);
  3. accuracies, overall (95% intervals that resample persons) and per user (Wilson): real test (the ceiling),
     train-on-real-test-on-generated (TRTS) with mean confidence, confusion matrix (also a PNG) and
     condition-control ratio, and train-on-generated-test-on-real (TSTR: a fresh CNN, same recipe, trained on
     generated only);
  4. Frechet distance and KID in a --pca-dims projection of the CNN's penultimate features: generated vs real test
     half B, next to the floor real test half A vs half B at the same n and user mix, with bootstrap intervals;
  5. memorisation: each generated sample's distance to its nearest generator-training sample (CNN features and
     pixels), relative to the same distance of real test samples;
  6. for simulator data (DIR/metadata.json from ldm.radar.simulator) or with --v-max/--duration: per-user physics
     (torso velocity, Doppler envelopes, bandwidth, cadence), mean and spread, real test vs generated vs truth;
  7. the report: where the test files came from (and their names), overall and per-user figures.
Prints a table, writes the confusion-matrix PNG and then the JSON report (each atomically; the report records
every option as resolved). Every option is checked and the output folders tested for writing before any work; bad
input exits with status 2 and one line. No output may be, contain or lie inside an input (--real, --generated, the
split file, --real-test, an existing --classifier), and no two outputs may share a path (--confusion-png equal to
--out): a report never overwrites the split it was measured with.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ldm import cli
from ldm.data import SpectrogramFolder, common_size, parse_size, relative_names, scan_folder
from ldm.splits import check_split, files_digest, read_split, split_indices
from ldm.files import atomic_write, check_outputs_apart, read_json
from ldm.pipeline import check_provenance, file_record
from ldm.radar.identity import (ClassifierConfig, classifier_trained_on, condition_control_ratio, load_classifier,
                                predict, save_classifier, train_classifier)
from ldm.radar.physics import batch_physics_features, simulator_metadata, spectrogram_axes
from ldm.metrics import (bootstrap, frechet_distance, json_safe, memorisation_ratios, memorisation_summary,
                         mmd2_unbiased, nearest_neighbour_distances, pca_basis, percentile_interval, wilson_interval,
                         clustered_proportion)
from ldm.cli import option

NO_TEST_SET = ("no held-out real test set: pass --split RUN/split.json (the split the generators trained with) or "
               "--real-test DIR (real files no generator saw); figures measured on real files a generator trained "
               "on reward copying")
# Two decoded images count as one file when their RMS difference is below one 8-bit grey level (2/255 in [-1, 1]):
# a .png and the .npy it was written from differ by up to half a level.
SAME_PIXELS_RMS = 2 / 255


@dataclass
class EvaluateConfig:
    real: str | None = option(None, "real (or simulated) data: DIR/<user>/<files> (required)")
    generated: str | None = option(None, "generated samples: DIR/<requested user>/<files> (required)")
    split: str | None = option(None, "split.json (or a run folder holding one) made for --real: the classifier "
                                     "trains on its train + val files, figures use its test")
    real_test: str | None = option(None, "real test folder DIR/<user>/<files> no generator saw, labelled with "
                                         "--real's users; all of --real is training data")
    out: str = option("report.json", "JSON report path")
    confusion_png: str | None = option(None, "confusion-matrix image (default: <out>_confusion.png)")
    size: str | None = option(None, "the classifier's input: N (N x N) or HxW (height x width), each side >= 16 "
                                    "(default: the size of the real files, the most common one if they differ)")
    resize: str = cli.resize_option()
    channels: int = option(1, "1: grayscale (RGB -> luma), 3: RGB", choices=(1, 3))
    colormap: str = cli.colormap_option()
    npy_scale: str = cli.npy_scale_option()
    dynamic_range: float | None = option(None, "dB range mapped to [-1, 1] (default: the simulator's metadata.json "
                                               "value, else 50)", above=0)
    seed: int = option(0, "seeds the classifiers, the test halves and the bootstrap", at_least=0, below=2**63)
    epochs: int = option(30, "classifier training epochs", at_least=0)
    min_steps: int = option(240, "classifier optimizer steps at least (small data sets)", at_least=0)
    batch_size: int = option(32, "classifier batch size", at_least=2)
    lr: float = option(2e-3, "classifier learning rate (AdamW, cosine decay)", above=0)
    classifier: str | None = option(None, "load the real-data classifier from this .safetensors (it must record the "
                                          "same training files), or train it and save it there when the file does "
                                          "not exist")
    pca_dims: int = option(16, "Frechet distance and KID use this many principal axes of the real training "
                               "features", at_least=1)
    bootstrap: int = option(200, "bootstrap resamples for the distance intervals and the overall accuracies' "
                                 "person-clustered intervals", at_least=10)
    physics: str = option("auto", "physics checks: auto = when --real holds the simulator's metadata.json or --v-max "
                                  "is given", choices=("auto", "on", "off"))
    v_max: float | None = option(None, "velocity span of the image rows is [-v_max, v_max] m/s", above=0)
    duration: float | None = option(None, "seconds spanned by the image columns", above=0)
    threshold_db: float = option(-25.0, "physics: body pixels are within this many dB of the image max", below=0)
    skip_bad: bool = option(False, "skip unreadable files (their count is reported)")
    quiet: bool = option(False, "no progress bars")


# ----------------------------------------------------------------------------------------------------------------
# Report helpers
# ----------------------------------------------------------------------------------------------------------------
def accuracy(correct: np.ndarray) -> dict | None:
    """One person's accuracy: {"value": share correct, "ci": 95% Wilson interval, "n": trials} of a boolean array;
    None when empty."""
    if len(correct) == 0:
        return None
    return {"value": float(np.mean(correct)), "ci": list(wilson_interval(int(np.sum(correct)), len(correct))),
            "n": len(correct)}


def clustered_accuracy(correct: np.ndarray, person: np.ndarray, resamples: int, seed: int) -> dict | None:
    """An accuracy over several persons: {"value", "ci", "n", "persons"}, the 95% interval a percentile bootstrap
    that resamples persons, each with all their files or samples (ldm.metrics.clustered_proportion). The files of
    one person share that person's walk and the samples of one requested person share its conditioning, so they are
    not independent trials and a Wilson interval over all of them would be too narrow. None when empty."""
    if len(correct) == 0:
        return None
    people = np.unique(person)
    hits = np.array([np.sum(correct[person == p]) for p in people])
    totals = np.array([np.sum(person == p) for p in people])
    value, low, high = clustered_proportion(hits, totals, resamples, seed)
    return {"value": value, "ci": [low, high], "n": len(correct), "persons": len(people)}


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: rows = requested user, columns = predicted user."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


def save_confusion_png(matrix: np.ndarray, classes: list[str], path: str) -> None:
    """Row-normalised confusion matrix as a white-to-blue grid with counts, requested users as rows (atomically)."""
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
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def physics_by_user(x: torch.Tensor, labels: np.ndarray, axes, dynamic_range: float, threshold_db: float) -> dict:
    """Per user and physics feature: {"mean", "std" (over samples, ddof 1), "n"} of the samples where the feature
    could be measured. x: (N, C, H, W) in [-1, 1], mapped back to dB."""
    feats = batch_physics_features(x, axes, dynamic_range, threshold_db)
    out = {}
    for k in np.unique(labels):
        rows = [f for f, lab in zip(feats, labels) if lab == k]
        out[int(k)] = {}
        for name in rows[0]:
            v = np.array([r[name] for r in rows if np.isfinite(r[name])])
            out[int(k)][name] = {"mean": float(v.mean()) if len(v) else float("nan"),
                                 "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": len(v)}
    return out


def _fig(f: dict | None, digits: int = 2) -> str:
    """'value [low,high]'; '-' for a missing figure or interval (null in the report)."""
    if f is None or f["value"] is None:
        return "-"
    ci = "-" if None in f["ci"] else f"{f['ci'][0]:.{digits}f},{f['ci'][1]:.{digits}f}"
    return f"{f['value']:.{digits}f} [{ci}]"


def _num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(report: dict) -> None:
    s = report["split"]
    print(f"\nreal test: {report['counts']['real_test']} files from {s['from']} {s['path']} (no generator trained on "
          f"them); intervals are 95% (overall accuracies: bootstrap over persons; per user: Wilson; distances, "
          "memorisation: bootstrap)")
    print(f"\n{'user':<12}{'real acc':>17}{'TRTS acc':>17}{'TSTR acc':>17}{'conf':>6}{'CCR':>7}{'near':>6}{'n gen':>6}")
    for user, row in report["per_user"].items():
        near = row["fraction_close_to_train"]
        print(f"{user[:11]:<12}{_fig(row['real_test_accuracy']):>17}{_fig(row['trts_accuracy']):>17}"
              f"{_fig(row['tstr_accuracy']):>17}{_num(row['mean_confidence'], '.2f'):>6}{_num(row['ccr'], '.1f'):>7}"
              f"{_num(near and near['features'], '.2f'):>6}{row['generated']:>6}")
    o, d = report["overall"], report["distances"]
    print(f"\noverall: real-test accuracy {_fig(o['real_test_accuracy'], 3)} | TRTS {_fig(o['trts_accuracy'], 3)} "
          f"(mean confidence {o['mean_confidence']:.3f}) | TSTR {_fig(o['tstr_accuracy'], 3)} | mean CCR "
          f"{_num(o['mean_ccr'], '.2f')}")
    print(f"distances in {d['dims']} principal axes of the classifier's features, n = {d['n']} per set:")
    for name, digits in (("fd", 3), ("kid", 4)):
        print(f"  {'Frechet distance' if name == 'fd' else 'KID':<17}{_fig(d[name], digits):>24}   real-vs-real floor "
              f"{_fig(d[name + '_floor'], digits):>24}   difference {_fig(d[name + '_minus_floor'], digits)}")
    m = report["memorisation"]
    print("memorisation (distance to the nearest generator-training sample / real test samples' median):")
    for space in ("features", "pixels"):
        r, q = m[space], m[space]["generated_ratio_quantiles"]
        print(f"  {space:<9} ratio p05 {q['p05']:.2f}, p50 {q['p50']:.2f}, p95 {q['p95']:.2f}; "
              f"{r['fraction_closer']:.1%} [{r['fraction_closer_ci'][0]:.1%}, {r['fraction_closer_ci'][1]:.1%}] closer "
              f"than 95% of real test samples (about 5% if honest)"
              + ("   <- COPYING SUSPECTED" if r["copying_suspected"] else ""))
    if "physics" in report:
        print(f"\n{'physics':<12}{'V true':>7}{'V real':>12}{'V gen':>12}{'cad true':>9}{'cad real':>12}{'cad gen':>12}"
              "   (mean+-std over samples; m/s, steps/s)")
        for user, row in report["physics"]["per_user"].items():
            def cell(side, key):
                f = row[side].get(key)
                return "-" if f is None or f["mean"] is None else f"{f['mean']:.2f}+-{_num(f['std'], '.2f')}"
            truth = row.get("truth", {})
            print(f"{user[:11]:<12}{_num(truth.get('speed_mps'), '.2f'):>7}"
                  f"{cell('real_test', 'torso_velocity_mps'):>12}{cell('generated', 'torso_velocity_mps'):>12}"
                  f"{_num(truth.get('cadence_steps_per_s'), '.2f'):>9}"
                  f"{cell('real_test', 'cadence_steps_per_s'):>12}{cell('generated', 'cadence_steps_per_s'):>12}")
        ratio = report["physics"]["spread_ratio"]
        print("generated / real spread (median over users of the std ratio): "
              + ", ".join(f"{k} {_num(v, '.2f')}" for k, v in ratio.items()))


# ----------------------------------------------------------------------------------------------------------------
# Steps 4 and 6: distances with their floor, the physics table
# ----------------------------------------------------------------------------------------------------------------
def distances_with_floor(z_test: torch.Tensor, y_test: torch.Tensor, test_names: list[str], z_gen: torch.Tensor,
                         y_gen: torch.Tensor, num_resamples: int, seed: int) -> dict:
    """Frechet distance and KID of generated vs real test half B, next to the floor real test half A vs B.

    z_test: (T, dims), z_gen: (N, dims) features; y_test, y_gen: their users. The real test files are halved per
    user (seeded). Every generated user with at least two samples in A and in B takes part, with as many generated
    samples as it has in A: the generated set and A then have the same size and user mix, so FD's small-n bias is
    the same for both, and the floor shows how far two real sets of that size are apart. KID is the user-balanced
    unbiased MMD^2 (ldm.metrics.mmd2_unbiased). Intervals: a bootstrap that resamples all three sets within users
    (FD's shifted by the resampling bias and cut at 0; see percentile_interval); *_minus_floor is the paired
    difference, resample by resample."""
    yt, yg = y_test.numpy(), y_gen.numpy()
    halves = split_indices([Path(n) for n in test_names], list(yt), 0.0, 0.5, seed + 1)
    a_idx, b_idx = np.array(halves["test"], dtype=np.int64), np.array(halves["train"], dtype=np.int64)
    rng = np.random.default_rng(seed)
    pick_a, pick_b, pick_gen = [], [], []
    for j in np.unique(yg):
        own_a, own_b, own_gen = a_idx[yt[a_idx] == j], b_idx[yt[b_idx] == j], np.flatnonzero(yg == j)
        m = min(len(own_a), len(own_gen))
        if m >= 2 and len(own_b) >= 2:
            pick_a, pick_b = pick_a + list(own_a[:m]), pick_b + list(own_b)
            pick_gen += list(rng.permutation(own_gen)[:m])
    if not pick_a:
        raise ValueError("distances need a user with >= 4 real test samples and >= 2 generated ones; none has")
    a, b, g = z_test[pick_a], z_test[pick_b], z_gen[pick_gen]               # (n, dims), (n_B, dims), (n, dims)
    la, lb, lg = y_test[pick_a], y_test[pick_b], y_gen[pick_gen]

    def distances_of(ig: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor) -> tuple[float, ...]:
        """FD and KID of generated vs B and of A vs B on the positions ig, ia, ib (all, or a bootstrap resample)."""
        kid_gen = mmd2_unbiased(g[ig], b[ib], lg[ig], lb[ib], a_ids=ig, b_ids=ib)
        kid_real = mmd2_unbiased(a[ia], b[ib], la[ia], lb[ib], a_ids=ia, b_ids=ib)
        return frechet_distance(g[ig], b[ib]), frechet_distance(a[ia], b[ib]), kid_gen, kid_real

    fd, fd_floor, kid, kid_floor = distances_of(torch.arange(len(g)), torch.arange(len(a)), torch.arange(len(b)))
    boot = bootstrap(distances_of, [lg, la, lb], num_resamples, torch.Generator().manual_seed(seed))

    def figure(value: float, column: np.ndarray, shift: bool, nonnegative: bool = False) -> dict:
        low, high = percentile_interval(column, estimate=value if shift else None)
        return {"value": value, "ci": [max(low, 0.0) if nonnegative else low, high]}

    return {"n": len(g), "n_reference": len(b), "users": len(torch.unique(lg)),
            "bootstrap_resamples": num_resamples, "bootstrap_valid": int(np.isfinite(boot).all(axis=1).sum()),
            "fd": figure(fd, boot[:, 0], shift=True, nonnegative=True),
            "fd_floor": figure(fd_floor, boot[:, 1], shift=True, nonnegative=True),
            "fd_minus_floor": figure(fd - fd_floor, boot[:, 0] - boot[:, 1], shift=True),
            "kid": figure(kid, boot[:, 2], shift=False),
            "kid_floor": figure(kid_floor, boot[:, 3], shift=False),
            "kid_minus_floor": figure(kid - kid_floor, boot[:, 2] - boot[:, 3], shift=False)}


def physics_table(x_test: torch.Tensor, y_test: np.ndarray, x_gen: torch.Tensor, y_gen: np.ndarray,
                  classes: list[str], axes, meta: dict | None, dynamic_range: float, threshold_db: float) -> dict:
    """Per user: the physics features' mean, std and count over real test and over generated samples, and for
    simulator data the truth (walking speed, cadence). spread_ratio: per feature, the median over users of
    generated std / real std (well below 1: the generator's samples vary less than real walks do)."""
    real_phys = physics_by_user(x_test, y_test, axes, dynamic_range, threshold_db)
    gen_phys = physics_by_user(x_gen, y_gen, axes, dynamic_range, threshold_db)
    rows, ratios = {}, {}
    people = meta.get("people", []) if meta is not None else []       # ldm.radar's metadata has no ground truth
    for j, name in enumerate(classes):
        row = {"real_test": real_phys.get(j, {}), "generated": gen_phys.get(j, {})}
        if j < len(people) and people[j]["user"] == name:
            row["truth"] = {"speed_mps": people[j]["speed_mps"],
                            "cadence_steps_per_s": people[j]["cadence_steps_per_s"]}
        for key in row["real_test"]:
            if key in row["generated"]:                                 # a std of 0 or nan gives no ratio
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.float64(row["generated"][key]["std"]) / row["real_test"][key]["std"]
                ratios.setdefault(key, []).append(ratio)
        rows[name] = row
    spread = {}
    for key, values in ratios.items():
        finite = [v for v in values if np.isfinite(v)]
        spread[key] = float(np.median(finite)) if finite else float("nan")
    return {"threshold_db": threshold_db, "per_user": rows, "spread_ratio": spread}


# ----------------------------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------------------------
def output_paths(cfg: EvaluateConfig) -> tuple[Path, Path]:
    """The report and the confusion-matrix PNG (default: beside the report)."""
    out = Path(cfg.out)
    return out, Path(cfg.confusion_png or out.with_name(out.stem + "_confusion.png"))


def check_options(cfg: EvaluateConfig) -> tuple[tuple[int, int], dict | None, dict | None]:
    """Every check that needs no data: ((height, width), the split or None, the simulator metadata or None).
    Also tests that the report, the PNG and a classifier to be saved can be written."""
    for name in ("real", "generated"):
        if getattr(cfg, name) is None:
            raise ValueError(f"--{name} is required")
    if cfg.split is None and cfg.real_test is None:
        raise ValueError(NO_TEST_SET)
    if cfg.split is not None and cfg.real_test is not None:
        raise ValueError("give --split or --real-test, not both (one source of real test files)")
    if cfg.size is not None:
        size = parse_size(cfg.size, "--size")
        if min(size) < 16:
            raise ValueError(f"--size {cfg.size}: each side must be >= 16 (the classifier pools 4 times)")
    else:                                                               # the data's own size
        size = common_size(scan_folder(cfg.real)[0])
        if min(size) < 16:
            raise ValueError(f"--real {cfg.real}: its files are {size[0]}x{size[1]}, but the classifier needs each "
                             "side >= 16 (it pools 4 times); pass --size 16 --resize pad (or a larger --size with "
                             "--resize pad)")
    if (cfg.v_max is None) != (cfg.duration is None):
        raise ValueError("--v-max and --duration go together (the image's velocity span and time span)")
    meta = simulator_metadata(cfg.real)
    if cfg.physics == "on" and cfg.v_max is None and meta is None:
        raise ValueError("--physics on needs --v-max and --duration (or the simulator's metadata.json in --real)")
    out, png = output_paths(cfg)
    split_file = None if cfg.split is None else Path(cfg.split) / "split.json" if Path(cfg.split).is_dir() \
        else Path(cfg.split)
    saved = cfg.classifier is not None and Path(cfg.classifier).exists()     # read, else trained and written
    check_outputs_apart({"--out": out, "--confusion-png": png, "--classifier": None if saved else cfg.classifier},
                        {"--real": cfg.real, "--generated": cfg.generated, "--split": split_file,
                         "--real-test": cfg.real_test, "--classifier": cfg.classifier if saved else None})
    for flag, path in (("--out", out), ("--confusion-png", png), ("--classifier", cfg.classifier)):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"{flag} {path} is a folder, not a file")
    for flag, path in (("--out", out), ("--confusion-png", png)):
        _check_folder(flag, path)
    if cfg.classifier is not None and not Path(cfg.classifier).exists():
        _check_folder("--classifier", Path(cfg.classifier))         # trained, then saved there
    split = read_split(cfg.split) if cfg.split is not None else None
    if split is not None:
        check_split(split, cfg.real, what="--real")                      # the folder the split was made for
    return size, split, meta


def _check_folder(flag: str, path: Path) -> None:
    """ValueError naming the option when nothing can be written into the folder of ``path``."""
    try:
        cli.check_writable(path.parent)
    except ValueError:
        raise ValueError(f"{flag} {path}: cannot write into {path.parent}") from None


def generator_provenance(generated: str, test_names: list[str]) -> dict:
    """Check what the generator of --generated saw: sample.py's record GENERATED.json beside the folder holds its
    pipeline's provenance (ldm.pipeline.check_provenance). A generator that saw a test file is refused, naming the
    file; without a record or a provenance in it the check cannot be made, and the report says so (a pipeline
    enrolled into one without provenance: only its enrolment files are checked)."""
    folder = Path(generated).resolve()
    record_path = folder.with_name(folder.name + ".json")
    record = read_json(record_path) if record_path.is_file() else {}
    provenance = record.get("provenance")
    if provenance is None or provenance.get("trained_on") is None:
        print(f"evaluate.py: the provenance of {generated} is unknown (no {record_path.name} from sample.py beside it, "
              "or its pipeline records no provenance.json): nothing shows that its generator never saw a test file",
              file=sys.stderr)
    if provenance is None:
        return {"record": str(record_path) if record else None, "checked": False}
    known = provenance["trained_on"] is not None
    try:
        check_provenance(provenance if known else {**provenance, "trained_on": file_record([])}, set(test_names))
    except ValueError as error:
        raise ValueError(f"--generated {generated} ({record_path.name}): {error}") from None
    return {"record": str(record_path), "checked": known,
            "trained_on_sha256": provenance["trained_on"]["sha256"] if known else None,
            "enrolled": {person: entry["sha256"] for person, entry in provenance["enrolled"].items()}}


def evaluate(cfg: EvaluateConfig) -> dict:
    (height, width), split, meta = check_options(cfg)                   # before any slow work
    dynamic_range = cfg.dynamic_range or (meta["radar"]["dynamic_range_db"] if meta else 50.0)
    load = dict(size=(height, width), resize=cfg.resize, channels=cfg.channels, npy_scale=cfg.npy_scale,
                colormap=None if cfg.colormap == "none" else cfg.colormap, dynamic_range_db=dynamic_range,
                skip_bad=cfg.skip_bad, cache=True)

    # 1. Real data: the classifier's training files (fit), the generators' training files (the memorisation
    #    reference) and the test files; generated samples labelled with the real class map.
    real = SpectrogramFolder(cfg.real, **load)
    if len(real.classes) < 2:
        raise ValueError(f"{cfg.real} needs at least two user folders to evaluate identity")
    x_real, y_real = real.tensors()
    names = relative_names(real.root, real.files)
    if split is not None:
        part = {name: key for key in ("train", "val", "test") for name in split[key]}
        fit = torch.tensor([part[n] in ("train", "val") for n in names])
        ref = torch.tensor([part[n] == "train" for n in names])
        test = torch.tensor([part[n] == "test" for n in names])
        if not test.any():
            raise ValueError(f"the split {cfg.split} has no test files (made with test_fraction 0?)")
        x_test, y_test, test_names = x_real[test], y_real[test], [n for n, t in zip(names, test) if t]
        x_fit, y_fit, fit_names, x_ref = x_real[fit], y_real[fit], [n for n, f in zip(names, fit) if f], x_real[ref]
        source = {"from": "--split", "path": str(cfg.split), "files_sha256": split["files_sha256"],
                  "seed": split.get("seed"), "test_fraction": split.get("test_fraction"),
                  "val_fraction": split.get("val_fraction"), "group_regex": split.get("group_regex"),
                  "classifier_trained_on": "split train + val", "generators_trained_on": "split train"}
    else:
        test_set = SpectrogramFolder(cfg.real_test, class_to_idx=real.class_to_idx, **load)
        x_test, y_test = test_set.tensors()
        test_names = relative_names(test_set.root, test_set.files)
        x_fit, y_fit, fit_names, x_ref = x_real, y_real, names, x_real
        source = {"from": "--real-test", "path": str(cfg.real_test), "classifier_trained_on": "all of --real",
                  "generators_trained_on": "all of --real (assumed)"}
    gen = SpectrogramFolder(cfg.generated, class_to_idx=real.class_to_idx, **load)   # a bad folder: one line first
    x_gen, y_gen = gen.tensors()
    provenance = generator_provenance(cfg.generated, test_names)       # refuses a generator that saw a test file
    # A test file with the pixels of a training file (a duplicate, or a .png next to its .npy) is not held out.
    same = nearest_neighbour_distances(x_test, x_fit) < SAME_PIXELS_RMS * x_test[0].numel() ** 0.5
    dropped = [n for n, s in zip(test_names, same.tolist()) if s]
    if dropped:
        print(f"evaluate.py: {len(dropped)} real test file(s) have the pixels of a training file and are left out, "
              f"e.g. {dropped[0]}", file=sys.stderr)
        x_test, y_test = x_test[~same], y_test[~same]
        test_names = [n for n in test_names if n not in dropped]
        if len(test_names) == 0:
            raise ValueError("every real test file has the pixels of a training file: nothing is held out")
    k, classes = len(real.classes), real.classes
    recipe = ClassifierConfig(num_classes=k, in_channels=cfg.channels,
                              image_size=height if height == width else (height, width), epochs=cfg.epochs,
                              min_steps=cfg.min_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)

    # 2. The evaluation classifier, trained on the real training files only. A saved one is reused only if it
    #    records exactly these training files, so it cannot have trained on this evaluation's test files.
    trained_on = {"fit_files_sha256": files_digest(fit_names), "num_fit_files": len(fit_names),
                  "split_files_sha256": split["files_sha256"] if split is not None else None}
    if cfg.classifier and Path(cfg.classifier).is_file():
        try:
            model, saved_map = load_classifier(cfg.classifier)
            saved_on = classifier_trained_on(cfg.classifier)
        except ValueError as error:
            raise ValueError(f"--classifier {error}") from None
        if saved_on is None:
            raise ValueError(f"{cfg.classifier} does not record which files it was trained on; delete it so it is "
                             "retrained on this split's training files")
        if saved_on.get("fit_files_sha256") != trained_on["fit_files_sha256"]:
            raise ValueError(f"{cfg.classifier} was trained on other files ({saved_on.get('num_fit_files')} of them) "
                             f"than this evaluation's {len(fit_names)} real training files (another split?), so it "
                             "may have seen the test files; delete it or pass another --classifier path")
        if saved_map != real.class_to_idx:
            raise ValueError(f"{cfg.classifier} was trained on users {sorted(saved_map)}, "
                             f"not {sorted(real.class_to_idx)}")
        if model.cfg.in_channels != cfg.channels:
            raise ValueError(f"{cfg.classifier} takes {model.cfg.in_channels} channel(s), "
                             f"not --channels {cfg.channels}")
    else:
        model = train_classifier(x_fit, y_fit, recipe, progress=not cfg.quiet)
        if cfg.classifier:
            save_classifier(model, cfg.classifier, real.class_to_idx, trained_on=trained_on)

    # 3. Accuracies: real test, train-on-real-test-on-generated (TRTS), train-on-generated-test-on-real (TSTR, only
    #    the users that were generated).
    p_test, f_test = predict(model, x_test)
    p_gen, f_gen = predict(model, x_gen)
    yt, yg = y_test.numpy(), y_gen.numpy()
    pred_test, pred_gen = p_test.argmax(1).numpy(), p_gen.argmax(1).numpy()
    confidence = p_gen[torch.arange(len(yg)), y_gen].numpy()          # probability of the requested user
    ccr = condition_control_ratio(pred_gen, yg, k)
    matrix = confusion_matrix(pred_gen, yg, k)
    tstr_model = train_classifier(x_gen, y_gen, recipe, progress=not cfg.quiet)
    covered = np.isin(yt, np.unique(yg))
    tstr_pred = np.full(len(yt), -1)
    tstr_pred[covered] = predict(tstr_model, x_test[torch.from_numpy(covered)])[0].argmax(1).numpy()

    # 4. Frechet distance and KID in a --pca-dims projection of the penultimate features (axes and one scale from
    #    the real training features): generated vs real test half B, next to the floor real test half A vs B.
    f_fit = predict(model, x_fit)[1]
    mean, axes = pca_basis(f_fit, cfg.pca_dims)
    scale = ((f_fit.double() - mean) @ axes.T).pow(2).mean().sqrt().clamp_min(1e-12)
    z_test, z_gen = (f_test.double() - mean) @ axes.T / scale, (f_gen.double() - mean) @ axes.T / scale   # (., dims)
    distances = {
        "features": f"EvalCNN penultimate features ({model.cfg.feature_dim}-d, real-trained), projected on the "
                    f"{axes.shape[0]} leading principal axes of the real training features, divided by their RMS",
        "dims": axes.shape[0],
        **distances_with_floor(z_test, y_test, test_names, z_gen, y_gen, cfg.bootstrap, cfg.seed)}

    # 5. Memorisation: each sample's distance to its nearest generator-training sample, relative to the median such
    #    distance of real test samples; the share of generated samples closer than 95% of real test samples are.
    f_ref = predict(model, x_ref)[1]
    memorisation = {"reference": source["generators_trained_on"], "n_reference": len(x_ref)}
    close = {}
    for space, (q_gen, q_test, q_ref) in (("features", (f_gen, f_test, f_ref)), ("pixels", (x_gen, x_test, x_ref))):
        gen_ratios, test_ratios = memorisation_ratios(q_gen, q_test, q_ref)
        memorisation[space] = memorisation_summary(gen_ratios, test_ratios,
                                                   generator=torch.Generator().manual_seed(cfg.seed))
        close[space] = gen_ratios < memorisation[space]["threshold_ratio"]

    # 6. Physics checks: mean and spread per user, real test vs generated (vs the simulator's truth).
    axes_md = spectrogram_axes(meta, x_real.shape[-2], x_real.shape[-1], cfg.v_max, cfg.duration)
    physics = None
    if cfg.physics != "off" and axes_md is not None:
        physics = physics_table(x_test, yt, x_gen, yg, classes, axes_md, meta, dynamic_range, cfg.threshold_db)

    # 7. The report: where the test files came from, overall and per-user figures.
    per_user = {}
    for j, name in enumerate(classes):
        own, own_test = yg == j, yt == j
        per_user[name] = {
            "real_test_accuracy": accuracy(pred_test[own_test] == j),
            "trts_accuracy": accuracy(pred_gen[own] == j),
            "tstr_accuracy": accuracy(tstr_pred[own_test] == j) if own.any() else None,
            "mean_confidence": float(confidence[own].mean()) if own.any() else None,
            "ccr": ccr.get(j), "generated": int(own.sum()),
            "fraction_close_to_train": {s: float(c[own].mean()) for s, c in close.items()} if own.any() else None}
    report = {
        "options": {**asdict(cfg), "size": [height, width], "dynamic_range": dynamic_range},
        "real": str(cfg.real), "generated": str(cfg.generated), "class_to_idx": real.class_to_idx,
        "split": source, "real_test_files": test_names, "real_test_dropped_as_duplicates": dropped,
        "generator_provenance": provenance,
        "counts": {"real_classifier_train": len(fit_names), "real_generator_train": len(x_ref),
                   "real_test": len(test_names), "generated": len(yg),
                   "skipped_real": len(real.skipped), "skipped_generated": len(gen.skipped)},
        "classifier": {**vars(model.cfg), "loaded_from": cfg.classifier, "trained_on": trained_on},
        "overall": {"real_test_accuracy": clustered_accuracy(pred_test == yt, yt, cfg.bootstrap, cfg.seed),
                    "trts_accuracy": clustered_accuracy(pred_gen == yg, yg, cfg.bootstrap, cfg.seed),
                    "tstr_accuracy": clustered_accuracy(tstr_pred[covered] == yt[covered], yt[covered],
                                                        cfg.bootstrap, cfg.seed),
                    "mean_confidence": float(confidence.mean()),
                    "mean_ccr": float(np.mean(list(ccr.values()))) if ccr else None},
        "per_user": per_user,
        "confusion_matrix": {"rows": "requested", "columns": "predicted", "counts": matrix.tolist()},
        "distances": distances,
        "memorisation": memorisation,
    }
    if physics is not None:
        report["physics"] = physics
    return report


def run(cfg: EvaluateConfig) -> int:
    """Evaluate, write the confusion picture and then the report, print the table."""
    out, png = output_paths(cfg)
    report = evaluate(cfg)
    report["confusion_png"] = str(png)
    report = json_safe(report)
    save_confusion_png(np.array(report["confusion_matrix"]["counts"]), list(report["per_user"]), str(png))
    text = json.dumps(report, indent=1, allow_nan=False)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))     # the report last
    print_table(report)
    print(f"\nwrote {out} and {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse_config(EvaluateConfig, argv, __doc__.split("\n\n")[0])
    return cli.run_main(run, cfg, prog="evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
