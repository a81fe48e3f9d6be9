"""Evaluation, summary tables and figures of the dual-discriminator model (training: `cifar.train`).

Shape letters: N images, H, W image size.

Anomaly score: the score parts of `score_images` (L1, top-k patch, latent error, distance to the
nearest training normal's code and trunk features, nearness to the labelled anomalies' trunk
features, D_anomalous' logit) are standardised with the mean/std of the
*validation normals* and summed with `score_weights` (`combine_scores`). AUROC/AUPRC are computed on
these continuous scores; the decision threshold is a percentile of the validation normals' scores.
The raw-pixel floors (`pixel_baselines`: kNN on the normals, logistic regression with the labelled
anomalies) are scored on the same test images with the same metric code. The test set is used only
for the final report. `score_images` and `combine_scores` are defined in `cifar.score` (training logs
a validation AUROC every epoch) and re-exported here.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score

from ..metrics import classification_at_threshold, image_auroc, roc_points, threshold_from_normals
from ..utils import atomic_write_json, atomic_write_text
from ..viz.figures import plot_image_grid, plot_roc_curves
from .config import LOSS_NAMES, SCORE_PARTS, CifarConfig, run_files, run_root
from .data import LabelledImages, list_classes, load_classification, to_float
from .model import DualReconstructionModel
from .score import (
    BASELINES,
    banks,
    combine_scores,
    fit_combiner,
    labelled_anomalies,
    pixel_baselines,
    score_images,
    select_parts,
)
from .train import CifarRun, build_cifar_models, train_cifar


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def reconstruct(model: DualReconstructionModel, images: torch.Tensor,
                device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, H, W) -> (x, x_hat), both float (N, 3, H, W) in [-1, 1] on the CPU."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = to_float(images.to(device))
    x_hat = model.generator(model.encode(x)).float()
    model.train(was_training)
    return x.cpu(), x_hat.cpu()


# ----------------------------------------------------------------------------- evaluation
FLOORS = (*BASELINES, "untrained")  # metrics.json "baselines": the raw-pixel floors and the untrained model


def score_split(model: DualReconstructionModel, d_anomalous: Optional[torch.nn.Module], split, cfg: CifarConfig,
                device: Optional[torch.device] = None) -> Dict[str, Any]:
    """{"val", "test"} -> {"labels", every score part, "score"} of one model on a split; "score" is the
    parts standardised on the validation normals and summed with `cfg.score_weights`, or, with
    `cfg.score_combiner="logistic"` and labelled anomalies, the logistic combiner fitted on the
    validation normals and the labelled anomalies (`fit_combiner`; then "combiner" holds its record)."""
    bank, anomaly_bank = banks(model, split, cfg.seed, device)
    scores: Dict[str, Any] = {}
    for name, images, labels in (("val", split.val_images, split.val_labels),
                                 ("test", split.test_images, split.test_labels)):
        scores[name] = {"labels": labels.numpy(), **score_images(model, images, cfg, device, bank=bank,
                                                                 anomaly_bank=anomaly_bank, d_anomalous=d_anomalous)}
    reference = select_parts(scores["val"], scores["val"]["labels"] == 0)
    combiner, labelled = None, labelled_anomalies(split)
    if cfg.score_combiner == "logistic" and len(labelled):
        combiner = fit_combiner(reference, score_images(model, labelled, cfg, device, bank=bank,
                                                        anomaly_bank=anomaly_bank, d_anomalous=d_anomalous))
    for name in ("val", "test"):
        s = scores[name]
        s["score"] = combiner(s) if combiner is not None else combine_scores(s, reference, cfg.score_weights)
    if combiner is not None:
        scores["combiner"] = combiner.to_dict()
    return scores


def untrained_scores(cfg: CifarConfig, split, device: torch.device) -> Dict[str, Dict[str, np.ndarray]]:
    """`score_split` of the run's starting point: the models `train_cifar` builds from `cfg.seed`
    before its first step (ImageNet weights stay in a pretrained ResNet). What the same score gives
    without any training; the global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        models = build_cifar_models(cfg)
    for m in models:
        m.to(device).eval()
    return score_split(models.model, models.d_anomalous, split, cfg, device)


def evaluate_cifar(run: CifarRun) -> Tuple[Dict[str, Any], Dict[str, Dict[str, np.ndarray]]]:
    """Test metrics and the scores behind them.

    Returns (metrics, scores). metrics: auroc, auprc (combined continuous score), auroc_parts /
    auprc_parts per score part, baselines ({"knn", "logistic", "untrained"} -> {"auroc",
    "auprc"}: the raw-pixel floors on the same test images, and the same score from the untrained
    model, `untrained_scores`: whether training helped at all), threshold (the `threshold_percentile` of validation
    normals' scores), at_threshold (accuracy, precision, recall, f1, fpr on the test set), the
    split's counts, anomaly_class, class_name, protocol, epochs, seconds_per_epoch. scores: {"val",
    "test"} -> {"labels", one array per score part, "score"}; "test" also holds "knn", "logistic"
    and "untrained".
    """
    cfg, split = run.cfg, run.split
    scores = score_split(run.scoring_model, run.models.d_anomalous, split, cfg, run.device)
    test = scores["test"]
    test.update(pixel_baselines(split, seed=cfg.seed))
    test["untrained"] = untrained_scores(cfg, split, run.device)["test"]["score"]
    y = test["labels"]
    threshold = threshold_from_normals(scores["val"]["score"][scores["val"]["labels"] == 0],
                                       rule="percentile", q=cfg.threshold_percentile)
    both = 0 < y.sum() < y.size
    metrics: Dict[str, Any] = {
        "auroc": image_auroc(y, test["score"]),
        "auprc": float(average_precision_score(y, test["score"])) if both else math.nan,
        # NaN for a part that was not scored ("anomalies" without labelled anomalies)
        "auroc_parts": {k: image_auroc(y, test[k]) if k in test else math.nan for k in SCORE_PARTS},
        "auprc_parts": {k: float(average_precision_score(y, test[k])) if both and k in test else math.nan
                        for k in SCORE_PARTS},
        "baselines": {k: {"auroc": image_auroc(y, test[k]),
                          "auprc": float(average_precision_score(y, test[k])) if both else math.nan}
                      for k in FLOORS if k in test},
        "score_rule": scores.get("combiner") or {"rule": "standardised parts summed with score_weights",
                                                 "score_weights": dict(cfg.score_weights)},
        "threshold": threshold,
        "at_threshold": classification_at_threshold(y, test["score"], threshold),
        "anomaly_class": cfg.anomaly_class,
        "class_name": split.classes[split.target_class],
        "protocol": cfg.protocol,
        **split.counts(),
        "epochs": len(run.history),
        "seconds_per_epoch": float(np.mean([r["seconds"] for r in run.history])) if run.history else math.nan,
    }
    return metrics, scores


def save_metrics(metrics: Dict[str, Any], cfg: CifarConfig) -> Path:
    """Write `run_dir(cfg)/metrics.json` atomically; returns its path."""
    return atomic_write_json(metrics, run_files(cfg).metrics)


def run_cifar(cfg: CifarConfig, data: Optional[Tuple[LabelledImages, LabelledImages]] = None
              ) -> Tuple[CifarRun, Dict[str, Any]]:
    """Train, evaluate and write metrics.json for one class; returns (run, metrics)."""
    run = train_cifar(cfg, data=data)
    metrics, _ = evaluate_cifar(run)
    save_metrics(metrics, cfg)
    return run, metrics


SUMMARY_COLUMNS = ("anomaly_class", "class_name", "auroc", "auroc_knn", "auroc_logistic", "auroc_untrained", "auprc",
                   *(f"auroc_{k}" for k in SCORE_PARTS), "n_train_normal", "n_train_anomalous", "n_test",
                   "seconds_per_epoch")
MEAN_COLUMNS = ("auroc", "auroc_knn", "auroc_logistic", "auroc_untrained", "auprc",
                *(f"auroc_{k}" for k in SCORE_PARTS))


def run_all_classes(cfg: CifarConfig, classes: Optional[Sequence[Union[int, str]]] = None) -> List[Dict[str, Any]]:
    """Run `run_cifar` for each class in turn (default: all) and write the table.

    Writes `run_root(cfg)/summary.csv` and `summary.json` (rewritten after every class, so a
    stopped run keeps what it finished). Returns the rows, one per class plus a last "mean" row
    (mean of auroc, the floors' AUROCs (auroc_knn, auroc_logistic, auroc_untrained), auprc and the part
    AUROCs).
    """
    data = load_classification(cfg.dataset, cfg.data_root, image_size=cfg.image_size, download=cfg.download)
    classes = list(range(len(list_classes(cfg.dataset, cfg.data_root)))) if classes is None else list(classes)
    rows: List[Dict[str, Any]] = []
    for c in classes:
        _, m = run_cifar(dataclasses.replace(cfg, anomaly_class=c), data=data)
        rows.append({"anomaly_class": c, "class_name": m["class_name"], "auroc": m["auroc"],
                     "auprc": m["auprc"], **{f"auroc_{k}": m["auroc_parts"][k] for k in SCORE_PARTS},
                     **{f"auroc_{k}": m["baselines"].get(k, {}).get("auroc", math.nan) for k in FLOORS},
                     **{k: m[k] for k in ("n_train_normal", "n_train_anomalous", "n_test", "seconds_per_epoch")}})
        table = rows + [_mean_row(rows)]
        _write_table(table, run_root(cfg))
    return rows + [_mean_row(rows)]


def _mean_row(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    mean = {"anomaly_class": "mean", "class_name": ""}
    for k in MEAN_COLUMNS:
        mean[k] = float(np.nanmean([r[k] for r in rows])) if rows else math.nan
    return mean


def _write_table(table: List[Dict[str, Any]], root: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(buf.getvalue(), root / "summary.csv")
    atomic_write_json({"rows": table[:-1], "mean": table[-1]}, root / "summary.json")


# ----------------------------------------------------------------------------- figures
def plot_loss_curves(history: Sequence[Dict[str, Any]]) -> Figure:
    """Per-epoch curves: the six generator losses, both discriminator losses, validation AUROC."""
    fig = Figure(figsize=(13, 3.6))
    ax_g, ax_d, ax_v = fig.subplots(1, 3)
    epochs = [r["epoch"] for r in history]
    for key in LOSS_NAMES:
        ax_g.plot(epochs, [r[key] for r in history], marker=".", label=key)
    for key in ("d_normal", "d_anomalous"):
        ax_d.plot(epochs, [r[key] for r in history], marker=".", label=key)
    ax_v.plot(epochs, [r["val_l1_normal"] for r in history], marker=".", label="val L1 (normals)")
    val_auroc = [(r["epoch"], r["val_auroc"]) for r in history if r.get("val_auroc") is not None]
    if val_auroc:
        ax_v.plot(*zip(*val_auroc), marker=".", label="val AUROC")
    for ax, title in ((ax_g, "generator losses (unweighted)"), (ax_d, "discriminator losses"),
                      (ax_v, "validation")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_test_roc(metrics: Dict[str, Any], test: Dict[str, np.ndarray]) -> Figure:
    """Test ROC curves of the combined score, each score part, the raw-pixel floors and the untrained
    model (`evaluate_cifar`'s metrics and its scores["test"])."""
    y = test["labels"]
    curves = {"score": (*roc_points(y, test["score"]), metrics["auroc"])}
    curves.update({k: (*roc_points(y, test[k]), metrics["auroc_parts"][k]) for k in SCORE_PARTS if k in test})
    curves.update({(f"floor: pixel {k}" if k in BASELINES else "floor: untrained model, same score"):
                   (*roc_points(y, test[k]), m["auroc"])
                   for k, m in metrics.get("baselines", {}).items()})
    return plot_roc_curves(curves, title="test ROC: the model, its score parts and the floors")


def plot_reconstructions(model: DualReconstructionModel, images: torch.Tensor, title: str, n: int = 8) -> Figure:
    """The first `n` of uint8 `images` (N, 3, H, W) (top row) above their reconstructions."""
    x, x_hat = reconstruct(model, images[:n])
    return plot_image_grid(torch.cat([x, x_hat]), nrow=max(x.shape[0], 1),
                           title=f"{title} (top) and reconstructions (bottom)")


__all__ = ["FLOORS", "score_images", "combine_scores", "score_split", "untrained_scores", "reconstruct",
           "evaluate_cifar", "save_metrics", "run_cifar", "run_all_classes", "SUMMARY_COLUMNS", "plot_loss_curves",
           "plot_test_roc", "plot_reconstructions"]
