"""evaluate.py end to end on small simulated folders with a split.json: a perfect "generator" (held-back simulator
samples) against one that puts every user's samples in the wrong folder, one that outputs noise and one that copies
its training files; the refusals (no held-out test set, a split of another folder, a classifier trained on another
split, a --real-test folder that is the training folder) and the bad-input exits."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import evaluate
from ldm.radar import simulator as md
from ldm.splits import make_split, write_split
from ldm.metrics import clustered_proportion


pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    md.write_dataset(root / "real", users=3, per_user=24, size=64, seed=0, progress=False)
    split = make_split(root / "real", test_fraction=1 / 3, val_fraction=0.1, seed=0)   # 14 / 2 / 8 per user
    write_split(root / "split.json", split)
    # Generated = further samples of the same three people (sample indices 24..31), as 8-bit PNGs; the samples
    # 32..39 are a separate real test folder for --real-test.
    db, labels, _ = md.simulate_dataset(users=3, per_user=40, size=64, seed=0)
    for k in range(3):
        for i in range(24, 40):
            image = Image.fromarray(md.db_to_uint8(db[k * 40 + i], 50.0))
            for name, user in ((("good", k), ("swapped", (k + 1) % 3)) if i < 32 else (("heldout", k),)):
                folder = root / name / f"user_{user:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{i:04d}.png")
            if i < 32:
                noise = np.random.default_rng([k, i]).integers(0, 256, (64, 64), dtype=np.uint8)
                (root / "noise" / f"user_{k:02d}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(noise).save(root / "noise" / f"user_{k:02d}" / f"{i:04d}.png")
    # A generator that memorised: its "samples" are the PNGs of its training files (split "train").
    for name in split["train"]:
        (root / "copies" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "real" / name.replace(".npy", ".png"), root / "copies" / name.replace(".npy", ".png"))
    return root


def run(folders, generated, out, *extra, split="split.json", classifier="clf.safetensors"):
    args = ["--real", str(folders / "real"), "--generated", str(folders / generated), "--out", str(out),
            "--min-steps", "40", "--batch-size", "16", "--quiet", "--bootstrap", "50", *extra]
    args += ["--split", str(folders / split)] if split else []
    args += ["--classifier", str(folders / classifier)] if classifier else []
    return evaluate.main(args)


def test_good_swapped_noise_and_copying_generators(folders, tmp_path, capsys):
    assert run(folders, "good", tmp_path / "good.json") == 0            # trains and saves the classifier
    assert (folders / "clf.safetensors").is_file()
    assert run(folders, "swapped", tmp_path / "swapped.json") == 0      # loads it
    good = json.loads((tmp_path / "good.json").read_text())
    bad = json.loads((tmp_path / "swapped.json").read_text())
    text = capsys.readouterr().out
    assert "TRTS" in text and "Frechet distance" in text and "real-vs-real floor" in text and "split.json" in text
    split = json.loads((folders / "split.json").read_text())
    assert good["real_test_files"] == split["test"] and len(split["test"]) == 24
    assert good["options"]["size"] == [64, 64] and good["options"]["dynamic_range"] == 50.0   # resolved
    assert good["options"]["bootstrap"] == 50 and good["options"]["split"] == str(folders / "split.json")
    assert good["split"]["from"] == "--split" and good["split"]["files_sha256"] == split["files_sha256"]
    assert good["counts"] == {"real_classifier_train": 48, "real_generator_train": 42, "real_test": 24,
                              "generated": 24, "skipped_real": 0, "skipped_generated": 0}
    o, b = good["overall"], bad["overall"]
    assert o["real_test_accuracy"] == b["real_test_accuracy"] and o["real_test_accuracy"]["value"] >= 0.9
    assert o["trts_accuracy"]["value"] >= 0.9 and b["trts_accuracy"]["value"] <= 0.1
    assert o["tstr_accuracy"]["value"] >= 0.8 and b["tstr_accuracy"]["value"] <= 0.2
    assert o["mean_ccr"] > 2 > b["mean_ccr"]
    # Per user: Wilson intervals, k of n correct -> the closed form (tests/test_metrics.py checks it against the
    # score test).
    for user in good["per_user"].values():
        fig = user["trts_accuracy"]
        k, n, z = round(fig["value"] * fig["n"]), fig["n"], 1.959964
        centre, half = (k + z * z / 2) / (n + z * z), z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
        assert fig["ci"] == pytest.approx([max(0, centre - half), min(1, centre + half)], abs=1e-6)
    # Overall: persons resampled, each with all their files or samples (the per-user hits and counts above).
    for key in ("real_test_accuracy", "trts_accuracy"):
        users = [good["per_user"][u][key] for u in sorted(good["per_user"])]
        hits = [round(u["value"] * u["n"]) for u in users]
        expected = clustered_proportion(hits, [u["n"] for u in users], 50, good["options"]["seed"])
        assert [o[key]["value"], *o[key]["ci"]] == pytest.approx(list(expected), abs=1e-12)
        assert o[key]["persons"] == 3
    assert o["trts_accuracy"]["n"] == 24 and o["real_test_accuracy"]["n"] == 24
    assert set(good["per_user"]) == {"user_00", "user_01", "user_02"}
    assert good["per_user"]["user_01"]["real_test_accuracy"]["n"] == 8
    matrix = np.array(bad["confusion_matrix"]["counts"])
    assert matrix.sum() == 24 and np.trace(matrix) <= 2                 # rows requested, columns predicted

    # Distances ignore labels (the swapped set holds the same images); noise images are far from real ones.
    assert run(folders, "noise", tmp_path / "noise.json") == 0
    noise = json.loads((tmp_path / "noise.json").read_text())
    d, dn = good["distances"], noise["distances"]
    assert d["n"] == dn["n"] == d["n_reference"] == 12 and d["dims"] == 16 and d["users"] == 3
    assert d["fd_floor"] == dn["fd_floor"] and d["fd_floor"]["value"] >= 0
    assert d["bootstrap_valid"] >= 0.8 * d["bootstrap_resamples"]     # resamples with a user of one distinct sample
    for key in ("fd", "fd_floor", "fd_minus_floor", "kid", "kid_floor", "kid_minus_floor"):
        low, high = d[key]["ci"]
        assert low <= d[key]["value"] <= high, key
    assert d["fd_minus_floor"]["ci"][0] < 0 < d["kid_minus_floor"]["ci"][1]    # a perfect generator: no excess
    assert dn["fd"]["value"] > 3 * max(d["fd"]["value"], d["fd_floor"]["value"])
    assert dn["fd_minus_floor"]["ci"][0] > 0 and dn["kid_minus_floor"]["ci"][0] > 0    # noise: clearly worse
    assert dn["kid"]["value"] > d["kid"]["value"]

    # Memorisation: copies of training files sit at ~0 times the real test samples' distance to the training set;
    # held-back simulator samples do not.
    assert run(folders, "copies", tmp_path / "copies.json") == 0
    copies = json.loads((tmp_path / "copies.json").read_text())
    text = capsys.readouterr().out
    assert "COPYING SUSPECTED" in text
    for space in ("features", "pixels"):
        m_copy, m_good = copies["memorisation"][space], good["memorisation"][space]
        assert m_copy["fraction_closer"] >= 0.95 and m_copy["copying_suspected"]
        assert m_copy["generated_ratio_quantiles"]["p95"] < 0.2
        assert m_good["fraction_closer"] <= 0.25 and not m_good["copying_suspected"]
        assert m_good["generated_ratio_quantiles"]["p50"] > 0.5
        assert m_good["real_test_ratio_quantiles"]["p50"] == pytest.approx(1.0)
    assert copies["memorisation"]["n_reference"] == 42
    assert all(row["fraction_close_to_train"]["pixels"] == 1.0 for row in copies["per_user"].values())

    # Physics: mean and spread per user against the simulator's truth.
    physics = good["physics"]["per_user"]["user_01"]
    assert physics["real_test"]["torso_velocity_mps"]["mean"] == pytest.approx(physics["truth"]["speed_mps"], abs=0.25)
    assert physics["generated"]["cadence_steps_per_s"]["mean"] == pytest.approx(
        physics["truth"]["cadence_steps_per_s"], rel=0.1)
    speed = physics["generated"]["torso_velocity_mps"]
    assert speed["n"] == 8 and speed["std"] > 0                        # a spread over samples, not just a mean
    assert 0.3 < good["physics"]["spread_ratio"]["torso_velocity_mps"] < 3
    png = Image.open(good["confusion_png"])
    assert png.size[0] > 100 and png.mode == "RGB"


def test_refuses_without_a_held_out_test_set(folders, tmp_path, capsys):
    assert run(folders, "good", tmp_path / "r.json", split=None) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("evaluate.py: error:")
    assert "--split" in err and "--real-test" in err and "no held-out real test set" in err
    assert not (tmp_path / "r.json").exists()


def test_refuses_a_split_of_another_folder_and_a_classifier_of_another_split(folders, tmp_path, capsys):
    write_split(tmp_path / "other.json", make_split(folders / "good", seed=0))
    assert run(folders, "good", tmp_path / "r.json", split=tmp_path / "other.json", classifier=None) == 2
    assert "not the data folder the split was made for" in capsys.readouterr().err
    # Same folder, another seed: another test set, so the classifier saved for split.json must not be reused.
    if not (folders / "clf.safetensors").is_file():
        assert run(folders, "good", tmp_path / "first.json") == 0
    write_split(tmp_path / "seed1.json", make_split(folders / "real", test_fraction=1 / 3, val_fraction=0.1, seed=1))
    capsys.readouterr()
    assert run(folders, "good", tmp_path / "r.json", split=tmp_path / "seed1.json") == 2
    err = capsys.readouterr().err
    assert "trained on other files" in err and "may have seen the test files" in err
    assert not (tmp_path / "r.json").exists()


def test_real_test_folder(folders, tmp_path, capsys):
    args = ["--real", str(folders / "real"), "--generated", str(folders / "good"), "--quiet", "--min-steps", "40",
            "--batch-size", "16", "--epochs", "8", "--bootstrap", "20", "--physics", "off", "--size", "64x32"]
    assert evaluate.main([*args, "--real-test", str(folders / "heldout"), "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["options"]["size"] == [64, 32] and report["classifier"]["image_size"] == [64, 32]   # non-square
    assert report["split"]["from"] == "--real-test" and report["counts"]["real_test"] == 24
    assert report["real_test_files"][:2] == ["user_00/0032.png", "user_00/0033.png"]
    assert report["counts"]["real_classifier_train"] == report["counts"]["real_generator_train"] == 72
    assert report["overall"]["real_test_accuracy"]["value"] >= 0.9
    # The training folder itself as "test": every file has a training twin, nothing is held out.
    capsys.readouterr()
    assert evaluate.main([*args, "--real-test", str(folders / "real"), "--out", str(tmp_path / "s.json")]) == 2
    assert "nothing is held out" in capsys.readouterr().err
    assert evaluate.main([*args, "--real-test", str(folders / "heldout"), "--split", str(folders / "split.json")]) == 2
    assert "not both" in capsys.readouterr().err


def test_bad_input_exits_with_one_line(folders, tmp_path, capsys):
    cases = [("missing", "does not exist"), ("real/user_00", "is a flat folder"), ("other", "not in the class map")]
    (tmp_path / "flat").mkdir()
    shutil.copy(next((folders / "good" / "user_00").iterdir()), tmp_path / "flat" / "a.png")
    (folders / "other" / "user_99").mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "flat" / "a.png", folders / "other" / "user_99" / "a.png")
    for generated, message in cases:
        capsys.readouterr()
        args = ["--real", str(folders / "real"), "--generated", str(folders / generated), "--out",
                str(tmp_path / "r.json"), "--quiet", "--split", str(folders / "split.json")]
        assert evaluate.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("evaluate.py: error:")
    args = ["--real", str(folders / "real"), "--generated", str(folders / "good"), "--v-max", "6",
            "--split", str(folders / "split.json")]
    assert evaluate.main(args) == 2                                      # checked before any training
    assert "--v-max and --duration go together" in capsys.readouterr().err
    args = ["--real", str(folders / "real"), "--generated", str(folders / "good"), "--split", str(tmp_path)]
    assert evaluate.main(args) == 2                                      # a folder without split.json
    assert "no split.json there" in capsys.readouterr().err
    write_split(tmp_path / "flat.json", make_split(tmp_path / "flat", test_fraction=0.0, val_fraction=0.0))
    args = ["--real", str(tmp_path / "flat"), "--generated", str(folders / "good"), "--out", str(tmp_path / "r.json"),
            "--split", str(tmp_path / "flat.json")]
    assert evaluate.main(args) == 2                                      # a flat real folder has no identities
    assert "needs at least two user folders" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_help_lists_every_option_with_its_default_and_range(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())                     # argparse wraps lines
    for option in ("--real", "--generated", "--split", "--real-test", "--out", "--confusion-png", "--size",
                   "--resize", "--channels", "--colormap", "--npy-scale", "--dynamic-range", "--seed", "--epochs",
                   "--min-steps", "--batch-size", "--lr", "--classifier", "--pca-dims", "--bootstrap", "--physics",
                   "--v-max", "--duration", "--threshold-db", "--skip-bad", "--quiet"):
        assert option in text
    assert "(default: report.json)" in text and "[>= 10] (default: 200)" in text
    assert "--test-fraction" not in text and "--group-regex" not in text
