"""The radar signal chain: raw FMCW I/Q -> micro-Doppler spectrograms (numpy only), one chain for real recordings
(ldm.radar.datasets) and for the simulator's realistic profile (ldm.radar.echo).

Defaults = the example processing published with the University of Glasgow "Radar signatures of human activities"
set: no range window, 4th-order Butterworth MTI at 0.0075 of Nyquist, range bins 10-30, 200-chirp Hamming STFT
with 95% overlap and 4x zero padding:

    s[m, n]   dechirped beat signal (I + jQ): chirp m (slow time, every 1/PRF s), sample n of N (fast time)
      -> range FFT    R[m, b] = sum_n w[n] s[m, n] exp(-j 2 pi n b / N),  b < N/2;  bin b is range b c / (2 B)
      -> MTI          a Butterworth high-pass over m, per range bin, started in its steady state for the first
                      chirp (as if the scene had looked like chirp 0 for ever): the static zero-Doppler return is
                      removed from the first chirp on; what moves at chirp 0 still starts a transient (at most
                      its own amplitude), so the columns whose STFT frames start before the filter settled to
                      -settle_db (0.63 s at 50 dB, 4th order, 0.0075 of Nyquist, 1 kHz) are dropped: no window
                      carries a start-up transient
      -> range gate   bins first..last: fixed (Glasgow's 10-30), or "auto": per recording, the narrowest run of
                      bins holding gate_share (e.g. 90%) of the moving-target energy sum_m |R_mti[m, b]|^2
      -> STFT         S_b[t, k] = sum_l w[l] R[t hop + l, b] exp(-j 2 pi k l / nfft)   (frequency k PRF / nfft)
      -> sum          M[t, k] = sum_{b = first..last} |S_b[t, k]|
      -> velocity     row j holds v_j = j dv, dv = PRF lambda / (2 nfft), j = J .. -J, |v_j| <= v_max
      -> windows      every hop_s seconds, window_s seconds long; each 20 log10(M / max M), clipped at -range dB

Sign convention. `fmcw_beat_signal` writes the phase 2 pi (f_b t + 2 R / lambda) (the mixer output tx * conj(rx)):
ranges sit at positive beat frequencies and a target approaching at v (dR/dt = -v) turns the slow-time phase at
f = -2 v / lambda. Hence v = -f lambda / 2, and every image here has the most positive velocity (approaching) in
its top row, as the simulator's images do. The Glasgow example script displays its spectrograms the same way.
Radars with the opposite phase (-4 pi R / lambda) need reverse_velocity.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
WINDOWS = ("rect", "hann", "hamming", "blackman")
RANGE_GATES = ("fixed", "auto")


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
    amplitudes: (scatterers,) or (chirps, scatterers), real or complex. A scatterer at R lands in range-FFT bin
    R / (c / (2 B)).
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
    wavelength = SPEED_OF_LIGHT / carrier_hz
    slope = bandwidth_hz / chirp_s                                      # Hz/s
    n = samples_per_chirp
    dt = chirp_s / n
    beat = 2 * np.pi * 2 * slope / SPEED_OF_LIGHT * ranges              # (M, K) 2 pi f_b
    # a exp(j 2 pi 2 R / lambda) exp(j 2 pi f_b t_0): the carrier phase taken mod 1 before it multiplies 2 pi
    first = np.broadcast_to(amps, ranges.shape) * np.exp(
        1j * (2 * np.pi * np.remainder(2 * ranges / wavelength, 1.0) + beat * (-n / 2 * dt)))
    # exp(j 2 pi f_b dt i) with i = inner * a + b: s[m, a, b] = sum_k (first exp(j 2 pi f_b dt inner a))[m, k]
    # exp(j 2 pi f_b dt b)[m, k], one small matrix product per chirp instead of an exponential per sample.
    inner = next(d for d in (16, 8, 4, 2, 1) if n % d == 0)
    lo = np.exp(1j * beat[..., None] * (dt * np.arange(inner)))                         # (M, K, inner)
    hi = first[..., None] * np.exp(1j * beat[..., None] * (dt * inner * np.arange(n // inner)))   # (M, K, n / inner)
    signal = np.matmul(hi.transpose(0, 2, 1), lo).reshape(len(ranges), n)              # (M, n / inner, inner)
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




def iir_filter(b: np.ndarray, a: np.ndarray, x: np.ndarray, axis: int = 0, steady: bool = False) -> np.ndarray:
    """Filter x along `axis`, as scipy.signal.lfilter(b, a, x, axis): a_0 y[n] = sum_i b_i x[n - i] -
    sum_{i >= 1} a_i y[n - i]. Direct form II transposed; complex x stays complex.

    steady=False starts from rest (zero state, scipy's default). steady=True starts in the steady state of the
    constant input x[0] (scipy's zi = lfilter_zi(b, a) * x[0]): with y = H(1) x[0] the state is
    z_i = sum_{j > i} (b_j - a_j H(1)) x[0], so a constant input gives y[n] = H(1) x[0] from n = 0 on (0 for a
    high-pass: no start-up transient).
    """
    b, a = np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)
    order = max(len(a), len(b)) - 1
    b = np.pad(b, (0, order + 1 - len(b))) / a[0]
    a = np.pad(a, (0, order + 1 - len(a))) / a[0]
    x = np.moveaxis(np.asarray(x), axis, 0)                             # (T, ...)
    y = np.empty(x.shape, dtype=np.result_type(x.dtype, np.float64))
    state = np.zeros((order + 1,) + x.shape[1:], dtype=y.dtype)         # state[order] stays 0
    if steady and len(x):
        dc_gain = b.sum() / a.sum()
        tail = np.cumsum((b - a * dc_gain)[::-1])[::-1]                 # tail[i] = sum_{j >= i} (b_j - a_j H(1))
        state[:order] = tail[1:].reshape((order,) + (1,) * (x.ndim - 1)) * x[0]
    bs = b[1:].reshape((order,) + (1,) * (x.ndim - 1))
    as_ = a[1:].reshape((order,) + (1,) * (x.ndim - 1))
    for n in range(len(x)):
        y[n] = b[0] * x[n] + state[0]
        state[:order] = bs * x[n] - as_ * y[n] + state[1:]
    return np.moveaxis(y, 0, axis)


def mti_highpass(x: np.ndarray, order: int = 4, cutoff: float = 0.0075, axis: int = 0,
                 steady: bool = True) -> np.ndarray:
    """Moving-target indication: a causal Butterworth high-pass of x along slow time `axis` (the Glasgow example's
    `filter(butter(4, 0.0075, 'high'), ...)`); cutoff is a fraction of the Nyquist frequency PRF / 2 (0.0075 at
    1 kHz: 3.75 Hz, i.e. 0.1 m/s at 5.8 GHz). steady=True (default) starts the filter in its steady state for the
    first sample, so the static return gives no start-up transient; steady=False starts from rest as the Glasgow
    example does (its first ~0.5 s then carry the filter's response to the static return switching on)."""
    b, a = butterworth_highpass(order, cutoff)
    return iir_filter(b, a, x, axis, steady)


@functools.lru_cache(maxsize=64)
def settle_seconds(order: int, cutoff: float, prf_hz: float, floor_db: float) -> float:
    """How long a from-rest Butterworth MTI (mti_highpass with steady=False) takes to settle: the time after which
    its response to a unit step stays below -floor_db dB. For spectrograms computed with such a filter (the
    Glasgow .mat files), the columns before it carry the start-up transient."""
    b, a = butterworth_highpass(order, cutoff)
    n = int(np.ceil(20 * 2 / cutoff))                                    # 20 periods of the cutoff frequency
    response = np.abs(iir_filter(b, a, np.ones(n)))
    loud = np.flatnonzero(response > 10 ** (-floor_db / 20))
    return 0.0 if len(loud) == 0 else (loud[-1] + 1) / prf_hz


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
    range_gate: str = "fixed"         # "fixed": bins range_first..range_last; "auto": per recording (auto_range_gate)
    range_first: int = 10             # fixed range gate, first and last range-FFT bin (inclusive)
    range_last: int = 30
    gate_share: float = 0.9           # auto gate: share of the moving-target energy the gate holds
    mti_order: int = 4                # Butterworth high-pass order (0: no MTI)
    mti_cutoff: float = 0.0075        # as a fraction of Nyquist (PRF / 2)
    stft_window: str = "hamming"      # MATLAB spectrogram()'s default window
    stft_length: int = 200            # chirps per STFT window
    overlap: float = 0.95             # hop = length - round(length * overlap)
    pad_factor: int = 4               # nfft = pad_factor * length
    v_max: float = 6.0                # rows keep |v| <= v_max (m/s)
    reverse_velocity: bool = False    # the radar's phase is -4 pi R / lambda: conjugate the I/Q first
    settle_db: float = 50.0           # drop the columns before the MTI settled to -settle_db (0: keep all)

    def __post_init__(self):
        if self.range_gate not in RANGE_GATES:
            raise ValueError(f"--range-gate must be one of {RANGE_GATES}, got {self.range_gate!r}")
        if self.range_first > self.range_last:
            raise ValueError(f"--range-first {self.range_first} is after --range-last {self.range_last}")
        if not 0 < self.gate_share <= 1:
            raise ValueError(f"--gate-share must lie in (0, 1], got {self.gate_share}")
        if self.hop < 1:
            raise ValueError(f"--overlap {self.overlap} leaves no hop for --stft-length {self.stft_length}")

    @property
    def hop(self) -> int:
        return stft_hop(self.stft_length, self.overlap)

    @property
    def nfft(self) -> int:
        return self.pad_factor * self.stft_length

    def settle_columns(self, prf_hz: float) -> int:
        """The first column whose STFT frame starts after the MTI settled (settle_seconds to -settle_db); 0
        without MTI or with settle_db = 0. A simulation that pre-rolls settle_columns * hop chirps before t = 0
        has its first kept frame start at t = 0."""
        if self.mti_order == 0 or self.settle_db <= 0:
            return 0
        seconds = settle_seconds(self.mti_order, self.mti_cutoff, prf_hz, self.settle_db)
        return int(np.ceil(seconds * prf_hz / self.hop - 1e-9))


@dataclass
class Spectrogram:
    """A whole recording's micro-Doppler magnitude: rows = velocities (top first), columns every
    seconds_per_column, each from frame_s seconds of signal (the STFT window); radar = what the source said about
    its radar, plus what the chain decided for this recording (the range gate), for metadata.json."""
    magnitude: np.ndarray       # (V, T) linear magnitude
    velocities: np.ndarray      # (V,) m/s
    seconds_per_column: float
    frame_s: float
    carrier_hz: float
    prf_hz: float
    radar: dict


def auto_range_gate(energy: np.ndarray, share: float, first_bin: int = 1) -> tuple[int, int]:
    """The narrowest run of range bins [first, last] (first >= first_bin) whose energy holds at least `share` of
    the total over bins first_bin.. (ties: the run with more energy). energy: (B,) per-bin moving-target energy
    sum_m |R_mti[m, b]|^2. Bin 0 (DC and the antenna leakage) is left out by default, as the Glasgow example
    drops it."""
    e = np.asarray(energy, dtype=np.float64)[first_bin:]
    total = e.sum()
    if not total > 0:
        raise ValueError("no moving-target energy after the MTI in any range bin: nothing to gate on")
    cum = np.concatenate([[0.0], np.cumsum(e)])                          # cum[i] = energy of bins < i
    need = share * total * (1 - 1e-12)
    best = None
    for i in range(len(e)):                                             # shortest run starting at bin i
        j = int(np.searchsorted(cum, cum[i] + need, side="left"))        # smallest j with cum[j] - cum[i] >= need
        if j > len(e):
            break
        key = (j - i, -(cum[j] - cum[i]))
        if best is None or key < best[0]:
            best = (key, i, j - 1)
    return best[1] + first_bin, best[2] + first_bin


def iq_spectrogram(iq: np.ndarray, radar: FmcwRadar, chain: Chain = Chain()) -> Spectrogram:
    """The chain from dechirped I/Q (chirps, samples_per_chirp) to the range-gated velocity-time magnitude
    M[j, t] = sum_{b in gate} |S_b[t, bin_j]| (module docstring). The gate used is in the result's radar dict."""
    iq = np.asarray(iq)
    if iq.ndim != 2:
        raise ValueError(f"I/Q must be (chirps, samples_per_chirp), got shape {iq.shape}")
    if chain.reverse_velocity:
        if not np.iscomplexobj(iq):
            raise ValueError("--reverse-velocity: real-valued samples have no phase convention to reverse")
        iq = np.conj(iq)
    num_chirps, samples = iq.shape
    if chain.range_gate == "fixed" and chain.range_last >= samples // 2:
        raise ValueError(f"--range-last {chain.range_last} is beyond the {samples // 2} positive range bins of a "
                         f"{samples}-sample chirp")
    if num_chirps < chain.stft_length:
        raise ValueError(f"{num_chirps} chirps are fewer than --stft-length {chain.stft_length}")
    profiles = range_fft(iq, chain.range_window)                         # (M, N/2)
    if chain.range_gate == "fixed":
        first, last = chain.range_first, chain.range_last
        gate = profiles[:, first:last + 1]                              # (M, gate)
        if chain.mti_order > 0:
            gate = mti_highpass(gate, chain.mti_order, chain.mti_cutoff, axis=0)
    else:
        moving = mti_highpass(profiles, chain.mti_order, chain.mti_cutoff, axis=0) if chain.mti_order > 0 \
            else profiles
        first, last = auto_range_gate((np.abs(moving) ** 2).sum(axis=0), chain.gate_share)
        gate = moving[:, first:last + 1]
    bins, velocities = velocity_bins(chain.nfft, radar.prf_hz, radar.carrier_hz, chain.v_max)
    skip = chain.settle_columns(radar.prf_hz)                           # frames starting before the MTI settled
    if num_chirps < skip * chain.hop + chain.stft_length:
        raise ValueError(f"{num_chirps} chirps ({num_chirps / radar.prf_hz:g} s) leave no STFT frame after the MTI "
                         f"settled ({skip * chain.hop / radar.prf_hz:g} s; --settle-db {chain.settle_db:g})")
    gate = gate[skip * chain.hop:]
    magnitude = sum(np.abs(stft(gate[:, b], chain.stft_window, chain.stft_length, chain.hop, chain.nfft)[:, bins])
                    for b in range(gate.shape[1]))                       # (frames, V)
    info = {**asdict(radar), "range_gate_bins": [int(first), int(last)],
            "range_gate_m": [first * radar.range_bin_m, (last + 1) * radar.range_bin_m],
            "dropped_start_s": skip * chain.hop / radar.prf_hz}
    return Spectrogram(magnitude.T, velocities, chain.hop / radar.prf_hz, chain.stft_length / radar.prf_hz,
                       radar.carrier_hz, radar.prf_hz, info)


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
