"""A method's training state and its checkpoint: what a method gives the shared loop (`Objective`), the
state one step touches (`TrainState`), and saving and resuming it exactly.

Shape letters: B batch, K fixed inputs, C channels, H, W image height and width.

A checkpoint is a `stack.build_checkpoint` dict of the method's kind::

    format_version, kind, G, D, G_ema (plain state dicts), ema_n_averaged, opt_G, opt_D,
    scaler {"G", "D"}, epoch (fully completed epochs), step (discriminator updates),
    g_step (generator updates), epoch_state (None, or the state of a partly done epoch),
    config (TrainConfig.to_dict()), model_config (ModelConfig.to_dict()),
    rng {python, numpy, torch, cuda}, fixed_z (the sample grid's inputs), history, world_size
"""
from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..config import ConfigError, ModelConfig, TrainConfig
from ..runs import RunPaths, run_paths
from ..utils import PathLike, atomic_write_json, atomic_write_text, autocast_dtype, seed_everything
from .stack import (
    build_checkpoint,
    build_ema,
    check_resume,
    config_differences,
    describe_differences,
    grad_scaler,
    load_checkpoint_state,
    read_checkpoint,
)

N_FIXED = 16  # fixed inputs (and real images) of the sample grids and the diversity ratio
REQUIRED_KEYS = ("format_version", "G", "G_ema", "D", "model_config", "config")
# Fields that do not change the weights' meaning: attention backend is interchangeable.
IGNORED_MODEL_FIELDS = ("attn_impl",)


@dataclass(frozen=True)
class Objective:
    """What a method gives the shared loop: a generator-like network G trained against a critic D.

    step(state, real (B, C, H, W), generator) does one D update (and every n_critic-th a G + EMA
    update), counts `state.step` / `state.g_step` and returns detached 0-d stats named `sum_keys`
    (those in `g_keys` only on G updates; the history row averages each over its updates)."""
    kind: str  # the checkpoint kind
    build_models: Callable[[TrainConfig], Tuple[nn.Module, nn.Module]]
    step: Callable[..., Dict[str, torch.Tensor]]
    sum_keys: Tuple[str, ...]
    g_keys: Tuple[str, ...]
    paths: Callable[[TrainConfig], RunPaths]  # the run folder and the file prefix
    checkpoint: Callable[[RunPaths], Path]  # the training checkpoint in it
    # the sample grid's inputs from the fixed real images (K, C, H, W); None: fixed noise codes
    fixed_inputs: Optional[Callable[[torch.Tensor, TrainConfig], torch.Tensor]] = None
    validate: Optional[Callable[[nn.Module, Any, TrainConfig], Dict[str, float]]] = None  # more row figures
    after_save: Optional[Callable[[Dict[str, Any], RunPaths], None]] = None  # e.g. a weights export
    legacy_config: Dict[str, Any] = field(default_factory=dict)  # config fields older checkpoints lack
    legacy: Optional[Callable[[Dict[str, Any]], bool]] = None  # recognises its files from before `kind`


@dataclass
class TrainState:
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
    def create(cls, cfg: TrainConfig, device: torch.device, objective: Objective) -> "TrainState":
        """Seeded models, EMA, Adam optimizers, grad scalers (active for fp16 only), fixed z."""
        mc = cfg.model_config()
        seed_everything(cfg.seed)
        G, D = (m.to(device) for m in objective.build_models(cfg))
        amp_dtype = autocast_dtype(device, cfg.amp)
        adam = lambda m: torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))  # noqa: E731
        fixed_z = torch.randn(N_FIXED, mc.latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
        return cls(cfg=cfg, model_config=mc, device=device, G=G, D=D, ema=build_ema(G, cfg.ema_decay),
                   opt_G=adam(G), opt_D=adam(D), scaler_G=grad_scaler(device, amp_dtype),
                   scaler_D=grad_scaler(device, amp_dtype), amp_dtype=amp_dtype,
                   fixed_z=fixed_z, G_train=G, D_train=D)


# ----------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu", *, kind: str,
                    legacy: Optional[Callable[[Dict[str, Any]], bool]] = None) -> Dict[str, Any]:
    """Load a training checkpoint of `kind` written by the loop (`legacy`: `stack.read_checkpoint`'s).

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: the file is corrupt, truncated, another kind of checkpoint (e.g. a CIFAR
            one), or not one of our checkpoints.
    """
    return read_checkpoint(path, kind, required=REQUIRED_KEYS, map_location=map_location, legacy=legacy,
                           train_hint="Train first (notebook 02, transgan_lib.fit or python -m transgan_lib "
                                      "train), or check output_dir and category.")


def check_compatible(saved: Union[Dict[str, Any], ModelConfig], current: ModelConfig,
                     path: Optional[PathLike] = None) -> None:
    """Raise ConfigError naming every architecture field where a checkpoint's model config and
    `current` differ (attention backend excepted: its weights are interchangeable)."""
    diff = config_differences(saved, current, ignore=IGNORED_MODEL_FIELDS)
    if diff:
        where = f"checkpoint {path}" if path else "the checkpoint"
        raise ConfigError(f"{where} was trained with a different model config ({describe_differences(diff)}). "
                          "Use the checkpoint's settings, or a new output_dir/category to train from scratch.")


def _stateful(st: TrainState) -> Dict[str, Any]:
    """The objects of a TrainState whose state dicts a checkpoint holds, by key."""
    return {"G": st.G, "D": st.D, "G_ema": st.ema.module, "opt_G": st.opt_G, "opt_D": st.opt_D,
            "scaler": {"G": st.scaler_G, "D": st.scaler_D}}


def make_checkpoint(st: TrainState, kind: str, epoch_state: Optional[Dict[str, Any]] = None,
                    world_size: int = 1) -> Dict[str, Any]:
    """The checkpoint dict of `st` (`epoch_state`: a partly done epoch, or None)."""
    return build_checkpoint(kind, st.cfg, _stateful(st), epoch=st.epoch, history=st.history,
                            ema_n_averaged=st.ema.n_averaged, step=st.step, g_step=st.g_step,
                            epoch_state=epoch_state, fixed_z=st.fixed_z, world_size=world_size)


def load_state(st: TrainState, ckpt: Dict[str, Any]) -> None:
    """Load a checkpoint dict into a freshly created TrainState (models, EMA, optimizers, scalers,
    counters, fixed inputs, history, global RNG states)."""
    load_checkpoint_state(ckpt, _stateful(st))
    st.ema.n_averaged.copy_(ckpt["ema_n_averaged"])
    st.epoch, st.step, st.g_step = ckpt["epoch"], ckpt["step"], ckpt["g_step"]
    st.fixed_z = ckpt["fixed_z"]
    st.history = list(ckpt["history"])


def resume_state(st: TrainState, path: PathLike, objective: Objective, world_size: int = 1
                 ) -> Optional[Dict[str, Any]]:
    """Load `st` from the checkpoint at `path` after checking the architecture matches
    (ConfigError otherwise); warn about changed training settings. Returns the state of the
    partly done epoch to continue, or None to start at epoch `st.epoch`."""
    # CPU: RNG states must stay CPU tensors; load_state_dict moves weights to st.device
    ckpt = load_checkpoint(path, map_location="cpu", kind=objective.kind, legacy=objective.legacy)
    check_compatible(ckpt["model_config"], st.model_config, path)
    check_resume({**objective.legacy_config, **ckpt["config"]}, st.cfg, path, warn=True)
    load_state(st, ckpt)
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


__all__ = ["N_FIXED", "REQUIRED_KEYS", "Objective", "TrainState", "load_checkpoint", "check_compatible",
           "make_checkpoint", "load_state", "resume_state", "write_history"]
