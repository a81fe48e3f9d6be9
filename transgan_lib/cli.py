"""Command line: `python -m transgan_lib {demo,benchmark,train,score} ...`.

- demo:  the main job (`jobs.py`). Runs notebooks 02 (train) -> 03 (latent mapping) -> 04 (heatmaps,
         metrics) with papermill on an embedded demo category, for one seed or `--seeds N` (mean ± std).
- benchmark: notebooks 02 -> 03 -> 04 on every category (`benchmark.py`): resumable, one row per
         category and method beside the floors, results.{csv,md,png} under --output-dir.
- train: train a TransGAN on one MVTec-layout category (see `transgan_lib.train`; works under torchrun).
- score: score a folder of new images with a trained checkpoint: a CSV of scores and decisions and
         a heatmap PNG per image, every setting (search, map kind, threshold) from the evaluated
         run beside the checkpoint (`methods.scoring`), unless given as a flag.
"""
from __future__ import annotations

import argparse
import csv
import io
import shlex
import sys
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from .config import METHODS, RESTORER_MAP_KINDS, get_method
from .data.demo import DEMO_CATEGORIES
from .detection.maps import MAP_KINDS
from .jobs import DEMO_PARAMETERS, DEMO_TIMEOUT, NOTEBOOKS, run_demo, run_demo_seeds  # noqa: F401 (re-exported)
from .utils import atomic_write_text, check_writable


def _load_folder(folder: Path, image_size: int, skip_bad: bool):
    from .data.images import images_under
    from .data.mvtec import IMAGE_EXTENSIONS, DatasetError, load_image
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder")
    paths = images_under(folder)
    if not paths:
        raise FileNotFoundError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found under {folder}")
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


def heatmap_names(folder: Path, paths: Sequence[Path]) -> Dict[Path, Path]:
    """{image: its heatmap's path relative to the output folder}: the image's path relative to `folder`,
    `<sub>/<stem>_heatmap.png`, so good/000.png and scratch/000.png keep apart. SystemExit naming the
    images when two would still share a file (000.png beside 000.jpg)."""
    names: Dict[Path, Path] = {}
    by_name: Dict[Path, Path] = {}
    for p in paths:
        rel = p.relative_to(folder)
        name = rel.with_name(f"{rel.stem}_heatmap.png")
        if name in by_name:
            raise SystemExit(f"cannot score: {by_name[name]} and {p} would both write the heatmap {name}; "
                             "rename one of them (or score them from separate folders)")
        by_name[name], names[p] = p, name
    return names


def _overrides(args) -> dict:
    """The search / map settings given as flags (None: not given, the evaluated run's is used)."""
    names = ("iterations", "restarts", "candidates", "lambda_", "map_kind", "sigma", "batch_size")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _write_scores(out: Path, paths, images: torch.Tensor, scored, names: Dict[Path, Path]) -> Path:
    """scores.csv (path, score, AnoGAN parts, threshold, decision, threshold_rule, heatmap) and a heatmap PNG per image,
    at `out / names[path]`."""
    from .viz.explorer import explorer_figure
    from .viz.figures import save_figure
    out.mkdir(parents=True, exist_ok=True)
    threshold, mapping = scored.threshold, scored.mapping
    arrays = {"images": images, "reconstructions": scored.reconstructions, "maps": scored.maps,
              "scores": scored.scores, "masks": torch.zeros_like(scored.maps),
              "labels": [0] * len(paths), "defects": ["?"] * len(paths)}
    rows = []
    for i, p in enumerate(paths):
        score = float(scored.scores[i])
        decision = "" if scored.decisions is None else ("anomalous" if scored.decisions[i] else "normal")
        heatmap = out / names[p]
        fig = explorer_figure(arrays, i, threshold if threshold is not None else float("inf"))
        fig.suptitle(f"{p.name}: score {score:.4f} {decision}", fontsize=10)
        save_figure(fig, heatmap)
        rows.append({"path": str(p), "score": score, "anogan_score": float(mapping.total_score[i]),
                     "residual_score": float(mapping.residual_score[i]),
                     "feature_score": float(mapping.feature_score[i]),
                     "threshold": "" if threshold is None else threshold, "decision": decision,
                     "threshold_rule": scored.threshold_rule or "",
                     "heatmap": str(heatmap)})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(buffer.getvalue(), out / "scores.csv")


def score_folder(args) -> Path:
    """Score every image under `args.images` with the evaluated run beside `args.checkpoint`
    (`methods.scoring.Scorer`: its search settings, map kind and threshold, unless given as
    flags); writes scores.csv and one heatmap per image to `args.out`, at the image's path relative
    to `args.images` (`<sub>/<stem>_heatmap.png`)."""
    from .methods.scoring import Scorer
    check_writable(args.out, "--out folder")  # before any work
    scorer = Scorer(args.checkpoint, method=args.method, device=args.device)
    images, paths = _load_folder(Path(args.images), scorer.image_size, args.skip_bad)
    names = heatmap_names(Path(args.images), paths)
    scored = scorer.score(images, overrides=_overrides(args), threshold=args.threshold)
    csv_path = _write_scores(Path(args.out), paths, images, scored, names)
    print(f"scored {len(paths)} images with method={args.method}: {csv_path}")
    if scored.threshold is not None:
        rule = scored.threshold_rule or "rule not recorded"
        print(f"decision: anomalous iff score >= {scored.threshold:.4g} ({rule})")
    return csv_path


def scoring_name(name: str) -> str:
    """argparse type: a method of the registry (or an older spelling), as notebooks 03/04 spell it."""
    try:
        return get_method(name).scoring
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_export_parser(sub) -> None:
    export = sub.add_parser("export", help="export an evaluated restorer or f-AnoGAN encoder to ONNX "
                                           "(deploy/predict_onnx.py scores with it)")
    export.add_argument("--checkpoint", required=True,
                        help="<output_dir>/<category>/restorer.pt (checkpoint.pt for --method encoder), or its folder")
    export.add_argument("--format", default="onnx", choices=["onnx"])
    export.add_argument("--out", default=None,
                        help="folder for restorer.onnx and restorer.json (encoder.*) (default: <run>/export)")
    export.add_argument("--method", default="restore", type=scoring_name, choices=["restore", "encoder"],
                        help="a one-pass detector: the restorer, or the f-AnoGAN encoder with the TransGAN's "
                             "generator; the latent search does not export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m transgan_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="main job: train, map and evaluate on the embedded demo data")
    demo.add_argument("--data-root", default="data/mvtec_ad")
    demo.add_argument("--output-dir", default="runs")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--category", default="demo", choices=list(DEMO_CATEGORIES),
                      help="demo_holdout, demo_gravel, demo_tissue: held-out demo surfaces no setting was tuned on")
    demo.add_argument("--detectors", default="restorer,iterative",
                      help="comma-separated: restorer (or restore: one pass per image) and/or iterative "
                           "(the study's TransGAN + AnoGAN search); default both")
    demo.add_argument("--seeds", type=int, default=1,
                      help="run seeds 0..N-1 (under <output-dir>/seeds/<k>/) and report mean ± std over them")
    demo.add_argument("--timeout", type=float, default=DEMO_TIMEOUT,
                      help="seconds each notebook may run before it is stopped and named (default %(default)g)")
    bench = sub.add_parser("benchmark", help="notebooks 02 -> 03 -> 04 on every category, one results table")
    bench.add_argument("--categories", default="mvtec",
                       help="'mvtec' (the 15 MVTec AD categories, default), 'all' (every folder under "
                            "--data-root) or a comma-separated list (demo, demo_holdout are built on the fly)")
    bench.add_argument("--data-root", default="data/mvtec_ad")
    bench.add_argument("--output-dir", default="runs/benchmark")
    bench.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="a notebook parameter, passed to every notebook (02/03/04) that has it; "
                            "values read as papermill's -p reads them")
    bench.add_argument("--methods", default="iterative",
                       help="comma-separated methods (iterative, encoder, hybrid: the TransGAN; restorer: the "
                            "restorer, trained by its own notebook 02), one row each")
    bench.add_argument("--timeout", type=float, default=None,
                       help="seconds each notebook may run before it is stopped and its category recorded as "
                            "failed (default: 12 h for 02, 4 h for 03, 1 h for 04)")
    sub.add_parser("train", help="train a TransGAN (arguments: python -m transgan_lib train --help)",
                   add_help=False)
    score = sub.add_parser("score", help="score a folder of new images with a trained checkpoint")
    score.add_argument("--checkpoint", required=True, help="<output_dir>/<category>/checkpoint.pt")
    score.add_argument("--images", required=True, help="folder of images (searched recursively)")
    score.add_argument("--out", required=True, help="folder for scores.csv and heatmaps")
    score.add_argument("--method", default="iterative", type=scoring_name, metavar="{" + ",".join(METHODS) + "}",
                       help="restorer (or restore): the restorer (restorer.pt in the run folder), one pass per image")
    score.add_argument("--iterations", type=int, default=None,
                       help="default: the evaluated run's (mapping_<method>.pt), else 1000 iterative, 100 hybrid")
    score.add_argument("--restarts", type=int, default=None, help="default: the evaluated run's, else 1")
    score.add_argument("--candidates", type=int, default=None,
                       help="prior codes screened per image (default: the evaluated run's, else 0)")
    score.add_argument("--lambda", dest="lambda_", type=float, default=None,
                       help="weight of the feature term (default: the evaluated run's)")
    score.add_argument("--map-kind", default=None, choices=list(MAP_KINDS) + list(RESTORER_MAP_KINDS),
                       help="anomaly map (default: the evaluated run's, else residual)")
    score.add_argument("--sigma", type=float, default=None,
                       help="Gaussian smoothing of the map (default: the evaluated run's, else 4)")
    score.add_argument("--threshold", type=float, default=None,
                       help="decision threshold (default: the one notebook 04 chose on validation normals)")
    score.add_argument("--batch-size", type=int, default=None,
                       help="images searched at once (default: the evaluated run's; changes only rounding)")
    score.add_argument("--device", default="auto")
    score.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    _add_export_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from .methods.transgan.train import main as train_main
        train_main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        kwargs = dict(data_root=args.data_root, output_dir=args.output_dir, device=args.device, category=args.category,
                      detectors=[d.strip() for d in args.detectors.split(",") if d.strip()], timeout=args.timeout)
        if args.seeds > 1:
            run_demo_seeds(seeds=args.seeds, **kwargs)
        else:
            run_demo(**kwargs)
    elif args.command == "benchmark":
        from .benchmark import BenchmarkError, parse_value, run_benchmark
        try:
            run_benchmark(categories=args.categories, data_root=args.data_root, output_dir=args.output_dir,
                          overrides={name: parse_value(value) for name, value in args.parameter},
                          methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                          command="python -m transgan_lib " + shlex.join(argv), timeout=args.timeout)
        except BenchmarkError as error:
            raise SystemExit(f"benchmark: {error}") from None
    elif args.command == "score":
        score_folder(args)
    elif args.command == "export":
        from .export import export_onnx
        path = export_onnx(args.checkpoint, args.out, method=args.method)
        print(f"exported {path} (settings: {path.with_suffix('.json')}); score with: "
              f"python deploy/predict_onnx.py {path} <images>")
