"""Bad data files and split files (ldm.data): each is refused at the start, in one line naming the file, instead of
a traceback, an allocation of what a header claims, a silently skipped file, or training on scrambled pixels."""
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluate
from ldm.data import SpectrogramFolder, check_file, read_file, scan_folder
from ldm.jet import jet_lut
from ldm.splits import make_split, read_split, write_split
from tests.helpers import png_folder


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_a_npy_header_claiming_149_gb_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2), np.float32))
    header["shape"] = (200_000, 200_000)                                # 1.6e11 bytes = 149 GiB
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(ValueError) as error:
        read_file(path)
    assert _one_line(error) == (f"{path}: its header claims an array (200000, 200000) of float32 (160,000,000,000 "
                                "bytes) but the file holds 64 bytes of data (truncated or corrupt)")
    truncated = tmp_path / "cut.npy"
    np.save(truncated, np.zeros((8, 8), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"holds 246 bytes of data \(truncated or corrupt\)$"):
        check_file(truncated)
    with pytest.raises(ValueError, match=r"not a \.npy file"):
        (tmp_path / "text.npy").write_text("hello")
        read_file(tmp_path / "text.npy")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height 8-bit grey and that holds no pixel data (PIL opens it lazily)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_a_400_megapixel_png_is_refused_in_one_line(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 20_000, 20_000)
    for read in (read_file, check_file):
        with pytest.raises(ValueError) as error:
            read(path)
        assert _one_line(error) == (f"{path}: Image size (400000000 pixels) exceeds limit of 178956970 pixels (PIL's "
                                    "decompression-bomb limit); an image this large is not a spectrogram to train on: "
                                    "resize it")
    _png_header_only(tmp_path / "big.png", 10_000, 10_000)              # above PIL's warning size, below its error
    with pytest.raises(ValueError, match=r"Image size \(100000000 pixels\) exceeds limit of 89478485 pixels"):
        read_file(tmp_path / "big.png")


def test_links_that_do_not_resolve_are_reported_not_skipped(tmp_path):
    data = png_folder(_made(tmp_path / "data"), 2, 16)
    (data / "alice" / "loop_a.png").symlink_to(data / "alice" / "loop_b.png")
    (data / "alice" / "loop_b.png").symlink_to(data / "alice" / "loop_a.png")
    with pytest.raises(ValueError) as error:
        scan_folder(data)
    assert _one_line(error) == (f"2 link(s) under {data} do not resolve (dangling, or a loop), e.g. "
                                f"{data / 'alice' / 'loop_a.png'} -> {data / 'alice' / 'loop_b.png'}; fix or remove "
                                "them")
    for name in ("loop_a.png", "loop_b.png"):
        (data / "alice" / name).unlink()
    (data / "carol").symlink_to(tmp_path / "moved-away")                 # a user folder link, dangling
    with pytest.raises(ValueError, match=rf"1 link\(s\) under {data} do not resolve .* e.g. {data / 'carol'} -> "):
        make_split(data)
    (data / "carol").unlink()
    (data / "carol").symlink_to(data / "bob", target_is_directory=True)  # a link that resolves is a folder
    assert scan_folder(data)[2] == {"alice": 0, "bob": 1, "carol": 2}


def _jet_folder(root: Path, size: int = 24) -> Path:
    """Two users of jet-coloured spectrogram-like PNGs (smooth random levels, rendered with 8-bit jet)."""
    rng = np.random.default_rng(0)
    table = np.round(jet_lut() * 255).astype(np.uint8)
    for user in ("alice", "bob"):
        (root / user).mkdir(parents=True)
        for i in range(3):
            levels = np.cumsum(rng.random((size, size)), axis=1)
            levels = (levels / levels.max() * 255).astype(np.uint8)
            Image.fromarray(table[levels]).save(root / user / f"{i}.png")
    return root


def test_jet_coloured_pngs_without_colormap_jet_are_refused_with_the_hint(tmp_path):
    data = _jet_folder(tmp_path / "jet")
    with pytest.raises(ValueError) as error:
        SpectrogramFolder(data, size=24)
    assert _one_line(error) == (f"{data / 'alice' / '0.png'}: a jet-coloured image (its pixels are jet colours), "
                                "read as grey levels; pass --colormap jet (colormap='jet') to map the colours back to "
                                "levels: jet's luma is not monotonic in the level")
    assert len(SpectrogramFolder(data, size=24, colormap="jet")) == 6
    assert len(SpectrogramFolder(data, size=24, channels=3)) == 6       # RGB kept as RGB: asked for
    grey = tmp_path / "grey"                                             # greyscale saved as RGB is not jet
    png_folder(_made(grey), 2, 16)
    for path in grey.rglob("*.png"):
        Image.open(path).convert("RGB").save(path)
    assert len(SpectrogramFolder(grey, size=16)) == 4


def test_a_corrupt_file_stops_the_split_wherever_it_would_go(tmp_path):
    data = png_folder(_made(tmp_path / "data"), 4, 16)
    broken = data / "bob" / "2.png"
    broken.write_bytes(broken.read_bytes()[:60])                        # cut inside the pixel data
    with pytest.raises(ValueError) as error:
        make_split(data, test_fraction=0.25, val_fraction=0.0)
    assert _one_line(error).startswith(f"cannot read {broken}: ")


@pytest.fixture()
def split_file(tmp_path):
    data = png_folder(_made(tmp_path / "data"), 4, 16)
    path = tmp_path / "split.json"
    write_split(path, make_split(data, test_fraction=0.25, val_fraction=0.25))
    return data, path


def _edit(path: Path, **changes) -> Path:
    split = json.loads(path.read_text())
    split.update(changes)
    path.write_text(json.dumps(split))
    return path


@pytest.mark.parametrize("key, value, message", [
    ("train", None, '"train" is null; expected a list of file names ("user/file")'),
    ("test", "alice/0.png", '"test" is "alice/0.png"; expected a list of file names ("user/file")'),
    ("class_to_idx", None, '"class_to_idx" is null; expected a map of user names to IDs 0, 1, ...'),
    ("files_sha256", 7, '"files_sha256" is 7; expected the hash string make_split wrote'),
])
def test_split_json_with_wrong_types_gives_one_line(split_file, key, value, message):
    _, path = split_file
    with pytest.raises(ValueError) as error:
        read_split(_edit(path, **{key: value}))
    assert _one_line(error) == f"{path}: {message}"


def test_an_edited_split_is_reported_as_edited_not_as_another_folder(split_file):
    data, path = split_file
    split = json.loads(path.read_text())
    edited = ("an edited split: its train/val/test lists ({} files) no longer hash to its files_sha256 (a file "
              "dropped from or added to a list, or the hash edited); use the split.json the first run wrote, or start "
              "from a new run (a new split)")
    with pytest.raises(ValueError) as error:
        read_split(_edit(path, train=split["train"][1:]))                # a file dropped from its list
    assert _one_line(error) == f"{path}: " + edited.format(7)
    with pytest.raises(ValueError) as error:
        read_split(_edit(path, train=split["train"], files_sha256="0" * 64))   # the hash edited
    assert _one_line(error) == f"{path}: " + edited.format(8)
    with pytest.raises(ValueError, match=r"1 file\(s\) are listed twice, e.g. "):
        read_split(_edit(path, files_sha256=split["files_sha256"], val=split["val"] + split["train"][:1]))


def test_evaluate_with_a_broken_split_exits_2_in_one_line(split_file, tmp_path, capsys):
    data, path = split_file
    _edit(path, train=None)
    code = evaluate.main(["--real", str(data), "--generated", str(data), "--split", str(path), "--out",
                          str(tmp_path / "report.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f'evaluate.py: error: {path}: "train" is null; expected a list of file names ("user/file")\n'


def test_a_too_small_file_names_the_resize_option_not_python(tmp_path):
    data = png_folder(_made(tmp_path / "data"), 1, 16)
    with pytest.raises(ValueError, match=r"choose a smaller --size, or --resize pad\)$"):
        SpectrogramFolder(data, size=32)
