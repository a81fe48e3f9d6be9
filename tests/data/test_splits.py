"""Tests for transgan_lib.data.splits: the demo is built in one place only, bad files stop early."""
import pytest

from transgan_lib.config import TrainConfig
from transgan_lib.data.mvtec import DatasetError
from transgan_lib.data.splits import open_split, train_val_split
from transgan_lib.methods.transgan.train import train_gan

from .test_mvtec import write_category


def test_corrupt_training_image_stops_before_training(tmp_path):
    """A corrupt PNG in train/good is reported when the splits are made, before any training step
    (it used to surface in the middle of an epoch), and nothing is written."""
    cat = write_category(tmp_path, n_train=6, size=32)
    bad = cat / "train" / "good" / "004.png"
    bad.write_bytes(b"not a png" * 10)
    with pytest.raises(DatasetError, match="1 unreadable") as e:
        train_val_split(tmp_path, "widget", 32, 0.2, 0)
    assert str(bad) in str(e.value)
    cfg = TrainConfig(data_root=str(tmp_path), category="widget", output_dir=str(tmp_path / "runs"),
                      image_size=32, model_size="tiny", latent_dim=16, epochs=1, batch_size=2)
    with pytest.raises(DatasetError, match="unreadable"):
        train_gan(cfg, progress=False)
    assert not (tmp_path / "runs" / "widget" / "checkpoint.pt").exists()


def test_only_the_demo_category_is_built(tmp_path):
    """A missing category other than "demo" is an error that creates nothing; "demo" is built."""
    with pytest.raises(DatasetError):
        open_split(tmp_path, "bottle", "train", 32)
    assert list(tmp_path.iterdir()) == []
    small = open_split(tmp_path / "d", "demo", "test", 32)
    assert len(small) > 0 and (tmp_path / "d" / "demo").is_dir()
