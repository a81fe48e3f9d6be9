"""The four detectors side by side: seconds per image and image / pixel AUROC of iterative (AnoGAN
search, 1000 iterations), encoder (f-AnoGAN), hybrid and restore (the restorer, one pass), in one
run on the same test images, with the floors beside them.

- iterative, encoder, hybrid: one TransGAN (the EMA G of one checkpoint; the main job's GAN when
  none is given) and its f-AnoGAN encoder (trained here, not timed in the rows), batched searches
  from the same per-image initial codes (`bench_mapping`); map: the shift-tolerant residual;
- restore: one restorer (`restorer.pt`; the main job's restorer settings when none is given), one
  forward pass per image; map: the head's defect map;
- floors: the mean training image and the raw-pixel patch nearest neighbour, at each model's size.

Every map is Gaussian-smoothed (sigma 4) and its max is the image score; pixel AUROC is computed at
the masks' own resolution (maps upsampled bilinearly), so models of different sizes compare on the
same pixels. The map kinds are the pipeline's defaults, fixed before this benchmark was run. Target
checked: restore >= 500x faster per image than 1000-iteration iterative. The demo data is a demo,
not a benchmark: its AUROCs show the methods side by side, not MVTec AD figures.

    python benchmarks/bench_methods.py --quick                  # smoke run (CPU: a few minutes)
    python benchmarks/bench_methods.py --n-images 32 --threads 2   # CPU: 1000 iterations on 32 images
    python benchmarks/bench_methods.py --gan-run runs --restorer-run runs --n-images 32   # the demo job's models
    python benchmarks/bench_methods.py --gan-run runs --restorer-run runs --category demo --device cuda

Without --gan-run / --restorer-run the models are trained (or reused) under --output-dir; the table
also goes to `<output-dir>/bench_methods.json`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_mapping beside this file
import bench_mapping as bm  # noqa: E402

from transgan_lib.config import TrainConfig  # noqa: E402
from transgan_lib.data.demo import DEMO_CATEGORY, prepare_data  # noqa: E402
from transgan_lib.data.splits import open_split  # noqa: E402
from transgan_lib.detection.baselines import mean_image_baseline, patch_nn_baseline  # noqa: E402
from transgan_lib.methods.transgan.encoder import train_encoder  # noqa: E402
from transgan_lib.detection.evaluation import evaluation_size  # noqa: E402
from transgan_lib.methods.transgan.mapping import encode_images, image_keys, latent_init, map_to_latent  # noqa: E402
from transgan_lib.detection.maps import anomaly_maps, max_score  # noqa: E402
from transgan_lib.methods.pipeline import load_splits  # noqa: E402
from transgan_lib.methods.restorer.detect import detection_maps, restore_images  # noqa: E402
from transgan_lib.methods.restorer.train import load_restorer  # noqa: E402
from transgan_lib.methods.transgan.checkpoint import load_models  # noqa: E402
from transgan_lib.methods.transgan.train import train_gan  # noqa: E402
from transgan_lib.jobs import DEMO_RESTORE_PARAMETERS  # noqa: E402
from transgan_lib.metrics import image_auroc, pixel_auroc  # noqa: E402
from transgan_lib.runs import run_paths  # noqa: E402
from transgan_lib.utils import atomic_write_json, describe_device, resolve_device  # noqa: E402

TARGET_RESTORE = 500.0  # restore >= 500x faster per image than 1000-iteration search
SIGMA = 4.0
QUICK = dict(iterations=20, n_images=16, encoder_epochs=3, train_epochs=3, restore_epochs=2)
FULL = dict(iterations=1000, n_images=None, encoder_epochs=50, train_epochs=bm.FULL["train_epochs"],
            restore_epochs=DEMO_RESTORE_PARAMETERS["02_train_mvtec"]["epochs"])


def ensure_restorer(args, device: torch.device) -> Path:
    """`<restorer-run>/<category>/restorer.pt` when --restorer-run is given, else the main job's
    restorer trained (or resumed) under --output-dir."""
    if args.restorer_run:
        path = run_paths(args.restorer_run, args.category).restorer
        if not path.is_file():
            raise FileNotFoundError(f"no restorer at {path}: train one (notebook 02 with objective 'restore')")
        return path
    keep = ("objective", "image_size", "model_size", "batch_size", "lr")
    settings = {k: v for k, v in DEMO_RESTORE_PARAMETERS["02_train_mvtec"].items() if k in keep}
    cfg = TrainConfig(data_root=str(args.data_root), category=args.category, output_dir=str(args.output_dir),
                      epochs=args.restore_epochs, device=str(device), sample_every=args.restore_epochs,
                      checkpoint_every=args.restore_epochs, seed=0, **settings)
    print(f"training the restorer ({args.restore_epochs} epochs, {settings}) ...", flush=True)
    train_gan(cfg, progress=False)
    return run_paths(args.output_dir, args.category).restorer


def row(method: str, seconds: float, n: int, labels, masks, maps: torch.Tensor, size: int,
        iterations: Optional[int] = None) -> Dict[str, Any]:
    """One table row; maps (B, h, w) at the model's size are upsampled to the masks' size S."""
    up = F.interpolate(maps[:, None].float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return {"method": method, "image_size": size, "iterations": iterations, "batch_size": None, "images": n,
            "seconds_per_image": None if seconds is None else seconds / n,
            "image_auroc": image_auroc(labels, max_score(maps)), "pixel_auroc": pixel_auroc(masks, up)}


def gan_rows(args, device, idx, masks) -> list:
    """iterative, encoder and hybrid on the picked test images, and the floors at the GAN's size."""
    ckpt = Path(args.gan_run) / args.category / "checkpoint.pt" if args.gan_run else bm.ensure_checkpoint(
        SimpleNamespace(checkpoint=None, data_root=args.data_root, category=args.category,
                        output_dir=args.output_dir, train_epochs=args.train_epochs), device)
    G, D, mc, tc = load_models(ckpt, device)
    splits = load_splits(args.data_root, args.category, tc)
    images, labels = splits["test"]["images"][idx], splits["test"]["labels"][idx]
    common = dict(progress=False, keep_features=False, batch_size=args.batch_size, seed=0)
    z0 = latent_init(image_keys(images), G.latent_dim, seed=0)
    map_to_latent(G, D, images[:2], iterations=2, **common)  # warm-up, untimed

    def maps_of(result):
        return anomaly_maps(images, result.reconstructions, kind="shift_residual", sigma=SIGMA)

    print(f"iterative search: {args.iterations} iterations on {len(images)} images ...", flush=True)
    it, t_it = bm.timed(lambda: map_to_latent(G, D, images, iterations=args.iterations, z_init=z0, **common), device)
    print(f"training the encoder ({args.encoder_epochs} epochs, not timed in its row) ...", flush=True)
    E, _ = train_encoder(G, D, splits["train"]["images"], epochs=args.encoder_epochs, batch_size=args.batch_size,
                         seed=0, device=str(device), progress=False, val_images=splits["val"]["images"])
    enc, t_enc = bm.timed(lambda: map_to_latent(G, D, images, iterations=0, method="encoder",
                                                z_init=encode_images(E, images, batch_size=args.batch_size),
                                                **common), device)
    hyb_iters = max(args.iterations // 10, 1)
    hyb, t_hyb = bm.timed(lambda: map_to_latent(G, D, images, iterations=hyb_iters, method="hybrid",
                                                z_init=encode_images(E, images, batch_size=args.batch_size),
                                                **common), device)
    n, size = len(images), mc.image_size
    rows = [row("iterative", t_it, n, labels, masks, maps_of(it), size, args.iterations),
            row("encoder", t_enc, n, labels, masks, maps_of(enc), size, 0),
            row("hybrid", t_hyb, n, labels, masks, maps_of(hyb), size, hyb_iters)]
    return rows + floor_rows(splits["train"]["images"], images, labels, masks, size)


def floor_rows(train_images, images, labels, masks, size) -> list:
    m_maps, _ = mean_image_baseline(train_images, images, kind="residual", sigma=SIGMA)
    p_maps, _ = patch_nn_baseline(train_images, images, sigma=SIGMA)
    return [row(f"floor mean-image ({size} px)", None, len(images), labels, masks, m_maps, size),
            row(f"floor patch-NN ({size} px)", None, len(images), labels, masks, p_maps, size)]


def restore_rows(args, device, idx, masks) -> list:
    R, _, mc, tc = load_restorer(ensure_restorer(args, device), device)
    splits = load_splits(args.data_root, args.category, tc)
    images, labels = splits["test"]["images"][idx], splits["test"]["labels"][idx]
    restore_images(R, images[:2], progress=False)  # warm-up, untimed
    res, t = bm.timed(lambda: restore_images(R, images, batch_size=args.batch_size, progress=False), device)
    maps = detection_maps(images, res, "defect", SIGMA)
    return [row("restore", t, len(images), labels, masks, maps, mc.image_size)] + floor_rows(
        splits["train"]["images"], images, labels, masks, mc.image_size)


def format_table(rows, speedup: float) -> str:
    """`bench_mapping.format_table` (the image sizes are in the JSON) and the speed-up target."""
    verdict = "met" if speedup >= TARGET_RESTORE else "NOT MET"
    return "\n".join([bm.format_table(rows, {"restore": f"{speedup:.0f}x vs {bm.REFERENCE_ITERATIONS}-iter"}),
                      f"restore vs {bm.REFERENCE_ITERATIONS}-iteration iterative: {speedup:.0f}x per image "
                      f"(target >= {TARGET_RESTORE:g}x: {verdict})"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data/mvtec_ad", help="MVTec-layout root (a demo is built there if missing)")
    p.add_argument("--category", default=DEMO_CATEGORY)
    p.add_argument("--gan-run", help="output_dir holding <category>/checkpoint.pt (default: train one)")
    p.add_argument("--restorer-run", help="output_dir holding <category>/restorer.pt (default: train one)")
    p.add_argument("--output-dir", default="runs/bench_methods", help="trained models and the JSON go here")
    p.add_argument("--iterations", type=int, help="search steps of iterative (default 1000; --quick 20)")
    p.add_argument("--n-images", type=int, help="test images, evenly spaced (default all; --quick 16)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--encoder-epochs", type=int)
    p.add_argument("--train-epochs", type=int, help="GAN epochs when one is trained here")
    p.add_argument("--restore-epochs", type=int, help="restorer epochs when one is trained here")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", help="result file (default <output-dir>/bench_methods.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: few iterations, images and epochs")
    return p


def main(argv=None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_device(device), flush=True)
    prepare_data(args.data_root, args.category)
    test_set = open_split(args.data_root, args.category, "test", 32)  # read for its masks only
    n = len(test_set) if args.n_images is None else min(args.n_images, len(test_set))
    idx = torch.linspace(0, len(test_set) - 1, n).round().long().unique()  # evenly spaced: every defect folder
    masks = test_set.load_masks(evaluation_size(test_set))[idx, 0]  # (B, S, S) at the masks' own size
    start = time.perf_counter()
    rows = restore_rows(args, device, idx, masks) + gan_rows(args, device, idx, masks)
    for r in rows:  # every timed row ran in batches of --batch-size
        r["batch_size"] = None if r["seconds_per_image"] is None else args.batch_size
    it, rs = (next(r for r in rows if r["method"] == m) for m in ("iterative", "restore"))
    speedup = it["seconds_per_image"] * bm.REFERENCE_ITERATIONS / max(it["iterations"], 1) / rs["seconds_per_image"]
    out = {"environment": describe_device(device), "settings": {k: str(v) for k, v in vars(args).items()},
           "mask_size": int(masks.shape[-1]), "rows": rows, "restore_speedup_vs_1000_iterations": speedup,
           "target_met": speedup >= TARGET_RESTORE, "seconds": time.perf_counter() - start,
           "note": "" if it["iterations"] == bm.REFERENCE_ITERATIONS else
           f"iterative searched {it['iterations']} iterations; its time scaled to 1000 for the speed-up"}
    print()
    print(format_table(rows, speedup))
    path = atomic_write_json(out, Path(args.json) if args.json else Path(args.output_dir) / "bench_methods.json")
    print(f"written {path}")
    return out


if __name__ == "__main__":
    main()
