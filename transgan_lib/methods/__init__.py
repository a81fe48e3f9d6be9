"""The detectors, one folder each: `transgan` (the study's TransGAN on normals, scored by AnoGAN search,
its f-AnoGAN encoder or both) and `restorer` (a conditional TransGAN restoring synthetic defects, scored
in one pass); `pipeline` and `scoring` evaluate and score either. Their names are `config.METHODS`."""
from __future__ import annotations

from typing import Any, Dict

from ..config import TrainConfig


def objective(name: str):
    """The `training.state.Objective` of a TrainConfig objective ("gan" or "restore")."""
    if name == "restore":
        from .restorer.train import OBJECTIVE
    else:
        from .transgan.train import OBJECTIVE
    return OBJECTIVE


def train(cfg: TrainConfig, *args, **kwargs) -> Dict[str, Any]:
    """Train the network of `cfg.objective` with the shared loop (`training.loop.train`'s arguments)."""
    from ..training.loop import train as train_loop
    return train_loop(objective(cfg.objective), cfg, *args, **kwargs)


def create_state(cfg: TrainConfig, device):
    """A fresh `training.state.TrainState` of `cfg.objective`'s networks (its step: `objective(...).step`)."""
    from ..training.state import TrainState
    return TrainState.create(cfg, device, objective(cfg.objective))
