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
    from transgan_lib.methods.transgan.train import train_gan
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


@pytest.fixture(scope="session")
def copy_run():
    """copy_run(cfg, folder) -> a TrainConfig like `cfg` whose output_dir is `folder`, holding a
    copy of cfg's checkpoint.pt (and with files=(...), of those other run files): a run the test may
    change without touching the shared one."""
    import dataclasses
    import shutil

    from transgan_lib.runs import run_paths

    def copy(cfg, folder, files=("checkpoint.pt",)):
        new = dataclasses.replace(cfg, output_dir=str(folder))
        src, dst = run_paths(cfg.output_dir, cfg.category).root, run_paths(new.output_dir, new.category).root
        dst.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy(src / name, dst / name)  # a plain copy: new path and modification time
        return new
    return copy


@pytest.fixture(scope="session")
def restored_run(demo_root, tmp_path_factory):
    """(TrainConfig, metrics, arrays) of a tiny 32 px restorer trained one epoch on the small demo, mapped
    (one probe copy per normal) and evaluated. Read-only for tests (`copy_run` it with its files)."""
    from transgan_lib.config import MappingConfig, TrainConfig
    from transgan_lib.methods.pipeline import evaluate, run_mapping
    from transgan_lib.methods.transgan.train import train_gan
    cfg = TrainConfig(data_root=str(demo_root), category="demo", output_dir=str(tmp_path_factory.mktemp("restore")),
                      image_size=32, model_size="tiny", epochs=1, batch_size=8, objective="restore",
                      restore={"head_dim": 8, "enc_depth": 1})
    train_gan(cfg, progress=False)
    config = MappingConfig(method="restore", synthetic_copies=1, batch_size=8)
    run_mapping(config, data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir, device="cpu",
                progress=False)
    metrics, arrays = evaluate(data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir,
                               method="restore")
    return cfg, metrics, arrays


@pytest.fixture(scope="session")
def evaluate_restored_copy(restored_run, copy_run, tmp_path_factory):
    """evaluate_restored_copy(map_kind) -> (TrainConfig, metrics) of a copy of `restored_run`'s restorer and
    mapping file, evaluated with `map_kind` (without baselines): a run the test may change."""
    from transgan_lib.methods.pipeline import evaluate

    def make(map_kind):
        cfg = copy_run(restored_run[0], tmp_path_factory.mktemp(f"restored_{map_kind}"),
                       files=("restorer.pt", "mapping_restore.pt"))
        metrics, _ = evaluate(data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir,
                              method="restore", map_kind=map_kind, baselines=False)
        return cfg, metrics
    return make


@pytest.fixture(scope="session")
def evaluated_run(trained_run, copy_run, tmp_path_factory):
    """(TrainConfig, MappingConfig) of a copy of `trained_run` mapped (iterative, 5 steps from the
    best of 4 prior codes, lambda_ 0.3, one CutPaste copy per normal) and evaluated without
    baselines: metrics.json and mapping_iterative.pt beside its checkpoint. Read-only for tests."""
    from transgan_lib.config import MappingConfig
    from transgan_lib.methods.pipeline import evaluate, run_mapping
    cfg = copy_run(trained_run, tmp_path_factory.mktemp("evaluated"))
    config = MappingConfig(iterations=5, candidates=4, lambda_=0.3, batch_size=8, synthetic_copies=1)
    run_mapping(config, data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir, device="cpu",
                progress=False)
    evaluate(data_root=cfg.data_root, category=cfg.category, output_dir=cfg.output_dir, baselines=False)
    return cfg, config
