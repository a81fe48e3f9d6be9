"""The study's TransGAN, trained on the normal images of one category: its models, its step and its
files, run by the shared loop (`training.loop`).

Shape letters: B batch, L latent_dim, C channels, H, W image height and width.

One *step* is one discriminator update on one real batch; the generator is updated after every
`n_critic`-th step, and its EMA copy (the model used for samples, scoring and returned) right
after. Loss: WGAN-GP with drift (default) or hinge; DiffAugment on everything D sees in training.
The checkpoint is `checkpoint.pt` (kind "gan"); after each one, `weights.pt` keeps what scoring needs.

`train_gan(cfg)` trains the network of `cfg.objective` (this GAN, or the restorer): `methods.train`.
Under torchrun: `python -m transgan_lib.methods.transgan.train` (`launch`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from ...config import OBJECTIVE_DEFAULTS, TrainConfig
from ...models.transgan import build_models
from ...runs import run_paths
from ...training.augment import diff_augment
from ...training.losses import g_loss_hinge, g_loss_wgan
from ...training.stack import critic_update, optimizer_step
from ...training.state import Objective, TrainState
from ...utils import autocast
from .checkpoint import KIND, export_weights, is_legacy

GAN_KEYS = ("d_loss", "gp", "d_real", "d_fake", "g_loss")  # the per-step stats a history row averages


# ----------------------------------------------------------------------------- steps
def _noise(st: TrainState, batch: int, generator: torch.Generator) -> torch.Tensor:
    z = torch.randn(batch, st.model_config.latent_dim, generator=generator)  # (B, L) on CPU
    return z.to(st.device, non_blocking=True)


def discriminator_step(st: TrainState, real: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """One D update on real (B, C, H, W) and B fresh fakes; returns detached 0-d stats."""
    cfg, B = st.cfg, real.shape[0]
    with torch.no_grad(), autocast(st.device, st.amp_dtype):
        fake = st.G(_noise(st, B, generator))  # (B, C, H, W); plain G: no DDP sync needed
    real_in = diff_augment(real, cfg.diffaug, generator)
    return critic_update(st, real_in, diff_augment(fake.float(), cfg.diffaug, generator), generator)


def generator_step(st: TrainState, batch: int, generator: torch.Generator) -> torch.Tensor:
    """One G update on `batch` fresh samples, then the EMA update; returns the detached loss."""
    cfg = st.cfg
    st.D.requires_grad_(False)  # no D gradients needed (and none synced) in the G step
    try:
        with autocast(st.device, st.amp_dtype):
            fake = st.G_train(_noise(st, batch, generator))  # (B, C, H, W)
            logits = st.D(diff_augment(fake, cfg.diffaug, generator)).float()  # (B,)
        loss = g_loss_wgan(logits) if cfg.loss == "wgan-gp" else g_loss_hinge(logits)
        optimizer_step(loss, st.opt_G, st.scaler_G, cfg.grad_clip)
    finally:
        st.D.requires_grad_(True)
    st.ema.update_parameters(st.G)
    return loss.detach()


def train_step(st: TrainState, real: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """One step: a D update, and a G (+EMA) update when the new step count is a multiple of
    n_critic. Increments `st.step` (and `st.g_step`); returns detached 0-d stats."""
    stats = discriminator_step(st, real, generator)
    st.step += 1
    if st.step % st.cfg.n_critic == 0:
        stats["g_loss"] = generator_step(st, real.shape[0], generator)
        st.g_step += 1
    return stats


def _export_weights(ckpt: Dict[str, Any], paths) -> None:
    export_weights(ckpt, paths.checkpoint, paths.weights)


OBJECTIVE = Objective(kind=KIND, build_models=lambda cfg: build_models(cfg.model_config()), step=train_step,
                      sum_keys=GAN_KEYS, g_keys=("g_loss",),
                      paths=lambda cfg: run_paths(cfg.output_dir, cfg.category),
                      checkpoint=lambda paths: paths.training_file("gan"), after_save=_export_weights,
                      # configs saved before the restorer existed were GAN runs
                      legacy_config={"objective": "gan", "restore": {}}, legacy=is_legacy)


def train_gan(cfg: TrainConfig, *args, **kwargs) -> Dict[str, Any]:
    """Train the network of `cfg.objective` (this GAN, or the restorer); `training.loop.train`'s
    arguments."""
    from .. import train
    return train(cfg, *args, **kwargs)


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """--config cfg.json plus one flag per TrainConfig field (flags override the file)."""
    p = argparse.ArgumentParser(prog="python -m transgan_lib.methods.transgan.train",
                                description="Train TransGAN on the normal images of one category "
                                            "(torchrun --nproc_per_node=N for DDP).")
    p.add_argument("--config", help="JSON file of TrainConfig fields")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "restore"):  # dicts of ModelConfig / RestoreConfig overrides
            p.add_argument(f"--{f.name}", type=json.loads, help='JSON overrides, e.g. \'{"attn_impl": "math"}\'')
        else:
            per_objective = {o: d[f.name] for o, d in OBJECTIVE_DEFAULTS.items() if f.name in d}
            default = per_objective.get("gan", f.default)
            kind = str if default is None else type(default)
            shown = ", ".join(f"{o} {v!r}" for o, v in per_objective.items()) if per_objective else repr(f.default)
            p.add_argument(f"--{f.name}", type=kind, default=None, help=f"default {shown}")
    p.add_argument("--max_steps", type=int, default=None, help="stop after this many D steps")
    p.add_argument("--no_resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    values: Dict[str, Any] = {}
    if args.config:
        values = json.loads(Path(args.config).read_text())
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    cfg = TrainConfig.from_dict(values)
    result = train_gan(cfg, resume=not args.no_resume, max_steps=args.max_steps, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0 and result["history"]:
        print(json.dumps({"checkpoint": result["checkpoint"], "last_epoch": result["history"][-1]},
                         default=float))
    return result


__all__ = ["train_gan", "OBJECTIVE", "GAN_KEYS", "train_step", "discriminator_step", "generator_step",
           "build_parser", "main"]

if __name__ == "__main__":
    main()
