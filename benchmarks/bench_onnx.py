"""Images per second of a restorer's one-pass scoring: PyTorch (eager) against the same graph exported to
ONNX Runtime, on the CPU, at 64 px (the maps and scores of `export.RestorerScoring`).

    python benchmarks/bench_onnx.py [--size 64] [--model-size tiny] [--batch 32] [--threads 2] [--repeats 5]

The restorer is freshly built (speed does not depend on its weights); the median of `repeats` timed passes
over one batch after a warm-up is reported, with the largest difference between the two outputs.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> dict:
    import onnxruntime as ort

    from transgan_lib.config import RestoreConfig, TrainConfig
    from transgan_lib.export import RestorerScoring
    from transgan_lib.models.restorer import build_restorer
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--map-kind", default="defect")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(image_size=args.size, model_size=args.model_size, latent_dim=128, objective="restore")
    module = RestorerScoring(build_restorer(cfg.model_config(), RestoreConfig()).eval(), map_kind=args.map_kind,
                             sigma=4.0).eval()
    x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "restorer.onnx"
        torch.onnx.export(module, (x[:2],), str(path), input_names=["images"], output_names=["maps", "scores", "r"],
                          dynamic_axes={n: {0: "batch"} for n in ("images", "maps", "scores", "r")}, opset_version=17,
                          dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def timed(fn):
            fn()  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times), out
        t_torch, (maps_t, scores_t, _) = timed(lambda: module(x))
        t_ort, (maps_o, scores_o, _) = timed(lambda: session.run(None, {"images": x.numpy()}))
    diff = float(max(np.abs(maps_o - maps_t.numpy()).max(), np.abs(scores_o - scores_t.numpy()).max()))
    row = {"size": args.size, "model_size": args.model_size, "batch": args.batch, "threads": args.threads,
           "torch_images_per_s": args.batch / t_torch, "onnxruntime_images_per_s": args.batch / t_ort,
           "max_abs_difference": diff}
    print(f"{args.model_size} restorer, {args.size} px, batch {args.batch}, {args.threads} threads, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}: PyTorch {row['torch_images_per_s']:.1f} "
          f"images/s, ONNX Runtime {row['onnxruntime_images_per_s']:.1f} images/s "
          f"({row['onnxruntime_images_per_s'] / row['torch_images_per_s']:.2f}x); max |difference| {diff:.2e}")
    return row


if __name__ == "__main__":
    main()
