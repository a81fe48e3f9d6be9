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
table. About 1 min a run on 2 cores.

    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 64
    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 64 --summary
    python benchmarks/measure_calibration.py --root /tmp/fpr --image-size 32 --surfaces demo demo_holdout ...
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from transgan_lib.data.demo import MARKER, make_demo_image
from transgan_lib.methods.pipeline import evaluate
from transgan_lib.metrics import conformal_threshold

SURFACES = ("demo_holdout", "demo_gravel", "demo_tissue", "demo_retina", "demo_text", "demo_hopper")
CALIBRATION_STREAM = 900  # the rng stream of the held-apart normals: the demo builder uses 0 .. 1 + defects
RULES = ("q99_val", "conformal5_val", "conformal5_cal", "conformal1_cal")
TARGETS = {"q99_val": 0.01, "conformal5_val": 0.05, "conformal5_cal": 0.05, "conformal1_cal": 0.01}


def calibration_folder(root: Path, surface: str, n: int) -> Path:
    """<root>/calibration/<surface>/good with n good images of `surface`, none of them in any split."""
    marker = json.loads((root / "data" / surface / MARKER).read_text())
    folder = root / "calibration" / surface / "good"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"{i:04d}.png"
        if not path.exists():
            rng = np.random.default_rng([marker["seed"], CALIBRATION_STREAM, i])
            Image.fromarray(make_demo_image(rng, marker["size"], "good", surface)[0]).save(path)
    return folder.parent


def thresholds(val: np.ndarray, cal: np.ndarray) -> dict:
    """{rule: (threshold, the FPR bound it claims)}."""
    return {"q99_val": (float(np.percentile(val, 99)), 0.01),
            "conformal5_val": conformal_threshold(val, 0.05), "conformal5_cal": conformal_threshold(cal, 0.05),
            "conformal1_cal": conformal_threshold(cal, 0.01)}


def _tag(args) -> str:
    return "" if args.image_size == 32 else str(args.image_size)  # measure_fusion.py's layout


def measure(args) -> None:
    root = Path(args.root)
    with open(root / f"calibration{_tag(args)}.jsonl", "a") as out:
        for seed in range(args.seeds):
            for surface in args.surfaces:
                folder = calibration_folder(root, surface, args.n_calibration)
                metrics, arrays = evaluate(data_root=root / "data", category=surface, method="restore",
                                           output_dir=root / f"runs{_tag(args)}" / f"s{seed}",
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
    p.add_argument("--summary", action="store_true")
    args = p.parse_args()
    summary(args) if args.summary else measure(args)


if __name__ == "__main__":
    main()
