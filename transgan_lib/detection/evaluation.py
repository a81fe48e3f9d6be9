"""Pixel metrics at the ground-truth masks' own resolution, for the GAN and the baselines alike.

Maps are made at the model's resolution (32 or 64 px). Shrinking the masks to it with nearest
neighbour erases thin defects: a 6 x 60 px scratch of a 900 px MVTec AD mask covers no pixel at
32 px, and its image keeps label 1 with no region to find. Published MVTec AD pixel AUROC and AUPRO
are computed at the masks' own resolution (or 256 px). So pixel metrics are computed at an
evaluation size S: the masks' own size, capped at `EVAL_SIZE_CAP` px for memory, or the size given.
Masks are read at S (shrunk, when above it, so that no defect vanishes: `data.mvtec.resize_mask`)
and the maps upsampled to S (bilinear). The image score stays the max of the smoothed map at model
resolution.

Shape letters: B images, h, w the maps' (model) resolution, S the evaluation size.
Memory: masks and upsampled maps are B * S * S float32 each (256 px, 300 images: 79 MB).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..data.mvtec import MVTecAD
from ..data.splits import open_split
from ..metrics import compute_metrics
from ..utils import PathLike
from .maps import resize_maps

# The largest evaluation size chosen by default: MVTec AD masks are 700 to 1024 px, and 256 px is
# the other resolution its published pixel metrics are given at.
EVAL_SIZE_CAP = 256


def evaluation_size(test_set: MVTecAD, eval_size: Optional[int] = None) -> int:
    """The size S pixel metrics are computed at: `eval_size` when given, else the largest mask
    file's own size capped at EVAL_SIZE_CAP (the model's image size when no test image has a mask)."""
    if eval_size is not None:
        if int(eval_size) <= 0:
            raise ValueError(f"eval_size must be positive (or None: the masks' own size), got {eval_size}")
        return int(eval_size)
    native = test_set.native_mask_size()
    return test_set.image_size if native is None else min(native, EVAL_SIZE_CAP)


def load_evaluation_masks(data_root: PathLike, category: str, image_size: int, paths: Sequence[str],
                          eval_size: Optional[int] = None, folder=None) -> Tuple[Optional[torch.Tensor], Optional[int]]:
    """The test masks of a category (or of the user's folders `folder`, a `data.folder.FolderSpec`) at the
    evaluation size, without decoding the images.

    Args:
        image_size: the model's image size (the fallback size when no image has a mask).
        paths: the test image paths the masks must belong to, in order (ValueError otherwise).
        eval_size: S, or None for `evaluation_size`'s default.
    Returns:
        (masks (B, S, S) float {0, 1}, S), or (None, None) when a defective test image has no mask: pixel
        metrics are then not available.
    """
    test_set = open_split(data_root, category, "test", image_size, folder)
    if list(test_set.paths) != list(paths):
        raise ValueError(f"the test images under {data_root} are not the {len(paths)} images mapped (data changed "
                         "since?): rerun notebook 03 (pipeline.run_mapping)")
    if not test_set.has_masks:
        return None, None
    size = evaluation_size(test_set, eval_size)
    return test_set.load_masks(size)[:, 0], size  # (B, S, S)


def metrics_at_size(labels: Any, scores: Any, masks: Optional[torch.Tensor], maps: Optional[torch.Tensor],
                    defects: Optional[Sequence[str]] = None, threshold: Optional[float] = None) -> Dict[str, Any]:
    """`metrics.compute_metrics` with the maps (B, h, w) upsampled (bilinear) to the size of the
    masks (B, S, S) or (B, 1, S, S); without masks (or maps), no pixel metric. Image metrics use
    `scores` as given."""
    if masks is None or maps is None:
        return compute_metrics(labels, scores, None, None, defects, threshold)
    maps = resize_maps(maps.float(), tuple(masks.shape[-2:]))  # (B, S, S)
    return compute_metrics(labels, scores, masks, maps, defects, threshold)
