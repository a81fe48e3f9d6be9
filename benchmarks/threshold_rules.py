"""Decision rules compared on saved restorer runs (issue 24): for each run of
`benchmarks/measure_threshold_fpr.py` (runs under <root>/runs/s<seed>/<surface>), the test-normal FPR
and the recall at thresholds set on the validation normals' scores by four rules: the 99th percentile
(the library's), their maximum, and the 99 % quantile of a normal and of a log-normal fitted to them.
A measurement, not a selection: the rule that ships must be chosen on validation data only.

    python benchmarks/threshold_rules.py --root /tmp/fpr
"""
import argparse
import json

import numpy as np
from scipy import stats

from transgan_lib.methods.pipeline import evaluate

SURFACES = ("demo", "demo_holdout", "demo_gravel", "demo_tissue")
Z99 = stats.norm.ppf(0.99)


def rules(val: np.ndarray) -> dict:
    log = np.log(val)
    return {"q99": np.percentile(val, 99), "max": val.max(), "normal": val.mean() + Z99 * val.std(ddof=1),
            "lognormal": float(np.exp(log.mean() + Z99 * log.std(ddof=1)))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/fpr")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    table = {}
    for seed in range(args.seeds):
        for surface in SURFACES:
            _, arr = evaluate(data_root=f"{args.root}/data", category=surface, output_dir=f"{args.root}/runs/s{seed}",
                              method="restore", baselines=False)
            val, test = arr["val_scores"].double().numpy(), arr["scores"].double().numpy()
            labels = np.asarray(arr["labels"])
            for name, threshold in rules(val).items():
                table.setdefault((surface, name), []).append(((test[labels == 0] >= threshold).mean(),
                                                              (test[labels == 1] >= threshold).mean()))
    for (surface, name), runs in table.items():
        a = np.array(runs)
        print(json.dumps({"surface": surface, "rule": name, "fpr": [a[:, 0].mean(), a[:, 0].std(ddof=1)],
                          "recall": [a[:, 1].mean(), a[:, 1].std(ddof=1)]}))


if __name__ == "__main__":
    main()
