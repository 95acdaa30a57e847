"""The micro-Doppler simulator against closed forms of the Boulic-Thalmann walking model (docs/microdoppler.md,
sections 3 and 10), its reproducibility guarantees, its CLI, and the identity-accuracy window of the default people."""
import hashlib
import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ldm import microdoppler as md
from ldm.metrics import ClassifierConfig, physics_features, predict, train_classifier

LEG = 0.245 + 0.246                     # thigh + shank, as a fraction of height (Boulic's Ht)


pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


def closed_form_speed(p: md.Person) -> float:
    return p.rel_speed * LEG * p.height_m                              # V = RV * Ht


def closed_form_cadence(p: md.Person) -> float:
    rlc = 1.346 * math.sqrt(p.rel_speed)                               # relative cycle length
    return 2.0 / (p.cadence_gain * rlc / p.rel_speed)                  # two steps per cycle Dc = RLc / RV


@pytest.mark.parametrize("size", [128, 256])
def test_torso_line_and_cadence_match_closed_forms(size):
    v, t = md.velocity_axis(size), md.frame_times(size)
    bin_width = v[0] - v[1]
    for k in range(8):
        person = md.make_person(k)
        db = md.simulate_spectrogram(person, md.Draws(phase=0.37 * k), md.Radar(), size)
        f = physics_features(db, v, 1 / (t[1] - t[0]))
        speed = closed_form_speed(person)
        # One bin at the default 128 (0.098 m/s). At 256 a bin is half as wide (0.049 m/s) while the torso itself
        # surges +-0.2 m/s within each step and the 2.56 s window holds a non-integer number of cycles: 1.5 bins.
        assert abs(f["torso_velocity_mps"] - speed) <= bin_width * (1 if size == 128 else 1.5), (k, f, speed)
        assert f["cadence_steps_per_s"] == pytest.approx(closed_form_cadence(person), rel=0.03), (k, f)


def test_peak_foot_velocity_in_documented_range():
    # docs/microdoppler.md, section 10: feet peak at about 3-4.5x the torso speed in swing (ankle), and the toe reaches
    # about 4-5 m/s in simulation at ~1 m/s walking.
    person = md.Person(height_m=1.8, rel_speed=1.0, arm_gain=1.0, cadence_gain=1.0, knee_gain=1.0)
    speed = closed_form_speed(person)                                   # 0.88 m/s
    radar = md.Radar()
    t = np.arange(0, 2 * person.cycle_s, 1e-3)
    pts = md.world_points(person, md.Draws(), radar, t)

    def radial_speed(name):
        r = np.linalg.norm(pts[name] - np.array([0, 0, radar.height_m])[:, None], axis=0)
        return -np.gradient(r, t)

    assert 3.0 <= radial_speed("r_ankle").max() / speed <= 4.5
    toe_peak = radial_speed("r_toe").max()
    assert 4.0 <= toe_peak <= 5.0
    # The spectrogram's upper envelope shows that peak (within two velocity bins).
    v, frames = md.velocity_axis(128), md.frame_times(128)
    db = md.simulate_spectrogram(person, md.Draws(), radar, 128)
    envelope = physics_features(db, v, 1 / (frames[1] - frames[0]))["upper_envelope_mps"]
    assert abs(envelope - toe_peak) <= 2 * (v[0] - v[1])


def test_image_format_and_axes():
    radar = md.Radar()
    assert radar.max_velocity_mps == pytest.approx(2000 * 299_792_458 / 24e9 / 4)
    for size in md.SIZES:
        db = md.simulate_spectrogram(md.make_person(0), md.Draws(), radar, size)
        assert db.shape == (size, size) and db.dtype == np.float32
        assert db.max() == 0.0 and db.min() >= -radar.dynamic_range_db
        v = md.velocity_axis(size, radar)
        assert v.shape == (size,) and np.all(np.diff(v) < 0) and v[0] > 0   # approaching on top
        # Energy of a walker approaching the radar sits at positive velocities.
        power = (10 ** (db / 10)).sum(axis=1)
        assert power[v > 0].sum() > 10 * power[v < 0].sum()
        assert len(md.frame_times(size, radar)) == size
    with pytest.raises(ValueError, match="size must be one of"):
        md.simulate_spectrogram(md.make_person(0), md.Draws(), radar, 100)


def test_clutter_line_and_mti():
    person, v = md.make_person(1), md.velocity_axis(128)
    zero = int(np.argmin(np.abs(v)))
    clutter = md.simulate_spectrogram(person, md.Draws(), md.Radar(clutter_db=20.0), 128)
    assert clutter[zero].mean() > -1.0                                  # a static return fills the 0 m/s row
    cancelled = md.simulate_spectrogram(person, md.Draws(), md.Radar(clutter_db=20.0, mti=True), 128)
    assert cancelled[zero].mean() < -20.0                               # the two-pulse canceller removes it


def test_people_and_samples_do_not_depend_on_dataset_size():
    small, y_small, meta_small = md.simulate_dataset(users=2, per_user=2, size=64, seed=3)
    large, y_large, meta_large = md.simulate_dataset(users=3, per_user=4, size=64, seed=3)
    assert meta_small["people"][1] == meta_large["people"][1]
    np.testing.assert_array_equal(small[1 * 2 + 1], large[1 * 4 + 1])  # person 1, sample 1
    assert meta_small["samples"][3] == meta_large["samples"][5]
    assert y_large.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    other = md.simulate_dataset(users=2, per_user=2, size=64, seed=4)[2]
    assert other["people"][1] != meta_small["people"][1]


def test_spacing_scales_the_spread_of_people():
    wide = np.array([md.make_person(k, spacing=1.0).rel_speed for k in range(8)])
    narrow = np.array([md.make_person(k, spacing=0.5).rel_speed for k in range(8)])
    centre = sum(md.IDENTITY_RANGES["rel_speed"]) / 2
    np.testing.assert_allclose(narrow - centre, 0.5 * (wide - centre), atol=1e-12)
    heights = [md.make_person(k).height_m for k in range(8)]
    assert len({round(h, 4) for h in heights}) == 8
    with pytest.raises(ValueError):
        md.make_person(0, spacing=0.0)


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_same_seed_gives_identical_bytes(tmp_path, capsys):
    args = ["--users", "2", "--per-user", "3", "--size", "64", "--seed", "5", "--quiet"]
    assert md.main(["--out", str(tmp_path / "a"), *args]) == 0
    assert md.main(["--out", str(tmp_path / "b"), *args]) == 0
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) == 2 * 3 * 2 + 1
    png = Image.open(tmp_path / "a" / "user_01" / "0002.png")
    assert png.mode == "L" and png.size == (64, 64)
    db = np.load(tmp_path / "a" / "user_01" / "0002.npy")
    assert db.dtype == np.float32 and db.shape == (64, 64)
    np.testing.assert_array_equal(np.asarray(png), md.db_to_uint8(db, 50.0))
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert len(meta["people"]) == 2 and len(meta["samples"]) == 6
    assert {"height_m", "rel_speed", "arm_gain", "cadence_gain", "speed_mps", "cycle_s"} <= set(meta["people"][0])
    assert {"phase", "heading_deg", "start_range_m", "snr_db", "stream", "file"} <= set(meta["samples"][0])
    # A different seed changes the bytes; a non-empty folder is refused with a one-line error and status 2.
    assert md.main(["--out", str(tmp_path / "c"), *args[:-2], "6", "--quiet"]) == 0
    assert _digest(tmp_path / "c") != a
    capsys.readouterr()
    assert md.main(["--out", str(tmp_path / "a"), *args]) == 2
    assert "not empty" in capsys.readouterr().err
    assert md.main(["--out", str(tmp_path / "a"), *args, "--overwrite"]) == 0
    assert _digest(tmp_path / "a") == a


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        md.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--users", "--per-user", "--size", "--seed", "--spacing", "--carrier-ghz", "--prf",
                   "--duration", "--dynamic-range", "--clutter-db", "--mti", "--overwrite", "--quiet"):
        assert option in text


def test_simulation_speed_regression_guard():
    # The target is >= 100 spectrograms/s at 128x128 on one core (measured numbers are in the README). CPU time,
    # not wall time, so a busy machine does not fail the test; the bound is loose on purpose.
    person, radar = md.make_person(0), md.Radar()
    start = time.process_time()
    for i in range(40):
        md.simulate_spectrogram(person, md.Draws(phase=i / 40), radar, 128, np.random.default_rng(i))
    per_second = 40 / (time.process_time() - start)
    assert per_second > 40, f"{per_second:.0f} spectrograms/s"


def test_identity_accuracy_window_of_default_people():
    # The default spacing is calibrated so that the evaluation CNN (default ClassifierConfig, which resizes to
    # 64x64 anyway) tells the 8 default people apart on held-out samples with 95% to 99.5% accuracy.
    # 64x64 spectrograms keep the test fast; 32 training and 48 held-out samples per person.
    db, labels, _ = md.simulate_dataset(users=8, per_user=80, size=64, seed=0)
    x = torch.from_numpy(db / 50.0 * 2 + 1).unsqueeze(1).float()
    y = torch.from_numpy(labels)
    train = torch.from_numpy(np.tile(np.arange(80) < 32, 8))
    model = train_classifier(x[train], y[train], ClassifierConfig(num_classes=8))
    probs, _ = predict(model, x[~train])
    accuracy = float((probs.argmax(1) == y[~train]).float().mean())
    assert 0.95 <= accuracy <= 0.995, accuracy
