"""Physics of a micro-Doppler spectrogram: the kinematic features a walking person leaves in it (torso velocity,
Doppler envelopes, bandwidth, cadence), and the axes (m/s per row, frames per second) they are measured on.

    physics_features          the features of one spectrogram in dB
    batch_physics_features    the same for a batch of [-1, 1] images
    spectrogram_axes          the velocity of each row and the frame rate, from metadata.json or given
    simulator_metadata        the metadata.json that ldm.radar's simulator or converter wrote into a data folder
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def physics_features(db: np.ndarray, velocities: np.ndarray, frame_rate_hz: float,
                     threshold_db: float = -25.0) -> dict[str, float]:
    """Kinematic summary of one spectrogram db: (F, T) in dB (rows = velocities (F,) m/s, columns at frame_rate_hz).

    Pixels within `threshold_db` of the image maximum count as body returns. Returns
      torso_velocity_mps   power-weighted Doppler centroid of those pixels (all body parts average to the
                           walking speed over whole cycles; the strongest, the torso, sits there throughout)
      upper_envelope_mps   95th percentile over frames of the highest body velocity (peak foot velocity)
      lower_envelope_mps   5th percentile over frames of the lowest body velocity
      bandwidth_mps        mean over frames of (highest - lowest body velocity)
      cadence_steps_per_s  1 / the dominant period of the image's column autocorrelation (steps, i.e. half
                           gait cycles), searched between 1 and 3.3 steps/s, parabolic peak interpolation
    """
    db = np.asarray(db, dtype=np.float64)
    if db.ndim != 2 or db.shape[0] != len(velocities):
        raise ValueError(f"need db (F, T) with F = len(velocities) = {len(velocities)}, got {db.shape}")
    db = db - db.max()
    body = db >= threshold_db
    power = np.where(body, 10 ** (db / 10), 0.0)
    torso = float((power * velocities[:, None]).sum() / power.sum())
    has = body.any(axis=0)
    top = velocities[np.argmax(body, axis=0)][has]                     # first body row from the top, per frame
    bottom = velocities[len(velocities) - 1 - np.argmax(body[::-1], axis=0)][has]
    # Cadence: autocorrelation over time lags of the clipped, row-centred image.
    x = np.maximum(db, threshold_db - 15)
    x = x - x.mean(axis=1, keepdims=True)
    n = x.shape[1]
    lo, hi = max(2, int(frame_rate_hz / 3.3)), min(int(frame_rate_hz / 1.0), n - n // 4)
    cadence = float("nan")
    if hi - lo >= 3:
        ac = np.array([np.sum(x[:, :n - lag] * x[:, lag:]) / (n - lag) for lag in range(hi + 2)])
        lag = lo + int(np.argmax(ac[lo:hi]))
        a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
        offset = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) < 0 else 0.0
        cadence = frame_rate_hz / (lag + offset)
    return {"torso_velocity_mps": torso, "upper_envelope_mps": float(np.percentile(top, 95)),
            "lower_envelope_mps": float(np.percentile(bottom, 5)), "bandwidth_mps": float(np.mean(top - bottom)),
            "cadence_steps_per_s": cadence}


def simulator_metadata(folder) -> dict | None:
    """The metadata.json that ldm.radar.simulator (which lists the "people") or ldm.radar's converter (which gives the axes,
    "velocity_step_mps") writes into a data folder, or None when the folder has none or some other tool's."""
    path = Path(folder) / "metadata.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return meta if isinstance(meta, dict) and ("people" in meta or "velocity_step_mps" in meta) else None


def spectrogram_axes(meta: dict | None, height: int, width: int, v_max: float | None = None,
                     duration: float | None = None) -> tuple[np.ndarray, float] | None:
    """The velocity of each of the ``height`` rows (top row first, m/s) and the frame rate of the ``width`` columns
    (1/s) of an image resized from a data folder: from ``v_max``/``duration`` when given (rows span
    [-v_max, v_max], columns ``duration`` seconds), else from the simulator's metadata.json dict ``meta``; None
    when neither is known."""
    if v_max is not None and duration is not None:
        top, bottom, seconds = v_max, -v_max, duration
    elif meta is not None and "velocity_step_mps" in meta:
        step = meta["velocity_step_mps"]
        rows, columns = meta.get("height", meta.get("size")), meta.get("width", meta.get("size"))   # radar: H x W
        top = meta["velocity_top_mps"] + step / 2                      # edge of the top row
        bottom = top - step * rows
        seconds = columns / meta["frame_rate_hz"]
    else:
        return None
    rows = top - (np.arange(height) + 0.5) * (top - bottom) / height
    return rows, width / seconds


def batch_physics_features(x: torch.Tensor, axes: tuple[np.ndarray, float], dynamic_range_db: float,
                           threshold_db: float = -25.0) -> list[dict[str, float]]:
    """physics_features of every image of x: (N, C, H, W) in [-1, 1], mapped back to dB (x = -1 is
    -dynamic_range_db, x = 1 is 0 dB; channels averaged). axes: (velocities (H,), frame rate) as from
    spectrogram_axes."""
    velocities, frame_rate = axes
    db = ((x.mean(dim=1) + 1) / 2 * dynamic_range_db - dynamic_range_db).numpy()
    return [physics_features(d, velocities, frame_rate, threshold_db) for d in db]
