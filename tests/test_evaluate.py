"""evaluate.py end to end on small simulated folders: a perfect "generator" (held-back simulator samples) against
one that puts every user's samples in the wrong folder, plus the bad-input exits."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import evaluate
from ldm import microdoppler as md


pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    md.write_dataset(root / "real", users=3, per_user=16, size=64, seed=0, progress=False)
    # Generated = further samples of the same three people (sample indices 16..23), as 8-bit PNGs.
    db, labels, _ = md.simulate_dataset(users=3, per_user=24, size=64, seed=0)
    for k in range(3):
        for i in range(16, 24):
            for name, user in (("good", k), ("swapped", (k + 1) % 3)):
                folder = root / name / f"user_{user:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(md.db_to_uint8(db[k * 24 + i], 50.0)).save(folder / f"{i:04d}.png")
            noise = np.random.default_rng([k, i]).integers(0, 256, (64, 64), dtype=np.uint8)
            (root / "noise" / f"user_{k:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(noise).save(root / "noise" / f"user_{k:02d}" / f"{i:04d}.png")
    return root


def run(folders, generated, out, *extra):
    args = ["--real", str(folders / "real"), "--generated", str(folders / generated), "--out", str(out),
            "--min-steps", "40", "--batch-size", "16", "--quiet", "--classifier", str(folders / "clf.safetensors"),
            *extra]
    return evaluate.main(args)


def test_good_and_swapped_generators(folders, tmp_path, capsys):
    assert run(folders, "good", tmp_path / "good.json") == 0            # trains and saves the classifier
    assert (folders / "clf.safetensors").is_file()
    assert run(folders, "swapped", tmp_path / "swapped.json") == 0      # loads it
    good = json.loads((tmp_path / "good.json").read_text())
    bad = json.loads((tmp_path / "swapped.json").read_text())
    text = capsys.readouterr().out
    assert "TRTS" in text and "Frechet distance" in text and "real-vs-real floor" in text
    assert good["counts"] == {"real_train": 36, "real_test": 12, "generated": 24, "skipped_real": 0,
                              "skipped_generated": 0}
    assert good["overall"]["real_test_accuracy"] == bad["overall"]["real_test_accuracy"] >= 0.9
    assert good["overall"]["trts_accuracy"] >= 0.9 and bad["overall"]["trts_accuracy"] <= 0.1
    assert good["overall"]["tstr_accuracy"] >= 0.8 and bad["overall"]["tstr_accuracy"] <= 0.2
    assert good["overall"]["mean_ccr"] > 2 > bad["overall"]["mean_ccr"]
    assert set(good["per_user"]) == {"user_00", "user_01", "user_02"}
    matrix = np.array(bad["confusion_matrix"]["counts"])
    assert matrix.sum() == 24 and np.trace(matrix) <= 2                 # rows requested, columns predicted
    # Distances ignore labels (the swapped set holds the same images); noise images are far from real ones.
    assert run(folders, "noise", tmp_path / "noise.json") == 0
    noise = json.loads((tmp_path / "noise.json").read_text())
    assert good["distances"]["n"] == noise["distances"]["n"] == 6
    assert good["distances"]["fd_floor"] == noise["distances"]["fd_floor"] >= 0
    assert noise["distances"]["fd"] > 3 * max(good["distances"]["fd"], good["distances"]["fd_floor"])
    assert noise["distances"]["kid"] > good["distances"]["kid"]
    physics = good["physics"]["per_user"]["user_01"]
    assert physics["real_torso_velocity_mps"] == pytest.approx(physics["true_speed_mps"], abs=0.25)
    assert physics["gen_cadence_steps_per_s"] == pytest.approx(physics["true_cadence_steps_per_s"], rel=0.1)
    png = Image.open(good["confusion_png"])
    assert png.size[0] > 100 and png.mode == "RGB"


def test_bad_input_exits_with_one_line(folders, tmp_path, capsys):
    cases = [("missing", "does not exist"), ("real/user_00", "is a flat folder"), ("other", "not in the class map")]
    (tmp_path / "flat").mkdir()
    shutil.copy(next((folders / "good" / "user_00").iterdir()), tmp_path / "flat" / "a.png")
    (folders / "other" / "user_99").mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "flat" / "a.png", folders / "other" / "user_99" / "a.png")
    for generated, message in cases:
        capsys.readouterr()
        args = ["--real", str(folders / "real"), "--generated", str(folders / generated), "--out",
                str(tmp_path / "r.json"), "--quiet"]
        assert evaluate.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("evaluate.py: error:")
    args = ["--real", str(folders / "real"), "--generated", str(folders / "good"), "--v-max", "6"]
    assert evaluate.main(args) == 2                                      # checked before any training
    assert "--v-max and --duration go together" in capsys.readouterr().err
    args = ["--real", str(tmp_path / "flat"), "--generated", str(folders / "good"), "--out", str(tmp_path / "r.json")]
    assert evaluate.main(args) == 2                                      # a flat real folder has no identities
    assert "needs at least two user folders" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--real", "--generated", "--out", "--confusion-png", "--size", "--channels", "--npy-scale",
                   "--dynamic-range", "--test-fraction", "--group-regex", "--seed", "--epochs", "--min-steps",
                   "--batch-size", "--lr", "--classifier", "--kid-subset", "--kid-subsets", "--physics", "--v-max",
                   "--duration", "--threshold-db", "--skip-bad", "--quiet"):
        assert option in text
