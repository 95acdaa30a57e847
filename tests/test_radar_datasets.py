"""Real recordings as they are: the Glasgow header in Hz (and what a wrong one says), campaign folders with repeated
participant IDs, the Ayy activity and `- Copy` names, the automatic range gate, IDRad's contrast with a target in a
few range bins, windows free of the MTI's start-up transient, and splits that keep a recording's windows (or a
simulated session's walks) together. References are closed forms and scipy."""
import json
from pathlib import Path

import numpy as np
import pytest

from ldm.splits import make_split, split_indices
from ldm.radar import chain as rd
from ldm.radar import datasets as ds
from tests.test_radar import GLASGOW, C, moving_target, peak_velocity, run, write_glasgow_dat

SHORT = ["--window-s", "0.3"]                                # windows of 11 columns


def convert_glasgow(tmp_path, capsys, root, *extra):
    out = tmp_path / "out"
    status, err = run(["--format", "glasgow-dat", "--input", str(root), "--out", str(out), *SHORT, *extra], capsys)
    return status, err, out


# ----------------------------------------------------------------------------------------------------------------
# 1. The header: Hz, ms, samples, Hz; GHz/MHz only when the magnitude says so; every value checked
# ----------------------------------------------------------------------------------------------------------------
def test_header_in_hz_gives_the_glasgow_radar_and_records_the_units(tmp_path, capsys):
    iq = moving_target(1.2, 1.5, 6.5, **GLASGOW)
    write_glasgow_dat(tmp_path / "in" / "1P36A01R01.dat", iq)                              # 5800000000, 1, 64, 4e8
    write_glasgow_dat(tmp_path / "in" / "1P37A01R01.dat", iq, header=("5.8", "1", None, "400"))   # GHz and MHz
    status, err, out = convert_glasgow(tmp_path, capsys, tmp_path / "in")
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    units = {r["recording"]: r["radar"]["header_units"] for r in meta["recordings"]}
    assert units["1P36A01R01"] == {"carrier": "Hz", "sweep_time": "ms", "bandwidth": "Hz"}
    assert units["1P37A01R01"] == {"carrier": "GHz", "sweep_time": "ms", "bandwidth": "MHz"}
    for r in meta["recordings"]:                                # both read as the same radar
        assert (r["radar"]["carrier_hz"], r["radar"]["bandwidth_hz"], r["radar"]["prf_hz"]) == (5.8e9, 4e8, 1000)
        assert r["radar"]["range_gate_m"] == pytest.approx([10 * C / (2 * 4e8), 31 * C / (2 * 4e8)])
    assert meta["radar"]["carrier_hz"] == 5.8e9 and meta["radar"]["prf_hz"] == 1000.0
    assert meta["persons"] == ["in_P36", "in_P37"]                    # no numbered campaign folder: the file's folder
    found, step = peak_velocity(out, "in_P36/1P36A01R01_w0.npy")
    assert abs(found - 1.5) <= step


@pytest.mark.parametrize("header,words", [
    (("5.8e18", "1", None, "400000000"), "carrier 5.8e+18 Hz is outside 1-100 GHz"),
    (("5800000000", "1000", None, "400000000"), "sweep time 1000 ms"),
    (("5800000000", "1", "64.5", "400000000"), "64.5 samples per sweep is not an integer"),
    (("5800000000", "1", None, "0.4"), "bandwidth 0.4 Hz"),
])
def test_each_header_value_is_range_checked_in_one_line(tmp_path, capsys, header, words):
    path = tmp_path / "in" / "1P01A01R1.dat"
    write_glasgow_dat(path, moving_target(1.2, 1.0, 6.0, **GLASGOW), header=header)
    status, err, out = convert_glasgow(tmp_path, capsys, path)
    assert status == 2 and err.count("\n") == 1 and str(path) in err and words in err, err
    assert "(carrier, sweep time, samples per sweep, bandwidth) = (" in err and not out.exists()


def test_skip_bad_reports_each_file_with_its_own_reason(tmp_path, capsys):
    root = tmp_path / "in"
    write_glasgow_dat(root / "1P01A01R1.dat", moving_target(1.2, 1.0, 6.0, **GLASGOW))
    write_glasgow_dat(root / "1P02A01R1.dat", moving_target(1.2, 1.0, 6.0, **GLASGOW), header=("5.8e18", "1", None,
                                                                                            "400000000"))
    (root / "1P03A01R1.dat").write_text("5800000000\n1\n64\n400000000\n1+2i\n")   # not a whole sweep
    status, err, out = convert_glasgow(tmp_path, capsys, root, "--skip-bad")
    assert status == 0, err
    reasons = {Path(s["source"]).name: s["reason"] for s in json.loads((out / "metadata.json").read_text())["skipped"]}
    assert "outside 1-100 GHz" in reasons["1P02A01R1.dat"] and "whole number" in reasons["1P03A01R1.dat"]
    for name, reason in reasons.items():                                 # each reported on stderr, with its reason
        assert f"skipped {reason}" in err and name in reason


# ----------------------------------------------------------------------------------------------------------------
# 2-3. Campaigns and people, the Ayy activity, copies
# ----------------------------------------------------------------------------------------------------------------
def glasgow_tree(root: Path) -> None:
    """Two campaigns whose participant IDs repeat (P36 in both), one file whose leading digit and Ayy disagree
    (2P34A03R1: the owners' label script reads activity 3), and two copies."""
    walk = moving_target(1.2, 1.5, 6.5, **GLASGOW)
    write_glasgow_dat(root / "1 December 2017 Dataset" / "1P36A01R01.dat", walk)
    write_glasgow_dat(root / "1 December 2017 Dataset" / "2P34A03R1.dat", walk)
    write_glasgow_dat(root / "6 February 2019 NG Homes Dataset" / "1P36A01R1.dat", walk)
    write_glasgow_dat(root / "6 February 2019 NG Homes Dataset" / "1P08A01R1.dat", walk)
    (root / "6 February 2019 NG Homes Dataset" / "4P64A04R3 - Copy.dat").write_text("skipped by its name\n")
    (root / "6 February 2019 NG Homes Dataset" / "4P30A04R3 (2).dat").write_text("skipped by its name\n")


@pytest.mark.parametrize("depth", ["above", "campaign"])
def test_person_key_is_campaign_plus_participant_wherever_input_points(tmp_path, capsys, depth):
    root = tmp_path / "UoG" / "Dataset_848"
    glasgow_tree(root)
    source = root if depth == "above" else root / "6 February 2019 NG Homes Dataset"
    status, err, out = convert_glasgow(tmp_path, capsys, source)
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    expected = ["c1_P34", "c1_P36", "c6_P08", "c6_P36"] if depth == "above" else ["c6_P08", "c6_P36"]
    assert meta["persons"] == expected                                  # P36 of campaigns 1 and 6: two people
    assert set(meta["campaigns"]) == {k.split("_")[0] for k in expected}
    # both copies skipped with a warning that names them; nothing else is
    assert sorted(Path(s["source"]).name for s in meta["skipped"]) == ["4P30A04R3 (2).dat", "4P64A04R3 - Copy.dat"]
    assert "4P64A04R3 - Copy.dat" in err and "a copy of 4P64A04R3" in err and "4P30A04R3 (2).dat" in err


def test_people_are_printed_per_campaign(tmp_path, capsys):
    glasgow_tree(tmp_path / "in")
    status = ds.main(["--format", "glasgow-dat", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                      "--no-progress", *SHORT])
    printed = capsys.readouterr().out
    assert status == 0
    assert "campaign c1 (1 December 2017 Dataset): 2 people: c1_P34, c1_P36" in printed
    assert "campaign c6 (6 February 2019 NG Homes Dataset): 2 people: c6_P08, c6_P36" in printed


def test_activity_is_the_ayy_field(tmp_path, capsys):
    glasgow_tree(tmp_path / "in")
    status, err, out = convert_glasgow(tmp_path, capsys, tmp_path / "in", "--activity", "3")
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    assert [r["recording"] for r in meta["recordings"]] == ["2P34A03R1"] and meta["recordings"][0]["activity"] == 3


def test_two_campaign_folders_with_one_key_are_refused(tmp_path, capsys):
    walk = moving_target(1.2, 1.5, 6.5, **GLASGOW)
    write_glasgow_dat(tmp_path / "in" / "1 December 2017 Dataset" / "1P36A01R01.dat", walk)
    write_glasgow_dat(tmp_path / "in" / "1 March 2017 Dataset" / "1P36A01R02.dat", walk)
    status, err, out = convert_glasgow(tmp_path, capsys, tmp_path / "in")
    assert status == 2 and "refusing to merge" in err and "c1" in err and not out.exists()


def test_same_person_merges_keys_and_refuses_unknown_ones(tmp_path, capsys):
    glasgow_tree(tmp_path / "in")
    status, err, out = convert_glasgow(tmp_path, capsys, tmp_path / "in", "--same-person", "c1_P34=c6_P08")
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["persons"] == ["c1_P34", "c1_P36", "c6_P36"]
    assert (out / "c1_P34" / "1P08A01R1_w0.npy").exists()
    mapping = tmp_path / "same.txt"
    mapping.write_text("c1_P34=c6_P99\n")
    status, err, _ = convert_glasgow(tmp_path, capsys, tmp_path / "in", "--same-person", str(mapping), "--overwrite")
    assert status == 2 and "c6_P99" in err


# ----------------------------------------------------------------------------------------------------------------
# 4. The automatic range gate
# ----------------------------------------------------------------------------------------------------------------
def test_auto_range_gate_closed_form():
    energy = np.zeros(32)
    energy[[15, 25]] = [9.0, 1.0]                                        # 90% and 10%
    assert rd.auto_range_gate(energy, 0.9) == (15, 15)
    assert rd.auto_range_gate(energy, 0.95) == (15, 25)
    energy[0] = 1e6                                                      # bin 0 (DC, leakage) is never gated
    assert rd.auto_range_gate(energy, 0.9) == (15, 15)
    with pytest.raises(ValueError, match="no moving-target energy"):
        rd.auto_range_gate(np.zeros(8), 0.9)


def test_auto_range_gate_finds_the_walker_after_the_mti(tmp_path, capsys):
    """A walker 2 m out (bins 5-6 at 0.375 m per bin, outside the fixed gate 10-30) and a 30 dB stronger wall in
    bin 20: the MTI removes the wall, so the gate holds the walker's bins; metadata.json records them."""
    bin_m = C / (2 * GLASGOW["bandwidth"])
    t = np.arange(1200) / 1000.0
    ranges = np.stack([2.2 - 0.5 * t, np.full_like(t, 20 * bin_m)], axis=1)
    iq = rd.fmcw_beat_signal(ranges, np.array([1.0, 30.0]), 5.8e9, 4e8, 1e-3, 64)
    iq += 1e-4 * np.random.default_rng(0).standard_normal(iq.shape)
    write_glasgow_dat(tmp_path / "in" / "1P01A01R1.dat", iq)
    status, err, out = convert_glasgow(tmp_path, capsys, tmp_path / "in", "--range-gate", "auto")
    assert status == 0, err
    first, last = json.loads((out / "metadata.json").read_text())["recordings"][0]["radar"]["range_gate_bins"]
    walked = {int(np.floor(r / bin_m + 0.5)) for r in ranges[:, 0]}      # the bins the walker passes through
    assert first <= min(walked) and last >= max(walked) and last < 20 and last - first <= 6


# ----------------------------------------------------------------------------------------------------------------
# 5. IDRad: a person in a few range bins keeps their contrast
# ----------------------------------------------------------------------------------------------------------------
def test_idrad_contrast_of_a_target_in_a_few_range_bins(tmp_path, capsys):
    """Range-Doppler maps at -60 dB everywhere but 0 dB in 5 of 380 range bins at one Doppler bin: summing the
    linear power over range gives 10 log10((5 + 375e-6) / 380e-6) = 41.2 dB of contrast (the old mean over range of
    the dB values gave 5/380 of 60 dB = 0.79 dB)."""
    h5py = pytest.importorskip("h5py")
    frames, nfft, target = 20, 64, 40                                    # Doppler bin 40 after fftshift
    rd_maps = np.full((frames, 380, nfft), -60.0, dtype=np.float32)
    rd_maps[:, 100:105, target] = 0.0
    with h5py.File(tmp_path / "target1_001.hdf5", "w") as f:
        f["range_doppler"] = rd_maps
        f["microdoppler"] = rd_maps.sum(axis=1)                          # the authors' dB sum over range
    radar = ["--carrier-hz", "77e9", "--prf-hz", "5000", "--frame-rate-hz", "10", "--window-s", "2", "--v-max", "4.8"]
    status, err = run(["--format", "idrad", "--input", str(tmp_path / "target1_001.hdf5"), "--out",
                       str(tmp_path / "out"), *radar], capsys)
    assert status == 0, err
    image = np.load(tmp_path / "out" / "target1" / "target1_001_w0.npy")
    expected = 10 * np.log10((5 + 375e-6) / 380e-6)
    assert image.max() == 0 and np.median(image) == pytest.approx(-expected, abs=1e-3)
    # The authors' dB sums, with the contrast of their min-max scaling: span IDRAD_DB_SUM_SPAN = --dynamic-range.
    status, err = run(["--format", "idrad", "--input", str(tmp_path / "target1_001.hdf5"), "--out",
                       str(tmp_path / "sums"), "--idrad-dataset", "microdoppler", *radar], capsys)
    assert status == 0, err
    image = np.load(tmp_path / "sums" / "target1" / "target1_001_w0.npy")
    assert np.median(image) == pytest.approx(-5 * 60 * 50 / ds.IDRAD_DB_SUM_SPAN["microdoppler"], abs=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# 6. No start-up transient in any window
# ----------------------------------------------------------------------------------------------------------------
def test_no_window_carries_the_mti_start_up_transient(tmp_path, capsys):
    """A wall 60 dB above a walker at 1.5 m/s: from chirp 0 on, every window's brightest row is the walker's and
    the rows near 0 m/s stay dark. Started from rest (the Glasgow example), the same filter's first window is
    dominated by the wall switching on."""
    iq = moving_target(1.0, 1.5, 6.5, **GLASGOW)
    bin_m = C / (2 * GLASGOW["bandwidth"])
    iq = iq + rd.fmcw_beat_signal(np.full((len(iq), 1), 15 * bin_m), np.array([1000.0]), 5.8e9, 4e8, 1e-3, 64)
    write_glasgow_dat(tmp_path / "in" / "1P01A01R1.dat", iq)
    status, err, out = convert_glasgow(tmp_path, capsys, tmp_path / "in", "--hop-s", "0.1")
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    still = np.abs(np.array(meta["velocity_mps"])) < 0.3
    for k in range(meta["recordings"][0]["windows"]):
        found, step = peak_velocity(out, f"in_P01/1P01A01R1_w{k}.npy")
        image = np.load(out / "in_P01" / f"1P01A01R1_w{k}.npy")
        assert abs(found - 1.5) <= step and image[still].max() < -20, k
    gate = rd.range_fft(iq)[:, 10:31]
    from_rest = rd.mti_highpass(gate, steady=False)
    assert np.abs(from_rest[:300]).max() > 100 * np.abs(rd.mti_highpass(gate)[:300]).max()   # the transient


# ----------------------------------------------------------------------------------------------------------------
# 7. Splits keep a recording's windows together, without a regex
# ----------------------------------------------------------------------------------------------------------------
def test_converted_windows_of_one_recording_stay_on_one_side(tmp_path, capsys):
    root = tmp_path / "in" / "1 December 2017 Dataset"
    for r in range(1, 5):
        write_glasgow_dat(root / f"1P01A01R{r}.dat", moving_target(1.5, 1.5, 6.5, **GLASGOW, seed=r))
    status, err, out = convert_glasgow(tmp_path, capsys, tmp_path / "in", "--hop-s", "0.1")
    assert status == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["recording_of"]["c1_P01/1P01A01R2_w3"] == "c1_P01/1P01A01R2"
    split = make_split(out, test_fraction=0.25, val_fraction=0.0, seed=0)
    assert split["grouped_by"] == "metadata.json recording_of"
    for part in ("train", "test"):
        others = {n.split("_w")[0] for p in ("train", "val", "test") if p != part for n in split[p]}
        assert not {n.split("_w")[0] for n in split[part]} & others     # no recording on two sides
    assert split["test"] and split["train"]


def test_split_groups_follow_recording_of_closed_form(tmp_path):
    """Eight files of one user in four recordings of two: every recording lands whole on one side."""
    files = [tmp_path / "u" / f"{i}.npy" for i in range(8)]
    groups = [f"rec{i // 2}" for i in range(8)]
    parts = split_indices(files, [0] * 8, 0.0, 0.25, seed=3, group_of=groups)
    assert len(parts["test"]) == 2 and groups[parts["test"][0]] == groups[parts["test"][1]]
    # the same through make_split and a metadata.json
    (tmp_path / "u").mkdir()
    for f in files:
        np.save(f, np.zeros((4, 4), np.float32))
    (tmp_path / "metadata.json").write_text(json.dumps({"recording_of": {f"u/{i}": g for i, g in enumerate(groups)}}))
    split = make_split(tmp_path, test_fraction=0.25, val_fraction=0.0, seed=3)
    assert len(split["test"]) == 2 and len({groups[int(Path(n).stem)] for n in split["test"]}) == 1


def test_simulated_sessions_are_recordings(tmp_path):
    """The realistic profile's sample i of a person is in session i % 8, and metadata.json says so."""
    from ldm.radar import simulator as md
    meta = md.write_dataset(tmp_path / "sim", users=1, per_user=2, size=64, seed=0, profile="realistic",
                            progress=False)
    assert meta["recording_of"] == {"user_00/0000": "user_00/session_0", "user_00/0001": "user_00/session_1"}
    assert [s["session"] for s in meta["samples"]] == [0, 1]
