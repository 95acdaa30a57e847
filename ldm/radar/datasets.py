"""The converter of public radar data sets into a training folder (docs/radar.md); the readers are ldm.radar.readers:

    python -m ldm.radar --format FORMAT --input PATH --out DIR

Formats: glasgow-dat (raw University of Glasgow .dat: header + I/Q), glasgow-mat (their *_MD_*.mat spectrograms),
idrad (IDRad .hdf5 range-Doppler maps or Doppler profiles), iq-npy (a complex (chirps, samples) .npy plus the
radar as options). Raw I/Q goes through ldm.radar.chain; scipy and h5py, for the .mat and .hdf5 readers only, come
with the `radar` extra.

Output folder:
    DIR/<person>/<recording>_w<k>.npy   float32 (rows = velocity, top = most positive; columns = time) dB re the
                                        window's max, in [-dynamic_range, 0]: ldm.data reads it with npy_scale="db"
    DIR/metadata.json                   the axes (velocity_mps per row, seconds_per_column, ...), the radar and
                                        the processing options, every source file with its window count, range
                                        gate and header units, and "recording_of": each window's recording, which
                                        ldm.splits.make_split uses to keep a recording's windows on one side

Glasgow people. Participant IDs restart per campaign, so a person is <campaign>_P<xx>, the campaign being the
folder that holds the file ("1 December 2017 Dataset" -> c1), wherever --input points; --same-person merges keys
that are one person. The activity is the name's Ayy field, as the owners' label script reads it.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ldm.cli import option
from ldm.radar.chain import (RANGE_GATES, WINDOWS, Chain, FmcwRadar, Spectrogram, doppler_spectrogram, iq_spectrogram,
                             settle_seconds, stft_hop, to_db, window_columns, window_starts)
from ldm.radar.readers import (COPY_NAME, GLASGOW_ACTIVITIES, GLASGOW_CARRIER_HZ, GLASGOW_MAT_NAME, GLASGOW_MAT_STFT,
                               GLASGOW_NAME, GLASGOW_PRF_HZ, IDRAD_DB_SUM_SPAN, read_glasgow_dat, read_glasgow_mat,
                               read_idrad, read_iq_npy)

FORMATS = ("glasgow-dat", "glasgow-mat", "idrad", "iq-npy")
FORMAT_TAG = "ldm.radar v1"


# ----------------------------------------------------------------------------------------------------------------
# The converter's options
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ConvertConfig:
    format: str | None = option(None, "glasgow-dat: UoG raw .dat; glasgow-mat: UoG *_MD_*.mat spectrograms; idrad: "
                                      "IDRad .hdf5; iq-npy: complex (chirps, samples) .npy", choices=FORMATS)
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
    range_gate: str = option(Chain.range_gate, "raw: fixed (bins --range-first..--range-last) or auto (per "
                                               "recording, the narrowest run of range bins holding --gate-share "
                                               "of the moving-target energy after the MTI; the bins chosen go to "
                                               "metadata.json)", choices=RANGE_GATES)
    range_first: int = option(Chain.range_first, "raw: first range-FFT bin of the fixed range gate (bin b is range "
                                                 "b c / (2 bandwidth))", at_least=0)
    range_last: int = option(Chain.range_last, "raw: last range-FFT bin of the fixed range gate (inclusive)",
                             at_least=0)
    gate_share: float = option(Chain.gate_share, "raw, --range-gate auto: share of the moving-target energy the "
                                                 "gate holds", above=0, at_most=1)
    mti_order: int = option(Chain.mti_order, "raw: order of the Butterworth high-pass MTI over slow time (0: none); "
                                             "it starts in its steady state, so no window carries a start-up "
                                             "transient", at_least=0)
    settle_db: float = option(Chain.settle_db, "drop each recording's first columns, whose STFT frames start before "
                                               "the MTI settled to -this dB (0.63 s at 50 dB and 1 kHz); 0 keeps "
                                               "them (glasgow-mat: they hold the files' from-rest MTI transient)",
                              at_least=0)
    mti_cutoff: float = option(Chain.mti_cutoff, "MTI cutoff as a fraction of the Nyquist frequency PRF / 2 "
                                                 "(glasgow-mat: the cutoff the files were made with, to drop their "
                                                 "start-up transient)", above=0, below=1)
    stft_window: str = option(Chain.stft_window, "raw: STFT window", choices=WINDOWS)
    stft_length: int = option(Chain.stft_length, "raw: STFT window length in chirps (glasgow-mat: only for files "
                                                 "whose names lack _TWL_<length>_OF_<percent>_PF_<pad>)", at_least=2)
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
    activity: str | None = option(None, "glasgow-*: keep these activities only, a comma list of the Ayy field of "
                                        "the name KPxxAyyRz, as the owners' label script reads it (1 walking, 2 "
                                        "sitting down, 3 standing up, 4 picking up an object, 5 drinking, 6 "
                                        "falling); default: all")
    same_person: str | None = option(None, "glasgow-*: person keys that are one person, merged into the first: "
                                           "'c5_P08=c6_P08,c3_P31=c6_P31', or a text file with one KEY=KEY per line")
    mat_variable: str = option("Data_spec_MTI2", "glasgow-mat: the matrix variable in each file")
    idrad_dataset: str = option("range_doppler", "idrad: range_doppler (frames, range, Doppler) dB maps, summed "
                                                 "over range in linear power and then taken to dB (default); or the "
                                                 "authors' dB-summed profiles microdoppler / "
                                                 "microdoppler_thresholded, shown with the contrast of their "
                                                 "min-max scaling")
    skip_bad: bool = option(False, "skip files that cannot be read or processed (each reported with its reason, and "
                                   "listed in metadata.json) instead of stopping")
    overwrite: bool = option(False, "replace an earlier ldm.radar output in --out")
    progress: bool = option(True, "show a progress bar over files")


# The radar options each format reads; any other one given is an error rather than silently ignored.
RADAR_OPTIONS = {"glasgow-dat": (), "glasgow-mat": ("carrier_hz", "prf_hz"),
                 "idrad": ("carrier_hz", "prf_hz", "frame_rate_hz"),
                 "iq-npy": ("carrier_hz", "bandwidth_hz", "chirp_s", "prf_hz")}
REQUIRED_OPTIONS = {"glasgow-dat": (), "glasgow-mat": (), "idrad": ("carrier_hz", "prf_hz", "frame_rate_hz"),
                    "iq-npy": ("carrier_hz", "bandwidth_hz", "chirp_s")}
SUFFIXES = {"glasgow-dat": (".dat",), "glasgow-mat": (".mat",), "idrad": (".hdf5", ".h5"), "iq-npy": (".npy",)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def chain_of(cfg: ConvertConfig) -> Chain:
    """The Chain of the converter's options."""
    return Chain(**{f.name: getattr(cfg, f.name) for f in fields(Chain)})


# ----------------------------------------------------------------------------------------------------------------
# Files -> recordings, people and campaigns
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Recording:
    """One source file and where its windows go: OUT/<person>/<name>_w<k>.npy."""
    source: Path
    person: str
    name: str
    campaign: str = ""          # Glasgow: c<N>, from the folder named in campaign_folder
    campaign_folder: str = ""
    activity: int | None = None


def campaign_of(path: Path) -> tuple[str, str]:
    """The Glasgow campaign of a file: (key, folder). The nearest folder above the file whose name starts with a
    number ("1 December 2017 Dataset" -> c1, "6 February 2019 NG Homes Dataset" -> c6), wherever --input points;
    without one, the file's own folder, its name made safe ("walks" -> walks)."""
    for folder in path.resolve().parents:
        number = re.match(r"(\d+)(\D|$)", folder.name)
        if number:
            return f"c{int(number.group(1))}", str(folder)
    folder = path.resolve().parent
    return re.sub(r"[^A-Za-z0-9]+", "-", folder.name).strip("-") or "c0", str(folder)


def glasgow_code(path: Path, fmt: str) -> str:
    """The name part KPxxAyyRz of a Glasgow file (1P36A01R01.dat, 1P36A01R01.dat_MD_...mat), copies' tails kept."""
    if fmt == "glasgow-dat":
        return path.stem.strip()
    match = GLASGOW_MAT_NAME.match(path.name)
    return match.group("code").strip() if match else path.stem


def same_person_map(text: str | None) -> dict[str, str]:
    """--same-person: 'A=B,C=D' (or a file with one A=B per line) -> {B: A, D: C}: the second key of each pair is
    renamed to the first."""
    if not text:
        return {}
    path = Path(text)
    pairs = path.read_text().split() if path.is_file() else text.split(",")
    mapping = {}
    for pair in (p.strip() for p in pairs if p.strip()):
        keep, _, merge = (s.strip() for s in pair.partition("="))
        if not keep or not merge:
            raise ValueError(f"--same-person {text!r}: expected KEY=KEY pairs like c5_P08=c6_P08, got {pair!r}")
        mapping[merge] = mapping.get(keep, keep)
    return mapping


def find_recordings(cfg: ConvertConfig) -> tuple[list[Recording], list[dict]]:
    """The files of --input for --format, each with its person and recording name, and the copies skipped
    (`- Copy`, `(2)`: [{"source", "reason"}], each also warned about on stderr)."""
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
            raise ValueError(f"--activity must be a comma list of activity numbers (the Ayy field) "
                             f"{GLASGOW_ACTIVITIES}, got {cfg.activity!r}")
    merge = same_person_map(cfg.same_person)
    recordings, copies, seen, campaigns = [], [], {}, {}
    for path in files:
        if cfg.format.startswith("glasgow"):
            code = glasgow_code(path, cfg.format)
            copy = COPY_NAME.match(code)
            if copy and GLASGOW_NAME.match(copy.group("code").strip()):
                reason = f"a copy of {copy.group('code').strip()} (its name ends in {code[len(copy.group('code')):]!r})"
                print(f"warning: skipped {path}: {reason}", file=sys.stderr)
                copies.append({"source": str(path), "reason": reason})
                continue
            match = GLASGOW_NAME.match(code)
            if match is None:
                if cfg.skip_bad:
                    reason = "the name is not a Glasgow recording code KPxxAyyRz"
                    print(f"warning: skipped {path}: {reason}", file=sys.stderr)
                    copies.append({"source": str(path), "reason": reason})
                    continue
                raise ValueError(f"{path}: the name is not a Glasgow recording code KPxxAyyRz such as 1P36A01R01 "
                                 "(--skip-bad skips such files)")
            activity = int(match.group(3))                              # the Ayy field (the owners' label script)
            if activities is not None and activity not in activities:
                continue
            campaign, folder = campaign_of(path)
            if campaigns.setdefault(campaign, folder) != folder:
                raise ValueError(f"{path}: its campaign folder {folder} and {campaigns[campaign]} both give the "
                                 f"campaign key {campaign}; refusing to merge two campaigns' participants under "
                                 "one key (convert them separately, or rename a folder)")
            person = f"{campaign}_P{int(match.group(2)):02d}"
            rec = Recording(path, merge.get(person, person), code, campaign, folder, activity)
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
    if cfg.format.startswith("glasgow"):
        known = {f"{r.campaign}_P{int(GLASGOW_NAME.match(r.name).group(2)):02d}" for r in recordings}
        unknown = sorted(k for k in set(merge) | set(merge.values()) if k not in known)
        if unknown:
            raise ValueError(f"--same-person names {unknown}, which no file of --input has (people found: "
                             f"{sorted(known)[:8]}{' ...' if len(known) > 8 else ''})")
    elif merge:
        raise ValueError(f"--same-person applies to the Glasgow formats, not --format {cfg.format}")
    if not recordings:
        raise ValueError(f"--input {root}: no recordings" + (f" of --activity {cfg.activity}" if cfg.activity else
                                                             " left after skipping copies"))
    return recordings, copies


# ----------------------------------------------------------------------------------------------------------------
# One file -> one recording's spectrogram
# ----------------------------------------------------------------------------------------------------------------
def load_spectrogram(rec: Recording, cfg: ConvertConfig) -> Spectrogram:
    """Read one source file and bring it to a velocity-time magnitude (module docstring)."""
    chain = chain_of(cfg)
    if cfg.format == "glasgow-dat":
        radar, iq, units = read_glasgow_dat(rec.source)
        spec = iq_spectrogram(iq, radar, chain)
        spec.radar["header_units"] = units
        return spec
    if cfg.format == "iq-npy":
        radar = FmcwRadar(cfg.carrier_hz, cfg.bandwidth_hz, cfg.chirp_s, cfg.prf_hz or 1 / cfg.chirp_s)
        return iq_spectrogram(read_iq_npy(rec.source), radar, chain)
    if cfg.format == "glasgow-mat":
        return glasgow_mat_spectrogram(rec.source, cfg, chain)
    return idrad_spectrogram(rec.source, cfg, chain)


def glasgow_mat_spectrogram(path: Path, cfg: ConvertConfig, chain: Chain) -> Spectrogram:
    """A Glasgow *_MD_*.mat spectrogram, its rows as the Glasgow example script leaves them (fftshift, then flipud):
    row r at slow-time frequency (nfft/2 - 1 - r) PRF / nfft. The STFT window, overlap and padding come from the
    name (..._MD_prm_TWL_256_OF_95_PF_4.mat), else from the options. Their MTI started from rest, so the columns
    whose STFT frames begin before it settled (to -settle_db dB, settle_seconds) are dropped."""
    x = np.abs(read_glasgow_mat(path, cfg.mat_variable))               # (nfft, T)
    nfft = len(x)
    match = GLASGOW_MAT_STFT.search(path.name)
    length, overlap, pad = ((int(match.group(1)), int(match.group(2)) / 100, int(match.group(3))) if match
                            else (cfg.stft_length, cfg.overlap, cfg.pad_factor))
    if nfft != length * pad:
        raise ValueError(f"{path}: {nfft} Doppler rows, but a {length}-sample window padded {pad}x gives "
                         f"{length * pad}")
    carrier, prf = cfg.carrier_hz or GLASGOW_CARRIER_HZ, cfg.prf_hz or GLASGOW_PRF_HZ
    hop = stft_hop(length, overlap)
    settle = settle_seconds(cfg.mti_order or 4, cfg.mti_cutoff, prf, cfg.settle_db) if cfg.settle_db > 0 else 0.0
    first = int(np.ceil(settle * prf / hop - 1e-9))                     # first column starting after the settling
    by_bin = x[(nfft // 2 - 1 - np.arange(nfft)) % nfft][:, first:]    # row k at f = k PRF / nfft
    radar = {"carrier_hz": carrier, "prf_hz": prf, "stft_length": length, "overlap": overlap, "pad_factor": pad,
             "dropped_start_s": first * hop / prf}
    return doppler_spectrogram(by_bin, hop / prf, length / prf, carrier, prf, chain, radar)


def idrad_spectrogram(path: Path, cfg: ConvertConfig, chain: Chain) -> Spectrogram:
    """IDRad frames, one column each. range_doppler (frames, R, nfft) in dB: P[f, k] = sum_r 10^(RD[f, r, k] / 10),
    the linear power summed over the range bins, so a person in a few of the 380 bins keeps their contrast; the
    image is 10 log10 P. microdoppler[_thresholded] (frames, nfft) holds the authors' sum over range of the dB
    values, s = sum_r RD: shown with the contrast of their min-max scaling, the data set's span of s
    (IDRAD_DB_SUM_SPAN) = --dynamic-range dB. Doppler is fft-shifted in both (column c at (c - nfft/2) PRF / nfft)."""
    x = read_idrad(path, cfg.idrad_dataset).astype(np.float64)
    if cfg.idrad_dataset == "range_doppler":
        magnitude = np.sqrt((10 ** (x / 10)).sum(axis=1))              # (frames, nfft): 20 log10 M = 10 log10 P
    else:
        span = IDRAD_DB_SUM_SPAN.get(cfg.idrad_dataset)
        if span is None:
            raise ValueError(f"--idrad-dataset {cfg.idrad_dataset!r}: expected range_doppler or one of "
                             f"{sorted(IDRAD_DB_SUM_SPAN)}")
        magnitude = 10 ** ((x - x.max()) * (cfg.dynamic_range / span) / 20)
    nfft = magnitude.shape[1]
    by_bin = magnitude[:, (np.arange(nfft) + nfft // 2) % nfft].T       # (nfft, frames), row k at k PRF / nfft
    radar = {"carrier_hz": cfg.carrier_hz, "prf_hz": cfg.prf_hz, "frame_rate_hz": cfg.frame_rate_hz,
             "dataset": cfg.idrad_dataset}
    frame_s = 1 / cfg.frame_rate_hz
    return doppler_spectrogram(by_bin, frame_s, frame_s, cfg.carrier_hz, cfg.prf_hz, chain, radar)


# ----------------------------------------------------------------------------------------------------------------
# The converter
# ----------------------------------------------------------------------------------------------------------------
def check_config(cfg: ConvertConfig) -> None:
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


def convert(cfg: ConvertConfig) -> dict:
    """Convert every recording of --input into OUT/<person>/<recording>_w<k>.npy and write OUT/metadata.json
    (all written to a temporary folder first: an error leaves no partial output). Returns the metadata."""
    from tqdm import tqdm

    from ldm.files import replace_folder, write_json

    check_config(cfg)
    recordings, copies = find_recordings(cfg)
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite)
    result = {}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        axes, sources, skipped, total = None, [], list(copies), 0
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
                message = str(err) if str(rec.source) in str(err) else f"{rec.source}: {err}"
                if not cfg.skip_bad:
                    raise ValueError(message) from None
                tqdm.write(f"skipped {message}", file=sys.stderr)
                skipped.append({"source": str(rec.source), "reason": message})
                continue
            (tmp / rec.person).mkdir(exist_ok=True)
            for k, image in enumerate(images):
                np.save(tmp / rec.person / f"{rec.name}_w{k}.npy", image)
            total += len(images)
            sources.append({"source": str(rec.source), "person": rec.person, "recording": rec.name,
                            "campaign": rec.campaign, "campaign_folder": rec.campaign_folder,
                            "activity": rec.activity, "columns": int(spec.magnitude.shape[1]),
                            "windows": len(images), "radar": spec.radar})
        if total == 0:
            short = len(sources)
            raise ValueError(f"no windows written: {short} recording(s) shorter than --window-s {cfg.window_s}, "
                             f"{len(skipped)} file(s) skipped"
                             + (f" (first: {skipped[0]['reason']})" if skipped else ""))
        result["meta"] = metadata(cfg, *axes, sources, skipped)
        write_json(result["meta"], tmp / "metadata.json")

    replace_folder(out, write)                      # written beside, then swapped in: no partial output on error
    return result["meta"]


def _check_same_axes(source: Path, spec: Spectrogram, first: Spectrogram) -> None:
    same = (len(spec.velocities) == len(first.velocities) and np.allclose(spec.velocities, first.velocities)
            and np.isclose(spec.seconds_per_column, first.seconds_per_column))
    if not same:
        raise ValueError(f"{source}: its axes ({len(spec.velocities)} rows, PRF {spec.prf_hz:g} Hz, carrier "
                         f"{spec.carrier_hz:g} Hz, {spec.seconds_per_column:g} s per column) differ from the first "
                         f"file's ({len(first.velocities)}, {first.prf_hz:g} Hz, {first.carrier_hz:g} Hz, "
                         f"{first.seconds_per_column:g} s); convert them into separate folders")


def metadata(cfg: ConvertConfig, spec: Spectrogram, width: int, hop: int, sources: list[dict],
             skipped: list[dict]) -> dict:
    """metadata.json: the image axes (with the simulator's key names where they mean the same), the radar and the
    options, the people per campaign, and recording_of: each window's recording ({"c1_P36/1P36A01R01_w0":
    "c1_P36/1P36A01R01"}), which ldm.splits.make_split keeps on one side of a split. v_max_mps and duration_s are the
    --v-max and --duration that evaluate.py and sample.py take."""
    step = float(spec.velocities[0] - spec.velocities[1])
    dt = spec.seconds_per_column
    people = sorted({s["person"] for s in sources})
    campaigns: dict[str, dict] = {}
    for s in sources:
        if s["campaign"]:
            c = campaigns.setdefault(s["campaign"], {"folder": s["campaign_folder"], "people": set()})
            c["people"].add(s["person"])
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
        "campaigns": {k: {"folder": v["folder"], "people": sorted(v["people"])} for k, v in sorted(campaigns.items())},
        "recordings": sources, "skipped": skipped,
        "recording_of": {f"{s['person']}/{s['recording']}_w{k}": f"{s['person']}/{s['recording']}"
                         for s in sources for k in range(s["windows"])},
    }


def main(argv: list[str] | None = None) -> int:
    from ldm.cli import parse_config
    cfg = parse_config(ConvertConfig, argv, "Convert raw FMCW radar I/Q or another group's spectrograms into "
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
    for key, campaign in meta["campaigns"].items():
        people = campaign["people"]
        print(f"campaign {key} ({Path(campaign['folder']).name}): {len(people)} "
              f"{'person' if len(people) == 1 else 'people'}: {', '.join(people)}")
    short = sum(r["windows"] == 0 for r in meta["recordings"])
    print(f"wrote {meta['windows']} spectrograms ({meta['height']}x{meta['width']}, +-{meta['v_max_mps']:.2f} m/s, "
          f"{meta['duration_s']:.2f} s) of {len(meta['persons'])} person(s) from {len(meta['recordings'])} file(s) "
          f"to {cfg.out} in {seconds:.1f} s" + (f"; skipped {len(meta['skipped'])} file(s)" if meta["skipped"] else "")
          + (f"; {short} recording(s) shorter than --window-s gave none" if short else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
