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

from .config import MAPPING_METHODS, RESTORE_METHOD, MappingConfig, TrainConfig
from .runs import run_paths, run_paths_of
from .utils import PathLike, atomic_write_json

RESTORER = "restorer"
METHODS = (RESTORER,) + MAPPING_METHODS  # "restorer", "iterative", "encoder", "hybrid"
ALIASES = {RESTORE_METHOD: RESTORER}
FIT_RECORD = "fit.json"  # <run>/fit.json: the method and settings of the last `fit` into this folder


def method_name(method: str) -> str:
    """The registry's name of `method` (old spellings accepted); ValueError listing the names otherwise."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return name


def _mapping_method(name: str) -> str:
    """The scoring method of notebooks 03/04 and `score` for a registry name."""
    return RESTORE_METHOD if name == RESTORER else name


def fit(method: str, *, data_root: PathLike = "data/mvtec_ad", category: str = "bottle", output_dir: PathLike = "runs",
        progress: bool = True, **settings) -> Path:
    """Train `method`'s network on a category's good images (notebook 02); returns the run folder
    `<output_dir>/<category>`. A checkpoint already there is resumed (`resume=False` starts over)."""
    from .gan.train import train_gan
    name = method_name(method)
    resume = settings.pop("resume", True)
    cfg = TrainConfig(data_root=str(data_root), category=category, output_dir=str(output_dir),
                      objective="restore" if name == RESTORER else "gan", **settings)
    train_gan(cfg, resume=resume, progress=progress)
    root = run_paths(cfg.output_dir, cfg.category).root
    atomic_write_json({"method": name, "config": cfg.to_dict()}, root / FIT_RECORD)
    return root


def _fitted(run: PathLike, method: Optional[str]) -> tuple:
    """(registry name, the run's TrainConfig): `method`, else the one of the run's fit.json."""
    from .detection.restoration import detector_file, load_detector
    paths = run_paths_of(run)
    record = paths.root / FIT_RECORD
    recorded = json.loads(record.read_text()) if record.is_file() else {}
    if method is None and "method" not in recorded:
        raise ValueError(f"{paths.root} has no {FIT_RECORD}: pass method= (one of {METHODS})")
    name = method_name(method or recorded["method"])
    same_network = recorded.get("method") == name or {name, recorded.get("method")} <= set(MAPPING_METHODS)
    if same_network:  # the TransGAN's methods share one checkpoint
        return name, TrainConfig.from_dict(recorded["config"])
    file = detector_file(paths, _mapping_method(name))
    return name, load_detector(file, _mapping_method(name), "cpu")[3]  # the checkpoint's TrainConfig


def evaluate(run: PathLike, *, method: Optional[str] = None, mapping: Optional[Dict[str, Any]] = None,
             encoder_epochs: int = 50, device: str = "auto", progress: bool = True, **evaluate_settings
             ) -> Dict[str, Any]:
    """Score the run's validation and test images and write metrics.json (notebooks 03 + 04); returns the
    metrics. `method`: None for the one `fit` trained last; `mapping`: MappingConfig fields (search
    settings); `evaluate_settings`: `pipeline.evaluate`'s (map_kind, sigma, threshold_q, eval_size)."""
    from .detection.pipeline import evaluate as evaluate_mapping
    from .detection.pipeline import run_mapping
    name, cfg = _fitted(run, method)
    paths = run_paths_of(run)
    config = MappingConfig(method=_mapping_method(name), **(mapping or {}))
    run_mapping(config, data_root=cfg.data_root, category=paths.category, output_dir=paths.output_dir,
                device=device, encoder_epochs=encoder_epochs, progress=progress)
    metrics, _ = evaluate_mapping(data_root=cfg.data_root, category=paths.category, output_dir=paths.output_dir,
                                  method=config.method, **evaluate_settings)
    return metrics


def predict(run: PathLike, images: Union[torch.Tensor, Sequence[PathLike]], *, method: Optional[str] = None,
            threshold: Optional[float] = None, device: str = "auto", progress: bool = False):
    """Score new images with the evaluated run (`detection.scoring.Scorer`: its settings and threshold).

    images: image files (any format the library reads) or a tensor (B, 3, S, S) in [-1, 1] at the run's
    image size. Returns a `ScoreResult`: scores (B,), maps (B, S, S), reconstructions (restorations for
    the restorer), decisions at the threshold (None without one)."""
    from .data.images import load_image
    from .detection.scoring import Scorer
    name, _ = _fitted(run, method)
    scorer = Scorer(run, method=_mapping_method(name), device=device)
    if not isinstance(images, torch.Tensor):
        images = torch.stack([load_image(p, scorer.image_size) for p in images])
    return scorer.score(images, threshold=threshold, progress=progress)


__all__ = ["METHODS", "fit", "evaluate", "predict", "method_name"]
