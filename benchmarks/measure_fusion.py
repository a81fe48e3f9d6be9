"""The restorer with the fused map (issue 23) on the seven demo surfaces, 3 seeds, at the main job's settings
(32 px, tiny, 20 epochs, batch 16, lr 5e-4), beside the patch-NN floor at 32 and 64 px.

Runs already trained by `benchmarks/measure_threshold_fpr.py` (<root>/runs/s<seed>/<surface>) are mapped and
evaluated again; the three newest surfaces (demo_retina, demo_text, demo_hopper: test defects drawn by
`data.independent_defects`, never looked at before this script) are trained first. Everything is chosen on
validation normals and their probe copies; the test set only reports. One JSON line per run in
<root>/fusion.jsonl (about 2-4 min a run on 2 cores). README: "Choosing the restorer's map".

    python benchmarks/measure_fusion.py --root /tmp/fpr

At the README's restorer settings (64 px, 40 epochs; runs under <root>/runs64, rows in fusion64.jsonl, about
7 min a run):

    python benchmarks/measure_fusion.py --root /tmp/fpr --image-size 64 --epochs 40 --surfaces demo_retina \
        demo_text demo_hopper

`--summary` prints the README's table from the rows (mean ± sample std over seeds) instead of measuring.
"""
import argparse
import dataclasses
import json
import time
from collections import defaultdict

import numpy as np

import transgan_lib
from transgan_lib.config import MappingConfig, TrainConfig
from transgan_lib.detection.baselines import run_baselines
from transgan_lib.detection.evaluation import load_evaluation_masks
from transgan_lib.methods.pipeline import evaluate, load_splits, run_mapping
from transgan_lib.methods.transgan.mapping_file import MappingRun
from transgan_lib.runs import run_paths

OLD = ("demo", "demo_holdout", "demo_gravel", "demo_tissue")
NEW = ("demo_retina", "demo_text", "demo_hopper")
TRAIN = dict(image_size=32, model_size="tiny", epochs=20, batch_size=16, lr=5e-4, threads=2, sample_every=20,
             checkpoint_every=5, progress=False)


def floor_at(size: int, where: dict, train_config: TrainConfig) -> list:
    """The patch-NN floor's (image, pixel) AUROC with the run's split at `size` px."""
    splits = load_splits(where["data_root"], where["category"], dataclasses.replace(train_config, image_size=size))
    test = splits["test"]
    masks, _ = load_evaluation_masks(where["data_root"], where["category"], size, test["paths"], None, None)
    m = run_baselines(splits["train"]["images"], test["images"], test["labels"], masks, test["defects"],
                      threshold_images=splits["val"]["images"])["patch_nn"]
    return [m["image_auroc"], m["pixel_auroc"], m["at_threshold"]["fpr"], m["at_threshold"]["recall"]]


def summary(path: str) -> None:
    """One markdown row per surface: the default (chosen) map, the head's map alone, the floors, FPR / recall, and
    the mean probe AUROC of the chosen weighting (what chose it)."""
    runs = defaultdict(list)
    for line in open(path):
        row = json.loads(line)
        runs[row["surface"]].append(row)

    def cell(values) -> str:
        a = np.asarray(values, dtype=float)  # (seeds, 2)
        sd = a.std(0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
        return " / ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(a.mean(0), sd))

    print("| surface | seeds | weights chosen (head/patch[/coarse]) | default (fused) | head's map alone | "
          "floor patch NN 32 px | floor patch NN 64 px | FPR / recall at the threshold | floor 32 px: FPR / recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for surface, rows in runs.items():
        weights = ", ".join("/".join(f"{w:g}" for w in r["weights"].values()) if r.get("weights")
                            else f"{r['head_weight']:g}" for r in rows)
        print(f"| {surface} | {len(rows)} | {weights} | "
              f"{cell([[r['image_auroc'], r['pixel_auroc']] for r in rows])} | {cell([r['head'] for r in rows])} | "
              f"{cell([r['floor32'][:2] for r in rows])} | {cell([r['floor64'][:2] for r in rows])} | "
              f"{cell([[r['fpr'], r['recall']] for r in rows])} | {cell([r['floor32'][2:] for r in rows])} |")
    probe = [max(r["weight_auroc"].values()) for rows in runs.values() for r in rows if r.get("weight_auroc")]
    print(f"\nmean probe AUROC of the chosen weighting over {len(probe)} runs: {np.mean(probe):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/fpr")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--surfaces", nargs="+", default=list(NEW + OLD))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--label", default="", help="appended to the rows file's name (fusion<size><label>.jsonl): "
                   "a second evaluation of the same runs, e.g. with another fusion, kept apart")
    p.add_argument("--summary", action="store_true")
    args = p.parse_args()
    train = {**TRAIN, "image_size": args.image_size, "epochs": args.epochs}
    tag = "" if args.image_size == 32 else str(args.image_size)
    if args.summary:
        return summary(f"{args.root}/fusion{tag}{args.label}.jsonl")
    with open(f"{args.root}/fusion{tag}{args.label}.jsonl", "a") as out:
        for seed in range(args.seeds):
            for surface in args.surfaces:
                t0 = time.time()
                where = dict(data_root=f"{args.root}/data", category=surface,
                             output_dir=f"{args.root}/runs{tag}/s{seed}")
                if not run_paths(where["output_dir"], surface).restorer.is_file():
                    transgan_lib.fit("restorer", seed=seed, **where, **train)
                run_mapping(MappingConfig(method="restore", seed=seed), progress=False, **where)
                m, _ = evaluate(method="restore", **where)
                train_config = TrainConfig.from_dict(MappingRun.load(
                    run_paths(where["output_dir"], surface).mapping("restore"), "restore").train_config)
                alt = m["alternatives"]
                row = {"surface": surface, "seed": seed, "image_size": args.image_size, "map_kind": m["map_kind"],
                       "head_weight": m.get("fusion", {}).get("head_weight"),
                       "weights": m.get("fusion", {}).get("weights"),
                       "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
                       "fpr": m["at_threshold"]["fpr"], "recall": m["at_threshold"]["recall"],
                       "head": [alt["defect_map_max"]["image_auroc"], alt["defect_map_max"]["pixel_auroc"]],
                       "fused": [alt["fused_map_max"]["image_auroc"], alt["fused_map_max"]["pixel_auroc"]],
                       "residual": [alt["residual_map_max"]["image_auroc"], alt["residual_map_max"]["pixel_auroc"]],
                       "floor32": floor_at(32, where, train_config), "floor64": floor_at(64, where, train_config),
                       "synthetic_auroc": m["map_selection"]["synthetic_auroc"],
                       "weight_auroc": m.get("fusion", {}).get("weight_auroc"),
                       "per_defect": {d: v.get("image_auroc") for d, v in (m.get("per_defect") or {}).items()},
                       "seconds": time.time() - t0}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(surface, seed, m["map_kind"], row["head_weight"], round(m["image_auroc"], 3),
                      round(m["pixel_auroc"], 3), "floor64", [round(v, 3) for v in row["floor64"][:2]],
                      round(row["seconds"]), flush=True)


if __name__ == "__main__":
    main()
