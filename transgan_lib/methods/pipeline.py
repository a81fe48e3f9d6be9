"""The detection pipeline behind notebooks 03 and 04: map images with a trained TransGAN, turn the
residuals into anomaly maps and scores, and measure them honestly.

Protocol (fixed before looking at any test number):
- the validation normals are the same seeded split of train/good that training used; the decision
  threshold is a percentile of *their* scores; the test set is used only to report metrics (so a
  run trained with val_fraction=0 cannot be evaluated: ConfigError before any mapping);
- pixel AUROC and AUPRO are computed at the masks' own resolution (capped at 256 px), the maps
  upsampled to it (`evaluation`), for the GAN, its alternatives and the baselines alike;
- F1-max is the F1 at the best threshold on the test set: an oracle figure, always shown beside
  the F1 at the validation threshold;
- the image score is the max of the Gaussian-smoothed map. Its kind (`map_kind="auto"`, the
  default) is the one of `maps.MAP_KINDS` that best separates the validation normals from CutPaste
  copies of them (`synthetic.cutpaste`, mapped beside them by `run_mapping`): a choice made with
  no test image. The other scores and maps (AnoGAN total, feature map, every map kind) are
  reported beside it under `alternatives`, never chosen by their test AUROC;
- the baselines (mean training image, raw-pixel patch nearest neighbour) are scored by the same code
  on the same images.

Files under `<output_dir>/<category>/` (names: `runs.run_paths`): `checkpoint.pt` (GAN, from
training), `encoder.pt`, `mapping_<method>.pt` (a `mapping_file.MappingRun`: the MappingConfig, the
checkpoint's fingerprint, and the codes, reconstructions and scores of validation and test images),
`metrics.json`, figures. Each file records the fingerprint of those it was made from, and a file
made from another checkpoint is refused, never used silently.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..config import FUSED_MAP_KIND, ConfigError, EncoderConfig, MappingConfig, TrainConfig
from ..data.folder import folder_spec_of
from ..data.mvtec import stack_dataset
from ..data.splits import open_split, train_val_split
from ..detection.baselines import run_baselines
from ..detection.evaluation import load_evaluation_masks, metrics_at_size
from ..detection.maps import MAP_KINDS, feature_residual_map, gaussian_smooth, max_score
from ..metrics import roc_points, single_class_reason
from ..runs import RunPaths, file_fingerprint, run_paths
from ..utils import PathLike, atomic_write_json, check_writable, resolve_device
from .detectors import detect, detector_file, load_detector
from .restorer.detect import detection_maps, map_kinds_of
from .selection import FALLBACK_MAP_KIND, select_map_kind  # noqa: F401 (re-exported)
from .selection import copies_name, fit_run_fusion, map_synthetic, selection_family
from .thresholds import calibration_normals, decision_threshold, rule_of, threshold_record
from .transgan.encoder import ensure_encoder
from .transgan.mapping import MappingResult
from .transgan.mapping_file import MappedImages, MappingRun

NO_MASKS = "not available: some defective test images have no mask (image metrics only)"


def category_dir(output_dir: PathLike, category: str) -> Path:
    return run_paths(output_dir, category).root


def mapping_path(output_dir: PathLike, category: str, method: str) -> Path:
    return run_paths(output_dir, category).mapping(method)


def require_validation(train_config, n_val: Optional[int] = None) -> None:
    """ConfigError unless the run has validation normals (`n_val` of them, when counted): the
    threshold and the map-kind choice are made on them, never on the test set."""
    if train_config.val_fraction <= 0 or n_val == 0:
        raise ConfigError(
            f"no validation normals (val_fraction={train_config.val_fraction:g}"
            + ("" if n_val is None else f", {n_val} validation images") + "): the decision threshold and the "
            "map-kind choice are made on validation normals, never on the test set. Train with val_fraction > 0 "
            "(e.g. the default 0.1) and at least two training images")


def load_splits(data_root: PathLike, category: str, train_config) -> Dict[str, Any]:
    """Train / validation / test splits exactly as training made them (same seed and fraction);
    ConfigError when there is no validation normal (`require_validation`)."""
    size, folder = train_config.image_size, folder_spec_of(train_config)
    require_validation(train_config)
    train, val = train_val_split(data_root, category, size, train_config.val_fraction, train_config.seed, folder)
    require_validation(train_config, len(val))
    test = open_split(data_root, category, "test", size, folder)
    return {"train": stack_dataset(train), "val": stack_dataset(val), "test": stack_dataset(test)}


def encoder_size(G) -> str:
    """The encoder preset for a generator: "tiny" under 5M parameters, "small" under 50M, "base"."""
    n = sum(p.numel() for p in G.parameters())
    return "tiny" if n < 5e6 else ("small" if n < 50e6 else "base")


def get_encoder(G, D, splits, *, output_dir, category, checkpoint: Path, epochs: int, batch_size: int,
                device, seed: int = 0, progress: bool = True):
    """The f-AnoGAN encoder of this GAN (`encoder_training.ensure_encoder`): encoder.pt when it was
    trained against this very checkpoint with these settings for every epoch asked, else trained
    now on the training normals (validation normals for its val loss). Returns (E, history)."""
    settings = EncoderConfig(epochs=epochs, batch_size=batch_size, seed=seed, model_size=encoder_size(G))
    return ensure_encoder(G, D, splits["train"]["images"], path=run_paths(output_dir, category).encoder,
                          gan_fingerprint=file_fingerprint(checkpoint), settings=settings,
                          val_images=splits["val"]["images"], device=str(device), progress=progress)


def _mapped(result: MappingResult, split: Dict[str, Any]) -> MappedImages:
    return MappedImages(result=result, labels=split["labels"], defects=list(split["defects"]),
                        paths=list(split["paths"]))


def run_mapping(config: MappingConfig, *, data_root: PathLike, category: str, output_dir: PathLike,
                device: str = "auto", encoder_epochs: int = 50,
                progress: bool = True) -> Tuple[MappingRun, Dict[str, Any]]:
    """Map the validation normals and the test images of a category to latent codes with `config`.

    Reads `<output_dir>/<category>/checkpoint.pt`; when `config.method` needs an encoder, uses
    encoder.pt or trains one first (`get_encoder`: `encoder_epochs`, the config's batch_size and
    seed). Also maps `config.synthetic_copies` CutPaste copies of each validation normal
    ("val_synthetic"; 0 = none), which `evaluate` uses to choose the map kind. Three copies by
    default, because with one the choice between map kinds flipped with the seed of the copies (20
    demo normals against 20 copies); with three it did not. A checkpoint trained with
    val_fraction=0 is refused (ConfigError) before anything is mapped: nothing could be evaluated.

    Returns:
        (the MappingRun saved to `mapping_<method>.pt`, with the checkpoint's (and encoder's)
        fingerprint; the data splits {"train", "val", "test"}, for figures).
    """
    run, dev = run_paths(output_dir, category), resolve_device(device)
    checkpoint = detector_file(run, config.method)  # restorer.pt for method "restore"
    check_writable(run.root, "output folder")  # before any work
    G, D, model_config, train_config = load_detector(checkpoint, config.method, dev)  # missing: "train first"
    fingerprints = {"checkpoint": file_fingerprint(checkpoint), "encoder": None}
    family = selection_family(config, train_config)  # ConfigError before any work
    splits = load_splits(data_root, category, train_config)  # ConfigError first without validation normals
    encoder, encoder_history = None, None
    if config.method in ("encoder", "hybrid"):
        encoder, encoder_history = get_encoder(G, D, splits, output_dir=output_dir, category=category,
                                               checkpoint=run.checkpoint, epochs=encoder_epochs,
                                               batch_size=config.batch_size, device=dev, seed=config.seed,
                                               progress=progress)
        fingerprints["encoder"] = file_fingerprint(run.encoder)
    kw = dict(encoder=encoder, progress=progress)
    mapping = MappingRun(config=config, fingerprints=fingerprints, category=category,
                         model_config=model_config.to_dict(), train_config=train_config.to_dict(),
                         **{name: _mapped(detect(G, D, splits[name]["images"], config, **kw), splits[name])
                            for name in ("val", "test")},
                         val_synthetic=map_synthetic(G, D, splits["val"], config, family, **kw),
                         encoder_history=encoder_history)
    mapping.save(run.mapping(config.method))
    return mapping, splits


def load_mapping(output_dir: PathLike, category: str, method: str) -> MappingRun:
    """The MappingRun of `method` (FileNotFoundError / ConfigError saying to run notebook 03)."""
    return MappingRun.load(mapping_path(output_dir, category, method), method)


def score_maps(images: torch.Tensor, result, *, map_kind: str = "residual",
               sigma: float = 4.0, fusion=None) -> Dict[str, torch.Tensor]:
    """Anomaly maps (B, H, W) and image scores (B,) of mapped images.

    Args:
        images: (B, C, H, W) the mapped images.
        result: their MappingResult (or any object with its `reconstructions` (B, C, H, W),
            `total_score` and, optionally, `features_x`, `features_rec`, `feature_grid`).
        fusion: the run's `FusedMap`, for map kind "fused".
    Returns:
        {"map": the `map_kind` map (smoothed), "score": its max, "anogan": (1-λ)R + λD,
        "feature_map": the discriminator-token residual map (smoothed) when tokens were kept}.
    """
    maps = detection_maps(images, result, map_kind, sigma, fusion)
    out = {"map": maps, "score": max_score(maps), "anogan": result.total_score}
    if getattr(result, "features_x", None) is not None:
        fmap = feature_residual_map(result.features_x, result.features_rec, result.feature_grid,
                                    tuple(images.shape[-2:]))
        out["feature_map"] = gaussian_smooth(fmap, sigma)
    return out


def _alternatives(test, val, images, val_images, masks, labels, defects, sigma, fusion=None,
                  config: Optional[MappingConfig] = None) -> Dict[str, Any]:
    """Every other map / score rule, each thresholded on the calibration normals `val` (`val_images`) by the
    rule of `config` (`decision_threshold`; None: the library's default rule), none selected;
    pixel metrics at the size of `masks` (B, S, S). A restorer has no AnoGAN score (its total score
    is the max of the unsmoothed head map): no "anogan_score" row then."""
    rows, restorer = {}, getattr(test, "defect_maps", None) is not None
    config = config or MappingConfig()
    for kind in map_kinds_of(test) + ((FUSED_MAP_KIND,) if fusion is not None else ()):
        t = score_maps(images, test, map_kind=kind, sigma=sigma, fusion=fusion)
        v = score_maps(val_images, val, map_kind=kind, sigma=sigma, fusion=fusion)
        rows[f"{kind}_map_max"] = metrics_at_size(labels, t["score"], masks, t["map"], defects,
                                                  decision_threshold(v["score"], config))
        if kind == "residual" and not restorer:
            rows["anogan_score"] = metrics_at_size(labels, t["anogan"], masks, t["map"], defects,
                                                   decision_threshold(v["anogan"], config))
            if "feature_map" in t:
                rows["feature_map_max"] = metrics_at_size(
                    labels, max_score(t["feature_map"]), masks, t["feature_map"], defects,
                    decision_threshold(max_score(v["feature_map"]), config))
    return rows


def _checked_mapping(run: RunPaths, method: str) -> MappingRun:
    """The mapping file of `method`, refused (ConfigError) unless made with the checkpoint now there."""
    mapping, checkpoint = MappingRun.load(run.mapping(method), method), detector_file(run, method)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}, the one {run.mapping(method)} was mapped "
                                "with: cannot check that the mapping belongs to it")
    mapping.check_checkpoint(file_fingerprint(checkpoint), path=run.mapping(method), checkpoint=checkpoint)
    return mapping


def _splits_of(mapping: MappingRun, data_root: PathLike, path: Path) -> Dict[str, Any]:
    """The data splits the mapping was made from, checked against its recorded paths."""
    splits = load_splits(data_root, mapping.category, TrainConfig.from_dict(mapping.train_config))
    for name in ("val", "test"):
        if list(splits[name]["paths"]) != list(getattr(mapping, name).paths):
            raise ValueError(f"the {name} images under {data_root} are not those {path} mapped (data changed "
                             f"since?): rerun notebook 03 (pipeline.run_mapping) with method={mapping.method!r}")
    return splits


def _run_record(mapping: MappingRun, config: MappingConfig, run: RunPaths, test_scores) -> Dict[str, Any]:
    """The keys of metrics.json that say how the scores were made and from which files."""
    test = mapping.test.result
    return {
        "method": config.method, "iterations": int(test.iterations), "lambda_": float(test.lambda_),
        "feature": test.feature, "restarts": int(test.restarts), "candidates": int(test.candidates),
        "seconds_per_image": float(test.seconds_per_image), "sigma": config.sigma,
        "mapping_config": config.to_dict(),
        "fingerprints": {**mapping.fingerprints, "mapping": file_fingerprint(run.mapping(config.method))},
        "test_scores": {"paths": list(mapping.test.paths), "scores": [float(v) for v in test_scores]},
    }


def evaluate(*, data_root: PathLike, category: str, output_dir: PathLike, method: str = "iterative",
             map_kind: Optional[str] = None, sigma: Optional[float] = None, threshold_q: Optional[float] = None,
             baselines: bool = True, eval_size: Optional[int] = None, threshold_rule: Optional[str] = None,
             fpr_target: Optional[float] = None, calibration_dir: Optional[PathLike] = None,
             ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Metrics of a mapped category, written to `<output_dir>/<category>/metrics.json`.

    The mapping file of `method` must have been made with the checkpoint now at
    `<output_dir>/<category>/checkpoint.pt` (ConfigError otherwise: rerun notebook 03). Its
    MappingConfig gives the map and threshold settings; `map_kind`, `sigma`, `threshold_rule`,
    `fpr_target`, `threshold_q`, `calibration_dir` given here replace them (`threshold_q` alone selects the
    "percentile" rule, its old meaning). The threshold is set on the normals of `calibration_dir` when
    given (mapped here with the run's settings), else on the validation normals (`threshold_record`).
    `map_kind`: one of `maps.MAP_KINDS`, or "auto" to choose it on validation normals and their CutPaste
    copies (`select_map_kind`; recorded under "map_selection").
    `eval_size`: the size pixel metrics are computed at (recorded as "eval_size"); None = the
    masks' own size capped at 256 px (`evaluation.evaluation_size`). Image scores and `arrays` stay
    at model resolution.

    Returns:
        (metrics, as written to metrics.json, with "mapping_config", "fingerprints" and the
        per-image "test_scores"; arrays: maps, masks, scores, images at model resolution for figures
        and the explorer widget).
    """
    start, run = time.perf_counter(), run_paths(output_dir, category)
    check_writable(run.root, "output folder")  # before any work
    mapping = _checked_mapping(run, method)
    given = {"map_kind": map_kind, "sigma": sigma, "threshold_q": threshold_q, "fpr_target": fpr_target,
             "threshold_rule": rule_of(threshold_rule, threshold_q), "calibration_dir": calibration_dir}
    config = dataclasses.replace(mapping.config, **{k: v for k, v in given.items() if v is not None})
    splits = _splits_of(mapping, data_root, run.mapping(method))
    test, val, syn = mapping.test.result, mapping.val.result, mapping.val_synthetic
    images, val_images = splits["test"]["images"], splits["val"]["images"]
    labels, defects = splits["test"]["labels"], splits["test"]["defects"]
    folder = folder_spec_of(mapping.train_config)
    masks, size = load_evaluation_masks(data_root, category, images.shape[-1], mapping.test.paths, eval_size, folder)
    if single_class_reason(labels):
        print(f"NOTE: {single_class_reason(labels)}; they are null in metrics.json, with the reason under "
              "'unavailable'. Add test images of the missing class to measure the detector.")
    fusion, weight_auroc = fit_run_fusion(splits["train"]["images"], val_images, val, syn, config.sigma, config.seed)
    if fusion is None and config.map_kind == FUSED_MAP_KIND:
        raise ConfigError(f"map_kind {FUSED_MAP_KIND!r} is the restorer's head map fused with the patch distance, "
                          "its weight chosen on probe-defect copies: method 'restore' with synthetic_copies > 0 only")
    selection = select_map_kind(val_images, val, *((syn.images, syn.result) if syn else (None, None)),
                                sigma=config.sigma, copies=copies_name(syn), fusion=fusion)
    kind = selection["chosen"] if config.map_kind == "auto" else config.map_kind
    cal_images, cal = calibration_normals(config, run, mapping, splits, val_images, val)
    t = score_maps(images, test, map_kind=kind, sigma=config.sigma, fusion=fusion)
    v = score_maps(val_images, val, map_kind=kind, sigma=config.sigma, fusion=fusion)
    c = v if cal is val else score_maps(cal_images, cal, map_kind=kind, sigma=config.sigma, fusion=fusion)
    metrics = metrics_at_size(labels, t["score"], masks, t["map"], defects, decision_threshold(c["score"], config))
    metrics.update({"n_val": len(val_images), **threshold_record(config, len(cal_images)), "map_kind": kind,
                    "map_selection": selection, "category": category,
                    "score_rule": f"max of Gaussian-smoothed {kind} map", "image_size": int(images.shape[-1]),
                    "eval_size": size, "pixel_metrics_rule": f"maps upsampled (bilinear) to the {size} px masks"
                    if masks is not None else NO_MASKS,
                    **_run_record(mapping, config, run, t["score"])})
    if fusion is not None:  # kept whichever kind was chosen: `score --map-kind fused` and the alternatives use it
        fusion.save(run.fusion(method))
        metrics["fingerprints"]["fusion"] = file_fingerprint(run.fusion(method))
        metrics["fusion"] = {**fusion.settings(), "weight_auroc": weight_auroc,
                             "rule": f"weights with the highest image AUROC of validation normals vs their "
                                     f"{copies_name(syn)}; ties to the larger head weight, then the finer "
                                     f"patch part"}
    if masks is None:
        metrics.setdefault("unavailable", {}).update({"pixel_auroc": NO_MASKS, "aupro": NO_MASKS})
    metrics["alternatives"] = _alternatives(test, cal, images, cal_images, masks, labels, defects, config.sigma,
                                            fusion, config)
    arrays = {"images": images, "reconstructions": test.reconstructions, "maps": t["map"], "scores": t["score"],
              "masks": splits["test"]["masks"][:, 0], "labels": labels, "defects": defects, "paths": mapping.test.paths,
              "val_scores": v["score"], "calibration_scores": c["score"],
              "roc": {"TransGAN": (*roc_points(labels, t["score"]), metrics["image_auroc"])}}
    if baselines:
        # Same map rule as the GAN; thresholds by the same rule on the same calibration normals.
        metrics["baselines"], base_scores = run_baselines(
            splits["train"]["images"], images, labels, masks, defects, threshold_images=cal_images,
            kind=kind if kind in MAP_KINDS else FALLBACK_MAP_KIND, sigma=config.sigma, q=config.threshold_q,
            threshold_rule=config.threshold_rule, fpr_target=config.fpr_target, return_scores=True)
        for name, scores in base_scores.items():
            arrays["roc"][name] = (*roc_points(labels, scores), metrics["baselines"][name]["image_auroc"])
    metrics["evaluation_seconds"] = time.perf_counter() - start
    atomic_write_json(metrics, run.method_metrics(method))
    atomic_write_json(metrics, run.metrics)
    return metrics, arrays


def format_metrics(metrics: Dict[str, Any]) -> str:
    """A plain-text table: the GAN's rows (main rule and alternatives) beside the baselines.

    "F1-max (oracle)" is the F1 at the best threshold on the test set itself, which no detector
    can know; "F1 @ val thr" beside it is the F1 at the validation-normal threshold."""
    keys = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "image_f1_at_threshold")

    def row(name, m):
        return f"{name:<38}" + "".join(f"{'-' if m.get(k) is None else f'{m[k]:.3f}':>{w}}"
                                       for k, w in zip(keys, (12, 12, 12, 17, 14)))

    lines = [f"{'':<38}{'image AUROC':>12}{'pixel AUROC':>12}{'AUPRO':>12}{'F1-max (oracle)':>17}{'F1 @ val thr':>14}",
             row(f"TransGAN {metrics.get('method', '')} ({metrics.get('map_kind', '')})", metrics)]
    lines += [row(f"  alt: {name}", m) for name, m in metrics.get("alternatives", {}).items()]
    lines += [row(f"baseline: {name}", m) for name, m in metrics.get("baselines", {}).items()]
    lines += ["", "per defect type (TransGAN):"]
    lines += [row(f"  {name} (n={m.get('n')})", m) for name, m in metrics.get("per_defect", {}).items()]
    at = metrics.get("at_threshold") or {}
    if metrics.get("threshold") is not None:
        lines += ["", f"threshold {metrics['threshold']:.4f} ({metrics.get('threshold_rule', '')}): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in at.items())]
    if metrics.get("eval_size") is not None:
        lines += [f"pixel metrics at {metrics['eval_size']} px (maps of {metrics.get('image_size')} px upsampled, "
                  "bilinear); F1-max (oracle): best threshold on the test set itself"]
    sel = metrics.get("map_selection") or {}
    if sel.get("synthetic_auroc"):
        lines += [f"map kind {metrics.get('map_kind')!r}; {sel['rule']}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in sel["synthetic_auroc"].items())]
    lines += [verdict(metrics)] if verdict(metrics) else []
    lines += [f"{metrics.get('n_test')} test images, {metrics.get('seconds_per_image', float('nan')) * 1000:.1f} ms "
              f"per image ({metrics.get('iterations')} iterations)"]
    return "\n".join(lines)


def verdict(metrics: Dict[str, Any]) -> str:
    """A warning when the GAN does not beat the mean-image floor (it has then learned nothing useful)."""
    floor = (metrics.get("baselines") or {}).get("mean_image", {}).get("image_auroc")
    if floor is None or metrics.get("image_auroc") is None or not metrics["image_auroc"] <= floor:  # nan: no verdict
        return ""
    return (f"WARNING: image AUROC {metrics['image_auroc']:.3f} does not beat the mean training image "
            f"({floor:.3f}): the generator has learned too little to reconstruct normal images; train longer "
            "or on a GPU (model_size 'small'/'base') and check the samples and diversity curve of notebook 02.")
