"""Training of the dual-discriminator model on imbalanced CIFAR-10 / folders (evaluation: `cifar_eval`).

Shape letters: B batch (Bn normals + Ba labelled anomalies), H, W image size, L latent size, N images.

One training step (`train_step`):
  1. encode and reconstruct the normals and the labelled anomalies: z = E1(x), x_hat = G(z);
  2. update D_normal (real normals vs reconstructions of normals) and D_anomalous (real labelled
     anomalies vs their reconstructions), each with its own hinge (default) or BCE loss - no
     gradient penalty, so no double backward through the ViT discriminators;
  3. update G and both encoder heads (and the ResNet trunk only when `finetune_encoder`) with the
     weighted sum of the six losses of `cifar_losses`. The latent loss compares E2(G(z)) with
     E1(x) detached: E2 learns to invert G, and E1 cannot shrink its latents to cheat the loss.
Batches: every epoch walks once over the normals in a seeded random order; each step also draws
`anomaly_batch_size` labelled anomalies *with replacement*, so every step sees some although they
are few (5 % of one class by default).

Anomaly score parts (`score_images`, `combine_scores`): per image the L1 error, the top-k patch error
and the latent error, each standardised with the mean/std of the *validation normals* and summed with
`score_weights`. They live here, not in `cifar_eval`, because every epoch logs a validation AUROC;
`cifar_eval` imports them from here (one direction, no import cycle).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, ModelConfig, dataclass_from_dict
from ..metrics import image_auroc
from ..utils import (
    atomic_torch_save,
    autocast,
    autocast_dtype,
    resolve_device,
    seed_everything,
)
from . import losses as L
from .data import (
    AnomalySplit,
    LabelledImages,
    load_classification,
    make_anomaly_split,
    to_float,
)
from .model import FEATURE_EXTRACTORS, DualReconstructionModel, build_dual_models

# Encoder defaults per model size: (feature extractor, ResNet input size). `tiny` keeps a CPU epoch
# over ~1,300 32x32 images under a minute.
ENCODER_PRESETS: Dict[str, Tuple[str, int]] = {
    "tiny": ("resnet18", 64), "small": ("resnet50", 128), "base": ("resnet50", 224)}
LOSS_NAMES = ("l1", "patch", "latent", "adv_normal", "adv_anomalous", "abc")
SCORE_PARTS = ("l1", "patch", "latent")


@dataclass
class CifarConfig:
    """Imbalanced anomaly detection with two discriminators (notebook 05 uses the same names)."""
    dataset: str = "cifar10"  # "cifar10" or "folder"
    data_root: str = "data"
    download: bool = True
    anomaly_class: Union[int, str] = 0  # index into the sorted class names, or a name
    protocol: str = "one_vs_rest_anomaly"  # or "one_class_normal" (anomaly_class = the normal class)
    labelled_anomaly_ratio: float = 0.05
    val_fraction: float = 0.1
    max_train_images: Optional[int] = None  # seeded subset of the train split (e.g. for CPU runs)
    max_test_images: Optional[int] = None
    image_size: int = 32
    model_size: str = "base"
    latent_dim: int = 256
    feature_extractor: Optional[str] = None  # "resnet50" / "resnet18"; None: ENCODER_PRESETS
    encoder_input_size: Optional[int] = None  # None: ENCODER_PRESETS
    pretrained: bool = True
    finetune_encoder: bool = False
    head_hidden: int = 512
    epochs: int = 15
    batch_size: int = 64
    anomaly_batch_size: Optional[int] = None  # None: max(1, batch_size // 4)
    lr: float = 1e-4
    beta1: float = 0.001
    beta2: float = 0.99
    d_loss: str = "hinge"  # or "bce"
    grad_clip: float = 5.0
    w_l1: float = 10.0
    w_patch: float = 10.0
    w_latent: float = 1.0
    w_adv_normal: float = 1.0
    w_adv_anomalous: float = 1.0
    w_abc: float = 1.0
    patch_size: int = 8
    patch_top_k: int = 4
    abc_eps: float = 1e-6
    score_weights: Dict[str, float] = field(default_factory=lambda: {"l1": 1.0, "patch": 1.0, "latent": 1.0})
    threshold_percentile: float = 99.0
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # as TrainConfig: bf16/fp16 autocast on CUDA, fp32 on CPU
    checkpoint_every: int = 1
    resume: bool = False  # continue from an existing checkpoint of the same config
    progress: bool = True
    model: Dict[str, Any] = field(default_factory=dict)  # extra ModelConfig overrides

    def __post_init__(self):
        if self.dataset not in ("cifar10", "folder"):
            raise ConfigError(f"dataset must be 'cifar10' or 'folder', got {self.dataset!r}")
        if self.protocol not in ("one_vs_rest_anomaly", "one_class_normal"):
            raise ConfigError(f"protocol must be 'one_vs_rest_anomaly' or 'one_class_normal', got {self.protocol!r}")
        if self.d_loss not in L.D_LOSSES:
            raise ConfigError(f"d_loss must be one of {L.D_LOSSES}, got {self.d_loss!r}")
        preset = ENCODER_PRESETS.get(self.model_size, ENCODER_PRESETS["base"])
        self.feature_extractor = self.feature_extractor or preset[0]
        self.encoder_input_size = self.encoder_input_size or preset[1]
        if self.feature_extractor not in FEATURE_EXTRACTORS:
            raise ConfigError(f"feature_extractor must be one of {list(FEATURE_EXTRACTORS)}, "
                              f"got {self.feature_extractor!r}")
        unknown = sorted(set(self.score_weights) - set(SCORE_PARTS))
        if unknown:
            raise ConfigError(f"score_weights has unknown parts {unknown}; known: {list(SCORE_PARTS)}")
        if self.epochs < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ConfigError(f"need epochs >= 0, batch_size >= 1, checkpoint_every >= 1; got {self.epochs}, "
                              f"{self.batch_size}, {self.checkpoint_every}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        self.model_config()  # validate early

    def model_config(self) -> ModelConfig:
        return ModelConfig(image_size=self.image_size, model_size=self.model_size,
                           latent_dim=self.latent_dim, **self.model)

    def loss_weights(self) -> Dict[str, float]:
        return {name: float(getattr(self, f"w_{name}")) for name in LOSS_NAMES}

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CifarConfig":
        return dataclass_from_dict(cls, d)


class CifarModels(NamedTuple):
    model: DualReconstructionModel
    d_normal: torch.nn.Module
    d_anomalous: torch.nn.Module


class CifarOptimizers(NamedTuple):
    g: torch.optim.Optimizer
    d_normal: torch.optim.Optimizer
    d_anomalous: torch.optim.Optimizer


@dataclass
class CifarRun:
    """A trained model with its data split, per-epoch history and where its files go."""
    cfg: CifarConfig
    models: CifarModels
    split: AnomalySplit
    history: List[Dict[str, Any]]
    device: torch.device
    run_dir: Path


# ----------------------------------------------------------------------------- set-up
def run_root(cfg: CifarConfig) -> Path:
    """`<output_dir>/cifar` (the inverse protocol: `<output_dir>/cifar_one_class_normal`)."""
    return Path(cfg.output_dir) / ("cifar" if cfg.protocol == "one_vs_rest_anomaly" else "cifar_one_class_normal")


def run_dir(cfg: CifarConfig) -> Path:
    """`run_root(cfg)/<anomaly_class>`: checkpoint.pt and metrics.json of one class."""
    return run_root(cfg) / str(cfg.anomaly_class)


def build_cifar_models(cfg: CifarConfig) -> CifarModels:
    """(model, D_normal, D_anomalous) for `cfg` (random heads, G and Ds; ResNet as configured)."""
    return CifarModels(*build_dual_models(
        cfg.model_config(), feature_extractor=cfg.feature_extractor, pretrained=cfg.pretrained,
        encoder_input_size=cfg.encoder_input_size, finetune_encoder=cfg.finetune_encoder,
        head_hidden=cfg.head_hidden))


def build_optimizers(models: CifarModels, cfg: CifarConfig) -> CifarOptimizers:
    """Adam (cfg.lr, (beta1, beta2)) for G + encoder heads and for each discriminator."""
    def adam(params):
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return CifarOptimizers(adam(models.model.trainable_parameters()),
                           adam(models.d_normal.parameters()), adam(models.d_anomalous.parameters()))


def load_split(cfg: CifarConfig, data: Optional[Tuple[LabelledImages, LabelledImages]] = None) -> AnomalySplit:
    """The split of `cfg` (reads the dataset unless `data` = (train, test) is given)."""
    train, test = data or load_classification(cfg.dataset, cfg.data_root, image_size=cfg.image_size,
                                              download=cfg.download)
    return make_anomaly_split(train, test, target_class=cfg.anomaly_class, protocol=cfg.protocol,
                              labelled_anomaly_ratio=cfg.labelled_anomaly_ratio,
                              val_fraction=cfg.val_fraction, seed=cfg.seed,
                              max_train_images=cfg.max_train_images, max_test_images=cfg.max_test_images)


# ----------------------------------------------------------------------------- one step
def _update(opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float, scaler) -> None:
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    scaler.step(opt)


def train_step(models: CifarModels, opts: CifarOptimizers, x_n: torch.Tensor, x_a: torch.Tensor,
               cfg: CifarConfig, *, amp_dtype=None, scaler=None) -> Dict[str, torch.Tensor]:
    """One D_normal, D_anomalous and generator update.

    x_n: (Bn, 3, H, W) normals, x_a: (Ba, 3, H, W) labelled anomalies (Ba may be 0), in [-1, 1].
    Returns detached scalar tensors: the six generator losses, "g_total", "d_normal", "d_anomalous".
    """
    model, d_n, d_a = models
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    bn, ba, kind = x_n.shape[0], x_a.shape[0], cfg.d_loss
    # 1. encode and reconstruct normals and labelled anomalies in one pass
    x = torch.cat([x_n, x_a])  # (B, 3, H, W)
    with autocast(x.device, amp_dtype):
        z = model.encode(x)  # (B, L)
        x_hat = model.generator(z).float()  # (B, 3, H, W)
    xh_n, xh_a = x_hat[:bn], x_hat[bn:]
    # 2. the discriminators, each on its own pair of real images and detached reconstructions
    zero = x.new_zeros(())
    with autocast(x.device, amp_dtype):
        loss_dn = L.discriminator_normal_loss(d_n(x_n).float(), d_n(xh_n.detach()).float(), kind)
    _update(opts.d_normal, loss_dn, cfg.grad_clip, scaler)
    loss_da = zero
    if ba:
        with autocast(x.device, amp_dtype):
            loss_da = L.discriminator_anomalous_loss(d_a(x_a).float(), d_a(xh_a.detach()).float(), kind)
        _update(opts.d_anomalous, loss_da, cfg.grad_clip, scaler)
    # 3. generator + encoder heads: the six weighted losses (the Ds get no gradients here)
    d_n.requires_grad_(False)
    d_a.requires_grad_(False)
    with autocast(x.device, amp_dtype):
        z_rec = model.encode_reconstruction(xh_n).float()  # (Bn, L)
        losses = {
            "l1": L.l1_loss(x_n, xh_n),
            "patch": L.patch_loss(x_n, xh_n, cfg.patch_size, cfg.patch_top_k),
            "latent": L.latent_loss(z[:bn].detach().float(), z_rec),
            "adv_normal": L.adversarial_normal_loss(d_n(xh_n).float(), kind),
            "adv_anomalous": L.adversarial_anomalous_loss(d_a(xh_a).float(), kind) if ba else zero,
            "abc": L.abc_loss(L.per_image_mse(x, x_hat), torch.arange(bn + ba, device=x.device) >= bn,
                              cfg.abc_eps),
        }
    weights = cfg.loss_weights()
    g_total = sum(weights[k] * v for k, v in losses.items())
    _update(opts.g, g_total, cfg.grad_clip, scaler)
    d_n.requires_grad_(True)
    d_a.requires_grad_(True)
    scaler.update()
    out = {k: v.detach() for k, v in losses.items()}
    out.update(g_total=g_total.detach(), d_normal=loss_dn.detach(), d_anomalous=loss_da.detach())
    return out


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_images(model: DualReconstructionModel, images: torch.Tensor, cfg: CifarConfig,
                 device: Optional[torch.device] = None, batch_size: int = 256) -> Dict[str, np.ndarray]:
    """Per-image score parts {"l1", "patch", "latent"}: (N,) numpy arrays, higher = more anomalous.

    images: uint8 (N, 3, H, W). The model is put in eval mode for scoring and restored after.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in SCORE_PARTS}
    for i in range(0, images.shape[0], batch_size):
        x = to_float(images[i:i + batch_size].to(device))  # (b, 3, H, W)
        out = model(x)
        x_hat = out["x_hat"].float()
        parts["l1"].append(L.per_image_l1(x, x_hat))
        parts["patch"].append(L.per_image_patch_error(x, x_hat, cfg.patch_size, cfg.patch_top_k))
        parts["latent"].append(L.per_image_latent_error(out["z"].float(), out["z_rec"].float()))
    model.train(was_training)
    return {k: torch.cat(v).cpu().double().numpy() if v else np.zeros(0) for k, v in parts.items()}


def combine_scores(parts: Dict[str, np.ndarray], reference: Dict[str, np.ndarray],
                   weights: Dict[str, float]) -> np.ndarray:
    """Weighted sum of the parts, each standardised by the mean/std of `reference` (validation
    normals' parts): (N,) scores on a common scale whatever the parts' units."""
    total = np.zeros_like(next(iter(parts.values())))
    for name, w in weights.items():
        mu, sd = float(np.mean(reference[name])), float(np.std(reference[name]))
        total = total + w * (parts[name] - mu) / max(sd, 1e-12)
    return total

def _select(parts: Dict[str, np.ndarray], keep: np.ndarray) -> Dict[str, np.ndarray]:
    return {k: v[keep] for k, v in parts.items()}


def _validation_auroc(model, split: AnomalySplit, cfg: CifarConfig) -> Tuple[float, Optional[float]]:
    """(mean L1 of validation normals, validation AUROC or None without validation anomalies)."""
    labels = split.val_labels.numpy()
    parts = score_images(model, split.val_images, cfg)
    normal = _select(parts, labels == 0)
    if not (labels == 1).any():
        return float(normal["l1"].mean()), None
    return float(normal["l1"].mean()), image_auroc(labels, combine_scores(parts, normal, cfg.score_weights))


# ----------------------------------------------------------------------------- training
def _checkpoint(run: CifarRun, opts: CifarOptimizers, epoch: int) -> Dict[str, Any]:
    m = run.models
    return {"format": "cifar-dual-v1", "config": run.cfg.to_dict(),
            "model_config": run.cfg.model_config().to_dict(), "epoch": epoch, "history": run.history,
            "model": m.model.state_dict(), "d_normal": m.d_normal.state_dict(),
            "d_anomalous": m.d_anomalous.state_dict(), "opt_g": opts.g.state_dict(),
            "opt_d_normal": opts.d_normal.state_dict(), "opt_d_anomalous": opts.d_anomalous.state_dict()}


# Fields that may differ between a checkpoint and the config that resumes it.
_RESUME_FREE = ("epochs", "resume", "device", "progress", "amp", "checkpoint_every", "download")


def _resume(run: CifarRun, opts: CifarOptimizers, path: Path) -> int:
    ckpt = torch.load(path, map_location=run.device, weights_only=True)
    old, new = CifarConfig.from_dict(ckpt["config"]).to_dict(), run.cfg.to_dict()
    diff = sorted(k for k in new if k not in _RESUME_FREE and old[k] != new[k])
    if diff:
        raise ConfigError(f"{path} was trained with other settings ({diff}); use another output_dir "
                          "or resume=False to start again")
    run.models.model.load_state_dict(ckpt["model"])
    run.models.d_normal.load_state_dict(ckpt["d_normal"])
    run.models.d_anomalous.load_state_dict(ckpt["d_anomalous"])
    for opt, key in zip(opts, ("opt_g", "opt_d_normal", "opt_d_anomalous")):
        opt.load_state_dict(ckpt[key])
    run.history[:] = ckpt["history"]
    return int(ckpt["epoch"])


def _train_epoch(run: CifarRun, opts: CifarOptimizers, epoch: int, g: torch.Generator,
                 amp_dtype, scaler) -> Dict[str, float]:
    cfg, split, device = run.cfg, run.split, run.device
    normals = split.train_images[split.train_labels == 0].to(device)  # uint8 (Nn, 3, H, W)
    anomalies = split.train_images[split.train_labels == 1].to(device)  # uint8 (Na, 3, H, W)
    ba = 0 if anomalies.shape[0] == 0 else (cfg.anomaly_batch_size or max(1, cfg.batch_size // 4))
    order = torch.randperm(normals.shape[0], generator=g).to(device)
    sums: Dict[str, torch.Tensor] = {}
    # full batches only (a new order every epoch); a single short batch if there are fewer normals
    steps = range(0, max(normals.shape[0] - cfg.batch_size + 1, 1), cfg.batch_size)
    bar = tqdm(steps, desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False)
    for i, start in enumerate(bar):
        pick = torch.randint(max(anomalies.shape[0], 1), (ba,), generator=g).to(device)
        out = train_step(run.models, opts, to_float(normals[order[start:start + cfg.batch_size]]),
                         to_float(anomalies[pick]), cfg, amp_dtype=amp_dtype, scaler=scaler)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v
        if i % 20 == 0:
            bar.set_postfix(g=f"{out['g_total'].item():.3f}", d=f"{out['d_normal'].item():.3f}")
    return {k: float(v) / len(steps) for k, v in sums.items()}


def train_cifar(cfg: CifarConfig, split: Optional[AnomalySplit] = None,
                data: Optional[Tuple[LabelledImages, LabelledImages]] = None) -> CifarRun:
    """Train the model of `cfg`; returns a `CifarRun` whose history has one dict per epoch.

    `split` (or `data` = (train, test) to split) skips reading the dataset. A checkpoint
    (model, both Ds, optimizers, config, history) is written atomically to
    `run_dir(cfg)/checkpoint.pt` every `checkpoint_every` epochs and after the last one.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    split = split or load_split(cfg, data)
    models = CifarModels(*(m.to(device) for m in build_cifar_models(cfg)))
    opts = build_optimizers(models, cfg)
    run = CifarRun(cfg=cfg, models=models, split=split, history=[], device=device, run_dir=run_dir(cfg))
    path = run.run_dir / "checkpoint.pt"
    start = _resume(run, opts, path) if cfg.resume and path.is_file() else 0
    amp_dtype = autocast_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    g = torch.Generator().manual_seed(cfg.seed + start)
    for m in models:
        m.train()
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        row: Dict[str, Any] = {"epoch": epoch, **_train_epoch(run, opts, epoch, g, amp_dtype, scaler)}
        row["seconds"] = time.perf_counter() - t0
        row["val_l1_normal"], row["val_auroc"] = _validation_auroc(models.model, split, cfg)
        run.history.append(row)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            atomic_torch_save(_checkpoint(run, opts, epoch), path)
    return run


def load_cifar_checkpoint(path: Union[str, Path], device: str = "cpu") -> Tuple[CifarConfig, CifarModels, list]:
    """(config, models, history) from a checkpoint; works offline (the ResNet weights are inside)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    cfg = CifarConfig.from_dict(ckpt["config"])
    models = build_cifar_models(dataclasses.replace(cfg, pretrained=False))
    for module, key in zip(models, ("model", "d_normal", "d_anomalous")):
        module.load_state_dict(ckpt[key])
        module.to(device).eval()
    return cfg, models, ckpt["history"]

__all__ = ["CifarConfig", "CifarModels", "CifarOptimizers", "CifarRun", "ENCODER_PRESETS", "LOSS_NAMES",
           "SCORE_PARTS", "run_root", "run_dir", "build_cifar_models", "build_optimizers", "load_split",
           "train_step", "score_images", "combine_scores", "train_cifar", "load_cifar_checkpoint"]
