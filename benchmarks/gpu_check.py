"""The sections of the prepared GPU check; `bash benchmarks/gpu_check.sh` runs each in its own process under
a time limit (a crash, an out-of-memory or a hang costs only its own section), then `report`.

    env      the GPU, torch, CUDA, cuDNN, bf16 support
    train    base TransGAN and restorer training steps (batch 8, notebook 02) in bf16, fp16 (a T4's path, with
             the GradScaler) and fp32: images/s, model FLOP utilisation (MFU), peak memory, and flops.py's
             prediction for this GPU beside the measured step
    score    batch 256: the restorer's pass, the encoder's pass (E, then G and D's features) and the AnoGAN
             search in fp32 (the pipeline's) and bf16, its iterations timed and scaled to 1,000: images/s, memory
    compile  the base TransGAN step eager and with torch.compile (G and the critic's D; the penalty's double
             backward stays eager: compiled graphs have none): compile seconds, images/s
    demo     a short base restorer run (notebook 02's defaults, fewer epochs) on the demo category: image and
             pixel AUROC of its defect map beside the floors (mean image, patch nearest neighbour)
    report   the sections' results, from their JSON files, as one summary (summary.md)

    python benchmarks/gpu_check.py train score --out runs/gpu_check
    python benchmarks/gpu_check.py env train score compile demo report --dry-run --out /tmp/x  # CPU, tiny

MFU = counted FLOPs (FlopCounterMode) per second over the card's dense peak: bf16/fp16 tensor-core FLOP/s, or
plain FP32 for fp32 runs (torch leaves TF32 off for matmuls by default).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flops and bench_methods beside this file
import bench_methods  # noqa: E402
import flops  # noqa: E402

from transgan_lib.config import TrainConfig  # noqa: E402
from transgan_lib.data.demo import DEMO_CATEGORY, ensure_demo_data, prepare_data  # noqa: E402
from transgan_lib.data.splits import open_split  # noqa: E402
from transgan_lib.detection.evaluation import evaluation_size  # noqa: E402
from transgan_lib.methods.transgan.mapping import map_images, map_to_latent  # noqa: E402
from transgan_lib.methods.pipeline import encoder_size, load_splits  # noqa: E402
from transgan_lib.methods.restorer.detect import detection_maps, restore_images  # noqa: E402
from transgan_lib import methods  # noqa: E402
from transgan_lib.methods.transgan import train as gan_train  # noqa: E402
from transgan_lib.methods.restorer.train import load_restorer  # noqa: E402
from transgan_lib.methods.restorer.train import build_training_models  # noqa: E402
from transgan_lib.models.encoder import LatentEncoder  # noqa: E402
from transgan_lib.runs import run_paths  # noqa: E402
from transgan_lib.utils import atomic_write_json, atomic_write_text  # noqa: E402

SECTIONS = ("env", "train", "score", "compile", "demo")


@dataclass(frozen=True)
class Settings:
    """What a section runs: the GPU check's, or the dry run's tiny version of it."""
    device: str
    model: Dict[str, Any]  # TrainConfig fields of the architecture
    train_batch: int
    warmup: int  # untimed steps before the timed ones
    steps: int  # timed steps
    score_batch: int
    search_iterations: int  # timed, then scaled to REFERENCE_ITERATIONS
    compile_backend: str
    demo_data: Dict[str, Any]  # ensure_demo_data arguments ({} = the full demo)
    demo_train: Dict[str, Any]  # TrainConfig fields of the demo run
    amps: tuple = ("bf16", "fp16", "off")  # the first is the compile section's


REFERENCE_ITERATIONS = 1000
TINY = dict(image_size=16, model_size="tiny", latent_dim=16, model=dict(g_dim=64, d_dim=32, g_min_dim=16))
GPU = Settings(device="cuda", model=dict(image_size=64, model_size="base", latent_dim=1024), train_batch=8, warmup=3,
               steps=20, score_batch=256, search_iterations=50, compile_backend="inductor", demo_data={},
               demo_train=dict(image_size=64, model_size="base", epochs=20))
# CPU autocast_dtype is always fp32, so the dry run's amps differ in name only: two keep it short
DRY = Settings(device="cpu", model=TINY, train_batch=2, warmup=0, steps=1, score_batch=4, search_iterations=1,
               compile_backend="eager", amps=("fp16", "off"),
               demo_data=dict(n_train=10, n_test_good=2, n_test_per_defect=1, size=32),
               demo_train=dict(image_size=32, model_size="tiny", latent_dim=16, epochs=1, batch_size=4,
                               model=TINY["model"], restore=dict(head_dim=8, enc_depth=1)))


@dataclass
class Section:
    """A section's results, written to <out>/<name>.json after every row (a timeout keeps what was done)."""
    name: str
    out: Path
    info: Dict[str, Any] = field(default_factory=dict)
    rows: List[Dict[str, Any]] = field(default_factory=list)

    def add(self, row: Dict[str, Any]) -> None:
        self.rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        self.save()

    def save(self) -> None:
        atomic_write_json({"section": self.name, "info": self.info, "rows": self.rows}, self.out / f"{self.name}.json")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1):
    """(last result, seconds per call), the device synchronised around the calls."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    _sync(device)
    return out, (time.perf_counter() - start) / repeats


@contextlib.contextmanager
def _guard(section: Section, label: Dict[str, Any], device: torch.device):
    """Record an error (out of memory above all) as the row's result and go on with the next row."""
    try:
        yield
    except Exception as e:  # an OOM or a failure of one configuration must not stop the others
        if device.type == "cuda":
            torch.cuda.empty_cache()
        section.add({**label, "error": f"{type(e).__name__}: {str(e)[:300]}"})


def _spec(device: torch.device) -> Optional[flops.GPU]:
    return flops.gpu_spec(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def _images(n: int, cfg: TrainConfig, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, cfg.model_config().channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device)


# ----------------------------------------------------------------------------- sections
def section_env(s: Settings, sec: Section, device: torch.device) -> None:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        spec = _spec(device)
        info.update(gpu=p.name, memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                    gpus=torch.cuda.device_count(), spec=None if spec is None else asdict(spec),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    sec.info.update(info)
    sec.add(info)


def _train_row(cfg: TrainConfig, s: Settings, device: torch.device, compile_backend: Optional[str] = None,
               step_flops: Optional[int] = None) -> Dict[str, Any]:
    """Build a training state, profile one step (eager only: a dispatch mode would stop the compiled graphs;
    compiled rows take the eager row's `step_flops`), then time `s.steps` steps after `s.warmup`."""
    st = methods.create_state(cfg, device)
    real, gen = _images(cfg.batch_size, cfg, device), torch.Generator().manual_seed(0)
    step = lambda: methods.objective(cfg.objective).step(st, real, gen)  # noqa: E731
    row: Dict[str, Any] = {"objective": cfg.objective, "amp": cfg.amp, "batch": cfg.batch_size}
    spec = _spec(device)
    if compile_backend:
        st.G_train = torch.compile(st.G, backend=compile_backend)
        st.D_train = torch.compile(st.D, backend=compile_backend)
        _, row["compile_seconds"] = _timed(step, device)
    else:
        prof = flops.profile(step, gpus=[spec] if spec else flops.GPUS[:1])
        step_flops = prof.flops
        row.update(ops_per_step=prof.ops, predicted_step_ms=prof.seconds(spec) * 1e3 if spec else None)
    for _ in range(s.warmup):
        step()
    _reset_memory(device)
    stats, seconds = _timed(step, device, repeats=s.steps)
    row.update(step_ms=seconds * 1e3, images_per_s=cfg.batch_size / seconds,
               gflop_per_step=None if step_flops is None else step_flops / 1e9,
               peak_gib=_peak_gib(device), finite=all(bool(torch.isfinite(v).all()) for v in stats.values()),
               loss_scale=st.scaler_G.get_scale() if st.scaler_G.is_enabled() else None)
    if spec is not None and step_flops is not None:
        row["mfu"] = step_flops / seconds / (spec.half_flops if cfg.amp in ("bf16", "fp16") else spec.fp32_flops)
        if "ops_per_step" in row:  # what flops.py's host time per op would have to be, were the step host-bound
            row["host_us_per_op_if_host_bound"] = seconds / row["ops_per_step"] * 1e6
    return row


def section_train(s: Settings, sec: Section, device: torch.device) -> None:
    for objective in ("gan", "restore"):
        for amp in s.amps:
            cfg = TrainConfig(**s.model, batch_size=s.train_batch, objective=objective, amp=amp, device=s.device)
            label = {"objective": objective, "amp": amp}
            with _guard(sec, label, device):
                sec.add(_train_row(cfg, s, device))


def _search_row(G, D, x, s: Settings, amp: str, device: torch.device) -> Dict[str, Any]:
    """The search's per-iteration time, from `s.search_iterations` iterations minus a run of none (its fixed
    cost: D's features of x, the fp32 evaluation), scaled to REFERENCE_ITERATIONS."""
    kw = dict(batch_size=len(x), amp=amp, progress=False, keep_features=False)
    map_to_latent(G, D, x, iterations=1, **kw)  # warm-up
    _, fixed = _timed(lambda: map_to_latent(G, D, x, iterations=0, **kw), device)
    _reset_memory(device)
    result, seconds = _timed(lambda: map_to_latent(G, D, x, iterations=s.search_iterations, **kw), device)
    per_iteration = max(seconds - fixed, 0.0) / s.search_iterations
    total = fixed + REFERENCE_ITERATIONS * per_iteration
    return {"work": f"search {REFERENCE_ITERATIONS} it ({amp})", "batch": len(x), "iterations_timed":
            s.search_iterations, "iteration_ms": per_iteration * 1e3, "images_per_s": len(x) / total,
            "peak_gib": _peak_gib(device), "finite": bool(torch.isfinite(result.total_score).all())}


def section_score(s: Settings, sec: Section, device: torch.device) -> None:
    cfg = TrainConfig(**s.model)
    torch.manual_seed(0)
    x = _images(s.score_batch, cfg, device)
    R = build_training_models(TrainConfig(**s.model, objective="restore"))[0].to(device).eval()
    with _guard(sec, {"work": "restorer pass"}, device):
        restore_images(R, x, batch_size=len(x), progress=False)  # warm-up
        _reset_memory(device)
        _, seconds = _timed(lambda: restore_images(R, x, batch_size=len(x), progress=False), device, repeats=3)
        sec.add({"work": "restorer pass", "batch": len(x), "images_per_s": len(x) / seconds,
                 "peak_gib": _peak_gib(device)})
    R = None  # free it before the GAN is built
    G, D = (m.to(device) for m in methods.objective(cfg.objective).build_models(cfg))
    E = LatentEncoder(image_size=cfg.image_size, latent_dim=cfg.latent_dim, model_size=encoder_size(G)).to(device)
    with _guard(sec, {"work": "encoder pass"}, device):
        run = lambda: map_images(G, D, x, method="encoder", encoder=E.eval(), batch_size=len(x),  # noqa: E731
                                 progress=False, keep_features=False)
        run()
        _reset_memory(device)
        _, seconds = _timed(run, device, repeats=3)
        sec.add({"work": "encoder pass", "batch": len(x), "images_per_s": len(x) / seconds,
                 "peak_gib": _peak_gib(device)})
    for amp in ("off", "bf16"):
        with _guard(sec, {"work": f"search ({amp})"}, device):
            sec.add(_search_row(G, D, x, s, amp, device))


def section_compile(s: Settings, sec: Section, device: torch.device) -> None:
    cfg = TrainConfig(**s.model, batch_size=s.train_batch, amp=s.amps[0], device=s.device)
    eager = None
    for backend in (None, s.compile_backend):
        with _guard(sec, {"compile": backend or "off"}, device):
            flops_of_eager = eager["gflop_per_step"] * 1e9 if eager else None
            row = _train_row(cfg, s, device, compile_backend=backend, step_flops=flops_of_eager)
            eager = eager or row
            sec.add({"compile": backend or "off", **row})


def section_demo(s: Settings, sec: Section, device: torch.device, out: Path) -> None:
    """Train a restorer briefly on the demo, score its test images, and the floors on the same images."""
    root = out / "data"
    if s.demo_data:
        ensure_demo_data(root, DEMO_CATEGORY, **s.demo_data)
    else:
        prepare_data(root, DEMO_CATEGORY)
    cfg = TrainConfig(data_root=str(root), category=DEMO_CATEGORY, output_dir=str(out / "runs"), objective="restore",
                      device=s.device, **{**s.demo_train, "sample_every": s.demo_train["epochs"],
                                          "checkpoint_every": s.demo_train["epochs"]})
    sec.info["train_config"] = cfg.to_dict()
    _, seconds = _timed(lambda: gan_train.train_gan(cfg, resume=False, progress=False), device)
    R, _, mc, tc = load_restorer(run_paths(cfg.output_dir, cfg.category).restorer, device)
    splits = load_splits(cfg.data_root, cfg.category, tc)
    images, labels = splits["test"]["images"], splits["test"]["labels"]
    test_set = open_split(cfg.data_root, cfg.category, "test", mc.image_size)
    masks = test_set.load_masks(evaluation_size(test_set))[:, 0]  # (B, S, S) at the masks' own size
    result, score_seconds = _timed(lambda: restore_images(R, images, batch_size=32, progress=False), device)
    maps = detection_maps(images, result, "defect", bench_methods.SIGMA)
    rows = [bench_methods.row("restore (base)" if mc.model_size == "base" else f"restore ({mc.model_size})",
                              score_seconds, len(images), labels, masks, maps, mc.image_size)]
    rows += bench_methods.floor_rows(splits["train"]["images"], images, labels, masks, mc.image_size)
    for r in rows:
        sec.add({**r, "train_seconds": seconds if r is rows[0] else None,
                 "epochs": cfg.epochs if r is rows[0] else None})


# ----------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}")
    return "-" if v is None else str(v)


def _table(rows: List[Dict[str, Any]], keys: List[str]) -> List[str]:
    keys = [k for k in keys if any(k in r for r in rows)] + (["error"] if any("error" in r for r in rows) else [])
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + [
        "| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]


KEYS = {"env": ["gpu", "memory_gib", "capability", "bf16", "torch", "cuda", "cudnn", "device"],
        "train": ["objective", "amp", "batch", "step_ms", "images_per_s", "mfu", "peak_gib", "ops_per_step",
                  "predicted_step_ms", "host_us_per_op_if_host_bound", "loss_scale", "finite"],
        "score": ["work", "batch", "iteration_ms", "images_per_s", "peak_gib", "finite"],
        "compile": ["compile", "objective", "amp", "compile_seconds", "step_ms", "images_per_s", "mfu", "peak_gib",
                    "finite"],
        "demo": ["method", "image_size", "image_auroc", "pixel_auroc", "train_seconds", "epochs", "seconds_per_image"]}


def report(out: Path) -> str:
    """Every section's rows as markdown tables; a missing section says so."""
    lines = ["# GPU check", ""]
    for name in SECTIONS:
        path = out / f"{name}.json"
        lines.append(f"## {name}")
        if not path.is_file():
            lines += ["(no results: the section failed or timed out before its first row)", ""]
            continue
        rows = json.loads(path.read_text())["rows"]
        lines += _table(rows, KEYS[name]) + [""]
    text = "\n".join(lines)
    atomic_write_text(text, out / "summary.md")
    return text


def run_section(name: str, s: Settings, out: Path, dry_run: bool) -> Dict[str, Any]:
    device = torch.device(s.device)
    sec = Section(name, out, info={"dry_run": dry_run, "settings": asdict(s)})
    start = time.perf_counter()
    if name == "demo":
        section_demo(s, sec, device, out)
    else:
        globals()[f"section_{name}"](s, sec, device)
    sec.info["seconds"] = time.perf_counter() - start
    sec.save()
    return {"info": sec.info, "rows": sec.rows}


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sections", nargs="+", choices=SECTIONS + ("report",), help="run in this order")
    p.add_argument("--out", default="runs/gpu_check", help="where each section's JSON (and summary.md) goes")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models, one step each (CI)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = DRY if args.dry_run else GPU
    if s.device == "cuda" and not torch.cuda.is_available() and set(args.sections) - {"report"}:
        raise SystemExit("no CUDA GPU here: run with --dry-run for the CPU version")
    results: Dict[str, Any] = {}
    for name in args.sections:
        if name == "report":
            results[name] = report(out)
            print(results[name])
        else:
            print(f"-- {name}", flush=True)
            results[name] = run_section(name, s, out, args.dry_run)
    return results


if __name__ == "__main__":
    main()
