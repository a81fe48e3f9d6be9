"""The main job: notebooks 02 (train) -> 03 (latent mapping) -> 04 (heatmaps, metrics) executed with
papermill on an embedded demo category ("demo", or the held-out "demo_holdout"), for one seed or
several, with the mean and spread over seeds (`python -m transgan_lib demo --seeds 3`).

A figure that matters is a mean over seeds: one draw of a GAN run is not a result (on the demo, the
image AUROC of single runs spreads by several points between seeds and between machines).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .metrics import SEED_SUMMARY_KEYS, summarize_seeds
from .runs import run_paths, seed_output_dir, seed_summary_path
from .utils import PROGRESS_ENV, atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"

# The demo's settings: sized so the whole job runs in under 10 minutes on a 2-core CPU.
# 32 px, lr 5e-4 and no colour DiffAugment: the settings under which a tiny TransGAN learns the demo
# surface (bricks and their lighting) in ~1200 steps; the search starts from the best of 64 prior
# codes per image (see mapping.map_to_latent `candidates`). They were chosen on "demo" (partly by
# its test AUROC, in early sessions); "demo_holdout" is never tuned on.
DEMO_PARAMETERS = {
    "02_train_mvtec": dict(category="demo", image_size=32, model_size="tiny", latent_dim=128, epochs=110, batch_size=16, lr=5e-4,
                           diffaug="translation,cutout", sample_every=10, checkpoint_every=10),
    "03_latent_mapping": dict(category="demo", method="iterative", iterations=150, candidates=64, batch_size=64),
    "04_residual_heatmaps": dict(category="demo", method="iterative"),
}
SEEDED = ("02_train_mvtec", "03_latent_mapping")  # the notebooks whose `seed` a seed sets


@contextlib.contextmanager
def environment_variable(name: str, value: str):
    """Set $name to `value` inside the block (a kernel started there inherits it), then restore it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run_notebook(name: str, out_dir: Path, parameters: dict, *, cwd: Path, progress: bool = True) -> Path:
    """Execute notebooks/<name>.ipynb with papermill; the executed copy goes to out_dir.

    With `progress`, what the notebook prints is streamed to stdout as it runs, its progress as
    whole lines (epoch, loss, search step, ETA: `utils.LineProgress`, chosen through
    $TRANSGAN_PROGRESS, which the kernel inherits); without, the notebook shows no progress."""
    import papermill as pm
    src = NOTEBOOKS / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found: run this command from a clone of the repository "
                                "(the notebooks are not part of the installed package)")
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{name}.ipynb"
    if progress:
        print(f"--- {name}: running, executed copy {dst}", flush=True)
    t0 = time.perf_counter()
    with environment_variable(PROGRESS_ENV, "lines" if progress else "off"):
        pm.execute_notebook(str(src), str(dst), parameters=parameters, cwd=str(cwd), kernel_name="python3",
                            progress_bar=False, stdout_file=sys.stdout if progress else None)
    if progress:
        print(f"--- {name}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return dst


def run_demo(*, data_root: str = "data/mvtec_ad", output_dir: str = "runs", device: str = "auto",
             category: str = "demo", seed: int = 0, overrides: Optional[dict] = None,
             progress: bool = True) -> dict:
    """One run of the main job on `category` with `seed`; files under `<output_dir>/<category>/`.
    Returns its metrics.json."""
    data_root, output_dir = str(Path(data_root).resolve()), str(Path(output_dir).resolve())
    paths = run_paths(output_dir, category)
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, params in DEMO_PARAMETERS.items():
        params = {**params, "category": category, "data_root": data_root, "output_dir": output_dir,
                  **({"seed": seed, "device": device} if name in SEEDED else {}),
                  **(overrides or {}).get(name, {})}
        run_notebook(name, paths.notebooks, params, cwd=Path.cwd(), progress=progress)
    metrics = json.loads(paths.metrics.read_text())
    print(f"\n{category}, seed {seed}: finished in {time.perf_counter() - start:.0f} s (a demo, not a benchmark).")
    print(format_run(metrics))
    print(f"  executed notebooks: {paths.notebooks}\n  figures, checkpoints: {paths.root}\n  metrics: {paths.metrics}")
    return metrics


def format_run(metrics: dict) -> str:
    """The headline of one run: the GAN's metrics and the floors beside them."""
    from .detection.pipeline import verdict
    lines = [f"  TransGAN        image AUROC {metrics['image_auroc']:.3f}  pixel AUROC {metrics['pixel_auroc']:.3f}  "
             f"AUPRO {metrics['aupro']:.3f}  F1-max (oracle threshold) {metrics['image_f1_max']:.3f}"]
    lines += [f"  floor {name:<9} image AUROC {row['image_auroc']:.3f}  pixel AUROC {row['pixel_auroc']:.3f}"
              for name, row in (metrics.get("baselines") or {}).items()]
    return "\n".join(lines + (["  " + verdict(metrics)] if verdict(metrics) else []))


def run_demo_seeds(*, seeds: int, data_root: str = "data/mvtec_ad", output_dir: str = "runs",
                   device: str = "auto", category: str = "demo", overrides: Optional[dict] = None,
                   progress: bool = True) -> Dict[str, object]:
    """The main job for seeds 0 .. seeds-1, seed k under `<output_dir>/seeds/<k>/<category>/`; writes
    and returns the mean ± std over seeds (`metrics.summarize_seeds`) to
    `<output_dir>/seeds/<category>_summary.json`."""
    runs: List[dict] = []
    for seed in range(seeds):
        runs.append(run_demo(data_root=data_root, output_dir=str(seed_output_dir(output_dir, seed)), device=device,
                             category=category, seed=seed, overrides=overrides, progress=progress))
    summary = {"category": category, "seeds": list(range(seeds)), **summarize_seeds(runs)}
    atomic_write_json(summary, seed_summary_path(output_dir, category))
    print(f"\n{category}: mean ± std over {seeds} seeds ({seed_summary_path(output_dir, category)})")
    print(format_seed_summary(summary))
    return summary


def format_seed_summary(summary: dict) -> str:
    """A markdown table: the GAN and each floor, every metric as mean ± std (min-max)."""
    def cell(s):
        return f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}-{s['max']:.3f})"
    names = {"image_f1_max": "image_f1_max (oracle threshold)"}
    head = "| | " + " | ".join(names.get(k, k) for k in SEED_SUMMARY_KEYS) + " |\n|---|" + "---|" * len(SEED_SUMMARY_KEYS)
    rows = ["| TransGAN | " + " | ".join(cell(summary[k]) for k in SEED_SUMMARY_KEYS) + " |"]
    rows += [f"| floor: {name} | " + " | ".join(cell(b[k]) for k in SEED_SUMMARY_KEYS) + " |"
             for name, b in summary.get("baselines", {}).items()]
    return "\n".join([head] + rows)
