"""What the radar sees of a walking body (numpy only; docs/microdoppler.md, sections 2, 7 and 8):

    ldm.radar.kinematics.world_points (the body's points in the world)
      -> scatterers: 12 segments as prolate ellipsoids (one scatterer each, or several along each), their ranges
         and RCS, optionally the R^-4 range loss
      -> classic:   echo() slow-time baseband exp(-j 4 pi R / lambda) at the PRF + clutter + noise (SNR re the
                    body's own power), optional MTI; spectrogram_db(): Hann STFT, (size, size) dB image
      -> realistic: fmcw_iq() raw dechirped FMCW I/Q (chirps, samples): body + clutter points with a Doppler
                    spread + a fixed noise floor (so the SNR follows range and RCS); render_fmcw() runs it through
                    ldm.radar.chain (range FFT, gate, MTI, STFT: the chain real recordings take) and resamples
                    the velocity-time image to (size, size)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ldm.radar.chain import SPEED_OF_LIGHT, Chain, FmcwRadar, fmcw_beat_signal, iq_spectrogram, mti_highpass
from ldm.radar.kinematics import SCATTERERS, Body, Draws, Person, world_points

SIZES = (64, 128, 256)


def prf_for_span(carrier_hz: float, span_mps: float) -> float:
    """The PRF (Hz) whose unambiguous velocity span is +-span_mps at this carrier: PRF = 4 * span / lambda
    (for +-8 m/s: 619 Hz at 5.8 GHz, 2562 Hz at 24 GHz, 8219 Hz at 77 GHz)."""
    return 4.0 * span_mps * carrier_hz / SPEED_OF_LIGHT


# ----------------------------------------------------------------------------------------------------------------
# Configuration: the radar, the body's scattering model, a person, one sample's nuisance draws
# ----------------------------------------------------------------------------------------------------------------
MTI_FILTERS = ("none", "two-pulse", "butterworth")


@dataclass(frozen=True)
class Radar:
    """A CW / pulse-Doppler radar at the origin, `height_m` above the ground, and the image it renders.

    Defaults (the classic profile; docs/microdoppler.md, sections 2 and 8): 24 GHz, PRF 2 kHz -> unambiguous velocity
    +-PRF*lambda/4 = +-6.25 m/s; 2.56 s of data (about two gait cycles); a 50 dB display range below each image's
    maximum; no clutter, no MTI, no range loss.
    """
    carrier_hz: float = 24e9
    prf_hz: float = 2000.0
    duration_s: float = 2.56
    height_m: float = 1.0
    dynamic_range_db: float = 50.0
    kinematics_hz: float = 250.0     # body evaluated on this coarse grid, ranges interpolated to the PRF
    clutter_db: float | None = None  # static zero-Doppler return, power relative to the mean body echo
    mti: str = "none"                # "two-pulse": s[n] - s[n-1]; "butterworth": ldm.radar.chain.mti_highpass
    range_loss: bool = False         # amplitude ~ R^-2 (received power ~ R^-4, the radar equation)

    def __post_init__(self):
        for name in ("carrier_hz", "prf_hz", "duration_s", "dynamic_range_db", "kinematics_hz"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Radar.{name} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.height_m) and 0 <= self.height_m <= 5):
            raise ValueError(f"Radar.height_m must lie in [0, 5] m, got {self.height_m}")
        if self.clutter_db is not None and not math.isfinite(self.clutter_db):
            raise ValueError(f"Radar.clutter_db must be finite or None, got {self.clutter_db}")
        if self.mti not in MTI_FILTERS:
            raise ValueError(f"Radar.mti must be one of {MTI_FILTERS}, got {self.mti!r}")

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_hz

    @property
    def max_velocity_mps(self) -> float:
        """Unambiguous radial velocity span is [-v_max, v_max), v_max = PRF * lambda / 4."""
        return self.prf_hz * self.wavelength_m / 4.0

    @property
    def num_pulses(self) -> int:
        return int(round(self.duration_s * self.prf_hz))



# ----------------------------------------------------------------------------------------------------------------
# Scatterers, the span check and the echo (docs/microdoppler.md, sections 2 and 7)
# ----------------------------------------------------------------------------------------------------------------
def scatterers(person: Person, draws: Draws, radar: Radar, t: np.ndarray, body: Body = Body()
               ) -> tuple[np.ndarray, np.ndarray]:
    """Ranges R_k (P, T) in metres from the antenna and echo amplitudes (P, T) of the P scatterers at times t (T,).

    Each of the 12 segments is a prolate ellipsoid (semi-axes a, a, c = length / 2) with RCS
    sigma = pi a^4 c^2 / (a^2 sin^2 theta + c^2 cos^2 theta)^2 at aspect theta (segment axis vs line of sight).
    body.points_per_segment = 1: one scatterer at Chen's point (SCATTERERS), amplitude sqrt(sigma); n > 1: n points
    at fractions (i + 1/2) / n along the segment, each of amplitude sqrt(sigma / n). With radar.range_loss the
    amplitude is divided by R^2 (power ~ R^-4).
    """
    pts = world_points(person, draws, t, body.ground_contact)
    start, end, point = (np.stack([pts[s[i]] for s in SCATTERERS]) for i in (1, 2, 3))   # (K, 3, T) each
    a = np.array([s[4] for s in SCATTERERS])[:, None]                 # (K, 1) ellipsoid radii
    n = body.points_per_segment
    if n > 1:
        frac = ((np.arange(n) + 0.5) / n)[None, :, None, None]
        point = (start[:, None] + frac * (end - start)[:, None]).reshape(-1, *start.shape[1:])   # (K n, 3, T)
        start, end, a = np.repeat(start, n, axis=0), np.repeat(end, n, axis=0), np.repeat(a, n, axis=0)
    axis = end - start                                                 # segment axes
    los = point - np.array([0.0, 0.0, radar.height_m])[:, None]        # antenna -> scatterer
    ranges = np.linalg.norm(los, axis=1)                               # (P, T)
    length = np.linalg.norm(axis, axis=1)
    cos2 = (np.sum(axis * los, axis=1) / (length * ranges)) ** 2       # cos^2 of the aspect angle
    c = length / 2                                                     # semi-axis along the segment
    sigma = np.pi * a**4 * c**2 / (a**2 * (1 - cos2) + c**2 * cos2) ** 2 / n
    amps = np.sqrt(sigma)
    if radar.range_loss:
        amps = amps / ranges**2
    return ranges, amps


def peak_speed_mps(person: Person, speed_factor: float = 1.0, arm_factor: float = 1.0, body: Body = Body()) -> float:
    """The fastest 3-D speed (m/s) of any body point over one gait cycle at this speed and arm factor: a bound on
    the radial speed a radar sees at any heading (a point inside a rigid segment is never faster than its ends)."""
    draws = Draws(speed_factor=speed_factor, arm_factor=arm_factor)
    walker = draws.apply(person)
    t = np.arange(0.0, walker.cycle_s + 2e-3, 1e-3)
    pts = world_points(person, draws, t, body.ground_contact)
    return float(max(np.linalg.norm(np.diff(p, axis=1), axis=0).max() / 1e-3 for p in pts.values()))





# The Butterworth MTI starts from rest, and its response to the static return switching on needs about 950 pulses to
# fall by 80 dB (at cutoff 0.0075 of Nyquist, whatever the PRF). A radar filters continuously, so the simulated walk
# starts this many pulses before t = 0 and the filtered signal is kept from t = 0 on.
MTI_SETTLE_PULSES = 1024


def _mti_butterworth(signal: np.ndarray) -> np.ndarray:
    """The MTI of real data (ldm.radar.chain.mti_highpass: 4th-order Butterworth high-pass, cutoff 0.0075 of Nyquist,
    i.e. 0.0075 * v_max in velocity)."""
    return mti_highpass(signal, order=4, cutoff=0.0075, axis=0, steady=False)   # from rest, after MTI_SETTLE_PULSES


def _tracks(person: Person, draws: Draws, radar: Radar, body: Body, rng: np.random.Generator, settle: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """The scatterers' ranges (P, T) and amplitudes (P, T) on the coarse kinematics grid (every 1 / kinematics_hz s,
    from `settle` pulses before t = 0 to past the last pulse), the amplitudes times a slow +-10% jitter
    g_k(t) = 1 + 0.1 sin(2 pi f_k t + phi_k), f_k ~ U(0.2, 1) Hz, phi_k ~ U(0, 2 pi) from rng.
    ValueError if a scatterer's radial speed leaves the unambiguous span +-PRF lambda / 4, or the walker comes
    within 0.5 m of the antenna."""
    n = radar.num_pulses + settle
    t = np.arange(int(math.ceil(n / radar.prf_hz * radar.kinematics_hz)) + 2) / radar.kinematics_hz
    t -= settle / radar.prf_hz
    ranges, amps = scatterers(person, draws, radar, t, body)
    radial = np.abs(np.diff(ranges, axis=1)).max() * radar.kinematics_hz
    if radial >= radar.max_velocity_mps:
        raise ValueError(f"a scatterer moves at {radial:.2f} m/s radially, past the unambiguous span "
                         f"+-{radar.max_velocity_mps:.2f} m/s of PRF {radar.prf_hz:.0f} Hz at "
                         f"{radar.carrier_hz / 1e9:g} GHz: raise the PRF to at least "
                         f"{prf_for_span(radar.carrier_hz, radial):.0f} Hz")
    if ranges.min() < 0.5:
        raise ValueError(f"the walker comes within {ranges.min():.2f} m of the antenna (start range "
                         f"{draws.start_range_m:.2f} m, {radar.duration_s} s of walking): start further out or "
                         "simulate a shorter duration")
    k = len(ranges)
    freq, offset = rng.uniform(0.2, 1.0, (k, 1)), rng.uniform(0, 2 * np.pi, (k, 1))
    return ranges, amps * (1 + 0.1 * np.sin(2 * np.pi * freq * t + offset))


def _pulse_grid(n: int, radar: Radar) -> tuple[np.ndarray, np.ndarray]:
    """Where the first n pulses sit on the coarse kinematics grid: pulse m lies between grid points i0[m] and
    i0[m] + 1, a fraction frac[m] of the way (linear interpolation: v[i0] (1 - frac) + v[i0 + 1] frac)."""
    pos = np.arange(n) * (radar.kinematics_hz / radar.prf_hz)        # pulse times in grid steps
    i0 = pos.astype(np.int64)
    return i0, pos - i0


def echo(person: Person, draws: Draws, radar: Radar = Radar(), rng: np.random.Generator | None = None,
         body: Body = Body()) -> np.ndarray:
    """Complex baseband slow-time signal (N,), N = duration * PRF (docs/microdoppler.md, sections 2 and 7):
    s(t) = sum_k a_k(t) * g_k(t) * exp(-j 4 pi R_k(t) / lambda) + clutter + noise, then the MTI filter,
    a_k, R_k from `scatterers`, g_k the jitter of `_tracks`.
    The body is evaluated every 1 / kinematics_hz seconds and R_k, a_k are linearly interpolated to the PRF grid
    before the exponential (the speed trick of docs/microdoppler.md, section 2). rng supplies the jitter, the
    clutter phase and the noise (default numpy.random.default_rng(0)). ValueError if a scatterer's radial speed
    leaves the unambiguous span +-PRF lambda / 4 or the walker comes within 0.5 m of the antenna."""
    rng = np.random.default_rng(0) if rng is None else rng
    settle = MTI_SETTLE_PULSES if radar.mti == "butterworth" else 0   # pulses before t = 0, dropped after the MTI
    n = radar.num_pulses + settle
    ranges, amps = _tracks(person, draws, radar, body, rng, settle)
    # Echo phase 4 pi R / lambda = (phase at t = 0, mod 2 pi) + (change since t = 0): the change stays below a few
    # thousand radians, so float32 holds it to ~1e-3 rad and cos/sin run about 20x faster than in float64.
    wavenumber = 4 * np.pi / radar.wavelength_m
    phase0 = np.remainder(wavenumber * ranges[:, :1], 2 * np.pi).astype(np.float32)       # (P, 1)
    dphase = (wavenumber * (ranges - ranges[:, :1])).astype(np.float32)                  # (P, T_coarse)
    amps = amps.astype(np.float32)
    i0, frac = _pulse_grid(n, radar)
    frac = frac.astype(np.float32)
    phase = phase0 + dphase[:, i0] * (1 - frac) + dphase[:, i0 + 1] * frac              # (P, N) linear in R
    amp = amps[:, i0] * (1 - frac) + amps[:, i0 + 1] * frac
    signal = (np.sum(amp * np.cos(phase), axis=0) - 1j * np.sum(amp * np.sin(phase), axis=0)).astype(np.complex128)
    power = np.mean(np.abs(signal) ** 2)
    if radar.clutter_db is not None:
        signal = signal + math.sqrt(power * 10 ** (radar.clutter_db / 10)) * np.exp(2j * np.pi * rng.random())
    noise_var = power / 10 ** (draws.snr_db / 10)
    signal = signal + math.sqrt(noise_var / 2) * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    if radar.mti == "two-pulse":
        signal = np.diff(signal, prepend=signal[:1])                   # y[n] = s[n] - s[n-1]
    elif radar.mti == "butterworth":
        signal = _mti_butterworth(signal)[settle:]
    return signal


# ----------------------------------------------------------------------------------------------------------------
# The realistic profile: raw FMCW I/Q through ldm.radar.chain
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fmcw:
    """An FMCW front end (one chirp per pulse, back to back: chirp time 1 / PRF) and the chain that renders it.

    Defaults: the Glasgow radar's 400 MHz sweep of 128 samples (range bins of c / 2B = 0.375 m) and the Glasgow
    example processing (range bins 10-30, i.e. 3.75-11.6 m; Butterworth MTI; 200-chirp Hamming STFT, 95% overlap,
    4x padding), shown over +-v_max. The noise floor is fixed: a 1 m^2 target 10 m away has snr_10m_db per
    fast-time sample, so the SNR follows R^-4 and the RCS. Clutter: clutter_points static reflectors per walk at
    2-12 m with RCS 10^U(-10, 10)/10 m^2 (0.1-10 m^2), each carrying a fluctuating part clutter_fluctuation_db
    below it with a Gaussian Doppler spectrum of standard deviation clutter_spread_hz (curtains, fans, breathing
    walls), which the MTI only partly removes."""
    bandwidth_hz: float = 400e6
    samples_per_chirp: int = 128
    snr_10m_db: float = 15.0
    clutter_points: int = 6
    clutter_spread_hz: float = 1.0
    clutter_fluctuation_db: float = -25.0
    chain: Chain = field(default_factory=lambda: Chain(v_max=8.0))

    def front_end(self, radar: Radar) -> FmcwRadar:
        return FmcwRadar(radar.carrier_hz, self.bandwidth_hz, 1.0 / radar.prf_hz, radar.prf_hz)


def _clutter(n: int, prf_hz: float, fmcw: Fmcw, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clutter points: ranges (n, K) (static) and complex amplitudes (n, K) = static part + a fluctuation whose
    Doppler spectrum is Gaussian with standard deviation fmcw.clutter_spread_hz (white noise shaped in the
    frequency domain), fmcw.clutter_fluctuation_db below the static power; amplitude sqrt(sigma) / R^2."""
    k = fmcw.clutter_points
    ranges = rng.uniform(2.0, 12.0, k)
    rcs = 10 ** (rng.uniform(-10.0, 10.0, k) / 10)
    static = np.sqrt(rcs) / ranges**2 * np.exp(2j * np.pi * rng.random(k))          # (K,)
    f = np.fft.fftfreq(n, 1 / prf_hz)
    shape = np.exp(-0.25 * (f / fmcw.clutter_spread_hz) ** 2)                         # sqrt of a Gaussian PSD
    white = rng.standard_normal((n, k)) + 1j * rng.standard_normal((n, k))
    fluct = np.fft.ifft(np.fft.fft(white, axis=0) * shape[:, None], axis=0)
    fluct /= np.sqrt(np.mean(np.abs(fluct) ** 2, axis=0))                              # unit power per point
    amps = static * (1 + 10 ** (fmcw.clutter_fluctuation_db / 20) * fluct)
    return np.broadcast_to(ranges, (n, k)), amps


def fmcw_iq(person: Person, draws: Draws, radar: Radar, rng: np.random.Generator | None = None,
            body: Body = Body(), fmcw: Fmcw = Fmcw()) -> np.ndarray:
    """Raw dechirped FMCW I/Q of the walk, complex128 (chirps, fmcw.samples_per_chirp): the input of the chain.

    One chirp per pulse: N = duration * PRF chirps from t = 0, after a pre-roll of the chirps the chain drops while
    its MTI settles (fmcw.chain.settle_columns * hop; the walk is simulated from before t = 0); each chirp is
    1 / PRF long and sweeps fmcw.bandwidth_hz about radar.carrier_hz. During chirp m every scatterer sits at
    R_k(t_m) with amplitude a_k g_k 10^(rcs_db / 20) (`scatterers`, the jitter of `_tracks`; a ~ R^-2 when
    radar.range_loss), and ldm.radar.chain.fmcw_beat_signal
    gives sum_k a_k exp(j 2 pi (f_b,k t + 2 R_k / lambda)): range R lands in range-FFT bin R / (c / 2B). Plus the
    clutter points (_clutter) and complex white noise of the fixed floor (Fmcw). No MTI here: the chain applies it.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    pre = fmcw.chain.settle_columns(radar.prf_hz) * fmcw.chain.hop     # chirps before t = 0 the chain drops
    n, chirp_s = radar.num_pulses + pre, 1.0 / radar.prf_hz
    ranges, amps = _tracks(person, draws, radar, body, rng, pre)
    i0, frac = _pulse_grid(n, radar)
    ranges = ranges[:, i0] * (1 - frac) + ranges[:, i0 + 1] * frac  # (P, N) at the chirps
    amps = (amps[:, i0] * (1 - frac) + amps[:, i0 + 1] * frac) * 10 ** (draws.rcs_db / 20)
    clutter_ranges, clutter_amps = _clutter(n, radar.prf_hz, fmcw, rng)
    iq = fmcw_beat_signal(np.concatenate([ranges.T, clutter_ranges], axis=1),
                          np.concatenate([amps.T, clutter_amps], axis=1), radar.carrier_hz, fmcw.bandwidth_hz,
                          chirp_s, fmcw.samples_per_chirp)
    noise_var = 1e-4 / 10 ** (fmcw.snr_10m_db / 10)                    # a 1 m^2 target at 10 m: amplitude 1e-2
    return iq + math.sqrt(noise_var / 2) * (rng.standard_normal(iq.shape) + 1j * rng.standard_normal(iq.shape))


def _cell_average(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(len(target), len(source)) weights that average evenly spaced source cells (centres `source`) over each
    target cell (centres `target`, evenly spaced): weight = overlap of the two cells / target cell width."""
    def edges(c):
        step = c[1] - c[0]
        return np.minimum(c - step / 2, c + step / 2), np.maximum(c - step / 2, c + step / 2)
    s_lo, s_hi = edges(source)
    t_lo, t_hi = edges(target)
    overlap = np.clip(np.minimum(t_hi[:, None], s_hi[None]) - np.maximum(t_lo[:, None], s_lo[None]), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def render_fmcw(iq: np.ndarray, radar: Radar, fmcw: Fmcw, size: int) -> np.ndarray:
    """(size, size) float32 dB image of raw I/Q through ldm.radar.chain.iq_spectrogram (fmcw.chain), its power
    |M|^2 averaged over the cells of the image grid (rows velocity_axis, columns frame_times), then
    10 log10 minus the max, clipped to [-radar.dynamic_range_db, 0]."""
    spec = iq_spectrogram(iq, fmcw.front_end(radar), fmcw.chain)
    centres = (np.arange(spec.magnitude.shape[1]) * fmcw.chain.hop + fmcw.chain.stft_length / 2) / radar.prf_hz
    power = spec.magnitude ** 2                                          # (V, T)
    image = (_cell_average(spec.velocities, velocity_axis(size, radar, fmcw)) @ power
             @ _cell_average(centres, frame_times(size, radar, fmcw)).T)   # (size, size)
    db = 10 * np.log10(image + 1e-30)
    return np.clip(db - db.max(), -radar.dynamic_range_db, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# STFT -> image (docs/microdoppler.md, section 8)
# ----------------------------------------------------------------------------------------------------------------
def _stft_length(size: int) -> int:
    """Window = FFT length = number of frames; 64x64 images are 2x2-pooled 128x128 ones."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    return 128 if size == 64 else size


def spectrogram_db(signal: np.ndarray, size: int, radar: Radar) -> np.ndarray:
    """(size, size) float32 image in dB relative to its maximum, clipped to [-dynamic_range_db, 0].

    Rows are radial velocity, approaching (positive Doppler) on top (see `velocity_axis`); columns are time
    (see `frame_times`). Hann window, frames evenly spaced over the signal; for size 64 the 128x128 power
    spectrogram is averaged over 2x2 blocks before taking dB.
    """
    n_fft = _stft_length(size)
    if len(signal) < n_fft:
        raise ValueError(f"a {size}x{size} image needs at least {n_fft} pulses, got {len(signal)}: raise the "
                         "duration or the PRF")
    starts = np.round(np.linspace(0, len(signal) - n_fft, n_fft)).astype(np.int64)
    frames = signal[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft)   # (frames, n_fft)
    power = np.abs(np.fft.fftshift(np.fft.fft(frames, axis=1), axes=1)) ** 2  # columns: -PRF/2 ... PRF/2 - df
    power = power.T[::-1]                                              # (velocity, time), approaching on top
    if size == 64:
        power = power.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    db = 10 * np.log10(power + 1e-30)
    return np.clip(db - db.max(), -radar.dynamic_range_db, 0.0).astype(np.float32)


def velocity_axis(size: int, radar: Radar = Radar(), fmcw: Fmcw | None = None) -> np.ndarray:
    """Radial velocity (m/s, positive = approaching) of each image row (size,), top row first: the classic STFT's
    bins over +-PRF lambda / 4, or with fmcw, size rows evenly over +-fmcw.chain.v_max (row i at
    v_max (1 - (2 i + 1) / size), the centre of its cell)."""
    if fmcw is not None:
        _stft_length(size)
        v_max = fmcw.chain.v_max
        return v_max * (1 - (2 * np.arange(size) + 1) / size)
    n_fft = _stft_length(size)
    step = 2 * radar.max_velocity_mps / n_fft
    v = (n_fft / 2 - 1 - np.arange(n_fft)) * step
    return v.reshape(64, 2).mean(axis=1) if size == 64 else v


def frame_times(size: int, radar: Radar = Radar(), fmcw: Fmcw | None = None) -> np.ndarray:
    """Centre time (s) of each image column (size,): the classic STFT's frame centres, or with fmcw, size evenly
    spaced cells spanning the chain's STFT frame centres (first to last, each cell one spacing wide)."""
    if fmcw is not None:
        _stft_length(size)
        chain = fmcw.chain
        frames = 1 + (radar.num_pulses - chain.stft_length) // chain.hop
        if frames < 2:
            raise ValueError(f"{radar.duration_s} s at PRF {radar.prf_hz:g} Hz give fewer than two "
                             f"{chain.stft_length}-chirp STFT frames")
        first = chain.stft_length / 2 / radar.prf_hz
        last = ((frames - 1) * chain.hop + chain.stft_length / 2) / radar.prf_hz
        step = (last - first + (last - first) / (frames - 1)) / size        # size cells over the frames' extent
        return first - (last - first) / (frames - 1) / 2 + (np.arange(size) + 0.5) * step
    n_fft = _stft_length(size)
    n = radar.num_pulses
    centres = (np.round(np.linspace(0, n - n_fft, n_fft)) + n_fft / 2) / radar.prf_hz
    return centres.reshape(64, 2).mean(axis=1) if size == 64 else centres


def simulate_spectrogram(person: Person, draws: Draws, radar: Radar = Radar(), size: int = 128,
                         rng: np.random.Generator | None = None, body: Body = Body(),
                         fmcw: Fmcw | None = None) -> np.ndarray:
    """One (size, size) float32 spectrogram in dB re its max, in [-radar.dynamic_range_db, 0]: the classic
    slow-time echo and STFT, or with fmcw, raw FMCW I/Q through ldm.radar.chain (render_fmcw).

    rng supplies the noise, clutter and amplitude jitter; default: numpy.random.default_rng(0).
    """
    _stft_length(size)
    if fmcw is not None:
        return render_fmcw(fmcw_iq(person, draws, radar, rng, body, fmcw), radar, fmcw, size)
    return spectrogram_db(echo(person, draws, radar, rng, body), size, radar)


def db_to_uint8(db: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """Map dB in [-dynamic_range_db, 0] linearly to 0..255 (the PNG encoding)."""
    return np.round((db + dynamic_range_db) / dynamic_range_db * 255).clip(0, 255).astype(np.uint8)

