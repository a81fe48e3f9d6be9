"""The run folder: every file the library writes under `<output_dir>/<category>/`, named once.

Users' scripts read these names, so they are an interface: add, never rename.

    <output_dir>/<category>/
        checkpoint.pt                    GAN training state (resumable; `gan.checkpoint`)
        encoder.pt                       f-AnoGAN encoder of that GAN (`detection.encoder_training`)
        mapping_<method>.pt              latent mapping of validation/test images (`detection.pipeline`)
        mapping_<method>.json            notebook 03's summary
        metrics.json                     notebook 04's metrics
        history.{json,csv,png}           per-epoch training history
        samples_epoch_<NNNN>.png, samples_latest.png
        data_summary.json, train_summary.json
        notebooks/<notebook>.ipynb       executed notebooks (the demo job)
    <output_dir>/cifar/<anomaly_class>/  CIFAR runs (`cifar_one_class_normal/` for the inverse protocol)
        checkpoint.pt, metrics.json;     <output_dir>/cifar/summary.csv for all classes
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .utils import PathLike


@dataclass(frozen=True)
class RunPaths:
    """The files of one category's run under `<output_dir>/<category>/`."""
    output_dir: Path
    category: str

    @property
    def root(self) -> Path:
        return Path(self.output_dir) / self.category

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def encoder(self) -> Path:
        return self.root / "encoder.pt"

    def mapping(self, method: str) -> Path:
        return self.root / f"mapping_{method}.pt"

    def mapping_summary(self, method: str) -> Path:
        return self.root / f"mapping_{method}.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def history(self, suffix: str) -> Path:
        """history.json, history.csv or history.png (`suffix` without the dot)."""
        return self.root / f"history.{suffix}"

    def samples(self, epoch: int = None) -> Path:
        """samples_epoch_<NNNN>.png for `epoch`, samples_latest.png for None."""
        return self.root / ("samples_latest.png" if epoch is None else f"samples_epoch_{epoch:04d}.png")

    @property
    def data_summary(self) -> Path:
        return self.root / "data_summary.json"

    @property
    def train_summary(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"


def run_paths(output_dir: PathLike, category: str) -> RunPaths:
    """The run folder of `category` under `output_dir`."""
    return RunPaths(Path(output_dir), category)


def cifar_root(output_dir: PathLike, protocol: str = "one_vs_rest_anomaly") -> Path:
    """`<output_dir>/cifar` (the inverse protocol: `<output_dir>/cifar_one_class_normal`)."""
    return Path(output_dir) / ("cifar" if protocol == "one_vs_rest_anomaly" else f"cifar_{protocol}")


def cifar_run_dir(output_dir: PathLike, protocol: str, anomaly_class) -> Path:
    """`cifar_root/<anomaly_class>`: checkpoint.pt and metrics.json of one class."""
    return cifar_root(output_dir, protocol) / str(anomaly_class)
