"""DistributedDataParallel training: 2 gloo processes on CPU, WGAN-GP through the DDP-wrapped D."""
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from transgan_lib.config import TrainConfig
from transgan_lib.methods.transgan.checkpoint import load_checkpoint
from transgan_lib.methods.transgan.train import train_gan

SIZE = 32


class ImageSet(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, cfg_dict: dict, dataset, out_dir: str) -> None:
    """One torchrun-like process: env vars set, train_gan initialises the process group."""
    torch.set_num_threads(1)  # two processes share the CPU cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_gan(TrainConfig.from_dict(cfg_dict), dataset, None, progress=False, resume=False)
    torch.save({"G": result["generator"].state_dict(), "D": result["discriminator"].state_dict(),
                "step": result["step"], "history": result["history"]}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path / "runs"), category="toy", image_size=SIZE, model_size="tiny",
                      latent_dim=32, epochs=1, batch_size=4, device="cpu", seed=1)
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), ImageSet(16), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 2  # 16 images / 2 processes / batch 4
    for key in ("G", "D"):
        for name, t in r0[key].items():
            assert torch.equal(t, r1[key][name]), f"{key}.{name} differs between ranks"
    ckpt = load_checkpoint(tmp_path / "runs" / "toy" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 2
    for name, t in ckpt["G_ema"].items():
        assert torch.equal(t, r0["G"][name])
    assert len(r0["history"]) == 1 and r0["history"][0]["gp"] > 0
    # the metrics are reduced over both ranks: 2 steps x 2 processes x 4 images
    assert r0["history"][0]["images_per_second"] * r0["history"][0]["seconds"] == pytest.approx(16)


@pytest.mark.slow
def test_two_gloo_processes_train_the_restorer_in_sync(tmp_path):
    """objective "restore" through the same DDP loop: restorer (encoder, generator, head) and D
    identical on both ranks, restorer.pt saved once with the reduced history."""
    from transgan_lib.methods.restorer.train import KIND as RESTORER_KIND
    cfg = TrainConfig(output_dir=str(tmp_path / "runs"), category="toy", image_size=SIZE, model_size="tiny",
                      epochs=1, batch_size=4, device="cpu", seed=1, objective="restore",
                      restore={"head_dim": 8, "enc_depth": 1})
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), ImageSet(16), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 2
    for key in ("G", "D"):
        for name, t in r0[key].items():
            assert torch.equal(t, r1[key][name]), f"{key}.{name} differs between ranks"
    assert any(name.startswith("head.") for name in r0["G"])  # the segmentation head is part of it
    ckpt = load_checkpoint(tmp_path / "runs" / "toy" / "restorer.pt", kind=RESTORER_KIND)
    assert ckpt["world_size"] == 2 and not (tmp_path / "runs" / "toy" / "checkpoint.pt").exists()
    assert r0["history"][0]["seg_loss"] > 0 and r0["history"][0]["rest_loss"] > 0
