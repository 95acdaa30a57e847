"""The simulated data set (numpy): people, their walks, and a data folder of micro-Doppler spectrograms.

    ldm.radar.kinematics   the body: Person, Draws (one walk's nuisance), the gait model, the body's points
    ldm.radar.echo         what the radar sees: scatterers, the classic slow-time echo, raw FMCW I/Q
    ldm.radar.chain        the signal chain real recordings take (the realistic profile renders through it)
    this file              people on a Halton design, per-walk and per-session draws, the profiles,
                           simulate_dataset / write_dataset, and the CLI

Two profiles (PROFILES): "classic", the original simulator (one scatterer per segment, Boulic's feet, walking towards
a 24 GHz CW radar, no clutter, a Hann STFT of the slow-time echo; the default of the Python API and the CLI), and
"realistic": ground contact, 4 scatterers per segment, R^-4, raw FMCW I/Q of the Glasgow radar (5.8 GHz, 400 MHz,
1 ms chirps) with clutter points that have a Doppler spread and a fixed noise floor, rendered by ldm.radar.chain
with the Glasgow defaults (range bins 10-30, Butterworth MTI, 200-chirp STFT) exactly as a converted real recording,
and identity with session structure: each person walks in SESSIONS sessions, each with its own aspect, distance,
RCS and speed offsets; metadata.json records each sample's session ("recording_of"), so ldm.splits.make_split keeps a
session's walks on one side of a split.

Identity and nuisance come from separate random streams keyed by integers, so person k, session s of person k and
sample i of person k are the same whatever the number of users or samples per user:
    person k:             numpy.random.default_rng([seed, PERSON_STREAM, k])   (plus a seed-wide Halton design)
    session s of person k: numpy.random.default_rng([seed, SESSION_STREAM, k, s]);  sample i is in session i % S
    sample i of person k:  numpy.random.default_rng([seed, SAMPLE_STREAM, k, i])

CLI: python -m ldm.radar.simulator --out DIR --profile realistic --users 10 --per-user 64 --size 128 --seed 0
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ldm.cli import option
from ldm.radar.chain import Chain
from ldm.radar.echo import (MTI_FILTERS, SIZES, Fmcw, Radar, frame_times, peak_speed_mps, prf_for_span,
                            simulate_spectrogram, velocity_axis, db_to_uint8)
from ldm.radar.kinematics import Body, Draws, Person

PERSON_STREAM, SAMPLE_STREAM, SESSION_STREAM = 0, 1, 2

# ----------------------------------------------------------------------------------------------------------------
# People: identity traits spread over a Halton design
# ----------------------------------------------------------------------------------------------------------------
# Identity ranges at spacing 1, the population ranges of docs/microdoppler.md, section 9: (low, high). The spacing
# scales every range about its centre; each profile has its own default, calibrated against the evaluation CNN.
IDENTITY_RANGES = {"height_m": (1.55, 1.95), "rel_speed": (0.8, 1.6), "arm_gain": (0.6, 1.4),
                   "cadence_gain": (0.93, 1.07), "knee_gain": (0.9, 1.1)}
DEFAULT_SPACING = 0.65        # the classic profile's
MAX_SPACING = 2.5
# Halton bases: the best-spread low bases go to the cues that shape the image most (speed, then height, ...).
HALTON_BASES = {"rel_speed": 2, "height_m": 3, "cadence_gain": 5, "arm_gain": 7}


def _halton(index: int, base: int) -> float:
    """The index-th element (index >= 1) of the van der Corput sequence in `base`: well spread for any prefix."""
    value, scale = 0.0, 1.0 / base
    while index > 0:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


def make_person(index: int, seed: int = 0, spacing: float = DEFAULT_SPACING) -> Person:
    """Person `index` (0-based) of the population seeded by `seed`.

    The four main traits sit on a Halton design (point index+1, rotated by a seed-wide random shift) so any number
    of people is spread evenly; knee flexion is drawn from the person's own stream. Each trait is
    centre + spacing * (u - 0.5) * (high - low), u in [0, 1). The result depends only on (index, seed, spacing).
    """
    if index < 0 or not 0 < spacing <= MAX_SPACING:
        raise ValueError(f"need index >= 0 and 0 < spacing <= {MAX_SPACING}, got index={index}, spacing={spacing}")
    shift = np.random.default_rng([seed, PERSON_STREAM]).random(len(HALTON_BASES))
    own = np.random.default_rng([seed, PERSON_STREAM, index])
    unit = {name: (_halton(index + 1, base) + s) % 1.0 for (name, base), s in zip(HALTON_BASES.items(), shift)}
    unit["knee_gain"] = own.random()
    traits = {}
    for name, (low, high) in IDENTITY_RANGES.items():
        traits[name] = (low + high) / 2 + spacing * (unit[name] - 0.5) * (high - low)
    traits["rel_speed"] = float(np.clip(traits["rel_speed"], 0.55, 2.5))   # stay inside Boulic gaits b/c
    return Person(**{k: float(v) for k, v in traits.items()})




# ----------------------------------------------------------------------------------------------------------------
# Per-walk nuisance, one function per profile; the realistic profile's sessions (docs/microdoppler.md, section 9)
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Session:
    """What one person's walks in one session share: the aspect (heading), the distance (the range at the walk's
    midpoint), the RCS offset (clothing, what they carry) and a speed offset (mood, shoes)."""
    heading_deg: float = 0.0
    distance_m: float = 7.0
    rcs_db: float = 0.0
    speed_factor: float = 1.0


def draw_session(rng: np.random.Generator) -> Session:
    """A realistic session: heading +-25 deg, distance 6-8.5 m, RCS offset N(0, 2 dB), speed +-8% (uniform)."""
    return Session(heading_deg=rng.uniform(-25.0, 25.0), distance_m=rng.uniform(6.0, 8.5),
                   rcs_db=2.0 * rng.standard_normal(), speed_factor=rng.uniform(0.92, 1.08))


def draw_classic(rng: np.random.Generator, session: Session | None = None) -> Draws:
    """The classic profile's nuisance: towards the radar, heading +-15 deg, small jitters (speed sd 2%)."""
    return Draws(phase=rng.random(), heading_deg=rng.uniform(-15.0, 15.0), start_range_m=rng.uniform(6.0, 10.0),
                 snr_db=rng.uniform(15.0, 30.0), speed_factor=1.0 + 0.02 * rng.standard_normal(),
                 arm_factor=1.0 + 0.05 * rng.standard_normal(), cadence_factor=1.0 + 0.01 * rng.standard_normal())


def draw_realistic(rng: np.random.Generator, session: Session = Session()) -> Draws:
    """One walk of a realistic session: towards or away from the radar (even odds), heading = the session's +-5 deg,
    midpoint range = the session's distance +-0.5 m (a walk of 2.56 s at 1.3 m/s covers 3.3 m: it starts 1.7 m
    beyond it, or short of it when walking away), speed = the session's +-3%, arm swing +-15%, cadence +-3%, RCS
    = the session's +-1 dB (uniform)."""
    away = bool(rng.random() < 0.5)
    middle = session.distance_m + rng.uniform(-0.5, 0.5)
    return Draws(phase=rng.random(), heading_deg=session.heading_deg + rng.uniform(-5.0, 5.0),
                 start_range_m=middle - 1.7 if away else middle + 1.7,
                 speed_factor=session.speed_factor * rng.uniform(0.97, 1.03), arm_factor=rng.uniform(0.85, 1.15),
                 cadence_factor=rng.uniform(0.97, 1.03), rcs_db=session.rcs_db + rng.uniform(-1.0, 1.0), away=away)


@dataclass(frozen=True)
class Profile:
    """A named bundle of simulator choices: the radar, the body model, the people's spread and the per-walk draws;
    fmcw (None: the classic slow-time echo) renders raw FMCW I/Q through ldm.radar.chain; sessions > 0 groups each
    person's walks into that many sessions (draw_session). `speed_factor_max` and `arm_factor_max` bound the speed
    and arm-swing factors any walk can have: before anything is simulated, the radar's span is checked against the
    fastest limb (check_span); the echo checks every walk exactly."""
    name: str
    summary: str
    radar: Radar
    body: Body
    spacing: float
    draw: Callable[..., Draws]
    speed_factor_max: float
    arm_factor_max: float
    fmcw: Fmcw | None = None
    sessions: int = 0

    def describe(self) -> dict:
        """The settings as plain data (for metadata.json)."""
        return {"name": self.name, "summary": self.summary, "body": asdict(self.body), "spacing": self.spacing,
                "draw": self.draw.__name__, "speed_factor_max": self.speed_factor_max,
                "arm_factor_max": self.arm_factor_max, "sessions": self.sessions,
                "fmcw": None if self.fmcw is None else asdict(self.fmcw)}


# The realistic spacing is calibrated so that the evaluation CNN identifies 10 people with 70-85% accuracy on
# held-out sessions, the band of published results on real radar data (scripts/simulator_difficulty.py --per-user
# 32 --seeds 0,1,2; docs/microdoppler.md, section 12): mean over the seeds 74.2% at spacing 1.05, 80.0% at 1.1,
# 80.8% at 1.15, 87.1% at 1.25.
REALISTIC_SPACING = 1.1
REALISTIC_SPAN_MPS = 6.0     # the image spans +-6 m/s, as the Glasgow example displays its spectrograms
SESSIONS = 8
PROFILES = {
    "classic": Profile(
        "classic", "the original simulator: Boulic's feet, one scatterer per segment, walking towards the radar, no "
                   "clutter; 8 people are told apart with 95-99.5% accuracy",
        Radar(), Body(), DEFAULT_SPACING, draw_classic, speed_factor_max=1.08, arm_factor_max=1.2),
    "realistic": Profile(
        "realistic", "feet planted on the floor, 4 scatterers per segment, R^-4, raw FMCW I/Q of the Glasgow radar "
                     "with spread clutter and a fixed noise floor, rendered by ldm.radar.chain (range gate, MTI, "
                     "STFT) like a real recording; 8 sessions per person with their own aspect, distance, RCS and "
                     "speed; walking towards or away",
        Radar(carrier_hz=5.8e9, prf_hz=1000.0, range_loss=True), Body(ground_contact=True, points_per_segment=4),
        REALISTIC_SPACING, draw_realistic, speed_factor_max=1.12, arm_factor_max=1.2,
        fmcw=Fmcw(chain=Chain(v_max=REALISTIC_SPAN_MPS)), sessions=SESSIONS),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def check_span(people: list[Person], profile: Profile, radar: Radar, spacing: float) -> None:
    """ValueError unless every person's fastest limb, at the profile's fastest draw, stays inside the radar's
    unambiguous span +-PRF lambda / 4 (otherwise the limbs would alias: wrap around to the other side)."""
    v_max = radar.max_velocity_mps
    for k, person in enumerate(people):
        peak = peak_speed_mps(person, profile.speed_factor_max, profile.arm_factor_max, profile.body)
        if peak >= v_max:
            raise ValueError(
                f"person {k} (height {person.height_m:.2f} m, speed {person.speed_mps:.2f} m/s) moves a limb at up "
                f"to {peak:.2f} m/s, past the radar's unambiguous span +-{v_max:.2f} m/s (PRF {radar.prf_hz:.0f} Hz "
                f"at {radar.carrier_hz / 1e9:g} GHz), so it would alias: use a PRF of at least "
                f"{prf_for_span(radar.carrier_hz, peak):.0f} Hz (--prf, or leave it out to choose it from the "
                f"carrier) or a smaller --spacing (now {spacing:g})")


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------
def _metadata(people: list[Person], seed: int, spacing: float, size: int, radar: Radar, profile: Profile) -> dict:
    v = velocity_axis(size, radar, profile.fmcw)
    frames = frame_times(size, radar, profile.fmcw)
    return {
        "format": "ldm.radar.simulator v1: user_XX/NNNN.png = uint8 of (dB + dynamic_range) / dynamic_range; "
                  "user_XX/NNNN.npy = float32 dB re image max in [-dynamic_range, 0]; rows = velocity "
                  "(approaching on top), columns = time",
        "profile": profile.describe(),
        "seed": seed, "spacing": spacing, "size": size, "radar": asdict(radar),
        "wavelength_m": radar.wavelength_m, "max_velocity_mps": radar.max_velocity_mps,
        "velocity_top_mps": float(v[0]), "velocity_step_mps": float(v[0] - v[1]),
        "frame_rate_hz": float(1 / (frames[1] - frames[0])),
        "people": [{"user": f"user_{k:02d}", "label": k, **asdict(p), "speed_mps": p.speed_mps, "cycle_s": p.cycle_s,
                    "cadence_steps_per_s": p.cadence_steps_per_s} for k, p in enumerate(people)],
        "samples": [],
        "recording_of": {},
    }


def simulate_dataset(users: int = 8, per_user: int = 64, size: int = 128, seed: int = 0,
                     spacing: float | None = None, radar: Radar | None = None, progress: bool = False,
                     profile: str = "classic") -> tuple[np.ndarray, np.ndarray, dict]:
    """Simulate `per_user` spectrograms for each of `users` people of a profile (PROFILES; spacing and radar
    default to the profile's).

    Returns (spectrograms, labels, metadata): spectrograms (users * per_user, size, size) float32 in dB re each
    image's max, within [-radar.dynamic_range_db, 0] (map to [-1, 1] with db / dynamic_range * 2 + 1); labels
    (N,) int64 person indices, user-major order; metadata as written to metadata.json (profile, people, draws, and
    for a profile with sessions, "recording_of": each sample's session, {"user_00/0003": "user_00/session_3"}).
    ValueError, before anything is simulated, if a limb of any person would alias (check_span).
    """
    prof = get_profile(profile)
    spacing = prof.spacing if spacing is None else spacing
    radar = prof.radar if radar is None else radar
    if users < 1 or per_user < 1:
        raise ValueError(f"need users >= 1 and per_user >= 1, got {users}, {per_user}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    need = prof.fmcw.chain.stft_length + prof.fmcw.chain.hop if prof.fmcw else (128 if size == 64 else size)
    if radar.num_pulses < need:
        raise ValueError(f"duration * PRF must give at least {need} pulses for size {size}, got {radar.num_pulses}")
    from tqdm import tqdm
    people = [make_person(k, seed, spacing) for k in range(users)]
    check_span(people, prof, radar, spacing)
    meta = _metadata(people, seed, spacing, size, radar, prof)
    out = np.empty((users * per_user, size, size), np.float32)
    labels = np.repeat(np.arange(users, dtype=np.int64), per_user)
    bar = tqdm(total=users * per_user, desc="simulating", unit="spec", disable=not progress)
    for k, person in enumerate(people):
        sessions = [draw_session(np.random.default_rng([seed, SESSION_STREAM, k, s])) for s in range(prof.sessions)]
        for i in range(per_user):
            rng = np.random.default_rng([seed, SAMPLE_STREAM, k, i])   # sample i of person k: its own stream
            session = sessions[i % prof.sessions] if prof.sessions else None
            draws = prof.draw(rng, session)
            out[k * per_user + i] = simulate_spectrogram(person, draws, radar, size, rng, prof.body, prof.fmcw)
            name = f"user_{k:02d}/{i:04d}"
            sample = {"file": name, "user": k, "index": i, "stream": [seed, SAMPLE_STREAM, k, i], **asdict(draws)}
            if session is not None:
                sample["session"] = i % prof.sessions
                meta["recording_of"][name] = f"user_{k:02d}/session_{i % prof.sessions}"
            meta["samples"].append(sample)
            bar.update()
    bar.close()
    return out, labels, meta


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """ValueError unless `out` is absent, empty, or (with overwrite) an earlier simulator output and nothing else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()}
    if not present:
        return
    if not overwrite:
        raise ValueError(f"{out} is not empty; choose a new folder or pass overwrite=True (--overwrite)")
    meta_path = out / "metadata.json"
    try:
        samples = json.loads(meta_path.read_text())["samples"]
        ours = {"metadata.json"} | {s["file"] + ext for s in samples for ext in (".png", ".npy")}
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{out} is not empty and holds no simulator metadata.json; overwrite only replaces an "
                         "earlier simulator output") from None
    foreign = sorted(present - ours)
    if foreign:
        raise ValueError(f"{out} holds {len(foreign)} file(s) the simulator did not write (e.g. {foreign[0]}); "
                         "overwrite only replaces an earlier simulator output")


def write_dataset(out_dir: str | Path, users: int = 8, per_user: int = 64, size: int = 128, seed: int = 0,
                  spacing: float | None = None, radar: Radar | None = None, overwrite: bool = False,
                  progress: bool = True, profile: str = "classic") -> dict:
    """Simulate and write out_dir/user_XX/NNNN.png (8-bit grayscale) and .npy (float32 dB) plus metadata.json.

    Refuses a non-empty out_dir unless overwrite=True and the folder holds an earlier simulator output and nothing
    else. Atomic: everything is written into a temporary sibling folder that then replaces out_dir, so an error or
    an interruption leaves out_dir as it was. ValueError (one line) if out_dir cannot be written. Returns the
    metadata dict.
    """
    from PIL import Image
    out = Path(out_dir)
    _check_replaceable(out, overwrite)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
    except OSError as error:
        raise ValueError(f"cannot write the output folder {out} ({error.strerror or error})") from None
    try:
        specs, _, meta = simulate_dataset(users, per_user, size, seed, spacing, radar, progress, profile)
        dynamic_range = meta["radar"]["dynamic_range_db"]
        for k in range(users):
            (tmp / f"user_{k:02d}").mkdir()
        for db, sample in zip(specs, meta["samples"]):
            Image.fromarray(db_to_uint8(db, dynamic_range), mode="L").save(tmp / (sample["file"] + ".png"))
            np.save(tmp / (sample["file"] + ".npy"), db)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1))
        if out.exists():                                               # empty, or an earlier output (checked)
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except OSError as error:
        raise ValueError(f"cannot write the output folder {out} ({error.strerror or error})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SimulateConfig:
    out: str | None = option(None, "output folder, written atomically (must be empty or absent; --overwrite replaces "
                                   "an earlier simulator output); required")
    profile: str = option("classic", "simulator profile: classic (the original, easy: 95-99.5%% identification of 8 "
                                     "people) or realistic (raw FMCW I/Q of the Glasgow radar rendered by "
                                     "ldm.radar's chain like a real recording, sessions per person; docs/"
                                     "microdoppler.md gives its measured difficulty)", choices=tuple(PROFILES))
    users: int = option(8, "number of simulated people (one subfolder each)", at_least=1, at_most=1000)
    per_user: int = option(64, "spectrograms per person (realistic: spread over 8 sessions, sample i in session "
                                "i %% 8)", at_least=1, at_most=100000)
    size: int = option(128, "image side in pixels (velocity x time)", choices=SIZES)
    seed: int = option(0, "seeds the person table, the sessions and the per-sample nuisance", at_least=0)
    spacing: float | None = option(None, "how different the people are: scales every identity range (height, speed, "
                                         "arm swing, cadence, knee flexion) about its centre; 1 = the full "
                                         "population ranges; smaller is harder, larger easier; default: the "
                                         f"profile's (classic {PROFILES['classic'].spacing}, realistic "
                                         f"{PROFILES['realistic'].spacing})", above=0, at_most=MAX_SPACING)
    carrier_ghz: float | None = option(None, "radar carrier frequency in GHz; default: the profile's (classic 24, "
                                             "realistic 5.8). Without --prf the PRF is chosen from it to keep the "
                                             "profile's unambiguous velocity span: PRF = 4 * span / wavelength",
                                       at_least=0.1, at_most=1000)
    prf: float | None = option(None, "pulse (chirp) repetition frequency in Hz; the unambiguous span +-PRF*lambda/4 "
                                     "m/s must hold every limb of every person (an error otherwise). Default: the "
                                     "profile's (classic 2000 Hz, realistic 1000 Hz), or chosen from --carrier-ghz",
                               above=0, at_most=1e6)
    duration: float | None = option(None, "seconds of walking per spectrogram; default 2.56", above=0, at_most=60)
    dynamic_range: float | None = option(None, "dB below each image's maximum kept in the image; default 50",
                                         above=0, at_most=200)
    clutter_db: float | None = option(None, "classic: static zero-Doppler return, power in dB re the mean body echo; "
                                            "default none (the realistic profile's clutter points are set by its "
                                            "Fmcw)", at_least=-100, at_most=100)
    mti: str | None = option(None, "classic: moving-target-indicator filter against static clutter: none, two-pulse "
                                   "(s[n] - s[n-1]) or butterworth (4th order, normalised cutoff 0.0075, as in the "
                                   "Glasgow processing); default none (the realistic profile's chain always applies "
                                   "the Butterworth MTI)", choices=MTI_FILTERS)
    overwrite: bool = option(False, "replace an earlier simulator output in --out")
    quiet: bool = option(False, "no progress bar")


def radar_from_options(profile: Profile, carrier_ghz: float | None = None, prf: float | None = None,
                       duration: float | None = None, dynamic_range: float | None = None,
                       clutter_db: float | None = None, mti: str | None = None) -> Radar:
    """The profile's radar with the CLI's overrides. A new carrier without a PRF keeps the profile's velocity span:
    PRF = prf_for_span(carrier, profile span), so the image is the same in m/s at any carrier."""
    radar = profile.radar
    if profile.fmcw is not None and (clutter_db is not None or mti is not None):
        raise ValueError(f"--clutter-db and --mti apply to the classic profile; the {profile.name} profile's clutter "
                         "and MTI are those of its FMCW front end and chain")
    changes = {"duration_s": duration, "dynamic_range_db": dynamic_range, "clutter_db": clutter_db, "mti": mti,
               "prf_hz": prf}
    if carrier_ghz is not None:
        changes["carrier_hz"] = carrier_ghz * 1e9
        if prf is None:
            changes["prf_hz"] = prf_for_span(carrier_ghz * 1e9, radar.max_velocity_mps)
    return replace(radar, **{k: v for k, v in changes.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    from ldm.cli import parse_config
    cfg = parse_config(SimulateConfig, argv,
                       "Simulate radar micro-Doppler spectrograms of walking people (Boulic-Thalmann gait model, "
                       "ellipsoid scatterers; classic STFT or raw FMCW I/Q through ldm.radar's chain) into "
                       "OUT/user_XX/NNNN.png + .npy and OUT/metadata.json.",
                       prog="python -m ldm.radar.simulator")
    try:
        if cfg.out is None:
            raise ValueError("--out is required: the folder to write the spectrograms into")
        profile = get_profile(cfg.profile)
        radar = radar_from_options(profile, cfg.carrier_ghz, cfg.prf, cfg.duration, cfg.dynamic_range,
                                   cfg.clutter_db, cfg.mti)
        start = time.perf_counter()
        meta = write_dataset(cfg.out, cfg.users, cfg.per_user, cfg.size, cfg.seed, cfg.spacing, radar,
                             cfg.overwrite, progress=not cfg.quiet, profile=cfg.profile)
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    n = len(meta["samples"])
    print(f"wrote {n} spectrograms ({cfg.users} users x {cfg.per_user}, {cfg.size}x{cfg.size}, profile "
          f"{cfg.profile}) to {cfg.out} in {seconds:.1f} s ({n / seconds:.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
