"""benchmarks/flops.py: its FLOP count against closed forms, its memory tracker and roofline against known
values, and its tables on a tiny model."""
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from transgan_lib.cifar.config import CifarConfig
from transgan_lib.cifar.train import build_cifar_models
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


def test_cifar_counts_follow_the_split_rules(flops):
    """Notebook 05 on CIFAR-10, by hand: 9 normal classes x 5,000 = 45,000 normals, round(10 %) = 4,500 of them
    kept for validation; 5 % of the 5,000 anomalies labelled = 250, int(10 %) = 25 of them kept; full batches of
    64 of the 40,500 normals left, each with 64 // 4 labelled anomalies."""
    c = flops.cifar_counts(CifarConfig())
    assert (c.train_normals, c.train_anomalies, c.val, c.test) == (40_500, 225, 4_500 + 25, 10_000)
    assert (c.steps, c.anomaly_batch, c.epochs) == (40_500 // 64, 16, 15) == (632, 16, 15)
    # validation, every epoch: banks of 10,000 normals (of 40,500) and of the 225 anomalies, batches of 256, and
    # 4,525 images scored; evaluation: validation, test and the 250 labelled anomalies, trained and untrained
    assert (c.bank, c.bank_batches, c.score_batches(c.val)) == (10_000, 40 + 1, 18)
    assert c.evaluation_batches == 2 * (18 + 40 + 1)
    assert flops.cifar_counts(CifarConfig(anomaly_class=7)) == c  # classes of one size: each run counts the same
    assert flops.cifar_counts(CifarConfig(batch_size=100, val_fraction=0.2)).steps == 36_000 // 100
    assert flops.cifar_counts(CifarConfig(protocol="one_class_normal")).steps == (5_000 - 500) // 64
    # full batches only, and one short batch when there are fewer normals than a batch
    assert [dataclasses.replace(c, train_normals=n).steps for n in (40, 127, 128)] == [1, 1, 2]


def test_cifar_rows_at_tiny_size(flops, capsys):
    """--cifar at the tiny preset (a smaller G and D): each unit costs what its passes through the networks
    must, and the rows count the run of `cifar_counts`."""
    model = {"g_dim": 64, "d_dim": 32, "g_min_dim": 16}
    out = flops.main(["--cifar", "--sizes", "tiny", "--model", json.dumps(model)])
    rows = {r["work"]: r for r in out["rows"]}
    assert list(rows) == [w.name for w in flops.CIFAR_WORKLOADS]
    cfg = flops.cifar_config("tiny", model=model)
    c = flops.cifar_counts(cfg)
    net, _, d_anomalous = build_cifar_models(cfg)
    net.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1

    def per_image(r):
        return r["cost"]["flops"] / r["batch"]

    encode = flops.count_flops(lambda: net.encode_with_stages(x)) / 2
    forward = flops.count_flops(lambda: net(x, with_stages=True)) / 2  # E1, G, E2
    assert per_image(rows["CIFAR bank"]) == pytest.approx(encode)
    # scoring: the passes, D_anomalous, and each stage's comparison with the banks' (bank + anomalies) rows
    widths = sum(s.shape[1] for s in net.encode_with_stages(x)[1])
    compare = 2 * widths * (c.bank + c.train_anomalies)
    score = forward + flops.count_flops(lambda: d_anomalous(x)) / 2 + compare
    assert score <= per_image(rows["CIFAR score"]) < 1.05 * score
    # a step: E1, G and E2 forward and backward (the tiny trunk trains: 3x), the discriminators besides
    assert per_image(rows["CIFAR train"]) > 3 * forward
    assert rows["CIFAR train"]["batch"] == 64 + 16
    assert (rows["CIFAR train"]["per_epoch"], rows["CIFAR train"]["per_category"]) == (632, 15 * 632)
    assert rows["CIFAR bank"]["per_category"] == (15 + 2) * 41
    assert rows["CIFAR score"]["per_category"] == 15 * 18 + 2 * (18 + 40 + 1)
    for r in out["rows"]:
        assert r["cost"]["ops"] > 0 and r["cost"]["peak"] > 0 and r["resident"] > 0
        assert all(s > 0 for s in r["seconds"].values())
    one_class = sum(r["seconds"]["T4"] * r["per_category"] for r in out["rows"])
    printed = capsys.readouterr().out
    assert f"| tiny | one class | {flops._duration(one_class)} |" in printed
    assert f"| tiny | all 10 classes | {flops._duration(10 * one_class)} |" in printed
