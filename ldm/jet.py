"""Jet-coloured spectrogram images (matplotlib's "jet", the common published format) back to levels.

A jet rendering's luma is not monotonic in the level it shows, so reading one as grey levels scrambles the
spectrogram. ldm.data reads an image with colormap="jet" through decode_jet (each pixel -> the level of its nearest
jet colour) and refuses a jet image read without it (refuse_jet_as_luma).

    jet, jet_lut            the colour map from its definition (JET_KNOTS) and its 256-colour table
    nearest_jet_colour      each distinct pixel colour's nearest jet colour and distance
    decode_jet              jet pixels -> levels in [0, 1]
    refuse_jet_as_luma      the error, with the hint, for a jet image read as grey levels
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


# matplotlib's "jet" colour map, from its definition: each channel is piecewise linear in x in [0, 1] through
# these (x, value) knots. Blue rises from dark blue, green then red follow, and red falls to dark red at the top.
JET_KNOTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
# An image is not a jet rendering when its median pixel is farther than this from every jet colour (Euclidean, RGB
# in [0, 1]). Measured on simulated spectrograms at 64-256 px: jet PNGs 0, jet JPEGs (quality 50-95) up to 0.16
# (chroma subsampling smears colour edges), greyscale saved as RGB 0.42-0.50, a viridis-like map 0.30-0.39. ("hot"
# shares jet's reds and yellows and cannot be told apart this way.)
JET_TOLERANCE = 0.25


def jet(x: np.ndarray) -> np.ndarray:
    """Jet colours of levels x in [0, 1] (any shape) -> (..., 3) RGB in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    return np.stack([np.interp(x, *zip(*JET_KNOTS[c])) for c in ("red", "green", "blue")], axis=-1)


def jet_lut(levels: int = 256) -> np.ndarray:
    """The (levels, 3) colour table of jet in [0, 1]: entry i is jet(i / (levels - 1)), as matplotlib builds it; a
    plot maps a level v in [0, 1] to entry min(floor(v * levels), levels - 1)."""
    return jet(np.arange(levels) / (levels - 1))


def nearest_jet_colour(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> (index of the nearest jet colour among the distinct 8-bit ones, per distinct pixel colour;
    that colour's distance in RGB [0, 1] units, per distinct pixel colour; the pixels' index into the distinct
    colours)."""
    table = np.round(jet_lut() * 255)                                   # (256, 3)
    colours = np.unique(table, axis=0)                                  # (U, 3): jet's flat run repeats a colour
    pixels, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)        # (P, 3) distinct colours
    p, c = pixels.astype(np.float64), colours
    squared = (p * p).sum(1)[:, None] - 2 * p @ c.T + (c * c).sum(1)[None]              # (P, U) |p - c|^2
    nearest = squared.argmin(axis=1)
    distance = np.sqrt(np.maximum(squared[np.arange(len(p)), nearest], 0)) / 255        # (P,) in RGB [0, 1] units
    return nearest, distance, inverse.reshape(-1)


def decode_jet(rgb: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 jet-coloured pixels -> (H, W) levels in [0, 1]: the index of the nearest of the 256 jet
    colours (8-bit, as a PNG stores them) / 255; colours that 8 bits cannot tell apart decode to their mean index.
    A ValueError naming ``path`` when the median pixel is farther than JET_TOLERANCE from every jet colour."""
    nearest, distance, inverse = nearest_jet_colour(rgb)
    typical = np.median(distance[inverse])
    if typical > JET_TOLERANCE:
        raise ValueError(f"{path}: colormap='jet' but its median pixel is {typical:.2f} from the nearest jet colour "
                         f"(jet images: below {JET_TOLERANCE}); greyscale saved as RGB, or another colour map?")
    _, group = np.unique(np.round(jet_lut() * 255), axis=0, return_inverse=True)   # jet's flat run repeats a colour
    group = group.reshape(-1)
    level = np.bincount(group, weights=np.arange(256)) / np.bincount(group) / 255   # (U,) mean index / 255
    return level[nearest][inverse].reshape(rgb.shape[:2])


# A colour image counts as coloured (not greyscale saved as RGB) when its median pixel's channels differ by more
# than this many 8-bit levels, and as a jet rendering when, besides, its pixels use at least JET_MIN_COLOURS of
# jet's colours (a spectrogram spans many levels; a flat red or blue picture is not one).
COLOURED_SPREAD = 16
JET_MIN_COLOURS = 16


def refuse_jet_as_luma(rgb: np.ndarray, path: Path) -> None:
    """ValueError with the --colormap hint when a colour image read as levels (no colormap) is a jet rendering:
    coloured, with its median pixel within JET_TOLERANCE of a jet colour and many jet colours in use. Its luma would
    not be monotonic in the level, so training on it would learn a scrambled spectrogram."""
    spread = np.median(rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1))
    if spread <= COLOURED_SPREAD:
        return
    nearest, distance, inverse = nearest_jet_colour(rgb)
    if np.median(distance[inverse]) <= JET_TOLERANCE and len(np.unique(nearest[inverse])) >= JET_MIN_COLOURS:
        raise ValueError(f"{path}: a jet-coloured image (its pixels are jet colours), read as grey levels; pass "
                         "--colormap jet (colormap='jet') to map the colours back to levels: jet's luma is not "
                         "monotonic in the level")
