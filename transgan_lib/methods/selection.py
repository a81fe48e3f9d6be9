"""Choosing the map kind without the test set: synthetic copies of the validation normals, of a defect
family the network did not train on (CutPaste for the TransGAN, probe defects for the restorer), and
the map kind that best separates them from the normals."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ..config import FUSED_MAP_KIND, ConfigError, MappingConfig, TrainConfig
from ..data.probe_defects import family_names, probe_defects
from ..data.synthetic import cutpaste
from ..detection.maps import max_score
from ..metrics import image_auroc
from .detectors import detect
from .restorer.detect import detection_maps, map_kinds_of
from .restorer.fusion import FusedMap, fit_fusion
from .transgan.mapping_file import MappedImages

# The map kind used when `map_kind="auto"` has nothing to choose with (no synthetic anomalies were
# mapped, or scoring without an evaluated run).
FALLBACK_MAP_KIND = "residual"


def selection_family(config: MappingConfig, train_config: TrainConfig) -> str:
    """The synthetic defects the map kind is chosen on ("cutpaste" or "probe"): `config.selection_defects`,
    "auto" being CutPaste for a network trained on normals alone and probe defects for one trained on
    synthetic defects. ConfigError for a family the network trained on: a choice made on it rewards
    recognising the training defects, not finding deviations from normal."""
    trained = train_config.restore_config().sources.split(",") if train_config.objective == "restore" else []
    family = config.selection_defects
    if family == "auto":
        family = "probe" if trained else "cutpaste"
    if family in trained:
        raise ConfigError(f"selection_defects={family!r} is a family this network trained on (its sources: "
                          f"{','.join(trained)}); choose on one it did not: 'probe' (or 'auto')")
    return family


def map_synthetic(G, D, val: Dict[str, Any], config: MappingConfig, family: str, **kw) -> Optional[MappedImages]:
    """`config.synthetic_copies` copies of each validation normal with synthetic defects of `family`,
    mapped (None for 0). (B * copies, C, H, W): the copies of one normal are adjacent, so they alternate
    between a CutPaste rectangle and a scar, or between the probe families."""
    k = config.synthetic_copies
    if k == 0:
        return None
    repeated = val["images"].repeat_interleave(k, 0)
    if family == "probe":
        images, masks = probe_defects(repeated, seed=config.seed)
        defects = family_names(len(images))
    else:
        images, masks = cutpaste(repeated, seed=config.seed)
        defects = ["cutpaste"] * len(images)
    return MappedImages(result=detect(G, D, images, config, **kw), labels=torch.ones(len(images)).long(),
                        defects=defects, images=images, masks=masks,
                        paths=[f"{p}#{family}{c}" for p in val["paths"] for c in range(k)])


def select_map_kind(val_images: torch.Tensor, val, synthetic_images: Optional[torch.Tensor], synthetic, *,
                    sigma: float = 4.0, kinds=None, copies: str = "CutPaste copies",
                    fusion=None) -> Dict[str, Any]:
    """The map kind whose image score (max of the smoothed map) best separates the validation
    normals from their synthetic copies (`copies` names them in the rule): AUROC on those two sets
    only, ties to the earlier kind.

    Args:
        val_images, val: the validation normals (B, C, H, W) and their MappingResult.
        synthetic_images, synthetic: the CutPaste copies (S, C, H, W) and their MappingResult,
            or None, None.
        fusion: the restorer's fitted `FusedMap` (`fit_fusion`, on these same sets): "fused" is then
            one more kind, after the others.
    Returns:
        {"chosen": kind, "rule": text, "synthetic_auroc": {kind: AUROC}}; without synthetic
        anomalies, FALLBACK_MAP_KIND and an empty table.
    """
    if synthetic is None:
        return {"chosen": FALLBACK_MAP_KIND, "synthetic_auroc": {},
                "rule": "no synthetic anomalies were mapped (synthetic_copies=0): default map kind"}
    labels = torch.cat([torch.zeros(len(val_images)), torch.ones(len(synthetic_images))])
    table, kinds = {}, kinds or map_kinds_of(val) + ((FUSED_MAP_KIND,) if fusion is not None else ())
    for kind in kinds:  # a restorer's head map first: it keeps a tie
        scores = [max_score(detection_maps(images, result, kind, sigma, fusion))
                  for images, result in ((val_images, val), (synthetic_images, synthetic))]
        table[kind] = image_auroc(labels, torch.cat(scores))
    chosen = max(kinds, key=lambda k: table[k])  # max keeps the first of equal values
    return {"chosen": chosen, "synthetic_auroc": table,
            "rule": f"highest image AUROC of validation normals vs their {copies}"}


def fit_run_fusion(train_images: torch.Tensor, val_images: torch.Tensor, val, syn: Optional[MappedImages],
                   sigma: float, seed: int = 0) -> Tuple[Optional[FusedMap], Dict[str, float]]:
    """A restorer's fused map, its weight chosen on the validation normals and their probe copies, and
    the AUROC of each weighting tried (`fusion.fit_fusion`); (None, {}) for a network without a head map or
    without copies, or for CutPaste copies (a family the restorer trained on)."""
    if getattr(val, "defect_maps", None) is None or syn is None or set(syn.defects) <= {"cutpaste"}:
        return None, {}
    return fit_fusion(train_images, val_images, val.defect_maps, syn.images, syn.result.defect_maps, sigma,
                      seed=seed)


def copies_name(syn: Optional[MappedImages]) -> str:
    """How the rule names the synthetic copies a map kind was chosen on."""
    if syn is None or set(syn.defects) <= {"cutpaste"}:
        return "CutPaste copies"
    return f"probe-defect copies ({', '.join(dict.fromkeys(syn.defects))}: families it did not train on)"


__all__ = ["FALLBACK_MAP_KIND", "selection_family", "map_synthetic", "select_map_kind", "fit_run_fusion",
           "copies_name"]
