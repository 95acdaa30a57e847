"""ldm.radar.chain and ldm.radar.datasets against closed forms and scipy: the Butterworth MTI, the beat signal, the
chain (against a scipy rendering of the Glasgow example processing), and every converter: a target moving at v m/s
lands on the v row. The real recordings' details (header units, campaigns, copies, gate, IDRad contrast, start-up
transient, grouped splits) are in tests/test_radar_datasets.py."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ldm.radar import chain as rd
from ldm.radar import datasets as ds
from ldm.data import SpectrogramFolder
from ldm.radar.physics import simulator_metadata, spectrogram_axes

C = rd.SPEED_OF_LIGHT


# ----------------------------------------------------------------------------------------------------------------
# Butterworth MTI
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order,cutoff", [(4, 0.0075), (1, 0.3), (2, 0.5), (5, 0.1), (8, 0.02)])
def test_butterworth_coefficients_match_scipy(order, cutoff):
    signal = pytest.importorskip("scipy.signal")
    b, a = rd.butterworth_highpass(order, cutoff)
    ref_b, ref_a = signal.butter(order, cutoff, "high")
    np.testing.assert_allclose(b, ref_b, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(a, ref_a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order,cutoff", [(4, 0.0075), (3, 0.2)])
def test_butterworth_response_is_the_closed_form(order, cutoff):
    """|H(e^jw)|^2 = 1 / (1 + (tan(pi cutoff / 2) / tan(w / 2))^(2 order)) for the bilinear-transformed design."""
    b, a = rd.butterworth_highpass(order, cutoff)
    w = np.pi * np.array([cutoff / 4, cutoff / 2, cutoff, 2 * cutoff, 0.5, 0.9])
    z = np.exp(-1j * w)
    h = np.polyval(b[::-1], z) / np.polyval(a[::-1], z)             # sum_i b_i z^-i / sum_i a_i z^-i
    expected = 1 / (1 + (np.tan(np.pi * cutoff / 2) / np.tan(w / 2)) ** (2 * order))
    np.testing.assert_allclose(np.abs(h) ** 2, expected, rtol=1e-6)     # direct form near z = 1 loses digits


def test_mti_filter_matches_scipy_lfilter_on_complex_input():
    """From rest: scipy's lfilter; in the steady state of the first sample: lfilter with zi = lfilter_zi * x[0]."""
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 700)) + 1j * rng.standard_normal((5, 700)) + 3.0   # (range bins, chirps)
    b, a = signal.butter(4, 0.0075, "high")
    np.testing.assert_allclose(rd.mti_highpass(x, axis=1, steady=False), signal.lfilter(b, a, x, axis=1), atol=1e-8)
    zi = signal.lfilter_zi(b, a)[None, :] * x[:, :1]                         # (range bins, order)
    reference = signal.lfilter(b, a, x, axis=1, zi=zi)[0]
    np.testing.assert_allclose(rd.mti_highpass(x, axis=1), reference, atol=1e-7)


def test_mti_steady_state_is_the_frequency_response():
    """After the transient, a tone exp(j w n) leaves the filter as H(e^jw) exp(j w n); a constant is removed."""
    b, a = rd.butterworth_highpass(4, 0.05)
    n = np.arange(4000)
    for w in (0.0, 0.02 * np.pi, 0.3 * np.pi):
        y = rd.mti_highpass(np.exp(1j * w * n), 4, 0.05, steady=False)
        z = np.exp(-1j * w)
        h = np.polyval(b[::-1], z) / np.polyval(a[::-1], z)
        np.testing.assert_allclose(y[-500:], h * np.exp(1j * w * n[-500:]), atol=1e-9)


def test_bad_butterworth_arguments_are_refused():
    with pytest.raises(ValueError, match="cutoff"):
        rd.butterworth_highpass(4, 1.0)
    with pytest.raises(ValueError, match="order"):
        rd.butterworth_highpass(0, 0.1)


# ----------------------------------------------------------------------------------------------------------------
# Beat signal
# ----------------------------------------------------------------------------------------------------------------
def test_beat_signal_lands_on_its_range_bin_with_the_two_way_phase():
    """A scatterer on range bin b (R = b c / (2 B)) gives range-FFT value N a (-1)^b exp(j 4 pi R / lambda) there
    (fast time runs from mid-chirp) and nothing in the other bins."""
    fc, bw, tc, n = 24e9, 250e6, 1e-4, 64
    dr = C / (2 * bw)
    bins = np.array([[12], [12], [13]])
    ranges = bins * dr                                                  # (3 chirps, 1 scatterer)
    s = rd.fmcw_beat_signal(ranges, np.array([0.5]), fc, bw, tc, n)
    spectrum = np.fft.fft(s, axis=1)
    for m, b in enumerate(bins[:, 0]):
        expected = n * 0.5 * (-1) ** b * np.exp(4j * np.pi * ranges[m, 0] / (C / fc))
        np.testing.assert_allclose(spectrum[m, b], expected, rtol=1e-9)
        others = np.delete(spectrum[m], b)
        assert np.abs(others).max() < 1e-9 * n


def test_beat_signal_refuses_mismatched_amplitudes():
    with pytest.raises(ValueError, match="amplitudes"):
        rd.fmcw_beat_signal(np.zeros((4, 2)), np.ones(3), 5.8e9, 4e8, 1e-3, 16)


# ----------------------------------------------------------------------------------------------------------------
# Recordings used by the converter tests
# ----------------------------------------------------------------------------------------------------------------
def moving_target(seconds, velocity, start_m, prf, samples, carrier, bandwidth, chirp_s, seed=0):
    """Dechirped I/Q of a point target approaching at `velocity` m/s plus a 10x stronger static return and noise."""
    t = np.arange(int(round(seconds * prf))) / prf
    ranges = np.stack([start_m - velocity * t, np.full_like(t, 5.2)], axis=1)
    iq = rd.fmcw_beat_signal(ranges, np.array([1.0, 10.0]), carrier, bandwidth, chirp_s, samples)
    rng = np.random.default_rng(seed)
    return iq + 0.01 * (rng.standard_normal(iq.shape) + 1j * rng.standard_normal(iq.shape))


def write_glasgow_dat(path: Path, iq: np.ndarray, header=("5800000000", "1", None, "400000000")):
    """The UoG .dat text layout as the files hold it: carrier in Hz, sweep time in ms, samples per sweep, bandwidth
    in Hz (1P36A01R01.dat opens 5800000000, 1, 128, 400000000), then one MATLAB-style complex sample per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"{z.real:.9g}{z.imag:+.9g}i" for z in iq.reshape(-1))
    carrier, sweep, samples, bandwidth = header
    path.write_text(f"{carrier}\n{sweep}\n{samples or iq.shape[1]}\n{bandwidth}\n{body}\n")


GLASGOW = dict(prf=1000.0, samples=64, carrier=5.8e9, bandwidth=400e6, chirp_s=1e-3)


def peak_velocity(out: Path, npy: str) -> tuple[float, float]:
    """The velocity of the row holding the most energy of one written window, and the row spacing."""
    meta = json.loads((out / "metadata.json").read_text())
    image = np.load(out / npy)
    assert image.dtype == np.float32 and image.shape == (meta["height"], meta["width"])
    assert image.max() == 0 and image.min() >= -meta["radar"]["dynamic_range_db"]
    row = np.argmax((10 ** (image / 10)).sum(axis=1))
    return meta["velocity_mps"][row], meta["velocity_step_mps"]


def settle_columns(hop: int, floor_db: float = 50.0) -> int:
    """Columns the chain drops at the start of a recording: those whose STFT frames (every `hop` chirps) start
    before the step response of scipy's butter(4, 0.0075, 'high') from rest stays below -floor_db."""
    signal = pytest.importorskip("scipy.signal")
    b, a = signal.butter(4, 0.0075, "high")
    chirps = np.flatnonzero(np.abs(signal.lfilter(b, a, np.ones(8000))) > 10 ** (-floor_db / 20))[-1] + 1
    return int(np.ceil(chirps / hop))


def run(argv, capsys):
    """python -m ldm.radar argv -> (exit status, stderr)."""
    status = ds.main(argv + ["--no-progress"])
    return status, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Converters: every one puts a target moving at v on the v row
# ----------------------------------------------------------------------------------------------------------------
def test_glasgow_dat_rows_windows_people_and_metadata(tmp_path, capsys):
    root = tmp_path / "glasgow"
    # Campaign folders restart participant IDs: P36 of campaign 1 and P36 of campaign 2 are two people.
    write_glasgow_dat(root / "1 December 2017 Dataset" / "1P36A01R01.dat",
                      moving_target(2.0, 1.5, 6.5, **GLASGOW))                # approaching at 1.5 m/s
    write_glasgow_dat(root / "2 March 2017 Dataset" / "1P36A01R2.dat",
                      moving_target(2.0, -2.0, 6.0, **GLASGOW, seed=1))      # receding at 2 m/s
    write_glasgow_dat(root / "2 March 2017 Dataset" / "2P36A02R01.dat",     # sitting down: filtered out
                      moving_target(2.0, 0.5, 6.0, **GLASGOW, seed=2))
    out = tmp_path / "out"
    status, err = run(["--format", "glasgow-dat", "--input", str(root), "--out", str(out), "--activity", "1",
                       "--window-s", "0.5", "--hop-s", "0.2"], capsys)
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    # 2 s at 1 kHz, STFT 200 / hop 10, the first `skip` columns dropped while the MTI settles: 1 + (2000 - 10 skip
    # - 200) // 10 columns; a 0.5 s window holds the frames inside it, 1 + floor((0.5 - 0.2) / 0.01) = 31 columns;
    # hop 20 columns.
    skip = settle_columns(10)
    columns = 1 + (2000 - 10 * skip - 200) // 10
    windows = 1 + (columns - 31) // 20
    assert meta["width"] == 31 and meta["seconds_per_column"] == pytest.approx(0.01)
    assert meta["recordings"][0]["columns"] == columns and meta["recordings"][0]["radar"]["dropped_start_s"] == \
        pytest.approx(skip * 0.01)
    assert sorted(p.name for p in (out / "c1_P36").iterdir()) == [f"1P36A01R01_w{k}.npy" for k in range(windows)]
    assert sorted(p.name for p in (out / "c2_P36").iterdir()) == [f"1P36A01R2_w{k}.npy" for k in range(windows)]
    assert meta["persons"] == ["c1_P36", "c2_P36"] and meta["windows"] == 2 * windows
    # Axes: dv = PRF lambda / (2 nfft) with nfft = 4 x 200; rows j dv for |j dv| <= 6, top row most positive.
    step = 1000.0 * (C / 5.8e9) / (2 * 800)
    v = np.array(meta["velocity_mps"])
    assert meta["velocity_step_mps"] == pytest.approx(step)
    np.testing.assert_allclose(v, np.arange(int(6 / step), -int(6 / step) - 1, -1) * step)
    assert meta["height"] == len(v) and meta["radar"]["carrier_hz"] == 5.8e9 and meta["radar"]["prf_hz"] == 1000
    for npy, velocity in (("c1_P36/1P36A01R01_w1.npy", 1.5), ("c2_P36/1P36A01R2_w2.npy", -2.0)):
        found, bin_width = peak_velocity(out, npy)
        assert abs(found - velocity) <= bin_width, (npy, found)
    # the physics checks read the axes from metadata.json, or take v_max_mps and duration_s as --v-max, --duration
    for axes in (spectrogram_axes(simulator_metadata(out), meta["height"], meta["width"]),
                 spectrogram_axes(None, meta["height"], meta["width"], meta["v_max_mps"], meta["duration_s"])):
        rows, frame_rate = axes
        np.testing.assert_allclose(rows, v, atol=1e-9)
        assert frame_rate == pytest.approx(1 / meta["seconds_per_column"])
    data = SpectrogramFolder(out, npy_scale="db", dynamic_range_db=meta["radar"]["dynamic_range_db"])
    x, label = data[0]
    assert data.classes == ["c1_P36", "c2_P36"] and x.shape == (1, meta["height"], 31)
    assert x.min() >= -1 and x.max() == 1


def uog_example_spectrogram(iq, length, overlap, pad, first=10, last=30, steady=False):
    """The Glasgow example processing, written with scipy: range FFT (positive bins), butter(4, 0.0075, 'high')
    + lfilter over slow time (from rest, as the example does; steady: from lfilter_zi times the first chirp, as
    ldm.radar.chain does), spectrogram(length, round(length overlap), pad length) with a symmetric Hamming
    window, fftshift, |.| summed over the range bins, flipud: row r at slow-time frequency (N/2 - 1 - r) PRF / N."""
    signal = pytest.importorskip("scipy.signal")
    profiles = np.fft.fft(iq, axis=1)[:, :iq.shape[1] // 2]
    b, a = signal.butter(4, 0.0075, "high")
    x = profiles[:, first:last + 1]
    zi = signal.lfilter_zi(b, a)[:, None] * x[:1] if steady else None
    gated = signal.lfilter(b, a, x, axis=0, zi=zi)[0] if steady else signal.lfilter(b, a, x, axis=0)
    total = 0
    for k in range(gated.shape[1]):
        _, _, s = signal.spectrogram(gated[:, k], window=signal.windows.hamming(length, sym=True), nperseg=length,
                                     noverlap=round(length * overlap), nfft=pad * length, detrend=False,
                                     return_onesided=False, mode="complex")
        total = total + np.abs(np.fft.fftshift(s, axes=0))
    return np.flipud(total)


def test_chain_matches_a_scipy_rendering_of_the_glasgow_example():
    iq = moving_target(1.5, 1.5, 6.5, **GLASGOW)
    radar = rd.FmcwRadar(5.8e9, 400e6, 1e-3, 1000.0)
    ours = rd.iq_spectrogram(iq, radar)
    reference = uog_example_spectrogram(iq, 200, 0.95, 4, steady=True)     # (800, frames), rows ascending velocity
    j = np.round(ours.velocities / (ours.velocities[0] - ours.velocities[1])).astype(int)
    reference = reference[j + 800 // 2 - 1]                                 # row r holds v = (r - N/2 + 1) dv
    reference = reference[:, settle_columns(10):]                          # the frames before the MTI settled
    np.testing.assert_allclose(rd.to_db(ours.magnitude, 50), rd.to_db(reference, 50), atol=1e-6)


def test_glasgow_mat_rows(tmp_path, capsys):
    signal = pytest.importorskip("scipy.signal")
    from scipy.io import savemat
    # The data set's precomputed spectrograms: 256-chirp window, 95% overlap, 4x padding -> 1024 Doppler rows.
    spectrogram = uog_example_spectrogram(moving_target(2.0, -1.0, 5.0, **GLASGOW), 256, 0.95, 4)
    folder = tmp_path / "3 June 2017 Dataset"
    folder.mkdir()
    savemat(folder / "1P07A01R1.dat _MD_prm_TWL_256_OF_95_PF_4.mat",
            {"Data_spec_MTI2": spectrogram * np.exp(0.3j)})                 # stored complex, as the release does
    out = tmp_path / "out"
    status, err = run(["--format", "glasgow-mat", "--input", str(tmp_path), "--out", str(out), "--window-s", "0.5"],
                      capsys)
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    # 1 + (2000 - 256) // 13 = 135 columns, 13 ms apart; 0.5 s windows hold 1 + floor((0.5 - 0.256) / 0.013) = 19.
    assert meta["seconds_per_column"] == pytest.approx(0.013) and meta["width"] == 19
    assert meta["velocity_step_mps"] == pytest.approx(1000.0 * (C / 5.8e9) / (2 * 1024))
    # The files' MTI started from rest: columns starting before its step response fell below -50 dB are dropped.
    b, a = signal.butter(4, 0.0075, "high")
    settle_chirps = np.flatnonzero(np.abs(signal.lfilter(b, a, np.ones(6000))) > 10 ** (-50 / 20))[-1] + 1
    dropped = int(np.ceil(settle_chirps / 13))
    assert meta["recordings"][0]["radar"]["dropped_start_s"] == pytest.approx(dropped * 0.013)
    assert meta["recordings"][0]["columns"] == 135 - dropped
    assert len(list((out / "c3_P07").iterdir())) == 1 + (135 - dropped - 19) // 38
    found, bin_width = peak_velocity(out, "c3_P07/1P07A01R1_w0.npy")
    assert abs(found - -1.0) <= bin_width


def idrad_range_doppler(frames, velocity, prf, carrier, chirps=256, range_bins=40, target_bins=(12, 13, 14)):
    """IDRad's per-frame range-Doppler maps in dB (frames, range bins, Doppler bins), Doppler fft-shifted: a target at
    `velocity` in a few range bins (a Hann-windowed 256-point Doppler FFT of each frame's chirps), noise elsewhere."""
    rng = np.random.default_rng(0)
    out = np.empty((frames, range_bins, chirps))
    for f in range(frames):
        t = f * 0.1 + np.arange(chirps) / prf
        slow = np.zeros((range_bins, chirps), dtype=complex)
        slow[list(target_bins)] = np.exp(4j * np.pi * (3.0 - velocity * t) / (C / carrier))   # phase +4 pi R / lambda
        slow = slow + 1e-3 * (rng.standard_normal(slow.shape) + 1j * rng.standard_normal(slow.shape))
        spectrum = np.fft.fftshift(np.fft.fft(slow * np.hanning(chirps), axis=1), axes=1)
        out[f] = 20 * np.log10(np.abs(spectrum))
    return out


def test_idrad_rows(tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    folder = tmp_path / "idrad" / "train"
    folder.mkdir(parents=True)
    with h5py.File(folder / "target3_001.hdf5", "w") as f:
        f["range_doppler"] = idrad_range_doppler(40, 1.3, prf=5000.0, carrier=77e9).astype(np.float32)
    out = tmp_path / "out"
    status, err = run(["--format", "idrad", "--input", str(tmp_path / "idrad"), "--out", str(out), "--window-s", "2",
                       "--carrier-hz", "77e9", "--prf-hz", "5000", "--frame-rate-hz", "10", "--v-max", "4"], capsys)
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["width"] == 20 and meta["seconds_per_column"] == pytest.approx(0.1)
    assert sorted(p.name for p in (out / "target3").iterdir()) == ["train-target3_001_w0.npy",
                                                                   "train-target3_001_w1.npy"]
    found, bin_width = peak_velocity(out, "target3/train-target3_001_w1.npy")
    assert abs(found - 1.3) <= bin_width


def test_iq_npy_rows_and_reverse_velocity(tmp_path, capsys):
    params = dict(prf=2000.0, samples=64, carrier=24e9, bandwidth=250e6, chirp_s=1e-4)
    iq = moving_target(1.2, 1.0, 9.0, **params)
    (tmp_path / "in" / "alice").mkdir(parents=True)
    (tmp_path / "in" / "bob").mkdir(parents=True)
    np.save(tmp_path / "in" / "alice" / "walk1.npy", iq.astype(np.complex64))
    np.save(tmp_path / "in" / "bob" / "walk1.npy", np.conj(iq))   # the other phase convention
    radar = ["--carrier-hz", "24e9", "--bandwidth-hz", "250e6", "--chirp-s", "1e-4", "--prf-hz", "2000",
             "--window-s", "0.5"]
    out = tmp_path / "out"
    status, err = run(["--format", "iq-npy", "--input", str(tmp_path / "in" / "alice"), "--out", str(out)] + radar,
                      capsys)
    assert status == 0, err
    found, bin_width = peak_velocity(out, "alice/walk1_w0.npy")
    assert abs(found - 1.0) <= bin_width
    # 2400 chirps, STFT 200 / hop 10: 221 columns; 0.5 s windows: 1 + floor((0.5 - 0.1) / 0.005) = 81 columns.
    assert json.loads((out / "metadata.json").read_text())["width"] == 81
    mirrored = tmp_path / "mirrored"
    status, err = run(["--format", "iq-npy", "--input", str(tmp_path / "in" / "bob" / "walk1.npy"), "--out",
                       str(mirrored), "--reverse-velocity"] + radar, capsys)
    assert status == 0, err
    np.testing.assert_allclose(np.load(mirrored / "bob" / "walk1_w0.npy"), np.load(out / "alice" / "walk1_w0.npy"),
                               atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Errors: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------------
def test_bad_glasgow_files_name_the_file_and_line(tmp_path, capsys):
    good = moving_target(1.0, 1.0, 6.0, **GLASGOW)
    write_glasgow_dat(tmp_path / "in" / "1P01A01R1.dat", good)
    bad = tmp_path / "in" / "1P02A01R1.dat"
    bad.write_text("5800000000\n1\n")                                       # the header stops after two lines
    out = tmp_path / "out"
    status, err = run(["--format", "glasgow-dat", "--input", str(tmp_path / "in"), "--out", str(out)], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert str(bad) in err and "line 3" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["in"]   # no output, no temporary folder
    lines = ["5800000000", "1", "8", "400000000"] + ["1+2i", "-3.5-0.25j"] * 8
    lines[9] = "1+2k"
    bad.write_text("\n".join(lines))
    status, err = run(["--format", "glasgow-dat", "--input", str(bad), "--out", str(out)], capsys)
    assert status == 2 and str(bad) in err and "line 10" in err and "'1+2k'" in err, err
    # --skip-bad converts the good file and lists the bad one.
    status, err = run(["--format", "glasgow-dat", "--input", str(tmp_path / "in"), "--out", str(out), "--skip-bad",
                       "--window-s", "0.3"], capsys)
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["windows"] == 1 and [s["source"] for s in meta["skipped"]] == [str(bad)]


@pytest.mark.parametrize("fmt,module,name", [("glasgow-mat", "scipy", "1P01A01R1.dat_MD_x.mat"),
                                             ("idrad", "h5py", "target1_001.hdf5")])
def test_missing_extra_is_a_one_line_error(tmp_path, capsys, monkeypatch, fmt, module, name):
    for key in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, key, None)                        # import fails as if not installed
    monkeypatch.setitem(sys.modules, module, None)
    (tmp_path / name).write_bytes(b"\0")
    extra = ["--carrier-hz", "77e9", "--prf-hz", "5000", "--frame-rate-hz", "10"] if fmt == "idrad" else []
    status, err = run(["--format", fmt, "--input", str(tmp_path), "--out", str(tmp_path / "out")] + extra, capsys)
    assert status == 2 and err.count("\n") == 1
    assert f"needs {module}: pip install .[radar]" in err and "ldm-reference[radar]" in err


def test_options_a_format_does_not_use_or_needs_are_refused(tmp_path, capsys):
    (tmp_path / "target1_001.hdf5").write_bytes(b"\0")
    status, err = run(["--format", "glasgow-dat", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--carrier-hz", "5e9"], capsys)
    assert status == 2 and "--carrier-hz does not apply to --format glasgow-dat" in err
    status, err = run(["--format", "idrad", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--carrier-hz", "77e9", "--prf-hz", "5000"], capsys)
    assert status == 2 and "needs --frame-rate-hz" in err
    with pytest.raises(SystemExit) as exit_info:                             # parse-time range check
        ds.main(["--format", "iq-npy", "--mti-cutoff", "1.5"])
    assert exit_info.value.code == 2
