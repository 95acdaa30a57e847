"""Raw FMCW radar I/Q -> micro-Doppler spectrograms, and converters for public radar data sets (docs/radar.md).

The chain (numpy only; the CLI takes its option parser from ldm.training) with its defaults = the example
processing published with the University of Glasgow "Radar signatures of human activities" set: 4th-order
Butterworth MTI at 0.0075, range bins 10-30, 200-chirp Hamming STFT with 95% overlap and 4x zero padding:

    s[m, n]   dechirped beat signal (I + jQ): chirp m (slow time, every 1/PRF s), sample n of N (fast time)
      -> range FFT    R[m, b] = sum_n w[n] s[m, n] exp(-j 2 pi n b / N),  b < N/2;  bin b is range b c / (2 B)
      -> MTI          a Butterworth high-pass over m, per range bin (removes the static zero-Doppler return)
      -> STFT         S_b[t, k] = sum_l w[l] R[t hop + l, b] exp(-j 2 pi k l / nfft)   (frequency k PRF / nfft)
      -> range gate   M[t, k] = sum_{b = first..last} |S_b[t, k]|
      -> velocity     row j holds v_j = j dv, dv = PRF lambda / (2 nfft), j = J .. -J, |v_j| <= v_max
      -> windows      every hop_s seconds, window_s seconds long; each 20 log10(M / max M), clipped at -range dB

Sign convention. `fmcw_beat_signal` writes the phase 2 pi (f_b t + 2 R / lambda) (the mixer output tx * conj(rx)):
ranges sit at positive beat frequencies and a target approaching at v (dR/dt = -v) turns the slow-time phase at
f = -2 v / lambda. Hence v = -f lambda / 2, and every image here has the most positive velocity (approaching) in
its top row, as the simulator's images do. The Glasgow example script displays its spectrograms the same way.
Radars with the opposite phase (-4 pi R / lambda) need --reverse-velocity.

Output folder (python -m ldm.radar --format FORMAT --input PATH --out DIR):
    DIR/<person>/<recording>_w<k>.npy   float32 (rows = velocity, top = most positive; columns = time) dB re the
                                        window's max, in [-dynamic_range, 0]: ldm.data reads it with npy_scale="db"
    DIR/metadata.json                   the axes (velocity_mps per row, seconds_per_column, ...), the radar and
                                        the processing options, and every source file with its window count
Formats: glasgow-dat (raw UoG .dat), glasgow-mat (UoG *_MD_*.mat spectrograms), idrad (IDRad .hdf5 Doppler
profiles), iq-npy (a complex (chirps, samples) .npy plus the radar as options). scipy and h5py, for the .mat and
.hdf5 readers only, come with the `radar` extra.
"""
from __future__ import annotations

import importlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
WINDOWS = ("rect", "hann", "hamming", "blackman")
FORMATS = ("glasgow-dat", "glasgow-mat", "idrad", "iq-npy")
GLASGOW_CARRIER_HZ, GLASGOW_PRF_HZ = 5.8e9, 1000.0   # the Glasgow set's radar: 5.8 GHz, 1 ms chirps back to back
GLASGOW_ACTIVITIES = {1: "walking", 2: "sitting down", 3: "standing up", 4: "picking up an object", 5: "drinking",
                      6: "falling"}
FORMAT_TAG = "ldm.radar v1"


# ----------------------------------------------------------------------------------------------------------------
# Synthesis: the ideal dechirped signal of point scatterers
# ----------------------------------------------------------------------------------------------------------------
def fmcw_beat_signal(ranges_m, amplitudes, carrier_hz: float, bandwidth_hz: float, chirp_s: float,
                     samples_per_chirp: int) -> np.ndarray:
    """The ideal dechirped FMCW signal of point scatterers, complex128 (chirps, samples_per_chirp).

    s[m, n] = sum_k a[m, k] exp(j 2 pi (f_b[m, k] t_n + 2 R[m, k] / lambda)),  f_b = 2 R slope / c,
    slope = bandwidth / chirp time, lambda = c / carrier, t_n = (n - N/2) chirp_s / N: fast time runs from the
    middle of the chirp, so carrier_hz is the sweep's centre frequency and a target at radial velocity v turns the
    slow-time phase at exactly -2 v / lambda (timed from the start of the sweep, the Doppler would follow
    carrier + B/2 instead: 3.4% more for Glasgow's 5.8 GHz and 400 MHz).
    ranges_m: (chirps, scatterers) range of each scatterer during each chirp (held constant within a chirp);
    amplitudes: (scatterers,) or (chirps, scatterers). A scatterer at R lands in range-FFT bin R / (c / (2 B)).
    """
    ranges = np.asarray(ranges_m, dtype=np.float64)
    if ranges.ndim != 2:
        raise ValueError(f"ranges_m must be (chirps, scatterers), got shape {ranges.shape}")
    amps = np.asarray(amplitudes)
    if amps.shape not in (ranges.shape[1:], ranges.shape):
        raise ValueError(f"amplitudes must be (scatterers,) = {ranges.shape[1:]} or (chirps, scatterers) = "
                         f"{ranges.shape}, got {amps.shape}")
    for name, value in (("carrier_hz", carrier_hz), ("bandwidth_hz", bandwidth_hz), ("chirp_s", chirp_s)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if samples_per_chirp < 1:
        raise ValueError(f"samples_per_chirp must be >= 1, got {samples_per_chirp}")
    amps = np.broadcast_to(amps, ranges.shape)
    wavelength = SPEED_OF_LIGHT / carrier_hz
    slope = bandwidth_hz / chirp_s                                      # Hz/s
    t = (np.arange(samples_per_chirp) - samples_per_chirp / 2) * (chirp_s / samples_per_chirp)   # (N,) fast time
    signal = np.zeros((len(ranges), samples_per_chirp), dtype=np.complex128)
    for k in range(ranges.shape[1]):                                    # one scatterer at a time: (M, N) memory
        r = ranges[:, k:k + 1]                                          # (M, 1)
        beat = 2 * r * slope / SPEED_OF_LIGHT                           # (M, 1) beat frequency f_b
        signal += amps[:, k:k + 1] * np.exp(2j * np.pi * (beat * t + 2 * r / wavelength))   # (M, N)
    return signal


# ----------------------------------------------------------------------------------------------------------------
# The chain
# ----------------------------------------------------------------------------------------------------------------
def window(name: str, length: int) -> np.ndarray:
    """The symmetric window `name` (rect, hann, hamming, blackman) of `length` samples, as MATLAB's hamming(L) etc."""
    makers = {"rect": np.ones, "hann": np.hanning, "hamming": np.hamming, "blackman": np.blackman}
    if name not in makers:
        raise ValueError(f"window must be one of {WINDOWS}, got {name!r}")
    return makers[name](length)


def range_fft(iq: np.ndarray, window_name: str = "rect", num_bins: int | None = None) -> np.ndarray:
    """Range profiles of every chirp: iq (chirps, N) -> (chirps, num_bins) complex.

    R[m, b] = sum_n w[n] s[m, n] exp(-j 2 pi n b / N) for b < num_bins (default N // 2: the positive beat
    frequencies b / chirp_s, i.e. ranges b c / (2 B)). The Glasgow example uses no window ("rect").
    """
    iq = np.asarray(iq)
    if iq.ndim != 2:
        raise ValueError(f"iq must be (chirps, samples_per_chirp), got shape {iq.shape}")
    n = iq.shape[1]
    num_bins = n // 2 if num_bins is None else num_bins
    return np.fft.fft(iq * window(window_name, n), axis=1)[:, :num_bins]   # (M, N) -> (M, num_bins)


def butterworth_highpass(order: int, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Digital Butterworth high-pass (b, a) of `order`, cutoff as a fraction of Nyquist (scipy.signal.butter's
    `butter(order, cutoff, 'high')`): H(z) = sum_i b_i z^-i / sum_i a_i z^-i, a_0 = 1.

    Analog prototype poles p_k = exp(j pi (2k + order - 1) / (2 order)), k = 1..order (|p| = 1, left half plane);
    the high-pass s -> W / s with the pre-warped cutoff W = tan(pi cutoff / 2) moves them to q_k = W / p_k and puts
    `order` zeros at s = 0; the bilinear transform s = (z - 1) / (z + 1) maps poles to (1 + q) / (1 - q) and the
    zeros to z = 1, with gain 1 / prod(1 - q_k) so that |H| = 1 at Nyquist. Then
    |H(e^jw)|^2 = 1 / (1 + (W / tan(w / 2))^(2 order)).
    """
    if not (isinstance(order, (int, np.integer)) and order >= 1):
        raise ValueError(f"Butterworth order must be an integer >= 1, got {order}")
    if not 0 < cutoff < 1:
        raise ValueError(f"Butterworth cutoff must be in (0, 1) (a fraction of Nyquist), got {cutoff}")
    k = np.arange(1, order + 1)
    prototype = np.exp(1j * np.pi * (2 * k + order - 1) / (2 * order))    # low-pass poles, cutoff 1 rad/s
    q = np.tan(np.pi * cutoff / 2) / prototype                            # high-pass poles
    poles = (1 + q) / (1 - q)                                             # bilinear transform
    b = np.poly(np.ones(order)) / np.prod(1 - q)                          # order zeros at z = 1
    a = np.poly(poles)
    return b.real, a.real


def iir_filter(b: np.ndarray, a: np.ndarray, x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Filter x along `axis` from rest (zero initial state), as scipy.signal.lfilter(b, a, x, axis):
    a_0 y[n] = sum_i b_i x[n - i] - sum_{i >= 1} a_i y[n - i]. Direct form II transposed; complex x stays complex.
    """
    b, a = np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)
    order = max(len(a), len(b)) - 1
    b = np.pad(b, (0, order + 1 - len(b))) / a[0]
    a = np.pad(a, (0, order + 1 - len(a))) / a[0]
    x = np.moveaxis(np.asarray(x), axis, 0)                             # (T, ...)
    y = np.empty(x.shape, dtype=np.result_type(x.dtype, np.float64))
    state = np.zeros((order + 1,) + x.shape[1:], dtype=y.dtype)         # state[order] stays 0
    bs = b[1:].reshape((order,) + (1,) * (x.ndim - 1))
    as_ = a[1:].reshape((order,) + (1,) * (x.ndim - 1))
    for n in range(len(x)):
        y[n] = b[0] * x[n] + state[0]
        state[:order] = bs * x[n] - as_ * y[n] + state[1:]
    return np.moveaxis(y, 0, axis)


def mti_highpass(x: np.ndarray, order: int = 4, cutoff: float = 0.0075, axis: int = 0) -> np.ndarray:
    """Moving-target indication: a causal Butterworth high-pass of x along slow time `axis` (the Glasgow example's
    `filter(butter(4, 0.0075, 'high'), ...)`); cutoff is a fraction of the Nyquist frequency PRF / 2 (0.0075 at
    1 kHz: 3.75 Hz, i.e. 0.1 m/s at 5.8 GHz). It starts from rest, so the first ~0.5 s of a recording carry the
    filter's response to the static return switching on."""
    b, a = butterworth_highpass(order, cutoff)
    return iir_filter(b, a, x, axis)


def stft(x: np.ndarray, window_name: str = "hamming", length: int = 200, hop: int = 10,
         nfft: int = 800) -> np.ndarray:
    """Short-time Fourier transform of a 1-D signal x (T,) -> (frames, nfft) complex, frames = 1 + (T - length) // hop.

    S[t, k] = sum_{l < length} w[l] x[t hop + l] exp(-j 2 pi k l / nfft): bin k is frequency k / nfft (times the
    sample rate), the window zero-padded to nfft (MATLAB's spectrogram(x, length, length - hop, nfft), unshifted).
    """
    x = np.asarray(x)
    if x.ndim != 1 or len(x) < length:
        raise ValueError(f"stft needs a 1-D signal of at least {length} samples, got shape {x.shape}")
    frames = np.lib.stride_tricks.sliding_window_view(x, length)[::hop]   # (frames, length), a view
    return np.fft.fft(frames * window(window_name, length), n=nfft, axis=1)   # (frames, nfft)


def stft_hop(length: int, overlap: float) -> int:
    """STFT hop of a window of `length` with fractional `overlap`: length - round(length * overlap), rounding
    halves up as MATLAB does (200 at 95%: 10; the Glasgow .mat files' 256 at 95%: 13)."""
    return length - int(np.floor(length * overlap + 0.5))


def velocity_bins(nfft: int, prf_hz: float, carrier_hz: float, v_max: float) -> tuple[np.ndarray, np.ndarray]:
    """The Doppler FFT bins of the image rows and their velocities (m/s), top row first.

    Bin k holds slow-time frequency k PRF / nfft (mod PRF); with v = -f lambda / 2 (module docstring) row j of
    velocity v_j = j dv, dv = PRF lambda / (2 nfft), is bin (-j) mod nfft, for j = J, J - 1, ..., -J, where
    J = floor(v_max / dv) (at most (nfft - 1) // 2: the unambiguous span is +-PRF lambda / 4).
    """
    wavelength = SPEED_OF_LIGHT / carrier_hz
    unambiguous = prf_hz * wavelength / 4
    if v_max > unambiguous * (1 + 1e-9):
        raise ValueError(f"--v-max {v_max} m/s exceeds the unambiguous velocity PRF lambda / 4 = {unambiguous:.3f} "
                         f"m/s of this radar (PRF {prf_hz:g} Hz, carrier {carrier_hz:g} Hz)")
    step = prf_hz * wavelength / (2 * nfft)
    top = min(int(np.floor(v_max / step + 1e-9)), (nfft - 1) // 2)
    j = np.arange(top, -top - 1, -1)                                    # (2 top + 1,) rows, top first
    return (-j) % nfft, j * step


@dataclass(frozen=True)
class FmcwRadar:
    """What the chain needs to know about an FMCW radar: carrier, swept bandwidth, chirp duration (N fast-time
    samples spread over it) and chirp repetition frequency (PRF; 1 / chirp_s for back-to-back chirps)."""
    carrier_hz: float
    bandwidth_hz: float
    chirp_s: float
    prf_hz: float

    @property
    def range_bin_m(self) -> float:
        """Range per range-FFT bin: c / (2 B)."""
        return SPEED_OF_LIGHT / (2 * self.bandwidth_hz)


@dataclass(frozen=True)
class Chain:
    """Processing options of the chain (defaults: the Glasgow example processing; v_max of its display)."""
    range_window: str = "rect"        # range-FFT window
    range_first: int = 10             # range gate, first and last range-FFT bin (inclusive)
    range_last: int = 30
    mti_order: int = 4                # Butterworth high-pass order (0: no MTI)
    mti_cutoff: float = 0.0075        # as a fraction of Nyquist (PRF / 2)
    stft_window: str = "hamming"      # MATLAB spectrogram()'s default window
    stft_length: int = 200            # chirps per STFT window
    overlap: float = 0.95             # hop = length - round(length * overlap)
    pad_factor: int = 4               # nfft = pad_factor * length
    v_max: float = 6.0                # rows keep |v| <= v_max (m/s)
    reverse_velocity: bool = False    # the radar's phase is -4 pi R / lambda: conjugate the I/Q first

    def __post_init__(self):
        if self.range_first > self.range_last:
            raise ValueError(f"--range-first {self.range_first} is after --range-last {self.range_last}")
        if self.hop < 1:
            raise ValueError(f"--overlap {self.overlap} leaves no hop for --stft-length {self.stft_length}")

    @property
    def hop(self) -> int:
        return stft_hop(self.stft_length, self.overlap)

    @property
    def nfft(self) -> int:
        return self.pad_factor * self.stft_length


@dataclass
class Spectrogram:
    """A whole recording's micro-Doppler magnitude: rows = velocities (top first), columns every
    seconds_per_column, each from frame_s seconds of signal (the STFT window); radar = what the source said about
    its radar (for metadata.json)."""
    magnitude: np.ndarray       # (V, T) linear magnitude
    velocities: np.ndarray      # (V,) m/s
    seconds_per_column: float
    frame_s: float
    carrier_hz: float
    prf_hz: float
    radar: dict


def iq_spectrogram(iq: np.ndarray, radar: FmcwRadar, chain: Chain = Chain()) -> Spectrogram:
    """The chain from dechirped I/Q (chirps, samples_per_chirp) to the range-gated velocity-time magnitude
    M[j, t] = sum_{b in gate} |S_b[t, bin_j]| (module docstring)."""
    iq = np.asarray(iq)
    if iq.ndim != 2:
        raise ValueError(f"I/Q must be (chirps, samples_per_chirp), got shape {iq.shape}")
    if chain.reverse_velocity:
        if not np.iscomplexobj(iq):
            raise ValueError("--reverse-velocity: real-valued samples have no phase convention to reverse")
        iq = np.conj(iq)
    num_chirps, samples = iq.shape
    if chain.range_last >= samples // 2:
        raise ValueError(f"--range-last {chain.range_last} is beyond the {samples // 2} positive range bins of a "
                         f"{samples}-sample chirp")
    if num_chirps < chain.stft_length:
        raise ValueError(f"{num_chirps} chirps are fewer than --stft-length {chain.stft_length}")
    gate = range_fft(iq, chain.range_window)[:, chain.range_first:chain.range_last + 1]   # (M, gate)
    if chain.mti_order > 0:
        gate = mti_highpass(gate, chain.mti_order, chain.mti_cutoff, axis=0)
    bins, velocities = velocity_bins(chain.nfft, radar.prf_hz, radar.carrier_hz, chain.v_max)
    magnitude = sum(np.abs(stft(gate[:, b], chain.stft_window, chain.stft_length, chain.hop, chain.nfft)[:, bins])
                    for b in range(gate.shape[1]))                       # (frames, V)
    return Spectrogram(magnitude.T, velocities, chain.hop / radar.prf_hz, chain.stft_length / radar.prf_hz,
                       radar.carrier_hz, radar.prf_hz, asdict(radar))


def doppler_spectrogram(by_bin: np.ndarray, seconds_per_column: float, frame_s: float, carrier_hz: float,
                        prf_hz: float, chain: Chain, radar: dict) -> Spectrogram:
    """A precomputed magnitude by Doppler FFT bin, by_bin (nfft, T) with row k at frequency k PRF / nfft
    (unshifted), cropped to the velocity rows; chain.reverse_velocity mirrors the frequency axis first."""
    nfft = len(by_bin)
    if chain.reverse_velocity:
        by_bin = by_bin[(-np.arange(nfft)) % nfft]                        # f -> -f
    bins, velocities = velocity_bins(nfft, prf_hz, carrier_hz, chain.v_max)
    return Spectrogram(by_bin[bins], velocities, seconds_per_column, frame_s, carrier_hz, prf_hz, radar)


def to_db(magnitude: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """float32 20 log10(M / max M), clipped to [-dynamic_range_db, 0]."""
    peak = magnitude.max()
    if not peak > 0:
        raise ValueError("a window holds no signal (all zeros)")
    with np.errstate(divide="ignore"):
        db = 20 * np.log10(magnitude / peak)
    return np.maximum(db, -dynamic_range_db).astype(np.float32)


def window_columns(window_s: float, seconds_per_column: float, frame_s: float) -> int:
    """Columns of a window of window_s seconds of signal: those whose frames (frame_s long, every
    seconds_per_column) lie inside it, 1 + floor((window_s - frame_s) / seconds_per_column); 0 if none fits.
    (5 s of Glasgow data: 481 columns of a 200-chirp STFT with hop 10; 365 of the data set's own 256/13.)"""
    return max(0, 1 + int(np.floor((window_s - frame_s) / seconds_per_column + 1e-9)))


def window_starts(num_columns: int, width: int, hop: int) -> range:
    """First columns of the windows of `width` columns every `hop` columns that fit in num_columns:
    1 + (num_columns - width) // hop of them (none when the recording is shorter than one window)."""
    return range(0, num_columns - width + 1, hop)


# ----------------------------------------------------------------------------------------------------------------
# Readers (one per format); every error names the file
# ----------------------------------------------------------------------------------------------------------------
def import_extra(module: str, fmt: str):
    """Import scipy/h5py for --format fmt, or raise ImportError with the one-line install hint."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise ImportError(f"--format {fmt} needs {package}: pip install .[radar] (or pip install "
                          "ldm-reference[radar])") from None


_GLASGOW_HEADER = ("the carrier frequency in GHz", "the sweep time in ms", "the number of samples per sweep",
                   "the bandwidth in MHz")


def read_glasgow_dat(path: str | Path) -> tuple[FmcwRadar, np.ndarray]:
    """A University of Glasgow raw .dat file -> (radar, iq (chirps, samples_per_sweep) complex128).

    Text, one number per line: carrier (GHz), sweep time (ms), samples per sweep, bandwidth (MHz), then the
    I + jQ samples sweep after sweep, MATLAB style (`12+3i`, `-4.5-0.2i`; `j` is accepted too). The PRF is one
    sweep per sweep time; a trailing partial sweep is an error.
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
        if not header[-1] > 0:
            raise ValueError(f"{path}: line {i + 1}: {what} must be > 0, got {_line(text, i)!r}")
    carrier_ghz, sweep_ms, samples, bandwidth_mhz = header
    if samples != int(samples):
        raise ValueError(f"{path}: line 3: the number of samples per sweep must be an integer, got "
                         f"{_line(text, 2)!r}")
    samples = int(samples)
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
    radar = FmcwRadar(carrier_ghz * 1e9, bandwidth_mhz * 1e6, sweep_ms * 1e-3, 1 / (sweep_ms * 1e-3))
    return radar, values.reshape(-1, samples)                           # sweep after sweep: (M, N)


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


def read_idrad(path: str | Path, dataset: str = "microdoppler") -> np.ndarray:
    """The per-frame Doppler profiles (frames, Doppler bins) of an IDRad .hdf5 recording (needs h5py)."""
    h5py = import_extra("h5py", "idrad")
    try:
        with h5py.File(str(path), "r") as f:
            if dataset not in f:
                raise ValueError(f"{path}: no dataset {dataset!r} (it holds {sorted(f.keys())}); pass "
                                 "--idrad-dataset")
            x = np.asarray(f[dataset][()])
    except OSError as err:
        raise ValueError(f"{path}: not an HDF5 file h5py can read ({err})") from None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}: {dataset} must be numeric (frames, Doppler bins), got {x.dtype} {x.shape}")
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


# ----------------------------------------------------------------------------------------------------------------
# The converter: python -m ldm.radar --format FORMAT --input PATH --out DIR
# ----------------------------------------------------------------------------------------------------------------
def _config_class():
    """The CLI's options as an ldm.training config dataclass (imported here: the chain itself needs only numpy,
    and the simulator imports it)."""
    from ldm.cli import option

    @dataclass
    class ConvertConfig:
        format: str | None = option(None, "glasgow-dat: UoG raw .dat; glasgow-mat: UoG *_MD_*.mat spectrograms; idrad: "
                                          "IDRad .hdf5 Doppler profiles; iq-npy: complex (chirps, samples) .npy",
                                    choices=FORMATS)
        input: str | None = option(None, "a file, or a folder searched recursively for the format's files")
        out: str | None = option(None, "output folder: OUT/<person>/<recording>_w<k>.npy and OUT/metadata.json")
        # Windows and images (every format)
        window_s: float = option(5.0, "seconds of recording per output spectrogram (its columns: the STFT frames "
                                      "inside them)", above=0)
        hop_s: float | None = option(None, "seconds between window starts (default: --window-s, no overlap)", above=0)
        v_max: float = option(Chain.v_max, "keep velocities |v| <= this (m/s); the image's top row is +v_max", above=0)
        dynamic_range: float = option(50.0, "dB kept below each window's maximum (the floor is -this)", above=0)
        reverse_velocity: bool = option(False, "the radar's phase is -4 pi R / lambda (approaching targets at positive "
                                               "slow-time frequencies): conjugate the I/Q, or mirror precomputed "
                                               "Doppler bins")
        # The raw I/Q chain (glasgow-dat, iq-npy)
        range_window: str = option(Chain.range_window, "raw: range-FFT window", choices=WINDOWS)
        range_first: int = option(Chain.range_first, "raw: first range-FFT bin of the range gate (bin b is range "
                                                     "b c / (2 bandwidth))", at_least=0)
        range_last: int = option(Chain.range_last, "raw: last range-FFT bin of the range gate (inclusive)", at_least=0)
        mti_order: int = option(Chain.mti_order, "raw: order of the Butterworth high-pass MTI over slow time (0: none)",
                                at_least=0)
        mti_cutoff: float = option(Chain.mti_cutoff, "raw: MTI cutoff as a fraction of the Nyquist frequency PRF / 2",
                                   above=0, below=1)
        stft_window: str = option(Chain.stft_window, "raw: STFT window", choices=WINDOWS)
        stft_length: int = option(Chain.stft_length, "raw: STFT window length in chirps (glasgow-mat: only for "
                                                     "files whose names lack _TWL_<length>_OF_<percent>_PF_<pad>)",
                                  at_least=2)
        overlap: float = option(Chain.overlap, "raw: STFT overlap; hop = length - round(length * overlap) chirps",
                                at_least=0, below=1)
        pad_factor: int = option(Chain.pad_factor, "raw: STFT zero padding; FFT size = pad factor x length", at_least=1)
        # The radar, where the files do not say (glasgow-dat reads its header)
        carrier_hz: float | None = option(None, "iq-npy, idrad: carrier frequency (required); glasgow-mat: default "
                                                "5.8e9", above=0)
        bandwidth_hz: float | None = option(None, "iq-npy: swept bandwidth (required)", above=0)
        chirp_s: float | None = option(None, "iq-npy: chirp duration, over which the samples are spread (required)",
                                       above=0)
        prf_hz: float | None = option(None, "chirp repetition frequency: iq-npy default 1 / --chirp-s; glasgow-mat "
                                            "default 1000; idrad: the chirp rate within a frame (required)", above=0)
        frame_rate_hz: float | None = option(None, "idrad: frames per second (required)", above=0)
        # Format details
        activity: str | None = option(None, "glasgow-*: keep these activities only, a comma list of the leading "
                                            "digit K (1 walking, 2 sitting down, 3 standing up, 4 picking up an "
                                            "object, 5 drinking, 6 falling); default: all")
        mat_variable: str = option("Data_spec_MTI2", "glasgow-mat: the matrix variable in each file")
        idrad_dataset: str = option("microdoppler", "idrad: the (frames, Doppler bins) dataset in each file "
                                                    "(microdoppler or microdoppler_thresholded)")
        idrad_range_bins: int = option(380, "idrad: range bins each profile value sums 20 log10 |RD| over (IDRad's "
                                            "processing: 380, 0.5-10 m); values / this = mean dB", at_least=1)
        skip_bad: bool = option(False, "skip files that cannot be read or processed (listed in metadata.json) "
                                       "instead of stopping")
        overwrite: bool = option(False, "replace an earlier ldm.radar output in --out")
        progress: bool = option(True, "show a progress bar over files")

    return ConvertConfig


# The radar options each format reads; any other one given is an error rather than silently ignored.
RADAR_OPTIONS = {"glasgow-dat": (), "glasgow-mat": ("carrier_hz", "prf_hz"),
                 "idrad": ("carrier_hz", "prf_hz", "frame_rate_hz"),
                 "iq-npy": ("carrier_hz", "bandwidth_hz", "chirp_s", "prf_hz")}
REQUIRED_OPTIONS = {"glasgow-dat": (), "glasgow-mat": (), "idrad": ("carrier_hz", "prf_hz", "frame_rate_hz"),
                    "iq-npy": ("carrier_hz", "bandwidth_hz", "chirp_s")}
SUFFIXES = {"glasgow-dat": (".dat",), "glasgow-mat": (".mat",), "idrad": (".hdf5", ".h5"), "iq-npy": (".npy",)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def chain_of(cfg) -> Chain:
    """The Chain of a CLI config (_config_class())."""
    return Chain(**{f.name: getattr(cfg, f.name) for f in fields(Chain)})


@dataclass
class Recording:
    """One source file and where its windows go: OUT/<person>/<name>_w<k>.npy."""
    source: Path
    person: str
    name: str


def _campaign(path: Path, root: Path) -> str:
    """The Glasgow campaign of a file: the leading number of its campaign folder ("1 December 2017 Dataset" -> c1),
    the first folder under --input (or --input itself when the files lie directly in it); else that folder's
    name."""
    rel = path.relative_to(root).parts if root.is_dir() else (path.name,)
    folder = rel[0] if len(rel) > 1 else (root.name if root.is_dir() else path.parent.name)
    number = re.match(r"\d+", folder)
    return f"c{number.group()}" if number else (re.sub(r"[^A-Za-z0-9]+", "-", folder).strip("-") or "c0")


def glasgow_code(path: Path, fmt: str) -> str:
    """The recording code KPxxAyyRz of a Glasgow file name (1P36A01R01.dat, 1P36A01R01.dat_MD_...mat)."""
    if fmt == "glasgow-dat":
        return path.stem
    match = GLASGOW_MAT_NAME.match(path.name)
    return match.group("code").strip() if match else path.stem


def find_recordings(cfg) -> list[Recording]:
    """The files of --input for --format, each with its person and recording name."""
    root = Path(cfg.input)
    if not root.exists():
        raise FileNotFoundError(f"--input {root} does not exist")
    suffixes = SUFFIXES[cfg.format]
    out = Path(cfg.out).resolve()
    if root.is_dir():                                                   # hidden files and an earlier output: no
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                       and not any(part.startswith(".") for part in p.relative_to(root).parts)
                       and out not in p.resolve().parents)
        if cfg.format == "glasgow-mat":
            files = [p for p in files if "_md_" in p.name.lower()]
        if not files:
            raise ValueError(f"--input {root}: no {'/'.join(suffixes)} files for --format {cfg.format}")
    else:
        files = [root]
    activities = None
    if cfg.activity is not None:
        try:
            activities = {int(a) for a in cfg.activity.split(",")}
        except ValueError:
            activities = {0}
        if not activities <= GLASGOW_ACTIVITIES.keys():
            raise ValueError(f"--activity must be a comma list of activity digits {GLASGOW_ACTIVITIES}, got "
                             f"{cfg.activity!r}")
    recordings, seen = [], {}
    for path in files:
        if cfg.format.startswith("glasgow"):
            code = glasgow_code(path, cfg.format)
            match = GLASGOW_NAME.match(code)
            if match is None:
                if cfg.skip_bad:
                    continue
                raise ValueError(f"{path}: the name is not a Glasgow recording code KPxxAyyRz such as 1P36A01R01 "
                                 "(--skip-bad skips such files)")
            if activities is not None and int(match.group(1)) not in activities:
                continue
            rec = Recording(path, f"{_campaign(path, root)}_P{match.group(2)}", code)
        elif cfg.format == "idrad":
            rel = path.relative_to(root) if root.is_dir() else Path(path.name)
            rec = Recording(path, path.stem.split("_")[0], "-".join(rel.with_suffix("").parts))
        else:
            rec = Recording(path, path.parent.resolve().name, path.stem)
        key = (rec.person, rec.name)
        if key in seen:
            raise ValueError(f"{path} and {seen[key]} would both write {rec.person}/{rec.name}_w*.npy")
        seen[key] = path
        recordings.append(rec)
    if not recordings:
        raise ValueError(f"--input {root}: no recordings of --activity {cfg.activity}")
    return recordings


def load_spectrogram(rec: Recording, cfg) -> Spectrogram:
    """Read one source file and bring it to a velocity-time magnitude (module docstring)."""
    chain = chain_of(cfg)
    if cfg.format == "glasgow-dat":
        radar, iq = read_glasgow_dat(rec.source)
        return iq_spectrogram(iq, radar, chain)
    if cfg.format == "iq-npy":
        radar = FmcwRadar(cfg.carrier_hz, cfg.bandwidth_hz, cfg.chirp_s, cfg.prf_hz or 1 / cfg.chirp_s)
        return iq_spectrogram(read_iq_npy(rec.source), radar, chain)
    if cfg.format == "glasgow-mat":
        return glasgow_mat_spectrogram(rec.source, cfg, chain)
    return idrad_spectrogram(rec.source, cfg, chain)


def glasgow_mat_spectrogram(path: Path, cfg, chain: Chain) -> Spectrogram:
    """A Glasgow *_MD_*.mat spectrogram, its rows as the Glasgow example script leaves them (fftshift, then flipud):
    row r at slow-time frequency (nfft/2 - 1 - r) PRF / nfft. The STFT window, overlap and padding come from the
    name (..._MD_prm_TWL_256_OF_95_PF_4.mat), else from the options."""
    x = np.abs(read_glasgow_mat(path, cfg.mat_variable))               # (nfft, T)
    nfft = len(x)
    match = GLASGOW_MAT_STFT.search(path.name)
    length, overlap, pad = ((int(match.group(1)), int(match.group(2)) / 100, int(match.group(3))) if match
                            else (cfg.stft_length, cfg.overlap, cfg.pad_factor))
    if nfft != length * pad:
        raise ValueError(f"{path}: {nfft} Doppler rows, but a {length}-sample window padded {pad}x gives "
                         f"{length * pad}")
    carrier, prf = cfg.carrier_hz or GLASGOW_CARRIER_HZ, cfg.prf_hz or GLASGOW_PRF_HZ
    by_bin = x[(nfft // 2 - 1 - np.arange(nfft)) % nfft]                # row k at f = k PRF / nfft
    radar = {"carrier_hz": carrier, "prf_hz": prf, "stft_length": length, "overlap": overlap, "pad_factor": pad}
    return doppler_spectrogram(by_bin, stft_hop(length, overlap) / prf, length / prf, carrier, prf, chain, radar)


def idrad_spectrogram(path: Path, cfg, chain: Chain) -> Spectrogram:
    """IDRad per-frame Doppler profiles, one column per frame: each value is a sum over idrad_range_bins range bins
    of 20 log10 |range-Doppler map|, Doppler fft-shifted (column c at (c - nfft/2) PRF / nfft). Divided by the
    number of range bins (mean dB over range) and turned into a magnitude, so that to_db gives dB again."""
    profiles = read_idrad(path, cfg.idrad_dataset)                      # (frames, nfft)
    nfft = profiles.shape[1]
    magnitude = 10 ** (profiles.astype(np.float64) / (20 * cfg.idrad_range_bins))
    by_bin = magnitude[:, (np.arange(nfft) + nfft // 2) % nfft].T       # (nfft, frames), row k at k PRF / nfft
    radar = {"carrier_hz": cfg.carrier_hz, "prf_hz": cfg.prf_hz, "frame_rate_hz": cfg.frame_rate_hz,
             "dataset": cfg.idrad_dataset}
    frame_s = 1 / cfg.frame_rate_hz
    return doppler_spectrogram(by_bin, frame_s, frame_s, cfg.carrier_hz, cfg.prf_hz, chain, radar)


def check_config(cfg) -> None:
    """Refuse a missing or contradictory option before any file is read."""
    for name in ("format", "input", "out"):
        if getattr(cfg, name) is None:
            raise ValueError(f"{_flag(name)} is required")
    for name in ("carrier_hz", "bandwidth_hz", "chirp_s", "prf_hz", "frame_rate_hz"):
        given = getattr(cfg, name) is not None
        if given and name not in RADAR_OPTIONS[cfg.format]:
            raise ValueError(f"{_flag(name)} does not apply to --format {cfg.format}"
                             + (" (each file's header gives the radar)" if cfg.format == "glasgow-dat" else ""))
        if not given and name in REQUIRED_OPTIONS[cfg.format]:
            raise ValueError(f"--format {cfg.format} needs {_flag(name)} (the files do not record it)")
    chain_of(cfg)                                                       # its own checks


def _check_out(out: Path, overwrite: bool) -> None:
    """--out must be new, empty, or (with --overwrite) an earlier ldm.radar output."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        try:
            ours = str(json.loads((out / "metadata.json").read_text()).get("format", "")).startswith(FORMAT_TAG)
        except (OSError, ValueError, AttributeError):                   # none, unreadable, or not an object
            ours = False
        if not overwrite or not ours:
            raise ValueError(f"--out {out} exists and is not empty" + ("; pass --overwrite to replace it" if ours
                             else " and is not an ldm.radar output; choose another folder"))


def convert(cfg) -> dict:
    """Convert every recording of --input into OUT/<person>/<recording>_w<k>.npy and write OUT/metadata.json
    (all written to a temporary folder first: an error leaves no partial output). cfg: a _config_class() instance.
    Returns the metadata."""
    from tqdm import tqdm

    from ldm.io import replace_folder, write_json

    check_config(cfg)
    recordings = find_recordings(cfg)
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite)
    result = {}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        axes, sources, skipped, total = None, [], [], 0
        for rec in tqdm(recordings, desc=f"converting {cfg.format}", unit="file", disable=not cfg.progress):
            try:
                spec = load_spectrogram(rec, cfg)
                if axes is None:
                    width = window_columns(cfg.window_s, spec.seconds_per_column, spec.frame_s)
                    hop = max(1, round((cfg.hop_s or cfg.window_s) / spec.seconds_per_column))
                    if width < 1:
                        raise ValueError(f"--window-s {cfg.window_s} is shorter than one spectrogram column "
                                         f"({spec.frame_s:g} s of signal)")
                    axes = (spec, width, hop)
                else:
                    _check_same_axes(rec.source, spec, axes[0])
                starts = window_starts(spec.magnitude.shape[1], axes[1], axes[2])
                images = [to_db(spec.magnitude[:, s:s + axes[1]], cfg.dynamic_range) for s in starts]
            except (ValueError, OSError) as err:                       # a bad or unreadable file
                if not cfg.skip_bad:
                    raise ValueError(str(err) if str(rec.source) in str(err) else f"{rec.source}: {err}") from None
                skipped.append({"source": str(rec.source), "reason": str(err)})
                continue
            (tmp / rec.person).mkdir(exist_ok=True)
            for k, image in enumerate(images):
                np.save(tmp / rec.person / f"{rec.name}_w{k}.npy", image)
            total += len(images)
            sources.append({"source": str(rec.source), "person": rec.person, "recording": rec.name,
                            "columns": int(spec.magnitude.shape[1]), "windows": len(images), "radar": spec.radar})
        if total == 0:
            raise ValueError(f"no windows written: every recording is shorter than --window-s {cfg.window_s} or "
                             "unreadable" + (f" (first: {skipped[0]['reason']})" if skipped else ""))
        result["meta"] = metadata(cfg, *axes, sources, skipped)
        write_json(result["meta"], tmp / "metadata.json")

    replace_folder(out, write)                       # written beside, then swapped in: an error leaves no partial output
    return result["meta"]


def _check_same_axes(source: Path, spec: Spectrogram, first: Spectrogram) -> None:
    same = (len(spec.velocities) == len(first.velocities) and np.allclose(spec.velocities, first.velocities)
            and np.isclose(spec.seconds_per_column, first.seconds_per_column))
    if not same:
        raise ValueError(f"{source}: its axes ({len(spec.velocities)} rows, PRF {spec.prf_hz:g} Hz, carrier "
                         f"{spec.carrier_hz:g} Hz, {spec.seconds_per_column:g} s per column) differ from the first "
                         f"file's ({len(first.velocities)}, {first.prf_hz:g} Hz, {first.carrier_hz:g} Hz, "
                         f"{first.seconds_per_column:g} s); convert them into separate folders")


def metadata(cfg, spec: Spectrogram, width: int, hop: int, sources: list[dict],
             skipped: list[dict]) -> dict:
    """metadata.json: the image axes (with the simulator's key names where they mean the same), the radar and the
    options. v_max_mps and duration_s are the --v-max and --duration that evaluate.py/sample.py/augment.py take."""
    step = float(spec.velocities[0] - spec.velocities[1])
    dt = spec.seconds_per_column
    people = sorted({s["person"] for s in sources})
    return {
        "format": f"{FORMAT_TAG}: <person>/<recording>_w<k>.npy = float32 (height, width) dB re the window's max "
                  "in [-dynamic_range_db, 0]; rows = radial velocity velocity_mps (top row most positive, i.e. "
                  "approaching), columns = time, seconds_per_column apart",
        "source_format": cfg.format, "input": str(cfg.input),
        "height": len(spec.velocities), "width": width,
        "velocity_mps": [float(v) for v in spec.velocities],
        "velocity_top_mps": float(spec.velocities[0]), "velocity_step_mps": step,
        "v_max_mps": float(spec.velocities[0]) + step / 2,
        "seconds_per_column": dt, "frame_rate_hz": 1 / dt, "duration_s": width * dt, "window_hop_s": hop * dt,
        "window_signal_s": (width - 1) * dt + spec.frame_s,
        "radar": {"carrier_hz": spec.carrier_hz, "prf_hz": spec.prf_hz, "dynamic_range_db": cfg.dynamic_range},
        "options": {k: v for k, v in asdict(cfg).items() if k not in ("input", "out", "progress", "overwrite")},
        "persons": people, "windows": sum(s["windows"] for s in sources),
        "recordings": sources, "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    from ldm.cli import parse_config
    cfg = parse_config(_config_class(), argv, "Convert raw FMCW radar I/Q or another group's spectrograms into "
                                              "micro-Doppler spectrogram windows OUT/<person>/<recording>_w<k>.npy "
                                              "(float32 dB) plus OUT/metadata.json (docs/radar.md).",
                     prog="python -m ldm.radar")
    start = time.perf_counter()
    try:
        meta = convert(cfg)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    short = sum(r["windows"] == 0 for r in meta["recordings"])
    print(f"wrote {meta['windows']} spectrograms ({meta['height']}x{meta['width']}, +-{meta['v_max_mps']:.2f} m/s, "
          f"{meta['duration_s']:.2f} s) of {len(meta['persons'])} person(s) from {len(meta['recordings'])} file(s) "
          f"to {cfg.out} in {seconds:.1f} s" + (f"; skipped {len(meta['skipped'])} file(s)" if meta["skipped"] else "")
          + (f"; {short} recording(s) shorter than --window-s gave none" if short else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
