"""What a GPU user can expect, on paper: for each preset (tiny, small, base) and each unit of a detector's
work, the parameters, FLOPs per image, the memory at the notebooks' batch sizes, and the time it would
take on a T4, an A100 and an H100, per epoch and per MVTec AD category (README, "What to expect on a GPU").

    python benchmarks/flops.py                      # the README tables (CPU, 1 thread: ~7 min, base most of it)
    python benchmarks/flops.py --sizes tiny,small   # without base
    python benchmarks/flops.py --json flops.json    # also every number, per row

Measured on the CPU by running the library's own code (`train_step`, `map_with_config`, `train_encoder`,
`map_images`, `restore_images`) as a GPU run takes it (`as_on_gpu`): training under bf16 autocast
(`amp="auto"` picks bf16 on an A100 or H100 and fp16 on a T4, the same sizes); the search, the encoder and
the restorer's scoring in fp32, as the pipeline runs them; Adam and gradient clipping through their
foreach kernels, CUDA's default (the CPU's default loops over tensors, one op each).

- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; forward and backward).
- ops, bytes: every non-view aten op dispatched, and the bytes of its tensor inputs and outputs.
- memory: "resident" holds the parameters, EMA and optimiser state kept between units; "peak" is the most
  bytes of tensors created by the unit and alive at once (activations, gradients, autocast copies of the
  weights, temporaries), tracked by their storages. A GPU adds its CUDA context and allocator slack.
- a unit (a training step, a search iteration, a scoring batch) is the difference between profiling two
  units and one, so fixed costs (the search's fp32 evaluation of its final codes, loaders) drop out.

Time (`GPUS`, `FRACTION`, `HOST_SECONDS`): each op runs at FRACTION of the GPU's peak FLOP/s (tensor cores
for bf16/fp16 ops, plain FP32 for fp32 ones) or of its memory bandwidth, whichever bounds it (a per-op
roofline); the host issues one op per HOST_SECONDS (eager PyTorch, no CUDA graphs); a unit takes the
larger of the two sums. Per epoch and per category from `Category` and the configs' defaults (350
epochs, 1000 search iterations, 50 encoder epochs); per-epoch validation, figures and checkpoints are
not counted. `benchmarks/gpu_check.sh` measures the real figures on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence
from unittest import mock

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
    shape_wrapper,
)

from transgan_lib import utils
from transgan_lib.config import EncoderConfig, MappingConfig, TrainConfig
from transgan_lib.methods.transgan.encoder import train_encoder
from transgan_lib.methods.transgan.mapping import map_images, map_with_config
from transgan_lib.methods.pipeline import encoder_size
from transgan_lib.methods.restorer.detect import restore_images
from transgan_lib import methods
from transgan_lib.training import state as train_state
from transgan_lib.methods.restorer.train import build_training_models
from transgan_lib.models.encoder import LatentEncoder
from transgan_lib.models.transgan import build_models

GiB = 2 ** 30


# ----------------------------------------------------------------------------- GPUs and the time model
@dataclass(frozen=True)
class GPU:
    """Dense peak figures of the vendor's data sheet."""
    name: str
    half_flops: float  # FLOP/s of bf16 / fp16 tensor-core matmuls
    fp32_flops: float  # FLOP/s of plain FP32 (torch leaves TF32 off for matmuls by default)
    bandwidth: float  # bytes/s of GPU memory
    memory_gib: float  # what PyTorch can allocate, about
    amp: str  # what amp="auto" takes on it


GPUS = (GPU("T4", 65e12, 8.1e12, 320e9, 15.0, "fp16"),
        GPU("A100 40GB", 312e12, 19.5e12, 1555e9, 39.5, "bf16"),
        GPU("H100 SXM", 989e12, 67e12, 3350e9, 79.0, "bf16"))
# Other cards `gpu_check` may meet, to compute its model FLOP utilisation and prediction.
OTHER_GPUS = (GPU("H100 PCIe", 756e12, 51e12, 2000e9, 79.0, "bf16"), GPU("H200", 989e12, 67e12, 4800e9, 139.0, "bf16"),
              GPU("A100 80GB", 312e12, 19.5e12, 2039e9, 79.0, "bf16"), GPU("L4", 121e12, 30.3e12, 300e9, 22.0, "bf16"),
              GPU("A10", 125e12, 31.2e12, 600e9, 22.0, "bf16"), GPU("V100", 125e12, 15.7e12, 900e9, 15.5, "fp16"))
FRACTION = 0.5  # of peak FLOP/s or bandwidth that each op reaches
HOST_SECONDS = 10e-6  # host time per op in eager PyTorch (Python, dispatcher, kernel launch)


def gpu_spec(device_name: str) -> Optional[GPU]:
    """The GPU of GPUS / OTHER_GPUS that `torch.cuda.get_device_name()` names, or None."""
    name = device_name.upper().replace("-", " ")
    keys = (("L40", None), ("H100 PCIE", "H100 PCIe"), ("H100", "H100 SXM"), ("H200", "H200"),
            ("A100", "A100 80GB" if "80GB" in name else "A100 40GB"), ("T4", "T4"), ("L4", "L4"), ("A10", "A10"),
            ("V100", "V100"))  # the first key in the name decides: "A100" before "A10", "L40" before "L4"
    found = next((v for k, v in keys if k in name), None)
    return next((g for g in GPUS + OTHER_GPUS if g.name == found), None)


# ----------------------------------------------------------------------------- counting
def _cpu_attention_formulas() -> Dict[Any, Callable]:
    """FlopCounterMode has formulas for CUDA's fused attention kernels, not the CPU's (its FLOPs would count
    as 0): the same counts, for the CPU's flash attention and its backward (arguments arrive as shapes)."""
    aten, formulas = torch.ops.aten, {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formulas[aten._scaled_dot_product_flash_attention_for_cpu] = \
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
        formulas[aten._scaled_dot_product_flash_attention_for_cpu_backward] = \
            lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v)
    return {k: v for k, v in formulas.items() if k not in flop_registry}


CPU_ATTENTION = _cpu_attention_formulas()
FORMULAS = {**flop_registry, **{k: shape_wrapper(v) for k, v in CPU_ATTENTION.items()}}  # per op, as the counter


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker: its backward hooks break `torch.autograd.grad` on a
    leaf input (the WGAN-GP penalty's), and only the total is needed here."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that counts the total only (`_NoModuleTracking`), the CPU's attention included."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    counter.mod_tracker = _NoModuleTracking()
    return counter


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn()`, forward and whatever backward it runs, by FlopCounterMode."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


class _Dispatched(TorchDispatchMode):
    """Each non-view aten op: its count, bytes and roofline seconds per GPU; the storages it creates."""

    def __init__(self, gpus: Sequence[GPU], fraction: float):
        super().__init__()
        self.gpus, self.fraction = gpus, fraction
        self.ops = self.bytes = self.live = self.peak = 0
        self.seconds = [0.0] * len(gpus)
        self.sizes: Dict[int, int] = {}  # storages created here and alive: key -> bytes

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def _track(self, outs: List[torch.Tensor], ins: List[torch.Tensor]) -> None:
        inputs = {t.untyped_storage()._cdata for t in ins}  # an op may hand back its input's storage
        for t in outs:
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.sizes or key in inputs:
                continue
            self.sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:
            return out
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        packet = func.overloadpacket
        flops = FORMULAS[packet](*args, **kwargs, out_val=out) if packet in FORMULAS else 0
        nbytes = sum(t.numel() * t.element_size() for t in ins + outs)
        half = any(t.dtype in (torch.float16, torch.bfloat16) for t in ins)
        self.ops += 1
        self.bytes += nbytes
        for i, gpu in enumerate(self.gpus):
            peak = gpu.half_flops if half else gpu.fp32_flops
            self.seconds[i] += max(flops / peak, nbytes / gpu.bandwidth) / self.fraction
        if not func._schema.is_mutable:  # in place and out= ops write storages that exist already
            self._track(outs, ins)
        return out


@dataclass
class Profile:
    """What a run dispatched: FLOPs (FlopCounterMode), non-view ops, their bytes, the peak bytes of the
    tensors it created, and the per-op roofline seconds on each GPU (module docstring)."""
    flops: int
    ops: int
    bytes: int
    peak: int
    device_seconds: Dict[str, float]

    def __sub__(self, other: "Profile") -> "Profile":
        """The cost of the extra work of `self` over `other` (peak: the larger)."""
        return Profile(self.flops - other.flops, self.ops - other.ops, self.bytes - other.bytes,
                       max(self.peak, other.peak),
                       {k: v - other.device_seconds[k] for k, v in self.device_seconds.items()})

    def seconds(self, gpu: GPU, host_seconds: float = HOST_SECONDS) -> float:
        """Predicted wall time: the larger of the device's roofline sum and the host's op issue time."""
        return max(self.device_seconds[gpu.name], self.ops * host_seconds)


def profile(fn: Callable[[], Any], gpus: Sequence[GPU] = GPUS, fraction: float = FRACTION) -> Profile:
    """Run `fn()` once under FlopCounterMode and the op / memory tracker; its Profile."""
    dispatched = _Dispatched(gpus, fraction)
    with dispatched, flop_counter() as counter:  # the counter is entered last, so it sees each op first
        fn()
    return Profile(counter.get_total_flops(), dispatched.ops, dispatched.bytes, dispatched.peak,
                   {g.name: s for g, s in zip(gpus, dispatched.seconds)})


def resident_bytes(objects: Sequence[Any]) -> int:
    """Bytes of the distinct storages of modules' parameters and buffers and optimisers' state."""
    tensors: List[torch.Tensor] = []
    for obj in objects:
        if isinstance(obj, nn.Module):
            tensors += list(obj.parameters()) + list(obj.buffers())
        else:
            tensors += [t for state in obj.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}.values())


class _ForeachAdam(torch.optim.Adam):
    def __init__(self, params, **kwargs):
        super().__init__(params, foreach=True, **kwargs)


@contextlib.contextmanager
def as_on_gpu():
    """Run the library on the CPU as on an A100 or H100: amp="auto" decides as on a CUDA device with bf16
    (bf16 autocast for training), and Adam and gradient clipping take their foreach kernels (CUDA's default)."""
    clip = functools.partial(nn.utils.clip_grad_norm_, foreach=True)
    with mock.patch.object(torch.cuda, "is_bf16_supported", lambda *a, **k: True), \
            mock.patch.object(train_state, "autocast_dtype",
                              lambda device, amp="auto": utils.autocast_dtype(torch.device("cuda"), amp)), \
            mock.patch.object(torch.optim, "Adam", _ForeachAdam), mock.patch.object(nn.utils, "clip_grad_norm_", clip):
        yield


# ----------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Category:
    """An MVTec AD category as the notebooks split it (train/good holds 60 to 391 images by category)."""
    train: int = 240
    test: int = 100

    @property
    def val(self) -> int:  # validation normals (`data.mvtec.split_train_val`)
        return max(int(round(self.train * TrainConfig().val_fraction)), 1)

    def fit_batches(self, batch: int, drop_last: bool) -> int:
        """Batches of an epoch over the images left for training."""
        n = self.train - self.val
        return n // batch if drop_last else math.ceil(n / batch)

    def scored_batches(self, batch: int) -> int:
        """Batches that notebook 03 scores: validation normals, their synthetic copies, the test images."""
        copies = self.val * MappingConfig().synthetic_copies
        return sum(math.ceil(n / batch) for n in (self.val, copies, self.test))


@dataclass
class Setup:
    """A workload ready to run: `run(k)` does k units of work."""
    run: Callable[[int], Any]
    networks: Dict[str, nn.Module]  # those it runs through, the trained one first
    resident: List[Any]  # modules and optimisers alive between units


def _images(n: int, cfg: TrainConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, cfg.model_config().channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1


def _train_setup(cfg: TrainConfig, batch: int, objective: str) -> Setup:
    """k steps of the one training loop (D update, then G or restorer update and EMA), amp as on a GPU."""
    cfg = dataclasses.replace(cfg, batch_size=batch, objective=objective, device="cpu")
    st = methods.create_state(cfg, torch.device("cpu"))
    real, gen = _images(batch, cfg), torch.Generator().manual_seed(0)

    def run(k: int) -> None:
        for _ in range(k):
            methods.objective(cfg.objective).step(st, real, gen)

    run(1)  # Adam's state and the EMA's first copy exist before any profile, as after a run's first step
    return Setup(run, {"R" if objective == "restore" else "G": st.G, "D": st.D},
                 [st.G, st.D, st.ema, st.opt_G, st.opt_D])


def _search_setup(cfg: TrainConfig, batch: int) -> Setup:
    """k iterations of the AnoGAN search on one batch, as notebook 03 runs it (MappingConfig defaults)."""
    G, D = build_models(cfg.model_config())
    x = _images(batch, cfg)
    return Setup(lambda k: map_with_config(G, D, x, MappingConfig(batch_size=batch, iterations=k), progress=False),
                 {"G": G, "D": D}, [G, D])


def _encoder_models(cfg: TrainConfig):
    G, D = build_models(cfg.model_config())
    E = LatentEncoder(image_size=cfg.image_size, latent_dim=cfg.latent_dim, channels=cfg.model_config().channels,
                      model_size=encoder_size(G))  # the pipeline's choice for this G
    return G, D, E


def _encoder_train_setup(cfg: TrainConfig, batch: int) -> Setup:
    """k steps of f-AnoGAN encoder training (G, D frozen)."""
    G, D, E = _encoder_models(cfg)
    x = _images(2 * batch, cfg)
    return Setup(lambda k: train_encoder(G, D, x[:k * batch], epochs=1, batch_size=batch, encoder=E, device="cpu",
                                         progress=False), {"E": E, "G": G, "D": D}, [E, G, D])


def _encoder_pass_setup(cfg: TrainConfig, batch: int) -> Setup:
    """k batches scored by the encoder: z = E(x), then G(z) and D's features of x and G(z)."""
    G, D, E = _encoder_models(cfg)
    x = _images(2 * batch, cfg)
    return Setup(lambda k: map_images(G, D, x[:k * batch], method="encoder", encoder=E.eval(), batch_size=batch,
                                      progress=False), {"E": E, "G": G, "D": D}, [E, G, D])


def _restorer_pass_setup(cfg: TrainConfig, batch: int) -> Setup:
    """k batches scored by the restorer, one pass each."""
    R, _ = build_training_models(dataclasses.replace(cfg, objective="restore"))
    x = _images(2 * batch, cfg)
    return Setup(lambda k: restore_images(R.eval(), x[:k * batch], batch_size=batch, progress=False),
                 {"R": R}, [R])


@dataclass(frozen=True)
class Workload:
    """One unit of a detector's work at a notebook's batch size; how many units make an epoch (training) or
    the scoring of 100 test images, and a whole category (`per_category`)."""
    name: str
    unit: str
    batch: int
    setup: Callable[[TrainConfig, int], Setup]
    per_epoch: Callable[[Category, int], int]  # units per epoch, or per 100 test images for scoring
    per_category: Callable[[Category, int], int]
    training: bool
    notebook: str  # whose batch size it runs at: "02" (training) or "03" (scoring, and the encoder it trains)


EPOCHS, ITERATIONS, ENCODER_EPOCHS = TrainConfig().epochs, MappingConfig().iterations, EncoderConfig().epochs
TRAIN_BATCH, SCORE_BATCH = TrainConfig().batch_size, MappingConfig().batch_size  # notebooks 02 and 03


def _per_100_test(c: Category, b: int) -> int:
    return math.ceil(100 / b)


WORKLOADS = (
    Workload("TransGAN train", "step", TRAIN_BATCH, functools.partial(_train_setup, objective="gan"),
             lambda c, b: c.fit_batches(b, True), lambda c, b: EPOCHS * c.fit_batches(b, True), True, "02"),
    Workload("AnoGAN search", "iteration", SCORE_BATCH, _search_setup,
             lambda c, b: ITERATIONS * _per_100_test(c, b), lambda c, b: ITERATIONS * c.scored_batches(b), False, "03"),
    Workload("encoder train", "step", SCORE_BATCH, _encoder_train_setup,
             lambda c, b: c.fit_batches(b, False), lambda c, b: ENCODER_EPOCHS * c.fit_batches(b, False), True, "03"),
    Workload("encoder score", "batch", SCORE_BATCH, _encoder_pass_setup, _per_100_test,
             lambda c, b: c.scored_batches(b), False, "03"),
    Workload("restorer train", "step", TRAIN_BATCH, functools.partial(_train_setup, objective="restore"),
             lambda c, b: c.fit_batches(b, True), lambda c, b: EPOCHS * c.fit_batches(b, True), True, "02"),
    Workload("restorer score", "batch", SCORE_BATCH, _restorer_pass_setup, _per_100_test,
             lambda c, b: c.scored_batches(b), False, "03"),
)
# A detector's whole job on one category: the workloads it runs, in order.
DETECTORS = {"TransGAN + AnoGAN search": ("TransGAN train", "AnoGAN search"),
             "TransGAN + encoder": ("TransGAN train", "encoder train", "encoder score"),
             "restorer": ("restorer train", "restorer score")}


@dataclass
class Row:
    """One workload at one preset: its cost per unit and the predicted times."""
    preset: str
    work: str
    unit: str
    batch: int
    params: Dict[str, int]
    cost: Profile  # of one unit
    resident: int
    per_epoch: int  # units
    per_category: int
    training: bool
    seconds: Dict[str, float] = field(default_factory=dict)  # per GPU, one unit
    host_bound: Dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "gflop_per_image": self.cost.flops / self.batch / 1e9}


def measure(work: Workload, cfg: TrainConfig, preset: str, batch: Optional[int] = None,
            gpus: Sequence[GPU] = GPUS, fraction: float = FRACTION, host_seconds: float = HOST_SECONDS) -> Row:
    """Profile one unit of `work` at the preset of `cfg` (CPU, as on a GPU) and predict its times."""
    batch = batch or work.batch
    with as_on_gpu():
        torch.manual_seed(0)
        setup = work.setup(cfg, batch)
        one, two = (profile(functools.partial(setup.run, k), gpus, fraction) for k in (1, 2))
    cost = two - one
    row = Row(preset, work.name, work.unit, batch, {k: sum(p.numel() for p in m.parameters())
                                                    for k, m in setup.networks.items()},
              cost, resident_bytes(setup.resident), work.per_epoch(Category(), batch),
              work.per_category(Category(), batch), work.training)
    for gpu in gpus:
        row.seconds[gpu.name] = cost.seconds(gpu, host_seconds)
        row.host_bound[gpu.name] = cost.ops * host_seconds > cost.device_seconds[gpu.name]
    return row


# ----------------------------------------------------------------------------- tables
def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _params(params: Dict[str, int]) -> str:
    return " + ".join(f"{k} {v / 1e6:.1f}" for k, v in params.items())


def cost_table(rows: Sequence[Row], gpus: Sequence[GPU] = GPUS) -> str:
    """Markdown: parameters, FLOPs per image, ops and bytes per unit, memory (resident + peak)."""
    smallest = min(gpus, key=lambda g: g.memory_gib)
    lines = [f"| preset | work (unit, batch) | parameters (M) | GFLOP / image | ops / unit | GB moved / unit | "
             f"memory: resident + peak = total (GiB) | fits {smallest.name} ({smallest.memory_gib:g} GiB) |",
             "|---|---|---|---:|---:|---:|---|:-:|"]
    for r in rows:
        total = (r.resident + r.cost.peak) / GiB
        lines.append(f"| {r.preset} | {r.work} ({r.unit}, {r.batch}) | {_params(r.params)} | "
                     f"{r.cost.flops / r.batch / 1e9:.2f} | {r.cost.ops:,} | {r.cost.bytes / 1e9:.2f} | "
                     f"{r.resident / GiB:.2f} + {r.cost.peak / GiB:.2f} = {total:.2f} | "
                     f"{'yes' if total < smallest.memory_gib else 'no'} |")
    return "\n".join(lines)


def time_table(rows: Sequence[Row], gpus: Sequence[GPU] = GPUS) -> str:
    """Markdown: predicted time per epoch (training) or per 100 test images (scoring), and per category;
    a star marks host-bound predictions (the GPU waits for Python)."""
    head = " | ".join(g.name for g in gpus)
    lines = [f"| preset | work | per | {head} |", "|---|---|---|" + "---|" * len(gpus)]
    for r in rows:
        cells = []
        for g in gpus:
            star = "*" if r.host_bound[g.name] else ""
            unit = r.seconds[g.name]
            cells.append(f"{_duration(unit * r.per_epoch)} / {_duration(unit * r.per_category)}{star}")
        per = "epoch / category" if r.training else "100 test images / category"
        lines.append(f"| {r.preset} | {r.work} | {per} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detector_table(rows: Sequence[Row], gpus: Sequence[GPU] = GPUS) -> str:
    """Markdown: one category's whole job per detector (training and scoring), per GPU."""
    by = {(r.preset, r.work): r for r in rows}
    lines = ["| preset | detector | " + " | ".join(g.name for g in gpus) + " |", "|---|---|" + "---:|" * len(gpus)]
    for preset in dict.fromkeys(r.preset for r in rows):
        for detector, works in DETECTORS.items():
            if all((preset, w) in by for w in works):
                cells = [_duration(sum(by[preset, w].seconds[g.name] * by[preset, w].per_category for w in works))
                         for g in gpus]
                lines.append(f"| {preset} | {detector} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def assumptions(gpus: Sequence[GPU] = GPUS, fraction: float = FRACTION, host_seconds: float = HOST_SECONDS,
                train_batch: int = TRAIN_BATCH, score_batch: int = SCORE_BATCH) -> str:
    c = Category()
    specs = "; ".join(f"{g.name}: {g.half_flops / 1e12:g} TFLOP/s {g.amp}, {g.fp32_flops / 1e12:g} fp32, "
                      f"{g.bandwidth / 1e9:g} GB/s" for g in gpus)
    amps = ", ".join(f"{g.name} {g.amp}" for g in gpus)
    return (f"Peaks (dense): {specs}. Training autocasts as amp=\"auto\" does ({amps}); "
            f"search and scoring run in fp32. Each op at {fraction:.0%} of its bound, {host_seconds * 1e6:g} us of "
            f"host time per op; a unit takes the larger sum (* = host-bound). Category: {c.train} train/good "
            f"images ({c.val} kept for validation), {c.test} test; {EPOCHS} epochs of batch {train_batch} "
            f"(drop_last), encoder {ENCODER_EPOCHS} epochs, search {ITERATIONS} iterations; notebook 03 scores the "
            f"validation normals, {MappingConfig().synthetic_copies} synthetic copies of each, and the test images "
            f"in batches of {score_batch}.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,small,base", help="presets, comma-separated")
    p.add_argument("--image-size", type=int, default=TrainConfig().image_size)
    p.add_argument("--latent-dim", type=int, default=TrainConfig().latent_dim)
    p.add_argument("--work", default=",".join(w.name for w in WORKLOADS), help="workloads, comma-separated")
    p.add_argument("--train-batch", type=int, default=TRAIN_BATCH)
    p.add_argument("--score-batch", type=int, default=SCORE_BATCH)
    p.add_argument("--model", type=json.loads, default={}, help="ModelConfig overrides (JSON), for tests")
    p.add_argument("--fraction", type=float, default=FRACTION, help="of peak FLOP/s or bandwidth per op")
    p.add_argument("--host-us", type=float, default=HOST_SECONDS * 1e6, help="host microseconds per op")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", help="also write every row here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.work.split(",")
    unknown = sorted(set(names) - {w.name for w in WORKLOADS})
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {[w.name for w in WORKLOADS]}")
    start, rows = time.perf_counter(), []
    print(utils.describe_device(torch.device("cpu")), flush=True)
    for size in args.sizes.split(","):
        cfg = TrainConfig(image_size=args.image_size, model_size=size, latent_dim=args.latent_dim, model=args.model)
        for work in (w for w in WORKLOADS if w.name in names):
            t = time.perf_counter()
            batch = args.train_batch if work.notebook == "02" else args.score_batch
            rows.append(measure(work, cfg, size, batch, fraction=args.fraction, host_seconds=args.host_us * 1e-6))
            print(f"  {size} {work.name}: {time.perf_counter() - t:.0f} s", flush=True)
    text = "\n\n".join([f"{args.image_size} px, latent {args.latent_dim}; measured on the CPU "
                        f"({time.perf_counter() - start:.0f} s).", cost_table(rows), time_table(rows),
                        detector_table(rows), assumptions(fraction=args.fraction, host_seconds=args.host_us * 1e-6,
                                                          train_batch=args.train_batch, score_batch=args.score_batch)])
    print("\n" + text)
    out = {"rows": [r.to_dict() for r in rows], "text": text, "settings": vars(args)}
    if args.json:
        utils.atomic_write_json(out, Path(args.json))
    return out


if __name__ == "__main__":
    main()
