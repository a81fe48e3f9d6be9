"""Figures and image grids. Every plotting function returns a `matplotlib.figure.Figure` built
without pyplot (no global figure state, no `plt.show()`; safe under any backend, shown by
Jupyter when it is a cell's value, saved with `fig.savefig`).

Shape letters: B batch, H, W image height and width. Images are float tensors in [-1, 1].
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torchvision.utils import make_grid

from ..utils import PathLike, atomic_write

COLLAPSE_THRESHOLD = 0.1  # diversity ratio under which the generator is flagged as collapsed


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """(B, 3, H, W) (or (B, 1, H, W)) images in [-1, 1] -> (rows*H', nrow*W', 3) uint8 grid."""
    images = images.detach().float().cpu()
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    grid = make_grid((images.clamp(-1, 1) + 1) / 2, nrow=nrow, padding=padding)  # (3, H', W') in [0, 1]
    return (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # (H', W', 3)


def save_image_grid(images: torch.Tensor, path: PathLike, nrow: int = 8) -> None:
    """Write `image_grid(images, nrow)` as a PNG atomically (a crash never leaves half a file)."""
    grid = Image.fromarray(image_grid(images, nrow))
    atomic_write(path, lambda f: grid.save(f, format="PNG"))


def save_figure(fig: Figure, path: PathLike, dpi: int = 100) -> None:
    """fig.savefig to `path` (format from the suffix), atomically."""
    fmt = str(path).rsplit(".", 1)[-1].lower()
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight"))


def plot_image_grid(images: torch.Tensor, nrow: int = 8, title: Optional[str] = None) -> Figure:
    """A figure showing `image_grid(images, nrow)`."""
    grid = image_grid(images, nrow)
    height = 6.0 * grid.shape[0] / max(grid.shape[1], 1)
    fig = Figure(figsize=(6, max(height, 1.0)))
    ax = fig.add_subplot()
    ax.imshow(grid)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return fig


def _series(history: Sequence[dict], key: str) -> Tuple[np.ndarray, np.ndarray]:
    rows = [r for r in history if r.get(key) is not None]
    x = np.array([r.get("epoch", i + 1) for i, r in enumerate(rows)], dtype=float)
    return x, np.array([float(r[key]) for r in rows], dtype=float)


def plot_history(history: Sequence[dict]) -> Figure:
    """Training curves from `train_gan`'s per-epoch rows: losses, critic outputs and gradient
    penalty, and the sample-diversity ratio with the collapse line at 0.1."""
    fig = Figure(figsize=(13, 3.6))
    ax_loss, ax_d, ax_div = fig.subplots(1, 3)
    for key in ("d_loss", "g_loss"):
        ax_loss.plot(*_series(history, key), marker=".", label=key)
    ax_loss.set_title("losses")
    for key in ("d_real", "d_fake", "val_d_real", "gp"):
        x, y = _series(history, key)
        if len(x):
            ax_d.plot(x, y, marker=".", label=key)
    ax_d.set_title("critic outputs and gradient penalty")
    ax_div.plot(*_series(history, "diversity"), marker=".", color="tab:green", label="fake / real")
    ax_div.axhline(COLLAPSE_THRESHOLD, color="tab:red", linestyle="--", label="collapse (0.1)")
    ax_div.set_ylim(bottom=0)
    ax_div.set_title("sample diversity ratio")
    for ax in (ax_loss, ax_d, ax_div):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_score_histograms(scores, groups: Sequence, title: Optional[str] = None,
                          bins: int = 30) -> Figure:
    """Overlaid histograms of anomaly `scores` (N,), one per distinct label in `groups` (N,)
    (e.g. "good" and each defect type), on shared bins."""
    scores = np.asarray(scores, dtype=float).ravel()
    groups = np.asarray(groups).ravel()
    if scores.shape != groups.shape:
        raise ValueError(f"scores ({scores.shape[0]}) and groups ({groups.shape[0]}) differ in length")
    edges = np.histogram_bin_edges(scores[np.isfinite(scores)], bins=bins)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for label in sorted(set(groups.tolist()), key=str):
        sel = scores[groups == label]
        ax.hist(sel, bins=edges, alpha=0.5, label=f"{label} (n={sel.size})")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_roc_curves(curves: Dict[str, Tuple[Sequence[float], Sequence[float], float]],
                    title: Optional[str] = None) -> Figure:
    """ROC curves from {name: (fpr, tpr, auc)}, with the chance diagonal."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, (fpr, tpr, auc) in curves.items():
        label = name if auc is None or not math.isfinite(float(auc)) else f"{name} (AUC {float(auc):.3f})"
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "ROC")
    return fig


__all__ = ["image_grid", "save_image_grid", "save_figure", "plot_image_grid", "plot_history",
           "plot_score_histograms", "plot_roc_curves", "COLLAPSE_THRESHOLD"]


def _hwc(image: torch.Tensor) -> np.ndarray:
    return ((image.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # (H, W, 3)


def _spread(defects: Sequence[str], n: int) -> list:
    """Up to n indices, good and defective images alternating, so a grid shows both."""
    good = [i for i, d in enumerate(defects) if d == "good"]
    bad = [i for i, d in enumerate(defects) if d != "good"]
    bad = bad[:: max(1, len(bad) // max(1, n - n // 2))]
    picked = [i for pair in zip(good, bad) for i in pair] + good[len(bad):] + bad[len(good):]
    return sorted(picked[:n])


def plot_reconstructions(images: torch.Tensor, reconstructions: torch.Tensor, defects: Sequence[str],
                         n: int = 8) -> Figure:
    """Inputs (top row) and their reconstructions G(z*) (bottom row), titled by defect type."""
    idx = _spread(list(defects), n)
    fig = Figure(figsize=(1.7 * len(idx), 3.8))
    axes = np.atleast_2d(fig.subplots(2, len(idx))).reshape(2, -1)
    for col, i in enumerate(idx):
        axes[0, col].imshow(_hwc(images[i]))
        axes[0, col].set_title(defects[i], fontsize=8)
        axes[1, col].imshow(_hwc(reconstructions[i]))
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].text(-0.1, 0.5, "input", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "G(z*)", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    return fig


def plot_mapping_loss(loss_history: torch.Tensor, steps: Sequence[int], defects: Sequence[str]) -> Figure:
    """The latent search's per-image loss (R, B) against the iteration, mean and spread per group."""
    loss = np.asarray(loss_history, dtype=float)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    defects = np.asarray(list(defects))
    for label in sorted(set(defects.tolist())):
        sel = loss[:, defects == label]
        ax.plot(steps, sel.mean(1), label=f"{label} (n={sel.shape[1]})")
        ax.fill_between(steps, sel.min(1), sel.max(1), alpha=0.15)
    ax.set_xlabel("iteration")
    ax.set_ylabel("(1-λ)·L1 + λ·feature loss")
    ax.set_title("latent search")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_heatmap_grid(arrays: Dict[str, object], n: int = 8) -> Figure:
    """Rows: input, reconstruction, heatmap overlay, ground truth — for n test images."""
    defects = list(arrays["defects"])
    idx = _spread(defects, n)
    maps = arrays["maps"].detach().float().cpu()
    vmax = float(maps.max())
    fig = Figure(figsize=(1.7 * len(idx), 7.2))
    axes = np.atleast_2d(fig.subplots(4, len(idx))).reshape(4, -1)
    for col, i in enumerate(idx):
        axes[0, col].imshow(_hwc(arrays["images"][i]))
        axes[0, col].set_title(f"{defects[i]}\n{float(arrays['scores'][i]):.3f}", fontsize=8)
        axes[1, col].imshow(_hwc(arrays["reconstructions"][i]))
        axes[2, col].imshow(_hwc(arrays["images"][i]))
        axes[2, col].imshow(maps[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
        axes[3, col].imshow(arrays["masks"][i].detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    for ax in axes.ravel():
        ax.axis("off")
    for row, name in enumerate(("input", "G(z*)", "heatmap", "ground truth")):
        axes[row, 0].text(-0.1, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    return fig


def plot_benchmark(rows: Sequence[dict]) -> Figure:
    """The benchmark's rows (`benchmark.table_rows`) as bars: image AUROC, pixel AUROC and AUPRO per
    category and their mean, one panel per method, the best floor's image AUROC as a black tick."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    per_method = max(1, len(rows) // len(methods))
    fig = Figure(figsize=(max(6.0, 0.8 * per_method + 2), 3.4 * len(methods)))
    axes = fig.subplots(len(methods), 1, squeeze=False).ravel()
    keys = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
    for ax, method in zip(axes, methods):
        mine = [r for r in rows if r["method"] == method]
        x = np.arange(len(mine))
        for j, (key, label) in enumerate(keys):
            ax.bar(x + (j - 1) * 0.27, [np.nan if r.get(key) is None else r[key] for r in mine], width=0.27,
                   label=label)
        floors = [max((v for k, v in r.items() if k.endswith("_image_auroc") and k != "image_auroc" and v is not None),
                      default=np.nan) for r in mine]
        ax.scatter(x - 0.27, floors, marker="_", s=250, color="k", zorder=3, label="best floor (image AUROC)")
        labels = [r["category"] + ("\n(failed)" if r.get("error") else "") for r in mine]
        ax.set_xticks(x, labels, fontsize=8, rotation=30 if len(mine) > 8 else 0)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, 1.25)  # the top band holds the legend
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("score")
        ax.set_title(f"method: {method}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=4, loc="upper center")
    fig.tight_layout()
    return fig
