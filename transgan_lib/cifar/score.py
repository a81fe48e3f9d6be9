"""Anomaly scores of the dual-discriminator model (used by training for its per-epoch validation AUROC,
and by `cifar.evaluate`), and the raw-pixel floors shown beside them.

Shape letters: N images, H, W image size, L latent size, D = 3 H W pixel values.

Score parts per image (`score_images`), higher = more anomalous:

* ``l1``, ``patch``: the reconstruction's mean and top-k patch errors |x - G(E1(x))|;
* ``latent``: ||E1(x) - E2(G(E1(x)))||^2 / L (GANomaly's encoder error);
* ``nearest``: the distance of E1(x) to the nearest E1 code of the training normals (`feature_bank`):
  how far the learned latent puts an image from every normal it was trained on;
* ``features``: the same question asked of the trained encoder trunk at every depth: for each of its
  stages (`ResNetFeatures.with_stages`: pooled, L2-normalised), the cosine distance to the nearest
  training normal at that stage, summed over the stages. Fine stages see where the strokes are,
  deep ones what they form;
* ``anomalies``: minus the same sum measured to the nearest *labelled anomaly* (the few the model
  trained with): high when an image is close to a known anomaly. The semi-supervised part, as the
  logistic floor is the semi-supervised floor; absent without labelled anomalies;
* ``d_anomalous``: D_anomalous' logit on x (it was trained to call real labelled anomalies real).

`feature_bank` holds what these compare with: the codes and stage features of the training normals
(and, for ``anomalies``, of the labelled anomalies).
Each part is standardised with the mean/std of the *validation normals* and the parts are summed with
`score_weights` (`combine_scores`); parts with weight 0 are still reported (`auroc_parts`). Or, with
`score_combiner="logistic"`, a logistic regression on all the standardised parts (`fit_combiner`), fitted
on what a user has: the validation normals against the labelled anomalies. Never on a test image.

Floors (`pixel_baselines`), on raw pixels of the same test images: ``knn`` (distance to the nearest
training normal) and ``logistic`` (logistic regression on the training normals and the labelled
anomalies, balanced class weights: the semi-supervised floor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from ..metrics import image_auroc
from . import losses as L
from .config import SCORE_PARTS, CifarConfig
from .data import AnomalySplit, to_float
from .model import DualReconstructionModel

BANK_MAX = 10_000  # at most this many training normals (seeded subset) in the latent bank and the floors
BASELINES = ("knn", "logistic")
COMBINER_C = 0.1  # the logistic combiner's inverse L2 strength: ~15 labelled anomalies against 7 parts


def training_normals(split: AnomalySplit, n_max: int = BANK_MAX, seed: int = 0) -> torch.Tensor:
    """The training normals (uint8 (N, 3, H, W)), a seeded subset of `n_max` if there are more."""
    normals = split.train_images[split.train_labels == 0]
    if normals.shape[0] <= n_max:
        return normals
    keep = torch.randperm(normals.shape[0], generator=torch.Generator().manual_seed(seed))[:n_max]
    return normals[keep.sort().values]


class FeatureBank(NamedTuple):
    """What the ``nearest``, ``features`` and ``anomalies`` parts compare an image with (`feature_bank`)."""
    codes: torch.Tensor  # (M, L) E1 codes of the bank's images
    stages: List[torch.Tensor]  # one (M, D_s) tensor per trunk stage (`ResNetFeatures.with_stages`)


@torch.no_grad()
def feature_bank(model: DualReconstructionModel, images: torch.Tensor, device: Optional[torch.device] = None,
                 batch_size: int = 256) -> FeatureBank:
    """E1 codes and trunk stage features of uint8 `images` (N, 3, H, W) (the training normals, or the
    labelled anomalies), in eval mode (restored after), on `device`."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    codes, stages = [], []
    for i in range(0, images.shape[0], batch_size):
        x = to_float(images[i:i + batch_size].to(device))
        z, per_stage = model.encode_with_stages(x)
        codes.append(z.float())
        stages.append([s.float() for s in per_stage])
    model.train(was_training)
    return FeatureBank(torch.cat(codes), [torch.cat(per_stage) for per_stage in zip(*stages)])


def banks(model: DualReconstructionModel, split: AnomalySplit, seed: int = 0,
          device: Optional[torch.device] = None) -> Tuple[FeatureBank, Optional[FeatureBank]]:
    """(bank of the training normals, bank of the labelled anomalies or None without any)."""
    anomalies = split.train_images[split.train_labels == 1]
    return (feature_bank(model, training_normals(split, seed=seed), device),
            feature_bank(model, anomalies, device) if anomalies.shape[0] else None)


def _nearest_cosine(queries: List[torch.Tensor], bank: List[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of 1 - the largest cosine similarity to the bank (rows are unit vectors): (b,)."""
    return sum(1.0 - (q @ b.T).max(dim=1).values for q, b in zip(queries, bank))


@torch.no_grad()
def score_images(model: DualReconstructionModel, images: torch.Tensor, cfg: CifarConfig,
                 device: Optional[torch.device] = None, batch_size: int = 256, *,
                 bank: Optional[FeatureBank] = None, anomaly_bank: Optional[FeatureBank] = None,
                 d_anomalous: Optional[torch.nn.Module] = None) -> Dict[str, np.ndarray]:
    """Per-image score parts: (N,) numpy arrays, higher = more anomalous (see module doc).

    images: uint8 (N, 3, H, W). "l1", "patch", "latent" always; "nearest" and "features" with
    `bank` (`feature_bank` of the training normals); "anomalies" with `anomaly_bank` (of the labelled
    anomalies); "d_anomalous" with the discriminator. The modules are put in
    eval mode for scoring and restored after.
    """
    device = device or next(model.parameters()).device
    modules = [m for m in (model, d_anomalous) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in SCORE_PARTS}
    for i in range(0, images.shape[0], batch_size):
        x = to_float(images[i:i + batch_size].to(device))  # (b, 3, H, W)
        out = model(x, with_stages=bank is not None or anomaly_bank is not None)
        x_hat, z, stages = out["x_hat"].float(), out["z"].float(), out.get("stages")
        parts["l1"].append(L.per_image_l1(x, x_hat))
        parts["patch"].append(L.per_image_patch_error(x, x_hat, cfg.patch_size, cfg.patch_top_k))
        parts["latent"].append(L.per_image_latent_error(z, out["z_rec"].float()))
        if bank is not None:
            parts["nearest"].append(torch.cdist(z, bank.codes.to(z)).min(dim=1).values)  # (b, M) -> (b,)
            parts["features"].append(_nearest_cosine(stages, bank.stages))
        if anomaly_bank is not None:
            parts["anomalies"].append(-_nearest_cosine(stages, anomaly_bank.stages))
        if d_anomalous is not None:
            parts["d_anomalous"].append(d_anomalous(x).float().flatten())
    for m, mode in zip(modules, modes):
        m.train(mode)
    return {k: torch.cat(v).cpu().double().numpy() for k, v in parts.items() if v}


def combine_scores(parts: Dict[str, np.ndarray], reference: Dict[str, np.ndarray],
                   weights: Dict[str, float]) -> np.ndarray:
    """Weighted sum of the parts, each standardised by the mean/std of `reference` (validation
    normals' parts): (N,) scores on a common scale whatever the parts' units. Parts with weight 0
    (or missing from `weights`) are left out, and so are parts that were not scored (``anomalies``
    of a split without labelled anomalies)."""
    total = np.zeros_like(next(iter(parts.values())))
    for name, w in weights.items():
        if w == 0 or name not in parts:
            continue
        mu, sd = float(np.mean(reference[name])), float(np.std(reference[name]))
        total = total + w * (parts[name] - mu) / max(sd, 1e-12)
    return total


@dataclass
class Combiner:
    """A logistic regression on the score parts, each standardised by the validation normals' mean/std
    (`fit_combiner`). Called on a dict of parts, it returns (N,) scores (the decision function)."""
    parts: Tuple[str, ...]
    mean: np.ndarray  # (P,)
    std: np.ndarray  # (P,)
    coef: np.ndarray  # (P,)
    intercept: float

    def __call__(self, parts: Dict[str, np.ndarray]) -> np.ndarray:
        X = np.stack([(parts[p] - m) / s for p, m, s in zip(self.parts, self.mean, self.std)], axis=1)  # (N, P)
        return X @ self.coef + self.intercept

    def to_dict(self) -> Dict[str, Any]:
        """What metrics.json records: each part's coefficient (on its standardised scale) and the intercept."""
        return {"rule": "logistic regression on the standardised parts: validation normals (0) vs the labelled "
                        f"anomalies (1), balanced class weights, C={COMBINER_C:g}",
                "coef": dict(zip(self.parts, self.coef.tolist())), "intercept": self.intercept}


def fit_combiner(normals: Dict[str, np.ndarray], anomalies: Dict[str, np.ndarray]) -> Combiner:
    """The logistic combiner of the parts both dicts hold ((N,) arrays each): `normals` the validation
    normals' parts (they also standardise), `anomalies` the labelled anomalies' (those trained with)."""
    names = tuple(p for p in SCORE_PARTS if p in normals and p in anomalies)
    mean = np.array([normals[p].mean() for p in names])
    std = np.array([max(float(normals[p].std()), 1e-12) for p in names])
    X = np.concatenate([np.stack([(d[p] - m) / s for p, m, s in zip(names, mean, std)], axis=1)
                        for d in (normals, anomalies)])  # (N + A, P)
    y = np.r_[np.zeros(len(normals[names[0]])), np.ones(len(anomalies[names[0]]))]
    clf = LogisticRegression(class_weight="balanced", C=COMBINER_C, max_iter=2000).fit(X, y)
    return Combiner(names, mean, std, clf.coef_[0].copy(), float(clf.intercept_[0]))


def labelled_anomalies(split: AnomalySplit) -> torch.Tensor:
    """The labelled anomalies a run has: the training ones and those held out for validation (uint8)."""
    return torch.cat([split.train_images[split.train_labels == 1], split.val_images[split.val_labels == 1]])


def select_parts(parts: Dict[str, np.ndarray], keep: np.ndarray) -> Dict[str, np.ndarray]:
    """The images of `keep` ((N,) boolean mask or indices) in every array of `parts`."""
    return {k: v[keep] for k, v in parts.items()}


def validation_auroc(model: DualReconstructionModel, split: AnomalySplit, cfg: CifarConfig,
                     d_anomalous: Optional[torch.nn.Module] = None) -> Tuple[float, Optional[float]]:
    """(mean L1 of validation normals, validation AUROC or None without validation anomalies). The AUROC is the
    `score_weights` sum's whatever `score_combiner`: the per-epoch curve fits no combiner."""
    labels = split.val_labels.numpy()
    bank, anomaly_bank = banks(model, split, cfg.seed)
    parts = score_images(model, split.val_images, cfg, bank=bank, anomaly_bank=anomaly_bank, d_anomalous=d_anomalous)
    normal = select_parts(parts, labels == 0)
    if not (labels == 1).any():
        return float(normal["l1"].mean()), None
    return float(normal["l1"].mean()), image_auroc(labels, combine_scores(parts, normal, cfg.score_weights))


def pixel_baselines(split: AnomalySplit, seed: int = 0) -> Dict[str, np.ndarray]:
    """Raw-pixel floors on the test images: {"knn", "logistic"} -> (N,) scores (see module doc).

    Both see the training normals (a seeded subset of `BANK_MAX` if more); "logistic" also the
    labelled training anomalies (none: it is left out).
    """
    normals = training_normals(split, seed=seed)
    flat_n = to_float(normals).flatten(1).numpy()  # (M, D)
    test = to_float(split.test_images).flatten(1).numpy()  # (N, D)
    dist, _ = NearestNeighbors(n_neighbors=1).fit(flat_n).kneighbors(test)
    out = {"knn": dist[:, 0].astype(np.float64)}
    anomalies = to_float(split.train_images[split.train_labels == 1]).flatten(1).numpy()
    if anomalies.shape[0]:
        X = np.concatenate([flat_n, anomalies])
        y = np.r_[np.zeros(flat_n.shape[0]), np.ones(anomalies.shape[0])]
        clf = LogisticRegression(class_weight="balanced", max_iter=1000).fit(X, y)
        out["logistic"] = clf.decision_function(test).astype(np.float64)
    return out


__all__ = ["BANK_MAX", "BASELINES", "FeatureBank", "training_normals", "feature_bank", "banks", "score_images",
           "combine_scores", "select_parts", "validation_auroc", "pixel_baselines"]
