"""`dataset="photos"`: a natural-image development set for the CIFAR method, built offline from photos that
ship with scikit-image and matplotlib: 32x32 crops, one class per photo, the training crops and the test
crops from disjoint regions of each photo (so a test crop never overlaps a training one), spread over
the whole photo (so the test crops show the same kinds of content as the training ones).

Why: on scikit-learn's digits an untrained network already separates the classes (AUROC 0.997-0.998),
so the digits cannot show whether training helps or whether the method beats its floors (issue 26).

The photos are none of those kept for an independent check (scikit-image's astronaut, camera, chelsea,
coffee, coins, rocket, brick, page, moon, hubble_deep_field; scikit-learn's china and flower). Each is
read in colour (grey photos as three equal channels) and resized so its shorter side is `SHORT_SIDE` px,
then cut into `TILE` px tiles: one tile in four (a diagonal pattern) is a test tile, the others are
training tiles, and every crop lies inside one tile. The crops' places are drawn with a fixed seed
(`PHOTOS_SEED`), whatever the run's seed, as the digits' split is.
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import numpy as np
import torch
from PIL import Image

# scikit-image's clock is left out: its flat grey background makes most crops blank.
PHOTOS: Tuple[str, ...] = ("cell", "colorwheel", "grace_hopper", "grass", "gravel", "immunohistochemistry",
                           "logo", "retina", "text")
SHORT_SIDE = 256  # px: a 32 px crop sees a part of the photo, not the whole
TILE = 64  # px: the training and test regions' unit
CROPS = {"train": 300, "test": 100}  # crops per class and split
PHOTOS_SEED = 0


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8, resized so the shorter side is SHORT_SIDE px (alpha dropped, grey repeated)."""
    if name == "grace_hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
            img = img.convert("RGB")
            img.load()
    else:
        from skimage import data as skdata

        arr = getattr(skdata, name)()
        img = Image.fromarray(arr).convert("RGB")  # grey -> 3 equal channels; RGBA -> RGB
    scale = SHORT_SIDE / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def is_test_tile(row: int, col: int) -> bool:
    """One tile in four is a test tile, on a diagonal pattern (no two test tiles share a side)."""
    return (row + 2 * col) % 4 == 0


def crops(name: str, split: str, size: int = 32) -> torch.Tensor:
    """(N, 3, size, size) uint8 crops of photo `name`, each inside one tile of `split` ("train" or "test")."""
    arr = photo(name)
    h, w = arr.shape[:2]
    tiles = [(r, c) for r in range(h // TILE) for c in range(w // TILE) if is_test_tile(r, c) == (split == "test")]
    g = np.random.default_rng([PHOTOS_SEED, PHOTOS.index(name), 0 if split == "train" else 1])
    picks, offsets = g.integers(0, len(tiles), CROPS[split]), g.integers(0, TILE - size + 1, (CROPS[split], 2))
    out = np.stack([arr[tiles[i][0] * TILE + dy:tiles[i][0] * TILE + dy + size,
                        tiles[i][1] * TILE + dx:tiles[i][1] * TILE + dx + size] for i, (dy, dx) in zip(picks, offsets)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (N, 3, size, size)


def load_photos() -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{"train" | "test": (uint8 images (N, 3, 32, 32), class indices (N,))}, classes in PHOTOS order (sorted)."""
    out = {}
    for split in CROPS:
        images = [crops(name, split) for name in PHOTOS]
        out[split] = (torch.cat(images), torch.cat([torch.full((len(x),), i) for i, x in enumerate(images)]).long())
    return out


__all__ = ["PHOTOS", "SHORT_SIDE", "TILE", "CROPS", "PHOTOS_SEED", "photo", "is_test_tile", "crops", "load_photos"]
