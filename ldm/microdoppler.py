"""A walking-person radar micro-Doppler simulator (numpy only): the project's built-in dataset.

Pipeline (model, sources and tested facts: docs/microdoppler.md):

    Person (height, relative speed, arm swing, cadence, knee flexion)       fixed per simulated person
      + Draws (gait phase, heading, start range, SNR, small jitters)        drawn per sample
      -> Boulic-Thalmann gait model (Boulic et al. 1990, as coded by V.C. Chen): 12 body points over time
      -> prolate-ellipsoid RCS, echo exp(-j 4 pi R / lambda), complex noise at the PRF
      -> STFT, 10 log10 |S|^2, minus the image max, clipped to [-dynamic_range, 0] dB
      -> (size, size) image: rows = Doppler velocity (approaching, i.e. positive, on top), columns = time.

Identity and nuisance come from two separate random streams keyed by integers, so person k and sample i of
person k are the same whatever the number of users or samples per user:
    person k:            numpy.random.default_rng([seed, PERSON_STREAM, k])   (plus a seed-wide Halton design)
    sample i of person k: numpy.random.default_rng([seed, SAMPLE_STREAM, k, i])

Bugs of public ports that this file avoids (docs/microdoppler.md, section 9): bulk speed is V = RV * Ht in m/s (not RV);
the cycle lasts Dc = RLc / RV seconds; pelvis roll is 1.66 * RV degrees; the upper arm uses the upper-arm length;
the PRF (2 kHz at 24 GHz, +-6.25 m/s) does not alias limb Doppler; the gait-c elbow uses (RV - 1.3); the duplicate
gait-b hip control point is merged; the upper-body rotation uses each elbow's current position.

CLI: python -m ldm.microdoppler --out DIR --users 8 --per-user 64 --size 128 --seed 0
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
PERSON_STREAM, SAMPLE_STREAM = 0, 1
SIZES = (64, 128, 256)


# ----------------------------------------------------------------------------------------------------------------
# Configuration: the radar, a person, one sample's nuisance draws
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Radar:
    """A CW / pulse-Doppler radar at the origin, `height_m` above the ground, and the image it renders.

    Defaults (docs/microdoppler.md, sections 2 and 7): 24 GHz, PRF 2 kHz -> unambiguous velocity
    +-PRF*lambda/4 = +-6.25 m/s; 2.56 s of data (about two gait cycles); a 50 dB display range below each image's
    maximum.
    """
    carrier_hz: float = 24e9
    prf_hz: float = 2000.0
    duration_s: float = 2.56
    height_m: float = 1.0
    dynamic_range_db: float = 50.0
    kinematics_hz: float = 250.0     # body evaluated on this coarse grid, ranges interpolated to the PRF
    clutter_db: float | None = None  # static zero-Doppler return, power relative to the mean body echo
    mti: bool = False                # two-pulse canceller s[n] - s[n-1] (removes the static return)

    def __post_init__(self):
        for name in ("carrier_hz", "prf_hz", "duration_s", "dynamic_range_db", "kinematics_hz"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Radar.{name} must be > 0, got {getattr(self, name)}")

    @property
    def wavelength_m(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_hz

    @property
    def max_velocity_mps(self) -> float:
        """Unambiguous radial velocity span is [-v_max, v_max), v_max = PRF * lambda / 4."""
        return self.prf_hz * self.wavelength_m / 4.0


@dataclass(frozen=True)
class Person:
    """Identity parameters of one simulated walker (docs/microdoppler.md, section 8)."""
    height_m: float        # H; every segment length is a fixed fraction of H
    rel_speed: float       # RV = V / Ht in 1/s, Ht = 0.491 H the leg length; Boulic gait b/c needs 0.5 <= RV <= 3
    arm_gain: float        # multiplies the shoulder swing amplitude and the elbow flexion
    cadence_gain: float    # multiplies the cycle duration Dc at fixed speed (long slow strides vs short quick ones)
    knee_gain: float       # multiplies the knee flexion curve

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


@dataclass(frozen=True)
class Draws:
    """Within-person nuisance of one sample (docs/microdoppler.md, section 8). `Draws()` is the nuisance-free walk."""
    phase: float = 0.0            # gait phase at t = 0, in cycles [0, 1)
    heading_deg: float = 0.0      # walking direction vs the line of sight; 0 = straight at the radar
    start_range_m: float = 8.0    # ground distance to the radar at t = 0
    snr_db: float = 30.0          # mean body echo power over noise power, per PRF sample
    speed_factor: float = 1.0     # multiplies RV (within-person speed variation)
    arm_factor: float = 1.0       # multiplies the arm gain
    cadence_factor: float = 1.0   # multiplies the cadence gain

    def apply(self, person: Person) -> Person:
        """The person as they walk in this sample (jitters applied)."""
        return replace(person, rel_speed=person.rel_speed * self.speed_factor,
                       arm_gain=person.arm_gain * self.arm_factor,
                       cadence_gain=person.cadence_gain * self.cadence_factor)


# Identity ranges at spacing 1, the population ranges of docs/microdoppler.md, section 8: (low, high). The spacing
# option scales every range about its centre. The default 0.65 is calibrated so that the evaluation CNN (ldm.metrics,
# default ClassifierConfig, 32 training samples per person) tells the 8 default people apart on held-out samples
# with 95-99.5% accuracy (48 held-out samples per person, 64x64): measured 97.7%, 97.9%, 98.2% for seeds 0, 1, 2;
# at seed 0, spacing 0.5 gives 92.4%, 0.6 97.9%, 0.7 99.0%, 1.0 99.7%.
IDENTITY_RANGES = {"height_m": (1.55, 1.95), "rel_speed": (0.8, 1.6), "arm_gain": (0.6, 1.4),
                   "cadence_gain": (0.93, 1.07), "knee_gain": (0.9, 1.1)}
DEFAULT_SPACING = 0.65
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
    if index < 0 or spacing <= 0 or spacing > 2.5:
        raise ValueError(f"need index >= 0 and 0 < spacing <= 2.5, got index={index}, spacing={spacing}")
    shift = np.random.default_rng([seed, PERSON_STREAM]).random(len(HALTON_BASES))
    own = np.random.default_rng([seed, PERSON_STREAM, index])
    unit = {name: (_halton(index + 1, base) + s) % 1.0 for (name, base), s in zip(HALTON_BASES.items(), shift)}
    unit["knee_gain"] = own.random()
    traits = {}
    for name, (low, high) in IDENTITY_RANGES.items():
        traits[name] = (low + high) / 2 + spacing * (unit[name] - 0.5) * (high - low)
    traits["rel_speed"] = float(np.clip(traits["rel_speed"], 0.55, 2.5))   # stay inside Boulic gaits b/c
    return Person(**{k: float(v) for k, v in traits.items()})


def draw_nuisance(rng: np.random.Generator) -> Draws:
    """One sample's nuisance from its own stream (ranges of docs/microdoppler.md, section 8)."""
    return Draws(phase=rng.random(), heading_deg=rng.uniform(-15.0, 15.0), start_range_m=rng.uniform(6.0, 10.0),
                 snr_db=rng.uniform(15.0, 30.0), speed_factor=1.0 + 0.02 * rng.standard_normal(),
                 arm_factor=1.0 + 0.05 * rng.standard_normal(), cadence_factor=1.0 + 0.01 * rng.standard_normal())


# ----------------------------------------------------------------------------------------------------------------
# Boulic-Thalmann walking model (docs/microdoppler.md, sections 3-5)
# ----------------------------------------------------------------------------------------------------------------
# Segment lengths as fractions of the height H (docs/microdoppler.md, section 5).
HEAD, TORSO, SHOULDER, UPPER_ARM, FOREARM = 0.130, 0.288, 0.1295, 0.188, 0.152
HIP, THIGH, SHANK, FOOT = 0.0955, 0.245, 0.246, 0.143
# The 12 scatterers: (name, segment start joint, segment end joint, scattering point, ellipsoid radius a in m).
# The third semi-axis is c = |end - start| / 2 along the segment (docs/microdoppler.md, section 6).
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
    support = 0.752 - 0.143 / person.cycle_s                            # Ds / Dc, relative support duration
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


def body_points(person: Person, t: np.ndarray, phase: float = 0.0) -> dict[str, np.ndarray]:
    """Joint positions (3, T) at times t (T,) seconds, in the body frame: x forward, y left, z up, origin on the
    ground under the pelvis at rest. The pelvis carries the gait's periodic offsets but no forward progression.
    Both sides are computed at once: side axis 0 = right (phase u), 1 = left (phase u + 0.5).
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
    joints = {"neck": upper[:, 3, 0], "head_top": upper[:, 3, 1], "torso_mid": upper[:, 3, 0] / 2}
    for i, s in enumerate(("r", "l")):
        for j, name in enumerate(("hip", "knee", "ankle", "toe")):
            joints[f"{s}_{name}"] = leg[:, j, i]
        for j, name in enumerate(("shoulder", "elbow", "hand")):
            joints[f"{s}_{name}"] = upper[:, j, i]
        joints[f"{s}_upper_arm_mid"] = (joints[f"{s}_shoulder"] + joints[f"{s}_elbow"]) / 2
        joints[f"{s}_thigh_mid"] = (joints[f"{s}_hip"] + joints[f"{s}_knee"]) / 2
        joints[f"{s}_shank_mid"] = (joints[f"{s}_knee"] + joints[f"{s}_ankle"]) / 2
    joints["pelvis"] = np.zeros_like(joints["neck"])
    offset = np.stack([trunk["x"], trunk["y"], person.leg_length_m + trunk["z"]])  # pelvis offsets, raised by Ht
    return {name: p + offset for name, p in joints.items()}


def world_points(person: Person, draws: Draws, radar: Radar, t: np.ndarray) -> dict[str, np.ndarray]:
    """Joint positions (3, T) in the world at times t (T,): radar at (0, 0, radar.height_m), the walker starting
    `start_range_m` away on the +x axis and walking at V = RV * Ht towards it, turned by `heading_deg`."""
    walker = draws.apply(person)
    body = body_points(walker, t, draws.phase)
    psi = math.radians(draws.heading_deg)
    forward = np.array([-math.cos(psi), math.sin(psi), 0.0])
    left = np.array([-math.sin(psi), -math.cos(psi), 0.0])           # z x forward
    up = np.array([0.0, 0.0, 1.0])
    track = np.array([draws.start_range_m, 0.0, 0.0])[:, None] + forward[:, None] * (walker.speed_mps * t)
    return {name: track + forward[:, None] * p[0] + left[:, None] * p[1] + up[:, None] * p[2]
            for name, p in body.items()}


def echo(person: Person, draws: Draws, radar: Radar, rng: np.random.Generator) -> np.ndarray:
    """Complex baseband slow-time signal (N,), N = duration * PRF (docs/microdoppler.md, sections 2 and 6):
    s(t) = sum_k sqrt(sigma_k(t)) * g_k(t) * exp(-j 4 pi R_k(t) / lambda) + clutter + noise,
    sigma_k the prolate-ellipsoid RCS at the current aspect, g_k a slow +-10% amplitude jitter.
    The body is evaluated every 1 / kinematics_hz seconds and R_k, sqrt(sigma_k) are linearly interpolated
    to the PRF grid before the exponential (the speed trick of docs/microdoppler.md, section 2)."""
    n = int(round(radar.duration_s * radar.prf_hz))
    t_coarse = np.arange(int(math.ceil(radar.duration_s * radar.kinematics_hz)) + 2) / radar.kinematics_hz
    pts = world_points(person, draws, radar, t_coarse)
    radar_pos = np.array([0.0, 0.0, radar.height_m])[:, None]
    start, end, point = (np.stack([pts[s[i]] for s in SCATTERERS]) for i in (1, 2, 3))   # (K, 3, T) each
    a = np.array([s[4] for s in SCATTERERS])[:, None]                 # (K, 1) ellipsoid radii
    axis = end - start                                                 # segment axes
    los = point - radar_pos                                            # radar -> scatterer
    ranges = np.linalg.norm(los, axis=1)                               # (K, T)
    length = np.linalg.norm(axis, axis=1)
    cos2 = (np.sum(axis * los, axis=1) / (length * ranges)) ** 2       # cos^2 of the aspect angle
    c = length / 2                                                     # semi-axis along the segment
    sigma = np.pi * a**4 * c**2 / (a**2 * (1 - cos2) + c**2 * cos2) ** 2
    amps = np.sqrt(sigma)                                              # (K, T)
    k = len(SCATTERERS)
    freq, offset = rng.uniform(0.2, 1.0, (k, 1)), rng.uniform(0, 2 * np.pi, (k, 1))
    amps = amps * (1 + 0.1 * np.sin(2 * np.pi * freq * t_coarse + offset))
    # Echo phase 4 pi R / lambda = (phase at t = 0, mod 2 pi) + (change since t = 0): the change stays below a few
    # thousand radians, so float32 holds it to ~1e-3 rad and cos/sin run about 20x faster than in float64.
    wavenumber = 4 * np.pi / radar.wavelength_m
    phase0 = np.remainder(wavenumber * ranges[:, :1], 2 * np.pi).astype(np.float32)       # (K, 1)
    dphase = (wavenumber * (ranges - ranges[:, :1])).astype(np.float32)                  # (K, T_coarse)
    amps = amps.astype(np.float32)
    pos = np.arange(n) * (radar.kinematics_hz / radar.prf_hz)        # PRF sample times on the coarse grid
    i0 = pos.astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    phase = phase0 + dphase[:, i0] * (1 - frac) + dphase[:, i0 + 1] * frac              # (K, N) linear in R
    amp = amps[:, i0] * (1 - frac) + amps[:, i0 + 1] * frac
    signal = (np.sum(amp * np.cos(phase), axis=0) - 1j * np.sum(amp * np.sin(phase), axis=0)).astype(np.complex128)
    power = np.mean(np.abs(signal) ** 2)
    if radar.clutter_db is not None:
        signal = signal + math.sqrt(power * 10 ** (radar.clutter_db / 10)) * np.exp(2j * np.pi * rng.random())
    noise_var = power / 10 ** (draws.snr_db / 10)
    signal = signal + math.sqrt(noise_var / 2) * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    if radar.mti:
        signal = np.diff(signal, prepend=signal[:1])                   # two-pulse canceller
    return signal


# ----------------------------------------------------------------------------------------------------------------
# STFT -> image (docs/microdoppler.md, section 7)
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
    n = int(round(radar.duration_s * radar.prf_hz))
    centres = (np.round(np.linspace(0, n - n_fft, n_fft)) + n_fft / 2) / radar.prf_hz
    return centres.reshape(64, 2).mean(axis=1) if size == 64 else centres


def simulate_spectrogram(person: Person, draws: Draws, radar: Radar = Radar(), size: int = 128,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """One (size, size) float32 spectrogram in dB re its max, in [-radar.dynamic_range_db, 0].

    rng supplies the noise and amplitude jitter; default: numpy.random.default_rng(0).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    return spectrogram_db(echo(person, draws, radar, rng), size, radar)


def db_to_uint8(db: np.ndarray, dynamic_range_db: float) -> np.ndarray:
    """Map dB in [-dynamic_range_db, 0] linearly to 0..255 (the PNG encoding)."""
    return np.round((db + dynamic_range_db) / dynamic_range_db * 255).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------
def _sample(user: int, index: int, person: Person, seed: int, radar: Radar, size: int) -> tuple[np.ndarray, Draws]:
    rng = np.random.default_rng([seed, SAMPLE_STREAM, user, index])   # sample i of person k: its own stream
    draws = draw_nuisance(rng)
    return simulate_spectrogram(person, draws, radar, size, rng), draws


def _metadata(people: list[Person], seed: int, spacing: float, size: int, radar: Radar) -> dict:
    return {
        "format": "ldm.microdoppler v1: user_XX/NNNN.png = uint8 of (dB + dynamic_range) / dynamic_range; "
                  "user_XX/NNNN.npy = float32 dB re image max in [-dynamic_range, 0]; rows = velocity "
                  "(approaching on top), columns = time",
        "seed": seed, "spacing": spacing, "size": size, "radar": asdict(radar),
        "wavelength_m": radar.wavelength_m, "max_velocity_mps": radar.max_velocity_mps,
        "velocity_top_mps": float(velocity_axis(size, radar)[0]),
        "velocity_step_mps": float(velocity_axis(size, radar)[0] - velocity_axis(size, radar)[1]),
        "frame_rate_hz": float(1 / (frame_times(size, radar)[1] - frame_times(size, radar)[0])),
        "people": [{"user": f"user_{k:02d}", "label": k, **asdict(p), "speed_mps": p.speed_mps, "cycle_s": p.cycle_s,
                    "cadence_steps_per_s": p.cadence_steps_per_s} for k, p in enumerate(people)],
        "samples": [],
    }


def simulate_dataset(users: int = 8, per_user: int = 64, size: int = 128, seed: int = 0,
                     spacing: float = DEFAULT_SPACING, radar: Radar = Radar(),
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Simulate `per_user` spectrograms for each of `users` people.

    Returns (spectrograms, labels, metadata): spectrograms (users * per_user, size, size) float32 in dB re each
    image's max, within [-radar.dynamic_range_db, 0] (map to [-1, 1] with db / dynamic_range * 2 + 1); labels
    (N,) int64 person indices, user-major order; metadata as written to metadata.json (people and draws).
    """
    if users < 1 or per_user < 1:
        raise ValueError(f"need users >= 1 and per_user >= 1, got {users}, {per_user}")
    _stft_length(size)
    from tqdm import tqdm
    people = [make_person(k, seed, spacing) for k in range(users)]
    meta = _metadata(people, seed, spacing, size, radar)
    out = np.empty((users * per_user, size, size), np.float32)
    labels = np.repeat(np.arange(users, dtype=np.int64), per_user)
    bar = tqdm(total=users * per_user, desc="simulating", unit="spec", disable=not progress)
    for k, person in enumerate(people):
        for i in range(per_user):
            out[k * per_user + i], draws = _sample(k, i, person, seed, radar, size)
            meta["samples"].append({"file": f"user_{k:02d}/{i:04d}", "user": k, "index": i,
                                    "stream": [seed, SAMPLE_STREAM, k, i], **asdict(draws)})
            bar.update()
    bar.close()
    return out, labels, meta


def write_dataset(out_dir: str | Path, users: int = 8, per_user: int = 64, size: int = 128, seed: int = 0,
                  spacing: float = DEFAULT_SPACING, radar: Radar = Radar(), overwrite: bool = False,
                  progress: bool = True) -> dict:
    """Simulate and write out_dir/user_XX/NNNN.png (8-bit grayscale) and .npy (float32 dB) plus metadata.json.

    Refuses a non-empty out_dir unless overwrite=True and the folder holds an earlier simulator output
    (whose listed files are then removed first). Returns the metadata dict.
    """
    from PIL import Image
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        old = out / "metadata.json"
        if not overwrite:
            raise ValueError(f"{out} is not empty; choose a new folder or pass overwrite=True (--overwrite)")
        if not old.is_file():
            raise ValueError(f"{out} is not empty and holds no metadata.json; overwrite only replaces an earlier "
                             "simulator output")
        for sample in json.loads(old.read_text())["samples"]:
            for ext in (".png", ".npy"):
                (out / (sample["file"] + ext)).unlink(missing_ok=True)
    specs, labels, meta = simulate_dataset(users, per_user, size, seed, spacing, radar, progress)
    for k in range(users):
        (out / f"user_{k:02d}").mkdir(parents=True, exist_ok=True)
    for db, sample in zip(specs, meta["samples"]):
        Image.fromarray(db_to_uint8(db, radar.dynamic_range_db), mode="L").save(out / (sample["file"] + ".png"))
        np.save(out / (sample["file"] + ".npy"), db)
    (out / "metadata.json").write_text(json.dumps(meta, indent=1))
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ldm.microdoppler",
        description="Simulate radar micro-Doppler spectrograms of walking people (Boulic-Thalmann gait model, "
                    "ellipsoid scatterers, STFT) into DIR/user_XX/NNNN.png + .npy and DIR/metadata.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--users", type=int, default=8, help="number of simulated people (one subfolder each)")
    p.add_argument("--per-user", type=int, default=64, help="spectrograms per person")
    p.add_argument("--size", type=int, default=128, choices=SIZES, help="image side in pixels (velocity x time)")
    p.add_argument("--seed", type=int, default=0, help="seeds both the person table and the per-sample nuisance")
    p.add_argument("--spacing", type=float, default=DEFAULT_SPACING,
                   help="how different the people are: scales every identity range (height, speed, arm swing, "
                        "cadence, knee flexion) about its centre; 1 = the full population ranges, the default is "
                        "calibrated for 95-99.5%% identification of 8 people; smaller is harder, larger easier; "
                        "max 2.5")
    p.add_argument("--carrier-ghz", type=float, default=24.0, help="radar carrier frequency")
    p.add_argument("--prf", type=float, default=2000.0,
                   help="pulse repetition frequency (Hz); the image spans +-PRF*lambda/4 m/s")
    p.add_argument("--duration", type=float, default=2.56, help="seconds of walking per spectrogram")
    p.add_argument("--dynamic-range", type=float, default=50.0, help="dB below each image's maximum kept in the image")
    p.add_argument("--clutter-db", type=float, default=None, help="add a static return this many dB re the body echo")
    p.add_argument("--mti", action="store_true", help="apply a two-pulse canceller (removes static clutter)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier simulator output in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        radar = Radar(carrier_hz=args.carrier_ghz * 1e9, prf_hz=args.prf, duration_s=args.duration,
                      dynamic_range_db=args.dynamic_range, clutter_db=args.clutter_db, mti=args.mti)
        if radar.duration_s * radar.prf_hz < _stft_length(args.size):
            raise ValueError(f"--duration * --prf must give at least {_stft_length(args.size)} samples")
        start = time.perf_counter()
        meta = write_dataset(args.out, args.users, args.per_user, args.size, args.seed, args.spacing, radar,
                             args.overwrite, progress=not args.quiet)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    n = len(meta["samples"])
    print(f"wrote {n} spectrograms ({args.users} users x {args.per_user}, {args.size}x{args.size}) to {args.out} "
          f"in {seconds:.1f} s ({n / seconds:.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
