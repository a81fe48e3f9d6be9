"""Training the f-AnoGAN encoder (izi_f, Schlegl et al. 2019) against a frozen TransGAN; checkpoints.

Shape letters: B batch, C channels, H/W image height/width, Z latent size, N feature tokens,
F feature width.

The encoder E is trained on normal images only, with G and D frozen (eval mode, no augmentation):

    loss = MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))

with f the discriminator's final patch tokens (`D(x, return_features=True)`). Use the trained E
with `mapping.map_images(method="encoder" | "hybrid", encoder=E)`.

encoder.pt records the fingerprint of the GAN checkpoint it was trained against, its settings
(`config.EncoderConfig`) and the epochs it completed; `ensure_encoder` reuses it only when all
three match what is asked, and says why it trains a new one otherwise.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ...config import ConfigError, EncoderConfig
from ...models.encoder import LatentEncoder
from ...runs import run_paths
from ...training.stack import grad_scaler, optimizer_step
from ...utils import (
    PathLike,
    atomic_torch_save,
    autocast,
    autocast_dtype,
    batch_images,
    progress_bar,
    resolve_device,
)
from .mapping import frozen

Images = Union[torch.Tensor, Dataset, DataLoader]
ENCODER_CHECKPOINT_NAME = "encoder.pt"


def encoder_checkpoint_path(output_dir: PathLike, category: str) -> Path:
    """Where the encoder of a category lives: beside the GAN's, `<output_dir>/<category>/encoder.pt`
    (`runs.run_paths(output_dir, category).encoder`)."""
    return run_paths(output_dir, category).encoder


def _loader(data: Images, batch_size: int, *, shuffle: bool, seed: int) -> DataLoader:
    """A DataLoader over a (B, C, H, W) tensor, a Dataset (e.g. MVTecAD), or a DataLoader as is."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(data.shape)}")
        data = TensorDataset(data)
    if len(data) == 0:
        raise ValueError("no images to train the encoder on (empty dataset)")
    g = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g)


def encoder_loss(G: nn.Module, D: nn.Module, E: nn.Module, x: torch.Tensor,
                 kappa: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, image_mse, feature_mse), scalars: MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))."""
    x_hat = G(E(x))  # (B, C, H, W)
    image_mse = F.mse_loss(x_hat.float(), x.float())
    if kappa == 0:
        return image_mse, image_mse, torch.zeros_like(image_mse)
    with torch.no_grad():
        f_x = D(x, return_features=True)[1]  # (B, N, F) target, no gradient needed
    f_hat = D(x_hat, return_features=True)[1]
    feature_mse = F.mse_loss(f_hat.float(), f_x.float())
    return image_mse + kappa * feature_mse, image_mse, feature_mse


def _mean_val_loss(G, D, E, loader, kappa, device, amp_dtype) -> float:
    E.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            x = batch_images(batch).to(device=device, dtype=torch.float32)
            with autocast(device, amp_dtype):
                loss, _, _ = encoder_loss(G, D, E, x, kappa)
            total += loss.item() * x.shape[0]
            count += x.shape[0]
    E.train()
    return total / max(count, 1)


def _check_compatible(G: nn.Module, E: nn.Module) -> None:
    g_dim, g_size = getattr(G, "latent_dim", None), getattr(G, "image_size", None)
    if g_dim is not None and E.latent_dim != g_dim:
        raise ConfigError(f"encoder latent_dim {E.latent_dim} does not match the generator's {g_dim}")
    if g_size is not None and E.image_size != g_size:
        raise ConfigError(f"encoder image_size {E.image_size} does not match the generator's {g_size}")


def _train_epoch(G, D, E, loader, opt, scaler, kappa, device, amp_dtype) -> list:
    """One pass over `loader`; returns the image-weighted means [loss, image_mse, feature_mse]."""
    sums, count = torch.zeros(3), 0
    for batch in loader:
        x = batch_images(batch).to(device=device, dtype=torch.float32)
        with autocast(device, amp_dtype):
            losses = encoder_loss(G, D, E, x, kappa)
        optimizer_step(losses[0], opt, scaler)
        sums += torch.stack([t.detach().float().cpu() for t in losses]) * x.shape[0]
        count += x.shape[0]
    return (sums / count).tolist()


def train_encoder(G: nn.Module, D: nn.Module, train_images_or_loader: Images, *, epochs: int,
                  batch_size: int = 32, lr: float = 1e-4, kappa: float = 1.0, seed: int = 0,
                  device: Optional[str] = None, progress: bool = True, val_images: Optional[Images] = None,
                  checkpoint_path: Optional[PathLike] = None, encoder: Optional[LatentEncoder] = None,
                  model_size: str = "tiny", gan_checkpoint: Optional[str] = None,
                  amp: str = "off") -> Tuple[LatentEncoder, Dict[str, list]]:
    """Train an encoder E: x -> z so that G(E(x)) reconstructs the normal training images.

    Args:
        G, D: the trained (EMA) generator and discriminator; frozen during training, restored after.
            Moved to `device` when one is given.
        train_images_or_loader: normal images (B, C, H, W) in [-1, 1], a Dataset whose items are
            tensors, tuples or {"image": ...} dicts (MVTecAD), or a DataLoader.
        epochs, batch_size, lr (Adam): the schedule; kappa: weight of the feature MSE (0 = none).
        seed: encoder initialisation and shuffling (the global RNG is left untouched).
        device: None = G's device, or "auto"/"cpu"/"cuda"...
        val_images: optional held-out normals, same forms; adds "val_loss" to the history.
        checkpoint_path: where to save the encoder after every epoch (atomic, `save_encoder`, with
            these settings as an `EncoderConfig` and the epochs done so far), e.g.
            `encoder_checkpoint_path(output_dir, category)`.
        encoder: an existing LatentEncoder to continue training, else a new one of `model_size`.
        gan_checkpoint: fingerprint (`runs.file_fingerprint`) or name of the GAN checkpoint,
            stored in the encoder's checkpoint.
        amp: "off", "auto", "bf16", "fp16" autocast on CUDA.
    Returns:
        (E in eval mode, history) with history lists per epoch: "epoch", "train_loss",
        "train_image_mse", "train_feature_mse", "seconds" and, with val_images, "val_loss".
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    settings = EncoderConfig(epochs=epochs, batch_size=batch_size, lr=lr, kappa=kappa, seed=seed,
                             model_size=model_size)
    device = next(G.parameters()).device if device is None else resolve_device(device)
    G.to(device), D.to(device)
    if encoder is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = LatentEncoder(image_size=G.image_size, latent_dim=G.latent_dim,
                                    channels=getattr(G, "channels", 3), model_size=model_size)
    _check_compatible(G, encoder)
    E = encoder.to(device).train()
    train_loader = _loader(train_images_or_loader, batch_size, shuffle=True, seed=seed)
    val_loader = None if val_images is None else _loader(val_images, batch_size, shuffle=False, seed=seed)
    amp_dtype = autocast_dtype(device, amp)
    opt = torch.optim.Adam(E.parameters(), lr=lr)
    scaler = grad_scaler(device, amp_dtype)
    keys = ["epoch", "train_loss", "train_image_mse", "train_feature_mse", "seconds"]
    history: Dict[str, list] = {k: [] for k in keys + (["val_loss"] if val_loader is not None else [])}
    with frozen(G, D):
        for epoch in progress_bar(range(1, epochs + 1), desc="encoder", disable=not progress, unit="epoch"):
            start = time.perf_counter()
            means = _train_epoch(G, D, E, train_loader, opt, scaler, kappa, device, amp_dtype)
            for key, value in zip(keys, [epoch, *means, time.perf_counter() - start]):
                history[key].append(value)
            if val_loader is not None:
                history["val_loss"].append(_mean_val_loss(G, D, E, val_loader, kappa, device, amp_dtype))
            if checkpoint_path is not None:
                save_encoder(E, checkpoint_path, history=history, gan_checkpoint=gan_checkpoint, settings=settings)
    return E.eval(), history


def save_encoder(E: LatentEncoder, path: PathLike, *, history: Optional[Dict[str, list]] = None,
                 gan_checkpoint: Optional[str] = None, settings: Optional[EncoderConfig] = None) -> Path:
    """Atomically save {"E": state_dict, "encoder_config", "history", "gan_checkpoint", "settings"
    (the EncoderConfig as a dict, or None), "epochs_done" (len(history["epoch"]))}."""
    state = {k: v.detach().cpu() for k, v in E.state_dict().items()}
    history = history or {}
    return atomic_torch_save({"E": state, "encoder_config": E.config(), "history": history,
                              "gan_checkpoint": None if gan_checkpoint is None else str(gan_checkpoint),
                              "settings": None if settings is None else settings.to_dict(),
                              "epochs_done": len(history.get("epoch", []))}, path)


def load_encoder(path: PathLike, device: str = "cpu") -> Tuple[LatentEncoder, Dict[str, Any]]:
    """Load an encoder checkpoint written by `train_encoder` / `save_encoder`.

    Returns:
        (E in eval mode on `device`, meta) with meta = {"encoder_config", "history", "gan_checkpoint",
        "settings", "epochs_done"} (the last two None in files written before they were recorded).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no encoder checkpoint at {path}; train one with "
                                f"transgan_lib.encoder_training.train_encoder(..., checkpoint_path={str(path)!r})")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = sorted({"E", "encoder_config"} - set(ckpt))
    if missing:
        raise ConfigError(f"{path} is not an encoder checkpoint (missing {missing}); "
                          f"is it the GAN checkpoint? The encoder is saved as {ENCODER_CHECKPOINT_NAME}")
    E = LatentEncoder(**ckpt["encoder_config"])
    E.load_state_dict(ckpt["E"])
    meta = {k: ckpt.get(k) for k in ("encoder_config", "history", "gan_checkpoint", "settings", "epochs_done")}
    return E.to(resolve_device(device)).eval(), meta


def reuse_problem(meta: Dict[str, Any], gan_fingerprint: str, settings: EncoderConfig) -> Optional[str]:
    """Why a saved encoder (its `load_encoder` meta) may not serve the GAN checkpoint with
    fingerprint `gan_fingerprint` under `settings`; None when it may: same GAN checkpoint, same
    settings, and every epoch asked completed (an interrupted training is not reused)."""
    if meta.get("gan_checkpoint") != gan_fingerprint:
        return "it was trained against another GAN checkpoint"
    if meta.get("settings") != settings.to_dict():
        return f"it was trained with other settings ({meta.get('settings')}; asked {settings.to_dict()})"
    done = meta.get("epochs_done") or 0
    if done < settings.epochs:
        return f"it completed {done} of the {settings.epochs} epochs asked"
    return None


def ensure_encoder(G: nn.Module, D: nn.Module, train_images: Images, *, path: PathLike, gan_fingerprint: str,
                   settings: EncoderConfig, val_images: Optional[Images] = None, device: Optional[str] = None,
                   progress: bool = True) -> Tuple[LatentEncoder, Dict[str, list]]:
    """The encoder saved at `path` when `reuse_problem` finds nothing against it, else a new one
    trained now with `settings` and saved to `path` (the reason is printed: nothing stale is used
    silently). Returns (E in eval mode on `device`, its history)."""
    path = Path(path)
    if path.is_file():
        E, meta = load_encoder(path, device=str(device or "cpu"))
        problem = reuse_problem(meta, gan_fingerprint, settings)
        if problem is None:
            return E, meta.get("history") or {}
        print(f"not reusing {path}: {problem}; training a new encoder ({settings.epochs} epochs)")
    return train_encoder(G, D, train_images, epochs=settings.epochs, batch_size=settings.batch_size,
                         lr=settings.lr, kappa=settings.kappa, seed=settings.seed, model_size=settings.model_size,
                         device=device, progress=progress, val_images=val_images, checkpoint_path=path,
                         gan_checkpoint=gan_fingerprint)
