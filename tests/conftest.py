"""Shared fixtures: a small demo category and a tiny TransGAN trained on it for one epoch."""
import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

SMALL_DEMO = dict(n_train=40, n_test_good=6, n_test_per_defect=3, size=64)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo category in MVTec layout: 40 train, 6 good + 9 defective test images."""
    from transgan_lib.demo import DEMO_CATEGORY, ensure_demo_data
    root = tmp_path_factory.mktemp("mvtec")
    ensure_demo_data(root, DEMO_CATEGORY, **SMALL_DEMO)
    return root


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory):
    """TrainConfig of a tiny 32-px TransGAN trained for one epoch on the small demo."""
    from transgan_lib.config import TrainConfig
    from transgan_lib.train import train_gan
    cfg = TrainConfig(data_root=str(demo_root), category="demo", output_dir=str(tmp_path_factory.mktemp("runs")),
                      image_size=32, model_size="tiny", latent_dim=32, epochs=1, batch_size=8)
    train_gan(cfg, progress=False)
    return cfg
