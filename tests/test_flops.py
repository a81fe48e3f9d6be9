"""benchmarks/flops.py: its FLOP count against closed forms, its memory tracker and roofline against known
values, and its tables on a tiny model."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from transgan_lib.config import TrainConfig
from transgan_lib.models.transgan import Block, build_models

FLOPS = Path(__file__).resolve().parents[1] / "benchmarks" / "flops.py"


@pytest.fixture(scope="module")
def flops():
    spec = importlib.util.spec_from_file_location("flops", FLOPS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["flops"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def block_flops(B: int, N: int, C: int, mlp_ratio: int, attended: int) -> int:
    """Forward FLOPs of a pre-LN transformer block on (B, N, C) tokens, each attending to `attended` tokens:
    2 per multiply-add of the q/k/v (3 C^2), output (C^2) and MLP (2 r C^2) projections, and of the
    attention's two products, Q K^T and A V (each N * attended * C)."""
    return 2 * B * N * C * C * (4 + 2 * mlp_ratio) + 2 * 2 * B * N * attended * C


@pytest.mark.parametrize("attn_impl", ["sdpa", "math"])
def test_block_flops_match_the_closed_form(flops, attn_impl):
    torch.manual_seed(0)
    B, C, heads, r = 2, 32, 4, 4
    block = Block(dim=C, heads=heads, mlp_ratio=r, attn_impl=attn_impl)
    x = torch.randn(B, 64, C)
    assert flops.count_flops(lambda: block(x)) == block_flops(B, 64, C, r, attended=64)
    # windowed (the generator's large stages): 8x8 tokens in 4x4 windows attend within their window
    windowed = Block(dim=C, heads=heads, mlp_ratio=r, window_size=4, attn_impl=attn_impl)
    assert flops.count_flops(lambda: windowed(x, (8, 8))) == block_flops(B, 64, C, r, attended=16)
    if attn_impl == "math":  # all matmuls: the backward's two products per forward one make it 3x
        assert flops.count_flops(lambda: block(x).sum().backward()) == 3 * block_flops(B, 64, C, r, 64)


def test_profile_tracks_peak_memory_and_roofline(flops):
    """Peak counts the tensors the run creates (not one it updates in place), at their most at once;
    each op's time is its FLOPs at the dtype's peak or its bytes at the bandwidth, whichever is longer."""
    w = torch.zeros(2 ** 18)  # 1 MiB, exists before: updating it in place costs no memory

    def run():
        w.add_(1.0)
        a = w * 2  # 1 MiB
        b = torch.cat([a, a])  # 2 MiB: 3 at once
        del a, b
        return torch.ones(2 ** 19)  # 2 MiB, alone

    p = flops.profile(run)
    assert p.peak == 3 * 2 ** 20 and p.flops == 0
    gpu = flops.GPU("test", half_flops=1e12, fp32_flops=1e11, bandwidth=1e9, memory_gib=1, amp="bf16")
    n = 512
    for dtype, peak in ((torch.float32, gpu.fp32_flops), (torch.bfloat16, gpu.half_flops)):
        a, b = torch.ones(n, n, dtype=dtype), torch.ones(n, n, dtype=dtype)
        p = flops.profile(lambda: a @ b, gpus=[gpu], fraction=0.5)
        expected = max(2 * n ** 3 / peak, 3 * n * n * a.element_size() / gpu.bandwidth) / 0.5
        assert (p.flops, p.ops) == (2 * n ** 3, 1)
        assert p.device_seconds["test"] == pytest.approx(expected)
        assert p.seconds(gpu, host_seconds=1.0) == 1.0  # one op at 1 s of host time: host-bound


def test_gpu_spec_reads_device_names(flops):
    names = {"NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H100 PCIe": "H100 PCIe", "Tesla T4": "T4",
             "NVIDIA A100-SXM4-40GB": "A100 40GB", "NVIDIA A10G": "A10", "NVIDIA L40S": None}
    assert {n: getattr(flops.gpu_spec(n), "name", None) for n in names} == names


def test_tables_on_a_tiny_model(flops, capsys):
    """Every workload runs; its unit costs at least what its passes through G must cost."""
    model = {"g_dim": 64, "d_dim": 32, "g_min_dim": 16}
    out = flops.main(["--sizes", "tiny", "--image-size", "16", "--latent-dim", "16", "--train-batch", "2",
                      "--score-batch", "2", "--model", '{"g_dim": 64, "d_dim": 32, "g_min_dim": 16}'])
    rows = {r["work"]: r for r in out["rows"]}
    assert list(rows) == [w.name for w in flops.WORKLOADS]
    G, _ = build_models(TrainConfig(image_size=16, model_size="tiny", latent_dim=16, model=model).model_config())
    g_forward = flops.count_flops(lambda: G(torch.randn(2, 16))) / 2  # per image
    # a step: G forward for the critic's fakes, then G forward and backward (3x) for its own update
    assert rows["TransGAN train"]["gflop_per_image"] * 1e9 > 4 * g_forward
    # forward, and backward to z: G is frozen, so no weight gradients and a backward as costly as the forward
    assert rows["AnoGAN search"]["gflop_per_image"] * 1e9 > 2 * g_forward
    for r in out["rows"]:
        assert r["cost"]["ops"] > 0 and r["cost"]["peak"] > 0 and r["resident"] > 0
        assert all(s > 0 for s in r["seconds"].values())
    assert rows["TransGAN train"]["per_category"] == flops.EPOCHS * rows["TransGAN train"]["per_epoch"]
    assert rows["TransGAN train"]["per_epoch"] == (240 - 24) // 2
    printed = capsys.readouterr().out
    assert "| tiny | TransGAN train (step, 2) |" in printed and "| tiny | restorer |" in printed
