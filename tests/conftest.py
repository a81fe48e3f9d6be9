"""Shared fixtures: a small demo category and a tiny TransGAN trained on it for one epoch."""
import os

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

SMALL_DEMO = dict(n_train=40, n_test_good=6, n_test_per_defect=3, size=64)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo category in MVTec layout: 40 train, 6 good + 9 defective test images."""
    from transgan_lib.data.demo import DEMO_CATEGORY, ensure_demo_data
    root = tmp_path_factory.mktemp("mvtec")
    ensure_demo_data(root, DEMO_CATEGORY, **SMALL_DEMO)
    return root


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory):
    """TrainConfig of a tiny 32-px TransGAN trained for one epoch on the small demo."""
    from transgan_lib.config import TrainConfig
    from transgan_lib.gan.train import train_gan
    cfg = TrainConfig(data_root=str(demo_root), category="demo", output_dir=str(tmp_path_factory.mktemp("runs")),
                      image_size=32, model_size="tiny", latent_dim=32, epochs=1, batch_size=8)
    train_gan(cfg, progress=False)
    return cfg


class LinearTanhGenerator(nn.Module):
    """G(z) = tanh(W z) as an image, W fixed: images tanh(W z0) lie exactly in its range, so a latent
    search can reconstruct them, but not a pasted square (8 dims cannot draw it)."""

    def __init__(self, *, latent_dim=8, image_size=16, channels=3, seed=1):
        super().__init__()
        self.latent_dim, self.image_size, self.channels = latent_dim, image_size, channels
        self.to_pixels = nn.Linear(latent_dim, channels * image_size ** 2, bias=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.to_pixels.weight.copy_(torch.randn(self.to_pixels.weight.shape, generator=g) / latent_dim ** 0.5)

    def forward(self, z):
        return torch.tanh(self.to_pixels(z)).view(-1, self.channels, self.image_size, self.image_size)


@pytest.fixture(scope="session")
def linear_tanh_generator():
    """The known-answer generator class (see LinearTanhGenerator)."""
    return LinearTanhGenerator
