"""Training-step throughput of TransGAN with fused SDPA attention vs plain matmul-softmax.

Measures, in one run and side by side, full training steps (D update with WGAN-GP + drift and
DiffAugment, then G update + EMA: `transgan_lib.methods.transgan.train.train_step` with n_critic=1) for
attn_impl "sdpa" and "math", per model preset, at 64x64. On CUDA both bf16 autocast and fp32
are measured. The gradient-penalty pass always runs the math backend (no double backward in
the fused kernels), so the two columns differ only in the ordinary forward/backward passes.

    python benchmarks/bench_attention.py                     # CPU: ~1-2 minutes
    python benchmarks/bench_attention.py --presets tiny,small,base --batch-size 32 --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from transgan_lib.config import TrainConfig
from transgan_lib.methods import create_state
from transgan_lib.methods.transgan.train import train_step
from transgan_lib.training.state import TrainState
from transgan_lib.utils import describe_device, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state(preset: str, attn_impl: str, amp: str, device: torch.device, args) -> TrainState:
    cfg = TrainConfig(output_dir="unused", image_size=args.image_size, model_size=preset,
                      latent_dim=args.latent_dim, batch_size=args.batch_size, amp=amp,
                      model={"attn_impl": attn_impl}, seed=0)
    return create_state(cfg, device)


def measure_pair(preset: str, amp: str, device: torch.device, args) -> dict:
    """Images/s for "sdpa" and "math": warm-up steps, then `args.steps` rounds timing one step
    of each in turn (alternating which goes first), so load changes hit both alike; images/s is
    batch / median step time."""
    states = {impl: _state(preset, impl, amp, device, args) for impl in ("sdpa", "math")}
    gen = torch.Generator().manual_seed(0)
    real = (torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=gen) * 2 - 1).to(device)
    for st in states.values():
        for _ in range(args.warmup):
            train_step(st, real, gen)
    times = {impl: [] for impl in states}
    for r in range(args.steps):
        for impl in (("sdpa", "math") if r % 2 == 0 else ("math", "sdpa")):
            _sync(device)
            t0 = time.perf_counter()
            train_step(states[impl], real, gen)
            _sync(device)
            times[impl].append(time.perf_counter() - t0)
    return {impl: args.batch_size / statistics.median(t) for impl, t in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="tiny,small", help="comma-separated model presets")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 5 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 CPU, 5 CUDA)")
    p.add_argument("--batch-size", type=int, default=None, help="default 4 on CPU, 32 on CUDA")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.batch_size = args.batch_size or (32 if cuda else 4)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(describe_device(device))
    print(f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.warmup} warm-up + "
          f"{args.steps} timed steps per cell, interleaved; images/s = batch / median step time;\n"
          "one step = D update (WGAN-GP, penalty pass always math) + G update + EMA")
    header = f"{'preset':<8} {'precision':<9} {'sdpa img/s':>11} {'math img/s':>11} {'sdpa/math':>10}"
    print(header)
    print("-" * len(header))
    for preset in [s.strip() for s in args.presets.split(",") if s.strip()]:
        for amp in (("bf16", "off") if cuda else ("off",)):
            ips = measure_pair(preset, amp, device, args)
            sdpa, math_ = ips["sdpa"], ips["math"]
            label = "bf16" if amp == "bf16" else ("fp32/tf32" if cuda else "fp32")
            print(f"{preset:<8} {label:<9} {sdpa:>11.1f} {math_:>11.1f} {sdpa / math_:>10.2f}", flush=True)
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
