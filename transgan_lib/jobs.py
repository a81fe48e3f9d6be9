"""The main job: notebooks 02 (train) -> 03 (latent mapping) -> 04 (heatmaps, metrics) executed with
papermill on an embedded demo category ("demo", or a held-out one: "demo_holdout", "demo_gravel",
"demo_tissue"), for both detectors: the restorer (objective / method "restore", one pass per image)
and the study's TransGAN with AnoGAN search (method "iterative"), each beside the floors; for one
seed or several, with the mean and spread over seeds (`python -m transgan_lib demo --seeds 3`).
The GAN runs last, so `metrics.json` is the GAN's as before; each detector's metrics are also in
`metrics_<method>.json`.

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
from typing import Dict, List, Optional, Sequence

from .config import get_method
from .registry import scoring_name
from .metrics import SEED_SUMMARY_KEYS, summarize_seeds
from .runs import run_paths, seed_output_dir, seed_summary_path
from .utils import PROGRESS_ENV, atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"

# The demo's settings, sized so the whole job runs in under 10 minutes on a 2-core CPU; how they were
# chosen: docs/experiments.md. "demo_holdout", "demo_gravel" and "demo_tissue" were never tuned on.
DEMO_PARAMETERS = {
    "02_train_mvtec": dict(category="demo", image_size=32, model_size="tiny", latent_dim=128, epochs=110, batch_size=16,
                           lr=5e-4,
                           diffaug="translation,cutout", sample_every=10, checkpoint_every=10),
    "03_latent_mapping": dict(category="demo", method="iterative", iterations=150, candidates=64, batch_size=64),
    "04_residual_heatmaps": dict(category="demo", method="iterative"),
}
# The restorer's settings in the demo job: its own defaults at the size and length that fit the job's
# 10 minutes beside the GAN, chosen on validation normals and synthetic defects (docs/experiments.md).
RESTORE_SIZE, RESTORE_EPOCHS = 32, 20
DEMO_RESTORE_PARAMETERS = {
    "02_train_mvtec": dict(category="demo", objective="restore", image_size=RESTORE_SIZE, model_size="tiny",
                           epochs=RESTORE_EPOCHS, batch_size=16, lr=5e-4, sample_every=RESTORE_EPOCHS,
                           checkpoint_every=5),
    "03_latent_mapping": dict(category="demo", method="restore"),
    "04_residual_heatmaps": dict(category="demo", method="restore"),
}
DETECTORS = {"restore": DEMO_RESTORE_PARAMETERS, "iterative": DEMO_PARAMETERS}  # run order: the GAN last
SEEDED = ("02_train_mvtec", "03_latent_mapping")  # the notebooks whose `seed` a seed sets


def detector_names(detectors: Sequence[str]) -> List[str]:
    """The demo's detectors as notebooks 03/04 name them ("restorer" and "restore" are one); ValueError
    for a method the demo does not run."""
    names = [scoring_name(d) for d in detectors]
    unknown = [d for d, n in zip(detectors, names) if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {[get_method(d).name for d in DETECTORS]}")
    return names


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


# Per-notebook time limits (seconds): a notebook still running after its limit is stopped and named, so a
# hung kernel cannot stall a job forever. The demo's notebooks take 1-5 min each on 2 CPU cores.
DEMO_TIMEOUT = 1800.0
NOTEBOOK_TIMEOUTS = {"02_train_mvtec": 12 * 3600.0, "03_latent_mapping": 4 * 3600.0, "04_residual_heatmaps": 3600.0}


class NotebookTimeout(TimeoutError):
    """A notebook ran past its time limit and was stopped."""


def run_notebook(name: str, out_dir: Path, parameters: dict, *, cwd: Path, progress: bool = True,
                 timeout: Optional[float] = None) -> Path:
    """Execute notebooks/<name>.ipynb with papermill; the executed copy goes to out_dir.

    With `progress`, what the notebook prints is streamed to stdout as it runs, its progress as
    whole lines (epoch, loss, search step, ETA: `utils.LineProgress`, chosen through
    $TRANSGAN_PROGRESS, which the kernel inherits); without, the notebook shows no progress.
    `timeout`: seconds for the whole notebook (None: no limit); past it the running cell is stopped,
    the kernel shut down and NotebookTimeout names the notebook."""
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
    # nbclient asks for each cell's limit as the cell starts: what is left of the notebook's
    limits = {} if timeout is None else {"timeout_func": lambda cell: max(1, int(t0 + timeout - time.perf_counter()))}
    try:
        with environment_variable(PROGRESS_ENV, "lines" if progress else "off"):
            pm.execute_notebook(str(src), str(dst), parameters=parameters, cwd=str(cwd), kernel_name="python3",
                                progress_bar=False, stdout_file=sys.stdout if progress else None, **limits)
    except TimeoutError as error:  # nbclient's CellTimeoutError
        if timeout is None:
            raise
        raise NotebookTimeout(f"notebook {name} did not finish within its limit of {timeout:.0f} s and was stopped "
                              f"(executed copy: {dst}); if it is only slow, raise the limit (--timeout)") from error
    if progress:
        print(f"--- {name}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return dst


def run_demo(*, data_root: str = "data/mvtec_ad", output_dir: str = "runs", device: str = "auto",
             category: str = "demo", seed: int = 0, overrides: Optional[dict] = None,
             detectors: Sequence[str] = tuple(DETECTORS), progress: bool = True,
             timeout: Optional[float] = DEMO_TIMEOUT) -> Dict[str, dict]:
    """One run of the main job on `category` with `seed`; files under `<output_dir>/<category>/`
    (executed notebooks in notebooks/, the restorer's in notebooks/restore/). `overrides`:
    {notebook name: {parameter: value}}, applied to every detector's notebooks; `timeout`: seconds per
    notebook (`run_notebook`). Returns {method: its metrics} for `detectors` ("restore", "iterative"),
    in the order they ran."""
    detectors = detector_names(detectors)
    data_root, output_dir = str(Path(data_root).resolve()), str(Path(output_dir).resolve())
    paths = run_paths(output_dir, category)
    start, results = time.perf_counter(), {}
    for detector in [d for d in DETECTORS if d in detectors]:
        folder = paths.notebooks / detector if detector == "restore" else paths.notebooks
        for name, params in DETECTORS[detector].items():
            params = {**params, "category": category, "data_root": data_root, "output_dir": output_dir,
                      **({"seed": seed, "device": device} if name in SEEDED else {}),
                      **(overrides or {}).get(name, {})}
            run_notebook(name, folder, params, cwd=Path.cwd(), progress=progress, timeout=timeout)
        results[detector] = json.loads(paths.method_metrics(detector).read_text())
    print(f"\n{category}, seed {seed}: finished in {time.perf_counter() - start:.0f} s (a demo, not a benchmark).")
    print("\n".join(format_run(m, get_method(d).label) for d, m in results.items()))
    print(f"  executed notebooks: {paths.notebooks}\n  figures, checkpoints: {paths.root}\n  metrics: "
          + ", ".join(str(paths.method_metrics(d)) for d in results))
    return results


def format_run(metrics: dict, label: str = "TransGAN") -> str:
    """The headline of one run of one detector: its metrics and the floors beside them (the floors
    are computed at that detector's image size)."""
    from .methods.pipeline import verdict
    size = metrics.get("image_size")

    def num(value):  # null in metrics.json: not available (see its "unavailable")
        return "n/a" if value is None else f"{value:.3f}"
    lines = [f"  {label:<15} image AUROC {num(metrics['image_auroc'])}  pixel AUROC {num(metrics['pixel_auroc'])}  "
             f"AUPRO {num(metrics['aupro'])}  F1-max (oracle threshold) {num(metrics['image_f1_max'])}"
             + (f"  ({size} px)" if size else "")]
    lines += [f"    floor {name:<9} image AUROC {num(row['image_auroc'])}  pixel AUROC {num(row['pixel_auroc'])}"
              for name, row in (metrics.get("baselines") or {}).items()]
    return "\n".join(lines + (["    " + verdict(metrics)] if verdict(metrics) else []))


def run_demo_seeds(*, seeds: int, data_root: str = "data/mvtec_ad", output_dir: str = "runs",
                   device: str = "auto", category: str = "demo", overrides: Optional[dict] = None,
                   detectors: Sequence[str] = tuple(DETECTORS), progress: bool = True,
                   timeout: Optional[float] = DEMO_TIMEOUT) -> Dict[str, object]:
    """The main job for seeds 0 .. seeds-1, seed k under `<output_dir>/seeds/<k>/<category>/`; writes
    and returns the mean ± std over seeds (`metrics.summarize_seeds`) to
    `<output_dir>/seeds/<category>_summary.json`: the GAN's at the top level (as before), the
    restorer's under "restorer"."""
    runs: List[Dict[str, dict]] = []
    for seed in range(seeds):
        runs.append(run_demo(data_root=data_root, output_dir=str(seed_output_dir(output_dir, seed)), device=device,
                             category=category, seed=seed, overrides=overrides, detectors=detectors,
                             progress=progress, timeout=timeout))
    summary: Dict[str, object] = {"category": category, "seeds": list(range(seeds))}
    if "iterative" in runs[0]:
        summary.update(summarize_seeds([r["iterative"] for r in runs]))
    if "restore" in runs[0]:
        summary["restorer"] = summarize_seeds([r["restore"] for r in runs])
    atomic_write_json(summary, seed_summary_path(output_dir, category))
    print(f"\n{category}: mean ± std over {seeds} seeds ({seed_summary_path(output_dir, category)})")
    print(format_seed_summary(summary))
    return summary


def format_seed_summary(summary: dict) -> str:
    """A markdown table: each detector and each of its floors (at its image size), every metric as
    mean ± std (min-max)."""
    def cell(s):
        return f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}-{s['max']:.3f})"
    names = {"image_f1_max": "image_f1_max (oracle threshold)"}
    head = ("| | " + " | ".join(names.get(k, k) for k in SEED_SUMMARY_KEYS) + " |\n|---|"
            + "---|" * len(SEED_SUMMARY_KEYS))
    rows = []
    for label, part in (("restorer", summary.get("restorer")), ("TransGAN AnoGAN", summary)):
        if not part or SEED_SUMMARY_KEYS[0] not in part:
            continue
        rows.append(f"| {label} | " + " | ".join(cell(part[k]) for k in SEED_SUMMARY_KEYS) + " |")
        rows += [f"| {label} floor: {name} | " + " | ".join(cell(b[k]) for k in SEED_SUMMARY_KEYS) + " |"
                 for name, b in part.get("baselines", {}).items()]
    return "\n".join([head] + rows)
