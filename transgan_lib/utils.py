"""Small shared helpers: path type, ImageNet statistics, batch unpacking, device choice, seeding,
autocast, atomic file writes, progress display."""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from tqdm.auto import tqdm

PathLike = Union[str, os.PathLike]
# ImageNet normalisation of torchvision's pretrained networks (perceptual loss, CIFAR encoder)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def batch_images(batch: Any) -> torch.Tensor:
    """The (B, C, H, W) images of a data-loader batch: a tensor, an (images, ...) tuple
    (TensorDataset) or a {"image": ...} dict (MVTecAD)."""
    if isinstance(batch, dict):
        return batch["image"]
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, then Apple MPS, else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool = False, threads: int = 0) -> None:
    """Make a run repeat exactly: `threads` > 0 pins torch's intra-op CPU threads (a different
    thread count splits reductions differently, so the same seed diverges between machines with
    different core counts); `deterministic` also selects deterministic CUDA kernels (cuBLAS
    workspace config, no cuDNN autotuning), which torch needs for repeatable GPU runs."""
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def autocast_dtype(device: torch.device, amp: str = "auto"):
    """The autocast dtype for `amp` on `device`, or None for full precision.

    CPU always runs in fp32 (CPU autocast is slower than fp32 for these small models).
    """
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, dtype) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _file_mode() -> int:
    """The mode a new file gets under this process's umask (mkstemp alone gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp_files(path: PathLike) -> list:
    """Delete the temporary files `atomic_write` left beside `path` when its writer was killed (the
    writer's pid, in the name, no longer runs; older names carry none); returns the paths removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = re.fullmatch(r"(?:(\d+)\.)?[^.]+\.tmp", tmp.name[len(path.name) + 2:])
        if match and not (match.group(1) and _pid_alive(int(match.group(1)))):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def atomic_write(path: PathLike, write_fn, mode: str = "wb") -> Path:
    """Call `write_fn(file)` on a temp file in the same folder, fsync, then rename over `path`.

    The file gets the umask's mode (as `open` would give it); temp files that a killed writer left
    beside `path` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def json_ready(obj: Any) -> Any:
    """`obj` with every non-finite float (nan, inf) as None and numpy / torch values as plain ones, so
    that strict JSON parsers (JavaScript, jq) read the file."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return json_ready(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def to_json(obj: Any, indent: int = 2) -> str:
    """Strict JSON text (no NaN or Infinity tokens: `json_ready`)."""
    return json.dumps(json_ready(obj), indent=indent, default=str, allow_nan=False)


def atomic_write_json(obj: Any, path: PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(to_json(obj)), mode="w")


def check_writable(folder: PathLike, what: str = "output folder") -> Path:
    """Create `folder` if needed and check a file can be written there, before any long work; a
    PermissionError (or other OSError) naming the folder and the fix otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"cannot write to the {what} {folder} ({e.strerror or e}): choose a folder you "
                              "can write to (or fix its permissions) before starting") from e
    return folder


def atomic_write_text(text: str, path: PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def describe_device(device: torch.device) -> str:
    """One line for benchmark output: torch/python versions, the device, CPU threads."""
    text = f"torch {torch.__version__}, python {platform.python_version()}, device {device}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        text += f" ({p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    else:
        text += f" ({platform.processor() or platform.machine()})"
    return text + f", {torch.get_num_threads()} torch threads"


# ----------------------------------------------------------------------------- progress
PROGRESS_ENV = "TRANSGAN_PROGRESS"  # "bar" (tqdm), "lines" (LineProgress), "off"; unset: see progress_bar


class LineProgress:
    """Progress as whole lines on stdout (tqdm's counters, rate and ETA), for logs and for notebooks run
    by papermill, whose streamed output cannot redraw a bar: `desc:  50% 605/1210 step [00:31 elapsed,
    ETA 00:37, 16.19step/s, epoch=55, d_loss=0.112]`. A line is printed once `step` of the total
    has passed since the last one (but not within `min_interval` s of it), after `max_interval` s
    in any case, and at close. The subset of tqdm's interface this library uses."""

    FORMAT = ("{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} "
              "[{elapsed} elapsed, ETA {remaining}, {rate_fmt}{postfix}]")

    def __init__(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, step: float = 0.05, min_interval: float = 2.0, max_interval: float = 60.0, **_):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc or "progress", unit, False
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n = self.initial = self.printed_n = initial
        self.step, self.min_interval, self.max_interval = step, min_interval, max_interval
        self.start = self.printed_t = time.monotonic()
        self.postfix = ""

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        due = self.total and self.n - self.printed_n >= self.step * self.total
        if (due and now - self.printed_t >= self.min_interval) or now - self.printed_t >= self.max_interval:
            self.print_line(now)

    def print_line(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        fmt = self.FORMAT if self.total else "{desc}: {n_fmt} {unit} [{elapsed} elapsed, {rate_fmt}{postfix}]"
        print(tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit,
                                bar_format=fmt, postfix=self.postfix or None, initial=self.initial), flush=True)
        self.printed_n, self.printed_t = self.n, now

    def close(self) -> None:
        if not self.disable and self.n != self.printed_n:
            self.print_line()
        self.disable = True


def progress_mode() -> str:
    """$TRANSGAN_PROGRESS if set, else "bar" in a terminal or Jupyter, "lines" elsewhere (a log file)."""
    mode = os.environ.get(PROGRESS_ENV, "")
    if mode in ("bar", "lines", "off"):
        return mode
    return "bar" if "ipykernel" in sys.modules or sys.stderr.isatty() else "lines"


def progress_bar(iterable=None, *, disable: bool = False, **kwargs):
    """A progress display for a loop: tqdm's bar (terminal, Jupyter) or `LineProgress` (logs, papermill
    runs), chosen by `progress_mode`; `disable` or mode "off": none. Takes tqdm's arguments."""
    mode = "off" if disable else progress_mode()
    if mode == "lines":
        return LineProgress(iterable, **kwargs)
    return tqdm(iterable, disable=mode == "off", **kwargs)
