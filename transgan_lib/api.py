"""The library in three calls -- the same ones notebooks 02, 03 + 04 and `score` make::

    run = transgan_lib.fit("restorer", data_root="data/mvtec_ad", category="bottle", output_dir="runs")
    metrics = transgan_lib.evaluate(run)          # notebooks 03 + 04: metrics.json beside the checkpoint
    result = transgan_lib.predict(run, ["new/000.png", "new/001.png"])   # scores, maps, decisions

Methods: "restorer" (the restorer on synthetic defects, one pass per image; "restore" is the same) and
the study's TransGAN scored by AnoGAN search ("iterative"), its f-AnoGAN encoder ("encoder") or both
("hybrid"). `fit`'s keyword settings are `TrainConfig` fields (your own folders too: `normal_dir=...`);
`evaluate`'s `mapping` holds `MappingConfig` fields.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from .config import METHODS as REGISTRY
from .config import MappingConfig, TrainConfig, get_method
from .runs import run_paths_of
from .utils import PathLike, atomic_write_json

METHODS = tuple(REGISTRY)  # "restorer", "iterative", "encoder", "hybrid"
FIT_RECORD = "fit.json"  # <run>/fit.json: the method and settings of the last `fit` into this folder


def method_name(method: str) -> str:
    """The registry's name of `method` (old spellings accepted); ValueError listing the names otherwise."""
    return get_method(method).name


def fit(method: str, *, data_root: PathLike = "data/mvtec_ad", category: str = "bottle", output_dir: PathLike = "runs",
        progress: bool = True, **settings) -> Path:
    """Train `method`'s network on a category's good images (notebook 02); returns the run folder
    `<output_dir>/<category>`. A checkpoint already there is resumed (`resume=False` starts over)."""
    from .methods import train
    name = method_name(method)
    resume = settings.pop("resume", True)
    cfg = TrainConfig(data_root=str(data_root), category=category, output_dir=str(output_dir),
                      objective=REGISTRY[name].objective, **settings)
    root = Path(train(cfg, resume=resume, progress=progress)["output_dir"])
    atomic_write_json({"method": name, "config": cfg.to_dict()}, root / FIT_RECORD)
    return root


def _fitted(run: PathLike, method: Optional[str]) -> tuple:
    """(registry name, the run's TrainConfig): `method`, else the one of the run's fit.json."""
    from .methods.detectors import detector_file, load_detector
    paths = run_paths_of(run)
    record = paths.root / FIT_RECORD
    recorded = json.loads(record.read_text()) if record.is_file() else {}
    if method is None and "method" not in recorded:
        raise ValueError(f"{paths.root} has no {FIT_RECORD}: pass method= (one of {METHODS})")
    name = method_name(method or recorded["method"])
    if recorded.get("method") in REGISTRY and REGISTRY[recorded["method"]].objective == REGISTRY[name].objective:
        return name, TrainConfig.from_dict(recorded["config"])  # one network: the TransGAN's methods share it
    scoring = REGISTRY[name].scoring
    return name, load_detector(detector_file(paths, scoring), scoring, "cpu")[3]  # the checkpoint's TrainConfig


def evaluate(run: PathLike, *, method: Optional[str] = None, mapping: Optional[Dict[str, Any]] = None,
             encoder_epochs: int = 50, device: str = "auto", progress: bool = True, **evaluate_settings
             ) -> Dict[str, Any]:
    """Score the run's validation and test images and write metrics.json (notebooks 03 + 04); returns the
    metrics. `method`: None for the one `fit` trained last; `mapping`: MappingConfig fields (search
    settings); `evaluate_settings`: `pipeline.evaluate`'s (map_kind, sigma, threshold_rule, fpr_target,
    threshold_q, calibration_dir, eval_size)."""
    from .methods.pipeline import evaluate as evaluate_mapping
    from .methods.pipeline import run_mapping
    name, cfg = _fitted(run, method)
    paths = run_paths_of(run)
    config = MappingConfig(method=REGISTRY[name].scoring, **(mapping or {}))
    run_mapping(config, data_root=cfg.data_root, category=paths.category, output_dir=paths.output_dir,
                device=device, encoder_epochs=encoder_epochs, progress=progress)
    metrics, _ = evaluate_mapping(data_root=cfg.data_root, category=paths.category, output_dir=paths.output_dir,
                                  method=config.method, **evaluate_settings)
    return metrics


def predict(run: PathLike, images: Union[torch.Tensor, Sequence[PathLike]], *, method: Optional[str] = None,
            threshold: Optional[float] = None, device: str = "auto", progress: bool = False):
    """Score new images with the evaluated run (`methods.scoring.Scorer`: its settings and threshold).

    images: image files (any format the library reads) or a tensor (B, 3, S, S) in [-1, 1] at the run's
    image size. Returns a `ScoreResult`: scores (B,), maps (B, S, S), reconstructions (restorations for
    the restorer), decisions at the threshold (None without one)."""
    from .data.images import load_image
    from .methods.scoring import Scorer
    name, _ = _fitted(run, method)
    scorer = Scorer(run, method=REGISTRY[name].scoring, device=device)
    if not isinstance(images, torch.Tensor):
        images = torch.stack([load_image(p, scorer.image_size) for p in images])
    return scorer.score(images, threshold=threshold, progress=progress)


__all__ = ["METHODS", "fit", "evaluate", "predict", "method_name"]
