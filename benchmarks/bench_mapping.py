"""Latent-mapping speed and accuracy: batched vs one-at-a-time search, and encoder / hybrid vs search.

Measures, in one run, with one generator (the EMA G of one checkpoint) and one set of demo test
images, the seconds per image of:

- "loop":      iterative mapping (AnoGAN, `mapping.map_to_latent`) one image at a time
               (batch_size=1) on the first `--loop-images` images, `--iterations` Adam steps each;
- "iterative": the same search batched (`--batch-size`, default 32) over all `--n-images` images,
               from the same per-image initial codes (the loop's images and the batched chunks are
               timed in alternating rounds, so load from other processes hits both alike; scores
               agree to rounding at step 0, and Adam can amplify that rounding along the search);
- "encoder":   z* = E(x) from a trained f-AnoGAN encoder, then the same scoring, no search
               (encoder training is timed separately and NOT included);
- "hybrid":    the search started from E(x), `--hybrid-iterations` steps (default iterations // 10),

and the image / pixel AUROC of each on the same images (image score = max of the Gaussian-smoothed
`--map-kind` map, default the shift-tolerant residual that the main job chooses; `pipeline.score_maps`),
beside the mean-image baseline scored by the same rule; and, for the batched search's reconstructions,
the AUROCs of every map kind (residual, shift-tolerant residual, SSIM, MSGMS, discriminator tokens).
Targets checked: batched >= 20x faster per image than the loop; encoder >= 500x faster per image
than 1000-iteration iterative mapping. The demo data is a demo, not a benchmark: its AUROCs only
show that the methods work end to end.

Shape letters: B images, C channels, H, W pixels, Z latent size.

    python benchmarks/bench_mapping.py --quick --threads 1   # smoke run (CPU: ~1 min + GAN training)
    python benchmarks/bench_mapping.py                       # full: 1000 iterations, 100 test images
    python benchmarks/bench_mapping.py --iterations 1000 --n-images 32 --threads 1   # CPU: ~13 min

On a CPU shared with other jobs use --threads 1: two torch threads on two busy cores made batch-1
steps 10-100x slower and erratic. Without --checkpoint, a tiny GAN is trained (or reused, when it
was trained on the same demo build) under `--output-dir`; the table also goes to
`<output-dir>/bench_mapping.json`.
    python benchmarks/bench_mapping.py --checkpoint runs/demo/checkpoint.pt --device cuda
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from transgan_lib.cli import DEMO_PARAMETERS
from transgan_lib.config import TrainConfig
from transgan_lib.data.demo import DEMO_CATEGORY, MARKER, prepare_data
from transgan_lib.detection.baselines import mean_image_baseline
from transgan_lib.methods.transgan.encoder import train_encoder
from transgan_lib.methods.transgan.mapping import (
    MappingResult,
    encode_images,
    image_keys,
    latent_init,
    map_to_latent,
)
from transgan_lib.detection.maps import MAP_KINDS, max_score
from transgan_lib.methods.pipeline import load_splits, score_maps
from transgan_lib.methods.transgan.checkpoint import load_checkpoint, load_models
from transgan_lib.methods.transgan.train import train_gan
from transgan_lib.metrics import image_auroc, pixel_auroc
from transgan_lib.utils import (
    atomic_write_json,
    atomic_write_text,
    describe_device,
    resolve_device,
)

TARGET_BATCHED = 20.0  # batched >= 20x faster per image than the one-image loop
TARGET_ENCODER = 500.0  # encoder >= 500x faster per image than 1000-iteration search
REFERENCE_ITERATIONS = 1000
DATA_RECORD = "bench_data_marker.json"  # beside the bench's GAN: the demo build it was trained on
QUICK = dict(iterations=50, n_images=32, encoder_epochs=5, train_epochs=10)
FULL = dict(iterations=1000, n_images=None, encoder_epochs=50,
            train_epochs=DEMO_PARAMETERS["02_train_mvtec"]["epochs"])  # the main job's GAN


# ----------------------------------------------------------------------------- environment
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> Tuple[Any, float]:
    """(fn(), wall seconds), the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- generator and data
def ensure_checkpoint(args, device: torch.device) -> Path:
    """--checkpoint as given, else `<output-dir>/<category>/checkpoint.pt`: reused when it has
    `--train-epochs` epochs or more, otherwise trained (or resumed) up to them now."""
    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"no GAN checkpoint at {path}; train one (python -m transgan_lib.train) "
                                    "or leave out --checkpoint to train a tiny one here")
        return path
    demo = {k: v for k, v in DEMO_PARAMETERS["02_train_mvtec"].items()
            if k in ("image_size", "model_size", "latent_dim", "batch_size", "lr", "diffaug")}
    cfg = TrainConfig(data_root=str(args.data_root), category=args.category, output_dir=str(args.output_dir),
                      epochs=args.train_epochs, device=str(device), sample_every=max(args.train_epochs, 1),
                      seed=0, **demo)  # the main job's training settings
    path = Path(args.output_dir) / args.category / "checkpoint.pt"
    record, data_id = path.parent / DATA_RECORD, _data_id(args) + repr(sorted(demo.items()))
    same_data = record.is_file() and record.read_text() == data_id
    if path.is_file() and same_data and load_checkpoint(path).get("epoch", 0) >= args.train_epochs:
        print(f"reusing {path}")
        return path
    if path.is_file() and not same_data:
        print(f"{path} was trained on other data ({record.name} differs from {args.category}/{MARKER}): "
              "training from scratch")
    print(f"training a tiny GAN ({args.train_epochs} epochs, {demo}) into {path.parent} ...",
          flush=True)
    _, seconds = timed(lambda: train_gan(cfg, resume=same_data, progress=False), device)
    atomic_write_text(data_id, record)
    print(f"  GAN trained in {seconds:.0f} s")
    return path


def _data_id(args) -> str:
    """The demo build's marker (version and parameters), "" for other data."""
    marker = Path(args.data_root) / args.category / MARKER
    return marker.read_text() if marker.is_file() else ""


def pick_test_images(test: Dict[str, Any], n: Optional[int]) -> Dict[str, Any]:
    """n test images at evenly spaced indices (the folders are sorted by defect type, so a prefix
    could hold only good images): images (B, C, H, W), masks (B, H, W), labels (B,)."""
    total = test["images"].shape[0]
    n = total if n is None else min(n, total)
    idx = torch.linspace(0, total - 1, n).round().long().unique()
    return {"images": test["images"][idx], "masks": test["masks"][idx, 0], "labels": test["labels"][idx],
            "defects": [test["defects"][i] for i in idx.tolist()]}


# ----------------------------------------------------------------------------- rows
def aurocs(images: torch.Tensor, reconstructions: torch.Tensor, test: Dict[str, Any],
           kind: str) -> Tuple[float, float]:
    """(image AUROC, pixel AUROC) of the smoothed `kind` map of x and G(z*), and its max."""
    s = score_maps(images, SimpleNamespace(reconstructions=reconstructions, total_score=None), map_kind=kind)
    return image_auroc(test["labels"], s["score"]), pixel_auroc(test["masks"], s["map"])


def make_row(method: str, iterations: Optional[int], batch: Optional[int], n: int, seconds: float,
             aucs: Tuple[Optional[float], Optional[float]] = (None, None)) -> Dict[str, Any]:
    return {"method": method, "iterations": iterations, "batch_size": batch, "images": n,
            "seconds_per_image": seconds / max(n, 1), "seconds_total": seconds,
            "image_auroc": aucs[0], "pixel_auroc": aucs[1]}


def interleaved_search(G, D, images: torch.Tensor, z0: torch.Tensor, args, device):
    """Time the loop (image i alone, batch 1) and the batched search (chunk of `batch_size`) in
    alternating rounds, so that load from other processes hits both alike. Every image starts from
    its row of z0 (B, Z) either way. Returns ({"loop"/"batched": MappingResult list}, {.. seconds})."""
    common = dict(iterations=args.iterations, progress=False, amp=args.amp, keep_features=False)
    jobs = {"loop": [(i, i + 1, 1) for i in range(min(args.loop_images, images.shape[0]))],
            "batched": [(lo, min(lo + args.batch_size, images.shape[0]), args.batch_size)
                        for lo in range(0, images.shape[0], args.batch_size)]}
    results, seconds = {k: [] for k in jobs}, {k: 0.0 for k in jobs}
    for r in range(max(len(v) for v in jobs.values())):
        for kind in (("loop", "batched") if r % 2 == 0 else ("batched", "loop")):
            if r < len(jobs[kind]):
                lo, hi, bs = jobs[kind][r]
                res, t = timed(lambda: map_to_latent(G, D, images[lo:hi], z_init=z0[lo:hi], batch_size=bs,
                                                     **common), device)
                results[kind].append(res)
                seconds[kind] += t
        print(f"  round {r + 1}: loop {seconds['loop']:.1f} s, batched {seconds['batched']:.1f} s so far", flush=True)
    return results, seconds


def measure_search(G, D, test, args, device) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, float]]:
    """Rows "loop" and "iterative" (batched), and the largest |score difference| between them on
    the images both mapped: at step 0 (same initial codes, forward pass only: rounding level) and
    after the search (Adam can amplify rounding differences along the way)."""
    images = test["images"]
    z0 = latent_init(image_keys(images), G.latent_dim, seed=0)  # what map_to_latent draws by default
    results, seconds = interleaved_search(G, D, images, z0, args, device)
    cat = lambda kind, key: torch.cat([getattr(r, key) for r in results[kind]])  # noqa: E731
    n_loop = len(results["loop"])
    loop_score, batched_score = cat("loop", "total_score"), cat("batched", "total_score")[:n_loop]
    start = [map_to_latent(G, D, images[:n_loop], z_init=z0[:n_loop], batch_size=b, iterations=0,
                           progress=False, keep_features=False).total_score for b in (1, args.batch_size)]
    diff = {"step_0": (start[0] - start[1]).abs().max().item(),
            "final": (loop_score - batched_score).abs().max().item(),
            "final_z": (cat("loop", "z") - cat("batched", "z")[:n_loop]).abs().max().item(),
            "mean_score": loop_score.mean().item()}
    return (make_row("loop (batch 1)", args.iterations, 1, n_loop, seconds["loop"]),
            make_row("iterative", args.iterations, args.batch_size, images.shape[0], seconds["batched"],
                     aurocs(images, cat("batched", "reconstructions"), test, args.map_kind)),
            diff, cat("batched", "reconstructions"))


def compare_maps(D, reconstructions: torch.Tensor, test: Dict[str, Any], device) -> Dict[str, Tuple[float, float]]:
    """(image AUROC, pixel AUROC) of every map kind, and of the discriminator-token feature map,
    on the same images and reconstructions G(z*)."""
    images = test["images"]
    out = {kind: aurocs(images, reconstructions, test, kind) for kind in MAP_KINDS}
    with torch.no_grad():
        f_x, f_rec = (D(t.to(device), return_features=True)[1].float().cpu() for t in (images, reconstructions))
    part = SimpleNamespace(reconstructions=reconstructions, total_score=None, features_x=f_x, features_rec=f_rec,
                           feature_grid=tuple(D.feature_grid))  # what score_maps reads of a MappingResult
    fmap = score_maps(images, part)["feature_map"]  # the pipeline's feature map, smoothed alike
    out["feature (D tokens)"] = (image_auroc(test["labels"], max_score(fmap)), pixel_auroc(test["masks"], fmap))
    return out


def measure_encoder(G, D, E, test, args, device) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Rows "encoder" (median of `--repeats` timed runs: one run is very short) and "hybrid"."""
    images, n = test["images"], test["images"].shape[0]
    common = dict(progress=False, amp=args.amp, keep_features=False, seed=0, batch_size=args.batch_size)

    def encoder_run() -> MappingResult:
        z = encode_images(E, images, batch_size=args.batch_size)
        return map_to_latent(G, D, images, iterations=0, z_init=z, method="encoder", **common)

    def hybrid_run() -> MappingResult:  # = map_images(method="hybrid"), with any iteration count
        z = encode_images(E, images, batch_size=args.batch_size)
        return map_to_latent(G, D, images, iterations=args.hybrid_iterations, z_init=z, method="hybrid", **common)

    runs = [timed(encoder_run, device) for _ in range(args.repeats)]
    t_enc = statistics.median(t for _, t in runs)
    print(f"  encoder:   {t_enc / n * 1000:.2f} ms/image", flush=True)
    hybrid, t_hyb = timed(hybrid_run, device)
    print(f"  hybrid:    {t_hyb / n:.3f} s/image", flush=True)
    return (make_row("encoder", 0, args.batch_size, n, t_enc,
                     aurocs(images, runs[0][0].reconstructions, test, args.map_kind)),
            make_row("hybrid", args.hybrid_iterations, args.batch_size, n, t_hyb,
                     aurocs(images, hybrid.reconstructions, test, args.map_kind)))


def baseline_row(train_images: torch.Tensor, test: Dict[str, Any], kind: str) -> Dict[str, Any]:
    maps, scores = mean_image_baseline(train_images, test["images"], kind=kind)
    row = make_row("mean-image baseline", None, None, test["images"].shape[0], float("nan"))
    row.update(seconds_per_image=None, seconds_total=None, image_auroc=image_auroc(test["labels"], scores),
               pixel_auroc=pixel_auroc(test["masks"], maps))
    return row


# ----------------------------------------------------------------------------- report
def targets(loop, iterative, encoder, hybrid) -> list:
    """The two targets (and hybrid's speed-up, no target); a reference searched with fewer than
    1000 iterations is scaled to 1000 (time taken as proportional to iterations) and says so."""
    scale = REFERENCE_ITERATIONS / max(iterative["iterations"], 1)
    ref_1000 = iterative["seconds_per_image"] * scale
    note = "" if scale == 1 else f" (reference scaled x{scale:g} from {iterative['iterations']} iterations)"
    out = [("batched iterative vs one-image loop", loop["seconds_per_image"] / iterative["seconds_per_image"],
            TARGET_BATCHED, "")]
    out += [(f"{r['method']} vs {REFERENCE_ITERATIONS}-iteration iterative", ref_1000 / r["seconds_per_image"],
             TARGET_ENCODER if r is encoder else None, note) for r in (encoder, hybrid)]
    return [{"comparison": c, "speedup": s, "target": t, "met": None if t is None else s >= t, "note": n}
            for c, s, t, n in out]


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None or v != v else format(v, spec)


def format_table(rows, speedups: Dict[str, str]) -> str:
    header = (f"{'method':<20} {'iters':>5} {'batch':>5} {'images':>6} {'s/image':>10} "
              f"{'speed-up':<26} {'image AUROC':>11} {'pixel AUROC':>11}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['method']:<20} {_fmt(r['iterations'], 'd'):>5} {_fmt(r['batch_size'], 'd'):>5} "
                     f"{r['images']:>6} "
                     f"{_fmt(r['seconds_per_image'], '.4g'):>10} {speedups.get(r['method'], ''):<26} "
                     f"{_fmt(r['image_auroc'], '.3f'):>11} {_fmt(r['pixel_auroc'], '.3f'):>11}")
    return "\n".join(lines)


def format_targets(checks) -> str:
    lines = ["targets:"]
    for c in checks:
        verdict = "(no target)" if c["target"] is None else (
            f">= {c['target']:g}x: {'met' if c['met'] else 'NOT MET'}")
        lines.append(f"  {c['comparison']:<42} {c['speedup']:>9.1f}x  {verdict}{c['note']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="trained GAN checkpoint (default: train a tiny one on the demo data)")
    p.add_argument("--data-root", default="data/mvtec_ad", help="MVTec-layout root (demo built there if missing)")
    p.add_argument("--category", default=DEMO_CATEGORY)
    p.add_argument("--output-dir", default="runs/bench_mapping", help="trained GAN and the JSON go here")
    p.add_argument("--train-epochs", type=int, help="epochs of the tiny GAN (default: the main job's; --quick 10)")
    p.add_argument("--iterations", type=int, help="search steps of loop / iterative (default 1000; --quick 50)")
    p.add_argument("--hybrid-iterations", type=int, help="search steps of hybrid (default iterations // 10)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-images", type=int, help="test images, evenly spaced (default all; --quick 32)")
    p.add_argument("--loop-images", type=int, default=4, help="images the one-at-a-time loop maps")
    p.add_argument("--encoder-epochs", type=int, help="encoder training epochs (default 50; --quick 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed encoder runs (median)")
    p.add_argument("--map-kind", default="shift_residual", choices=list(MAP_KINDS),
                   help="anomaly map of every row's AUROC and of the mean-image baseline")
    p.add_argument("--amp", default="off", help="autocast of the search on CUDA: off, auto, bf16, fp16")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; use 1 on a busy machine: "
                                               "2 threads on 2 shared cores made small batches 10-100x slower)")
    p.add_argument("--json", help="result file (default <output-dir>/bench_mapping.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer iterations, images, epochs")
    return p


def resolve_args(args) -> argparse.Namespace:
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.hybrid_iterations is None:
        args.hybrid_iterations = max(args.iterations // 10, 1)
    args.json = Path(args.json) if args.json else Path(args.output_dir) / "bench_mapping.json"
    return args


def main(argv=None) -> Dict[str, Any]:
    args = resolve_args(build_parser().parse_args(argv))
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(describe_device(device), flush=True)
    prepare_data(args.data_root, args.category)
    ckpt = ensure_checkpoint(args, device)
    G, D, model_config, train_config = load_models(ckpt, device)
    splits = load_splits(args.data_root, args.category, train_config)
    test = pick_test_images(splits["test"], args.n_images)
    print(f"generator {ckpt} ({model_config.model_size}, latent {model_config.latent_dim}, "
          f"{model_config.image_size} px); {test['images'].shape[0]} test images "
          f"({int(test['labels'].sum())} defective); feature term: discriminator tokens, lambda 0.1", flush=True)
    for b in (1, args.batch_size):  # warm-up of both batch shapes, untimed
        map_to_latent(G, D, test["images"][:b], iterations=2, batch_size=b, progress=False)
    load_before = os.getloadavg()[0]
    print(f"mapping (1-min load average {load_before:.2f} on {os.cpu_count()} CPUs) ...", flush=True)
    loop, iterative, score_diff, reconstructions = measure_search(G, D, test, args, device)
    print(f"training the encoder ({args.encoder_epochs} epochs, not timed in its row) ...", flush=True)
    (E, history), t_train = timed(lambda: train_encoder(
        G, D, splits["train"]["images"], epochs=args.encoder_epochs, batch_size=args.batch_size, seed=0,
        device=str(device), progress=False, val_images=splits["val"]["images"]), device)
    encoder, hybrid = measure_encoder(G, D, E, test, args, device)
    rows = [loop, iterative, encoder, hybrid, baseline_row(splits["train"]["images"], test, args.map_kind)]
    out = {"environment": describe_device(device), "checkpoint": str(ckpt),
           "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
           "targets": targets(loop, iterative, encoder, hybrid), "encoder_training_seconds": t_train,
           "encoder_train_images": splits["train"]["images"].shape[0],
           "encoder_final_val_loss": history["val_loss"][-1], "loop_vs_batched_max_diff": score_diff,
           "map_kinds": compare_maps(D, reconstructions, test, device),
           "load_average": {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}}
    print_report(out, args)
    print(f"written {atomic_write_json(out, args.json)}")
    return out


def print_report(out: Dict[str, Any], args) -> None:
    """The table, the targets and the side notes of a `main` result."""
    rows, checks, diff, load = out["rows"], out["targets"], out["loop_vs_batched_max_diff"], out["load_average"]
    speedups = {rows[1]["method"]: f"{checks[0]['speedup']:.1f}x vs loop",
                **{r["method"]: f"{c['speedup']:.1f}x vs {REFERENCE_ITERATIONS}-iter{'*' if c['note'] else ''}"
                   for r, c in zip(rows[2:4], checks[1:])}}
    print()
    print(format_table(rows, speedups))
    print(format_targets(checks))
    print(f"anomaly maps of the batched iterative search ({args.iterations} iterations), image / pixel AUROC: "
          + ", ".join(f"{k} {a:.3f} / {b:.3f}" for k, (a, b) in out["map_kinds"].items()))
    print(f"encoder training: {out['encoder_training_seconds']:.1f} s ({args.encoder_epochs} epochs on "
          f"{out['encoder_train_images']} normal images, final val loss {out['encoder_final_val_loss']:.4f}); "
          "not included above")
    print(f"loop vs batched on the same {rows[0]['images']} images, same initial codes: max |score difference| "
          f"{diff['step_0']:.1e} at step 0, {diff['final']:.1e} after {args.iterations} steps "
          f"(mean score {diff['mean_score']:.3f}; max |z difference| {diff['final_z']:.1e})")
    print(f"1-min load average {load['before']:.2f} before mapping, {load['after']:.2f} at the end on "
          f"{load['cpus']} CPUs (other processes slow CPU timings, small batches most)")


if __name__ == "__main__":
    main()
