"""The all-category benchmark: notebooks 02 (train) -> 03 (latent mapping) -> 04 (heatmaps, metrics)
executed with papermill (`jobs.run_notebook`) on every category, for one or more mapping methods, into
one table with the floors (mean training image, patch nearest neighbour) beside every row.

    python -m transgan_lib benchmark --categories all --data-root data/mvtec_ad --output-dir runs/bench \\
        -p epochs 100 -p device cuda --methods iterative,encoder

Categories: the 15 MVTec AD categories by default, `all` for every category folder under the data
root, or a comma-separated list (the demo categories "demo" and "demo_holdout" are built on the fly
and run with the demo job's settings, `jobs.DEMO_PARAMETERS`, under any `-p`). Each `-p name value`
goes to every notebook whose `parameters` cell has `name` (values read as papermill's `-p` reads
them); a name no notebook has is refused before any work.

Resuming: `<output_dir>/<category>/benchmark.json` (`runs.RunPaths.benchmark`) records each
notebook's effective parameters (its defaults with the values passed) and, per method, the metrics of
notebook 04 (its metrics.json is overwritten by the next method). A (category, method) whose recorded
parameters of 02, 03 and 04 equal the requested ones is finished and skipped, and said so; any other
is run again (02 then resumes its checkpoint by notebook 02's own rule). A category that fails is
recorded with its error and the others carry on. Method "restore" is the restorer: its own notebook
02 (objective "restore", restorer.pt beside the GAN's checkpoint) runs before its 03 and 04, and the
GAN's 02 runs only when a GAN method is asked too. Files: `runs.benchmark_results` (results.csv,
results.md, results.png, results.json) and the executed notebooks, 02 in
`<output_dir>/<category>/notebooks/`, 03 and 04 in `notebooks/<method>/`.
"""
from __future__ import annotations

import ast
import csv
import difflib
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from .config import METHODS as REGISTRY
from .config import OBJECTIVE_ALIASES, OBJECTIVE_DEFAULTS, get_method
from .registry import scoring_name
from .data.demo import DEMO_CATEGORIES
from .data.folder import FOLDER_PARAMETERS
from .data.mvtec import MVTEC_CATEGORIES
from .jobs import DEMO_PARAMETERS, DEMO_RESTORE_PARAMETERS, NOTEBOOK_TIMEOUTS, NOTEBOOKS, run_notebook
from .runs import benchmark_results, run_paths
from .utils import atomic_write_json, atomic_write_text

TRAIN, MAP, EVALUATE = tuple(DEMO_PARAMETERS)  # "02_train_mvtec", "03_latent_mapping", "04_residual_heatmaps"
METHODS = tuple(m.scoring for m in REGISTRY.values())  # as notebooks 03/04 name them: iterative, ..., restore
RESTORE = get_method("restorer").scoring  # its own training: 02 with objective "restore", in notebooks/restore/
SET_BY_RUNNER = {"category": "--categories", "data_root": "--data-root", "output_dir": "--output-dir",
                 "method": "--methods"}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


class BenchmarkError(ValueError):
    """A request the runner refuses before any work (unknown parameter, no categories, bad method)."""


def parse_value(text: str) -> Any:
    """A `-p` value as papermill's command line reads it: True/False/None, an int, a float, else the text."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def notebook_defaults(name: str) -> dict[str, Any]:
    """{parameter: default value} of the `parameters` cell of notebooks/<name>.ipynb (papermill's inspection)."""
    import papermill as pm
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the benchmark from a clone of the repository")
    found = pm.inspect_notebook(str(path))
    values = {}
    for key, info in found.items():
        try:
            values[key] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            values[key] = info["default"]
    return values


def check_parameters(overrides: dict[str, Any], defaults: dict[str, dict[str, Any]]) -> None:
    """BenchmarkError for a `-p` name no notebook has, or one the runner sets itself."""
    known = sorted({k for d in defaults.values() for k in d} - set(SET_BY_RUNNER))
    for name in overrides:
        if name in SET_BY_RUNNER:
            raise BenchmarkError(f"-p {name}: set by the runner, use {SET_BY_RUNNER[name]}")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BenchmarkError(f"-p {name}: no notebook of {', '.join(defaults)} has this parameter{hint}; "
                                 f"known: {', '.join(known)}")


def resolve_categories(spec: str | None, data_root: Path) -> list[str]:
    """None or "mvtec": the 15 MVTec AD categories; "all": every category folder under `data_root`;
    else a comma-separated list."""
    if spec in (None, "", "mvtec"):
        return list(MVTEC_CATEGORIES)
    if spec == "all":
        found = sorted(d.name for d in data_root.iterdir() if d.is_dir() and not d.name.startswith(".")) \
            if data_root.is_dir() else []
        if not found:
            raise BenchmarkError(f"--categories all: no category folders under {data_root}")
        return found
    names = list(dict.fromkeys(c.strip() for c in spec.split(",") if c.strip()))
    if not names:
        raise BenchmarkError(f"--categories {spec!r}: no category named")
    return names


def plan_category(category: str, data_root: Path, output_dir: Path, overrides: dict[str, Any],
                  methods: Sequence[str], defaults: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What papermill gets for `category`: {"train": params of 02, "methods": {method: {03: .., 04: ..}}};
    "restore" also has its own 02 (objective "restore"). A demo category starts from the demo job's
    settings (the restorer's for "restore"); `overrides` go where the notebook has them."""
    def passed(name: str, detector: str = "", **fixed) -> dict[str, Any]:
        demo = DEMO_RESTORE_PARAMETERS if detector == RESTORE else DEMO_PARAMETERS
        base = demo[name] if category in DEMO_CATEGORIES else {}
        mine = {k: v for k, v in overrides.items() if k in defaults[name]}
        return {**base, **mine, "category": category, "data_root": str(data_root), "output_dir": str(output_dir),
                **fixed}

    def stages(m: str) -> dict[str, dict[str, Any]]:
        train = {TRAIN: passed(TRAIN, m, objective=RESTORE)} if m == RESTORE else {}
        return {**train, MAP: passed(MAP, m, method=m), EVALUATE: passed(EVALUATE, m, method=m)}
    return {"train": passed(TRAIN), "methods": {m: stages(m) for m in methods}}


def effective(name: str, passed: dict[str, Any], defaults: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The notebook's parameters as run (defaults, then the passed values), JSON-normalised, without
    output_dir (a moved output folder keeps its results)."""
    # output_dir: a moved output folder keeps its results; an unset Folder parameter (added later) is left
    # out, so records written before it existed still match
    values = {k: v for k, v in {**defaults[name], **passed}.items()
              if k != "output_dir" and not (k in FOLDER_PARAMETERS and v is None)}
    if name == TRAIN:  # a setting left None is its objective's default: recorded as the value it takes
        objective = OBJECTIVE_ALIASES.get(values.get("objective", "gan"), values.get("objective", "gan"))
        values.update({k: v for k, v in OBJECTIVE_DEFAULTS.get(objective, {}).items() if values.get(k) is None})
    return json.loads(json.dumps(values, default=str))


def read_record(path: Path) -> dict[str, Any]:
    """benchmark.json, or an empty record when it is missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"train": None, "methods": {}}
    return record if isinstance(record, dict) and "methods" in record else {"train": None, "methods": {}}


def describe_error(error: BaseException) -> str:
    """One line: the notebook's exception (papermill's ename/evalue) or the error itself."""
    name, value = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    return " ".join(f"{name}: {value}".split())[:500]


def notebook_timeout(name: str, timeout: float | None = None) -> float:
    """The time limit of one notebook: `timeout` when given, else its default (`jobs.NOTEBOOK_TIMEOUTS`)."""
    return NOTEBOOK_TIMEOUTS[name] if timeout is None else float(timeout)


def run_category(category: str, plan: dict[str, Any], defaults: dict[str, dict[str, Any]], *,
                 output_dir: Path, progress: bool, execute: Callable = run_notebook,
                 timeout: float | None = None) -> dict[str, Any]:
    """Run what is not finished of one category (02 once when a GAN method is asked, then 03 and 04 per
    method; "restore" runs its own 02 first); returns its record. Raises RuntimeError naming the notebook
    (and method) that failed or ran past its time limit (`notebook_timeout`); what finished before stays
    recorded."""
    paths = run_paths(output_dir, category)
    train_params = effective(TRAIN, plan["train"], defaults)
    record = read_record(paths.benchmark)
    if record.get("train") and record["train"].get("parameters") != train_params:
        print(f"{category}: training parameters differ from {paths.benchmark}: running every GAN method again")
        record = {"category": category, "train": None,
                  "methods": {m: v for m, v in record["methods"].items() if m == RESTORE}}  # its own 02
    record.setdefault("category", category)
    todo = []
    for method, params in plan["methods"].items():
        wanted = {name: effective(name, p, defaults) for name, p in params.items()}
        done = record["methods"].get(method, {})
        if done.get("parameters") == wanted and done.get("metrics"):
            print(f"{category} / {method}: skipped, already finished with the same parameters ({paths.benchmark})")
        else:
            todo.append((method, params, wanted))
    stage, method = TRAIN, None
    try:
        if any(m != RESTORE for m, _, _ in todo) and record["train"] is None:
            t0 = time.perf_counter()
            execute(TRAIN, paths.notebooks, plan["train"], cwd=Path.cwd(), progress=progress,
                    timeout=notebook_timeout(TRAIN, timeout))
            record["train"] = {"parameters": train_params, "seconds": time.perf_counter() - t0}
            atomic_write_json(record, paths.benchmark)
        for method, params, wanted in todo:
            t0 = time.perf_counter()
            for stage in params:  # (02 for restore,) 03, 04
                execute(stage, paths.notebooks / method, params[stage], cwd=Path.cwd(), progress=progress,
                        timeout=notebook_timeout(stage, timeout))
            metrics = json.loads(paths.metrics.read_text())
            record["methods"][method] = {"parameters": wanted, "metrics": metrics,
                                         "seconds": time.perf_counter() - t0}
            atomic_write_json(record, paths.benchmark)
    except Exception as error:
        where = stage if method is None else f"{stage} ({method})"
        raise RuntimeError(f"{where}: {describe_error(error)}") from error
    return record


def _format_seconds(seconds: float) -> str:
    """h:mm:ss (hours unbounded)."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def run_benchmark(*, categories: str | None = None, data_root: str = "data/mvtec_ad",
                  output_dir: str = "runs/benchmark", overrides: dict[str, Any] | None = None,
                  methods: Sequence[str] = ("iterative",), progress: bool = True, command: str = "",
                  execute: Callable = run_notebook, timeout: float | None = None) -> dict[str, Any]:
    """Run notebooks 02 -> 03 -> 04 on every category (see the module docstring) and write the tables.

    Args:
        categories: None / "mvtec" (the 15 MVTec AD categories), "all" (every folder under data_root)
            or "a,b,c".
        overrides: {parameter: value} for every notebook that has the parameter (BenchmarkError for a
            name none has, before any work).
        methods: mapping methods run per category (notebooks 03 and 04), one table row each.
        progress: stream the notebooks' progress lines (epoch, search step, ETA) and the stages.
        command: the command line, written into results.md.
        execute: the notebook executor (tests pass a stand-in).
        timeout: seconds each notebook may run (None: `jobs.NOTEBOOK_TIMEOUTS`); a notebook past it is
            stopped and its category recorded as failed, naming it.
    Returns:
        {"rows": table rows (with the mean rows), "errors": {category: message}, "files": {suffix: path}}.
    """
    data_root_path, output_path = Path(data_root).resolve(), Path(output_dir).resolve()
    overrides, methods = dict(overrides or {}), list(dict.fromkeys(scoring_name(m) for m in methods))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise BenchmarkError(f"--methods {','.join(methods)}: choose from {', '.join(METHODS)}")
    defaults = {name: notebook_defaults(name) for name in (TRAIN, MAP, EVALUATE)}
    check_parameters(overrides, defaults)
    names = resolve_categories(categories, data_root_path)
    plans = {c: plan_category(c, data_root_path, output_path, overrides, methods, defaults) for c in names}
    records, errors, run_seconds, start, calls = {}, {}, [], time.perf_counter(), []

    def counted(name, *args, **kwargs):
        calls.append(name)
        return execute(name, *args, **kwargs)
    for i, category in enumerate(names):
        eta = (f", ETA {_format_seconds(sum(run_seconds) / len(run_seconds) * (len(names) - i))}"
               if run_seconds else "")
        print(f"\n=== benchmark [{i + 1}/{len(names)}] {category}, methods {','.join(methods)} "
              f"(elapsed {_format_seconds(time.perf_counter() - start)}{eta})", flush=True)
        t0, n_calls = time.perf_counter(), len(calls)
        try:
            records[category] = run_category(category, plans[category], defaults, output_dir=output_path,
                                             progress=progress, execute=counted, timeout=timeout)
        except Exception as error:  # noqa: BLE001 (recorded; the other categories carry on)
            errors[category] = str(error)
            records[category] = read_record(run_paths(output_path, category).benchmark)
            print(f"{category}: FAILED, {error}", flush=True)
        if len(calls) > n_calls and category not in errors:  # ran (a finished one is skipped at no cost)
            run_seconds.append(time.perf_counter() - t0)
    rows = table_rows(names, methods, records, errors, plans, defaults)
    files = write_results(output_path, rows, errors, command=command, overrides=overrides)
    finished = sum(1 for r in rows if r["category"] != "mean" and not r["error"])
    print(f"\nbenchmark: {len(names)} categories x {len(methods)} method(s) in "
          f"{_format_seconds(time.perf_counter() - start)}: {finished} of {len(names) * len(methods)} rows finished, "
          f"{len(errors)} categories failed" + (f" ({', '.join(errors)})" if errors else ""))
    print(format_markdown(rows))
    print("\n".join(f"  {suffix}: {path}" for suffix, path in files.items()))
    return {"rows": rows, "errors": errors, "files": {k: str(v) for k, v in files.items()}}


# ----------------------------------------------------------------------------- tables
def _floor_names(records: dict[str, dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for record in records.values():
        for entry in record.get("methods", {}).values():
            names.update(dict.fromkeys((entry.get("metrics") or {}).get("baselines") or {}))
    return list(names)


def table_rows(names: Sequence[str], methods: Sequence[str], records: dict[str, dict[str, Any]],
               errors: dict[str, str], plans: dict[str, dict[str, Any]],
               defaults: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (category, method): the GAN's metrics, each floor's image/pixel AUROC and AUPRO,
    whether it beats the best floor's image AUROC, seconds, error; then one mean row per method over
    the finished categories (`n` of them)."""
    floors = _floor_names(records)
    rows = []
    for category in names:
        record = records.get(category) or {}
        for method in methods:
            params = plans[category]["methods"][method]
            wanted = {name: effective(name, p, defaults) for name, p in params.items()}
            entry = record.get("methods", {}).get(method) or {}
            current = entry.get("parameters") == wanted and entry.get("metrics")
            row = {"category": category, "method": method, "n": 1 if current else 0}
            metrics = entry["metrics"] if current else {}
            row.update({k: metrics.get(k) for k in METRICS})
            for floor in floors:
                base = (metrics.get("baselines") or {}).get(floor) or {}
                row.update({f"{floor}_{k}": base.get(k) for k in METRICS[:3]})
            best = max((row[f"{f}_image_auroc"] for f in floors if row[f"{f}_image_auroc"] is not None), default=None)
            row["beats_floors"] = None if best is None or row["image_auroc"] is None else row["image_auroc"] > best
            row["seconds"] = entry.get("seconds") if current else None
            row["error"] = "" if current else errors.get(category, "not run")
            rows.append(row)
    for method in methods:
        done = [r for r in rows if r["method"] == method and r["n"]]
        mean = {"category": "mean", "method": method, "n": len(done), "error": ""}
        for key in rows[0]:
            values = [r[key] for r in done if isinstance(r[key], (int, float)) and not isinstance(r[key], bool)]
            if key not in mean:
                mean[key] = sum(values) / len(values) if values and len(values) == len(done) else None
        best = max((mean[f"{f}_image_auroc"] for f in floors if mean[f"{f}_image_auroc"] is not None), default=None)
        mean["beats_floors"] = None if best is None or mean["image_auroc"] is None else mean["image_auroc"] > best
        rows.append(mean)
    return rows


def format_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    return buffer.getvalue()


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table: category, method, the GAN's metrics, each floor as image / pixel AUROC, whether
    the GAN beats the floors' image AUROC, error; the mean rows in bold."""
    def num(value):
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    floors = [k[: -len("_image_auroc")] for k in rows[0] if k.endswith("_image_auroc") and k != "image_auroc"]
    head = (["category", "method", "image AUROC", "pixel AUROC", "AUPRO", "F1-max (oracle thr.)"]
            + [f"floor {f} (image / pixel AUROC)" for f in floors] + ["beats (image AUROC)", "error"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total = len({r["category"] for r in rows if r["category"] != "mean"})
    for r in rows:
        name = f"**mean** ({r['n']} of {total} categories)" if r["category"] == "mean" else r["category"]
        beaten = [f for f in floors if None not in (r["image_auroc"], r[f + "_image_auroc"])
                  and r["image_auroc"] > r[f + "_image_auroc"]]
        beats = "–" if r["beats_floors"] is None else "all floors" if r["beats_floors"] else ", ".join(beaten) or "none"
        cells = ([name, r["method"]] + [num(r[k]) for k in METRICS]
                 + [f"{num(r[f + '_image_auroc'])} / {num(r[f + '_pixel_auroc'])}" for f in floors]
                 + [beats, _short(r["error"]).replace("|", "/")])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(output_dir: Path, rows: list[dict[str, Any]], errors: dict[str, str], *, command: str,
                  overrides: dict[str, Any]) -> dict[str, Path]:
    """results.csv, results.md, results.json and results.png under `output_dir`, each written atomically."""
    from .utils import describe_device, resolve_device
    from .viz.figures import plot_benchmark, save_figure
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = [f"# Benchmark: notebooks 02 -> 03 -> 04 per category ({stamp})", "",
              f"Command: `{command or 'transgan_lib.benchmark.run_benchmark'}`", "",
              f"Runner's machine: {describe_device(resolve_device('auto'))}", "",
              ("Floors: the same metrics of the mean training image and the patch nearest neighbour "
              "(`detection.baselines`) on the same test images. F1-max uses the oracle threshold."), ""]
    errors_md = ["", "Errors:", *[f"- {c}: {e}" for c, e in errors.items()]] if errors else []
    files = {"csv": benchmark_results(output_dir, "csv"), "md": benchmark_results(output_dir, "md"),
             "json": benchmark_results(output_dir, "json"), "png": benchmark_results(output_dir, "png")}
    atomic_write_text(format_csv(rows), files["csv"])
    atomic_write_text("\n".join(header + [format_markdown(rows)] + errors_md) + "\n", files["md"])
    atomic_write_json({"command": command, "written": stamp, "parameters": overrides, "rows": rows,
                       "errors": errors}, files["json"])
    save_figure(plot_benchmark(rows), files["png"])
    return files
