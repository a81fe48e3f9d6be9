"""Interactive residual-heatmap explorer (ipywidgets) for notebook 04.

Choose a test image (optionally filtered by defect type), move the threshold, and see the input,
its reconstruction G(z*), the heatmap overlay and the predicted vs true defect mask side by side.
The image score is the max of the map, so one threshold serves both: an image is flagged when any
pixel of its map reaches the threshold, and those pixels are its predicted mask.

Shape letters: B images, H, W height and width.
"""
from __future__ import annotations

import io
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    return ((image.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # (H, W, 3)


def mask_comparison(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(H, W) bool predicted and true masks -> (H, W, 3) image: green true positive, red false
    positive, blue missed defect, black true negative."""
    out = np.zeros(pred.shape + (3,), dtype=np.float32)
    out[pred & true] = (0.1, 0.8, 0.1)
    out[pred & ~true] = (0.9, 0.1, 0.1)
    out[~pred & true] = (0.2, 0.3, 1.0)
    return out


def explorer_figure(arrays: Dict[str, Any], index: int, threshold: float) -> Figure:
    """Input / reconstruction / heatmap overlay / predicted-vs-true mask for test image `index`."""
    image, rec = arrays["images"][index], arrays["reconstructions"][index]
    amap = arrays["maps"][index].detach().float().cpu().numpy()  # (H, W)
    true = arrays["masks"][index].detach().cpu().numpy() > 0.5
    pred = amap >= threshold
    vmax = max(float(np.max(arrays["maps"].detach().float().cpu().numpy())), threshold)
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 4)
    axes[0].imshow(_to_hwc(image))
    axes[1].imshow(_to_hwc(rec))
    axes[2].imshow(_to_hwc(image))
    hm = axes[2].imshow(amap, cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
    fig.colorbar(hm, ax=axes[2], fraction=0.046)
    axes[3].imshow(mask_comparison(pred, true))
    score = float(arrays["scores"][index])
    label = int(arrays["labels"][index])
    titles = ["input", "reconstruction G(z*)", "anomaly map",
              "pred vs true (green TP, red FP, blue FN)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    verdict = "ANOMALOUS" if score >= threshold else "normal"
    truth = arrays["defects"][index] if label else "good"
    fig.suptitle(f"#{index} {truth}: score {score:.4f} -> {verdict} (threshold {threshold:.4f})", fontsize=10)
    return fig


class ResidualExplorer:
    """ipywidgets explorer over the arrays of `metrics, arrays = pipeline.evaluate(...)`.

    `ResidualExplorer(arrays, threshold).widget` as a cell's last line shows it; headless
    (papermill) it still builds and renders its first figure, as widget state only (no output capture:
    see `render`).
    """

    def __init__(self, arrays: Dict[str, Any], threshold: float, *, defect_types: Optional[Sequence[str]] = None):
        import ipywidgets as w
        self.arrays = arrays
        kinds = ["all", "good"] + sorted(defect_types or {d for d in arrays["defects"] if d != "good"})
        self.filter = w.Dropdown(options=kinds, value="all", description="defect")
        self.image = w.Dropdown(options=self._options("all"), description="image")
        maps = arrays["maps"].detach().float()
        hi = max(float(maps.max()), threshold) * 1.05
        self.threshold = w.FloatSlider(value=float(threshold), min=0.0, max=hi, step=hi / 500,
                                       description="threshold", readout_format=".4f", continuous_update=False)
        self.output = w.Output()
        self.filter.observe(self._on_filter, names="value")
        self.image.observe(lambda _: self.render(), names="value")
        self.threshold.observe(lambda _: self.render(), names="value")
        self.widget = w.VBox([w.HBox([self.filter, self.image, self.threshold]), self.output])
        self.figure: Optional[Figure] = None
        self.render()

    def _options(self, kind: str):
        defects = self.arrays["defects"]
        paths = self.arrays.get("paths") or [str(i) for i in range(len(defects))]
        return [(f"{i}: {d} / {str(p).rsplit('/', 1)[-1]}", i) for i, (d, p) in enumerate(zip(defects, paths))
                if kind == "all" or d == kind]

    def _on_filter(self, change) -> None:
        self.image.options = self._options(change["new"])
        self.render()

    def render(self) -> Figure:
        """Redraw for the current image and threshold; returns the figure (also kept on `.figure`).

        The PNG is set as the Output widget's state (`append_display_data`), not captured with
        `with self.output:` -- under papermill, nbclient's stand-in for a captured Output widget
        answers on the shell channel while it waits there for the cell's reply, and that race left
        the cell waiting forever (jupyter/nbclient#312)."""
        from IPython.display import Image
        if self.image.value is None:
            return self.figure
        self.figure = explorer_figure(self.arrays, self.image.value, self.threshold.value)
        png = io.BytesIO()
        self.figure.savefig(png, format="png", dpi=80, bbox_inches="tight")
        self.output.outputs = ()
        self.output.append_display_data(Image(data=png.getvalue(), format="png"))
        return self.figure
