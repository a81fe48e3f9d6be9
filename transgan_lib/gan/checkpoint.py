"""GAN training checkpoints and run records: what goes in a GAN checkpoint, saving and resuming a
training state, loading with clear errors, architecture compatibility, rebuilding trained models from
a file, and the history.csv/json files. The format, IO, RNG state and resume policy are the shared
stack's (`gan.stack`); this module holds what is particular to the GAN.

A GAN checkpoint is a `stack.build_checkpoint` dict of kind "gan"::

    format_version, kind, G, D, G_ema (plain generator state dicts), ema_n_averaged, opt_G, opt_D,
    scaler {"G", "D"}, epoch (fully completed epochs), step (discriminator updates),
    g_step (generator updates), epoch_state (None, or the state of a partly done epoch),
    config (TrainConfig.to_dict()), model_config (ModelConfig.to_dict()),
    rng {python, numpy, torch, cuda}, fixed_z (K, latent_dim), history (list of dicts),
    world_size
Files written before `kind` existed load too (recognised by their keys).

Beside it, `weights.pt` (kind "gan-weights", `export_weights`) keeps only what scoring needs: G_ema,
D, model_config, config, epoch, and `source` (the fingerprint of the checkpoint it came from, so the
fingerprint chain of the detection files still holds). A base-sized checkpoint is mostly optimizer
state; its weights file is a quarter of it (base: 2.2 GB vs 0.55 GB; README, "Checkpoints").
"""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..config import ConfigError, ModelConfig, TrainConfig
from ..models.restorer import Restorer, build_restorer
from ..models.transgan import TransGANDiscriminator, TransGANGenerator, build_discriminator, build_models
from ..runs import RunPaths, file_fingerprint, run_paths
from ..utils import PathLike, atomic_torch_save, atomic_write_json, atomic_write_text
from .stack import (
    FORMAT_VERSION,
    CheckpointError,
    build_checkpoint,
    capture_rng_state,
    check_resume,
    config_differences,
    describe_differences,
    read_checkpoint,
    restore_checkpoint,
    restore_rng_state,
)

KIND = "gan"
RESTORER_KIND = "restorer"  # the restorer objective's training state (`gan.restore`), same format
WEIGHTS_KIND = "gan-weights"
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("format_version", "G", "G_ema", "D", "model_config", "config")
WEIGHTS_KEYS = ("format_version", "G_ema", "D", "model_config", "config", "source")
# Fields that do not change the weights' meaning: attention backend is interchangeable.
IGNORED_MODEL_FIELDS = ("attn_impl",)
# TrainConfig fields that may change between a checkpoint and its resumption without a warning
RESUME_FREE_FIELDS = TrainConfig.RESUME_FREE


# ----------------------------------------------------------------------------- loading
def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu", kind: str = KIND
                    ) -> Dict[str, Any]:
    """Load a training checkpoint written by `train_gan` (`kind` RESTORER_KIND: of the restorer).

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: the file is corrupt, truncated, another kind of checkpoint (e.g. a CIFAR
            one), or not one of our checkpoints.
    """
    return read_checkpoint(path, kind, required=REQUIRED_KEYS, map_location=map_location,
                           train_hint="Train first (train_gan / python -m transgan_lib.gan.train), or check "
                                      "output_dir and category.")


def check_compatible(saved: Union[Dict[str, Any], ModelConfig], current: ModelConfig,
                     path: Optional[PathLike] = None) -> None:
    """Raise ConfigError naming every architecture field where a checkpoint's model config and
    `current` differ (attention backend excepted: its weights are interchangeable)."""
    diff = config_differences(saved, current, ignore=IGNORED_MODEL_FIELDS)
    if diff:
        where = f"checkpoint {path}" if path else "the checkpoint"
        raise ConfigError(f"{where} was trained with a different model config ({describe_differences(diff)}). "
                          "Use the checkpoint's settings, or a new output_dir/category to train from scratch.")


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
def _stateful(st) -> Dict[str, Any]:
    """The objects of a `train.GANState` whose state dicts a checkpoint holds, by key."""
    return {"G": st.G, "D": st.D, "G_ema": st.ema.module, "opt_G": st.opt_G, "opt_D": st.opt_D,
            "scaler": {"G": st.scaler_G, "D": st.scaler_D}}


def make_checkpoint(st, epoch_state: Optional[Dict[str, Any]] = None, world_size: int = 1) -> Dict[str, Any]:
    """The checkpoint dict of a `train.GANState` (`epoch_state`: a partly done epoch, or None)."""
    kind = RESTORER_KIND if st.cfg.objective == "restore" else KIND
    return build_checkpoint(kind, st.cfg, _stateful(st), epoch=st.epoch, history=st.history,
                            ema_n_averaged=st.ema.n_averaged, step=st.step, g_step=st.g_step,
                            epoch_state=epoch_state, fixed_z=st.fixed_z, world_size=world_size)


def restore_state(st, ckpt: Dict[str, Any]) -> None:
    """Load a checkpoint dict into a freshly created `train.GANState` (models, EMA, optimizers,
    scalers, counters, fixed z, history, global RNG states)."""
    restore_checkpoint(ckpt, _stateful(st))
    st.ema.n_averaged.copy_(ckpt["ema_n_averaged"])
    st.epoch, st.step, st.g_step = ckpt["epoch"], ckpt["step"], ckpt["g_step"]
    st.fixed_z = ckpt["fixed_z"]
    st.history = list(ckpt["history"])


def resume_state(st, path: PathLike, world_size: int = 1) -> Optional[Dict[str, Any]]:
    """Restore `st` from the checkpoint at `path` after checking the architecture matches
    (ConfigError otherwise); warn about changed training settings. Returns the state of the
    partly done epoch to continue, or None to start at epoch `st.epoch`."""
    # CPU: RNG states must stay CPU tensors; load_state_dict moves weights to st.device
    ckpt = load_checkpoint(path, map_location="cpu", kind=RESTORER_KIND if st.cfg.objective == "restore" else KIND)
    check_compatible(ckpt["model_config"], st.model_config, path)
    # configs saved before the restorer objective existed were GAN runs
    check_resume({"objective": KIND, "restore": {}, **ckpt["config"]}, st.cfg, path, warn=True)
    restore_state(st, ckpt)
    epoch_state = ckpt.get("epoch_state")
    if epoch_state is not None and len(epoch_state["rng"]) != world_size:
        warnings.warn(f"{path} stopped mid-epoch with {len(epoch_state['rng'])} process(es), now "
                      f"{world_size}: restarting epoch {st.epoch + 1} from the saved weights", stacklevel=3)
        epoch_state = None
    return epoch_state


def write_history(history: List[Dict[str, Any]], out_dir: Union[PathLike, RunPaths]) -> None:
    """history.json and history.csv (columns: every key of any row) in the run folder `out_dir`
    (`<output_dir>/<category>`, or its RunPaths), atomically."""
    paths = out_dir if isinstance(out_dir, RunPaths) else run_paths(Path(out_dir).parent, Path(out_dir).name)
    atomic_write_json(history, paths.history("json"))
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(buf.getvalue(), paths.history("csv"))


# ----------------------------------------------------------------------------- weights export
def export_weights(ckpt: Dict[str, Any], checkpoint_path: PathLike, out: PathLike) -> Path:
    """Write the weights-only file of the checkpoint dict `ckpt` (as saved at `checkpoint_path`,
    whose fingerprint it records as "source") to `out`, atomically."""
    weights = {"format_version": FORMAT_VERSION, "kind": WEIGHTS_KIND, "G_ema": ckpt["G_ema"], "D": ckpt["D"],
               "model_config": ckpt["model_config"], "config": ckpt["config"], "epoch": ckpt.get("epoch"),
               "source": file_fingerprint(checkpoint_path)}
    return atomic_torch_save(weights, out)


def source_fingerprint(path: PathLike) -> str:
    """The fingerprint of the training checkpoint behind `path`: its own for a checkpoint, the one
    recorded in a weights file (so files mapped with the checkpoint match its weights export)."""
    if Path(path).name == run_paths(".", "x").weights.name:
        return load_for_scoring(path)["source"]
    return file_fingerprint(path)


def scoring_file(paths: RunPaths) -> Path:
    """What to load for scoring a run: checkpoint.pt, or weights.pt when only that was kept."""
    return paths.checkpoint if paths.checkpoint.is_file() or not paths.weights.is_file() else paths.weights


def load_for_scoring(path: PathLike) -> Dict[str, Any]:
    """A GAN checkpoint or its weights export (both hold G_ema, D, model_config, config)."""
    return read_checkpoint(path, (KIND, WEIGHTS_KIND), required=("G_ema", "D", "model_config", "config"),
                           train_hint="Train first (train_gan / python -m transgan_lib train), or check "
                                      "output_dir and category.")


# ----------------------------------------------------------------------------- models from files
def load_generator(path: PathLike, device: Union[str, torch.device] = "cpu", ema: bool = True, *,
                   expect: Optional[ModelConfig] = None,
                   attn_impl: Optional[str] = None) -> Tuple[TransGANGenerator, ModelConfig]:
    """The trained generator (EMA weights by default) in eval mode, and its ModelConfig.

    `expect`: raise ConfigError if the checkpoint's architecture differs from it.
    `attn_impl`: override the attention backend ("sdpa"/"math"; same weights).
    `path`: a checkpoint, or its weights export for the EMA generator.
    """
    ckpt = load_for_scoring(path) if ema else load_checkpoint(path)
    G, _, mc = _models_from(ckpt, path, device, expect, attn_impl)
    G.load_state_dict(ckpt["G_ema" if ema else "G"])
    return G.eval(), mc


def load_models(path: PathLike, device: Union[str, torch.device] = "cpu", *,
                expect: Optional[ModelConfig] = None, attn_impl: Optional[str] = None
                ) -> Tuple[TransGANGenerator, TransGANDiscriminator, ModelConfig, TrainConfig]:
    """(EMA generator, discriminator, ModelConfig, TrainConfig) from a checkpoint or its weights
    export, both models in eval mode on `device`."""
    ckpt = load_for_scoring(path)
    G, D, mc = _models_from(ckpt, path, device, expect, attn_impl)
    G.load_state_dict(ckpt["G_ema"])
    D.load_state_dict(ckpt["D"])
    return G.eval(), D.eval(), mc, TrainConfig.from_dict(ckpt["config"])


def load_restorer(path: PathLike, device: Union[str, torch.device] = "cpu"
                  ) -> Tuple[Restorer, TransGANDiscriminator, ModelConfig, TrainConfig]:
    """(EMA restorer, discriminator, ModelConfig, TrainConfig) from a restorer checkpoint
    (`restorer.pt`, objective "restore"), both models in eval mode on `device`."""
    ckpt = load_checkpoint(path, kind=RESTORER_KIND)
    mc, tc = ModelConfig.from_dict(ckpt["model_config"]), TrainConfig.from_dict(ckpt["config"])
    R, D = build_restorer(mc, tc.restore_config()), build_discriminator(mc)
    R.load_state_dict(ckpt["G_ema"])
    D.load_state_dict(ckpt["D"])
    return R.to(device).eval(), D.to(device).eval(), mc, tc


__all__ = ["load_restorer", "FORMAT_VERSION", "KIND", "RESTORER_KIND", "CHECKPOINT_NAME", "RESUME_FREE_FIELDS",
           "CheckpointError", "capture_rng_state", "restore_rng_state", "load_checkpoint", "config_differences",
           "check_compatible",
           "make_checkpoint", "restore_state", "resume_state", "write_history", "load_generator",
           "load_models", "WEIGHTS_KIND", "export_weights", "source_fingerprint", "scoring_file",
           "load_for_scoring"]
