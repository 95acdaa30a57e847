"""Folder loaders: label mapping, value normalisation (.npy dB / magnitude / power, PNG gray / RGB / 16-bit),
size policies, reproducible splits and every bad-input case, on small folders written into tmp_path."""
import numpy as np
import pytest
import torch
from PIL import Image

from ldm import microdoppler as md
from ldm.data import (UNLABELLED, SpectrogramFolder, check_split, make_split, read_class_map, read_file, read_split,
                      scan_folder, split_indices, write_class_map, write_split)


def gray_png(path, value=128, size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8), mode="L").save(path)


def make_users(root, names=("bob", "alice", "carol"), per_user=4, size=16):
    for k, name in enumerate(names):
        for i in range(per_user):
            gray_png(root / name / f"{i:03d}.png", value=10 * k + i, size=(size, size))


# ----------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------
def test_labels_from_sorted_subfolders_and_class_map(tmp_path):
    make_users(tmp_path / "data")
    (tmp_path / "data" / "notes.txt").write_text("ignored")           # stray files are ignored
    (tmp_path / "data" / "alice" / "readme.md").write_text("ignored")
    ds = SpectrogramFolder(tmp_path / "data")
    assert ds.class_to_idx == {"alice": 0, "bob": 1, "carol": 2}
    assert ds.classes == ["alice", "bob", "carol"]
    assert len(ds) == 12
    for path, label in zip(ds.files, ds.labels):
        assert ds.classes[label] == path.parent.name
    x, label = ds[5]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and label == ds.labels[5]
    write_class_map(tmp_path / "classes.json", ds.class_to_idx)
    assert read_class_map(tmp_path / "classes.json") == ds.class_to_idx
    # A second folder (e.g. generated samples for two of the users) labelled with the same map.
    make_users(tmp_path / "gen", names=("carol", "alice"), per_user=2)
    gen = SpectrogramFolder(tmp_path / "gen", class_to_idx=ds.class_to_idx)
    assert sorted(set(gen.labels)) == [0, 2]
    make_users(tmp_path / "other", names=("dave",), per_user=1)
    with pytest.raises(ValueError, match="dave.*not in the class map"):
        SpectrogramFolder(tmp_path / "other", class_to_idx=ds.class_to_idx)


def test_flat_folder_is_one_unlabelled_class(tmp_path):
    for i in range(3):
        gray_png(tmp_path / f"{i}.png")
    files, labels, class_to_idx = scan_folder(tmp_path)
    assert labels == [0, 0, 0] and class_to_idx == {UNLABELLED: 0}


# ----------------------------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------------------------
def test_npy_normalisation_modes(tmp_path):
    db = np.array([[-60.0, -25.0, 0.0, 10.0]])                          # max 10 dB
    expected = np.array([[-1.0, -0.4, 0.6, 1.0]])                       # clip(db - 10, -50, 0) / 50 * 2 + 1
    cases = {"db": db, "magnitude": 10 ** (db / 20), "power": 10 ** (db / 10)}
    for scale, values in cases.items():
        np.save(tmp_path / f"{scale}.npy", values)
        np.testing.assert_allclose(read_file(tmp_path / f"{scale}.npy", npy_scale=scale)[0], expected, atol=1e-6)
    np.save(tmp_path / "complex.npy", 10 ** (db / 20) * np.exp(1j * np.arange(4)))
    np.testing.assert_allclose(read_file(tmp_path / "complex.npy", npy_scale="magnitude")[0], expected, atol=1e-6)
    # A fixed dB reference (dataset-wide normalisation) instead of the per-image max; -inf (log of 0) is the floor.
    np.save(tmp_path / "fixed.npy", np.array([[-np.inf, -40.0, -10.0, 5.0]]))
    np.testing.assert_allclose(read_file(tmp_path / "fixed.npy", db_reference=0.0, dynamic_range_db=40.0)[0],
                               [[-1.0, -1.0, 0.5, 1.0]], atol=1e-6)
    np.save(tmp_path / "unit.npy", np.array([[0.0, 0.25, 1.0]]))
    np.testing.assert_allclose(read_file(tmp_path / "unit.npy", npy_scale="unit")[0], [[-1.0, -0.5, 1.0]])
    np.save(tmp_path / "minmax.npy", np.array([[3.0, 5.0, 7.0]]))
    np.testing.assert_allclose(read_file(tmp_path / "minmax.npy", npy_scale="minmax")[0], [[-1.0, 0.0, 1.0]])
    np.save(tmp_path / "hwc.npy", np.zeros((5, 6, 3)))
    assert read_file(tmp_path / "hwc.npy", channels=3).shape == (3, 5, 6)


def test_simulator_png_and_npy_load_to_the_same_values(tmp_path):
    md.write_dataset(tmp_path, users=2, per_user=2, size=64, progress=False)
    both = SpectrogramFolder(tmp_path)                                  # 0000.png + 0000.npy: loaded once, as .npy
    assert len(both) == 4 and all(p.suffix == ".npy" for p in both.files)
    png = SpectrogramFolder(tmp_path, suffixes=(".png",), cache=True).tensors()
    npy = SpectrogramFolder(tmp_path, npy_scale="db", dynamic_range_db=50.0).tensors()
    assert torch.equal(png[1], npy[1])
    assert float((png[0] - npy[0]).abs().max()) <= 1 / 255 + 1e-6   # 8-bit quantisation only
    assert png[0].min() >= -1 and png[0].max() == 1


def test_rgb_and_grayscale(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255                                                   # pure red
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "red.png")
    x3 = read_file(tmp_path / "red.png", channels=3)
    np.testing.assert_allclose(x3[:, 0, 0], [1.0, -1.0, -1.0])
    x1 = read_file(tmp_path / "red.png", channels=1)                    # ITU-R 601 luma: 0.299 * 255 = 76
    np.testing.assert_allclose(x1[0, 0, 0], 76 / 255 * 2 - 1, atol=1e-6)
    gray_png(tmp_path / "gray.png", value=51)
    g3 = read_file(tmp_path / "gray.png", channels=3)
    assert g3.shape == (3, 16, 16) and np.all(g3 == np.float32(51 / 255 * 2 - 1))
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "deep.png")   # 16-bit PNG
    np.testing.assert_allclose(read_file(tmp_path / "deep.png"), 1.0)
    Image.fromarray(rgb).save(tmp_path / "red.jpg", quality=95)
    assert read_file(tmp_path / "red.jpg", channels=3)[0].mean() > 0.9


# ----------------------------------------------------------------------------------------------------------------
# Size policies
# ----------------------------------------------------------------------------------------------------------------
def test_resize_and_crop_policies(tmp_path):
    ramp = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))          # value grows left to right
    (tmp_path / "u").mkdir()
    Image.fromarray(ramp, mode="L").save(tmp_path / "u" / "a.png")
    resized = SpectrogramFolder(tmp_path, size=16)[0][0]
    assert resized.shape == (1, 16, 16)
    assert float(resized.mean()) == pytest.approx(float((ramp / 255 * 2 - 1).mean()), abs=1e-3)
    centre = SpectrogramFolder(tmp_path, size=16, resize="center_crop")[0][0]
    np.testing.assert_allclose(centre[0, 0].numpy(), ramp[0, 8:24] / 255 * 2 - 1, atol=1e-6)
    crops = [SpectrogramFolder(tmp_path, size=16, resize="random_crop",
                               generator=torch.Generator().manual_seed(1))[0][0] for _ in range(2)]
    assert torch.equal(crops[0], crops[1])                              # the generator makes crops reproducible
    assert SpectrogramFolder(tmp_path, size=32, resize="none")[0][0].shape == (1, 32, 32)
    with pytest.raises(ValueError, match=r"a.png is 32x32 but resize='none' needs exactly 16x16"):
        SpectrogramFolder(tmp_path, size=16, resize="none")


# ----------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------
def test_splits_are_reproducible_disjoint_and_per_user(tmp_path):
    make_users(tmp_path, per_user=20)
    files, labels, _ = scan_folder(tmp_path)
    a = split_indices(files, labels, 0.1, 0.2, seed=7)
    b = split_indices(list(reversed(files)), list(reversed(labels)), 0.1, 0.2, seed=7)
    assert [files[i] for i in a["test"]] == sorted(list(reversed(files))[i] for i in b["test"])
    assert a == split_indices(files, labels, 0.1, 0.2, seed=7)
    assert a["test"] != split_indices(files, labels, 0.1, 0.2, seed=8)["test"]
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(60))
    for k in range(3):
        assert sum(labels[i] == k for i in a["test"]) == 4 and sum(labels[i] == k for i in a["val"]) == 2
    split = make_split(tmp_path, test_fraction=0.2, val_fraction=0.1, seed=7)
    test = SpectrogramFolder(tmp_path, subset=split["test"])
    assert test.files == [files[i] for i in a["test"]]


def test_split_json_round_trips_and_belongs_to_one_folder(tmp_path):
    make_users(tmp_path / "data", per_user=8)
    split = make_split(tmp_path / "data", test_fraction=0.25, seed=3)
    write_split(tmp_path / "split.json", split)
    assert read_split(tmp_path) == split                                # a run folder or the file itself
    assert split["num_files"] == 24 and len(split["test"]) == 6 and not set(split["test"]) & set(split["train"])
    check_split(split, tmp_path / "data")                               # the same folder passes
    gray_png(tmp_path / "data" / "a" / "999.png")
    with pytest.raises(ValueError, match=r"not the data folder the split was made for \(1 file\(s\) not in the "
                                         r"split \(e.g. a/999.png\)\)"):
        check_split(split, tmp_path / "data")
    with pytest.raises(ValueError, match=r"1 file\(s\) of the split are not in .* \(e.g. bob/nope.png\)"):
        SpectrogramFolder(tmp_path / "data", subset=split["train"] + ["bob/nope.png"])


def test_split_files_that_leak_or_are_not_splits_are_refused(tmp_path):
    make_users(tmp_path / "data", per_user=4)
    split = make_split(tmp_path / "data", test_fraction=0.25)
    leaky = {**split, "train": split["train"] + split["test"][:1]}
    write_split(tmp_path / "leaky.json", leaky)
    with pytest.raises(ValueError, match=r"leaky.json: 1 file\(s\) are both in test and in train/val"):
        read_split(tmp_path / "leaky.json")
    (tmp_path / "other.json").write_text('{"train": []}')
    with pytest.raises(ValueError, match="other.json: not an ldm split file"):
        read_split(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="no split.json"):
        read_split(tmp_path / "nowhere")


def test_group_regex_keeps_recordings_in_one_split(tmp_path):
    for rec in range(6):
        for window in range(3):
            gray_png(tmp_path / "u" / f"rec{rec}_w{window}.png")
    files, labels, _ = scan_folder(tmp_path)
    split = split_indices(files, labels, 0.0, 0.3, seed=0, group_regex=r"(rec\d+)_")
    recordings = {name: {files[i].stem.split("_")[0] for i in idx} for name, idx in split.items()}
    assert recordings["test"] and not recordings["test"] & recordings["train"]


# ----------------------------------------------------------------------------------------------------------------
# Bad input: each a clear error naming the folder or file
# ----------------------------------------------------------------------------------------------------------------
def test_missing_empty_and_unsupported_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        SpectrogramFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty is empty"):
        SpectrogramFolder(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no supported files .*text"):
        SpectrogramFolder(tmp_path / "text")
    make_users(tmp_path / "users", names=("a", "b"), per_user=1)
    (tmp_path / "users" / "c").mkdir()
    (tmp_path / "users" / "c" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=r"\['c'\].*no supported files"):
        SpectrogramFolder(tmp_path / "users")
    make_users(tmp_path / "mixed", names=("a",), per_user=1)
    gray_png(tmp_path / "mixed" / "top.png")
    with pytest.raises(ValueError, match="mixes files"):
        SpectrogramFolder(tmp_path / "mixed")


def test_corrupt_files_raise_naming_the_file_or_are_skipped(tmp_path):
    make_users(tmp_path, names=("a", "b"), per_user=3)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = tmp_path / "b" / "000.png"
    (tmp_path / "b" / "cut.png").write_bytes(good.read_bytes()[:40])    # truncated
    np.save(tmp_path / "b" / "nan.npy", np.full((16, 16), np.nan))
    (tmp_path / "b" / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="broken.png"):
        SpectrogramFolder(tmp_path)
    with pytest.warns(UserWarning, match="skipped 4 unreadable file"):
        ds = SpectrogramFolder(tmp_path, skip_bad=True)
    assert len(ds) == 6 and len(ds.skipped) == 4
    assert {p.split("/")[-1] for p, _ in ds.skipped} == {"broken.png", "cut.png", "nan.npy", "junk.npy"}
    for name in ("cut.png", "nan.npy", "junk.npy"):
        with pytest.raises(ValueError, match=name):
            read_file(tmp_path / "b" / name)


def test_size_errors(tmp_path):
    make_users(tmp_path / "small", names=("a",), per_user=1, size=16)
    gray_png(tmp_path / "small" / "a" / "wide.png", size=(40, 20))
    with pytest.raises(ValueError, match=r"000.png is 16x16, smaller than the requested size 32x32"):
        SpectrogramFolder(tmp_path / "small", size=32)
    with pytest.raises(ValueError, match="shape"):                     # native sizes must agree without size=
        SpectrogramFolder(tmp_path / "small")
    ds = SpectrogramFolder(tmp_path / "small", size=16)
    assert [tuple(ds[i][0].shape) for i in range(len(ds))] == [(1, 16, 16)] * 2


def test_bad_options(tmp_path):
    make_users(tmp_path, names=("a",), per_user=1)
    for kwargs in ({"channels": 2}, {"resize": "stretch"}, {"npy_scale": "linear"}, {"subset": ["a/nope.png"]},
                   {"db_reference": "min"}, {"dynamic_range_db": 0}, {"size": 0}, {"suffixes": (".tif",)}):
        with pytest.raises(ValueError):
            SpectrogramFolder(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices([tmp_path / "a" / "000.png"], [0], 0.5, 0.6, seed=0)
    with pytest.raises(ValueError, match="none left for training"):
        make_split(tmp_path, test_fraction=0.6)
