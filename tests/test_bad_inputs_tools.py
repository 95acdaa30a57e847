"""Bad input to sample.py, evaluate.py, fewshot.py and the data / classifier loaders behind them: each case exits with
status 2 (or raises the named exception) before any work, with one line naming the offending option, file or key,
no traceback, and no output left behind (not even a partial one)."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import sample
from ldm.radar import simulator as md
from ldm.data import SpectrogramFolder, parse_size, read_file
from ldm.splits import make_split, write_split
from ldm.radar.identity import ClassifierConfig, EvalCNN, load_classifier, save_classifier
from ldm.radar.physics import simulator_metadata
from tests.test_sample import build_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny pipeline, simulated real data (3 users x 6) with a split, generated PNGs, a file where a folder is
    expected, and broken classifier files."""
    root = tmp_path_factory.mktemp("bad")
    build_pipeline(root / "pipeline")
    md.write_dataset(root / "real", users=3, per_user=6, size=64, seed=0, progress=False)
    write_split(root / "split.json", make_split(root / "real", test_fraction=1 / 3, val_fraction=0.0))
    for user in ("user_00", "user_01", "user_02"):
        (root / "gen" / user).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((64, 64), 40 * i, np.uint8)).save(root / "gen" / user / f"{i}.png")
    (root / "a_file").write_text("not a folder")
    (root / "garbage.safetensors").write_bytes(b"\x00\x01garbage" * 20)
    good = root / "good.safetensors"
    save_classifier(EvalCNN(ClassifierConfig(num_classes=3, widths=(4, 8))), str(good), {"alice": 0, "bob": 1})
    (root / "truncated.safetensors").write_bytes(good.read_bytes()[:-100])
    from safetensors.torch import save_file                              # weights without the classifier metadata
    save_file({"w": torch.zeros(2)}, str(root / "foreign.safetensors"))
    return root


def fails(main, argv: list[str], capsys, *named: str) -> str:
    """Run a script's main(argv) in this process; assert exit status 2, no traceback, and an error line that names
    every string in ``named``. Returns that line."""
    try:
        status = main(argv)
    except SystemExit as exit_info:                                     # argparse / parse_config refusals
        status = exit_info.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "error:" in line, line
    for text in named:
        assert text in line, line
    return line


def left_behind(folder, before: set[str]) -> set[str]:
    """Names in folder that were not there before (hidden temporary names included)."""
    return {p.name for p in folder.iterdir()} - before


# ----------------------------------------------------------------------------------------------------------------
# sample.py
# ----------------------------------------------------------------------------------------------------------------
SAMPLE_CASES = {
    "guidance_nan": (["--guidance", "nan"], ["--guidance must be a finite number"]),
    "guidance_inf": (["--guidance", "inf"], ["--guidance must be a finite number"]),
    "num_zero": (["--num", "0"], ["--num must be >= 1"]),
    "seed_negative": (["--seed", "-1"], ["--seed must be >= 0"]),
    "margin_threshold_one": (["--margin-threshold", "1"], ["--margin-threshold must be >= -1 and < 1"]),
    "device_unknown": (["--device", "foo"], ["--device 'foo' is not a device"]),
    "eta_without_ddim": (["--eta", "0.5", "--sampler", "dpm++2m"], ["--eta", "--sampler dpm++2m"]),
    "steps_beyond_training": (["--steps", "5000"], ["--steps 5000: --sampler ddim takes at most 999 steps"]),
    "steps_beyond_the_samplers_limit": (["--steps", "1000", "--sampler", "dpm++2m"],
                                        ["--steps 1000: --sampler dpm++2m takes at most 999 steps"]),
    "eta_above_one": (["--eta", "5"], ["--eta must be >= 0 and <= 1"]),
    "out_empty": (["--out", ""], ["--out '' names no folder"]),
    "out_inside_a_file": (["--out", "{root}/a_file/samples"], ["--out", "a_file"]),
    "out_is_a_file": (["--out", "{root}/a_file"], ["--out", "a_file is a file, not a folder"]),
    "grid_inside_a_file": (["--grid", "{root}/a_file/grid.png"], ["--grid", "a_file"]),
    "classifier_garbage": (["--filter", "margin", "--classifier", "{root}/garbage.safetensors"],
                           ["--classifier", "garbage.safetensors: not a readable safetensors file"]),
    "classifier_truncated": (["--filter", "margin", "--classifier", "{root}/truncated.safetensors"],
                             ["--classifier", "truncated.safetensors"]),
    "classifier_foreign": (["--filter", "margin", "--classifier", "{root}/foreign.safetensors"],
                           ["--classifier", "foreign.safetensors: not an evaluation classifier"]),
    "classifier_other_users": (["--filter", "margin", "--classifier", "{root}/good.safetensors"],
                               ["--classifier", "good.safetensors knows users"]),
}


@pytest.mark.parametrize("case", SAMPLE_CASES)
def test_sample_refuses_before_generating(case, files, tmp_path, capsys):
    extra, named = SAMPLE_CASES[case]
    out = tmp_path / "s"
    argv = ["--model", str(files / "pipeline"), "--out", str(out), "--steps", "2", "--batch-size", "2",
            "--num", "1", "--no-progress", *[a.format(root=files) for a in extra]]
    before = {p.name for p in files.iterdir()}
    fails(sample.main, argv, capsys, *named)
    assert not list(tmp_path.iterdir()) and not left_behind(files, before)     # no OUT, grid, record or temp


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sample_device_cuda_without_a_gpu(files, tmp_path, capsys):
    argv = ["--model", str(files / "pipeline"), "--out", str(tmp_path / "s"), "--device", "cuda", "--no-progress"]
    fails(sample.main, argv, capsys, "--device cuda", "no CUDA device")
    assert not list(tmp_path.iterdir())


def test_sample_failing_half_way_leaves_no_partial_output(files, tmp_path, capsys, monkeypatch):
    """The disk fills up after the first user's images: nothing appears under --out, no grid, no record, no
    temporary folder."""
    written = []

    def save_then_fail(images, folder, save_npy, keep=None):
        if written:
            raise OSError(28, "No space left on device")
        written.append(folder.name)
        return sample_save(images, folder, save_npy, keep)

    sample_save = sample.save_images
    monkeypatch.setattr(sample, "save_images", save_then_fail)
    argv = ["--model", str(files / "pipeline"), "--out", str(tmp_path / "s"), "--steps", "2", "--num", "1",
            "--no-progress"]
    fails(sample.main, argv, capsys, "--out", "No space left on device", "nothing was written there")
    assert written == ["alice"] and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# evaluate.py
# ----------------------------------------------------------------------------------------------------------------
EVALUATE_CASES = {
    "size_too_small": (["--size", "8"], ["--size 8: each side must be >= 16"]),
    "size_malformed": (["--size", "64x"], ["--size '64x': expected N"]),
    "lr_zero": (["--lr", "0"], ["--lr must be > 0"]),
    "bootstrap_few": (["--bootstrap", "5"], ["--bootstrap must be >= 10"]),
    "dynamic_range_nan": (["--dynamic-range", "nan"], ["--dynamic-range must be a finite number"]),
    "channels_two": (["--channels", "2"], ["--channels"]),
    "out_inside_a_file": (["--out", "{root}/a_file/report.json"], ["--out", "a_file"]),
    "png_inside_a_file": (["--confusion-png", "{root}/a_file/c.png"], ["--confusion-png", "a_file"]),
    "classifier_garbage": (["--classifier", "{root}/garbage.safetensors"],
                           ["--classifier", "garbage.safetensors: not a readable safetensors file"]),
    "classifier_truncated": (["--classifier", "{root}/truncated.safetensors"], ["--classifier", "truncated"]),
    "real_is_a_file": (["--real", "{root}/a_file"], ["a_file is a file, not a folder"]),
    "generated_missing": (["--generated", "{root}/nowhere"], ["nowhere does not exist"]),
}


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_refuses_before_training(case, files, tmp_path, capsys):
    extra, named = EVALUATE_CASES[case]
    argv = ["--real", str(files / "real"), "--generated", str(files / "gen"), "--split", str(files / "split.json"),
            "--out", str(tmp_path / "r.json"), "--quiet", *[a.format(root=files) for a in extra]]
    before = {p.name for p in files.iterdir()}
    fails(evaluate.main, argv, capsys, *named)
    assert not list(tmp_path.iterdir()) and not left_behind(files, before)


def test_evaluate_needs_real_and_names_a_corrupt_metadata_json(files, tmp_path, capsys):
    fails(evaluate.main, ["--generated", str(files / "gen"), "--split", str(files / "split.json")], capsys,
          "--real is required")
    broken = tmp_path / "real"
    shutil.copytree(files / "gen", broken)                   # readable images, beside a corrupt metadata.json
    (broken / "metadata.json").write_text('{"people": [')
    fails(evaluate.main, ["--real", str(broken), "--generated", str(files / "gen"), "--real-test", str(files / "gen"),
                          "--out", str(tmp_path / "r.json")], capsys, "metadata.json: not valid JSON")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]


# ----------------------------------------------------------------------------------------------------------------
# fewshot.py
# ----------------------------------------------------------------------------------------------------------------
FEWSHOT_CASES = {
    "shots_malformed": (["--shots", "4,x"], ["--shots must be a comma list"]),
    "shots_zero": (["--shots", "0,4"], ["--shots must all be >= 1"]),
    "shots_twice": (["--shots", "4,4"], ["--shots must be a non-empty comma list of distinct"]),
    "threads_zero": (["--threads", "0"], ["--threads must be >= 1"]),
    "lr_nan": (["--enroll-lr", "nan"], ["--enroll-lr must be a finite number"]),
    "pipeline_without_split": (["--pipeline", "{root}/pipeline"], ["--pipeline and --base-split go together"]),
    "pipeline_two_seeds": (["--pipeline", "{root}/pipeline", "--base-split", "{root}/split.json",
                            "--generator-seeds", "2"], ["--generator-seeds 1"]),
    "data_missing": (["--data", "{root}/nowhere"], ["--data", "nowhere"]),
    "out_inside_a_file": (["--out", "{root}/a_file/run"], ["--out", "a_file"]),
}


@pytest.mark.parametrize("case", FEWSHOT_CASES)
def test_fewshot_refuses_before_any_work(case, files, tmp_path, capsys):
    import fewshot
    extra, named = FEWSHOT_CASES[case]
    argv = ["--out", str(tmp_path / "run"), "--no-progress", *[a.format(root=files) for a in extra]]
    before = {p.name for p in files.iterdir()}
    fails(fewshot.main, argv, capsys, *named)
    assert not list(tmp_path.iterdir()) and not left_behind(files, before)


# ----------------------------------------------------------------------------------------------------------------
# The loaders behind them
# ----------------------------------------------------------------------------------------------------------------
def test_loaders_name_the_file_or_value(files, tmp_path):
    with pytest.raises(ValueError, match=r"size '256x128x3': expected N \(N x N pixels\) or HxW"):
        parse_size("256x128x3")
    with pytest.raises(ValueError, match=r"a_file is a file, not a folder"):
        SpectrogramFolder(files / "a_file")
    with pytest.raises(ValueError, match=r"0000.png: colormap='jet' needs a colour image"):
        SpectrogramFolder(files / "real", suffixes=(".png",), colormap="jet")
    db = np.load(files / "real" / "user_00" / "0000.npy").astype(np.float64)
    np.save(tmp_path / "linear.npy", 10 ** (db / 10))
    with pytest.raises(ValueError, match=r"linear.npy: these values look linear, not dB .*--npy-scale magnitude"):
        read_file(tmp_path / "linear.npy")
    for name, message in (("garbage", "not a readable safetensors file"), ("truncated", "truncated.safetensors"),
                          ("foreign", "not an evaluation classifier"), ("nowhere", "no such classifier file")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            load_classifier(str(files / f"{name}.safetensors"))
    (tmp_path / "metadata.json").write_text("{")
    with pytest.raises(ValueError, match=r"metadata.json: not valid JSON"):
        simulator_metadata(tmp_path)
    assert json.loads(json.dumps(load_classifier(str(files / "good.safetensors"))[1])) == {"alice": 0, "bob": 1}
