"""What a GPU user can expect, on paper: for each preset (tiny, small, base) and each unit of a detector's
work, the parameters, FLOPs per image, the memory at the notebooks' batch sizes, and the time it would
take on a T4, an A100 and an H100, per epoch and per MVTec AD category (README, "What to expect on a GPU").

    python benchmarks/flops.py                      # the README tables (CPU, 1 thread: ~7 min, base most of it)
    python benchmarks/flops.py --sizes tiny,small   # without base
    python benchmarks/flops.py --json flops.json    # also every number, per row
    python benchmarks/flops.py --cifar              # notebook 05's CIFAR-10 method instead (tiny, base: ~4 min)

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

CIFAR-10 (`--cifar`, notebook 05's `cifar/` method, presets tiny and base): a training step (`train_step` on 64
normals and 16 labelled anomalies, then the EMA update, amp as on a GPU), a batch of the nearest-neighbour bank
(`feature_bank`) and a batch of scoring (`score_images`, against banks of the real size), each profiled once
(after one warm-up step for training); counted per epoch (training steps and the per-epoch validation), per
class's run (every epoch, then `evaluate_cifar`) and for all ten classes, from the split `load_split` makes of
CIFAR-10's class sizes (`CifarCounts`). The ResNet50 is built without ImageNet weights: the same FLOPs, no download.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
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
from transgan_lib.cifar.config import CifarConfig
from transgan_lib.cifar.data import CIFAR10_CLASSES, LabelledImages, to_float
from transgan_lib.cifar.score import BANK_MAX, FeatureBank, feature_bank, score_images
from transgan_lib.cifar.train import (
    CifarModels,
    build_cifar_models,
    build_optimizers,
    load_split,
    train_step,
    update_ema,
)
from transgan_lib.config import EncoderConfig, MappingConfig, TrainConfig
from transgan_lib.methods.transgan.encoder import train_encoder
from transgan_lib.methods.transgan.mapping import map_images, map_with_config
from transgan_lib.methods.pipeline import encoder_size
from transgan_lib.methods.restorer.detect import restore_images
from transgan_lib import methods
from transgan_lib.training import state as train_state
from transgan_lib.training.stack import build_ema, grad_scaler
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
    """Bytes of the distinct storages of modules' parameters and buffers, optimisers' state and tensors."""
    tensors: List[torch.Tensor] = []
    for obj in objects:
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
        elif isinstance(obj, nn.Module):
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
    per_category: int  # units per MVTec category, or per CIFAR class's run
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
    return _predict(row, gpus, host_seconds)


def _predict(row: Row, gpus: Sequence[GPU], host_seconds: float) -> Row:
    """Fill in the row's seconds per unit on each GPU and whether the host bounds them."""
    for gpu in gpus:
        row.seconds[gpu.name] = row.cost.seconds(gpu, host_seconds)
        row.host_bound[gpu.name] = row.cost.ops * host_seconds > row.cost.device_seconds[gpu.name]
    return row


# ----------------------------------------------------------------------------- CIFAR-10 (notebook 05)
CIFAR10_IMAGES = (5000, 1000)  # CIFAR-10's images per class: train, test
CIFAR_PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": {"model_size": "tiny", "pretrained": False, "latent_dim": 128},  # notebook 05's CPU settings
    "base": {},  # its defaults: the base TransGAN, the frozen ImageNet ResNet50 at 224 px
}
CIFAR_SCORE_BATCH = inspect.signature(score_images).parameters["batch_size"].default  # as evaluation calls it
CIFAR_BANK_BATCH = inspect.signature(feature_bank).parameters["batch_size"].default


def cifar_config(preset: str, **overrides: Any) -> CifarConfig:
    """Notebook 05's settings at `preset` (CIFAR_PRESETS), with `overrides` (CifarConfig fields)."""
    return CifarConfig(**{**CIFAR_PRESETS[preset], **overrides})


@dataclass(frozen=True)
class CifarCounts:
    """One class's run of notebook 05 on CIFAR-10, counted by the library's rules: the split `load_split` makes,
    the epoch loop of `cifar.train._train_epoch`, the scoring of `cifar.score.validation_auroc` (every epoch)
    and of `cifar.evaluate.evaluate_cifar` (at the end)."""
    epochs: int
    batch: int  # normals per training step
    anomaly_batch: int  # labelled anomalies drawn per step (0 without any)
    train_normals: int
    train_anomalies: int  # labelled anomalies trained with
    val: int  # validation normals and labelled anomalies
    val_anomalies: int
    test: int
    bank: int  # training normals in the nearest-neighbour bank (a subset of at most BANK_MAX)
    logistic: bool  # evaluation also scores the labelled anomalies to fit the logistic combiner
    score_batch: int = CIFAR_SCORE_BATCH
    bank_batch: int = CIFAR_BANK_BATCH

    @property
    def steps(self) -> int:
        """Training steps per epoch: full batches of normals only, one short batch if there are fewer."""
        return len(range(0, max(self.train_normals - self.batch + 1, 1), self.batch))  # as `_train_epoch`

    @property
    def bank_batches(self) -> int:
        """Batches that `banks` encodes: the training normals' bank, then the labelled anomalies'."""
        return math.ceil(self.bank / self.bank_batch) + math.ceil(self.train_anomalies / self.bank_batch)

    def score_batches(self, images: int) -> int:
        return math.ceil(images / self.score_batch)

    @property
    def evaluation_batches(self) -> int:
        """`score_split`'s batches (validation, test, and the labelled anomalies for the logistic combiner),
        twice: `evaluate_cifar` scores the trained model and the untrained one (`untrained_scores`)."""
        labelled = self.train_anomalies + self.val_anomalies if self.logistic else 0
        return 2 * sum(self.score_batches(n) for n in (self.val, self.test, labelled))


def cifar_counts(cfg: CifarConfig) -> CifarCounts:
    """The counts of `cfg`'s run on CIFAR-10: `load_split` splits stand-in images (1 px; the split depends on
    the labels alone) labelled as CIFAR-10's train and test splits are, 5,000 and 1,000 images per class."""
    def stand_in(per_class: int) -> LabelledImages:
        targets = torch.arange(len(CIFAR10_CLASSES)).repeat_interleave(per_class)
        return LabelledImages(torch.zeros(len(targets), 3, 1, 1, dtype=torch.uint8), targets, list(CIFAR10_CLASSES))

    n = load_split(cfg, (stand_in(CIFAR10_IMAGES[0]), stand_in(CIFAR10_IMAGES[1]))).counts()
    anomalies = n["n_train_anomalous"]
    return CifarCounts(
        epochs=cfg.epochs, batch=cfg.batch_size,
        anomaly_batch=(cfg.anomaly_batch_size or max(1, cfg.batch_size // 4)) if anomalies else 0,  # `_train_epoch`
        train_normals=n["n_train_normal"], train_anomalies=anomalies, val=n["n_val_normal"] + n["n_val_anomalous"],
        val_anomalies=n["n_val_anomalous"], test=n["n_test"], bank=min(n["n_train_normal"], BANK_MAX),
        logistic=cfg.score_combiner == "logistic" and anomalies + n["n_val_anomalous"] > 0)


def _cifar_models(cfg: CifarConfig) -> CifarModels:
    """`cfg`'s networks, with a randomly initialised ResNet (the FLOPs of ImageNet's, no download); the trunk
    stays frozen or trains as `cfg` says (`finetune_encoder` was settled by `cfg.pretrained`)."""
    return build_cifar_models(dataclasses.replace(cfg, pretrained=False))


def _cifar_images(n: int, cfg: CifarConfig) -> torch.Tensor:
    """n uint8 images (n, 3, H, W), as the dataset holds them."""
    size = (n, 3, cfg.image_size, cfg.image_size)
    return torch.randint(0, 256, size, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _encoder(models: CifarModels) -> nn.Module:
    m = models.model
    return nn.ModuleList([m.features, m.to_latent, m.to_latent_rec])  # trunk, E1 and E2 heads (for counting)


def _cifar_train_setup(cfg: CifarConfig, counts: CifarCounts) -> Setup:
    """k iterations of `_train_epoch`'s loop: `train_step` on the normals and labelled anomalies, then the EMA
    update; amp as on a GPU."""
    models = _cifar_models(cfg)
    opts, ema = build_optimizers(models, cfg), build_ema(models.model, cfg.ema_decay)
    amp_dtype = utils.autocast_dtype(torch.device("cuda"), cfg.amp)  # bf16 under as_on_gpu
    scaler = grad_scaler(torch.device("cpu"), amp_dtype)
    x_n, x_a = _cifar_images(counts.batch, cfg), _cifar_images(counts.anomaly_batch, cfg)
    for m in models:
        m.train()

    def run(k: int, at_most: Optional[int] = None) -> None:  # at_most: images of each kind
        for _ in range(k):
            train_step(models, opts, to_float(x_n[:at_most]), to_float(x_a[:at_most]), cfg, amp_dtype=amp_dtype,
                       scaler=scaler)
            update_ema(ema, models.model)

    # Adam's state and the EMA's first copy exist before the profile, as after a run's first step (made here
    # on two normals and two anomalies: a base step takes half a minute on one CPU thread)
    run(1, at_most=2)
    return Setup(run, {"E": _encoder(models), "G": models.model.generator, "D_n": models.d_normal,
                       "D_a": models.d_anomalous}, [*models, ema, *opts])


def _cifar_bank_setup(cfg: CifarConfig, counts: CifarCounts) -> Setup:
    """k batches of `feature_bank`: E1's codes and the trunk's stage features of training normals (fp32)."""
    models = _cifar_models(cfg)
    x = _cifar_images(counts.bank_batch, cfg)
    return Setup(lambda k: [feature_bank(models.model, x, batch_size=counts.bank_batch) for _ in range(k)],
                 {"E": _encoder(models)}, [models.model])


def _zero_bank(model: nn.Module, cfg: CifarConfig, rows: int) -> FeatureBank:
    """A bank of `rows` zeros as wide as `feature_bank` makes them: comparing with it costs what the real one does."""
    one = feature_bank(model, _cifar_images(1, cfg))
    return FeatureBank(one.codes.new_zeros(rows, one.codes.shape[1]),
                       [s.new_zeros(rows, s.shape[1]) for s in one.stages])


def _cifar_score_setup(cfg: CifarConfig, counts: CifarCounts) -> Setup:
    """k batches of `score_images` as validation and evaluation run it (fp32): the model's passes, the nearest
    training normal and labelled anomaly in banks of the real sizes, D_anomalous' logit."""
    models = _cifar_models(cfg)
    x = _cifar_images(counts.score_batch, cfg)
    bank = _zero_bank(models.model, cfg, counts.bank)
    anomaly_bank = _zero_bank(models.model, cfg, counts.train_anomalies) if counts.train_anomalies else None
    banked = [t for b in (bank, anomaly_bank) if b is not None for t in (b.codes, *b.stages)]
    return Setup(lambda k: [score_images(models.model, x, cfg, bank=bank, anomaly_bank=anomaly_bank,
                                         d_anomalous=models.d_anomalous) for _ in range(k)],
                 {"E": _encoder(models), "G": models.model.generator, "D_a": models.d_anomalous},
                 [models.model, models.d_anomalous, *banked])


@dataclass(frozen=True)
class CifarWork:
    """One unit of the CIFAR method's work; its images, and its units per epoch and per class's run."""
    name: str
    unit: str
    setup: Callable[[CifarConfig, CifarCounts], Setup]
    batch: Callable[[CifarCounts], int]
    per_epoch: Callable[[CifarCounts], int]  # training steps, or the per-epoch validation's batches
    per_run: Callable[[CifarCounts], int]  # every epoch, then the evaluation
    training: bool


CIFAR_WORKLOADS = (
    CifarWork("CIFAR train", "step", _cifar_train_setup, lambda c: c.batch + c.anomaly_batch, lambda c: c.steps,
              lambda c: c.epochs * c.steps, True),
    # the banks are encoded every epoch, and again for the trained and the untrained model at evaluation
    CifarWork("CIFAR bank", "batch", _cifar_bank_setup, lambda c: c.bank_batch, lambda c: c.bank_batches,
              lambda c: (c.epochs + 2) * c.bank_batches, False),
    CifarWork("CIFAR score", "batch", _cifar_score_setup, lambda c: c.score_batch,
              lambda c: c.score_batches(c.val), lambda c: c.epochs * c.score_batches(c.val) + c.evaluation_batches,
              False),
)


def measure_cifar(work: CifarWork, cfg: CifarConfig, preset: str, counts: Optional[CifarCounts] = None,
                  gpus: Sequence[GPU] = GPUS, fraction: float = FRACTION, host_seconds: float = HOST_SECONDS) -> Row:
    """Profile one unit of `work` at `cfg` (CPU, as on a GPU) and predict its times. One unit is profiled, not
    two minus one (a base unit takes a minute on one CPU thread): a scoring unit includes the few fixed ops of
    one `score_images` / `feature_bank` call."""
    counts = counts or cifar_counts(cfg)
    with as_on_gpu():
        torch.manual_seed(0)
        setup = work.setup(cfg, counts)
        cost = profile(functools.partial(setup.run, 1), gpus, fraction)
    row = Row(preset, work.name, work.unit, work.batch(counts), {k: sum(p.numel() for p in m.parameters())
                                                                 for k, m in setup.networks.items()},
              cost, resident_bytes(setup.resident), work.per_epoch(counts), work.per_run(counts), work.training)
    return _predict(row, gpus, host_seconds)


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


def cifar_time_table(rows: Sequence[Row], gpus: Sequence[GPU] = GPUS) -> str:
    """Markdown: predicted time of one unit, of an epoch's units and of a class's run's; * = host-bound."""
    lines = ["| preset | work | unit / epoch / class | " + " | ".join(g.name for g in gpus) + " |",
             "|---|---|---|" + "---|" * len(gpus)]
    for r in rows:
        cells = [f"{_duration(s)} / {_duration(s * r.per_epoch)} / {_duration(s * r.per_category)}"
                 f"{'*' if r.host_bound[g.name] else ''}" for g, s in ((g, r.seconds[g.name]) for g in gpus)]
        lines.append(f"| {r.preset} | {r.work} | {r.unit}, {r.per_epoch:,}, {r.per_category:,} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def cifar_run_table(rows: Sequence[Row], gpus: Sequence[GPU] = GPUS, classes: int = len(CIFAR10_CLASSES)) -> str:
    """Markdown: one epoch (its training steps and validation), one class's whole run (every epoch, then the
    evaluation) and every class in turn (their runs count the same), per GPU: the rows above added up."""
    lines = ["| preset | run | " + " | ".join(g.name for g in gpus) + " |", "|---|---|" + "---:|" * len(gpus)]
    for preset in dict.fromkeys(r.preset for r in rows):
        mine = [r for r in rows if r.preset == preset]
        for what, units in (("one epoch", lambda r: r.per_epoch), ("one class", lambda r: r.per_category),
                            (f"all {classes} classes", lambda r: classes * r.per_category)):
            cells = [_duration(sum(r.seconds[g.name] * units(r) for r in mine)) for g in gpus]
            lines.append(f"| {preset} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cifar_assumptions(c: CifarCounts, cfg: CifarConfig, fraction: float = FRACTION,
                      host_seconds: float = HOST_SECONDS) -> str:
    return (f"CIFAR-10, {cfg.protocol} (each class holds {CIFAR10_IMAGES[0]:,} train and {CIFAR10_IMAGES[1]:,} "
            f"test images, so every class's run counts the same): {c.train_normals:,} training normals and "
            f"{c.train_anomalies} labelled anomalies ({c.val:,} images kept for validation), {c.test:,} test "
            f"images. An epoch: {c.steps} steps of {c.batch} normals + {c.anomaly_batch} labelled anomalies "
            f"(training's amp, as the MVTec rows), then validation in fp32: the banks ({c.bank:,} training normals "
            f"and the labelled anomalies, {c.bank_batches} batches of {c.bank_batch}) and "
            f"{c.score_batches(c.val)} batches of {c.score_batch} validation images scored against them. A "
            f"class's run: {c.epochs} epochs, then the evaluation: the banks and {c.evaluation_batches // 2} "
            f"batches (validation, test, labelled anomalies) for the trained and again for the untrained model. "
            f"Each op at {fraction:.0%} of its bound, {host_seconds * 1e6:g} us of host time per op (* = host-bound). "
            "Not counted: reading CIFAR-10, checkpoints, figures, and the CPU's work at evaluation (the raw-pixel "
            "floors' kNN and logistic regression, the combiner's fit). fp32 convolutions are priced at the plain "
            "FP32 peak, but cuDNN's default TF32 (`torch.backends.cudnn.allow_tf32`) runs them faster on an A100 "
            "or H100: there the bank and score rows are upper bounds.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", help="presets, comma-separated (default: tiny,small,base; with --cifar: tiny,base)")
    p.add_argument("--cifar", action="store_true",
                   help="notebook 05's CIFAR-10 method instead (reads --sizes, --model and the time model's flags)")
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
    if args.cifar:
        return cifar_main(args)
    names = args.work.split(",")
    unknown = sorted(set(names) - {w.name for w in WORKLOADS})
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {[w.name for w in WORKLOADS]}")
    start, rows = time.perf_counter(), []
    print(utils.describe_device(torch.device("cpu")), flush=True)
    for size in (args.sizes or "tiny,small,base").split(","):
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


def cifar_main(args: argparse.Namespace) -> Dict[str, Any]:
    """`main` with --cifar: each CIFAR workload at each preset, then one epoch, one class and all classes."""
    sizes = (args.sizes or ",".join(CIFAR_PRESETS)).split(",")
    unknown = sorted(set(sizes) - set(CIFAR_PRESETS))
    if unknown:
        raise SystemExit(f"unknown CIFAR presets {unknown}; choose from {list(CIFAR_PRESETS)}")
    host_seconds, start, rows = args.host_us * 1e-6, time.perf_counter(), []
    print(utils.describe_device(torch.device("cpu")), flush=True)
    for size in sizes:
        cfg = cifar_config(size, model=args.model)
        counts = cifar_counts(cfg)
        for work in CIFAR_WORKLOADS:
            t = time.perf_counter()
            rows.append(measure_cifar(work, cfg, size, counts, fraction=args.fraction, host_seconds=host_seconds))
            print(f"  {size} {work.name}: {time.perf_counter() - t:.0f} s", flush=True)
    text = "\n\n".join([f"CIFAR-10, notebook 05; measured on the CPU ({time.perf_counter() - start:.0f} s).",
                         cost_table(rows), cifar_time_table(rows), cifar_run_table(rows),
                         cifar_assumptions(counts, cfg, args.fraction, host_seconds)])
    print("\n" + text)
    out = {"rows": [r.to_dict() for r in rows], "text": text, "settings": vars(args)}
    if args.json:
        utils.atomic_write_json(out, Path(args.json))
    return out


if __name__ == "__main__":
    main()
