"""Plain GAN training loop for TransGAN on the normal images of one category.

Shape letters: B batch, K fixed samples, L latent_dim, C channels, H, W image height and width.

One *step* is one discriminator update on one real batch; the generator is updated after every
`n_critic`-th step, and its EMA copy (the model used for samples, scoring and returned) right
after. Loss: WGAN-GP with drift (default) or hinge; DiffAugment on everything D sees in training.

Reproducibility: model init uses `cfg.seed`; every random draw of epoch e (noise, augmentation,
penalty mixing) comes from a CPU generator seeded by (seed, e, rank), and the data order from a
DistributedSampler seeded by (seed, e). A checkpoint at an epoch boundary therefore holds all the
state needed; a run stopped by `max_steps` also saves the partial epoch (batch index, generator
state, running sums), so stopping and resuming ends with exactly the weights of an uninterrupted
run. After a crash, resuming restarts the epoch from the last checkpoint (same result too).

Launch under torchrun (WORLD_SIZE > 1) for DistributedDataParallel: `batch_size` is per process,
only rank 0 writes files, and the history is complete on rank 0.

The optimiser step, EMA, DDP set-up, epoch seeds and checkpoint format are the shared training
stack's (`gan.stack`), GAN checkpoints `gan.checkpoint`'s, the diversity check `gan.diversity`'s;
their public names are re-exported here. `TrainConfig.objective = "restore"` trains the restorer
with this same loop: `gan.restore` supplies its models, step, history keys and checkpoint name.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError, ModelConfig, TrainConfig
from ..runs import RunPaths, run_paths
from ..utils import (autocast, autocast_dtype, batch_images, check_writable, progress_bar, seed_everything,
                     set_determinism)
from ..viz.figures import plot_history, save_figure, save_image_grid
from . import restore
from .augment import diff_augment
from .checkpoint import (
    CheckpointError,
    check_compatible,
    export_weights,
    load_checkpoint,
    load_generator,
    load_models,
    make_checkpoint,
    resume_state,
    write_history,
)
from .diversity import diversity_ratio, evaluate_diversity, sample_diversity
from .losses import g_loss_hinge, g_loss_wgan
from .stack import (
    all_reduce_sum,
    build_ema,
    critic_update,
    epoch_loader,
    epoch_seed,
    gather_generator_states,
    grad_scaler,
    optimizer_step,
    rank,
    rank_zero_first,
    resume_message,
    save_checkpoint,
    setup_distributed,
    world_size,
    wrap_ddp,
)

N_FIXED = 16  # fixed samples (and real images) for the diversity ratio and sample grids


# ----------------------------------------------------------------------------- state
@dataclass
class GANState:
    """Everything a training step touches. `G_train`/`D_train` are the DDP wrappers (or G/D)."""
    cfg: TrainConfig
    model_config: ModelConfig
    device: torch.device
    G: nn.Module
    D: nn.Module
    ema: AveragedModel
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype]
    fixed_z: torch.Tensor
    G_train: Optional[nn.Module] = None
    D_train: Optional[nn.Module] = None
    step: int = 0
    g_step: int = 0
    epoch: int = 0  # fully completed epochs
    history: List[Dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(cls, cfg: TrainConfig, device: torch.device) -> "GANState":
        """Seeded models, EMA, Adam optimizers, grad scalers (active for fp16 only), fixed z."""
        mc = cfg.model_config()
        seed_everything(cfg.seed)
        G, D = (m.to(device) for m in restore.build_training_models(cfg))
        amp_dtype = autocast_dtype(device, cfg.amp)
        adam = lambda m: torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))  # noqa: E731
        fixed_z = torch.randn(N_FIXED, mc.latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
        return cls(cfg=cfg, model_config=mc, device=device, G=G, D=D, ema=build_ema(G, cfg.ema_decay),
                   opt_G=adam(G), opt_D=adam(D), scaler_G=grad_scaler(device, amp_dtype),
                   scaler_D=grad_scaler(device, amp_dtype), amp_dtype=amp_dtype,
                   fixed_z=fixed_z, G_train=G, D_train=D)


# ----------------------------------------------------------------------------- steps
def _noise(st: GANState, batch: int, generator: torch.Generator) -> torch.Tensor:
    z = torch.randn(batch, st.model_config.latent_dim, generator=generator)  # (B, L) on CPU
    return z.to(st.device, non_blocking=True)


def discriminator_step(st: GANState, real: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """One D update on real (B, C, H, W) and B fresh fakes; returns detached 0-d stats."""
    cfg, B = st.cfg, real.shape[0]
    with torch.no_grad(), autocast(st.device, st.amp_dtype):
        fake = st.G(_noise(st, B, generator))  # (B, C, H, W); plain G: no DDP sync needed
    real_in = diff_augment(real, cfg.diffaug, generator)
    return critic_update(st, real_in, diff_augment(fake.float(), cfg.diffaug, generator), generator)


def generator_step(st: GANState, batch: int, generator: torch.Generator) -> torch.Tensor:
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


def train_step(st: GANState, real: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """One step: a D update, and a G (+EMA) update when the new step count is a multiple of
    n_critic. Increments `st.step` (and `st.g_step`); returns detached 0-d stats. The restorer
    objective takes its own step (`restore.restore_step`)."""
    if st.cfg.objective == "restore":
        return restore.restore_step(st, real, generator)
    stats = discriminator_step(st, real, generator)
    st.step += 1
    if st.step % st.cfg.n_critic == 0:
        stats["g_loss"] = generator_step(st, real.shape[0], generator)
        st.g_step += 1
    return stats


# ----------------------------------------------------------------------------- helpers
def _batches_per_epoch(train_set: Dataset, cfg: TrainConfig) -> int:
    n = len(train_set) // world_size() // cfg.batch_size
    if n < 1:
        raise ConfigError(f"batch_size {cfg.batch_size} x {world_size()} process(es) is larger than "
                          f"the {len(train_set)} training images; lower batch_size")
    return n


def _fixed_real(train_set: Dataset, cfg: TrainConfig) -> torch.Tensor:
    """The first N_FIXED training images (K, C, H, W): the diversity reference."""
    real = torch.stack([batch_images(train_set[i]) for i in range(min(N_FIXED, len(train_set)))])
    expected = (cfg.model_config().channels, cfg.image_size, cfg.image_size)
    if tuple(real.shape[1:]) != expected:
        raise ConfigError(f"training images have shape {tuple(real.shape[1:])}, the model expects {expected}; "
                          f"build the dataset with image_size={cfg.image_size}")
    return real


@torch.no_grad()
def _mean_val_logit(st: GANState, val_set: Dataset) -> float:
    """Mean D logit on validation normals, without augmentation."""
    total, n = 0.0, 0
    for batch in DataLoader(val_set, batch_size=st.cfg.batch_size, shuffle=False):
        with autocast(st.device, st.amp_dtype):
            total += float(st.D(batch_images(batch).to(st.device)).float().sum())
        n += len(batch_images(batch))
    return total / max(n, 1)


# ----------------------------------------------------------------------------- epochs
def _run_epoch(st: GANState, train_set: Dataset, epoch: int, epoch_state: Optional[dict],
               bar, max_steps: Optional[int], n_batches: int) -> Dict[str, Any]:
    """Train epoch `epoch` (0-based) from its start or from `epoch_state`. Returns the epoch's
    running sums, or, when `max_steps` stopped it, a resumable epoch_state with "stopped"."""
    gen = torch.Generator().manual_seed(epoch_seed(st.cfg.seed, epoch, rank()))
    sums = {k: torch.zeros((), device=st.device) for k in restore.sum_keys(st.cfg)}
    counts, start, seconds = {"d": 0, "g": 0}, 0, 0.0
    if epoch_state is not None:
        gen.set_state(epoch_state["rng"][rank()])
        start, counts, seconds = epoch_state["batch"], dict(epoch_state["counts"]), epoch_state["seconds"]
        sums = {k: torch.tensor(v, device=st.device) for k, v in epoch_state["sums"].items()}
    t0 = time.perf_counter()
    loader = epoch_loader(train_set, batch_size=st.cfg.batch_size, seed=st.cfg.seed, epoch=epoch,
                          start_batch=start, num_workers=st.cfg.num_workers)
    for i, batch in enumerate(loader, start=start):
        stats = train_step(st, batch_images(batch).to(st.device, non_blocking=True), gen)
        for k, v in stats.items():
            sums[k] += v
        counts["d"] += 1
        counts["g"] += "g_loss" in stats
        bar.update(1)
        if st.step % 10 == 0 and not bar.disable:
            bar.set_postfix(epoch=epoch + 1, d_loss=f"{float(stats['d_loss']):.3f}",
                            g_loss=f"{float(sums['g_loss']) / max(counts['g'], 1):.3f}")
        if max_steps is not None and st.step >= max_steps and i + 1 < n_batches:
            return {"stopped": True, "batch": i + 1, "rng": gather_generator_states(gen), "counts": counts,
                    "sums": {k: float(v) for k, v in sums.items()},
                    "seconds": seconds + time.perf_counter() - t0}
    return {"stopped": False, "sums": sums, "counts": counts, "seconds": seconds + time.perf_counter() - t0}


def _epoch_row(st: GANState, done: Dict[str, Any], epoch: int, val_set, real_fixed, paths: RunPaths,
               is_last: bool) -> Dict[str, Any]:
    """All ranks: reduce the epoch's sums. Rank 0: history row, samples, plots."""
    cfg, sums, counts = st.cfg, done["sums"], done["counts"]
    keys = restore.sum_keys(cfg)
    packed = torch.stack([sums[k] for k in keys] + [torch.tensor(float(counts["d"]), device=st.device),
                                                         torch.tensor(float(counts["g"]), device=st.device)])
    vals = all_reduce_sum(packed).tolist()
    n_d, n_g = vals[-2], vals[-1]
    row = {"epoch": epoch + 1, "step": st.step, "g_step": st.g_step}
    for k, v in zip(keys, vals):
        n = n_g if k in restore.G_KEYS else n_d
        row[k] = v / n if n else float("nan")
    if rank() != 0:
        return row
    if val_set is not None and len(val_set):
        row["val_d_real"] = _mean_val_logit(st, val_set)
        if cfg.objective == "restore":  # what the restorer learnt, on held-apart synthetic defects
            row.update(restore.validate_restorer(st.ema.module.eval(), restore.val_images(val_set), cfg))
    with autocast(st.device, st.amp_dtype):
        # the EMA starts at G's near-constant init and needs ~1/(1-decay) G steps to catch up:
        # its low early diversity is flagged in the row but not warned about
        warm = st.g_step * (1 - cfg.ema_decay) >= 1
        div = evaluate_diversity(st.ema.module.eval(), st.fixed_z, real_fixed, epoch + 1, warn=warm)
    row.update(diversity=div["diversity"], collapse_warning=div["collapse_warning"],
               seconds=done["seconds"], images_per_second=n_d * cfg.batch_size / max(done["seconds"], 1e-9))
    st.history.append(row)
    write_history(st.history, paths)
    if (epoch + 1) % cfg.sample_every == 0 or is_last:
        for path in (paths.samples(epoch + 1), paths.samples()):
            save_image_grid(div["samples"], path, nrow=int(math.sqrt(N_FIXED)))
        save_figure(plot_history(st.history), paths.history("png"))
    return row


# ----------------------------------------------------------------------------- main entry
def _build_datasets(cfg: TrainConfig):
    from ..data.folder import folder_spec_of  # lazy: tests may pass their own datasets
    from ..data.splits import train_val_split

    # the demo category is written once, by rank 0, before the other ranks read it
    return rank_zero_first(lambda: train_val_split(cfg.data_root, cfg.category, cfg.image_size,
                                                   cfg.val_fraction, cfg.seed, folder_spec_of(cfg)))


def _save(st: GANState, paths: RunPaths, epoch_state: Optional[Dict[str, Any]] = None) -> None:
    """The checkpoint, and at an epoch boundary its weights-only export (rank 0)."""
    if rank() == 0:
        ckpt = make_checkpoint(st, epoch_state, world_size())
        save_checkpoint(ckpt, restore.checkpoint_path(paths, st.cfg))
        if epoch_state is None and st.cfg.objective == "gan":
            export_weights(ckpt, paths.checkpoint, paths.weights)


def _train_epochs(st: GANState, train_set: Dataset, val_set: Optional[Dataset], real_fixed: torch.Tensor,
                  paths: RunPaths, epoch_state: Optional[dict], max_steps: Optional[int], progress: bool,
                  callbacks) -> None:
    """Epochs st.epoch .. cfg.epochs-1 (or until max_steps), with rows, files and checkpoints."""
    cfg = st.cfg
    n_batches = _batches_per_epoch(train_set, cfg)
    done_steps = st.epoch * n_batches + (epoch_state or {}).get("batch", 0)
    bar = progress_bar(total=cfg.epochs * n_batches, initial=min(done_steps, cfg.epochs * n_batches),
               disable=not (progress and rank() == 0), desc=cfg.category, unit="step", dynamic_ncols=True)
    unsaved = False  # the state changed since the last checkpoint
    try:
        while st.epoch < cfg.epochs and (max_steps is None or st.step < max_steps):
            done = _run_epoch(st, train_set, st.epoch, epoch_state, bar, max_steps, n_batches)
            epoch_state = None
            if done["stopped"]:  # max_steps inside the epoch: save the partial epoch, resumable
                _save(st, paths, done)
                return
            is_last = st.epoch + 1 == cfg.epochs
            row = _epoch_row(st, done, st.epoch, val_set, real_fixed, paths, is_last)
            st.epoch += 1
            unsaved = not (st.epoch % cfg.checkpoint_every == 0 or is_last)
            if not unsaved:
                _save(st, paths)
            for callback in (callbacks or ()) if rank() == 0 else ():
                callback(row)
        if unsaved:  # max_steps stopped at an epoch boundary between checkpoints
            _save(st, paths)
    finally:
        bar.close()


def train_gan(cfg: TrainConfig, train_set: Optional[Dataset] = None, val_set: Optional[Dataset] = None,
              *, resume: bool = True, max_steps: Optional[int] = None, progress: bool = True,
              callbacks: Optional[Sequence[Callable[[Dict[str, Any]], Any]]] = None) -> Dict[str, Any]:
    """Train TransGAN on normal images with WGAN-GP (or hinge), DiffAugment and an EMA generator.

    Args:
        cfg: the run's TrainConfig. Files go to `<cfg.output_dir>/<cfg.category>/`.
        train_set, val_set: datasets of items {"image": (3, H, W) in [-1, 1], ...} (or tuples
            whose first element is the image). None: the MVTec-layout category `cfg.category`
            under `cfg.data_root`, split into train/val by `cfg.val_fraction` (the demo category
            is created when needed). Only normal images are ever used.
        resume: continue from `<output dir>/checkpoint.pt` if it exists (ConfigError if it was
            trained with another architecture); False starts over and overwrites it.
        max_steps: stop after this many D steps in total (the state is saved, resumable exactly).
        progress: show progress (rank 0 only; `utils.progress_bar`: a bar, or lines in a log).
        callbacks: called as `callback(row)` with each epoch's history row (rank 0).

    Returns:
        {"history": per-epoch dicts, "checkpoint": path, "output_dir": path,
         "generator": EMA generator (eval mode), "discriminator": D, "step": int}
    """
    set_determinism(cfg.deterministic, cfg.threads)
    if rank() == 0:
        check_writable(run_paths(cfg.output_dir, cfg.category, cfg.objective).root, "output folder")  # before any work
    device, owns_group = setup_distributed(cfg.device)
    try:
        if train_set is None:
            train_set, val_set = _build_datasets(cfg)
        _batches_per_epoch(train_set, cfg)  # fail early on a too small dataset
        real_fixed = _fixed_real(train_set, cfg)
        paths = run_paths(cfg.output_dir, cfg.category, cfg.objective)
        st, ckpt_path = GANState.create(cfg, device), restore.checkpoint_path(paths, cfg)
        if cfg.objective == "restore":  # the sample grid: restorations of fixed defective images
            st.fixed_z = restore.fixed_inputs(real_fixed, cfg)
        resumable = resume and ckpt_path.exists()
        epoch_state = resume_state(st, ckpt_path, world_size()) if resumable else None
        if resumable and rank() == 0:
            print(resume_message(ckpt_path, st.epoch, cfg.epochs, (epoch_state or {}).get("batch")), flush=True)
        st.G_train, st.D_train = wrap_ddp(st.G, device), wrap_ddp(st.D, device)
        _train_epochs(st, train_set, val_set, real_fixed, paths, epoch_state, max_steps, progress, callbacks)
        return {"history": st.history, "checkpoint": str(ckpt_path), "output_dir": str(paths.root),
                "generator": st.ema.module.eval(), "discriminator": st.D, "step": st.step}
    finally:
        if owns_group:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """--config cfg.json plus one flag per TrainConfig field (flags override the file)."""
    p = argparse.ArgumentParser(prog="python -m transgan_lib.gan.train",
                                description="Train TransGAN on the normal images of one category "
                                            "(torchrun --nproc_per_node=N for DDP).")
    p.add_argument("--config", help="JSON file of TrainConfig fields")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "restore"):  # dicts of ModelConfig / RestoreConfig overrides
            p.add_argument(f"--{f.name}", type=json.loads, help='JSON overrides, e.g. \'{"attn_impl": "math"}\'')
        else:
            p.add_argument(f"--{f.name}", type=type(f.default), default=None, help=f"default {f.default!r}")
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


__all__ = ["train_gan", "GANState", "train_step", "discriminator_step", "generator_step",
           "sample_diversity", "diversity_ratio", "evaluate_diversity", "build_ema", "epoch_seed",
           "load_checkpoint", "load_generator", "load_models", "check_compatible", "CheckpointError",
           "build_parser", "main"]

if __name__ == "__main__":
    main()
