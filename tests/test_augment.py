"""ldm/augment.py against closed forms, and augment.py end to end on small simulated folders: held-back simulator
samples as an ideal "generator", the same samples under shuffled labels as a harmful one, and the bad-input exits."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import augment
from ldm.radar import simulator as md
from ldm.radar.augment import (ClassicAugment, class_margins, margin_filter, margin_threshold, physics_filter,
                               physics_ranges)
from ldm.data import make_split, write_split

pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py

STILL = dict(time_shift=False, time_scale=0.0, doppler_shift=0.0, doppler_scale=0.0, gain_db=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Classic augmentation
# ----------------------------------------------------------------------------------------------------------------
def test_classic_augment_keeps_shape_and_range_and_follows_the_generator():
    x = torch.rand(6, 1, 32, 24) * 2 - 1
    aug = ClassicAugment(time_scale=0.1, doppler_shift=0.05, doppler_scale=0.1, gain_db=10.0)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(3)
    aug(x, gen)
    assert gen.get_state().ne(torch.Generator().manual_seed(3).get_state()).any()   # it drew from the generator
    assert torch.equal(ClassicAugment(**STILL)(x, gen), x)               # all amounts zero: unchanged


def test_classic_augment_transforms_match_closed_forms():
    gen = torch.Generator().manual_seed(0)
    # Time shift alone: a 1-column line moves as a whole to one or two adjacent columns (linear interpolation,
    # wrapping around), by its own amount in each sample; nothing is lost.
    x = torch.full((4, 1, 16, 20), -1.0)
    x[:, :, :, 3] = 0.2
    shifted = ClassicAugment(**{**STILL, "time_shift": True})(x, gen) + 1                  # (4, 1, 16, 20) >= 0
    assert torch.allclose(shifted.sum(dim=(1, 2, 3)), (x + 1).sum(dim=(1, 2, 3)))
    columns = []
    for sample in shifted[:, 0]:
        lit = torch.nonzero(sample.sum(0) > 1e-5)[:, 0].tolist()
        assert len(lit) <= 2 and (len(lit) == 1 or lit[1] - lit[0] in (1, 19))   # adjacent (19 and 0 too)
        assert torch.allclose(sample, sample[:1].expand(16, -1))       # every row moved alike
        columns.append(tuple(lit))
    assert len(set(columns)) > 1
    # Gain alone: +g dB adds 2 g / range, |g| <= 5 dB, away from the clip limits.
    x = torch.full((4, 1, 16, 20), 0.2)
    x[:, :, 5] = 0.6
    gained = ClassicAugment(**{**STILL, "gain_db": 5.0}, dynamic_range_db=50.0)(x, gen)
    offset = gained[:, 0, 0, 0] - 0.2                                     # (4,) one value per sample
    assert (offset.abs() <= 0.2 + 1e-6).all() and offset.abs().max() > 0.01
    assert torch.allclose(gained, x + offset[:, None, None, None], atol=1e-6)
    # Doppler shift alone: a velocity line moves by at most doppler_shift * H = 1.6 rows, its energy kept.
    x = torch.full((4, 1, 16, 20), -1.0)
    x[:, :, 5] = 0.6
    moved = ClassicAugment(**{**STILL, "doppler_shift": 0.1})(x, gen)[:, 0, :, 10] + 1       # (4, 16)
    centre = (moved * torch.arange(16.0)).sum(1) / moved.sum(1)
    assert ((centre - 5).abs() <= 1.6 + 1e-5).all() and (centre - 5).abs().max() > 0.05
    assert torch.allclose(moved.sum(1), torch.full((4,), 1.6))
    # Doppler scaling alone keeps the centre row (0 m/s on a symmetric axis) and spreads symmetrically about it.
    y = torch.full((3, 1, 15, 8), -1.0)
    y[:, :, 7] = 1.0
    scaled = ClassicAugment(**{**STILL, "doppler_scale": 0.3})(y, gen)[:, 0, :, 0] + 1        # (3, 15)
    assert torch.allclose(scaled[:, 7], torch.full((3,), 2.0))
    assert torch.allclose((scaled * torch.arange(15.0)).sum(1) / scaled.sum(1), torch.full((3,), 7.0))


# ----------------------------------------------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------------------------------------------
def test_margin_filter_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 0, 2])
    assert torch.allclose(class_margins(probs, labels), torch.tensor([0.5, -0.1, 0.4]))
    assert margin_threshold(torch.tensor([-0.3, 0.2, 0.4, 0.9, 1.0]), 0.5) == pytest.approx(0.4)
    assert margin_threshold(torch.tensor([-0.3, 0.2, 0.4, 0.9, 1.0]), 0.0) == 0.0   # floored at 0
    assert margin_filter(probs, labels, 0.45).tolist() == [True, False, False]


def test_physics_ranges_and_filter_by_hand():
    features = [{"torso_velocity_mps": v, "cadence_steps_per_s": c}
                for v, c in [(1.0, 1.5), (1.2, 1.7), (2.0, 2.0), (2.0, 2.4), (5.0, float("nan"))]]
    labels = [0, 0, 1, 1, 1]
    ranges = physics_ranges(features, labels, 3, tolerance=1.0)
    # Pooled within-person standard deviations: sum of squares about each person's mean / (samples - persons).
    v1 = np.array([2.0, 2.0, 5.0])
    s_v = np.sqrt((0.02 + ((v1 - v1.mean()) ** 2).sum()) / (5 - 2))
    s_c = np.sqrt((0.02 + 0.08) / (4 - 2))                                 # NaN cadence left out
    assert ranges["torso_velocity_mps_pooled_std"] == pytest.approx(s_v)
    assert ranges["cadence_steps_per_s_pooled_std"] == pytest.approx(s_c)
    assert ranges["torso_velocity_mps"][0] == pytest.approx([1.0 - s_v, 1.2 + s_v])
    assert ranges["cadence_steps_per_s"][1] == pytest.approx([2.0 - s_c, 2.4 + s_c])
    assert np.isnan(ranges["torso_velocity_mps"][2]).all()                # person 2 has no real samples
    candidates = [{"torso_velocity_mps": 1.1, "cadence_steps_per_s": 1.6},          # inside person 0
                  {"torso_velocity_mps": 1.1, "cadence_steps_per_s": 1.6 + 1.0},    # cadence too high
                  {"torso_velocity_mps": 1.1, "cadence_steps_per_s": float("nan")},  # not measurable
                  {"torso_velocity_mps": 1.1, "cadence_steps_per_s": 1.6}]          # person 2: no range
    assert physics_filter(candidates, [0, 0, 0, 2], ranges).tolist() == [True, False, False, False]


# ----------------------------------------------------------------------------------------------------------------
# augment.py end to end
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """4 simulated people x 24 real spectrograms with a split (6 test, 2 val, 16 train each); "ideal" = 16 further
    simulator samples of each person; "shuffled" = the same images in randomly permuted user folders."""
    root = tmp_path_factory.mktemp("augment")
    md.write_dataset(root / "real", users=4, per_user=24, size=64, seed=0, progress=False)
    (root / "run").mkdir()
    write_split(root / "run" / "split.json", make_split(root / "real"))
    db, labels, _ = md.simulate_dataset(users=4, per_user=40, size=64, seed=0)
    held_back = [(k, i) for k in range(4) for i in range(24, 40)]
    shuffled = np.random.default_rng(0).permutation([k for k, _ in held_back])
    for (k, i), wrong in zip(held_back, shuffled):
        for name, user in (("ideal", k), ("shuffled", wrong)):
            folder = root / name / f"user_{user:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(md.db_to_uint8(db[k * 40 + i], 50.0)).save(folder / f"{k}_{i:04d}.png")
    return root


def run_augment(folders, generated, out, *extra):
    args = ["--real", str(folders / "real"), "--split", str(folders / "run"), "--generated", str(folders / generated),
            "--out", str(out), "--shots", "2", "--size", "32", "--epochs", "10", "--min-steps", "120",
            "--batch-size", "16", "--no-progress", *extra]
    assert augment.main(args) == 0
    return json.loads(out.read_text())


def rows_by_variant(result):
    return {r["variant"]: r for r in result["rows"]}


@pytest.fixture(scope="module")
def ideal(folders, tmp_path_factory):
    return run_augment(folders, "ideal", tmp_path_factory.mktemp("ideal") / "a.json", "--seeds", "3")


def test_ideal_generator_helps_at_few_shots_and_shots_never_come_from_test(folders, ideal):
    split = json.loads((folders / "run" / "split.json").read_text())
    rows = rows_by_variant(ideal)
    assert ideal["variants"] == ["real", "real+synthetic", "real+margin", "real+physics", "classic",
                                 "classic+synthetic", "classic+margin", "classic+physics"]
    assert len(ideal["rows"]) == 8 and len(ideal["runs"]) == 3 and ideal["notes"] == []
    assert ideal["settings"]["size"] == [32, 32] and ideal["settings"]["dynamic_range"] == 50.0   # as resolved
    # 2 real samples per person vs 2 + 16 true samples: a clear, paired gain.
    assert rows["real+synthetic"]["gain"] > 0.1
    assert all(run["accuracy"]["real+synthetic"] > run["accuracy"]["real"] for run in ideal["runs"])   # every seed
    assert rows["real+synthetic"]["kept"] == 64 and rows["real"]["kept"] == 0
    assert rows["real+margin"]["kept_fraction"] > 0.5 and rows["real+physics"]["kept_fraction"] > 0.5
    # Every seed's shots: 2 per person from the split's train part, none from test; test = the split's test part.
    assert ideal["real_test_files"] == split["test"] and ideal["counts"]["real_test"] == len(split["test"]) == 24
    for run in ideal["runs"]:
        assert len(run["shot_files"]) == 8 and len({f.split("/")[0] for f in run["shot_files"]}) == 4
        assert set(run["shot_files"]) <= set(split["train"]) and not set(run["shot_files"]) & set(split["test"])
    assert len({tuple(run["shot_files"]) for run in ideal["runs"]}) == 3  # each seed draws its own shots
    png = Image.open(ideal["png"])
    assert png.size == (820, 440) and png.mode == "RGB"


def test_shuffled_labels_hurt_and_the_margin_filter_discards_most(folders, ideal, tmp_path, capsys):
    result = run_augment(folders, "shuffled", tmp_path / "s.json", "--seeds", "3", "--filters", "margin")
    rows = rows_by_variant(result)
    assert rows["real+synthetic"]["gain"] < 0 and rows["classic+synthetic"]["gain_over_classic"] < 0
    assert rows["real+margin"]["kept_fraction"] < 0.4                    # about 1 in 4 labels is right by chance
    assert rows["real+margin"]["gain"] > rows["real+synthetic"]["gain"]
    # The same real shots and classifiers as the ideal run: real-only accuracy does not depend on GEN.
    assert rows["real"]["per_seed_accuracy"] == rows_by_variant(ideal)["real"]["per_seed_accuracy"]
    assert "real+synthetic" in capsys.readouterr().out                 # the printed table


def test_intervals_shrink_with_more_seeds(folders, ideal, tmp_path):
    more = run_augment(folders, "ideal", tmp_path / "m.json", "--seeds", "5", "--filters", "none")
    assert more["variants"] == ["real", "real+synthetic", "classic", "classic+synthetic"]
    assert not more["filters"]["margin"]["used"] and not more["filters"]["physics"]["used"]
    few, many = rows_by_variant(ideal), rows_by_variant(more)
    for variant in ("real", "real+synthetic", "classic"):
        assert many[variant]["per_seed_accuracy"][:3] == few[variant]["per_seed_accuracy"]   # seeds are independent
        width = [row["accuracy_ci"][1] - row["accuracy_ci"][0] for row in (few[variant], many[variant])]
        assert width[1] < width[0], variant
    gain_width = [row["gain_ci"][1] - row["gain_ci"][0] for row in (few["real+synthetic"], many["real+synthetic"])]
    assert gain_width[1] < gain_width[0]


def test_bad_input_exits_with_one_line(folders, tmp_path, capsys):
    base = ["--real", str(folders / "real"), "--generated", str(folders / "ideal"), "--out", str(tmp_path / "r.json")]
    other = tmp_path / "other"
    shutil.copytree(folders / "real", other)
    (other / "user_00" / "0000.png").unlink()
    (other / "user_00" / "0000.npy").unlink()
    cases = [(base, "--split is required"),
             (base + ["--split", str(tmp_path)], "no split.json there"),
             (["--real", str(other), "--split", str(folders / "run"), "--generated", str(folders / "ideal"),
               "--out", str(tmp_path / "r.json")], "not the data folder the split was made for"),
             (base + ["--split", str(folders / "run"), "--shots", "2,17"], "has only 16 train file(s)"),
             (base + ["--split", str(folders / "run"), "--shots", "1"], "--shots must all be >= 2"),
             (base + ["--split", str(folders / "run"), "--v-max", "6"], "--v-max and --duration go together")]
    for args, message in cases:
        assert augment.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("augment.py: error:"), err
    assert not (tmp_path / "r.json").exists()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        augment.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--real", "--split", "--generated", "--shots", "--seeds", "--seed", "--out", "--size",
                   "--channels", "--npy-scale", "--dynamic-range", "--epochs", "--min-steps", "--batch-size", "--lr",
                   "--margin-quantile", "--filters", "--physics-tolerance", "--v-max", "--duration", "--threshold-db",
                   "--time-scale", "--doppler-shift", "--doppler-scale", "--gain-db", "--threads", "--progress"):
        assert option in text


def test_balanced_indices_repeat_the_rarer_persons_up_to_the_largest_count():
    from ldm.radar.augment import balanced_indices
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 0])                    # 5, 1, 2 samples
    order = balanced_indices(labels, torch.Generator().manual_seed(0))
    assert torch.equal(order[:8], torch.arange(8))                      # every sample once, first
    assert torch.bincount(labels[order]).tolist() == [5, 5, 5]
    assert set(order[8:].tolist()) == {4, 5, 6}                         # copies only of persons 1 and 2
    assert torch.equal(balanced_indices(torch.tensor([1, 0, 1, 0]), torch.Generator()), torch.arange(4))
