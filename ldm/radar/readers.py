"""Readers of public radar data sets, one per format; every error names the file (docs/radar.md, section 3).

    read_glasgow_dat    University of Glasgow raw .dat: a header (carrier in Hz, sweep time in ms, samples per sweep,
                        bandwidth in Hz; a magnitude fallback for other units) and then complex I/Q, one line each
    write_glasgow_dat   the inverse (the tests and docs/radar.md write simulated I/Q in the real layout with it)
    read_glasgow_mat    their *_MD_*.mat spectrograms (scipy, the `radar` extra)
    read_idrad          IDRad .hdf5 range-Doppler maps or Doppler profiles (h5py, the `radar` extra)
    read_iq_npy         a plain complex (chirps, samples) .npy
    GLASGOW_NAME, ...   the Glasgow file-name fields (participant, activity, repetition) and copies of a file

ldm.radar.datasets turns what these return into a training folder.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np

from ldm.radar.chain import FmcwRadar

GLASGOW_CARRIER_HZ, GLASGOW_PRF_HZ = 5.8e9, 1000.0   # the Glasgow set's radar: 5.8 GHz, 1 ms chirps back to back
GLASGOW_ACTIVITIES = {1: "walking", 2: "sitting down", 3: "standing up", 4: "picking up an object", 5: "drinking",
                      6: "falling"}
# The range of summed dB values of IDRad's Doppler profiles over the data set (max - min), by which the IDRad
# authors' training code min-max scales them: the contrast their networks see.
IDRAD_DB_SUM_SPAN = {"microdoppler": -29791.0058594 - -46583.265625,
                     "microdoppler_thresholded": -6727.47998047 - -17100.0}


def import_extra(module: str, fmt: str):
    """Import scipy/h5py for --format fmt, or raise ImportError with the one-line install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise ImportError(f"--format {fmt} needs {package}: pip install .[radar] (or pip install "
                          "ldm-reference[radar])") from None


_GLASGOW_HEADER = ("the carrier frequency", "the sweep time in ms", "the number of samples per sweep",
                   "the bandwidth")


def glasgow_header(values: list[float], path: Path) -> tuple[FmcwRadar, int, dict]:
    """The radar of a Glasgow header (carrier, sweep time, samples per sweep, bandwidth) -> (radar, samples,
    units read). The files hold Hz, ms, samples, Hz (1P36A01R01.dat: 5800000000, 1, 128, 400000000); a carrier of
    1-100 or a bandwidth of 1-10000 can only be GHz or MHz and is read so (the units go to metadata.json). Every
    value is range-checked: carrier 1-100 GHz, sweep 0.01-100 ms, 8-65536 samples (an integer), bandwidth 1 MHz -
    10 GHz; an error is one line naming the file and the four values."""
    fc, sweep, samples, bw = values
    units = {"carrier": "Hz", "sweep_time": "ms", "bandwidth": "Hz"}
    if 1 <= fc <= 100:
        fc, units["carrier"] = fc * 1e9, "GHz"
    if 1 <= bw <= 1e4:
        bw, units["bandwidth"] = bw * 1e6, "MHz"
    shown = ", ".join(f"{v:g}" for v in values)
    problems = [what for ok, what in (
        (1e9 <= fc <= 100e9, f"carrier {fc:g} Hz is outside 1-100 GHz"),
        (0.01 <= sweep <= 100, f"sweep time {sweep:g} ms is outside 0.01-100 ms"),
        (samples == int(samples) and 8 <= samples <= 65536, f"{samples:g} samples per sweep is not an integer in "
                                                            "8-65536"),
        (1e6 <= bw <= 1e10, f"bandwidth {bw:g} Hz is outside 1 MHz - 10 GHz")) if not ok]
    if problems:
        raise ValueError(f"{path}: header (carrier, sweep time, samples per sweep, bandwidth) = ({shown}): "
                         + "; ".join(problems) + " (expected Hz, ms, samples, Hz as in 5800000000, 1, 128, 400000000)")
    chirp_s = sweep * 1e-3
    return FmcwRadar(fc, bw, chirp_s, 1 / chirp_s), int(samples), units


def read_glasgow_dat(path: str | Path) -> tuple[FmcwRadar, np.ndarray, dict]:
    """A University of Glasgow raw .dat file -> (radar, iq (chirps, samples_per_sweep) complex128, header units).

    Text, one number per line: carrier (Hz), sweep time (ms), samples per sweep, bandwidth (Hz) (glasgow_header),
    then the I + jQ samples sweep after sweep, MATLAB style (`12+3i`, `-4.5-0.2i`; `j` is accepted too). The PRF
    is one sweep per sweep time; a sample count that is not a whole number of sweeps is an error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (expected the Glasgow .dat format)") from None
    lines = text.replace(" ", "").replace("\t", "").replace("i", "j").splitlines()     # MATLAB's i -> Python's j
    while lines and not lines[-1]:
        lines.pop()
    header = []
    for i, what in enumerate(_GLASGOW_HEADER):
        if i >= len(lines):
            raise ValueError(f"{path}: line {i + 1}: the file ends where {what} should be (truncated header)")
        try:
            header.append(float(lines[i]))
        except ValueError:
            raise ValueError(f"{path}: line {i + 1}: expected {what}, got {_line(text, i)!r}") from None
    radar, samples, units = glasgow_header(header, path)
    data = lines[4:]
    try:
        values = np.array(data, dtype=np.complex128)                    # numpy parses "12+3j" strings
    except ValueError:
        bad = next(i for i, v in enumerate(data) if not _is_complex(v))
        raise ValueError(f"{path}: line {bad + 5}: expected a complex sample like 12+3i, got "
                         f"{_line(text, bad + 4)!r}") from None
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise ValueError(f"{path}: line {bad + 5}: the sample {_line(text, bad + 4)!r} is not finite")
    if len(values) == 0 or len(values) % samples:
        raise ValueError(f"{path}: {len(values)} samples after the header are not a whole number of "
                         f"{samples}-sample sweeps (truncated file?)")
    return radar, values.reshape(-1, samples), units                    # sweep after sweep: (M, N)


def write_glasgow_dat(path: str | Path, iq: np.ndarray, radar: FmcwRadar) -> None:
    """Write dechirped I/Q (chirps, samples_per_sweep) in the Glasgow .dat layout, the inverse of read_glasgow_dat:
    carrier (Hz), sweep time (ms), samples per sweep, bandwidth (Hz), then one MATLAB-style sample per line
    (`12.5+3i`). For examples and for feeding other radars' recordings to tools that read the Glasgow files."""
    iq = np.asarray(iq)
    if iq.ndim != 2:
        raise ValueError(f"iq must be (chirps, samples_per_sweep), got shape {iq.shape}")
    header = f"{radar.carrier_hz:.0f}\n{radar.chirp_s * 1e3:g}\n{iq.shape[1]}\n{radar.bandwidth_hz:.0f}\n"
    body = "\n".join(f"{z.real:.6g}{z.imag:+.6g}i" for z in iq.reshape(-1))
    from ldm.files import atomic_write
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(header + body + "\n", encoding="ascii"))


def _line(text: str, index: int) -> str:
    """Line `index` (from 0) of text as written, for an error message."""
    return text.splitlines()[index].strip()[:40]


def _is_complex(text: str) -> bool:
    try:
        complex(text)
        return True
    except ValueError:
        return False


GLASGOW_NAME = re.compile(r"^(\d)P(\d+)A(\d+)R(\d+)$", re.IGNORECASE)
GLASGOW_MAT_NAME = re.compile(r"^(?P<code>.+?)\.dat\s*_MD_.*\.mat$", re.IGNORECASE)
GLASGOW_MAT_STFT = re.compile(r"_TWL_(\d+)_OF_(\d+)_PF_(\d+)", re.IGNORECASE)
COPY_NAME = re.compile(r"^(?P<code>.+?)(\s*-\s*Copy(\s*\(\d+\))?|\s*\(\d+\))$", re.IGNORECASE)


def read_glasgow_mat(path: str | Path, variable: str = "Data_spec_MTI2") -> np.ndarray:
    """The precomputed spectrogram (Doppler bins, time) of a Glasgow *_MD_*.mat file (needs scipy)."""
    scipy_io = import_extra("scipy.io", "glasgow-mat")
    try:
        mat = scipy_io.loadmat(str(path))
    except (ValueError, OSError, NotImplementedError, TypeError) as err:
        raise ValueError(f"{path}: not a MATLAB .mat file scipy can read ({err})") from None
    if variable not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no variable {variable!r} (it holds {names}); pass --mat-variable")
    x = np.asarray(mat[variable])
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}: {variable} must be a numeric (Doppler bins, time) matrix, got {x.dtype} "
                         f"{x.shape}")
    return x


def read_idrad(path: str | Path, dataset: str = "range_doppler") -> np.ndarray:
    """An IDRad .hdf5 recording's `dataset` (needs h5py): range_doppler (frames, range bins, Doppler bins) or a
    Doppler profile microdoppler[_thresholded] (frames, Doppler bins), all in dB."""
    h5py = import_extra("h5py", "idrad")
    try:
        with h5py.File(str(path), "r") as f:
            if dataset not in f:
                raise ValueError(f"{path}: no dataset {dataset!r} (it holds {sorted(f.keys())}); pass "
                                 "--idrad-dataset")
            x = np.asarray(f[dataset][()])
    except OSError as err:
        raise ValueError(f"{path}: not an HDF5 file h5py can read ({err})") from None
    want = 3 if dataset == "range_doppler" else 2
    shape = "(frames, range bins, Doppler bins)" if want == 3 else "(frames, Doppler bins)"
    if x.ndim != want or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}: {dataset} must be numeric {shape}, got {x.dtype} {x.shape}")
    return x


def read_iq_npy(path: str | Path) -> np.ndarray:
    """A plain (chirps, samples_per_chirp) complex (or real) .npy of dechirped samples."""
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a .npy array ({err})") from None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric (chirps, samples_per_chirp) array, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: holds non-finite samples")
    return x
