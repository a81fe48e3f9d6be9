"""The restorer's fused map (`map_kind="fused"`): its head's defect map plus the raw-pixel patch distance to
the training normals (at 64 px and more, also on the halved images: the coarse part), each standardised on
the validation normals' pixels, weighted by weights chosen on validation normals against their copies with
defects the restorer never trained on (the probe families, `selection`).

Why: the head finds defects that look like its training defects, and misses others on some surfaces;
the patch distance (the floor every figure is shown beside) finds any patch unlike the training ones,
but is blind to what the head learned. Which weight serves a surface is not known in advance, so it is
chosen per run on held-out defect families; head weight 1 is the head's map alone and 0 the patch distance
alone (docs/experiments.md: "Fused map"). The coarse part sees larger, fainter deviations the fine patches
average away.

Shape letters: B images, C channels, H/W height/width, M bank patches, D = C * p * p.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...config import DEFECT_MAP_KIND, FUSED_MAP_KIND
from ...detection.baselines import patch_bank, patch_distance_map, patch_kernels
from ...detection.maps import gaussian_smooth, max_score
from ...metrics import image_auroc
from ...utils import PathLike, atomic_write

HEAD_WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)  # the head's weight tried; the patch distance gets the rest
PATCH_SIZE, STRIDE, MAX_BANK = 8, 4, 20000  # the patch-NN floor's settings (`baselines.run_baselines`)
# The coarse patch part: the same patches on the image halved, so a 64 px run also sees what the floor sees
# at 32 px (docs/experiments.md: "The coarse patch part"); offered when the halved image keeps MIN_COARSE px.
COARSE, MIN_COARSE = 2, 32
PART_NAMES = (DEFECT_MAP_KIND, "patch", "patch_coarse")


def weight_grid(n_parts: int) -> List[Tuple[float, ...]]:
    """The weights tried (a 0.25 grid summing to 1), in the order that wins ties: the larger head weight
    first, then the finer patch part. Two parts: (w, 1 - w) for w in HEAD_WEIGHTS."""
    if n_parts == 2:
        return [(w, 1.0 - w) for w in HEAD_WEIGHTS]
    return [(h, p, 1.0 - h - p) for h in HEAD_WEIGHTS for p in HEAD_WEIGHTS if h + p <= 1.0]


def weight_label(weights: Sequence[float]) -> str:
    """metrics.json's key of a weighting: the head's weight alone for two parts ("0.25"), else all ("0.5/0.25/0.25")."""
    return f"{weights[0]:g}" if len(weights) == 2 else "/".join(f"{w:g}" for w in weights)


class FusedMap(nn.Module):
    """Weighted sum of the standardised head map and patch distances (the coarse one optional), each
    Gaussian-smoothed first.

    Buffers: bank (M, D) raw-pixel training patches; coarse_bank (M', D) the same from the halved training
    images, or absent; stats (P, 2) the (mean, std) of each part's smoothed validation-normal pixels, P = 2
    or 3 parts in `PART_NAMES` order. A module, so `export` traces it into the graph.
    """

    def __init__(self, bank: torch.Tensor, stats: torch.Tensor, weights: Sequence[float], *,
                 patch_size: int = PATCH_SIZE, stride: int = STRIDE, coarse_bank: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer("bank", bank.float())
        self.register_buffer("coarse_bank", None if coarse_bank is None else coarse_bank.float())
        self.register_buffer("stats", stats.float())
        self.weights = tuple(float(w) for w in weights)
        if len(self.weights) != self.n_parts or stats.shape[0] != self.n_parts:
            raise ValueError(f"{self.n_parts} parts need {self.n_parts} weights and stats rows, "
                             f"got {len(self.weights)} and {stats.shape[0]}")
        self.patch_size, self.stride = int(patch_size), int(stride)
        eye, ones = patch_kernels(bank.shape[1] // (patch_size * patch_size), patch_size)
        self.register_buffer("eye", eye, persistent=False)
        self.register_buffer("ones", ones, persistent=False)

    @property
    def n_parts(self) -> int:
        return 2 if self.coarse_bank is None else 3

    @property
    def head_weight(self) -> float:
        return self.weights[0]

    def parts(self, images: torch.Tensor, head: torch.Tensor, sigma: float) -> Tuple[torch.Tensor, ...]:
        """The standardised maps (B, H, W) of every part; `head` is the raw head map."""
        kernels = (self.eye, self.ones)
        maps = [head.float(), patch_distance_map(images, self.bank, self.patch_size, self.stride, kernels=kernels)]
        if self.coarse_bank is not None:
            small = F.avg_pool2d(images.float(), COARSE)  # (B, C, H/2, W/2)
            coarse = patch_distance_map(small, self.coarse_bank, self.patch_size, self.stride, kernels=kernels)
            maps.append(F.interpolate(coarse[:, None], size=images.shape[-2:], mode="bilinear",
                                      align_corners=False)[:, 0])  # (B, H, W)
        return tuple((gaussian_smooth(m, sigma) - s[0]) / s[1] for m, s in zip(maps, self.stats))

    def forward(self, images: torch.Tensor, head: torch.Tensor, sigma: float) -> torch.Tensor:
        return sum(w * part for w, part in zip(self.weights, self.parts(images, head, sigma)))

    def settings(self) -> Dict[str, Any]:
        """What metrics.json records of the fusion (the banks live in the fusion file)."""
        names = PART_NAMES[:self.n_parts]
        return {"head_weight": self.head_weight, "weights": dict(zip(names, self.weights)),
                "patch_size": self.patch_size, "stride": self.stride, "bank_patches": int(self.bank.shape[0]),
                "coarse_factor": COARSE if self.coarse_bank is not None else None,
                "standardisation": {n: s.tolist() for n, s in zip(names, self.stats)}}

    def save(self, path: PathLike) -> None:
        state = {"bank": self.bank.cpu(), "coarse_bank": None if self.coarse_bank is None else self.coarse_bank.cpu(),
                 "stats": self.stats.cpu(), "weights": list(self.weights), "patch_size": self.patch_size,
                 "stride": self.stride}
        atomic_write(Path(path), lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: PathLike, map_location: Any = "cpu") -> "FusedMap":
        state = torch.load(path, map_location=map_location, weights_only=True)
        # a file written before the coarse part holds "head_weight" alone
        weights = state["weights"] if "weights" in state else (state["head_weight"], 1.0 - state["head_weight"])
        return cls(state["bank"], state["stats"], weights, patch_size=state["patch_size"], stride=state["stride"],
                   coarse_bank=state.get("coarse_bank"))


@torch.no_grad()
def fit_fusion(train_images: torch.Tensor, val_images: torch.Tensor, val_heads: torch.Tensor,
               probe_images: torch.Tensor, probe_heads: torch.Tensor, sigma: float, *,
               seed: int = 0, coarse: Optional[bool] = None) -> Tuple[FusedMap, Dict[str, float]]:
    """The fusion whose image score best separates the validation normals (B, C, H, W) from their probe
    copies (S, C, H, W), given both sets' raw head maps; ties to the larger head weight, then the finer
    patch part (`weight_grid`). `coarse`: offer the coarse patch part (None: when the halved image keeps
    MIN_COARSE px).

    The banks hold training-normal patches only (the validation normals stay unseen), and the
    standardisation uses the validation normals only. Returns (the chosen FusedMap, {weight_label: AUROC}).
    """
    coarse = train_images.shape[-1] // COARSE >= MIN_COARSE if coarse is None else coarse
    bank = patch_bank(train_images, PATCH_SIZE, STRIDE, MAX_BANK, seed)
    coarse_bank = patch_bank(F.avg_pool2d(train_images.float(), COARSE), PATCH_SIZE, STRIDE, MAX_BANK, seed) \
        if coarse else None
    n = 3 if coarse else 2
    identity = torch.tensor([[0.0, 1.0]] * n)  # identity standardisation: the smoothed parts
    raw = FusedMap(bank, identity, (1.0,) + (0.0,) * (n - 1), coarse_bank=coarse_bank)
    val_parts = raw.parts(val_images, val_heads, sigma)
    stats = torch.stack([torch.stack([m.mean(), m.std().clamp_min(1e-8)]) for m in val_parts])  # (P, 2)
    parts = [[(m - s[0]) / s[1] for m, s in zip(p, stats)]
             for p in (val_parts, raw.parts(probe_images, probe_heads, sigma))]
    labels = torch.cat([torch.zeros(len(val_images)), torch.ones(len(probe_images))])
    table, grid = {}, weight_grid(n)
    for weights in grid:
        scores = [max_score(sum(w * m for w, m in zip(weights, p))) for p in parts]
        table[weights] = image_auroc(labels, torch.cat(scores))
    chosen = max(grid, key=lambda w: table[w])  # max keeps the first of ties (`weight_grid`'s order)
    return (FusedMap(bank, stats, chosen, coarse_bank=coarse_bank),
            {weight_label(w): a for w, a in table.items()})


__all__ = ["FUSED_MAP_KIND", "HEAD_WEIGHTS", "COARSE", "MIN_COARSE", "PART_NAMES", "FusedMap", "fit_fusion",
           "weight_grid", "weight_label"]
