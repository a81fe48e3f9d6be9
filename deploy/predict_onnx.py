"""Score images with an exported restorer (or f-AnoGAN encoder: encoder.onnx), with numpy, Pillow and
onnxruntime only (no torch, no transgan_lib): what a line PC runs.

    python deploy/predict_onnx.py runs/<category>/export/restorer.onnx images/ [--out scores.csv]

Reads the .json beside the graph (restorer.json) (image size, threshold, map settings), scores every image under
the folder (recursively) and prints / writes path, score and decision. Images are read as the library
reads them: RGB (grey gives three equal channels, alpha dropped, 16-bit divided by 65535), resized to
S x S with bilinear filtering, x / 127.5 - 1.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def load(path: Path, size: int) -> np.ndarray:
    """(3, size, size) float32 in [-1, 1], as `transgan_lib.data.images.load_image`."""
    with Image.open(path) as img:
        img.load()
        if img.mode == "I" or img.mode.startswith("I;16"):
            grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) * (255.0 / 65535)
            img = Image.fromarray(grey.astype(np.float32), mode="F")
        else:
            img = (img.convert("RGBA") if img.mode == "P" else img).convert("RGB")
        arr = np.array(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    arr = np.repeat(arr[None], 3, 0) if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return arr / 127.5 - 1.0


def score(onnx_path: Path, paths, batch_size: int = 32):
    """[(path, score, decision)] for image files `paths`, with the threshold of the .json beside the graph."""
    settings = json.loads(onnx_path.with_suffix(".json").read_text())
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    size, threshold = settings["image_size"], settings["threshold"]
    rows = []
    for lo in range(0, len(paths), batch_size):
        batch = np.stack([load(p, size) for p in paths[lo:lo + batch_size]])
        _, scores, _ = session.run(None, {"images": batch})
        for p, s in zip(paths[lo:lo + batch_size], scores):
            decision = "" if threshold is None else ("anomalous" if s >= threshold else "normal")
            rows.append((str(p), float(s), decision))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", type=Path, help="restorer.onnx or encoder.onnx (its .json beside it)")
    parser.add_argument("images", type=Path, help="a folder of images (searched recursively) or one image")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as CSV here")
    args = parser.parse_args(argv)
    paths = [args.images] if args.images.is_file() else sorted(
        p for p in args.images.rglob("*") if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
    if not paths:
        sys.exit(f"no images ({'/'.join(EXTENSIONS)}) under {args.images}")
    rows = score(args.onnx, paths)
    if args.out:
        with open(args.out, "w", newline="") as f:
            csv.writer(f).writerows([("path", "score", "decision"), *rows])
    for path, s, decision in rows:
        print(f"{s:.6f}  {decision:<9}  {path}")


if __name__ == "__main__":
    main()
