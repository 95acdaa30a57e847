"""The walking body: a person's identity traits, one walk's nuisance draws, the Boulic-Thalmann gait model, the feet
on the floor, and the body's points in the world (numpy only; docs/microdoppler.md, sections 3-7 and 9).

    Person (height, relative speed, arm swing, cadence, knee flexion)       fixed per simulated person
      + Draws (gait phase, direction, heading, start range, jitters)         drawn per walk
      -> gait_curves: Boulic et al. 1990's joint trajectories (as coded by V.C. Chen), gaits b and c in one formula
      -> boulic_points: joints in the body frame; body_points: optionally the feet planted on the floor (ground
         contact) and the knees by inverse kinematics
      -> world_points: the walker placed, turned and moving in the world (the radar sits at the origin)

Bugs of public ports that this file avoids (docs/microdoppler.md, section 10): bulk speed is V = RV * Ht in m/s (not
RV); the cycle lasts Dc = RLc / RV seconds; pelvis roll is 1.66 * RV degrees; the upper arm uses the upper-arm length;
the gait-c elbow uses (RV - 1.3); the duplicate gait-b hip control point is merged; the upper-body rotation uses each
elbow's current position. What the radar sees of these points: ldm.radar.echo.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


# ----------------------------------------------------------------------------------------------------------------
# A person, one walk's draws, and how the body scatters
# ----------------------------------------------------------------------------------------------------------------
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
    """Within-person nuisance of one walk (docs/microdoppler.md, section 9). `Draws()` is the nuisance-free walk.
    snr_db and rcs_db are for the echo (ldm.radar.echo), the rest for the body."""
    phase: float = 0.0            # gait phase at t = 0, in cycles [0, 1)
    heading_deg: float = 0.0      # walking direction vs the line of sight; 0 = straight at (or away from) the radar
    start_range_m: float = 8.0    # ground distance to the radar at t = 0
    snr_db: float = 30.0          # classic echo: mean body echo power over noise power, per PRF sample
    rcs_db: float = 0.0           # FMCW echo: the body's RCS offset (dB) against the fixed noise floor
    speed_factor: float = 1.0     # multiplies RV (within-person speed variation)
    arm_factor: float = 1.0       # multiplies the arm gain
    cadence_factor: float = 1.0   # multiplies the cadence gain
    away: bool = False            # walking away from the radar (negative Doppler) instead of towards it

    def __post_init__(self):
        if not -90 < self.heading_deg < 90:
            raise ValueError(f"Draws.heading_deg must lie in (-90, 90) degrees, got {self.heading_deg}")
        if not 0 < self.start_range_m < 1000:
            raise ValueError(f"Draws.start_range_m must lie in (0, 1000) m, got {self.start_range_m}")
        for name in ("snr_db", "rcs_db"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"Draws.{name} must be finite, got {getattr(self, name)}")

    def apply(self, person: Person) -> Person:
        """The person as they walk in this sample (jitters applied; the result is checked like any Person)."""
        return replace(person, rel_speed=person.rel_speed * self.speed_factor,
                       arm_gain=person.arm_gain * self.arm_factor,
                       cadence_gain=person.cadence_gain * self.cadence_factor)


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


def world_points(person: Person, draws: Draws, t: np.ndarray, ground_contact: bool = False) -> dict[str, np.ndarray]:
    """Joint positions (3, T) in the world at times t (T,), the ground at z = 0 below the radar (x = y = 0), the
    walker starting
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
