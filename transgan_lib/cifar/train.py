"""Training of the dual-discriminator model on imbalanced CIFAR-10 / folders (settings: `cifar.config`,
scores: `cifar.score`, evaluation: `cifar.evaluate`).

Shape letters: B batch (Bn normals + Ba labelled anomalies), H, W image size, L latent size, N images.

One training step (`train_step`):
  1. encode and reconstruct the normals and the labelled anomalies: z = E1(x), x_hat = G(z);
  2. update D_normal (real normals vs reconstructions of normals) and D_anomalous (real labelled
     anomalies vs their reconstructions), each with its own hinge (default) or BCE loss - no
     gradient penalty, so no double backward through the ViT discriminators;
  3. update G and both encoder heads (and the encoder trunk when `finetune_encoder`) with the
     weighted sum of the six losses of `cifar.losses`. The latent loss compares E2(G(z)) with
     E1(x) detached: E2 learns to invert G, and E1 cannot shrink its latents to cheat the loss.
After every step an EMA of the reconstruction model (E1, G, E2; `training.stack.build_ema` with warm-up,
decay `ema_decay`) is updated; it scores (`CifarRun.scoring_model`): the raw weights swing from step to
step, and so did the scores measured on validation data.
Batches: every epoch walks once over the normals in a seeded random order; each step also draws
`anomaly_batch_size` labelled anomalies *with replacement*, so every step sees some although they
are few (5 % of one class by default).

The optimiser step, checkpoint format and resume policy are the shared training stack's (`training.stack`).
Reproducibility: model init uses `cfg.seed`; every random draw of epoch e (normal order, anomaly
picks) comes from a CPU generator seeded by `epoch_seed(seed, e)`; a checkpoint (kind "cifar-dual")
holds the models, optimizers, grad scaler, global RNG states and history, so a run resumed from
an epoch's checkpoint ends with exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..training.stack import (
    build_checkpoint,
    build_ema,
    check_resume,
    epoch_seed,
    grad_scaler,
    load_state_dicts,
    optimizer_step,
    read_checkpoint,
    load_checkpoint_state,
    resume_message,
    save_checkpoint,
)
from ..utils import PathLike, autocast, autocast_dtype, check_writable, resolve_device, seed_everything
from . import losses as L
from .config import CifarConfig, run_dir, run_files
from .data import (
    AnomalySplit,
    LabelledImages,
    load_classification,
    make_anomaly_split,
    to_float,
)
from .model import DualReconstructionModel, build_dual_models
from .score import validation_auroc

KIND = "cifar-dual"  # the checkpoint kind (`training.stack`)
MODEL_KEYS = ("model", "d_normal", "d_anomalous")  # checkpoint keys of CifarModels' state dicts
OPTIMIZER_KEYS = ("opt_g", "opt_d_normal", "opt_d_anomalous")


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
    ema: Optional[torch.nn.Module] = None  # AveragedModel of models.model

    @property
    def scoring_model(self) -> DualReconstructionModel:
        """The network that scores: the EMA of the reconstruction model (the model itself without one)."""
        return self.models.model if self.ema is None else self.ema.module


def update_ema(ema: torch.nn.Module, model: DualReconstructionModel) -> None:
    """One EMA update of `ema` (an AveragedModel of `model`); buffers (BatchNorm statistics) are copied."""
    ema.update_parameters(model)
    with torch.no_grad():
        for mine, theirs in zip(ema.module.buffers(), model.buffers()):
            mine.copy_(theirs)


# ----------------------------------------------------------------------------- set-up
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
def train_step(models: CifarModels, opts: CifarOptimizers, x_n: torch.Tensor, x_a: torch.Tensor,
               cfg: CifarConfig, *, amp_dtype=None, scaler=None) -> Dict[str, torch.Tensor]:
    """One D_normal, D_anomalous and generator update.

    x_n: (Bn, 3, H, W) normals, x_a: (Ba, 3, H, W) labelled anomalies (Ba may be 0), in [-1, 1].
    Returns detached scalar tensors: the six generator losses, "g_total", "d_normal", "d_anomalous".
    `scaler`: one grad scaler for the three updates (`training.stack.grad_scaler`; None: no loss scaling).
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
    optimizer_step(loss_dn, opts.d_normal, scaler, cfg.grad_clip)
    loss_da = zero
    if ba:
        with autocast(x.device, amp_dtype):
            loss_da = L.discriminator_anomalous_loss(d_a(x_a).float(), d_a(xh_a.detach()).float(), kind)
        optimizer_step(loss_da, opts.d_anomalous, scaler, cfg.grad_clip)
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
    optimizer_step(g_total, opts.g, scaler, cfg.grad_clip)
    d_n.requires_grad_(True)
    d_a.requires_grad_(True)
    out = {k: v.detach() for k, v in losses.items()}
    out.update(g_total=g_total.detach(), d_normal=loss_dn.detach(), d_anomalous=loss_da.detach())
    return out


# ----------------------------------------------------------------------------- checkpoints
def _stateful(run: CifarRun, opts: CifarOptimizers, scaler) -> Dict[str, Any]:
    """What a checkpoint holds the state dicts of, by key."""
    return {**dict(zip(MODEL_KEYS, run.models)), "ema": run.ema, **dict(zip(OPTIMIZER_KEYS, opts)), "scaler": scaler}


def read_cifar_checkpoint(path: PathLike) -> Dict[str, Any]:
    """The checkpoint dict at `path` (`training.stack` format, kind "cifar-dual"; files written before
    the shared stack load too), on the CPU.

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: the file is corrupt (delete it), a GAN checkpoint, or incomplete.
    """
    return read_checkpoint(path, KIND, required=("config", "epoch", "history", *MODEL_KEYS),
                           legacy=lambda ckpt: ckpt.get("format") == "cifar-dual-v1",
                           train_hint="Train first (train_cifar, or notebook 05), or check output_dir, "
                                      "protocol and anomaly_class.")


def _resume(run: CifarRun, opts: CifarOptimizers, scaler, path: Path) -> int:
    """Restore models, optimizers, scaler, global RNG states and history from `path` (ConfigError
    naming each changed setting outside `CifarConfig.RESUME_FREE`); returns the epochs done."""
    ckpt = read_cifar_checkpoint(path)
    check_resume(CifarConfig.from_dict(ckpt["config"]).to_dict(), run.cfg, path)
    objects = _stateful(run, opts, scaler)
    for key in ("scaler", "ema"):  # written before the shared stack (no scaler, RNG states) or the EMA
        if key not in ckpt:
            del objects[key]
    load_checkpoint_state(ckpt, objects)
    run.history[:] = ckpt["history"]
    return int(ckpt["epoch"])


def _save(run: CifarRun, opts: CifarOptimizers, scaler, epoch: int, path: Path) -> None:
    ckpt = build_checkpoint(KIND, run.cfg, _stateful(run, opts, scaler), epoch=epoch, history=run.history)
    save_checkpoint(ckpt, path)


# ----------------------------------------------------------------------------- training
def _train_epoch(run: CifarRun, opts: CifarOptimizers, epoch: int, amp_dtype, scaler) -> Dict[str, float]:
    """Epoch `epoch` (1-based): one walk over the normals; returns the mean of each step statistic."""
    cfg, split, device = run.cfg, run.split, run.device
    g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))  # every random draw of this epoch
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
        update_ema(run.ema, run.models.model)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v
        if i % 20 == 0:
            bar.set_postfix(g=f"{out['g_total'].item():.3f}", d=f"{out['d_normal'].item():.3f}")
    return {k: float(v) / len(steps) for k, v in sums.items()}


def train_cifar(cfg: CifarConfig, split: Optional[AnomalySplit] = None,
                data: Optional[Tuple[LabelledImages, LabelledImages]] = None) -> CifarRun:
    """Train the model of `cfg`; returns a `CifarRun` whose history has one dict per epoch.

    `split` (or `data` = (train, test) to split) skips reading the dataset. A checkpoint
    (models, optimizers, grad scaler, RNG states, config, history) is written atomically to
    `run_dir(cfg)/checkpoint.pt` every `checkpoint_every` epochs and after the last one. With
    `cfg.resume` (the default, as `methods.transgan.train.train_gan`), training continues from it exactly as if
    uninterrupted, and a finished run (checkpoint epoch >= cfg.epochs) is loaded, not trained again;
    `resume=False` starts over.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    split = split or load_split(cfg, data)
    models = CifarModels(*(m.to(device) for m in build_cifar_models(cfg)))
    opts = build_optimizers(models, cfg)
    amp_dtype = autocast_dtype(device, cfg.amp)
    scaler = grad_scaler(device, amp_dtype)
    run = CifarRun(cfg=cfg, models=models, split=split, history=[], device=device, run_dir=run_dir(cfg),
                   ema=build_ema(models.model, cfg.ema_decay))
    path = run_files(cfg).checkpoint
    check_writable(path.parent, "output folder")  # before any work
    start = _resume(run, opts, scaler, path) if cfg.resume and path.is_file() else 0
    if start and cfg.progress:
        print(resume_message(path, start, cfg.epochs), flush=True)
    for m in models:
        m.train()
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        row: Dict[str, Any] = {"epoch": epoch, **_train_epoch(run, opts, epoch, amp_dtype, scaler)}
        row["seconds"] = time.perf_counter() - t0
        row["val_l1_normal"], row["val_auroc"] = validation_auroc(run.scoring_model, split, cfg, models.d_anomalous)
        run.history.append(row)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            _save(run, opts, scaler, epoch, path)
    return run


def load_cifar_checkpoint(path: Union[str, Path], device: str = "cpu") -> Tuple[CifarConfig, CifarModels, list]:
    """(config, models in eval mode on `device`, history) from a checkpoint of `train_cifar`; works
    offline (the ResNet weights are inside). `models.model` holds the scoring (EMA) weights when the
    checkpoint has them (`CifarRun.scoring_model`). Errors: as `read_cifar_checkpoint`."""
    ckpt = read_cifar_checkpoint(path)
    cfg = CifarConfig.from_dict(ckpt["config"])
    models = build_cifar_models(dataclasses.replace(cfg, pretrained=False))
    load_state_dicts(ckpt, dict(zip(MODEL_KEYS, models)))
    if "ema" in ckpt:
        ema = build_ema(models.model, cfg.ema_decay)
        ema.load_state_dict(ckpt["ema"])
        models = models._replace(model=ema.module)
    for module in models:
        module.to(device).eval()
    return cfg, models, ckpt["history"]


__all__ = ["KIND", "CifarModels", "CifarOptimizers", "CifarRun", "update_ema", "build_cifar_models", "build_optimizers",
           "load_split", "train_step", "train_cifar", "read_cifar_checkpoint", "load_cifar_checkpoint"]
