"""The training stack every method shares (the epoch loop of `training.loop`, the CIFAR model of
`cifar.train`): the optimiser step, the critic update, the EMA, DDP set-up, per-epoch seeds, global
RNG state, and the checkpoint format, its reading and writing, and the resume policy. It knows no
method: each names its checkpoint kind and brings its own models and step.

A training checkpoint is a dict (written atomically by `save_checkpoint`, read back with
weights_only=True by `read_checkpoint`)::

    format_version, kind (the method's name for its checkpoints), config (the run's config, `to_dict()`),
    model_config (its ModelConfig), <name>: the state dict of each model / optimizer / grad scaler
    (a dict of them gives a dict of state dicts), rng {python, numpy, torch, cuda} (global RNG
    states), epoch (fully completed epochs), history (one dict per epoch), plus the kind's own
    counters (a GAN's step, g_step, epoch_state, ...).

Resume policy (`check_resume`): fields in the config class's `RESUME_FREE` may change between a
checkpoint and the run that resumes it (number of epochs, device, ...); any other change raises a
ConfigError naming every changed field (a GAN only warns: its architecture is checked separately).
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from ..config import ConfigError
from ..utils import PathLike, atomic_torch_save, autocast, resolve_device
from .losses import d_loss_hinge, d_loss_wgan, drift_penalty, gradient_penalty

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, corrupt, of another kind, or not a transgan_lib checkpoint."""


# ----------------------------------------------------------------------------- optimiser step
def grad_scaler(device: torch.device, amp_dtype: Optional[torch.dtype]) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 autocast (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   grad_clip: float = 0.0) -> None:
    """One update of `opt`'s parameters from the 0-d `loss`: zero the grads, backward through the
    (fp16) loss scale, clip the total grad norm to `grad_clip` (> 0) on the unscaled grads, step,
    update the scale."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip and grad_clip > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], grad_clip)
    scaler.step(opt)
    scaler.update()


def critic_update(st, real_in: torch.Tensor, fake_in: torch.Tensor, generator: torch.Generator
                  ) -> Dict[str, torch.Tensor]:
    """One update of the discriminator of a training state `st` (a `loop.TrainState`: D, D_train,
    opt_D, scaler_D, cfg) on real and fake inputs (B, C, H, W), already augmented: WGAN-GP with
    drift or hinge, as `st.cfg.loss` says: samples or another method's outputs against normals.
    Returns detached 0-d stats {d_loss, gp, d_real, d_fake}."""
    cfg, B = st.cfg, real_in.shape[0]
    with autocast(st.device, st.amp_dtype):
        logits = st.D_train(torch.cat([real_in, fake_in])).float()  # (2B,)
    real_logits, fake_logits = logits.split(B)
    if cfg.loss == "wgan-gp":
        # penalty on the plain D (same parameters as the DDP wrapper), full precision
        gp = gradient_penalty(st.D, real_in, fake_in, generator)
        loss = (d_loss_wgan(real_logits, fake_logits) + cfg.gp_weight * gp
                + cfg.drift_weight * drift_penalty(real_logits))
    else:
        gp = torch.zeros((), device=st.device)
        loss = d_loss_hinge(real_logits, fake_logits)
    optimizer_step(loss, st.opt_D, st.scaler_D, cfg.grad_clip)
    return {"d_loss": loss.detach(), "gp": gp.detach(), "d_real": real_logits.detach().mean(),
            "d_fake": fake_logits.detach().mean()}


def resume_message(path: PathLike, epochs_done: int, epochs: int, batch: Optional[int] = None) -> str:
    """The line a resumed run prints: what it resumed and what is left."""
    if epochs_done >= epochs:
        return (f"{path}: already trained for {epochs_done} of {epochs} epochs; nothing left to train "
                "(resume=False starts over)")
    within = f", {batch} batches into epoch {epochs_done + 1}" if batch else ""
    return f"resuming from {path}: {epochs_done} of {epochs} epochs done{within}"


# ----------------------------------------------------------------------------- EMA
def ema_warmup_multi_avg_fn(decay: float):
    """EMA update with a warm-up: the decay used after t updates is min(decay, (1 + t) / (10 + t)),
    so a short run's EMA follows G instead of staying at G's (near-constant) initial weights."""
    @torch.no_grad()
    def fn(ema_params, params, num_averaged):
        t = float(num_averaged)
        torch._foreach_lerp_(ema_params, params, 1.0 - min(decay, (1.0 + t) / (10.0 + t)))
    return fn


def build_ema(G: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """EMA of G's parameters: the first update copies G, later ones do
    ema = d * ema + (1 - d) * G with d = decay (warmup=False) or the warm-up decay above."""
    fn = ema_warmup_multi_avg_fn(decay) if warmup else get_ema_multi_avg_fn(decay)
    return AveragedModel(G, multi_avg_fn=fn)


# ----------------------------------------------------------------------------- DDP and seeds
def world_size() -> int:
    """Number of processes of the torch.distributed group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the torch.distributed group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def setup_distributed(device_name: str) -> Tuple[torch.device, bool]:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1; nccl on CUDA, else
    gloo); returns (this process's device, whether this call created the group)."""
    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        if dist.is_initialized() and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed for the random draws of (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def epoch_loader(dataset: Dataset, *, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 num_workers: int = 0) -> DataLoader:
    """Full batches of epoch `epoch` for this rank in a (seed, epoch)-seeded order shared by all
    ranks (DistributedSampler), skipping the first `start_batch` (a resumed partial epoch)."""
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    batches = list(BatchSampler(sampler, batch_size, drop_last=True))[start_batch:]
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, 10_000)))


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel under torch.distributed (more than one process), else itself."""
    if world_size() == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def rank_zero_first(fn: Callable[[], Any]) -> Any:
    """`fn()` on rank 0, then, after a barrier, on the other ranks (files rank 0 writes, such as a
    generated dataset, exist before they read them). Without DDP: just `fn()`."""
    if world_size() == 1:
        return fn()
    out = fn() if rank() == 0 else None
    dist.barrier()
    return out if rank() == 0 else fn()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all ranks, in place (unchanged without DDP); returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def gather_generator_states(generator: torch.Generator) -> List[torch.Tensor]:
    """Every rank's `generator` state, in rank order (a one-element list without DDP)."""
    if world_size() == 1:
        return [generator.get_state()]
    states: List[Any] = [None] * world_size()
    dist.all_gather_object(states, generator.get_state())
    return states


# ----------------------------------------------------------------------------- RNG state
def capture_rng_state() -> Dict[str, Any]:
    """Global RNG states (python, numpy, torch CPU, CUDA) as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
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


# ----------------------------------------------------------------------------- checkpoint format
def state_dicts(objects: Mapping[str, Any]) -> Dict[str, Any]:
    """{name: obj.state_dict()} of models, optimizers and grad scalers (a dict value: nested)."""
    return {k: state_dicts(v) if isinstance(v, Mapping) else v.state_dict() for k, v in objects.items()}


def load_state_dicts(saved: Mapping[str, Any], objects: Mapping[str, Any]) -> None:
    """Inverse of `state_dicts`: load `saved[name]` into each of `objects`."""
    for k, v in objects.items():
        if isinstance(v, Mapping):
            load_state_dicts(saved[k], v)
        else:
            v.load_state_dict(saved[k])


def build_checkpoint(kind: str, cfg, objects: Mapping[str, Any], *, epoch: int,
                     history: Iterable[Dict[str, Any]], **counters) -> Dict[str, Any]:
    """The checkpoint dict (module docstring) of a run of config `cfg` (a config dataclass with
    `to_dict` and `model_config`) after `epoch` epochs: the state dicts of `objects` (models,
    optimizers, scalers by name), the global RNG states, and the kind's own `counters`."""
    return {"format_version": FORMAT_VERSION, "kind": kind, "config": cfg.to_dict(),
            "model_config": cfg.model_config().to_dict(), **state_dicts(objects),
            "rng": capture_rng_state(), "epoch": epoch, "history": list(history), **counters}


def save_checkpoint(ckpt: Dict[str, Any], path: PathLike) -> Path:
    """Write a `build_checkpoint` dict to `path` atomically (a crash never leaves half a file)."""
    if not isinstance(ckpt.get("kind"), str) or not ckpt["kind"]:
        raise ValueError(f"a checkpoint needs its kind (a name), got {ckpt.get('kind')!r}")
    return atomic_torch_save(ckpt, path)


def load_checkpoint_state(ckpt: Dict[str, Any], objects: Mapping[str, Any]) -> None:
    """Load a checkpoint into `objects` (as given to `build_checkpoint`) and set the global
    RNG states (when the checkpoint has them: CIFAR checkpoints before the shared stack do not)."""
    load_state_dicts(ckpt, objects)
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])


def checkpoint_kind(ckpt: Any, kind: str = "", legacy: Optional[Callable[[Dict[str, Any]], bool]] = None
                    ) -> Optional[str]:
    """The kind of a loaded checkpoint. A file written before `kind` existed is of `kind` when the
    reader's `legacy` recognises it by its keys. None: not a transgan_lib checkpoint."""
    if not isinstance(ckpt, dict):
        return None
    if "kind" in ckpt:
        return ckpt["kind"]
    return kind if legacy is not None and legacy(ckpt) else None


def read_checkpoint(path: PathLike, kind: Union[str, Tuple[str, ...]], *, required: Iterable[str] = (),
                    train_hint: str = "", map_location: Union[str, torch.device] = "cpu",
                    legacy: Optional[Callable[[Dict[str, Any]], bool]] = None) -> Dict[str, Any]:
    """Load the `kind` checkpoint (or any of a tuple of kinds) at `path` (weights_only) and check it.
    `legacy(ckpt)`: whether a dict without a kind is an older file of the (first) kind.

    Raises:
        FileNotFoundError: no file at `path` (the message ends with `train_hint`: what to run).
        CheckpointError: the file is corrupt or truncated (delete it), is a checkpoint of another
            kind (both kinds named), is newer than this library, or lacks a `required` key.
    """
    path, kinds = Path(path), ((kind,) if isinstance(kind, str) else tuple(kind))
    kind = " or ".join(repr(k) for k in kinds)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} checkpoint not found: {path}. {train_hint}".strip())
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip/pickle/EOF errors of a damaged file all land here
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file is "
                              "corrupt or was not written by transgan_lib; delete it to retrain.") from e
    found = checkpoint_kind(ckpt, kinds[0], legacy)
    if found is None:
        raise CheckpointError(f"{path} is not a transgan_lib training checkpoint (no kind; expected {kind})")
    if found not in kinds:
        raise CheckpointError(f"{path} is a {found!r} checkpoint, but a {kind} checkpoint is expected "
                              "here; check the path")
    version = ckpt.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version}, newer than this library's "
                              f"{FORMAT_VERSION}; upgrade transgan_lib")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a complete {kind} training checkpoint (missing {missing})")
    return ckpt


# ----------------------------------------------------------------------------- resume policy
def config_differences(saved, current, ignore: Iterable[str] = ()) -> Dict[str, Tuple[Any, Any]]:
    """{field: (saved value, current value)} for fields that differ between two configs (dicts or
    dataclasses with `to_dict`); tuples equal lists."""
    saved = saved if isinstance(saved, dict) else saved.to_dict()
    current = current if isinstance(current, dict) else current.to_dict()
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    keys = (set(saved) | set(current)) - set(ignore)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys)
            if norm(saved.get(k)) != norm(current.get(k))}


def describe_differences(diff: Dict[str, Tuple[Any, Any]]) -> str:
    """"name: checkpoint <a> vs config <b>; ..." for a `config_differences` result."""
    return "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items())


def check_resume(saved: Dict[str, Any], current, path: PathLike, *, warn: bool = False
                 ) -> Dict[str, Tuple[Any, Any]]:
    """The resume policy: compare a checkpoint's config dict `saved` with the `current` config,
    ignoring the fields of `type(current).RESUME_FREE`. Any other change raises a ConfigError
    naming every changed field, or with `warn` only warns (the result then differs from an
    uninterrupted run). Returns the changes {field: (checkpoint value, config value)}."""
    changed = config_differences(saved, current, ignore=type(current).RESUME_FREE)
    if changed and not warn:
        raise ConfigError(f"{path} was trained with other settings ({describe_differences(changed)}). "
                          "Use the checkpoint's settings, another output_dir, or resume=False to start again.")
    if changed:
        warnings.warn(f"resuming {path} with changed training settings ({describe_differences(changed)}); "
                      "the result will differ from an uninterrupted run", stacklevel=3)
    return changed


__all__ = ["FORMAT_VERSION", "CheckpointError", "grad_scaler", "optimizer_step", "critic_update",
           "ema_warmup_multi_avg_fn", "build_ema", "world_size", "rank", "setup_distributed", "epoch_seed",
           "epoch_loader", "wrap_ddp", "rank_zero_first", "all_reduce_sum", "gather_generator_states",
           "capture_rng_state", "set_rng_state", "state_dicts", "load_state_dicts", "build_checkpoint",
           "save_checkpoint", "load_checkpoint_state", "checkpoint_kind", "read_checkpoint", "config_differences",
           "describe_differences", "check_resume"]
