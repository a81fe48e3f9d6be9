"""The training loop every method of the run folder shares: epochs of a method's step over the normal
images of one category, history rows, sample grids, checkpoints with exact resume, DDP.

Shape letters: B batch, K fixed inputs, C channels, H, W image height and width.

Reproducibility: model init uses `cfg.seed`; every random draw of epoch e (noise, augmentation,
penalty mixing, synthetic defects) comes from a CPU generator seeded by (seed, e, rank), and the data
order from a DistributedSampler seeded by (seed, e). A checkpoint at an epoch boundary therefore holds
all the state needed; a run stopped by `max_steps` also saves the partial epoch (batch index,
generator state, running sums), so stopping and resuming ends with exactly the weights of an
uninterrupted run. After a crash, resuming restarts the epoch from the last checkpoint.

Under torchrun (WORLD_SIZE > 1) it runs DistributedDataParallel: `batch_size` is per process, only
rank 0 writes files, and the history is complete on rank 0.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError, TrainConfig
from ..runs import RunPaths
from ..utils import autocast, batch_images, check_writable, progress_bar, set_determinism
from ..viz.figures import plot_history, save_figure, save_image_grid
from .diversity import evaluate_diversity
from .stack import (
    all_reduce_sum,
    epoch_loader,
    epoch_seed,
    gather_generator_states,
    rank,
    rank_zero_first,
    resume_message,
    save_checkpoint,
    setup_distributed,
    world_size,
    wrap_ddp,
)
from .state import N_FIXED, Objective, TrainState, make_checkpoint, resume_state, write_history


def batches_per_epoch(train_set: Dataset, cfg: TrainConfig) -> int:
    n = len(train_set) // world_size() // cfg.batch_size
    if n < 1:
        raise ConfigError(f"batch_size {cfg.batch_size} x {world_size()} process(es) is larger than "
                          f"the {len(train_set)} training images; lower batch_size")
    return n


def fixed_real(train_set: Dataset, cfg: TrainConfig) -> torch.Tensor:
    """The first N_FIXED training images (K, C, H, W): the diversity reference."""
    real = torch.stack([batch_images(train_set[i]) for i in range(min(N_FIXED, len(train_set)))])
    expected = (cfg.model_config().channels, cfg.image_size, cfg.image_size)
    if tuple(real.shape[1:]) != expected:
        raise ConfigError(f"training images have shape {tuple(real.shape[1:])}, the model expects {expected}; "
                          f"build the dataset with image_size={cfg.image_size}")
    return real


@torch.no_grad()
def _mean_val_logit(st: TrainState, val_set: Dataset) -> float:
    """Mean D logit on validation normals, without augmentation."""
    total, n = 0.0, 0
    for batch in DataLoader(val_set, batch_size=st.cfg.batch_size, shuffle=False):
        with autocast(st.device, st.amp_dtype):
            total += float(st.D(batch_images(batch).to(st.device)).float().sum())
        n += len(batch_images(batch))
    return total / max(n, 1)


# ----------------------------------------------------------------------------- epochs
def _run_epoch(st: TrainState, objective: Objective, train_set: Dataset, epoch: int,
               epoch_state: Optional[dict], bar, max_steps: Optional[int], n_batches: int) -> Dict[str, Any]:
    """Train epoch `epoch` (0-based) from its start or from `epoch_state`. Returns the epoch's
    running sums, or, when `max_steps` stopped it, a resumable epoch_state with "stopped"."""
    gen = torch.Generator().manual_seed(epoch_seed(st.cfg.seed, epoch, rank()))
    sums = {k: torch.zeros((), device=st.device) for k in objective.sum_keys}
    counts, start, seconds = {"d": 0, "g": 0}, 0, 0.0
    if epoch_state is not None:
        gen.set_state(epoch_state["rng"][rank()])
        start, counts, seconds = epoch_state["batch"], dict(epoch_state["counts"]), epoch_state["seconds"]
        sums = {k: torch.tensor(v, device=st.device) for k, v in epoch_state["sums"].items()}
    t0 = time.perf_counter()
    loader = epoch_loader(train_set, batch_size=st.cfg.batch_size, seed=st.cfg.seed, epoch=epoch,
                          start_batch=start, num_workers=st.cfg.num_workers)
    for i, batch in enumerate(loader, start=start):
        stats = objective.step(st, batch_images(batch).to(st.device, non_blocking=True), gen)
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


def _epoch_row(st: TrainState, objective: Objective, done: Dict[str, Any], epoch: int, val_set,
               real_fixed, paths: RunPaths, is_last: bool) -> Dict[str, Any]:
    """All ranks: reduce the epoch's sums. Rank 0: history row, samples, plots."""
    cfg, sums, counts, keys = st.cfg, done["sums"], done["counts"], objective.sum_keys
    packed = torch.stack([sums[k] for k in keys] + [torch.tensor(float(counts["d"]), device=st.device),
                                                    torch.tensor(float(counts["g"]), device=st.device)])
    vals = all_reduce_sum(packed).tolist()
    n_d, n_g = vals[-2], vals[-1]
    row = {"epoch": epoch + 1, "step": st.step, "g_step": st.g_step}
    for k, v in zip(keys, vals):
        n = n_g if k in objective.g_keys else n_d
        row[k] = v / n if n else float("nan")
    if rank() != 0:
        return row
    if val_set is not None and len(val_set):
        row["val_d_real"] = _mean_val_logit(st, val_set)
        if objective.validate is not None:
            row.update(objective.validate(st.ema.module.eval(), val_set, cfg))
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


def _save(st: TrainState, objective: Objective, paths: RunPaths, epoch_state: Optional[Dict[str, Any]] = None
          ) -> None:
    """The checkpoint, and at an epoch boundary the method's `after_save` (rank 0)."""
    if rank() == 0:
        ckpt = make_checkpoint(st, objective.kind, epoch_state, world_size())
        save_checkpoint(ckpt, objective.checkpoint(paths))
        if epoch_state is None and objective.after_save is not None:
            objective.after_save(ckpt, paths)


def _train_epochs(st: TrainState, objective: Objective, train_set: Dataset, val_set: Optional[Dataset],
                  real_fixed: torch.Tensor, paths: RunPaths, epoch_state: Optional[dict], max_steps: Optional[int],
                  progress: bool, callbacks) -> None:
    """Epochs st.epoch .. cfg.epochs-1 (or until max_steps), with rows, files and checkpoints."""
    cfg = st.cfg
    n_batches = batches_per_epoch(train_set, cfg)
    done_steps = st.epoch * n_batches + (epoch_state or {}).get("batch", 0)
    bar = progress_bar(total=cfg.epochs * n_batches, initial=min(done_steps, cfg.epochs * n_batches),
                       disable=not (progress and rank() == 0), desc=cfg.category, unit="step", dynamic_ncols=True)
    unsaved = False  # the state changed since the last checkpoint
    try:
        while st.epoch < cfg.epochs and (max_steps is None or st.step < max_steps):
            done = _run_epoch(st, objective, train_set, st.epoch, epoch_state, bar, max_steps, n_batches)
            epoch_state = None
            if done["stopped"]:  # max_steps inside the epoch: save the partial epoch, resumable
                _save(st, objective, paths, done)
                return
            is_last = st.epoch + 1 == cfg.epochs
            row = _epoch_row(st, objective, done, st.epoch, val_set, real_fixed, paths, is_last)
            st.epoch += 1
            unsaved = not (st.epoch % cfg.checkpoint_every == 0 or is_last)
            if not unsaved:
                _save(st, objective, paths)
            for callback in (callbacks or ()) if rank() == 0 else ():
                callback(row)
        if unsaved:  # max_steps stopped at an epoch boundary between checkpoints
            _save(st, objective, paths)
    finally:
        bar.close()


def _build_datasets(cfg: TrainConfig):
    from ..data.folder import folder_spec_of  # lazy: tests may pass their own datasets
    from ..data.splits import train_val_split

    # the demo category is written once, by rank 0, before the other ranks read it
    return rank_zero_first(lambda: train_val_split(cfg.data_root, cfg.category, cfg.image_size,
                                                   cfg.val_fraction, cfg.seed, folder_spec_of(cfg)))


def train(objective: Objective, cfg: TrainConfig, train_set: Optional[Dataset] = None,
          val_set: Optional[Dataset] = None, *, resume: bool = True, max_steps: Optional[int] = None,
          progress: bool = True, callbacks: Optional[Sequence[Callable[[Dict[str, Any]], Any]]] = None
          ) -> Dict[str, Any]:
    """Train a method's networks (`objective`) on the normal images of one category.

    Args:
        objective: the method's models, step, history keys and files.
        cfg: the run's TrainConfig. Files go to `objective.paths(cfg)`.
        train_set, val_set: datasets of items {"image": (3, H, W) in [-1, 1], ...} (or tuples
            whose first element is the image). None: the category `cfg.category` under
            `cfg.data_root` (MVTec layout, or cfg's own folders), split into train/val by
            `cfg.val_fraction`. Only normal images are ever used.
        resume: continue from the method's checkpoint if it exists (ConfigError if it was
            trained with another architecture); False starts over and overwrites it.
        max_steps: stop after this many D steps in total (the state is saved, resumable exactly).
        progress: show progress (rank 0 only; `utils.progress_bar`: a bar, or lines in a log).
        callbacks: called as `callback(row)` with each epoch's history row (rank 0).

    Returns:
        {"history": per-epoch dicts, "checkpoint": path, "output_dir": path,
         "generator": the EMA network (eval mode), "discriminator": D, "step": int}
    """
    set_determinism(cfg.deterministic, cfg.threads)
    paths = objective.paths(cfg)
    if rank() == 0:
        check_writable(paths.root, "output folder")  # before any work
    device, owns_group = setup_distributed(cfg.device)
    try:
        if train_set is None:
            train_set, val_set = _build_datasets(cfg)
        batches_per_epoch(train_set, cfg)  # fail early on a too small dataset
        real_fixed = fixed_real(train_set, cfg)
        st, ckpt_path = TrainState.create(cfg, device, objective), objective.checkpoint(paths)
        if objective.fixed_inputs is not None:
            st.fixed_z = objective.fixed_inputs(real_fixed, cfg)
        resumable = resume and ckpt_path.exists()
        epoch_state = resume_state(st, ckpt_path, objective, world_size()) if resumable else None
        if resumable and rank() == 0:
            print(resume_message(ckpt_path, st.epoch, cfg.epochs, (epoch_state or {}).get("batch")), flush=True)
        st.G_train, st.D_train = wrap_ddp(st.G, device), wrap_ddp(st.D, device)
        _train_epochs(st, objective, train_set, val_set, real_fixed, paths, epoch_state, max_steps, progress,
                      callbacks)
        return {"history": st.history, "checkpoint": str(ckpt_path), "output_dir": str(paths.root),
                "generator": st.ema.module.eval(), "discriminator": st.D, "step": st.step}
    finally:
        if owns_group:
            dist.destroy_process_group()


__all__ = ["train", "batches_per_epoch", "fixed_real"]
