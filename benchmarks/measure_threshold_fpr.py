"""FPR and recall at the decision threshold on test normals: the restorer at the main job's settings
(32 px, tiny, 20 epochs, batch 16, lr 5e-4), 4 demo surfaces x 3 seeds, through the Python API.
One JSON line per run in /tmp/fpr/results.jsonl (about 95 s a run on 2 cores). README: "Decision threshold".

    python benchmarks/measure_threshold_fpr.py
"""
import json
import time
from pathlib import Path

import transgan_lib

surfaces = ["demo", "demo_holdout", "demo_gravel", "demo_tissue"]
Path("/tmp/fpr").mkdir(parents=True, exist_ok=True)
out = open("/tmp/fpr/results.jsonl", "a")
for seed in range(3):
    for c in surfaces:
        t0 = time.time()
        run = transgan_lib.fit("restorer", data_root="/tmp/fpr/data", category=c,
                               output_dir=f"/tmp/fpr/runs/s{seed}",
                               image_size=32, model_size="tiny", epochs=20, batch_size=16, lr=5e-4, seed=seed,
                               threads=2, sample_every=20, checkpoint_every=5, progress=False)
        m = transgan_lib.evaluate(run, mapping={"seed": seed}, progress=False)
        row = {"surface": c, "seed": seed, "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"],
               "threshold": m["threshold"], "at_threshold": m["at_threshold"], "map_kind": m["map_kind"],
               "n_val": m["n_val"],
               "patch_nn": {k: m["baselines"]["patch_nn"].get(k)
                            for k in ("image_auroc", "pixel_auroc", "at_threshold")},
               "seconds": time.time() - t0}
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(c, seed, round(m["image_auroc"], 3), m["at_threshold"], round(time.time() - t0), flush=True)
