"""How the fused map was designed (issue 23; docs/experiments.md, "Fused map"): on the saved runs of
`benchmarks/measure_threshold_fpr.py` (<root>/runs/s<seed>/<surface>, 32 px), every weighting of the head's
map, the residual map and the raw-pixel patch distance (patch 4 or 8 px) on a 0.25 grid, each part
standardised on the validation normals' pixels; the probe-copy AUROC that chooses among them ("sel") and,
only reported, the test image / pixel AUROC. Prints one line per run and patch size; rows in
<root>/fusion_parts.json.

    python benchmarks/fusion_parts.py
"""
import itertools
import json

import numpy as np
import torch

from transgan_lib.methods.pipeline import _checked_mapping, _splits_of
from transgan_lib.methods.restorer.detect import detection_maps
from transgan_lib.detection.baselines import patch_nn_baseline
from transgan_lib.detection.evaluation import load_evaluation_masks
from transgan_lib.detection.maps import max_score
from transgan_lib.metrics import image_auroc, pixel_auroc
from transgan_lib.detection.evaluation import resize_maps
from transgan_lib.runs import run_paths

ROOT = "/tmp/fpr"
SIGMA = 4.0
PARTS = ("defect", "residual", "patch")
GRID = [tuple(float(x) for x in w) for w in itertools.product(np.arange(0, 1.01, 0.25), repeat=3)
        if abs(sum(w) - 1) < 1e-6]


def parts(train, images, result, patch):
    out = {k: detection_maps(images, result, k, SIGMA) for k in ("defect", "residual")}
    out["patch"] = patch_nn_baseline(train, images, patch_size=patch, stride=patch // 2, sigma=SIGMA)[0]
    return out

rows = []
for seed in range(3):
    for surface in ("demo", "demo_holdout", "demo_gravel", "demo_tissue"):
        run = run_paths(f"{ROOT}/runs/s{seed}", surface)
        m = _checked_mapping(run, "restore")
        splits = _splits_of(m, f"{ROOT}/data", run.mapping("restore"))
        train = splits["train"]["images"]
        for patch in (4, 8):
            v = parts(train, splits["val"]["images"], m.val.result, patch)
            s = parts(train, m.val_synthetic.images, m.val_synthetic.result, patch)
            t = parts(train, splits["test"]["images"], m.test.result, patch)
            stats = {k: (v[k].mean(), v[k].std()) for k in PARTS}
            v, s, t = ({k: (d[k] - stats[k][0]) / stats[k][1] for k in PARTS} for d in (v, s, t))
            lab = torch.cat([torch.zeros(len(v["patch"])), torch.ones(len(s["patch"]))])
            labels = splits["test"]["labels"]
            masks, _ = load_evaluation_masks(f"{ROOT}/data", surface, 32, m.test.paths, None, None)
            table = []
            for w in GRID:
                fv, fs = (sum(wi * d[k] for wi, k in zip(w, PARTS)) for d in (v, s))
                sel = image_auroc(lab, torch.cat([max_score(fv), max_score(fs)]))
                ft = sum(wi * t[k] for wi, k in zip(w, PARTS))
                table.append((sel, w, image_auroc(labels, max_score(ft)),
                              pixel_auroc(masks, resize_maps(ft, masks.shape[-1]))))
            best = max(table, key=lambda r: r[0])
            row = dict(surface=surface, seed=seed, patch=patch, chosen=best[1], sel=best[0], test=best[2:],
                       vertices={str(r[1]): [round(r[0], 3), round(r[2], 3), round(r[3], 3)] for r in table},
                       )
            rows.append(row)
            print(surface, seed, patch, "chosen", best[1], "sel %.3f test %.3f/%.3f" % (best[0], *best[2:]),
                  "| head", row["vertices"][str((1.0, 0.0, 0.0))], "res", row["vertices"][str((0.0, 1.0, 0.0))],
                  "patch", row["vertices"][str((0.0, 0.0, 1.0))], flush=True)
json.dump(rows, open(f"{ROOT}/fusion_parts.json", "w"), default=float)
