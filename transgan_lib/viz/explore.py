"""Data exploration for notebook 01: counts per split and defect type, original image sizes and
channel modes, pixel statistics, sample grids and masks overlaid.

Shape letters: B images, C channels, H, W height and width.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from ..data.mvtec import MVTecAD


def dataset_summary(train: MVTecAD, test: MVTecAD) -> Dict[str, Any]:
    """Counts, original sizes / modes (read from file headers) and channel statistics."""
    sizes, modes = Counter(), Counter()
    for p in list(train.paths) + list(test.paths):
        with Image.open(p) as im:  # header only: cheap
            sizes[f"{im.width}x{im.height}"] += 1
            modes[im.mode] += 1
    pixels = torch.stack([train[i]["image"] for i in range(len(train))])  # (B, 3, H, W) at image_size
    mask_area = [float(test[i]["mask"].mean()) for i in range(len(test)) if test.labels[i] == 1]
    return {
        "category": train.root.name,
        "counts": {"train/good": len(train), **{f"test/{k}": v for k, v in sorted(Counter(test.defects).items())}},
        "defect_types": list(test.defect_types),
        "original_sizes": dict(sizes),
        "modes": dict(modes),
        "train_channel_mean": [float(v) for v in pixels.mean(dim=(0, 2, 3))],
        "train_channel_std": [float(v) for v in pixels.std(dim=(0, 2, 3))],
        "defect_area_fraction": {"mean": float(np.mean(mask_area)) if mask_area else None,
                                 "min": float(np.min(mask_area)) if mask_area else None,
                                 "max": float(np.max(mask_area)) if mask_area else None},
    }


def plot_counts(summary: Dict[str, Any]) -> Figure:
    counts = summary["counts"]
    fig = Figure(figsize=(7, 3))
    ax = fig.add_subplot()
    ax.bar(list(counts), list(counts.values()), color=["tab:green" if "good" in k else "tab:red" for k in counts])
    ax.set_ylabel("images")
    ax.set_title(f"{summary['category']}: images per split and defect type")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def plot_mask_overlays(dataset: MVTecAD, indices: Sequence[int], ncols: int = 6) -> Figure:
    """Images with their ground-truth mask outlined in yellow, titled by defect type."""
    nrows = max(1, -(-len(indices) // ncols))
    fig = Figure(figsize=(2 * ncols, 2.1 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, indices):
        item = dataset[i]
        ax.imshow(((item["image"] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy())  # (H, W, 3)
        if item["mask"].any():
            ax.contour(item["mask"][0].numpy(), levels=[0.5], colors="yellow", linewidths=1)
        ax.set_title(item["defect"], fontsize=8)
    fig.tight_layout()
    return fig


def plot_pixel_histograms(dataset: MVTecAD, max_images: int = 64) -> Figure:
    """Per-channel histograms of pixel values (in [-1, 1]) over up to `max_images` images."""
    n = min(len(dataset), max_images)
    pixels = torch.stack([dataset[i]["image"] for i in range(n)])  # (B, 3, H, W)
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    for c, color in enumerate(("red", "green", "blue")):
        ax.hist(pixels[:, c].flatten().numpy(), bins=64, range=(-1, 1), alpha=0.4, color=color, label=color)
    ax.set_xlabel("pixel value (scaled to [-1, 1])")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
