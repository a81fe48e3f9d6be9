"""The detection pipeline behind notebooks 03 and 04: map images with a trained TransGAN, turn the
residuals into anomaly maps and scores, and measure them honestly.

Protocol (fixed before looking at any test number):
- the validation normals are the same seeded split of train/good that training used; the decision
  threshold is a percentile of *their* scores; the test set is used only to report metrics;
- the image score is the max of the Gaussian-smoothed map. Its kind (`map_kind="auto"`, the
  default) is the one of `maps.MAP_KINDS` that best separates the validation normals from CutPaste
  copies of them (`synthetic.cutpaste`, mapped beside them by `run_mapping`): a choice made with
  no test image. The other scores and maps (AnoGAN total, feature map, every map kind) are
  reported beside it under `alternatives`, never chosen by their test AUROC;
- the baselines (mean training image, raw-pixel patch nearest neighbour) are scored by the same code
  on the same images.

Files under `<output_dir>/<category>/`: `checkpoint.pt` (GAN, from training), `encoder.pt`,
`mapping_<method>.pt` (codes, reconstructions, scores of validation and test images),
`metrics.json`, figures.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..config import TrainConfig
from ..data.mvtec import stack_dataset
from ..data.splits import open_split, train_val_split
from ..data.synthetic import cutpaste
from ..gan.checkpoint import load_checkpoint, load_models
from ..metrics import compute_metrics, image_auroc, roc_points, threshold_from_normals
from ..utils import PathLike, atomic_torch_save, atomic_write_json, resolve_device
from .baselines import run_baselines
from .encoder_training import encoder_checkpoint_path, load_encoder, train_encoder
from .mapping import MappingResult, map_images
from .maps import (
    MAP_KINDS,
    anomaly_maps,
    feature_residual_map,
    gaussian_smooth,
    max_score,
)

# The map kind used when `map_kind="auto"` has nothing to choose with (a mapping file written
# before synthetic anomalies were mapped).
FALLBACK_MAP_KIND = "residual"


def category_dir(output_dir: PathLike, category: str) -> Path:
    return Path(output_dir) / category


def mapping_path(output_dir: PathLike, category: str, method: str) -> Path:
    return category_dir(output_dir, category) / f"mapping_{method}.pt"


def load_splits(data_root: PathLike, category: str, train_config) -> Dict[str, Any]:
    """Train / validation / test splits exactly as training made them (same seed and fraction)."""
    size = train_config.image_size
    train, val = train_val_split(data_root, category, size, train_config.val_fraction, train_config.seed)
    test = open_split(data_root, category, "test", size)
    return {"train": stack_dataset(train), "val": stack_dataset(val), "test": stack_dataset(test)}


def _gan_fingerprint(checkpoint: Path) -> str:
    """Identifies one written checkpoint file (path, size, mtime) without loading it (base: GBs)."""
    st = checkpoint.stat()
    return f"{checkpoint.resolve()}@{st.st_size}-{st.st_mtime_ns}"


def get_encoder(G, D, splits, *, output_dir, category, checkpoint: Path, epochs: int, batch_size: int,
                device, seed: int = 0, progress: bool = True):
    """The f-AnoGAN encoder of this GAN: loaded from `encoder.pt` when it was trained against this
    very checkpoint, else trained now on the training normals (validation normals for its val loss)."""
    path = encoder_checkpoint_path(output_dir, category)
    fingerprint = _gan_fingerprint(checkpoint)
    if path.is_file():
        E, meta = load_encoder(path, device=str(device))
        if meta.get("gan_checkpoint") == fingerprint:
            return E, meta.get("history") or {}
        print(f"{path} was trained against another GAN checkpoint; training a new encoder")
    return train_encoder(G, D, splits["train"]["images"], epochs=epochs, batch_size=batch_size, seed=seed,
                         device=str(device), progress=progress, val_images=splits["val"]["images"],
                         checkpoint_path=path, gan_checkpoint=fingerprint,
                         model_size=_encoder_size(G))


def _encoder_size(G) -> str:
    n = sum(p.numel() for p in G.parameters())
    return "tiny" if n < 5e6 else ("small" if n < 50e6 else "base")


def _result_to_dict(r: MappingResult) -> Dict[str, Any]:
    keep = ("z", "reconstructions", "residual_score", "feature_score", "total_score", "loss_history",
            "history_steps", "seconds_per_image", "method", "iterations", "lambda_", "feature",
            "features_x", "features_rec", "feature_grid")
    return {k: getattr(r, k) for k in keep}


def run_mapping(*, data_root: PathLike, category: str, output_dir: PathLike, method: str = "iterative",
                iterations: Optional[int] = 1000, lambda_: float = 0.1, batch_size: int = 32,
                device: str = "auto", restarts: int = 1, candidates: int = 0, feature: str = "discriminator",
                encoder_epochs: int = 50, seed: int = 0, synthetic_copies: int = 3,
                progress: bool = True) -> Dict[str, Any]:
    """Map the validation normals and the test images of a category to latent codes.

    Reads `<output_dir>/<category>/checkpoint.pt`; trains the encoder first when `method` needs it
    and none fits. Also maps `synthetic_copies` CutPaste copies of each validation normal
    ("val_synthetic", with their images and masks; 0 = none), which `evaluate` uses to choose the
    map kind. Three copies, because with one the choice between map kinds flipped with the seed of
    the copies (20 demo normals against 20 copies); with three it did not.
    Saves everything to `mapping_<method>.pt` and returns that dict (plus the splits).
    """
    dev = resolve_device(device)
    ckpt_path = category_dir(output_dir, category) / "checkpoint.pt"
    G, D, model_config, train_config = load_models(ckpt_path, dev)
    splits = load_splits(data_root, category, train_config)
    encoder, encoder_history = None, None
    if method in ("encoder", "hybrid"):
        encoder, encoder_history = get_encoder(G, D, splits, output_dir=output_dir, category=category,
                                               checkpoint=ckpt_path, epochs=encoder_epochs,
                                               batch_size=batch_size, device=dev, seed=seed, progress=progress)
    common = dict(method=method, encoder=encoder, iterations=iterations, lambda_=lambda_, batch_size=batch_size,
                  restarts=restarts, candidates=candidates, feature=feature, seed=seed, progress=progress)
    out: Dict[str, Any] = {"method": method, "category": category, "model_config": model_config.to_dict(),
                           "train_config": train_config.to_dict()}
    for name in ("val", "test"):
        result = map_images(G, D, splits[name]["images"], **common)
        out[name] = {**_result_to_dict(result), **{k: splits[name][k] for k in ("labels", "defects", "paths")}}
    if synthetic_copies > 0:
        # (B * copies, C, H, W): the copies of one normal are adjacent, so they alternate between
        # a CutPaste rectangle and a scar.
        images, masks = cutpaste(splits["val"]["images"].repeat_interleave(synthetic_copies, 0), seed=seed)
        out["val_synthetic"] = {**_result_to_dict(map_images(G, D, images, **common)), "images": images,
                                "masks": masks}
    out["encoder_history"] = encoder_history
    out["restarts"], out["candidates"] = restarts, candidates
    out["seconds_per_image"] = out["test"]["seconds_per_image"]
    out["iterations"] = out["test"]["iterations"]
    atomic_torch_save(out, mapping_path(output_dir, category, method))
    out["splits"] = splits
    return out


def load_mapping(output_dir: PathLike, category: str, method: str) -> Dict[str, Any]:
    path = mapping_path(output_dir, category, method)
    if not path.is_file():
        raise FileNotFoundError(f"no mapping results at {path}: run notebook 03 (run_mapping) with "
                                f"method={method!r} first")
    return torch.load(path, map_location="cpu", weights_only=False)


def score_maps(images: torch.Tensor, part: Dict[str, Any], *, map_kind: str = "residual",
               sigma: float = 4.0) -> Dict[str, torch.Tensor]:
    """Anomaly maps (B, H, W) and image scores (B,) of mapped images.

    Returns {"map": the `map_kind` map (smoothed), "score": its max, "anogan": (1-λ)R + λD,
    "feature_map": the discriminator-token residual map (smoothed) when tokens were kept}.
    """
    rec = part["reconstructions"]
    maps = anomaly_maps(images, rec, kind=map_kind, sigma=sigma)
    out = {"map": maps, "score": max_score(maps), "anogan": part["total_score"]}
    if part.get("features_x") is not None:
        fmap = feature_residual_map(part["features_x"], part["features_rec"], part["feature_grid"],
                                    tuple(images.shape[-2:]))
        out["feature_map"] = gaussian_smooth(fmap, sigma)
    return out


def select_map_kind(val_images: torch.Tensor, val: Dict[str, Any], synthetic: Optional[Dict[str, Any]], *,
                    sigma: float = 4.0, kinds=MAP_KINDS) -> Dict[str, Any]:
    """The map kind whose image score (max of the smoothed map) best separates the validation
    normals from their CutPaste copies: AUROC on those two sets only, ties to the earlier kind.

    Args:
        val_images, val: the validation normals (B, C, H, W) and their mapping part.
        synthetic: the "val_synthetic" mapping part (with "images"), or None.
    Returns:
        {"chosen": kind, "rule": text, "synthetic_auroc": {kind: AUROC}}; without synthetic
        anomalies, FALLBACK_MAP_KIND and an empty table.
    """
    if synthetic is None:
        return {"chosen": FALLBACK_MAP_KIND, "synthetic_auroc": {},
                "rule": "no synthetic anomalies in the mapping file (rerun notebook 03): default map kind"}
    labels = torch.cat([torch.zeros(len(val_images)), torch.ones(len(synthetic["images"]))])
    table = {}
    for kind in kinds:
        scores = [max_score(anomaly_maps(images, part["reconstructions"], kind=kind, sigma=sigma))
                  for images, part in ((val_images, val), (synthetic["images"], synthetic))]
        table[kind] = image_auroc(labels, torch.cat(scores))
    chosen = max(kinds, key=lambda k: table[k])  # max keeps the first of equal values
    return {"chosen": chosen, "synthetic_auroc": table,
            "rule": "highest image AUROC of validation normals vs their CutPaste copies"}


def _alternatives(test, val, images, val_images, masks, labels, defects, sigma) -> Dict[str, Any]:
    """Every other map / score rule, each thresholded on the validation normals, none selected."""
    rows = {}
    for kind in MAP_KINDS:
        t = score_maps(images, test, map_kind=kind, sigma=sigma)
        v = score_maps(val_images, val, map_kind=kind, sigma=sigma)
        rows[f"{kind}_map_max"] = compute_metrics(labels, t["score"], masks, t["map"], defects,
                                                  threshold_from_normals(v["score"]))
        if kind == "residual":
            rows["anogan_score"] = compute_metrics(labels, t["anogan"], masks, t["map"], defects,
                                                   threshold_from_normals(v["anogan"]))
            if "feature_map" in t:
                rows["feature_map_max"] = compute_metrics(
                    labels, max_score(t["feature_map"]), masks, t["feature_map"], defects,
                    threshold_from_normals(max_score(v["feature_map"])))
    return rows


def evaluate(*, data_root: PathLike, category: str, output_dir: PathLike, method: str = "iterative",
             map_kind: str = "auto", sigma: float = 4.0, threshold_q: float = 99.0,
             baselines: bool = True, mapping: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Metrics of a mapped category, written to `<output_dir>/<category>/metrics.json`.

    `map_kind`: one of `maps.MAP_KINDS`, or "auto" to choose it on validation normals and their
    CutPaste copies (`select_map_kind`; recorded under "map_selection").

    Returns the metrics dict plus (not saved to JSON) "arrays": maps, scores, images for figures and
    the explorer widget.
    """
    start = time.perf_counter()
    mapping = mapping or load_mapping(output_dir, category, method)
    splits = mapping.get("splits")
    if splits is None:
        saved = mapping.get("train_config")  # absent in mapping files of older versions
        if saved is None:
            saved = load_checkpoint(category_dir(output_dir, category) / "checkpoint.pt")["config"]
        train_config = TrainConfig.from_dict(saved)
        splits = load_splits(data_root, category, train_config)
    test, val = mapping["test"], mapping["val"]
    images, val_images = splits["test"]["images"], splits["val"]["images"]
    masks, labels, defects = splits["test"]["masks"][:, 0], splits["test"]["labels"], splits["test"]["defects"]
    selection = select_map_kind(val_images, val, mapping.get("val_synthetic"), sigma=sigma)
    if map_kind == "auto":
        map_kind = selection["chosen"]
    t = score_maps(images, test, map_kind=map_kind, sigma=sigma)
    v = score_maps(val_images, val, map_kind=map_kind, sigma=sigma)
    threshold = threshold_from_normals(v["score"], q=threshold_q)
    metrics = compute_metrics(labels, t["score"], masks, t["map"], defects, threshold)
    metrics.update({
        "method": method, "iterations": int(mapping["iterations"]), "lambda_": float(test["lambda_"]),
        "n_test": len(labels), "n_val": len(val_images), "seconds_per_image": float(mapping["seconds_per_image"]),
        "restarts": int(mapping.get("restarts", 1)), "candidates": int(mapping.get("candidates", 0)),
        "map_kind": map_kind, "map_selection": selection, "sigma": sigma, "score_rule": f"max of Gaussian-smoothed {map_kind} map",
        "threshold_rule": f"{threshold_q:g}th percentile of validation-normal scores",
        "category": category, "image_size": int(images.shape[-1]),
    })
    metrics["alternatives"] = _alternatives(test, val, images, val_images, masks, labels, defects, sigma)
    arrays = {"images": images, "reconstructions": test["reconstructions"], "maps": t["map"], "scores": t["score"],
              "masks": masks, "labels": labels, "defects": defects, "paths": test["paths"],
              "val_scores": v["score"], "roc": {"TransGAN": (*roc_points(labels, t["score"]), metrics["image_auroc"])}}
    if baselines:
        # Same map rule as the GAN; thresholds from the validation normals.
        metrics["baselines"], base_scores = run_baselines(
            splits["train"]["images"], images, labels, masks, defects, threshold_images=val_images,
            kind=map_kind, sigma=sigma, q=threshold_q, return_scores=True)
        for name, scores in base_scores.items():
            arrays["roc"][name] = (*roc_points(labels, scores), metrics["baselines"][name]["image_auroc"])
    metrics["evaluation_seconds"] = time.perf_counter() - start
    atomic_write_json(metrics, category_dir(output_dir, category) / "metrics.json")
    return {**metrics, "arrays": arrays}


def format_metrics(metrics: Dict[str, Any]) -> str:
    """A plain-text table: the GAN's rows (main rule and alternatives) beside the baselines."""
    def row(name, m):
        vals = [m.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")]
        return f"{name:<38}" + "".join(f"{'-' if v is None else f'{v:.3f}':>12}" for v in vals)

    lines = [f"{'':<38}{'image AUROC':>12}{'pixel AUROC':>12}{'AUPRO':>12}{'F1-max':>12}",
             row(f"TransGAN {metrics.get('method', '')} ({metrics.get('map_kind', '')})", metrics)]
    lines += [row(f"  alt: {name}", m) for name, m in metrics.get("alternatives", {}).items()]
    lines += [row(f"baseline: {name}", m) for name, m in metrics.get("baselines", {}).items()]
    lines += ["", "per defect type (TransGAN):"]
    lines += [row(f"  {name} (n={m.get('n')})", m) for name, m in metrics.get("per_defect", {}).items()]
    at = metrics.get("at_threshold") or {}
    if metrics.get("threshold") is not None:
        lines += ["", f"threshold {metrics['threshold']:.4f} ({metrics.get('threshold_rule', '')}): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in at.items())]
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
    if floor is None or metrics.get("image_auroc") is None or metrics["image_auroc"] > floor:
        return ""
    return (f"WARNING: image AUROC {metrics['image_auroc']:.3f} does not beat the mean training image "
            f"({floor:.3f}): the generator has learned too little to reconstruct normal images; train longer "
            "or on a GPU (model_size 'small'/'base') and check the samples and diversity curve of notebook 02.")
