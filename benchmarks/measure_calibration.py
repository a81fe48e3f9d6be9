"""Decision thresholds on held-apart calibration normals (issue 24): on the saved restorer runs of
`measure_fusion.py` (<root>/runs64/s<seed>/<surface>; at 32 px <root>/runs/...), the test-normal FPR and the
recall at the threshold of each rule, with AUROC beside (the rules move no score, so AUROC is the same for all):

- q99_val: the 99th percentile of the 20 validation normals (the rule before this change);
- conformal5_val: the conformal rule at a 5 % target on the same validation normals (the default without a
  calibration folder; 20 normals support a bound of 1/21 = 4.8 % at best);
- conformal5_cal / conformal1_cal: the conformal rule at 5 % / 1 % on `--n-calibration` good images held
  apart from every split, drawn by the surface's own generator with rng streams no split uses
  ([data seed, 900, i]): the "more good parts from the line" an engineer holds apart, on which nothing is
  chosen. The floor (raw-pixel patch NN) gets the default threshold on the same normals.

One JSON line per run in <root>/calibration64.jsonl (at 32 px calibration.jsonl); `--summary` prints the
table. About 1 min a run on 2 cores. `--fresh-test 400` then scores 400 more new good images and `--draws`
more calibration sets per run (`--fresh-summary`: the FPR over them; the bound is an average over the draw of
the calibration normals). `--method iterative` trains, maps and measures the TransGAN of the demo job instead
(<root>/runs_iterative/s<seed>; ~11 min a run at 32 px on 2 cores).

    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 64
    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 64 --summary
    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 32 --surfaces demo demo_holdout ...
    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 64 --fresh-test 400
    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 64 --fresh-summary
    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 32 --method iterative --surfaces demo
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import transgan_lib
from transgan_lib.config import MappingConfig
from transgan_lib.data.demo import MARKER, make_demo_image
from transgan_lib.data.images import images_under, load_image
from transgan_lib.jobs import DEMO_PARAMETERS
from transgan_lib.methods.pipeline import evaluate, run_mapping
from transgan_lib.methods.scoring import Scorer
from transgan_lib.metrics import conformal_threshold
from transgan_lib.runs import run_paths

SURFACES = ("demo_holdout", "demo_gravel", "demo_tissue", "demo_retina", "demo_text", "demo_hopper")
CALIBRATION_STREAM = 900  # the rng stream of the held-apart normals: the demo builder uses 0 .. 1 + defects
FRESH_TEST_STREAM = 901  # more test normals than the split's 40, to read an FPR near 1 % (`--fresh-test`)
DRAWS_STREAM = 902  # independent calibration sets: the bound is an average over the calibration draw
RULES = ("q99_val", "conformal5_val", "conformal5_cal", "conformal1_cal")
TARGETS = {"q99_val": 0.01, "conformal5_val": 0.05, "conformal5_cal": 0.05, "conformal1_cal": 0.01}


def calibration_folder(root: Path, surface: str, n: int, name: str = "calibration",
                       stream: int = CALIBRATION_STREAM) -> Path:
    """<root>/<name>/<surface>/good with n good images of `surface` drawn from rng `stream`, none in any split."""
    marker = json.loads((root / "data" / surface / MARKER).read_text())
    folder = root / name / surface / "good"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"{i:04d}.png"
        if not path.exists():
            rng = np.random.default_rng([marker["seed"], stream, i])
            Image.fromarray(make_demo_image(rng, marker["size"], "good", surface)[0]).save(path)
    return folder.parent


def thresholds(val: np.ndarray, cal: np.ndarray) -> dict:
    """{rule: (threshold, the FPR bound it claims)}."""
    return {"q99_val": (float(np.percentile(val, 99)), 0.01),
            "conformal5_val": conformal_threshold(val, 0.05), "conformal5_cal": conformal_threshold(cal, 0.05),
            "conformal1_cal": conformal_threshold(cal, 0.01)}


def _tag(args) -> str:
    """measure_fusion.py's layout for the restorer; the TransGAN's rows and runs get "_iterative" after it."""
    return ("" if args.image_size == 32 else str(args.image_size)) + ("" if args.method == "restore" else
                                                                         f"_{args.method}")


def _run_dir(args, seed: int) -> Path:
    return Path(args.root) / f"runs{_tag(args)}" / f"s{seed}"


def _trained(args, surface: str, seed: int) -> None:
    """The TransGAN of the demo job's settings at `--image-size`, trained and mapped once per run folder (the
    restorer runs are measure_fusion.py's)."""
    if args.method == "restore":
        return
    where = dict(data_root=f"{args.root}/data", category=surface, output_dir=str(_run_dir(args, seed)))
    train = {**DEMO_PARAMETERS["02_train_mvtec"], "image_size": args.image_size}
    transgan_lib.fit(args.method, seed=seed, progress=False, **where,  # resumes, or returns when trained
                     **{k: v for k, v in train.items() if k != "category"})
    mapping = {k: v for k, v in DEMO_PARAMETERS["03_latent_mapping"].items() if k != "category"}
    if not run_paths(where["output_dir"], surface).mapping(args.method).is_file():
        run_mapping(MappingConfig(**{**mapping, "method": args.method}, seed=seed), progress=False, **where)


def measure(args) -> None:
    root = Path(args.root)
    with open(root / f"calibration{_tag(args)}.jsonl", "a") as out:
        for seed in range(args.seeds):
            for surface in args.surfaces:
                folder = calibration_folder(root, surface, args.n_calibration)
                _trained(args, surface, seed)
                metrics, arrays = evaluate(data_root=root / "data", category=surface, method=args.method,
                                           output_dir=_run_dir(args, seed),
                                           calibration_dir=folder, fpr_target=0.05)
                test, labels = arrays["scores"].double().numpy(), np.asarray(arrays["labels"])
                val, cal = arrays["val_scores"].double().numpy(), arrays["calibration_scores"].double().numpy()
                rules = {name: {"threshold": t, "bound": b, "fpr": float((test[labels == 0] >= t).mean()),
                                "recall": float((test[labels == 1] >= t).mean())}
                         for name, (t, b) in thresholds(val, cal).items()}
                floor = metrics["baselines"]["patch_nn"]
                row = {"surface": surface, "seed": seed, "image_auroc": metrics["image_auroc"],
                       "pixel_auroc": metrics["pixel_auroc"], "n_val": len(val), "n_calibration": len(cal),
                       "rules": rules, "floor": {"image_auroc": floor["image_auroc"],
                                                 "fpr": floor["at_threshold"]["fpr"],
                                                 "recall": floor["at_threshold"]["recall"]}}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()


def fresh_test(args) -> None:
    """Scores, with each run as `score` would make them, of `--fresh-test` new good images per surface (rng
    stream 901), of `--draws` more calibration sets of `--n-calibration` (stream 902), and of the split's test
    normals (a check: their FPR must equal the row's): <root>/fresh<tag>/<surface>_s<seed>.npz.
    Nothing is chosen on them; `--fresh-summary` reads the FPR of each rule off them."""
    root = Path(args.root)
    (root / f"fresh{_tag(args)}").mkdir(exist_ok=True)
    for r in _rows(args):
        scorer = Scorer(_run_dir(args, r["seed"]) / r["surface"], method=args.method, device="cpu")
        folders = {"fresh": calibration_folder(root, r["surface"], args.fresh_test, "fresh_test", FRESH_TEST_STREAM),
                   "draws": calibration_folder(root, r["surface"], args.draws * args.n_calibration, "calibration_draws",
                                               DRAWS_STREAM),
                   "split": root / "data" / r["surface"] / "test"}
        scores = {name: _scores(scorer, images_under(folder / "good")) for name, folder in folders.items()}
        check = (scores["split"] >= r["rules"]["conformal5_cal"]["threshold"]).mean()
        assert abs(check - r["rules"]["conformal5_cal"]["fpr"]) < 1e-9, (r["surface"], r["seed"], check)
        np.savez(root / f"fresh{_tag(args)}" / f"{r['surface']}_s{r['seed']}.npz", **scores)
        print(r["surface"], r["seed"], {k: len(v) for k, v in scores.items()}, flush=True)


def _rows(args) -> list:
    rows = [json.loads(line) for line in open(Path(args.root) / f"calibration{_tag(args)}.jsonl")]
    return [r for r in rows if r["surface"] in args.surfaces and r["seed"] < args.seeds]


def fresh_summary(args) -> None:
    """Test-normal FPR per rule on the split's 40 test normals and the fresh ones: the calibration folder's
    threshold (one draw, the pre-registered figure), and the mean over `--draws` independent calibration draws
    (what the conformal bound is about: it holds on average over the draw of the calibration normals)."""
    ms = lambda a: f"{np.mean(a):.3f} ± {np.std(a, ddof=1):.3f}"  # noqa: E731
    print("| surface | rule | split test normals (40), calibration folder | fresh normals, calibration folder "
          "| fresh + split normals, mean over draws × seeds | range over draws × seeds |")
    for surface in args.surfaces:
        rs = [r for r in _rows(args) if r["surface"] == surface]
        for rule, target in (("conformal5_cal", 0.05), ("conformal1_cal", 0.01), ("q99_val", None),
                             ("conformal5_val", None)):
            folder, fresh, draws = [], [], []
            for r in rs:
                z = np.load(Path(args.root) / f"fresh{_tag(args)}" / f"{surface}_s{r['seed']}.npz")
                t, test = r["rules"][rule]["threshold"], np.concatenate([z["fresh"], z["split"]])
                folder.append(r["rules"][rule]["fpr"])
                fresh.append((z["fresh"] >= t).mean())
                for d in range(args.draws if target else 0):
                    cal = z["draws"][d * args.n_calibration:(d + 1) * args.n_calibration]
                    draws.append((test >= conformal_threshold(cal, target)[0]).mean())
            if not rs:
                continue
            cells = [ms(folder), ms(fresh), ms(draws) if draws else "", f"{min(draws):.3f}-{max(draws):.3f}"
                     if draws else ""]
            print(f"| {surface} (seeds {len(rs)}) | {rule} | " + " | ".join(cells) + " |")


def _scores(scorer: Scorer, paths) -> np.ndarray:
    size = scorer.image_size
    return np.concatenate([scorer.score(torch.stack([load_image(p, size) for p in paths[i:i + 50]]),
                                        progress=False).scores.double().numpy() for i in range(0, len(paths), 50)])


def summary(args) -> None:
    rows = [json.loads(line) for line in open(Path(args.root) / f"calibration{_tag(args)}.jsonl")]
    ms = lambda a: f"{np.mean(a):.3f} ± {np.std(a, ddof=1):.3f}"  # noqa: E731
    print("| surface | image / pixel AUROC | " + " | ".join(f"{r}: FPR / recall" for r in RULES)
          + " | floor (conformal5_cal): FPR / recall |")
    for surface in args.surfaces:
        rs = [r for r in rows if r["surface"] == surface]
        if not rs:
            continue
        cells = [f"{ms([r['image_auroc'] for r in rs])} / {ms([r['pixel_auroc'] for r in rs])}"]
        for rule in RULES:
            fpr = [r["rules"][rule]["fpr"] for r in rs]
            mark = "" if np.mean(fpr) <= 2 * max(TARGETS[rule], rs[0]["rules"][rule]["bound"]) else " ✗"
            cells.append(f"{ms(fpr)}{mark} / {ms([r['rules'][rule]['recall'] for r in rs])}")
        cells.append(f"{ms([r['floor']['fpr'] for r in rs])} / {ms([r['floor']['recall'] for r in rs])}")
        print(f"| {surface} (n={len(rs)}) | " + " | ".join(cells) + " |")
    print("✗: mean FPR above twice the rule's bound (its target, or what the count of normals supports)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/fpr")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--surfaces", nargs="+", default=list(SURFACES))
    p.add_argument("--n-calibration", type=int, default=200)
    p.add_argument("--method", default="restore", choices=("restore", "iterative"),
                   help="iterative: the TransGAN of the demo job (trained here, <root>/runs<size>_iterative)")
    p.add_argument("--fresh-test", type=int, default=0, help="score this many new good images per surface "
                   "(rng stream 901) against the thresholds already measured")
    p.add_argument("--draws", type=int, default=5, help="with --fresh-test: independent calibration sets")
    p.add_argument("--summary", action="store_true")
    p.add_argument("--fresh-summary", action="store_true")
    args = p.parse_args()
    if args.summary or args.fresh_summary:
        return summary(args) if args.summary else fresh_summary(args)
    fresh_test(args) if args.fresh_test else measure(args)


if __name__ == "__main__":
    main()
