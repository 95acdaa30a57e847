"""Folder datasets of spectrograms (or any images) with user IDs: ROOT/<user>/<file> -> (x in [-1, 1], label).

Layout
    ROOT/<user>/<file>   one subfolder per user; labels are the sorted subfolder names numbered 0, 1, ...
                         (`dataset.class_to_idx`; save it next to any model trained on the data, `write_class_map`)
    ROOT/<file>          a flat folder is one unlabelled class (label 0, name UNLABELLED)
Files directly inside those folders with a supported suffix are used (.npy .png .jpg .jpeg, any case; `suffixes`
narrows the set); other files (metadata.json, .txt, ...) and hidden folders are ignored; deeper subfolders are not
searched. A stem present in several formats (the simulator writes 0000.png and 0000.npy) is loaded once, from the
first of .npy, .png, .jpg, .jpeg: full-precision arrays win over 8-bit images.

Values (every sample ends as float32 (C, H, W) in [-1, 1])
    PNG / JPEG   8-bit: v / 255 * 2 - 1 (16-bit PNG: v / 65535). channels=1 turns RGB into ITU-R 601 luma;
                 channels=3 keeps RGB and repeats grayscale three times.
        colormap="jet"   the image is a jet-coloured rendering (matplotlib's jet, the common published format):
                         each pixel becomes the level of its nearest jet colour, (level / 255) * 2 - 1, instead of
                         its luma (which is not monotonic in the level). Jet is defined in `ldm.jet.JET_KNOTS`; its 256
                         colours are `jet_lut()`. Jet is flat (pure blue) for x in [0.11, 0.125]: those levels
                         decode to their middle (within 2 of 255 levels; all others exactly). JPEG's colour
                         subsampling costs about 10 of 255 levels on average (quality 75): prefer PNG. A
                         greyscale image, or one whose median pixel is farther than 0.25 (RGB in [0, 1]) from
                         every jet colour (another colour map), is an error. .npy files ignore colormap.
    .npy         (H, W), (C, H, W) or (H, W, C) with C in {1, 3}; `npy_scale` says what the numbers are:
        "db"         dB values. ref = the image max (db_reference="max") or a fixed dB value (db_reference=float);
                     x = clip(v - ref, -dynamic_range_db, 0) / dynamic_range_db * 2 + 1
        "magnitude"  linear amplitude |S| (complex allowed): 20 log10 |v|, then as "db"
        "power"      linear power |S|^2: 10 log10 v, then as "db"
        "unit"       already in [0, 1]: v * 2 - 1
        "minmax"     per-image (v - min) / (max - min) * 2 - 1
    The simulator (ldm.radar.simulator) writes dB re the image max in [-50, 0]: npy_scale="db" reproduces its PNGs.
    Linear values read as dB are refused (they would give a black or a flat white image): under "db", a file whose
    values are all >= 0 and whose peak is more than LINEAR_PEAK_RATIO = 4 times the 90th percentile of its values
    above the minimum is an error suggesting npy_scale "magnitude". The brightest tenth of a spectrogram is the
    body's return: in dB it lies within a small factor of the peak (at most 3.3 in every dB rendering of simulated
    walks we tried: absolute dB, dB re max with a 20-100 dB floor, dB re the noise floor, 8-bit, resized), while
    linear magnitudes put it 4.3-18 times (power 20-270 times) below the peak. The image minimum is left out because
    clipped dB images pile up there. dB re max (all values <= 0, like the simulator's) is never refused; dB values
    refused all the same can be read with npy_scale "minmax".

Size policy (`size`: an int for size x size, or (height, width); None keeps native sizes, which must then all
agree; otherwise `resize`):
    "resize"       antialiased bilinear to H x W (aspect ratio not kept)
    "center_crop"  the central H x W window;  "random_crop": a random one per access
    "pad"          keep the aspect ratio: antialiased bilinear by min(1, H / h, W / w), the largest factor that
                   fits the h x w file inside H x W without upsampling, then centred, the rest filled with -1 (the
                   floor of the dB range, i.e. no return; centring keeps 0 m/s at the middle row of a symmetric
                   velocity axis)
    "none"         files must already be H x W
No policy upsamples: under the others a file smaller than H x W in either dimension is an error ("pad" pads it).
`parse_size("256x128")` reads a --size option: (height 256, width 128).

Every file is decoded once at construction, so a corrupt file is a ValueError naming it before training starts
(`skip_bad=True` skips such files instead and warns with their count; `dataset.skipped` lists them). Sizes are
bounded before anything is allocated: a .npy header is checked against the file's length (a truncated file, or a
header claiming 149 GB) and against MAX_NPY_BYTES, an image against PIL's decompression-bomb limit. A link under
ROOT that does not resolve (dangling, or a loop) is an error naming it, not a file silently left out. A jet-coloured
RGB image read without colormap="jet" (its luma is not monotonic in the level) is an error with the hint.

The split of a folder into train/val/test (split.json) is ldm.splits.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ldm.cli import NPY_SCALES, RESIZE_POLICIES  # noqa: F401  (the loader policies; re-exported)
from ldm.files import atomic_write
from ldm.jet import decode_jet, refuse_jet_as_luma

SUPPORTED_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg")            # also the preference order for one stem
UNLABELLED = "<unlabelled>"
COLORMAPS = (None, "jet")
PAD_VALUE = -1.0          # what "pad" fills with: the floor of the dB range (-dynamic_range_db re the max)
LINEAR_PEAK_RATIO = 4.0   # under npy_scale="db": peak / 90th percentile above which values look linear
MAX_NPY_BYTES = 2**31     # a .npy spectrogram larger than 2 GiB is a mistake (4096 x 4096 float64 is 128 MiB)


def parse_size(text: str, what: str = "size") -> tuple[int, int]:
    """A --size value -> (height, width): "256" -> (256, 256), "256x128" -> (256, 128). ValueError naming `what`
    (the option) and the expected form for anything else."""
    parts = str(text).strip().lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        return int(parts[0]), int(parts[-1])                           # "N" is N x N
    raise ValueError(f"{what} {text!r}: expected N (N x N pixels) or HxW (height x width), positive integers, "
                     "e.g. 256 or 256x128")


def _size_pair(size) -> tuple[int, int] | None:
    """None, an int N or a pair (H, W) -> None or (H, W); ValueError for anything else."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else size
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in pair)):
        raise ValueError(f"size must be a positive int, a pair (height, width) of them, or None; got {size!r}")
    return int(pair[0]), int(pair[1])


def _listing(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Supported files directly in folder, sorted by name, one per stem (first suffix in `suffixes` order wins)."""
    best: dict[str, Path] = {}
    for p in folder.iterdir():
        suffix = p.suffix.lower()
        if suffix in suffixes and p.is_file() and not p.name.startswith("."):
            if p.stem not in best or suffixes.index(suffix) < suffixes.index(best[p.stem].suffix.lower()):
                best[p.stem] = p
    return sorted(best.values())


def _broken_links(folder: Path) -> list[Path]:
    """Entries of ``folder`` (not hidden) that are links which do not resolve: dangling, or part of a loop."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_symlink() and not p.exists())


def _check_links(root: Path, folders: list[Path]) -> None:
    """ValueError naming the first link under root that does not resolve (instead of leaving its file out)."""
    broken = [p for folder in (root, *folders) for p in _broken_links(folder)]
    if broken:
        try:
            target = os.readlink(broken[0])
        except OSError:
            target = "?"
        raise ValueError(f"{len(broken)} link(s) under {root} do not resolve (dangling, or a loop), e.g. {broken[0]} "
                         f"-> {target}; fix or remove them")


def scan_folder(root: str | Path, class_to_idx: dict[str, int] | None = None,
                suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES) -> tuple[list[Path], list[int], dict[str, int]]:
    """List the supported files under root and label them.

    Returns (files, labels, class_to_idx), files sorted by (label, name). class_to_idx maps the sorted subfolder
    names to 0, 1, ...; pass an existing map (e.g. the one a model was trained with) to label a second folder the
    same way, in which case every subfolder name must be in it. Raises FileNotFoundError / ValueError for a
    missing or empty root, no supported files, a class folder with no supported files, or files mixed with
    class folders at the top level. `suffixes`: the file types to use, in order of preference for one stem.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    if not suffixes or any(s not in SUPPORTED_SUFFIXES for s in suffixes):
        raise ValueError(f"suffixes must be a non-empty subset of {SUPPORTED_SUFFIXES}, got {suffixes}")
    root = Path(root)
    if root.is_file():
        raise ValueError(f"data folder {root} is a file, not a folder (expected ROOT/<user>/<files> or ROOT/<files>)")
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (expected ROOT/<user>/<files> or ROOT/<files>)")
    entries = sorted(root.iterdir())
    if not entries:
        raise ValueError(f"data folder {root} is empty (expected ROOT/<user>/<files> or ROOT/<files>)")
    top_files = _listing(root, suffixes)
    subdirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    _check_links(root, subdirs)
    listings = {d: _listing(d, suffixes) for d in subdirs}
    class_dirs = [d for d in subdirs if listings[d]]
    if top_files and class_dirs:
        raise ValueError(f"{root} mixes files ({top_files[0].name}, ...) with user folders ({class_dirs[0].name}, "
                         "...); put every file in a user folder, or use a flat folder for one unlabelled class")
    if top_files:
        if class_to_idx is not None and list(class_to_idx) != [UNLABELLED]:
            raise ValueError(f"{root} is a flat folder (no user subfolders) but a class map "
                             f"{sorted(class_to_idx)} was given")
        return top_files, [0] * len(top_files), {UNLABELLED: 0}
    if not subdirs:
        names = ", ".join(p.name for p in entries[:3])
        raise ValueError(f"no supported files ({' '.join(suffixes)}) in {root} (found {names}, ...)")
    empty = [d.name for d in subdirs if d not in class_dirs]
    if empty:
        raise ValueError(f"user folder(s) {empty} in {root} hold no supported files ({' '.join(suffixes)})")
    names = [d.name for d in class_dirs]
    if class_to_idx is None:
        class_to_idx = {name: i for i, name in enumerate(names)}
    unknown = [n for n in names if n not in class_to_idx]
    if unknown:
        raise ValueError(f"user folder(s) {unknown} in {root} are not in the class map {sorted(class_to_idx)}")
    files, labels = [], []
    for d in sorted(class_dirs, key=lambda d: class_to_idx[d.name]):
        files += listings[d]
        labels += [class_to_idx[d.name]] * len(listings[d])
    return files, labels, dict(class_to_idx)


def write_class_map(path: str | Path, class_to_idx: dict[str, int]) -> None:
    """Save the user-name -> ID map as JSON, atomically (store it with every model trained on the folder)."""
    text = json.dumps(class_to_idx, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_class_map(path: str | Path) -> dict[str, int]:
    """Load a map written by write_class_map."""
    return {str(k): int(v) for k, v in json.loads(Path(path).read_text()).items()}


# ----------------------------------------------------------------------------------------------------------------
# Reading one file -> float32 (C, H, W) in [-1, 1]
# ----------------------------------------------------------------------------------------------------------------
def _open_image(path: Path):
    """PIL.Image.open(path), with an image above PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS; PIL warns
    from that size and refuses twice it) a one-line ValueError before any pixel is decoded."""
    from PIL import Image
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ValueError(f"{path}: {str(error).split(',')[0]} (PIL's decompression-bomb limit); an image this "
                             "large is not a spectrogram to train on: resize it") from None


def _read_image(path: Path, channels: int, colormap: str | None) -> np.ndarray:
    with _open_image(path) as im:
        im.load()
        if colormap == "jet":
            if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                raise ValueError(f"{path}: colormap='jet' needs a colour image, got a greyscale one (mode {im.mode}); "
                                 "read greyscale spectrograms without a colormap")
            x = decode_jet(np.asarray(im.convert("RGB")), path)[None]  # (1, H, W) in [0, 1]
        elif im.mode in ("I;16", "I;16B", "I;16L", "I"):               # 16-bit grayscale PNG
            v = np.asarray(im, dtype=np.float64)
            if v.min() < 0 or v.max() > 65535:
                raise ValueError(f"{path}: integer image values outside 0..65535")
            x = (v / 65535)[None]
        elif im.mode == "F":
            raise ValueError(f"{path}: floating-point images are not supported; save them as .npy")
        else:
            if channels == 1 and im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                refuse_jet_as_luma(np.asarray(im.convert("RGB")), path)
            target = "L" if channels == 1 else "RGB"                   # 'L' uses ITU-R 601 luma for colour
            x = np.asarray(im.convert(target), dtype=np.float64) / 255
            x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if x.shape[0] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=0)
    return (x * 2 - 1).astype(np.float32)


def _linear_peak_ratio(v: np.ndarray) -> float:
    """max / (90th percentile of the values above the minimum) of non-negative values: how far the peak stands
    above the brightest tenth of the image (the module docstring explains why this tells linear from dB)."""
    above = v[v > v.min()]
    return float(v.max() / np.percentile(above, 90)) if above.size else 1.0


def _npy_to_unit(v: np.ndarray, path: Path, npy_scale: str, dynamic_range_db: float,
                 db_reference: str | float) -> np.ndarray:
    """Map raw .npy values to [-1, 1] according to npy_scale (see the module docstring)."""
    if np.iscomplexobj(v):
        if npy_scale != "magnitude":
            raise ValueError(f"{path}: complex values need npy_scale='magnitude', got {npy_scale!r}")
        v = np.abs(v)
    v = v.astype(np.float64)
    if np.isnan(v).any():
        raise ValueError(f"{path}: contains NaN")
    if npy_scale == "db" and np.isfinite(v).all() and v.min() >= 0:
        ratio = _linear_peak_ratio(v)
        if ratio > LINEAR_PEAK_RATIO:
            raise ValueError(f"{path}: these values look linear, not dB (all >= 0, peak {ratio:.1f} x the 90th "
                             f"percentile; dB images stay within {LINEAR_PEAK_RATIO:g} x): use --npy-scale magnitude "
                             "(npy_scale='magnitude') for |S|, power for |S|^2, or minmax if they really are dB")
    if npy_scale in ("magnitude", "power"):
        if (v < 0).any():
            raise ValueError(f"{path}: negative values cannot be a linear {npy_scale} (use npy_scale='db'?)")
        with np.errstate(divide="ignore"):
            v = (20 if npy_scale == "magnitude" else 10) * np.log10(v)  # 0 -> -inf, clipped below
    if npy_scale in ("db", "magnitude", "power"):
        finite = v[np.isfinite(v)]
        if finite.size == 0 or np.isposinf(v).any():
            raise ValueError(f"{path}: no finite dB values (or +inf)")
        ref = finite.max() if db_reference == "max" else float(db_reference)
        x = np.clip(np.nan_to_num(v - ref, neginf=-dynamic_range_db), -dynamic_range_db, 0.0)
        return x / dynamic_range_db * 2 + 1
    if not np.isfinite(v).all():
        raise ValueError(f"{path}: contains inf")
    if npy_scale == "unit":
        if v.min() < -1e-6 or v.max() > 1 + 1e-6:
            raise ValueError(f"{path}: npy_scale='unit' needs values in [0, 1], got [{v.min():.3g}, {v.max():.3g}]")
        return np.clip(v, 0, 1) * 2 - 1
    span = v.max() - v.min()                                           # "minmax"
    return (v - v.min()) / span * 2 - 1 if span > 0 else np.zeros_like(v)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header, checked before any data is read: the data the header describes must be
    exactly what the file holds after it (a truncated file, or a header claiming 149 GB, is refused), at most
    MAX_NPY_BYTES, and not Python objects."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                shape, _, dtype = np.lib.format._read_array_header(f, version)
        except (ValueError, EOFError, SyntaxError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a .npy file (its header: {error})") from None
        held = os.fstat(f.fileno()).st_size - f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects (dtype {dtype}), not numbers")
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if claimed != held:
        raise ValueError(f"{path}: its header claims an array {tuple(shape)} of {dtype} ({claimed:,} bytes) but the "
                         f"file holds {held:,} bytes of data (truncated or corrupt)")
    if claimed > MAX_NPY_BYTES:
        raise ValueError(f"{path}: an array {tuple(shape)} of {dtype} ({claimed / 2**30:.1f} GiB) is larger than a "
                         f"spectrogram ({MAX_NPY_BYTES / 2**30:.0f} GiB at most)")
    return tuple(shape), dtype


def native_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image or .npy file from its header, without decoding it."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        shape, _ = _npy_header(path)
        if len(shape) == 3 and shape[-1] in (1, 3) and shape[0] not in (1, 3):
            shape = shape[2:] + shape[:2]                               # (H, W, C) -> (C, H, W)
        if len(shape) not in (2, 3):
            raise ValueError(f"{path}: expected an array (H, W), (C, H, W) or (H, W, C), got {shape}")
        return int(shape[-2]), int(shape[-1])
    try:
        with _open_image(path) as im:
            width, height = im.size
    except (OSError, EOFError, SyntaxError) as err:
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from None
    return height, width


def common_size(files: list[Path]) -> tuple[int, int]:
    """The most common (height, width) among ``files`` (native_size; ties: the larger), read from their headers:
    the size a folder's data naturally has."""
    counts: dict[tuple[int, int], int] = {}
    for path in files:
        size = native_size(path)
        counts[size] = counts.get(size, 0) + 1
    return max(counts, key=lambda size: (counts[size], size))


def check_file(path: str | Path) -> None:
    """Open ``path`` without decoding its pixels: a .npy header checked against the file (_npy_header), an image's
    header and size (decompression-bomb limit) and, for PNG, every chunk's checksum (PIL's verify). ValueError
    naming the file when it cannot be read; make_split runs it on every file."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            _npy_header(path)
            return
        with _open_image(path) as im:
            im.verify()
    except ValueError as err:
        raise ValueError(str(err) if str(path) in str(err) else f"cannot read {path}: {err}") from None
    except (OSError, EOFError, SyntaxError) as err:
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from None


def _read_npy(path: Path, channels: int, npy_scale: str, dynamic_range_db: float,
              db_reference: str | float) -> np.ndarray:
    _npy_header(path)                                                   # sizes checked before allocating
    v = np.load(path, allow_pickle=False)
    if v.ndim == 3 and v.shape[-1] in (1, 3) and v.shape[0] not in (1, 3):
        v = v.transpose(2, 0, 1)                                       # (H, W, C) -> (C, H, W)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[0] not in (1, 3) or min(v.shape[1:]) < 1:
        raise ValueError(f"{path}: expected an array (H, W), (C, H, W) or (H, W, C) with C in {{1, 3}}, got {v.shape}")
    if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
        raise ValueError(f"{path}: expected a numeric array, got dtype {v.dtype}")
    x = _npy_to_unit(v, path, npy_scale, dynamic_range_db, db_reference)
    if x.shape[0] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=0)
    elif x.shape[0] == 3 and channels == 1:
        x = x.mean(axis=0, keepdims=True)
    return x.astype(np.float32)


def read_file(path: str | Path, channels: int = 1, npy_scale: str = "db", dynamic_range_db: float = 50.0,
              db_reference: str | float = "max", colormap: str | None = None) -> np.ndarray:
    """One image or .npy file -> float32 (channels, H, W) in [-1, 1]. A file that cannot be read or decoded is a
    ValueError naming it. Options as for SpectrogramFolder."""
    path = Path(path)
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {COLORMAPS}, got {colormap!r}")
    try:
        if path.suffix.lower() == ".npy":
            return _read_npy(path, channels, npy_scale, dynamic_range_db, db_reference)
        return _read_image(path, channels, colormap)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"cannot read {path}: {err}") from err
    except (OSError, EOFError, SyntaxError) as err:                    # PIL/numpy decode and I/O errors
        raise ValueError(f"cannot read {path}: {type(err).__name__}: {err}") from err


# ----------------------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------------------
def relative_names(root: str | Path, files: list[Path]) -> list[str]:
    """Paths relative to root, with forward slashes ("user_00/0003.npy"): the names split.json stores."""
    root = Path(root)
    return [p.relative_to(root).as_posix() for p in files]



# ----------------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------------
class SpectrogramFolder(Dataset):
    """ROOT/<user>/<file> (or a flat ROOT/<file>) as (x, label): x float32 (channels, H, W) in [-1, 1].

    Args:
        root: the folder.  size: N for N x N, (H, W), or None for native sizes (all files must share one shape).
        channels: 1 or 3.  resize: "resize" | "center_crop" | "random_crop" | "pad" | "none" (module docstring).
        npy_scale, dynamic_range_db, db_reference: how .npy values map to [-1, 1] (module docstring).
        colormap: None, or "jet" for jet-coloured PNG/JPEG files, mapped back to levels (module docstring).
        subset: None (all files) or the relative file names to keep, e.g. split["train"] of a split.json;
            a name that is not in the folder is an error.
        class_to_idx: label a folder with an existing user-name -> ID map (e.g. generated samples for a model).
        skip_bad: skip unreadable files (warn with their count) instead of raising ValueError.
        suffixes: file types to use, in order of preference for a stem present in several formats.
        cache: keep the decoded arrays in memory, already resized (decoded once at construction anyway).
        generator: torch.Generator for random crops (default: torch's global RNG).
    Attributes: files, labels, class_to_idx, classes (names by ID), size ((H, W) or None), skipped [(path, reason)].
    """

    def __init__(self, root: str | Path, size: int | tuple[int, int] | None = None, channels: int = 1,
                 resize: str = "resize", npy_scale: str = "db", dynamic_range_db: float = 50.0,
                 db_reference: str | float = "max", colormap: str | None = None, subset: list[str] | None = None,
                 class_to_idx: dict[str, int] | None = None, suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES,
                 skip_bad: bool = False, cache: bool = False, generator: torch.Generator | None = None):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {resize!r}")
        if npy_scale not in NPY_SCALES:
            raise ValueError(f"npy_scale must be one of {NPY_SCALES}, got {npy_scale!r}")
        if colormap not in COLORMAPS:
            raise ValueError(f"colormap must be one of {COLORMAPS}, got {colormap!r}")
        if not (isinstance(db_reference, (int, float)) or db_reference == "max"):
            raise ValueError(f"db_reference must be 'max' or a number (dB), got {db_reference!r}")
        if not dynamic_range_db > 0:
            raise ValueError(f"dynamic_range_db must be > 0, got {dynamic_range_db}")
        self.root, self.size, self.channels, self.resize = Path(root), _size_pair(size), channels, resize
        self.read_options = dict(channels=channels, npy_scale=npy_scale, dynamic_range_db=dynamic_range_db,
                                 db_reference=db_reference, colormap=colormap)
        self.generator = generator
        files, labels, self.class_to_idx = scan_folder(self.root, class_to_idx, suffixes)
        if subset is not None:
            keep = set(subset)
            names = relative_names(self.root, files)
            unknown = sorted(keep - set(names))
            if unknown:
                raise ValueError(f"{len(unknown)} file(s) of the split are not in {self.root} (e.g. {unknown[0]})")
            files, labels = [f for f, n in zip(files, names) if n in keep], [lab for lab, n in zip(labels, names)
                                                                              if n in keep]
            if not files:
                raise ValueError(f"the split selects no files of {self.root}")
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)

        # Decode every file once: corrupt files and wrong sizes surface here, naming the file. With cache=True the
        # arrays are kept, already resized or cropped when the size policy is deterministic.
        self._fitted = cache and self.size is not None and resize != "random_crop"
        arrays, good, self.skipped, first = {}, [], [], None
        for path, label in zip(files, labels):
            try:
                x = read_file(path, **self.read_options)
            except ValueError as err:
                if not skip_bad:
                    raise
                self.skipped.append((str(path), str(err)))
                continue
            self._check_size(path, x.shape[1:])
            if self.size is None:
                first = first or (path, x.shape)
                if x.shape != first[1]:
                    raise ValueError(f"{path} has shape {x.shape[1:]} but {first[0]} has {first[1][1:]}; "
                                     "pass size=... to resize or crop them to one size")
            good.append((path, label))
            if cache:
                arrays[path] = self._fit(torch.from_numpy(x)) if self._fitted else torch.from_numpy(x)
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} unreadable file(s) under {self.root}, "
                          f"first: {self.skipped[0][1]}")
        if not good:
            raise ValueError(f"no readable files under {self.root} ({len(self.skipped)} skipped)")
        files, labels = [p for p, _ in good], [lab for _, lab in good]
        self.files, self.labels = files, labels
        self._cache = {p: arrays[p] for p in files} if cache else None

    def _check_size(self, path: Path, hw: tuple[int, int]) -> None:
        if self.size is None or self.resize == "pad":                   # "pad" fits any size
            return
        (h, w), (height, width) = hw, self.size
        if self.resize == "none" and (h, w) != (height, width):
            raise ValueError(f"{path} is {h}x{w} but resize='none' needs exactly {height}x{width}")
        if h < height or w < width:
            raise ValueError(f"{path} is {h}x{w}, smaller than the requested size {height}x{width} (height x width; "
                             "no upsampling: choose a smaller --size, or --resize pad)")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.files[i]
        if self._cache is not None:
            x = self._cache[path].clone()                              # callers may modify x in place
            if self._fitted:
                return x, self.labels[i]
        else:
            x = torch.from_numpy(read_file(path, **self.read_options))   # (C, h, w) in [-1, 1]
        if self.size is not None:
            x = self._fit(x)
        return x, self.labels[i]

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the size policy: (C, h, w) -> (C, H, W)."""
        (height, width), (h, w) = self.size, x.shape[1:]
        if self.resize == "resize":
            return x if (h, w) == (height, width) else _resample(x, height, width)
        if self.resize == "pad":
            return _pad_to(x, height, width)
        if self.resize == "center_crop":
            top, left = (h - height) // 2, (w - width) // 2
        elif self.resize == "random_crop":
            top = int(torch.randint(h - height + 1, (1,), generator=self.generator))
            left = int(torch.randint(w - width + 1, (1,), generator=self.generator))
        else:
            top, left = 0, 0
        return x[:, top:top + height, left:left + width]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples stacked: (N, C, H, W) float32 and (N,) int64 labels."""
        xs = [self[i][0] for i in range(len(self))]
        return torch.stack(xs), torch.tensor(self.labels, dtype=torch.int64)


def _resample(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, h, w) -> (C, height, width), antialiased bilinear."""
    return F.interpolate(x[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, h, w) -> (C, height, width): scaled by s = min(1, height / h, width / w) (aspect ratio kept, never up),
    centred, and the rest filled with PAD_VALUE (extra odd pixel at the bottom / right)."""
    h, w = x.shape[1:]
    s = min(1.0, height / h, width / w)
    fit_h, fit_w = min(height, max(1, round(h * s))), min(width, max(1, round(w * s)))
    if (fit_h, fit_w) != (h, w):
        x = _resample(x, fit_h, fit_w)                                  # (C, fit_h, fit_w)
    top, left = (height - fit_h) // 2, (width - fit_w) // 2
    out = torch.full((x.shape[0], height, width), PAD_VALUE, dtype=x.dtype)
    out[:, top:top + fit_h, left:left + fit_w] = x
    return out
