"""Test-set defects of the newest held-out demo surfaces, drawn by code written apart from every defect
the detectors train or choose on: numpy, scipy and PIL only, no function shared with `synthetic` (the
restorer's training defects), `probe_defects` (its map choice) or the other surfaces' defects in `demo`.

Each function takes the grey surface (H, W) float32 on the demo's grey scale (mean about 120) and a
numpy Generator, and returns (grey, mask (H, W) bool). Sizes scale with H, so a defect covers the same
fraction of the image at every size; several are small on purpose (MVTec AD's cracks and pits often
cover under 1 % of the image):

* crack: a dark, thin, wandering line (a random walk of short steps, 1.5 px wide at 128 px), ~0.5-1.5 %;
* spots: a cluster of small bright or dark dots (contamination), ~0.3-1 %;
* dent:  a round depression lit from one side (one half brighter, the other darker), ~2-5 %;
* fade:  a polygon whose texture contrast is mostly lost and which is a little lighter (wear), ~1-3 %.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Drawn = Tuple[np.ndarray, np.ndarray]


def _centre(rng: np.random.Generator, size: int, reach: float) -> np.ndarray:
    """(x, y) of a defect whose parts stay within `reach` px of it, inside the image with a margin."""
    lo = size * 0.08 + reach
    return rng.uniform(lo, size - lo, 2) if lo < size / 2 else np.full(2, size / 2)


def crack(grey: np.ndarray, rng: np.random.Generator) -> Drawn:
    size = grey.shape[0]
    steps, step = int(rng.integers(25, 40)), size / 96
    heading = rng.uniform(0, 2 * np.pi)
    turns = np.cumsum(rng.normal(0, 0.35, steps))  # a wandering, not a straight, path
    path = np.cumsum(step * np.stack([np.cos(heading + turns), np.sin(heading + turns)], 1), 0)
    path += _centre(rng, size, np.abs(path).max()) - path.mean(0)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in path], fill=255, width=max(1, round(1.5 * size / 128)))
    line = np.asarray(canvas, dtype=np.float32) / 255
    return grey - rng.uniform(70, 100) * line, line > 0.5


def spots(grey: np.ndarray, rng: np.random.Generator) -> Drawn:
    size = grey.shape[0]
    spread, n = 0.08 * size, int(rng.integers(4, 9))
    centre = _centre(rng, size, spread)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dots = np.zeros((size, size), np.float32)
    for x, y in centre + rng.uniform(-spread, spread, (n, 2)):
        r = rng.uniform(1.0, 2.2) * size / 128
        dots = np.maximum(dots, np.clip(r + 0.5 - np.hypot(xx - x, yy - y), 0, 1))  # antialiased disc
    sign = rng.choice([-1.0, 1.0])
    return grey + sign * rng.uniform(70, 100) * dots, dots > 0.5


def dent(grey: np.ndarray, rng: np.random.Generator) -> Drawn:
    size = grey.shape[0]
    radius = rng.uniform(0.08, 0.12) * size
    x0, y0 = _centre(rng, size, radius)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bowl = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * (radius / 2) ** 2))
    light = rng.uniform(0, 2 * np.pi)
    gy, gx = np.gradient(bowl)
    shade = (gx * np.cos(light) + gy * np.sin(light)) * radius  # one side lit, the other in shadow
    shade /= np.abs(shade).max()
    return grey + rng.uniform(45, 65) * shade, np.abs(shade) > 0.25


def fade(grey: np.ndarray, rng: np.random.Generator) -> Drawn:
    size = grey.shape[0]
    radius = rng.uniform(0.10, 0.15) * size
    # Wear shows where there is texture to lose: the most contrasted of six candidate places.
    contrast = ndimage.uniform_filter(grey ** 2, radius) - ndimage.uniform_filter(grey, radius) ** 2
    x0, y0 = max((_centre(rng, size, radius) for _ in range(6)), key=lambda c: contrast[int(c[1]), int(c[0])])
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 9))))
    reach = radius * rng.uniform(0.6, 1.0, len(angles))
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([(x0 + r * np.cos(a), y0 + r * np.sin(a)) for a, r in zip(angles, reach)],
                                   fill=255)
    mask = np.asarray(canvas) > 0
    if not mask.any():
        mask[int(y0), int(x0)] = True
    mean, keep = grey[mask].mean(), rng.uniform(0.0, 0.2)  # 80-100 % of the contrast is lost
    soft = ndimage.uniform_filter(mask.astype(np.float32), 3)
    return grey - soft * ((1 - keep) * (grey - mean) - rng.uniform(8, 14)), mask


DEFECTS: Dict[str, Callable[[np.ndarray, np.random.Generator], Drawn]] = {
    "crack": crack, "spots": spots, "dent": dent, "fade": fade}

__all__ = ["DEFECTS", "crack", "spots", "dent", "fade"]
