"""Folder loaders: label mapping, value normalisation (.npy dB / magnitude / power, PNG gray / RGB / 16-bit),
size policies, reproducible splits and every bad-input case, on small folders written into tmp_path."""
import numpy as np
import pytest
import torch
from PIL import Image

from ldm.radar import simulator as md
from ldm.data import UNLABELLED, SpectrogramFolder, parse_size, read_class_map, read_file, scan_folder, write_class_map
from ldm.jet import jet, jet_lut
from ldm.splits import check_split, make_split, read_split, split_indices, write_split


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


# ----------------------------------------------------------------------------------------------------------------
# Non-square sizes, the "pad" policy, jet-coloured PNGs, linear values in a dB .npy
# ----------------------------------------------------------------------------------------------------------------
def test_parse_size_reads_n_and_height_by_width():
    assert parse_size("256") == (256, 256)
    assert parse_size("256x128") == (256, 128) and parse_size(" 64X32 ") == (64, 32)
    for bad in ("0", "256x", "x128", "1.5", "-3", "3x4x5", "", "big"):
        with pytest.raises(ValueError, match=r"--size '.*': expected N .* or HxW \(height x width\)"):
            parse_size(bad, "--size")


def test_non_square_sizes_under_every_policy(tmp_path):
    rows = np.arange(24, dtype=np.float64)[:, None] * np.ones((1, 40))   # 24 x 40, value = row index
    (tmp_path / "u").mkdir()
    Image.fromarray(np.uint8(rows * 10), mode="L").save(tmp_path / "u" / "a.png")
    expected = rows * 10 / 255 * 2 - 1
    crop = SpectrogramFolder(tmp_path, size=(16, 32), resize="center_crop")[0][0]
    np.testing.assert_allclose(crop[0].numpy(), expected[4:20, 4:36], atol=1e-6)
    assert SpectrogramFolder(tmp_path, size=(16, 32), resize="random_crop")[0][0].shape == (1, 16, 32)
    resized = SpectrogramFolder(tmp_path, size=(12, 40))[0][0]         # halves rows only: a symmetric filter
    pairs = (expected[0::2] + expected[1::2]) / 2                       # on a linear ramp gives row-pair means
    np.testing.assert_allclose(resized[0, 1:-1].numpy(), pairs[1:-1], atol=1e-5)     # (edges are renormalised)
    assert SpectrogramFolder(tmp_path, size=(24, 40), resize="none").size == (24, 40)
    with pytest.raises(ValueError, match=r"a.png is 24x40, smaller than the requested size 32x32 \(height x width"):
        SpectrogramFolder(tmp_path, size=32)
    with pytest.raises(ValueError, match="size must be a positive int, a pair"):
        SpectrogramFolder(tmp_path, size=(16, 0))


def test_pad_keeps_the_aspect_ratio_and_fills_with_the_floor(tmp_path):
    (tmp_path / "u").mkdir()
    Image.fromarray(np.full((20, 40), 255, np.uint8), mode="L").save(tmp_path / "u" / "wide.png")
    def image_and_padding(x, top, left, height, width):
        inside = torch.zeros_like(x, dtype=torch.bool)
        inside[..., top:top + height, left:left + width] = True
        return x[inside], x[~inside]

    x = SpectrogramFolder(tmp_path, size=20, resize="pad")[0][0]       # 20x40 -> 10x20, centred in 20x20
    image, padding = image_and_padding(x, 5, 0, 10, 20)
    assert x.shape == (1, 20, 20) and torch.allclose(image, torch.ones(200)) and torch.equal(padding, -torch.ones(200))
    x = SpectrogramFolder(tmp_path, size=(30, 50), resize="pad", cache=True)[0][0]   # smaller: padded, not scaled
    image, padding = image_and_padding(x, 5, 5, 20, 40)
    assert torch.equal(image, torch.ones(800)) and torch.equal(padding, -torch.ones(30 * 50 - 800))
    x = SpectrogramFolder(tmp_path, size=(41, 10), resize="pad")[0][0]   # 20x40 -> 5x10; 36 rows: 18 above
    image, padding = image_and_padding(x, 18, 0, 5, 10)
    assert torch.allclose(image, torch.ones(50)) and torch.equal(padding, -torch.ones(360))


def test_jet_png_decodes_to_its_levels(tmp_path):
    # Jet from its definition (piecewise linear knots): spot values, then an 8-bit ramp encoded and decoded.
    expected = [[0, 0, 0.5],                                           # x = 0: dark blue
                [0, 0, 1],                                             # 0.11: blue (flat until 0.125)
                [0.025 / 0.31, 1, 1 - 0.035 / 0.31],                   # 0.375: red rising 0.35 -> 0.66, blue falling
                [0.15 / 0.31, 1, 1 - 0.16 / 0.31],                     # 0.5
                [1, 1 - 0.25 / 0.27, 0],                               # 0.89: green falling 0.64 -> 0.91
                [0.5, 0, 0]]                                           # 1: dark red
    np.testing.assert_allclose(jet([0.0, 0.11, 0.375, 0.5, 0.89, 1.0]), expected, atol=1e-12)
    levels = np.tile(np.arange(256), (4, 1))                            # a magnitude ramp, one level per column
    Image.fromarray(np.uint8(np.round(jet_lut()[levels] * 255))).save(tmp_path / "ramp.png")
    decoded = (read_file(tmp_path / "ramp.png", colormap="jet")[0] + 1) / 2 * 255
    error = np.abs(decoded - levels).max(axis=0)                       # (256,) per level
    flat = (np.arange(256) >= 28) & (np.arange(256) <= 32)             # jet is pure blue for x in [0.11, 0.125]
    assert error[~flat].max() <= 1e-3 and error[flat].max() <= 2 + 1e-3
    # Luma would not even be monotonic in the level; 3 channels repeat the decoded level.
    assert read_file(tmp_path / "ramp.png", colormap="jet", channels=3).shape == (3, 4, 256)
    (tmp_path / "u").mkdir()
    (tmp_path / "ramp.png").rename(tmp_path / "u" / "ramp.png")
    x = SpectrogramFolder(tmp_path, colormap="jet")[0][0]
    assert np.abs((x[0].numpy() + 1) / 2 * 255 - levels).max() <= 2 + 1e-3


def test_greyscale_images_with_colormap_jet_are_refused(tmp_path):
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    Image.fromarray(ramp, mode="L").save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match=r"grey.png: colormap='jet' needs a colour image, got a greyscale one "
                                         r"\(mode L\)"):
        read_file(tmp_path / "grey.png", colormap="jet")
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    with pytest.raises(ValueError, match=r"grey_rgb.png: colormap='jet' but its median pixel is 0.\d\d from the "
                                         r"nearest jet colour"):
        read_file(tmp_path / "grey_rgb.png", colormap="jet")
    with pytest.raises(ValueError, match="colormap must be one of"):
        read_file(tmp_path / "grey.png", colormap="viridis")


def _walker_power(n_fft=128, frames=128, seed=0):
    """|STFT|^2 (Doppler, time) of a toy walker: a torso at 1/8 of the PRF and two limbs swinging about it
    sinusoidally, in complex white noise 40 dB below the torso; Hann window, frames evenly spaced."""
    t = np.arange(4096)
    phase = 2 * np.pi * t / 8                                            # torso Doppler: PRF / 8
    swing = [0.3 * np.exp(1j * (phase + 40 * np.sin(2 * np.pi * t / 1024 + k * np.pi))) for k in (0, 1)]
    noise = np.array([1, 1j]) @ np.random.default_rng(seed).standard_normal((2, len(t))) * 0.01 / np.sqrt(2)
    signal = np.exp(1j * phase) + sum(swing) + noise
    starts = np.round(np.linspace(0, len(t) - n_fft, frames)).astype(np.int64)
    spectrum = np.fft.fft(signal[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft), axis=1)
    return (np.abs(spectrum) ** 2).T


def test_linear_values_read_as_db_are_refused_and_db_values_are_not(tmp_path):
    md.write_dataset(tmp_path / "sim", users=2, per_user=2, size=64, progress=False)
    assert len(SpectrogramFolder(tmp_path / "sim", suffixes=(".npy",))) == 4   # the simulator's dB re max
    db = np.load(tmp_path / "sim" / "user_00" / "0000.npy").astype(np.float64)
    power = _walker_power()
    linear = {"sim_magnitude": 10 ** (db / 20), "sim_power": 10 ** (db / 10), "magnitude": np.sqrt(power),
              "power": power}
    for name, values in linear.items():
        np.save(tmp_path / f"{name}.npy", values)
        with pytest.raises(ValueError, match=rf"{name}.npy: these values look linear, not dB .* use --npy-scale "
                                             r"magnitude"):
            read_file(tmp_path / f"{name}.npy")
    for name in ("magnitude", "power"):                                  # read as what they are: as dB re max
        np.testing.assert_allclose(read_file(tmp_path / f"sim_{name}.npy", npy_scale=name),
                                   read_file(tmp_path / "sim" / "user_00" / "0000.npy"), atol=1e-5)
    # dB spectrograms with values >= 0: absolute dB, dB over a floor, dB re the noise median, dB scaled to [0, 1].
    absolute = 10 * np.log10(power * 1e10)
    assert absolute.min() > 0
    variants = {"absolute": absolute, "over_floor": db + 50, "noise": np.clip(absolute - np.median(absolute), 0, None),
                "unit": (db + 50) / 50}
    for name, values in variants.items():
        np.save(tmp_path / f"{name}.npy", values)
        assert read_file(tmp_path / f"{name}.npy").shape == (1, *values.shape), name


def test_a_file_given_as_the_data_folder_says_so(tmp_path):
    gray_png(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"a.png is a file, not a folder"):
        SpectrogramFolder(tmp_path / "a.png")
