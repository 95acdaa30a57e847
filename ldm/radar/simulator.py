"""A walking-person radar micro-Doppler simulator (numpy): the project's built-in dataset.

Pipeline (model, sources and tested facts: docs/microdoppler.md):

    Person (height, relative speed, arm swing, cadence, knee flexion)       fixed per simulated person
      + Draws (gait phase, direction, heading, start range, SNR, jitters)    drawn per sample
      -> Boulic-Thalmann gait model (Boulic et al. 1990, as coded by V.C. Chen): body joints over time
      -> optionally the feet planted on the floor (ground contact) and the knees by inverse kinematics
      -> scatterers on 12 body segments (one per segment, or several spread along each), prolate-ellipsoid RCS,
         optionally the R^-4 range loss; echo exp(-j 4 pi R / lambda) at the PRF, static clutter, noise, MTI
      -> STFT, 10 log10 |S|^2, minus the image max, clipped to [-dynamic_range, 0] dB
      -> (size, size) image: rows = Doppler velocity (approaching, i.e. positive, on top), columns = time.

Two profiles bundle these choices (PROFILES): "classic", the original simulator (one scatterer per segment, Boulic's
feet, people walking towards the radar, no clutter; the default of the Python API and the CLI), and "realistic"
(ground contact, several scatterers per segment, R^-4, static clutter removed by the Butterworth MTI of
ldm.radar, speed +-10%, walking towards or away, wider headings, calibrated to the identity accuracy real data shows).

Identity and nuisance come from two separate random streams keyed by integers, so person k and sample i of
person k are the same whatever the number of users or samples per user:
    person k:            numpy.random.default_rng([seed, PERSON_STREAM, k])   (plus a seed-wide Halton design)
    sample i of person k: numpy.random.default_rng([seed, SAMPLE_STREAM, k, i])

Bugs of public ports that this file avoids (docs/microdoppler.md, section 10): bulk speed is V = RV * Ht in m/s (not
RV); the cycle lasts Dc = RLc / RV seconds; pelvis roll is 1.66 * RV degrees; the upper arm uses the upper-arm length;
the PRF covers the limbs' Doppler (checked: an error instead of aliasing); the gait-c elbow uses (RV - 1.3); the
duplicate gait-b hip control point is merged; the upper-body rotation uses each elbow's current position.

CLI: python -m ldm.radar.simulator --out DIR --profile realistic --users 10 --per-user 64 --size 128 --seed 0
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
PERSON_STREAM, SAMPLE_STREAM = 0, 1
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


@dataclass(frozen=True)
class Body:
    """How the walking body scatters (docs/microdoppler.md, sections 6 and 7)."""
    ground_contact: bool = False     # the stance foot rolls on the floor without slipping; knees by inverse kinematics
    points_per_segment: int = 1      # 1: Chen's one scatterer per segment; n: n points spread along each segment

    def __post_init__(self):
        if not 1 <= self.points_per_segment <= 16:
            raise ValueError(f"Body.points_per_segment must lie in [1, 16], got {self.points_per_segment}")


# Bounds a Person must respect, with the reason (docs/microdoppler.md, section 9).
PERSON_BOUNDS = {
    "height_m": (1.0, 2.5, "m, an adult"),
    "rel_speed": (0.5, 3.0, "1/s: RV = speed / leg length, Boulic's gaits b (0.5 <= RV < 1.3) and c (1.3 <= RV <= 3)"),
    "arm_gain": (0.0, 3.0, "multiplies the arm swing"),
    "cadence_gain": (0.75, 1.35, "multiplies the cycle duration; within this the support phase is 50-70% of it"),
    "knee_gain": (0.5, 1.5, "multiplies the knee flexion"),
}


@dataclass(frozen=True)
class Person:
    """Identity parameters of one simulated walker (docs/microdoppler.md, section 9)."""
    height_m: float        # H; every segment length is a fixed fraction of H
    rel_speed: float       # RV = V / Ht in 1/s, Ht = 0.491 H the leg length; Boulic gait b/c needs 0.5 <= RV <= 3
    arm_gain: float        # multiplies the shoulder swing amplitude and the elbow flexion
    cadence_gain: float    # multiplies the cycle duration Dc at fixed speed (long slow strides vs short quick ones)
    knee_gain: float       # multiplies the knee flexion curve

    def __post_init__(self):
        for name, (low, high, why) in PERSON_BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:                                # also refuses NaN
                raise ValueError(f"Person.{name} must lie in [{low}, {high}] ({why}), got {value}")

    @property
    def leg_length_m(self) -> float:
        return (THIGH + SHANK) * self.height_m

    @property
    def speed_mps(self) -> float:
        """Walking speed V = RV * Ht (m/s); the torso line of the spectrogram sits here (heading 0)."""
        return self.rel_speed * self.leg_length_m

    @property
    def cycle_s(self) -> float:
        """Gait-cycle (two steps) duration Dc = cadence_gain * RLc / RV, RLc = 1.346 sqrt(RV)."""
        return self.cadence_gain * 1.346 * math.sqrt(self.rel_speed) / self.rel_speed

    @property
    def cadence_steps_per_s(self) -> float:
        return 2.0 / self.cycle_s

    @property
    def support(self) -> float:
        """Relative support duration Ds / Dc = 0.752 - 0.143 / Dc: the share of a cycle a foot is on the ground."""
        return 0.752 - 0.143 / self.cycle_s


@dataclass(frozen=True)
class Draws:
    """Within-person nuisance of one sample (docs/microdoppler.md, section 9). `Draws()` is the nuisance-free walk."""
    phase: float = 0.0            # gait phase at t = 0, in cycles [0, 1)
    heading_deg: float = 0.0      # walking direction vs the line of sight; 0 = straight at (or away from) the radar
    start_range_m: float = 8.0    # ground distance to the radar at t = 0
    snr_db: float = 30.0          # mean body echo power over noise power, per PRF sample
    speed_factor: float = 1.0     # multiplies RV (within-person speed variation)
    arm_factor: float = 1.0       # multiplies the arm gain
    cadence_factor: float = 1.0   # multiplies the cadence gain
    away: bool = False            # walking away from the radar (negative Doppler) instead of towards it

    def __post_init__(self):
        if not -90 < self.heading_deg < 90:
            raise ValueError(f"Draws.heading_deg must lie in (-90, 90) degrees, got {self.heading_deg}")
        if not 0 < self.start_range_m < 1000:
            raise ValueError(f"Draws.start_range_m must lie in (0, 1000) m, got {self.start_range_m}")
        if not math.isfinite(self.snr_db):
            raise ValueError(f"Draws.snr_db must be finite, got {self.snr_db}")

    def apply(self, person: Person) -> Person:
        """The person as they walk in this sample (jitters applied; the result is checked like any Person)."""
        return replace(person, rel_speed=person.rel_speed * self.speed_factor,
                       arm_gain=person.arm_gain * self.arm_factor,
                       cadence_gain=person.cadence_gain * self.cadence_factor)


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
# Per-sample nuisance, one function per profile (docs/microdoppler.md, section 9)
# ----------------------------------------------------------------------------------------------------------------
def draw_classic(rng: np.random.Generator) -> Draws:
    """The classic profile's nuisance: towards the radar, heading +-15 deg, small jitters (speed sd 2%)."""
    return Draws(phase=rng.random(), heading_deg=rng.uniform(-15.0, 15.0), start_range_m=rng.uniform(6.0, 10.0),
                 snr_db=rng.uniform(15.0, 30.0), speed_factor=1.0 + 0.02 * rng.standard_normal(),
                 arm_factor=1.0 + 0.05 * rng.standard_normal(), cadence_factor=1.0 + 0.01 * rng.standard_normal())


def draw_realistic(rng: np.random.Generator) -> Draws:
    """The realistic profile's nuisance, the spread of repeated walks of one person in real recordings: towards or
    away from the radar (even odds), heading +-30 deg, speed +-10%, arm swing +-20%, cadence +-5% (uniform), SNR
    10-30 dB. A walk towards the radar starts 6-10 m out, a walk away 2.5-5.5 m out (a walk covers at most 4.7 m)."""
    away = bool(rng.random() < 0.5)
    return Draws(phase=rng.random(), heading_deg=rng.uniform(-30.0, 30.0),
                 start_range_m=rng.uniform(2.5, 5.5) if away else rng.uniform(6.0, 10.0),
                 snr_db=rng.uniform(10.0, 30.0), speed_factor=rng.uniform(0.9, 1.1),
                 arm_factor=rng.uniform(0.8, 1.2), cadence_factor=rng.uniform(0.95, 1.05), away=away)


@dataclass(frozen=True)
class Profile:
    """A named bundle of simulator choices: the radar, the body model, the people's spread and the per-sample draws.
    `speed_factor_max` and `arm_factor_max` bound the speed and arm-swing jitters of `draw` (classic: 4 standard
    deviations of its normal jitters): before anything is simulated, the radar's span is checked against the
    fastest limb any sample can have (check_span); `echo` checks every walk exactly."""
    name: str
    summary: str
    radar: Radar
    body: Body
    spacing: float
    draw: Callable[[np.random.Generator], Draws]
    speed_factor_max: float
    arm_factor_max: float

    def describe(self) -> dict:
        """The settings as plain data (for metadata.json)."""
        return {"name": self.name, "summary": self.summary, "body": asdict(self.body), "spacing": self.spacing,
                "draw": self.draw.__name__, "speed_factor_max": self.speed_factor_max,
                "arm_factor_max": self.arm_factor_max}


# The realistic spacing is calibrated so that the evaluation CNN identifies 10 people with 70-85% accuracy, the band
# of published results on real radar data (scripts/simulator_difficulty.py; docs/microdoppler.md, section 12). With
# the realistic nuisance, seeds 0-2 (480 test files each): spacing 1.1 gave 65.4%, 1.2 76.2%, 1.3 79.2%, 1.4 84.4%;
# seeds 3-10 (1280 test files): 1.2 75.9%, 1.25 78.5%, the middle of the band.
REALISTIC_SPACING = 1.25
REALISTIC_SPAN_MPS = 8.0     # +-8 m/s: the fastest feet of 10 realistic people at +10% speed reach 7.3 (seeds 0-39)
PROFILES = {
    "classic": Profile(
        "classic", "the original simulator: Boulic's feet, one scatterer per segment, walking towards the radar, no "
                   "clutter; 8 people are told apart with 95-99.5% accuracy",
        Radar(), Body(), DEFAULT_SPACING, draw_classic, speed_factor_max=1.08, arm_factor_max=1.2),
    "realistic": Profile(
        "realistic", "feet planted on the floor, 4 scatterers per segment, R^-4, static clutter and the Butterworth "
                     "MTI, walking towards or away at +-10% speed and +-30 deg heading; 10 people are told apart "
                     "with 75% accuracy, inside the 70-85% of real radar data",
        Radar(prf_hz=prf_for_span(24e9, REALISTIC_SPAN_MPS), clutter_db=20.0, mti="butterworth", range_loss=True),
        Body(ground_contact=True, points_per_segment=4), REALISTIC_SPACING, draw_realistic,
        speed_factor_max=1.1, arm_factor_max=1.2),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {sorted(PROFILES)}")
    return PROFILES[name]


# ----------------------------------------------------------------------------------------------------------------
# Boulic-Thalmann walking model (docs/microdoppler.md, sections 3-5)
# ----------------------------------------------------------------------------------------------------------------
# Segment lengths as fractions of the height H (docs/microdoppler.md, section 5).
HEAD, TORSO, SHOULDER, UPPER_ARM, FOREARM = 0.130, 0.288, 0.1295, 0.188, 0.152
HIP, THIGH, SHANK, FOOT = 0.0955, 0.245, 0.246, 0.143
ANKLE_HEIGHT = 0.039   # ankle joint above the sole (Winter's anthropometric table); used by the ground contact
MIN_KNEE_DEG = 10.0        # the least knee flexion the ground contact allows (the leg never locks straight)
KNEE_SMOOTH_M = 0.04       # width of the smooth minimum that keeps the hip within reach of the ankle
SWING_RAMP = 0.25          # share of the swing over which the foot's height joins Boulic's path after toe-off (and
                           # leaves it before heel strike), keeping Boulic's toe clearance in mid-swing
# The 12 scatterers: (name, segment start joint, segment end joint, scattering point, ellipsoid radius a in m).
# The third semi-axis is c = |end - start| / 2 along the segment (docs/microdoppler.md, section 7).
SCATTERERS = (
    ("head", "neck", "head_top", "head_top", 0.10),
    ("torso", "pelvis", "neck", "torso_mid", 0.15),
    ("r_upper_arm", "r_shoulder", "r_elbow", "r_upper_arm_mid", 0.06),
    ("r_forearm", "r_elbow", "r_hand", "r_hand", 0.05),
    ("l_upper_arm", "l_shoulder", "l_elbow", "l_upper_arm_mid", 0.06),
    ("l_forearm", "l_elbow", "l_hand", "l_hand", 0.05),
    ("r_thigh", "r_hip", "r_knee", "r_thigh_mid", 0.07),
    ("r_shank", "r_knee", "r_ankle", "r_shank_mid", 0.06),
    ("r_foot", "r_ankle", "r_toe", "r_toe", 0.05),
    ("l_thigh", "l_hip", "l_knee", "l_thigh_mid", 0.07),
    ("l_shank", "l_knee", "l_ankle", "l_shank_mid", 0.06),
    ("l_foot", "l_ankle", "l_toe", "l_toe", 0.05),
)


def periodic_pchip(u: np.ndarray, knots: list[tuple[float, float]]) -> np.ndarray:
    """Periodic (period 1) monotone cubic (PCHIP, Fritsch-Carlson) through (phase, value) control points at u.

    Phases are wrapped into [0, 1); points closer than 1e-6 in phase are merged (the duplicate gait-b hip point).
    """
    pts = sorted(((x % 1.0, y) for x, y in knots))
    merged = [pts[0]]
    for x, y in pts[1:]:
        if x - merged[-1][0] > 1e-6:
            merged.append((x, y))
    if merged[-1][0] - (merged[0][0] + 1.0) > -1e-6:
        merged.pop()
    x = np.array([p[0] for p in merged])
    y = np.array([p[1] for p in merged])
    xe = np.concatenate([[x[-1] - 1.0], x, [x[0] + 1.0]])          # one neighbour on each side, one period away
    ye = np.concatenate([[y[-1]], y, [y[0]]])
    h, d = np.diff(xe), np.diff(ye) / np.diff(xe)                     # interval widths and secant slopes
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(d[:-1] * d[1:] > 0, (w1 + w2) / (w1 / d[:-1] + w2 / d[1:]), 0.0)
    xs, ys, ss = np.append(x, x[0] + 1.0), np.append(y, y[0]), np.append(slope, slope[0])
    uu = np.where(u % 1.0 < x[0], u % 1.0 + 1.0, u % 1.0)
    i = np.clip(np.searchsorted(xs, uu, side="right") - 1, 0, len(x) - 1)
    width = xs[i + 1] - xs[i]
    s = (uu - xs[i]) / width
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    return h00 * ys[i] + h10 * width * ss[i] + h01 * ys[i + 1] + h11 * width * ss[i + 1]


def gait_curves(u: np.ndarray, person: Person) -> dict[str, np.ndarray]:
    """Boulic trajectories at normalised phase u (T,) for the right side (the left side uses u + 0.5).

    Angles in radians, offsets in metres (tables of docs/microdoppler.md, section 4). Gaits b (0.5 <= RV < 1.3) and
    c (RV >= 1.3) are written as one formula: k = max(0, (RV-1.3)/1.7) and m = min(1, (RV-0.5)/0.8), which is
    each published gait on its own range and continuous at RV = 1.3.
    """
    rv = person.rel_speed
    k, m = max(0.0, (rv - 1.3) / 1.7), min(1.0, (rv - 0.5) / 0.8)
    support = person.support
    two_pi, deg = 2 * np.pi, np.pi / 180
    a_v, a_s, a_roll = 0.015 * rv, 9.88 * rv * person.arm_gain, 1.66 * rv
    c = {
        "z": -a_v + a_v * np.sin(two_pi * (2 * u - 0.35)),              # vertical pelvis offset
        "y": -0.032 * np.sin(two_pi * (u - 0.1)),                       # lateral sway
        "x": -0.021 * np.sin(two_pi * (2 * u + 2 * (0.625 - support))),  # forward/back surge
        "pitch": deg * (-2 + 2 * np.sin(two_pi * (2 * u - 0.1))),       # trunk pitch, negative leans forward
        "pelvis_yaw": deg * (-4 * rv * np.cos(two_pi * u)),
        "shoulder": deg * (3 - a_s / 2 - a_s * np.cos(two_pi * u)),     # + swings the arm forward
    }
    uu = u % 1.0                                                        # pelvis roll: four cosine pieces
    roll = np.select([uu < 0.15, uu < 0.5, uu < 0.65],
                     [-a_roll + a_roll * np.cos(two_pi * 10 * uu / 3),
                      -a_roll - a_roll * np.cos(two_pi * 10 * (uu - 0.15) / 7),
                      a_roll - a_roll * np.cos(two_pi * 10 * (uu - 0.5) / 3)],
                     a_roll + a_roll * np.cos(two_pi * 10 * (uu - 0.65) / 7))
    c["pelvis_roll"] = deg * roll
    # Joint flexion control points (phase, degrees), docs/microdoppler.md, section 4.
    hip = [(0.2 * k - 0.1, 5 * k + 25), (0.5, -15), (0.9, 6 * k + 25)]
    knee = [(0.17 - 0.05 * k, 22 * k + 3), (0.4, 3), (0.75 - 0.05 * k, 70 - 5 * k), (1.0 - 0.03 * k, 3 * k + 3)]
    ankle = [(0.0, 5 * k - 3), (0.08, 4 * k - 18), (0.5 - 0.1 * k, 8 - 3 * k), (support, -8 * k - 20),
             (0.85, 5 * k - 3)]
    elbow = [(0.05, 8 * m + 6 - 6 * k), (0.5 + 0.01 * m + 0.04 * k, 24 * m + 20 + 26 * k),
             (0.9 - 0.1 * k, 9 * m + 8 - 6 * k)]
    thorax = [(0.1, 4 * rv / 3), (0.4, -1.5 * rv), (0.6, -4 * rv / 3), (0.9, 1.5 * rv)]
    c["hip"] = deg * periodic_pchip(u, hip)
    c["knee"] = deg * person.knee_gain * periodic_pchip(u, knee)
    c["ankle"] = deg * periodic_pchip(u, ankle)
    c["elbow"] = deg * person.arm_gain * periodic_pchip(u, elbow)
    c["thorax_yaw"] = deg * periodic_pchip(u, thorax)
    return c


def _sagittal(angle: np.ndarray, x: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """R(angle) (x, z): rotation in the sagittal plane; a positive angle swings (0, -L) forward to (L sin, -L cos)."""
    return x * np.cos(angle) - z * np.sin(angle), x * np.sin(angle) + z * np.cos(angle)


def _xz(xz: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, float, np.ndarray]:
    """A sagittal-plane (x, z) pair as an (x, 0, z) vector."""
    return xz[0], 0.0, xz[1]


def _rotate(p: np.ndarray, roll: np.ndarray | float, yaw: np.ndarray, pitch: np.ndarray | float = 0.0) -> np.ndarray:
    """Rotate points p (3, ..., T) about the pelvis origin: pitch about y, then roll about x, then yaw about z;
    angles are scalars or (T,) arrays."""
    x, z = _sagittal(pitch, p[0], p[2])
    y, z = p[1] * np.cos(roll) - z * np.sin(roll), p[1] * np.sin(roll) + z * np.cos(roll)
    return np.stack([x * np.cos(yaw) - y * np.sin(yaw), x * np.sin(yaw) + y * np.cos(yaw), z])


def boulic_points(person: Person, t: np.ndarray, phase: float = 0.0, raise_m: float | None = None
                  ) -> dict[str, np.ndarray]:
    """Joint positions (3, T) of Boulic's model at times t (T,) seconds, in the body frame: x forward, y left, z up,
    origin on the ground under the pelvis at rest. The pelvis carries the gait's periodic offsets but no forward
    progression, and sits raise_m (default: the leg length Ht) above the ground. Both sides are computed at once:
    side axis 0 = right (phase u), 1 = left (phase u + 0.5).
    """
    H = person.height_m
    u = t / person.cycle_s + phase
    g = gait_curves(np.stack([u, u + 0.5]), person)                   # each curve (2, T): right, left
    trunk = {name: curve[0] for name, curve in g.items()}              # the pelvis and trunk follow the right phase
    side = np.array([-1.0, 1.0])[:, None]                              # y sign: right side at -y
    zeros = np.zeros_like(g["hip"])

    def vec(x, y, z):
        return np.stack(np.broadcast_arrays(x, y, z))                  # (3, 2, T)

    # Leg (docs/microdoppler.md, section 5): hip -> knee -> ankle -> toe in the sagittal plane, then the pelvis
    # roll and yaw.
    hip = vec(zeros, side * HIP * H, zeros)
    knee = hip + vec(*_xz(_sagittal(g["hip"], 0.0, -THIGH * H)))
    ankle = knee + vec(*_xz(_sagittal(g["hip"] - g["knee"], 0.0, -SHANK * H)))
    toe = ankle + vec(*_xz(_sagittal(g["hip"] - g["knee"] + g["ankle"], FOOT * H, 0.0)))
    leg = _rotate(np.stack([hip, knee, ankle, toe], axis=1), -trunk["pelvis_roll"], trunk["pelvis_yaw"])
    # Arm: shoulder -> elbow -> hand, then the trunk pitch and thorax yaw about the pelvis origin.
    shoulder = vec(zeros, side * SHOULDER * H, TORSO * H)
    elbow = shoulder + vec(*_xz(_sagittal(g["shoulder"], 0.0, -UPPER_ARM * H)))
    hand = elbow + vec(*_xz(_sagittal(g["shoulder"] + g["elbow"], 0.0, -FOREARM * H)))
    axial = vec(zeros, zeros, np.array([TORSO * H, (TORSO + HEAD) * H])[:, None])   # neck, head top
    upper = _rotate(np.stack([shoulder, elbow, hand, axial], axis=1), 0.0, trunk["thorax_yaw"], trunk["pitch"])
    joints = {"neck": upper[:, 3, 0], "head_top": upper[:, 3, 1]}
    for i, s in enumerate(("r", "l")):
        for j, name in enumerate(("hip", "knee", "ankle", "toe")):
            joints[f"{s}_{name}"] = leg[:, j, i]
        for j, name in enumerate(("shoulder", "elbow", "hand")):
            joints[f"{s}_{name}"] = upper[:, j, i]
    joints["pelvis"] = np.zeros_like(joints["neck"])
    height = person.leg_length_m if raise_m is None else raise_m
    offset = np.stack([trunk["x"], trunk["y"], height + trunk["z"]])  # pelvis offsets, raised by Ht
    return {name: p + offset for name, p in joints.items()}


# ----------------------------------------------------------------------------------------------------------------
# Ground contact (docs/microdoppler.md, section 6): the stance foot rolls on the floor, knees by inverse kinematics
# ----------------------------------------------------------------------------------------------------------------
def _sole_axes(pitch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (3, T) along the sole (heel -> toe) and normal to it (up), for sole pitch (T,) in radians
    (positive: toe up), in the sagittal (x, z) plane."""
    zero = np.zeros_like(pitch)
    return np.stack([np.cos(pitch), zero, np.sin(pitch)]), np.stack([-np.sin(pitch), zero, np.cos(pitch)])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """3 x^2 - 2 x^3 on [0, 1], 0 below, 1 above: a ramp with zero slope at both ends."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _knee(hip: np.ndarray, ankle: np.ndarray, thigh: float, shank: float) -> np.ndarray:
    """The knee (3, T) that joins a thigh from `hip` and a shank to `ankle` (3, T), bent forward: the two-link
    inverse kinematics in the plane of the leg and the body's forward axis x. Needs |ankle - hip| <= thigh + shank."""
    leg = ankle - hip
    dist = np.linalg.norm(leg, axis=0)
    e = leg / dist
    along = (thigh**2 - shank**2 + dist**2) / (2 * dist)               # law of cosines: hip -> knee along the leg
    across = np.sqrt(np.maximum(thigh**2 - along**2, 0.0))
    forward = np.array([1.0, 0.0, 0.0])[:, None] - e * e[0]            # x, made orthogonal to the leg
    forward /= np.linalg.norm(forward, axis=0)
    return hip + along * e + across * forward


def body_points(person: Person, t: np.ndarray, phase: float = 0.0, ground_contact: bool = False
                ) -> dict[str, np.ndarray]:
    """Joint positions (3, T) at times t (T,) in the body frame (boulic_points), plus the scattering points
    (segment midpoints). With ground_contact the legs obey the floor (docs/microdoppler.md, section 6):

    * the pelvis sits at the leg length plus the ankle height (a straight leg then stands on its heel);
    * each foot is a rigid heel-ankle-toe triangle whose sole has Boulic's pitch; from heel strike (phase 0) to
      toe-off (phase Ds/Dc) it rolls on the floor without slipping: on the heel, planted where Boulic's heel is at
      heel strike, while the toe is up, then on the toe once the heel lifts;
    * in swing the foot follows Boulic's path plus an offset: horizontally the toe-off mismatch (planted minus
      Boulic's foot) fades over the swing (half cosine); vertically it fades over the first SWING_RAMP of the swing,
      and Boulic's heel is brought onto the floor over the last SWING_RAMP; a foot that would still dip below the
      floor is lifted;
    * the whole body is lowered wherever a hip could not reach its ankle with the knee bent MIN_KNEE_DEG (a smooth
      minimum of the hip-ankle distance); the knees come from two-link inverse kinematics (thigh and shank keep
      their lengths).
    """
    joints = _ground_contact(person, t, phase) if ground_contact else boulic_points(person, t, phase)
    for s in ("r", "l"):
        joints[f"{s}_upper_arm_mid"] = (joints[f"{s}_shoulder"] + joints[f"{s}_elbow"]) / 2
        joints[f"{s}_thigh_mid"] = (joints[f"{s}_hip"] + joints[f"{s}_knee"]) / 2
        joints[f"{s}_shank_mid"] = (joints[f"{s}_knee"] + joints[f"{s}_ankle"]) / 2
    joints["torso_mid"] = (joints["pelvis"] + joints["neck"]) / 2
    return joints


def _ground_contact(person: Person, t: np.ndarray, phase: float) -> dict[str, np.ndarray]:
    """boulic_points with the legs replaced as body_points describes (adds "r_heel" and "l_heel")."""
    H, V, cycle, support = person.height_m, person.speed_mps, person.cycle_s, person.support
    heel_to_ankle, sole = ANKLE_HEIGHT * H, math.sqrt((FOOT * H) ** 2 - (ANKLE_HEIGHT * H) ** 2)
    tilt = math.atan2(heel_to_ankle, sole)                 # the ankle -> toe line points this far below the sole
    raise_m = person.leg_length_m + heel_to_ankle
    x_axis, floor = np.array([1.0, 0.0, 0.0])[:, None], np.array([1.0, 1.0, 0.0])[:, None]

    def boulic_foot(side: str, b: dict, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boulic's heel (3, T) in the ground frame (the body frame moved forward by V t) and sole pitch (T,), from
        boulic_points b at times."""
        ankle, toe = b[f"{side}_ankle"] + x_axis * (V * times), b[f"{side}_toe"] + x_axis * (V * times)
        pitch = np.arctan2(toe[2] - ankle[2], toe[0] - ankle[0]) + tilt
        return ankle - heel_to_ankle * _sole_axes(pitch)[1], pitch

    def stance_heel(plant: np.ndarray, pitch: np.ndarray) -> np.ndarray:
        """Heel of a foot planted with its heel at `plant`: rolling on the heel while pitch >= 0, on the toe (at
        plant + sole * x) once pitch < 0."""
        return plant + sole * (x_axis - _sole_axes(np.minimum(pitch, 0.0))[0])

    joints = boulic_points(person, t, phase, raise_m)
    ground = {name: p + x_axis * (V * t) for name, p in joints.items()}
    feet = {}
    for side, offset in (("r", 0.0), ("l", 0.5)):
        u = t / cycle + phase + offset
        cycle_index = np.floor(u)
        stance = u - cycle_index < support
        cycles = np.arange(cycle_index.min(), cycle_index.max() + 2)   # every cycle in view, and the next one
        strikes = (cycles - phase - offset) * cycle                     # their heel strikes and toe-offs
        lift_offs = strikes + support * cycle
        heel_on_b = boulic_foot(side, boulic_points(person, strikes, phase, raise_m), strikes)[0]
        heel_off_b, pitch_off = boulic_foot(side, boulic_points(person, lift_offs, phase, raise_m), lift_offs)
        j = (cycle_index - cycles[0]).astype(np.int64)                   # each instant's cycle
        plant = heel_on_b * floor                                       # heel contact: Boulic's heel on the floor
        lift_gap = stance_heel(plant, pitch_off) - heel_off_b           # planted minus Boulic's heel at toe-off
        land_gap = plant - heel_on_b                                    # Boulic's heel put on the floor at strike
        heel_b, pitch = boulic_foot(side, joints, t)
        tau = (u - cycle_index - support) / (1 - support)              # 0 at toe-off, 1 at the next heel strike
        fade = np.stack([(1 + np.cos(np.pi * tau)) / 2] * 2 + [1 - _smoothstep(tau / SWING_RAMP)])   # x, y, z
        rise = _smoothstep((tau - 1) / SWING_RAMP + 1)                  # 0 until the last SWING_RAMP, then up to 1
        swing = heel_b + fade * lift_gap[:, j] + rise * land_gap[:, j + 1]
        heel = np.where(stance, stance_heel(plant[:, j], pitch), swing)
        along, normal = _sole_axes(pitch)
        heel[2] += np.maximum(0.0, -np.minimum(heel[2], heel[2] + sole * along[2]))   # never below the floor
        feet[side] = (heel, normal, along)
    # Lower the body wherever a hip cannot reach its ankle with the knee bent at least MIN_KNEE_DEG: the hip-ankle
    # distance d becomes smooth_min(d, d_max) (no kink, so the knee angle from the inverse kinematics has no jump in
    # speed), and the hip height follows as ankle height + sqrt(d^2 - rho^2), rho the horizontal distance.
    d_max = math.sqrt(THIGH**2 + SHANK**2 + 2 * THIGH * SHANK * math.cos(math.radians(MIN_KNEE_DEG))) * H
    drop = np.zeros_like(t)
    for side, (heel, normal, _) in feet.items():
        leg = ground[f"{side}_hip"] - (heel + heel_to_ankle * normal)
        d = np.linalg.norm(leg, axis=0)
        target = (d + d_max - np.sqrt((d - d_max) ** 2 + KNEE_SMOOTH_M**2)) / 2
        rho2 = leg[0] ** 2 + leg[1] ** 2
        drop = np.minimum(drop, np.sqrt(target**2 - rho2) - leg[2])
    for p in ground.values():
        p[2] += drop
    for side, (heel, normal, along) in feet.items():
        hip = ground[f"{side}_hip"]
        ankle = heel + heel_to_ankle * normal
        ground[f"{side}_heel"], ground[f"{side}_ankle"] = heel, ankle
        ground[f"{side}_toe"] = heel + sole * along
        ground[f"{side}_knee"] = _knee(hip, ankle, THIGH * H, SHANK * H)
    return {name: p - x_axis * (V * t) for name, p in ground.items()}


def world_points(person: Person, draws: Draws, radar: Radar, t: np.ndarray, ground_contact: bool = False
                 ) -> dict[str, np.ndarray]:
    """Joint positions (3, T) in the world at times t (T,): radar at (0, 0, radar.height_m), the walker starting
    `start_range_m` away on the +x axis and walking at V = RV * Ht towards it (or away from it), turned by
    `heading_deg`."""
    walker = draws.apply(person)
    body = body_points(walker, t, draws.phase, ground_contact)
    psi = math.radians(draws.heading_deg)
    sign = 1.0 if draws.away else -1.0                                 # +x walks away from the radar
    forward = np.array([sign * math.cos(psi), math.sin(psi), 0.0])
    left = np.array([-math.sin(psi), sign * math.cos(psi), 0.0])      # z x forward
    up = np.array([0.0, 0.0, 1.0])
    track = np.array([draws.start_range_m, 0.0, 0.0])[:, None] + forward[:, None] * (walker.speed_mps * t)
    return {name: track + forward[:, None] * p[0] + left[:, None] * p[1] + up[:, None] * p[2]
            for name, p in body.items()}


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
    pts = world_points(person, draws, radar, t, body.ground_contact)
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
    pts = world_points(person, draws, Radar(), t, body.ground_contact)
    return float(max(np.linalg.norm(np.diff(p, axis=1), axis=0).max() / 1e-3 for p in pts.values()))


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


# The Butterworth MTI starts from rest, and its response to the static return switching on needs about 950 pulses to
# fall by 80 dB (at cutoff 0.0075 of Nyquist, whatever the PRF). A radar filters continuously, so the simulated walk
# starts this many pulses before t = 0 and the filtered signal is kept from t = 0 on.
MTI_SETTLE_PULSES = 1024


def _mti_butterworth(signal: np.ndarray) -> np.ndarray:
    """The MTI of real data (ldm.radar.chain.mti_highpass: 4th-order Butterworth high-pass, cutoff 0.0075 of Nyquist,
    i.e. 0.0075 * v_max in velocity)."""
    from ldm.radar.chain import mti_highpass
    return mti_highpass(signal, order=4, cutoff=0.0075, axis=0)


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


def fmcw_iq(person: Person, draws: Draws, radar: Radar = Radar(), rng: np.random.Generator | None = None,
            body: Body = Body(), bandwidth_hz: float = 400e6, samples_per_chirp: int = 128,
            clutter_range_m: float = 10.0) -> np.ndarray:
    """Raw dechirped FMCW I/Q of the walk, complex128 (chirps, samples_per_chirp): the input of ldm.radar's chain
    (ldm.radar.chain.iq_spectrogram with FmcwRadar(carrier_hz, bandwidth_hz, 1 / PRF, PRF)).

    One chirp per pulse (N = duration * PRF chirps, back to back: each lasts 1 / PRF and sweeps bandwidth_hz
    about radar.carrier_hz). During chirp m every scatterer sits at its range R_k(t_m) with amplitude a_k g_k
    (`_tracks`, interpolated to t_m as in `echo`), and ldm.radar.chain.fmcw_beat_signal gives the beat signal
    sum_k a_k exp(j 2 pi (f_b,k t + 2 R_k / lambda)), f_b,k = 2 R_k B / (c T_chirp): ranges sit in range-FFT bin
    R / (c / 2B) (0.375 m at 400 MHz). The static clutter (radar.clutter_db re the body's mean power) is one point
    at clutter_range_m; complex white noise at draws.snr_db per fast-time sample. No MTI here: the chain applies
    it (radar.mti is ignored).
    """
    from ldm.radar.chain import fmcw_beat_signal
    rng = np.random.default_rng(0) if rng is None else rng
    n, chirp_s = radar.num_pulses, 1.0 / radar.prf_hz
    ranges, amps = _tracks(person, draws, radar, body, rng, 0)
    i0, frac = _pulse_grid(n, radar)
    ranges = ranges[:, i0] * (1 - frac) + ranges[:, i0 + 1] * frac  # (P, N) at the chirps
    amps = amps[:, i0] * (1 - frac) + amps[:, i0 + 1] * frac
    iq = fmcw_beat_signal(ranges.T, amps.T, radar.carrier_hz, bandwidth_hz, chirp_s, samples_per_chirp)
    power = np.mean(np.abs(iq) ** 2)
    if radar.clutter_db is not None:
        amplitude = math.sqrt(power * 10 ** (radar.clutter_db / 10)) * np.exp(2j * np.pi * rng.random())
        iq = iq + fmcw_beat_signal(np.full((n, 1), clutter_range_m), np.array([amplitude]), radar.carrier_hz,
                                   bandwidth_hz, chirp_s, samples_per_chirp)
    noise_var = power / 10 ** (draws.snr_db / 10)
    return iq + math.sqrt(noise_var / 2) * (rng.standard_normal(iq.shape) + 1j * rng.standard_normal(iq.shape))


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


def velocity_axis(size: int, radar: Radar = Radar()) -> np.ndarray:
    """Radial velocity (m/s, positive = approaching) of each image row (size,), top row first."""
    n_fft = _stft_length(size)
    step = 2 * radar.max_velocity_mps / n_fft
    v = (n_fft / 2 - 1 - np.arange(n_fft)) * step
    return v.reshape(64, 2).mean(axis=1) if size == 64 else v


def frame_times(size: int, radar: Radar = Radar()) -> np.ndarray:
    """Centre time (s) of each image column (size,)."""
    n_fft = _stft_length(size)
    n = radar.num_pulses
    centres = (np.round(np.linspace(0, n - n_fft, n_fft)) + n_fft / 2) / radar.prf_hz
    return centres.reshape(64, 2).mean(axis=1) if size == 64 else centres


def simulate_spectrogram(person: Person, draws: Draws, radar: Radar = Radar(), size: int = 128,
                         rng: np.random.Generator | None = None, body: Body = Body()) -> np.ndarray:
    """One (size, size) float32 spectrogram in dB re its max, in [-radar.dynamic_range_db, 0].

    rng supplies the noise, clutter phase and amplitude jitter; default: numpy.random.default_rng(0).
    """
    _stft_length(size)
    return spectrogram_db(echo(person, draws, radar, rng, body), size, radar)


def db_to_uint8(db: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """Map dB in [-dynamic_range_db, 0] linearly to 0..255 (the PNG encoding)."""
    return np.round((db + dynamic_range_db) / dynamic_range_db * 255).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------
def _metadata(people: list[Person], seed: int, spacing: float, size: int, radar: Radar, profile: Profile) -> dict:
    v = velocity_axis(size, radar)
    frames = frame_times(size, radar)
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
    }


def simulate_dataset(users: int = 8, per_user: int = 64, size: int = 128, seed: int = 0,
                     spacing: float | None = None, radar: Radar | None = None, progress: bool = False,
                     profile: str = "classic") -> tuple[np.ndarray, np.ndarray, dict]:
    """Simulate `per_user` spectrograms for each of `users` people of a profile (PROFILES; spacing and radar
    default to the profile's).

    Returns (spectrograms, labels, metadata): spectrograms (users * per_user, size, size) float32 in dB re each
    image's max, within [-radar.dynamic_range_db, 0] (map to [-1, 1] with db / dynamic_range * 2 + 1); labels
    (N,) int64 person indices, user-major order; metadata as written to metadata.json (profile, people and draws).
    ValueError, before anything is simulated, if a limb of any person would alias (check_span).
    """
    prof = get_profile(profile)
    spacing = prof.spacing if spacing is None else spacing
    radar = prof.radar if radar is None else radar
    if users < 1 or per_user < 1:
        raise ValueError(f"need users >= 1 and per_user >= 1, got {users}, {per_user}")
    if radar.num_pulses < _stft_length(size):
        raise ValueError(f"duration * PRF must give at least {_stft_length(size)} pulses for size {size}, "
                         f"got {radar.num_pulses}")
    from tqdm import tqdm
    people = [make_person(k, seed, spacing) for k in range(users)]
    check_span(people, prof, radar, spacing)
    meta = _metadata(people, seed, spacing, size, radar, prof)
    out = np.empty((users * per_user, size, size), np.float32)
    labels = np.repeat(np.arange(users, dtype=np.int64), per_user)
    bar = tqdm(total=users * per_user, desc="simulating", unit="spec", disable=not progress)
    for k, person in enumerate(people):
        for i in range(per_user):
            rng = np.random.default_rng([seed, SAMPLE_STREAM, k, i])   # sample i of person k: its own stream
            draws = prof.draw(rng)
            out[k * per_user + i] = simulate_spectrogram(person, draws, radar, size, rng, prof.body)
            meta["samples"].append({"file": f"user_{k:02d}/{i:04d}", "user": k, "index": i,
                                    "stream": [seed, SAMPLE_STREAM, k, i], **asdict(draws)})
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
def _config_class():
    """The CLI's options as an ldm.training config dataclass (imported here: the simulator itself needs only numpy)."""
    from ldm.cli import option

    @dataclass
    class SimulateConfig:
        out: str | None = option(None, "output folder, written atomically (must be empty or absent; --overwrite "
                                       "replaces an earlier simulator output); required")
        profile: str = option("classic", "simulator profile: classic (the original, easy: 95-99.5%% identification "
                                         "of 8 people) or realistic (ground contact, several scatterers per "
                                         "segment, R^-4, clutter + Butterworth MTI, walking towards or away: "
                                         "75%% for 10 people, inside the 70-85%% of real radar data)",
                              choices=tuple(PROFILES))
        users: int = option(8, "number of simulated people (one subfolder each)", at_least=1, at_most=1000)
        per_user: int = option(64, "spectrograms per person", at_least=1, at_most=100000)
        size: int = option(128, "image side in pixels (velocity x time)", choices=SIZES)
        seed: int = option(0, "seeds both the person table and the per-sample nuisance", at_least=0)
        spacing: float | None = option(None, "how different the people are: scales every identity range (height, "
                                             "speed, arm swing, cadence, knee flexion) about its centre; 1 = the "
                                             "full population ranges; smaller is harder, larger easier; default: "
                                             f"the profile's (classic {PROFILES['classic'].spacing}, realistic "
                                             f"{PROFILES['realistic'].spacing})", above=0, at_most=MAX_SPACING)
        carrier_ghz: float | None = option(None, "radar carrier frequency in GHz; default 24. Without --prf the PRF "
                                                 "is chosen from it to keep the profile's velocity span (classic "
                                                 "+-6.25 m/s, realistic +-8 m/s): PRF = 4 * span / wavelength",
                                           at_least=0.1, at_most=1000)
        prf: float | None = option(None, "pulse (chirp) repetition frequency in Hz; the image spans +-PRF*lambda/4 "
                                         "m/s, which must hold every limb of every person (an error otherwise). "
                                         "Default: the profile's (classic 2000 Hz, realistic 2562 Hz at 24 GHz), or "
                                         "chosen from --carrier-ghz", above=0, at_most=1e6)
        duration: float | None = option(None, "seconds of walking per spectrogram; default 2.56", above=0,
                                        at_most=60)
        dynamic_range: float | None = option(None, "dB below each image's maximum kept in the image; default 50",
                                             above=0, at_most=200)
        clutter_db: float | None = option(None, "static zero-Doppler return, power in dB re the mean body echo; "
                                                "default: the profile's (classic: none; realistic: 20)",
                                          at_least=-100, at_most=100)
        mti: str | None = option(None, "moving-target-indicator filter against static clutter: none, two-pulse "
                                       "(s[n] - s[n-1]) or butterworth (4th order, normalised cutoff 0.0075, as in "
                                       "the Glasgow data set's processing); default: the profile's (classic: none; "
                                       "realistic: butterworth)", choices=MTI_FILTERS)
        overwrite: bool = option(False, "replace an earlier simulator output in --out")
        quiet: bool = option(False, "no progress bar")

    return SimulateConfig


def radar_from_options(profile: Profile, carrier_ghz: float | None = None, prf: float | None = None,
                       duration: float | None = None, dynamic_range: float | None = None,
                       clutter_db: float | None = None, mti: str | None = None) -> Radar:
    """The profile's radar with the CLI's overrides. A new carrier without a PRF keeps the profile's velocity span:
    PRF = prf_for_span(carrier, profile span), so the image is the same in m/s at any carrier."""
    radar = profile.radar
    changes = {"duration_s": duration, "dynamic_range_db": dynamic_range, "clutter_db": clutter_db, "mti": mti,
               "prf_hz": prf}
    if carrier_ghz is not None:
        changes["carrier_hz"] = carrier_ghz * 1e9
        if prf is None:
            changes["prf_hz"] = prf_for_span(carrier_ghz * 1e9, radar.max_velocity_mps)
    return replace(radar, **{k: v for k, v in changes.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    from ldm.cli import parse_config
    cfg = parse_config(_config_class(), argv,
                       "Simulate radar micro-Doppler spectrograms of walking people (Boulic-Thalmann gait model, "
                       "ellipsoid scatterers, STFT) into OUT/user_XX/NNNN.png + .npy and OUT/metadata.json.",
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
