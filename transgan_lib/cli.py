"""Command line: `python -m transgan_lib {demo,train,score} ...`.

- demo:  the main job. Runs notebooks 02 (train) -> 03 (latent mapping) -> 04 (heatmaps, metrics)
         with papermill on the embedded demo category and prints where the results are.
- train: train a TransGAN on one MVTec-layout category (see `transgan_lib.train`; works under torchrun).
- score: score a folder of new images with a trained checkpoint: a CSV of scores and decisions and
         a heatmap PNG per image.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from .detection.maps import MAP_KINDS
from .utils import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"

# The demo's settings: sized so the whole job runs in under 10 minutes on a 2-core CPU.
# 32 px, lr 5e-4 and no colour DiffAugment: the settings under which a tiny TransGAN learns the demo
# surface (bricks and their lighting) in ~1200 steps; the search starts from the best of 64 prior
# codes per image (see mapping.map_to_latent `candidates`).
DEMO_PARAMETERS = {
    "02_train_mvtec": dict(category="demo", image_size=32, model_size="tiny", latent_dim=128, epochs=110,
                           batch_size=16, lr=5e-4, diffaug="translation,cutout", sample_every=10,
                           checkpoint_every=10),
    "03_latent_mapping": dict(category="demo", method="iterative", iterations=150, candidates=64, batch_size=64),
    "04_residual_heatmaps": dict(category="demo", method="iterative"),
}


def run_notebook(name: str, out_dir: Path, parameters: dict, *, cwd: Path, progress: bool = True) -> Path:
    """Execute notebooks/<name>.ipynb with papermill; the executed copy goes to out_dir."""
    import papermill as pm
    src = NOTEBOOKS / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: run this command from a clone of the repository "
                                "(the notebooks are not part of the installed package)")
    dst = out_dir / f"{name}.ipynb"
    pm.execute_notebook(str(src), str(dst), parameters=parameters, cwd=str(cwd), kernel_name="python3",
                        progress_bar=progress)
    return dst


def run_demo(*, data_root: str = "data/mvtec_ad", output_dir: str = "runs", device: str = "auto",
             overrides: Optional[dict] = None, progress: bool = True) -> dict:
    """The main job on the embedded demo category: train, map, evaluate. Returns metrics.json."""
    cwd = Path.cwd()
    data_root, output_dir = str(Path(data_root).resolve()), str(Path(output_dir).resolve())
    executed = Path(output_dir) / "demo" / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, params in DEMO_PARAMETERS.items():
        params = {**params, "data_root": data_root, "output_dir": output_dir, **(overrides or {}).get(name, {})}
        if name != "04_residual_heatmaps":
            params["device"] = device
        t0 = time.perf_counter()
        path = run_notebook(name, executed, params, cwd=cwd, progress=progress)
        print(f"[{time.perf_counter() - t0:6.1f} s] executed {path}")
    metrics_path = Path(output_dir) / "demo" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    base = metrics.get("baselines", {})
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s (a demo, not a benchmark).")
    print(f"  image AUROC {metrics['image_auroc']:.3f}  pixel AUROC {metrics['pixel_auroc']:.3f}  "
          f"AUPRO {metrics['aupro']:.3f}  F1-max {metrics['image_f1_max']:.3f}")
    for name, row in base.items():
        print(f"  baseline {name:<10} image AUROC {row['image_auroc']:.3f}  pixel AUROC {row['pixel_auroc']:.3f}")
    from .detection.pipeline import verdict
    if verdict(metrics):
        print("  " + verdict(metrics))
    print(f"  executed notebooks: {executed}\n  figures, checkpoints: {Path(output_dir) / 'demo'}\n"
          f"  metrics: {metrics_path}")
    return metrics


def _load_folder(folder: Path, image_size: int, skip_bad: bool):
    from .data.mvtec import DatasetError, list_images, load_image
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder")
    paths = sorted(p for sub in [folder, *[d for d in folder.rglob("*") if d.is_dir()]] for p in list_images(sub))
    if not paths:
        raise FileNotFoundError(f"no images (.png/.jpg/.jpeg/.bmp) found under {folder}")
    images, kept, errors = [], [], []
    for p in paths:
        try:
            images.append(load_image(p, image_size))
            kept.append(p)
        except DatasetError as e:
            errors.append(str(e))
    if errors and not skip_bad:
        raise SystemExit("cannot score: unreadable images (fix them or pass --skip-bad):\n  " + "\n  ".join(errors))
    for e in errors:
        warnings.warn(f"skipped: {e}")
    return torch.stack(images), kept


def _evaluated_run(args, checkpoint: Path) -> dict:
    """metrics.json beside the checkpoint when it evaluated the same method, else {}."""
    metrics_path = checkpoint.parent / "metrics.json"
    if metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        if m.get("method") == args.method:
            return m
    return {}


def _threshold(args, saved: dict, checkpoint: Path) -> Optional[float]:
    if args.threshold is not None:
        return args.threshold
    if saved.get("threshold") is not None:
        return float(saved["threshold"])
    warnings.warn(f"no threshold: pass --threshold or evaluate with method={args.method!r} first "
                  f"(notebook 04 writes {checkpoint.parent / 'metrics.json'}); decisions are left empty")
    return None


def _map_settings(args, saved: dict) -> dict:
    """map_kind / sigma: the flags given, else the evaluated run's (its threshold was chosen on that
    very map), else the library defaults."""
    from .detection.pipeline import FALLBACK_MAP_KIND
    return {"map_kind": args.map_kind or saved.get("map_kind", FALLBACK_MAP_KIND),
            "sigma": args.sigma if args.sigma is not None else float(saved.get("sigma", 4.0))}


def _mapping_settings(args, saved: dict) -> dict:
    """iterations / restarts / candidates for the search: the flags given, else those of the
    evaluated run `saved` (so that scores are comparable with the threshold chosen there), else
    the library defaults."""
    defaults = {"iterations": None, "restarts": 1, "candidates": 0}
    return {k: (getattr(args, k) if getattr(args, k) is not None else saved.get(k, d)) for k, d in defaults.items()}


def score_folder(args) -> Path:
    """Score every image under `args.images`; writes scores.csv and <stem>_heatmap.png to `args.out`."""
    from .detection.encoder_training import load_encoder
    from .detection.mapping import map_images
    from .detection.pipeline import score_maps
    from .gan.checkpoint import load_models
    from .utils import resolve_device
    from .viz.explorer import explorer_figure
    from .viz.figures import save_figure

    checkpoint, out = Path(args.checkpoint), Path(args.out)
    device = resolve_device(args.device)
    G, D, mc, _ = load_models(checkpoint, device)
    images, paths = _load_folder(Path(args.images), mc.image_size, args.skip_bad)
    encoder = None
    if args.method in ("encoder", "hybrid"):
        encoder, _ = load_encoder(checkpoint.parent / "encoder.pt", device=str(device))
    saved = _evaluated_run(args, checkpoint)
    result = map_images(G, D, images, method=args.method, encoder=encoder, lambda_=args.lambda_,
                        batch_size=args.batch_size, progress=True, **_mapping_settings(args, saved))
    part = {k: getattr(result, k) for k in ("reconstructions", "total_score", "features_x", "features_rec",
                                             "feature_grid")}
    scored = score_maps(images, part, **_map_settings(args, saved))
    threshold = _threshold(args, saved, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"images": images, "reconstructions": result.reconstructions, "maps": scored["map"],
              "scores": scored["score"], "masks": torch.zeros_like(scored["map"]),
              "labels": [0] * len(paths), "defects": ["?"] * len(paths)}
    rows = []
    for i, p in enumerate(paths):
        score = float(scored["score"][i])
        decision = "" if threshold is None else ("anomalous" if score >= threshold else "normal")
        heatmap = out / f"{p.stem}_heatmap.png"
        fig = explorer_figure(arrays, i, threshold if threshold is not None else float("inf"))
        fig.suptitle(f"{p.name}: score {score:.4f} {decision}", fontsize=10)
        save_figure(fig, heatmap)
        rows.append({"path": str(p), "score": score, "anogan_score": float(result.total_score[i]),
                     "residual_score": float(result.residual_score[i]),
                     "feature_score": float(result.feature_score[i]),
                     "threshold": "" if threshold is None else threshold, "decision": decision,
                     "heatmap": str(heatmap)})
    csv_path = out / "scores.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buffer.getvalue(), csv_path)
    print(f"scored {len(rows)} images with method={args.method}: {csv_path}")
    return csv_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transgan_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="main job: train, map and evaluate on the embedded demo data")
    demo.add_argument("--data-root", default="data/mvtec_ad")
    demo.add_argument("--output-dir", default="runs")
    demo.add_argument("--device", default="auto")
    sub.add_parser("train", help="train a TransGAN (arguments: python -m transgan_lib.train --help)",
                   add_help=False)
    score = sub.add_parser("score", help="score a folder of new images with a trained checkpoint")
    score.add_argument("--checkpoint", required=True, help="<output_dir>/<category>/checkpoint.pt")
    score.add_argument("--images", required=True, help="folder of images (searched recursively)")
    score.add_argument("--out", required=True, help="folder for scores.csv and heatmaps")
    score.add_argument("--method", default="iterative", choices=["iterative", "encoder", "hybrid"])
    score.add_argument("--iterations", type=int, default=None,
                       help="default: the evaluated run's (metrics.json), else 1000 iterative, 100 hybrid")
    score.add_argument("--restarts", type=int, default=None, help="default: the evaluated run's, else 1")
    score.add_argument("--candidates", type=int, default=None,
                       help="prior codes screened per image (default: the evaluated run's, else 0)")
    score.add_argument("--lambda", dest="lambda_", type=float, default=0.1)
    score.add_argument("--map-kind", default=None, choices=list(MAP_KINDS),
                       help="anomaly map (default: the evaluated run's, else residual)")
    score.add_argument("--sigma", type=float, default=None,
                       help="Gaussian smoothing of the map (default: the evaluated run's, else 4)")
    score.add_argument("--threshold", type=float, default=None,
                       help="decision threshold (default: the one notebook 04 chose on validation normals)")
    score.add_argument("--batch-size", type=int, default=32)
    score.add_argument("--device", default="auto")
    score.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .gan.train import main as train_main
        train_main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        run_demo(data_root=args.data_root, output_dir=args.output_dir, device=args.device)
    elif args.command == "score":
        score_folder(args)
