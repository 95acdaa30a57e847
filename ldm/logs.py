"""What a training run leaves behind to read: its log (one JSON object per line), loss curves and sample grids.

    JsonlLog        log.jsonl: append one record per step or evaluation; read back, cut back to a checkpoint's step
    plot_curves     loss.png: curves of logged keys against the step
    image_grid      samples.png: rows of images side by side; to_uint8 maps [-1, 1] to 8-bit
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldm import files


class JsonlLog:
    """Append one JSON object per line (metrics of a step, an evaluation, ...)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as error:
                raise files.WriteError(self.path, error.strerror or str(error)) from error

    def read(self) -> list[dict]:
        """The records; a last line cut short (the process was killed while appending it) is left out."""
        if not self.path.is_file():
            return []
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{self.path}: line {number} is not a JSON record") from None
        return records

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps after the checkpoint (they will be redone)."""
        if self.enabled and self.path.is_file():
            kept = [r for r in self.read() if r.get("step", 0) <= step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            files.atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8; one channel stays one channel."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(rows: list[torch.Tensor], pad: int = 2) -> Image.Image:
    """A grid PNG: each entry of ``rows`` is a (N, C, H, W) batch in [-1, 1] drawn as one row."""
    arrays = [to_uint8(r) for r in rows]
    n = max(a.shape[0] for a in arrays)
    h, w, c = arrays[0].shape[1:]
    grid = np.full((len(arrays) * (h + pad) + pad, n * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, row in enumerate(arrays):
        for j, image in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[top:top + h, left:left + w] = image
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def plot_curves(records: list[dict], keys: list[str], path: str | os.PathLike, title: str = "",
                size: tuple[int, int] = (720, 400)) -> None:
    """A small line chart of ``keys`` against ``step`` (log-scale y when all values are positive), as PNG."""
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    series = {k: [(r["step"], r[k]) for r in records if k in r and r[k] is not None and math.isfinite(r[k])]
              for k in keys}
    series = {k: v for k, v in series.items() if v}
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 70, width - 150, 30, height - 40
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    if not series:
        draw.text((left + 10, top + 10), "no data yet", fill=(0, 0, 0))
        files.save_image(image, path)
        return
    values = [v for s in series.values() for _, v in s]
    steps = [t for s in series.values() for t, _ in s]
    log_y = min(values) > 0
    transform = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    y_lo, y_hi = transform(min(values)), transform(max(values))
    y_hi = y_hi if y_hi > y_lo else y_lo + 1.0
    x_lo, x_hi = min(steps), max(steps)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def point(step, value):
        x = left + (step - x_lo) / (x_hi - x_lo) * (right - left)
        y = bottom - (transform(value) - y_lo) / (y_hi - y_lo) * (bottom - top)
        return x, y

    for i, (key, points) in enumerate(series.items()):
        color = colors[i % len(colors)]
        xy = [point(t, v) for t, v in points]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        else:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=color)
        draw.text((right + 10, top + 16 * i), key, fill=color)
    for frac in (0.0, 0.5, 1.0):
        value = y_lo + frac * (y_hi - y_lo)
        label = f"{10 ** value:.3g}" if log_y else f"{value:.3g}"
        draw.text((5, bottom - frac * (bottom - top) - 6), label, fill=(0, 0, 0))
    draw.text((left, bottom + 8), f"step {x_lo}", fill=(0, 0, 0))
    draw.text((right - 60, bottom + 8), f"step {x_hi}", fill=(0, 0, 0))
    files.save_image(image, path)
