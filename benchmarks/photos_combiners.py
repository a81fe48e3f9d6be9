"""Ways to combine the CIFAR method's score parts, compared offline on the parts `measure_photos.py` kept (issue 26).

Every candidate is fitted on what a user has (validation normals, the labelled anomalies) and compared on the
validation set (validation normals + the anomalous class's unlabelled training crops); the test AUROC is
printed beside it for the record, never to choose. Candidates: the current score (features + anomalies), each
part alone, the current score plus the pixel kNN distance, and a logistic combiner on the standardised parts.

    python benchmarks/photos_combiners.py --root /tmp/photos
"""
import argparse
import glob
import re
from collections import defaultdict

import numpy as np
from sklearn.linear_model import LogisticRegression

from transgan_lib.metrics import image_auroc

MODEL_PARTS = ("l1", "patch", "latent", "nearest", "features", "anomalies", "d_anomalous")
PARTS = (*MODEL_PARTS, "knn", "logistic")


def standardise(z, where: str, ref) -> dict:
    """Every part of `where`, standardised by the validation normals' mean/std."""
    return {p: (z[f"{where}_{p}"] - ref[p][0]) / ref[p][1] for p in PARTS if f"{where}_{p}" in z.files}


def candidates(z) -> dict:
    """{name: (val scores, test scores)}."""
    normal = z["val_labels"] == 0
    ref = {p: (z[f"val_{p}"][normal].mean(), max(z[f"val_{p}"][normal].std(), 1e-12)) for p in PARTS
           if f"val_{p}" in z.files}
    s = {w: standardise(z, w, ref) for w in ("val", "test", "labelled")}
    out = {"score": (z["val_score"], z["test_score"])}
    for p in PARTS:
        if p in s["val"]:
            out[p] = (s["val"][p], s["test"][p])
    for name, parts in (("features+anomalies+knn", ("features", "anomalies", "knn")),
                        ("features+knn", ("features", "knn")),
                        ("features+anomalies+logistic", ("features", "anomalies", "logistic"))):
        out[name] = tuple(sum(s[w][p] for p in parts) for w in ("val", "test"))
    # logistic combiners: validation normals (0) against the labelled anomalies (1), balanced. The validation
    # normals' own validation scores are out-of-fold (2 folds), so the combiner is not judged on what it fitted.
    n_idx = np.flatnonzero(normal)
    folds = np.array_split(np.random.default_rng(0).permutation(n_idx), 2)
    for cname, names in (("combiner: model parts", MODEL_PARTS), ("combiner: model + pixel parts", PARTS)):
        names = [p for p in names if p in s["labelled"]]

        def fit(rows):
            X = np.c_[[np.r_[s["val"][p][rows], s["labelled"][p]] for p in names]].T
            y = np.r_[np.zeros(len(rows)), np.ones(len(s["labelled"][names[0]]))]
            return LogisticRegression(class_weight="balanced", C=0.1, max_iter=2000).fit(X, y)

        def apply(clf, where):
            return clf.decision_function(np.c_[[s[where][p] for p in names]].T)

        val = np.zeros(len(normal))
        for k, held in enumerate(folds):
            clf = fit(folds[1 - k])
            pred = apply(clf, "val")
            val[held] = pred[held]
            val[~normal] += pred[~normal] / len(folds)
        out[cname] = (val, apply(fit(n_idx), "test"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/photos")
    args = p.parse_args()
    table = defaultdict(lambda: defaultdict(list))  # candidate -> class -> [(val, test)]
    for path in sorted(glob.glob(f"{args.root}/s*/parts_*.npz")):
        name = re.search(r"parts_(.+)\.npz", path).group(1)
        z = np.load(path)
        for cand, (v, t) in candidates(z).items():
            table[cand][name].append((image_auroc(z["val_labels"], v), image_auroc(z["test_labels"], t)))
    classes = sorted({c for d in table.values() for c in d})
    print("| candidate | mean val AUROC | mean test AUROC | " + " | ".join(classes) + " (val / test) |")
    for cand, per in table.items():
        a = {c: np.array(per[c]) for c in classes}
        cells = " | ".join(f"{a[c][:, 0].mean():.3f} / {a[c][:, 1].mean():.3f}" for c in classes)
        print(f"| {cand} | {np.mean([a[c][:, 0].mean() for c in classes]):.3f} | "
              f"{np.mean([a[c][:, 1].mean() for c in classes]):.3f} | {cells} |")


if __name__ == "__main__":
    main()
