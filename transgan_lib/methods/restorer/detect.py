"""Detection with a trained restorer (`method="restore"`, notebooks 03/04, the `score` command):
one forward pass per image instead of a latent search.

The restorer (`models.restorer`, trained with `TrainConfig.objective="restore"`, `restorer.pt`)
gives each image its restoration x^ and its head's defect map. They are kept in a `MappingResult`
like a latent search's (reconstructions = x^, `defect_maps` = the head's map, no codes), so the
pipeline's mapping file, map-kind choice, metrics, figures and explorer work unchanged. The map
kinds are the head's map ("defect", first: it wins ties, the default), the residual kinds of
`maps.MAP_KINDS` on x^, and "fused", the head's map with the raw-pixel patch distance (`fusion`);
`map_kind="auto"` chooses among them on the validation normals and their copies with probe defects
(`methods.selection`).

Shape letters: B images, C channels, H/W image height/width.
"""
from __future__ import annotations

import time
from typing import Optional, Tuple

import torch
from torch import nn

from ...config import DEFECT_MAP_KIND, FUSED_MAP_KIND, MAP_KINDS, RESTORE_METHOD
from ...detection.maps import anomaly_maps, gaussian_smooth
from ...utils import progress_bar
from ..transgan.mapping import MappingResult

RESTORE_MAP_KINDS = (DEFECT_MAP_KIND,) + MAP_KINDS


@torch.no_grad()
def restore_images(restorer: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
                   progress: bool = True) -> MappingResult:
    """Restorations and defect maps of images (B, C, H, W) in [-1, 1], one pass each, as a
    MappingResult (z: (B, 0); residual_score: mean |x - x^|; total_score: max of the defect map)."""
    device = next(restorer.parameters()).device
    start, parts = time.perf_counter(), []
    with progress_bar(total=len(images), desc="restoring", disable=not progress, unit="img") as bar:
        for lo in range(0, len(images), batch_size):
            x_hat, probs = restorer.predict(images[lo:lo + batch_size].to(device=device, dtype=torch.float32))
            parts.append((x_hat.float().cpu(), probs.cpu()))
            bar.update(len(x_hat))
    seconds = (time.perf_counter() - start) / max(len(images), 1)
    x_hat = torch.cat([p[0] for p in parts]) if parts else images.new_zeros(images.shape)
    probs = torch.cat([p[1] for p in parts]) if parts else images.new_zeros(images.shape[:1] + images.shape[2:])
    b, zeros = len(images), torch.zeros(len(images))
    return MappingResult(z=torch.zeros(b, 0), reconstructions=x_hat, residual_score=(images - x_hat).abs().flatten(1)
                         .mean(1), feature_score=zeros, total_score=probs.flatten(1).amax(1),
                         loss_history=zeros[None], history_steps=[0], best_restart=torch.zeros(b, dtype=torch.long),
                         seconds_per_image=seconds, method=RESTORE_METHOD, iterations=0, lambda_=0.0, feature="none",
                         defect_maps=probs)


def map_kinds_of(result: MappingResult) -> Tuple[str, ...]:
    """The map kinds a result supports: the head's map first when it has one."""
    return RESTORE_MAP_KINDS if getattr(result, "defect_maps", None) is not None else MAP_KINDS


def detection_maps(images: torch.Tensor, result: MappingResult, kind: str, sigma: float,
                   fusion: Optional[nn.Module] = None) -> torch.Tensor:
    """Smoothed maps (B, H, W) of `kind`: the head's defect map, a residual kind on the
    reconstructions (`maps.anomaly_maps`), or the head's map fused with the patch distance (`fusion`:
    the run's `fusion.FusedMap`)."""
    if kind not in (DEFECT_MAP_KIND, FUSED_MAP_KIND):
        return anomaly_maps(images, result.reconstructions, kind=kind, sigma=sigma)
    if getattr(result, "defect_maps", None) is None:
        raise ValueError(f"map kind {DEFECT_MAP_KIND!r} is the restorer head's map: only method "
                         f"{RESTORE_METHOD!r} has it; choose one of {MAP_KINDS}")
    if kind == FUSED_MAP_KIND:
        if fusion is None:
            raise ValueError(f"map kind {FUSED_MAP_KIND!r} needs the run's fusion (fusion_restore.pt, written by "
                             "evaluate with map_kind 'auto' or 'fused'): evaluate the run first (notebook 04)")
        return fusion(images, result.defect_maps, sigma)
    return gaussian_smooth(result.defect_maps.float(), sigma)


__all__ = ["RESTORE_MAP_KINDS", "restore_images", "map_kinds_of", "detection_maps"]
