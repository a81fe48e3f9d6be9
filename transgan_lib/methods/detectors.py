"""One way in to either detector's network: which checkpoint a method reads, loading it, and
scoring images with it (the restorer's one pass, or the TransGAN's latent search)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from ..config import RESTORE_METHOD, MappingConfig, get_method
from ..runs import RunPaths
from ..utils import PathLike
from .restorer.detect import restore_images
from .restorer.train import load_restorer
from .transgan.checkpoint import load_models
from .transgan.mapping import MappingResult, map_with_config


def detector_file(paths: RunPaths, method: str) -> Path:
    """The training checkpoint a method's files belong to (restorer.pt or the GAN's checkpoint.pt)."""
    return paths.training_file(get_method(method).objective)


def load_detector(path: PathLike, method: str, device) -> Tuple[nn.Module, nn.Module, object, object]:
    """(generator or restorer, discriminator, ModelConfig, TrainConfig) of a method's checkpoint
    (`detector_file`, or a GAN's weights.pt), in eval mode on `device`."""
    return (load_restorer if method == RESTORE_METHOD else load_models)(path, device)


def detect(G: nn.Module, D: Optional[nn.Module], images: torch.Tensor, config: MappingConfig, *,
           encoder: Optional[nn.Module] = None, progress: bool = True) -> MappingResult:
    """`restore_images` for method "restore" (G is then the restorer), else the latent mapping
    `mapping.map_with_config`."""
    if config.method == RESTORE_METHOD:
        return restore_images(G, images, batch_size=config.batch_size, progress=progress)
    return map_with_config(G, D, images, config, encoder=encoder, progress=progress)


__all__ = ["detector_file", "load_detector", "detect"]
