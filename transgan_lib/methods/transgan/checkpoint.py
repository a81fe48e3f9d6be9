"""The TransGAN's files: its training checkpoint (`checkpoint.pt`, kind "gan", the shared format of
`training.state`), the weights-only export beside it, and rebuilding the trained models from either.
Files written before `kind` existed load too (recognised by their keys).

`weights.pt` (kind "gan-weights", `export_weights`) keeps only what scoring needs: G_ema, D,
model_config, config, epoch, and `source` (the fingerprint of the checkpoint it came from, so the
fingerprint chain of the detection files still holds). A base-sized checkpoint is mostly optimizer
state; its weights file is a quarter of it (README, "Checkpoints").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ...config import ModelConfig, TrainConfig
from ...models.transgan import TransGANDiscriminator, TransGANGenerator, build_models
from ...runs import RunPaths, file_fingerprint, run_paths
from ...training.stack import FORMAT_VERSION, CheckpointError, read_checkpoint
from ...training import state
from ...training.state import check_compatible, write_history
from ...utils import PathLike, atomic_torch_save

KIND = "gan"
WEIGHTS_KIND = "gan-weights"


def is_legacy(ckpt: Dict[str, Any]) -> bool:
    """A GAN checkpoint written before checkpoints named their kind: it holds "G" (CIFAR's had a format)."""
    return "G" in ckpt and "format" not in ckpt


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu", kind: str = KIND
                    ) -> Dict[str, Any]:
    """A training checkpoint of the TransGAN (or of another `kind` of the shared loop), with clear errors
    (`training.state.load_checkpoint`); GAN files from before checkpoints named their kind load too."""
    return state.load_checkpoint(path, map_location, kind=kind, legacy=is_legacy if kind == KIND else None)


def _models_from(ckpt: Dict[str, Any], path: PathLike, device, expect: Optional[ModelConfig],
                 attn_impl: Optional[str]) -> Tuple[TransGANGenerator, TransGANDiscriminator, ModelConfig]:
    mc = ModelConfig.from_dict(ckpt["model_config"])
    if expect is not None:
        check_compatible(mc, expect, path)
    if attn_impl is not None:
        mc.attn_impl = attn_impl
    G, D = build_models(mc)
    return G.to(device), D.to(device), mc


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
                           legacy=is_legacy,
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


__all__ = ["FORMAT_VERSION", "KIND", "CheckpointError", "load_checkpoint", "check_compatible",
           "write_history", "load_generator", "load_models", "WEIGHTS_KIND", "export_weights", "source_fingerprint",
           "scoring_file", "load_for_scoring"]
