"""Training on every GPU of the machine, from a notebook cell (notebook 02's `train_on_gpus`).

With two or more CUDA GPUs (Kaggle's T4 x2) the TrainConfig is written to
`<output_dir>/<category>/train_config.json` and `torchrun --nproc_per_node N -m transgan_lib train
--config <that file>` runs in a subprocess (DistributedDataParallel; `batch_size` is per process, so
N GPUs see N x batch_size images a step). Its log streams into the cell line by line and into
`train_log.txt` beside the checkpoint; a failure raises with the log's last lines. With fewer GPUs,
`train_gan` runs in the notebook's own process, as before.

torchrun is started as `python -m torch.distributed.run` with the notebook's own interpreter, so
it finds the same torch and transgan_lib (a clone that is not installed is put on PYTHONPATH).
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .config import TrainConfig
from .runs import run_paths

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding transgan_lib/
LOG_TAIL = 40  # lines of the log shown when the subprocess fails
# Unbuffered output, so lines arrive as they are printed; a tqdm bar, if one is drawn, redraws at
# most every 30 s (tqdm reads TQDM_* variables) rather than ten times a second into the cell.
CHILD_ENV = {"PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "30"}


class LaunchError(RuntimeError):
    """The training subprocess failed; the message holds the end of its log."""


def count_gpus(gpus: Union[str, int], device: str = "auto", available: Optional[int] = None) -> int:
    """How many GPUs to train on: `gpus` "auto" takes every visible CUDA GPU (none when `device`
    names no CUDA device); an int asks for exactly that many (ValueError if fewer are visible).
    `available`: the visible count (None: torch.cuda.device_count())."""
    if available is None:
        import torch
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == "auto":
        return available if device in ("auto", "cuda") else 0
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f'gpus must be "auto" or a number >= 0, got {gpus!r}')
    if gpus > available:
        raise ValueError(f"gpus = {gpus}, but {available} CUDA GPU(s) are visible")
    return gpus


def torchrun_command(config_path, nproc: int, *, python: str = sys.executable,
                     extra: Sequence[str] = ()) -> List[str]:
    """`torchrun --standalone --nproc_per_node <nproc> -m transgan_lib train --config <config_path>`,
    run by `python` (`extra`: more flags for `train`, e.g. "--max_steps", "10")."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "transgan_lib", "train", "--config", str(config_path), *extra]


def child_env(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The subprocess's environment: `environ` (default os.environ), CHILD_ENV, and PYTHONPATH
    starting with the folder that holds this transgan_lib."""
    env = dict(os.environ if environ is None else environ)
    env.update(CHILD_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    return env


def stream_command(command: Sequence[str], *, env: Optional[Dict[str, str]] = None, log_path=None,
                   echo: Callable[[str], Any] = print, tail: int = LOG_TAIL) -> None:
    """Run `command`, passing each line of its output (stdout and stderr together; a progress
    bar's carriage returns count as line ends) to `echo` as it comes and to `log_path` when given.
    Raises LaunchError with the last `tail` lines when it exits with a non-zero status; an
    exception while streaming (the cell interrupted) terminates it (torchrun stops its workers)."""
    last = collections.deque(maxlen=tail)
    log = open(log_path, "w") if log_path is not None else contextlib.nullcontext()  # noqa: SIM115
    with log, subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, env=env) as proc:
        try:
            for line in proc.stdout:  # text mode: "\r" and "\r\n" end a line too
                line = line.rstrip("\n")
                last.append(line)
                echo(line)
                if log_path is not None:
                    log.write(line + "\n")
                    log.flush()
        except BaseException:  # an interrupted cell (KeyboardInterrupt) stops the training too
            proc.terminate()
            proc.wait(timeout=60)
            raise
    code = proc.returncode
    if code != 0:
        where = f" (full log: {log_path})" if log_path is not None else ""
        raise LaunchError(f"{command[:6]} ... exited with status {code}{where}; last lines:\n" + "\n".join(last))


def train_distributed(cfg: TrainConfig, nproc: int, *, echo: Callable[[str], Any] = print,
                      python: str = sys.executable, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Train `cfg` under torchrun on `nproc` processes (see the module docstring) and wait.
    Returns {"history", "checkpoint", "output_dir", "gpus"} read back from the run folder."""
    paths = run_paths(cfg.output_dir, cfg.category, cfg.objective)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.train_config.write_text(json.dumps(cfg.to_dict(), indent=1))
    command = torchrun_command(paths.train_config, nproc, python=python, extra=extra)
    echo(f"launching: {' '.join(command)}")
    stream_command(command, env=child_env(), log_path=paths.train_log, echo=echo)
    history_path = paths.history("json")
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    checkpoint = paths.training_file(cfg.objective)
    return {"history": history, "checkpoint": str(checkpoint), "output_dir": str(paths.root), "gpus": nproc}


def train_on_gpus(cfg: TrainConfig, gpus: Union[str, int] = "auto", **kwargs) -> Dict[str, Any]:
    """Notebook 02's training call: `train_distributed` on every GPU when `count_gpus(gpus, ...)`
    is 2 or more, else `methods.transgan.train.train_gan(cfg, **kwargs)` in this process. Both resume from
    the run's checkpoint; both return "history" and "checkpoint"."""
    n = count_gpus(gpus, cfg.device)
    if n >= 2:
        return train_distributed(cfg, n)
    from .methods.transgan.train import train_gan
    return train_gan(cfg, **kwargs)
