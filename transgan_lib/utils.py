"""Small shared helpers: path type, ImageNet statistics, batch unpacking, device choice, seeding,
autocast, atomic file writes."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

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


def atomic_write(path: PathLike, write_fn, mode: str = "wb") -> Path:
    """Call `write_fn(file)` on a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def atomic_write_json(obj: Any, path: PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=float)), mode="w")


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
