"""The restorer's fused map (`map_kind="fused"`): its head's defect map plus the raw-pixel patch distance to
the training normals, each standardised on the validation normals' pixels, weighted by one number chosen
on validation normals against their copies with defects the restorer never trained on (the probe
families, `selection`).

Why: the head finds defects that look like its training defects, and misses others on some surfaces;
the patch distance (the floor every figure is shown beside) finds any patch unlike the training ones,
but is blind to what the head learned. Which weight serves a surface is not known in advance, so it is
chosen per run on held-out defect families; weight 1 is the head's map alone and 0 the patch distance
alone (docs/experiments.md: "Fused map").

Shape letters: B images, C channels, H/W height/width, M bank patches, D = C * p * p.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from ...config import DEFECT_MAP_KIND, FUSED_MAP_KIND
from ...detection.baselines import patch_bank, patch_distance_map, patch_kernels
from ...detection.maps import gaussian_smooth, max_score
from ...metrics import image_auroc
from ...utils import PathLike, atomic_write

HEAD_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)  # the head's weight tried; the patch distance gets the rest
PATCH_SIZE, STRIDE, MAX_BANK = 8, 4, 20000  # the patch-NN floor's settings (`baselines.run_baselines`)


class FusedMap(nn.Module):
    """w * standardised head map + (1 - w) * standardised patch distance, both Gaussian-smoothed first.

    Buffers: bank (M, D) raw-pixel training patches; stats (2, 2) the (mean, std) of the head's and the
    patch distance's smoothed validation-normal pixels. A module, so `export` traces it into the graph.
    """

    def __init__(self, bank: torch.Tensor, stats: torch.Tensor, head_weight: float, *,
                 patch_size: int = PATCH_SIZE, stride: int = STRIDE):
        super().__init__()
        self.register_buffer("bank", bank.float())
        self.register_buffer("stats", stats.float())
        self.head_weight, self.patch_size, self.stride = float(head_weight), int(patch_size), int(stride)
        eye, ones = patch_kernels(bank.shape[1] // (patch_size * patch_size), patch_size)
        self.register_buffer("eye", eye, persistent=False)
        self.register_buffer("ones", ones, persistent=False)

    def parts(self, images: torch.Tensor, head: torch.Tensor, sigma: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """The standardised (head, patch distance) maps (B, H, W); `head` is the raw head map."""
        patch = patch_distance_map(images, self.bank, self.patch_size, self.stride, kernels=(self.eye, self.ones))
        smooth = [gaussian_smooth(m, sigma) for m in (head.float(), patch)]
        return ((smooth[0] - self.stats[0, 0]) / self.stats[0, 1], (smooth[1] - self.stats[1, 0]) / self.stats[1, 1])

    def forward(self, images: torch.Tensor, head: torch.Tensor, sigma: float) -> torch.Tensor:
        head_part, patch_part = self.parts(images, head, sigma)
        return self.head_weight * head_part + (1 - self.head_weight) * patch_part

    def settings(self) -> Dict[str, Any]:
        """What metrics.json records of the fusion (the bank lives in the fusion file)."""
        return {"head_weight": self.head_weight, "patch_size": self.patch_size, "stride": self.stride,
                "bank_patches": int(self.bank.shape[0]),
                "standardisation": {DEFECT_MAP_KIND: self.stats[0].tolist(), "patch": self.stats[1].tolist()}}

    def save(self, path: PathLike) -> None:
        state = {"bank": self.bank.cpu(), "stats": self.stats.cpu(), "head_weight": self.head_weight,
                 "patch_size": self.patch_size, "stride": self.stride}
        atomic_write(Path(path), lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: PathLike, map_location: Any = "cpu") -> "FusedMap":
        state = torch.load(path, map_location=map_location, weights_only=True)
        return cls(state["bank"], state["stats"], state["head_weight"], patch_size=state["patch_size"],
                   stride=state["stride"])


@torch.no_grad()
def fit_fusion(train_images: torch.Tensor, val_images: torch.Tensor, val_heads: torch.Tensor,
               probe_images: torch.Tensor, probe_heads: torch.Tensor, sigma: float, *,
               seed: int = 0) -> Tuple[FusedMap, Dict[str, float]]:
    """The fusion whose image score best separates the validation normals (B, C, H, W) from their probe
    copies (S, C, H, W), given both sets' raw head maps; ties to the larger head weight.

    The bank holds training-normal patches only (the validation normals stay unseen), and the
    standardisation uses the validation normals only. Returns (the chosen FusedMap, {weight: AUROC}).
    """
    bank = patch_bank(train_images, PATCH_SIZE, STRIDE, MAX_BANK, seed)
    raw = FusedMap(bank, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), 1.0)  # identity standardisation: smoothed parts
    val_parts = raw.parts(val_images, val_heads, sigma)
    stats = torch.stack([torch.stack([m.mean(), m.std().clamp_min(1e-8)]) for m in val_parts])  # (2, 2)
    parts = [[(m - s[0]) / s[1] for m, s in zip(p, stats)]
             for p in (val_parts, raw.parts(probe_images, probe_heads, sigma))]
    labels = torch.cat([torch.zeros(len(val_images)), torch.ones(len(probe_images))])
    table = {}
    for w in HEAD_WEIGHTS:
        scores = [max_score(w * h + (1 - w) * p) for h, p in parts]
        table[w] = image_auroc(labels, torch.cat(scores))
    chosen = max(HEAD_WEIGHTS, key=lambda w: table[w])  # max keeps the first (largest head weight) of ties
    return FusedMap(bank, stats, chosen), table


__all__ = ["FUSED_MAP_KIND", "HEAD_WEIGHTS", "FusedMap", "fit_fusion"]
