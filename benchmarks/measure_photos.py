"""The CIFAR method on the natural-image development set (`dataset="photos"`, issue 26): every class one-vs-rest,
seeds 0-2, at the README's CPU settings (tiny, no pretrained weights, latent 128, 3 epochs, lr 3e-4), beside
its floors (pixel kNN, pixel logistic, the untrained model's same score).

Besides the test figures of `metrics.json`, each run is also scored on a *validation* set that training never
saw: the seeded validation normals and the anomalous class's training crops that were not labelled. Choices
about the score are made on it, never on the test set. Every part's scores (validation and test, floors
included) are kept in <root>/s<seed>/parts_<class>.npz, so a new way to combine the parts is measured without
training again. One JSON line per run in <root>/photos.jsonl (about 2-3 min a class on 2 cores).

    python benchmarks/measure_photos.py --root /tmp/photos
    python benchmarks/measure_photos.py --root /tmp/photos --summary
    python benchmarks/measure_photos.py --root /tmp/photos --combiner logistic   # re-score, then:
    python benchmarks/measure_photos.py --root /tmp/photos --summary --rows photos_logistic.jsonl
"""
import argparse
import dataclasses
import json
import time
from collections import defaultdict

import numpy as np
import torch

from transgan_lib.cifar.config import SCORE_PARTS, CifarConfig
from transgan_lib.cifar.data import load_classification
from transgan_lib.cifar.evaluate import evaluate_cifar, run_cifar, score_split, untrained_scores
from transgan_lib.cifar.photos import PHOTOS
from transgan_lib.cifar.score import labelled_anomalies, pixel_baselines
from transgan_lib.cifar.train import train_cifar
from transgan_lib.metrics import image_auroc

SETTINGS = dict(dataset="photos", model_size="tiny", pretrained=False, latent_dim=128, epochs=3, lr=3e-4,
                device="cpu", resume=False, progress=False, score_combiner="sum")  # the sum: re-score with --combiner
FLOORS = ("knn", "logistic", "untrained")


def validation_split(split, train):
    """`split` with its test set replaced by the validation set: the validation normals and the anomalous
    class's training images that were not labelled (never trained on)."""
    labelled = {bytes(x.numpy()) for x in torch.cat([split.train_images[split.train_labels == 1],
                                                    split.val_images[split.val_labels == 1]])}
    anomalous = train.images[train.targets == split.target_class]
    unlabelled = torch.stack([x for x in anomalous if bytes(x.numpy()) not in labelled])
    normals = split.val_images[split.val_labels == 0]
    labels = torch.cat([torch.zeros(len(normals)), torch.ones(len(unlabelled))]).long()
    return dataclasses.replace(split, test_images=torch.cat([normals, unlabelled]), test_labels=labels,
                               test_targets=labels)


def labelled_split(split):
    """`split` with its test set replaced by the labelled anomalies (training and validation ones): their parts,
    for a combiner fitted on what a user has (seen in training, so some parts are biased on them)."""
    images = labelled_anomalies(split)
    labels = torch.ones(len(images)).long()
    return dataclasses.replace(split, test_images=images, test_labels=labels, test_targets=labels)


def scored(run, split) -> dict:
    """The score parts, "score", and the floors on `split`'s test set."""
    cfg = run.cfg
    out = score_split(run.scoring_model, run.models.d_anomalous, split, cfg, run.device)["test"]
    out.update(pixel_baselines(split, seed=cfg.seed))
    out["untrained"] = untrained_scores(cfg, split, run.device)["test"]["score"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/photos")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--classes", nargs="+", default=list(PHOTOS))
    p.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    p.add_argument("--combiner", choices=["sum", "logistic"], default=None,
                   help="re-score the finished runs with this score_combiner (rows in photos_<combiner>.jsonl) "
                        "instead of training")
    p.add_argument("--summary", action="store_true")
    p.add_argument("--rows", default="photos.jsonl", help="the rows --summary reads")
    args = p.parse_args()
    if args.summary:
        return summary(f"{args.root}/{args.rows}")
    train, test = load_classification("photos", "data", image_size=32)
    if args.combiner:
        return rescore(args, (train, test))
    with open(f"{args.root}/photos.jsonl", "a") as out:
        for seed in args.seeds:
            for name in args.classes:
                t0 = time.time()
                cfg = CifarConfig(**{**SETTINGS, "epochs": args.epochs}, anomaly_class=name, seed=seed,
                                  output_dir=f"{args.root}/s{seed}")
                run, metrics = run_cifar(cfg, data=(train, test))
                parts = {"val": scored(run, validation_split(run.split, train)), "test": scored(run, run.split),
                         "labelled": scored(run, labelled_split(run.split))}
                np.savez(f"{args.root}/s{seed}/parts_{name}.npz",
                         **{f"{where}_{k}": v for where, d in parts.items() for k, v in d.items()})
                row = {"class": name, "seed": seed, "seconds": time.time() - t0}
                for where in ("val", "test"):
                    d = parts[where]
                    row[where] = {k: image_auroc(d["labels"], d[k]) for k in ("score", *SCORE_PARTS, *FLOORS)
                                  if k in d}
                assert abs(row["test"]["score"] - metrics["auroc"]) < 1e-9
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(name, seed, {k: round(v, 3) for k, v in row["test"].items()}, round(row["seconds"]),
                      flush=True)


def rescore(args, data) -> None:
    """The finished runs loaded (not trained again) and evaluated with `--combiner`: test AUROC of the score and
    of its floors, the untrained one being the same combiner on the untrained model's parts."""
    with open(f"{args.root}/photos_{args.combiner}.jsonl", "a") as out:
        for seed in args.seeds:
            for name in args.classes:
                settings = {**SETTINGS, "epochs": args.epochs, "resume": True, "score_combiner": args.combiner}
                cfg = CifarConfig(**settings, anomaly_class=name, seed=seed, output_dir=f"{args.root}/s{seed}")
                run = train_cifar(cfg, data=data)
                assert len(run.history) == cfg.epochs, "a finished run is loaded, not trained"
                metrics, _ = evaluate_cifar(run)
                row = {"class": name, "seed": seed, "combiner": args.combiner,
                       "test": {"score": metrics["auroc"], **metrics["auroc_parts"],
                                **{k: v["auroc"] for k, v in metrics["baselines"].items()}},
                       "score_rule": metrics["score_rule"]}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(name, seed, {k: round(v, 3) for k, v in row["test"].items()}, flush=True)


def summary(path: str) -> None:
    """Markdown rows per class: test AUROC of the score and each floor (mean ± sample std over seeds), then the
    same on validation."""
    rows = defaultdict(list)
    for line in open(path):
        r = json.loads(line)
        rows[r["class"]].append(r)
    cols = ("score", *FLOORS, "features", "anomalies", "latent", "nearest")
    for where in [w for w in ("test", "val") if all(w in r for rs in rows.values() for r in rs)]:
        print(f"\n{where}: | class | seeds | " + " | ".join(cols) + " |")
        means = defaultdict(list)
        for name, rs in rows.items():
            cells = []
            for c in cols:
                v = np.array([r[where].get(c, np.nan) for r in rs])
                means[c].append(v)
                cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
            print(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
        print("| mean | | " + " | ".join(f"{np.mean([v.mean() for v in means[c]]):.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
