"""The restorer's map kind chosen on probe defects (a family it never trained on) instead of CutPaste copies
(one of its training sources), on the saved runs of `benchmarks/measure_threshold_fpr.py` (4 demo surfaces
x 3 seeds at the main job's settings, evaluated there with CutPaste selection: <root>/results.jsonl): each
run is mapped again with the default selection, then evaluated. One JSON line per run in
<root>/selection.jsonl. README: "Choosing the restorer's map".

    python benchmarks/measure_selection.py --root /tmp/fpr
"""
import argparse
import json

from transgan_lib.config import MappingConfig
from transgan_lib.methods.pipeline import evaluate, run_mapping

SURFACES = ("demo", "demo_holdout", "demo_gravel", "demo_tissue")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/fpr")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    with open(f"{args.root}/selection.jsonl", "a") as out:
        for seed in range(args.seeds):
            for surface in SURFACES:
                where = dict(data_root=f"{args.root}/data", category=surface, output_dir=f"{args.root}/runs/s{seed}")
                run_mapping(MappingConfig(method="restore", seed=seed), progress=False, **where)
                m, _ = evaluate(method="restore", **where)
                floor = m["baselines"]["patch_nn"]
                row = {"surface": surface, "seed": seed, "map_kind": m["map_kind"], "image_auroc": m["image_auroc"],
                       "pixel_auroc": m["pixel_auroc"], "fpr": m["at_threshold"]["fpr"],
                       "recall": m["at_threshold"]["recall"], "synthetic_auroc": m["map_selection"]["synthetic_auroc"],
                       "rule": m["map_selection"]["rule"], "patch_nn": [floor["image_auroc"], floor["pixel_auroc"]],
                       "alternatives": {k: [v["image_auroc"], v["pixel_auroc"]] for k, v in m["alternatives"].items()}}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(surface, seed, m["map_kind"], round(m["image_auroc"], 3), round(m["pixel_auroc"], 3), flush=True)


if __name__ == "__main__":
    main()
