"""Scoring new images with an evaluated run, every setting read from the run's own files.

`score_images(checkpoint_or_run_dir, images)` (or `Scorer`, to load the networks once) maps and
scores images exactly as `pipeline.evaluate` scored the test images: the search settings of
`mapping_<method>.pt` (its `MappingConfig`), the map kind and the threshold of metrics.json, and
encoder.pt for "encoder"/"hybrid", each checked against the checkpoint given through the
fingerprints the files record (ConfigError naming the file and the fix otherwise). Each image's
initial codes are keyed by its content (`latent.image_keys`), so its score does not depend on the
other images scored with it, and the evaluated test images score as they did in metrics.json.
With method "restore" the run's file is restorer.pt and an image is scored in one pass of the
restorer (`methods.restorer.detect`), with the same checks.

Shape letters: B images, C channels, H/W image height/width.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ..config import FUSED_MAP_KIND, RESTORE_METHOD, ConfigError, MappingConfig
from ..runs import RunPaths, file_fingerprint, run_paths_of
from ..utils import PathLike, resolve_device
from .detectors import detect, detector_file, load_detector
from .pipeline import FALLBACK_MAP_KIND, score_maps
from .restorer.fusion import FusedMap
from .transgan.checkpoint import scoring_file, source_fingerprint
from .transgan.encoder import load_encoder
from .transgan.mapping import MappingResult
from .transgan.mapping_file import MappingRun

# MappingConfig fields that change no score (batching changes only float rounding)
SCORE_NEUTRAL = ("batch_size", "synthetic_copies", "threshold_rule", "fpr_target", "threshold_q", "calibration_dir")


@dataclass
class EvaluatedRun:
    """The files of one method's run beside a checkpoint, checked against that checkpoint.

    config: the settings the run's test images were scored with (metrics.json's when it evaluated
    this mapping file, else the mapping file's, else the library defaults, with a warning);
    map_kind: the map kind used ("auto" resolved); threshold: metrics.json's, or None.
    """
    paths: RunPaths
    method: str
    checkpoint_fingerprint: str
    mapping: Optional[MappingRun]
    metrics: Optional[Dict[str, Any]]
    config: MappingConfig
    map_kind: str
    threshold: Optional[float]


@dataclass
class ScoreResult:
    """Scores of B images (tensors on CPU), made as the evaluated run's test scores were.

    scores: (B,) max of the smoothed `config.map_kind` map; maps: (B, H, W); reconstructions:
    (B, C, H, W) = G(z*); decisions: (B,) bool, score >= threshold (None without a threshold);
    config: the settings used (map_kind resolved); mapping: the MappingResult (codes, AnoGAN
    total / residual / feature scores); threshold_rule: how the threshold was set (metrics.json's
    "threshold_rule", or "given by the caller").
    """
    scores: torch.Tensor
    maps: torch.Tensor
    reconstructions: torch.Tensor
    decisions: Optional[torch.Tensor]
    threshold: Optional[float]
    config: MappingConfig
    mapping: MappingResult
    threshold_rule: Optional[str] = None


def _checked_metrics(paths: RunPaths, method: str, fingerprint: str,
                     mapping: Optional[MappingRun]) -> Optional[Dict[str, Any]]:
    """metrics.json when it evaluated `method`, refused unless it belongs to this checkpoint and
    mapping file; None when absent or of another method."""
    if not paths.metrics.is_file():
        return None
    metrics = json.loads(paths.metrics.read_text())
    if metrics.get("method") != method:
        return None
    fix = f"rerun notebook 04 (pipeline.evaluate) with method={method!r}"
    recorded = metrics.get("fingerprints")
    if recorded is None:
        raise ConfigError(f"{paths.metrics} was written by an older version (no fingerprints): {fix}")
    if recorded.get("checkpoint") != fingerprint:
        raise ConfigError(f"{paths.metrics} was evaluated with another GAN checkpoint than {paths.checkpoint}: "
                          f"rerun notebooks 03 and 04 with method={method!r}")
    mapping_file = paths.mapping(method)
    if mapping is None or recorded.get("mapping") != file_fingerprint(mapping_file):
        raise ConfigError(f"{paths.metrics} evaluated another {mapping_file.name} than the one now at "
                          f"{mapping_file}: {fix}")
    return metrics


def _settings(paths: RunPaths, method: str, mapping: Optional[MappingRun],
              metrics: Optional[Dict[str, Any]]) -> Tuple[MappingConfig, str, Optional[float]]:
    """(config, map kind, threshold) of the run: see `EvaluatedRun`."""
    if metrics is not None:
        return MappingConfig.from_dict(metrics["mapping_config"]), metrics["map_kind"], metrics.get("threshold")
    if mapping is not None:
        config, problem = mapping.config, f"{paths.metrics} holds no evaluation of method={method!r}"
    else:
        config = MappingConfig(method=method)
        problem = f"no {paths.mapping(method)}: the library's default settings, which no evaluation used"
    kind = FALLBACK_MAP_KIND if config.map_kind == "auto" else config.map_kind
    warnings.warn(f"{problem}; map kind {kind!r} (run notebooks 03 and 04 with method={method!r} to score "
                  "as an evaluated run)")
    return config, kind, None


def load_evaluated_run(checkpoint_or_run_dir: PathLike, method: str = "iterative") -> EvaluatedRun:
    """The mapping file and metrics.json of `method` beside a checkpoint, each refused (ConfigError
    naming it and the fix) when it was made with another checkpoint or another mapping file.

    Args:
        checkpoint_or_run_dir: `<output_dir>/<category>/checkpoint.pt`, its weights.pt, or their
            folder. A folder that kept only weights.pt is scored with it: it records the
            fingerprint of the checkpoint it came from, which the other files are checked against.
    """
    paths = run_paths_of(checkpoint_or_run_dir)
    if not model_file(paths, method).is_file():
        hint = ("method 'restore' scores with the restorer: train it first with notebook 02 and "
                "-p objective restore (python -m transgan_lib demo --detectors restore on the demo)"
                if method == RESTORE_METHOD else
                "train the TransGAN first with notebook 02 (nor is its weights.pt there)")
        raise FileNotFoundError(f"no checkpoint at {detector_file(paths, method)}: {hint}")
    fingerprint = source_fingerprint(model_file(paths, method))
    mapping = None
    if paths.mapping(method).is_file():
        mapping = MappingRun.load(paths.mapping(method), method)
        mapping.check_checkpoint(fingerprint, path=paths.mapping(method), checkpoint=detector_file(paths, method))
    metrics = _checked_metrics(paths, method, fingerprint, mapping)
    config, kind, threshold = _settings(paths, method, mapping, metrics)
    return EvaluatedRun(paths=paths, method=method, checkpoint_fingerprint=fingerprint, mapping=mapping,
                        metrics=metrics, config=config, map_kind=kind, threshold=threshold)


def model_file(paths: RunPaths, method: str):
    """What scoring loads: restorer.pt for method "restore", else checkpoint.pt or its weights.pt."""
    return detector_file(paths, method) if method == RESTORE_METHOD else scoring_file(paths)


def apply_overrides(run: EvaluatedRun, overrides: Mapping[str, Any], *, warn: bool = True) -> MappingConfig:
    """`run.config` with `overrides` (MappingConfig fields; None values ignored) and `map_kind`
    resolved ("auto": the run's kind). With `warn`, a UserWarning names every override that changes
    how scores are made while the run's threshold was chosen for the evaluated settings."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("method", run.method) != run.method:
        raise ValueError(f"the method chooses the run's files: load the run with method={given['method']!r}")
    if given.get("map_kind") == "auto":
        given.pop("map_kind")
    evaluated = dataclasses.replace(run.config, map_kind=run.map_kind)
    config = dataclasses.replace(evaluated, **given)
    changed = [f"{f.name}={getattr(config, f.name)!r} (evaluated: {getattr(evaluated, f.name)!r})"
               for f in dataclasses.fields(config)
               if f.name not in SCORE_NEUTRAL and getattr(config, f.name) != getattr(evaluated, f.name)]
    if warn and changed and run.threshold is not None:
        warnings.warn(f"scoring with {', '.join(changed)}: the threshold {run.threshold:.4g} of {run.paths.metrics} "
                      "was chosen for the evaluated settings, so decisions may not hold; pass a threshold chosen "
                      "for these settings")
    return config


def _checked_encoder(run: EvaluatedRun, device: torch.device) -> nn.Module:
    """encoder.pt, refused unless it is the one the mapping file was made with (or, without a
    mapping file, one trained against this checkpoint)."""
    path, mapping_file = run.paths.encoder, run.paths.mapping(run.method)
    fix = f"rerun notebook 03 (pipeline.run_mapping) with method={run.method!r}, then notebook 04"
    if not path.is_file():
        raise FileNotFoundError(f"no encoder at {path}, which method={run.method!r} needs: {fix}")
    E, meta = load_encoder(path, device=str(device))
    if run.mapping is not None and file_fingerprint(path) != run.mapping.fingerprints.get("encoder"):
        raise ConfigError(f"{path} is not the encoder {mapping_file} was made with (retrained since?): {fix}")
    if meta.get("gan_checkpoint") != run.checkpoint_fingerprint:
        raise ConfigError(f"{path} was trained against another GAN checkpoint than {run.paths.checkpoint}: {fix}")
    return E


def _checked_fusion(run: EvaluatedRun) -> nn.Module:
    """fusion_<method>.pt, refused unless it is the one metrics.json's evaluation wrote."""
    path, fix = run.paths.fusion(run.method), f"rerun notebook 04 (pipeline.evaluate) with method={run.method!r}"
    recorded = ((run.metrics or {}).get("fingerprints") or {}).get("fusion")
    if recorded is None:
        raise ConfigError(f"map kind {FUSED_MAP_KIND!r} needs the fusion an evaluation fitted, and {run.paths.metrics} "
                          f"records none: {fix}")
    if not path.is_file() or file_fingerprint(path) != recorded:
        raise ConfigError(f"{path} is missing or not the fusion {run.paths.metrics} was evaluated with: {fix}")
    return FusedMap.load(path)


class Scorer:
    """The networks and settings of one evaluated run, loaded once to score many images."""

    def __init__(self, checkpoint_or_run_dir: PathLike, *, method: str = "iterative", device: str = "auto"):
        self.run = load_evaluated_run(checkpoint_or_run_dir, method)
        self.device = resolve_device(device)
        self.G, self.D, self.model_config, _ = load_detector(model_file(self.run.paths, method), method, self.device)
        self.encoder = _checked_encoder(self.run, self.device) if method in ("encoder", "hybrid") else None
        self._fusion = None

    @property
    def fusion(self) -> Optional[nn.Module]:
        """The run's fused map (`fusion_<method>.pt`, checked against metrics.json), loaded when first used."""
        if self._fusion is None:
            self._fusion = _checked_fusion(self.run).to(self.device)
        return self._fusion

    @property
    def image_size(self) -> int:
        return self.model_config.image_size

    def score(self, images: torch.Tensor, *, overrides: Optional[Mapping[str, Any]] = None,
              threshold: Optional[float] = None, progress: bool = True) -> ScoreResult:
        """Map and score images (B, C, H, W) in [-1, 1] at `image_size`.

        overrides: MappingConfig fields replacing the run's (warned about when they change how
        scores are made, see `apply_overrides`); threshold: replaces the run's.
        """
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"images must be {self.image_size}x{self.image_size} (the checkpoint's size), "
                             f"got shape {tuple(images.shape)}")
        config = apply_overrides(self.run, overrides or {}, warn=threshold is None)
        rule = (self.run.metrics or {}).get("threshold_rule") if threshold is None else "given by the caller"
        threshold = self.run.threshold if threshold is None else float(threshold)
        if threshold is None:
            warnings.warn(f"no threshold: pass one (--threshold) or evaluate with method={self.run.method!r} "
                          f"first (notebook 04 writes {self.run.paths.metrics}); decisions are left empty")
        result = detect(self.G, self.D, images, config, encoder=self.encoder, progress=progress)
        fusion = self.fusion if config.map_kind == FUSED_MAP_KIND else None
        scored = score_maps(images, result, map_kind=config.map_kind, sigma=config.sigma, fusion=fusion)
        decisions = None if threshold is None else scored["score"] >= threshold
        return ScoreResult(scores=scored["score"], maps=scored["map"], reconstructions=result.reconstructions,
                           decisions=decisions, threshold=threshold, config=config, mapping=result,
                           threshold_rule=None if threshold is None else rule)


def score_images(checkpoint_or_run_dir: PathLike, images: torch.Tensor, *, method: str = "iterative",
                 device: str = "auto", overrides: Optional[Mapping[str, Any]] = None,
                 threshold: Optional[float] = None, progress: bool = True) -> ScoreResult:
    """Score images (B, C, H, W) with the evaluated run of `method` beside a checkpoint (or in a
    run folder): `Scorer(checkpoint_or_run_dir, method=method, device=device).score(images, ...)`."""
    scorer = Scorer(checkpoint_or_run_dir, method=method, device=device)
    return scorer.score(images, overrides=overrides, threshold=threshold, progress=progress)
