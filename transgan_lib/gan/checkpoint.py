"""Training checkpoints and run records: what goes in a checkpoint, saving and resuming a
training state, loading with clear errors, config compatibility, RNG state capture/restore,
rebuilding trained models from a file, and the history.csv/json files.

A checkpoint is a dict (saved with `utils.atomic_torch_save`, loaded with weights_only=True)::

    format_version, G, D, G_ema (plain generator state dicts), ema_n_averaged, opt_G, opt_D,
    scaler {"G", "D"}, epoch (fully completed epochs), step (discriminator updates),
    g_step (generator updates), epoch_state (None, or the state of a partly done epoch),
    config (TrainConfig.to_dict()), model_config (ModelConfig.to_dict()),
    rng {python, numpy, torch, cuda}, fixed_z (K, latent_dim), history (list of dicts),
    world_size
"""
from __future__ import annotations

import csv
import io
import random
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from ..config import ConfigError, ModelConfig, TrainConfig
from ..models.transgan import TransGANDiscriminator, TransGANGenerator, build_models
from ..utils import PathLike, atomic_write_json, atomic_write_text

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("format_version", "G", "G_ema", "D", "model_config", "config")
# Fields that do not change the weights' meaning: attention backend is interchangeable.
IGNORED_MODEL_FIELDS = ("attn_impl",)
# TrainConfig fields that may change between a checkpoint and its resumption without a warning
RESUME_FREE_FIELDS = ("epochs", "device", "num_workers", "sample_every", "checkpoint_every",
                      "data_root", "output_dir", "amp", "model")


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, corrupt, or not a transgan-anomaly checkpoint."""


# ----------------------------------------------------------------------------- RNG
def capture_rng_state() -> Dict[str, Any]:
    """Global RNG states (python, numpy, torch CPU, CUDA) as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states only when the device count matches)."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- loading
def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a training checkpoint written by `train_gan`.

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: the file is corrupt, truncated, or not one of our checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}. Train first (train_gan / "
                                "python -m transgan_lib.train), or check output_dir and category.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip/pickle/EOF errors of a damaged file all land here
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file is "
                              "corrupt or was not written by transgan_lib; delete it to retrain.") from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"{path} is not a transgan_lib training checkpoint (missing {missing})")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {ckpt['format_version']}, newer than this "
                              f"library's {FORMAT_VERSION}; upgrade transgan_lib")
    return ckpt


def config_differences(saved: Union[Dict[str, Any], ModelConfig, TrainConfig],
                       current: Union[Dict[str, Any], ModelConfig, TrainConfig],
                       ignore: Iterable[str] = ()) -> Dict[str, Tuple[Any, Any]]:
    """{field: (saved value, current value)} for fields that differ (tuples == lists)."""
    saved = saved if isinstance(saved, dict) else saved.to_dict()
    current = current if isinstance(current, dict) else current.to_dict()
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    keys = (set(saved) | set(current)) - set(ignore)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys)
            if norm(saved.get(k)) != norm(current.get(k))}


def check_compatible(saved: Union[Dict[str, Any], ModelConfig], current: ModelConfig,
                     path: Optional[PathLike] = None) -> None:
    """Raise ConfigError naming every architecture field where a checkpoint's model config and
    `current` differ (attention backend excepted: its weights are interchangeable)."""
    diff = config_differences(saved, current, ignore=IGNORED_MODEL_FIELDS)
    if diff:
        where = f"checkpoint {path}" if path else "the checkpoint"
        fields = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"{where} was trained with a different model config ({fields}). Use the "
                          "checkpoint's settings, or a new output_dir/category to train from scratch.")


def _models_from(ckpt: Dict[str, Any], path: PathLike, device, expect: Optional[ModelConfig],
                 attn_impl: Optional[str]) -> Tuple[TransGANGenerator, TransGANDiscriminator, ModelConfig]:
    mc = ModelConfig.from_dict(ckpt["model_config"])
    if expect is not None:
        check_compatible(mc, expect, path)
    if attn_impl is not None:
        mc.attn_impl = attn_impl
    G, D = build_models(mc)
    return G.to(device), D.to(device), mc


# ----------------------------------------------------------------------------- training state
def make_checkpoint(st, epoch_state: Optional[Dict[str, Any]] = None, world_size: int = 1) -> Dict[str, Any]:
    """The checkpoint dict of a `train.GANState` (`epoch_state`: a partly done epoch, or None)."""
    return {"format_version": FORMAT_VERSION, "G": st.G.state_dict(), "D": st.D.state_dict(),
            "G_ema": st.ema.module.state_dict(), "ema_n_averaged": st.ema.n_averaged,
            "opt_G": st.opt_G.state_dict(), "opt_D": st.opt_D.state_dict(),
            "scaler": {"G": st.scaler_G.state_dict(), "D": st.scaler_D.state_dict()},
            "epoch": st.epoch, "step": st.step, "g_step": st.g_step, "epoch_state": epoch_state,
            "config": st.cfg.to_dict(), "model_config": st.model_config.to_dict(),
            "rng": capture_rng_state(), "fixed_z": st.fixed_z, "history": list(st.history),
            "world_size": world_size}


def restore_state(st, ckpt: Dict[str, Any]) -> None:
    """Load a checkpoint dict into a freshly created `train.GANState` (models, EMA, optimizers,
    scalers, counters, fixed z, history, global RNG states)."""
    st.G.load_state_dict(ckpt["G"])
    st.D.load_state_dict(ckpt["D"])
    st.ema.module.load_state_dict(ckpt["G_ema"])
    st.ema.n_averaged.copy_(ckpt["ema_n_averaged"])
    st.opt_G.load_state_dict(ckpt["opt_G"])
    st.opt_D.load_state_dict(ckpt["opt_D"])
    st.scaler_G.load_state_dict(ckpt["scaler"]["G"])
    st.scaler_D.load_state_dict(ckpt["scaler"]["D"])
    st.epoch, st.step, st.g_step = ckpt["epoch"], ckpt["step"], ckpt["g_step"]
    st.fixed_z = ckpt["fixed_z"]
    st.history = list(ckpt["history"])
    restore_rng_state(ckpt["rng"])


def resume_state(st, path: PathLike, world_size: int = 1) -> Optional[Dict[str, Any]]:
    """Restore `st` from the checkpoint at `path` after checking the architecture matches
    (ConfigError otherwise); warn about changed training settings. Returns the state of the
    partly done epoch to continue, or None to start at epoch `st.epoch`."""
    # CPU: RNG states must stay CPU tensors; load_state_dict moves weights to st.device
    ckpt = load_checkpoint(path, map_location="cpu")
    check_compatible(ckpt["model_config"], st.model_config, path)
    changed = config_differences(ckpt["config"], st.cfg, ignore=RESUME_FREE_FIELDS)
    if changed:
        warnings.warn(f"resuming {path} with changed training settings {changed} (checkpoint, now); "
                      "the result will differ from an uninterrupted run", stacklevel=3)
    restore_state(st, ckpt)
    epoch_state = ckpt.get("epoch_state")
    if epoch_state is not None and len(epoch_state["rng"]) != world_size:
        warnings.warn(f"{path} stopped mid-epoch with {len(epoch_state['rng'])} process(es), now "
                      f"{world_size}: restarting epoch {st.epoch + 1} from the saved weights", stacklevel=3)
        epoch_state = None
    return epoch_state


def write_history(history: List[Dict[str, Any]], out_dir: PathLike) -> None:
    """history.json and history.csv (columns: every key of any row) in `out_dir`, atomically."""
    out_dir = Path(out_dir)
    atomic_write_json(history, out_dir / "history.json")
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(buf.getvalue(), out_dir / "history.csv")


# ----------------------------------------------------------------------------- models from files
def load_generator(path: PathLike, device: Union[str, torch.device] = "cpu", ema: bool = True, *,
                   expect: Optional[ModelConfig] = None,
                   attn_impl: Optional[str] = None) -> Tuple[TransGANGenerator, ModelConfig]:
    """The trained generator (EMA weights by default) in eval mode, and its ModelConfig.

    `expect`: raise ConfigError if the checkpoint's architecture differs from it.
    `attn_impl`: override the attention backend ("sdpa"/"math"; same weights).
    """
    ckpt = load_checkpoint(path)
    G, _, mc = _models_from(ckpt, path, device, expect, attn_impl)
    G.load_state_dict(ckpt["G_ema" if ema else "G"])
    return G.eval(), mc


def load_models(path: PathLike, device: Union[str, torch.device] = "cpu", *,
                expect: Optional[ModelConfig] = None, attn_impl: Optional[str] = None
                ) -> Tuple[TransGANGenerator, TransGANDiscriminator, ModelConfig, TrainConfig]:
    """(EMA generator, discriminator, ModelConfig, TrainConfig) from a checkpoint, both models in
    eval mode on `device`."""
    ckpt = load_checkpoint(path)
    G, D, mc = _models_from(ckpt, path, device, expect, attn_impl)
    G.load_state_dict(ckpt["G_ema"])
    D.load_state_dict(ckpt["D"])
    return G.eval(), D.eval(), mc, TrainConfig.from_dict(ckpt["config"])


__all__ = ["FORMAT_VERSION", "CHECKPOINT_NAME", "CheckpointError", "capture_rng_state",
           "restore_rng_state", "load_checkpoint", "config_differences", "check_compatible",
           "make_checkpoint", "restore_state", "resume_state", "write_history", "load_generator",
           "load_models"]
