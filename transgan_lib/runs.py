"""The run folder: every file the library writes under `<output_dir>/<category>/`, named once.

Users' scripts read these names, so they are an interface: add, never rename.

    <output_dir>/<category>/
        checkpoint.pt                    GAN training state (resumable; `methods.transgan.checkpoint`)
        weights.pt                       its weights only (EMA G, D, configs): what scoring needs
        encoder.pt                       f-AnoGAN encoder of that GAN (`methods.transgan.encoder`)
        restorer.pt                      restorer training state (objective "restore"; `methods.restorer.train`)
        mapping_<method>.pt              latent mapping of validation/test images (`methods.pipeline`)
        mapping_<method>.json            notebook 03's summary
        metrics.json                     notebook 04's metrics (of the method it ran last)
        metrics_<method>.json            the same, one file per method (iterative, encoder, hybrid, restore)
        history.{json,csv,png}           per-epoch training history
        samples_epoch_<NNNN>.png, samples_latest.png
        data_summary.json, train_summary.json
        restore_history.{json,csv,png}, restore_samples_*.png, restore_train_summary.json
                                         the same files of the restorer's training (objective "restore")
        train_config.json, train_log.txt the TrainConfig and log of a torchrun training (`launch`)
        notebooks/<notebook>.ipynb       executed notebooks (the demo job; the benchmark: 02 there,
                                         03 and 04 in notebooks/<method>/)
        benchmark.json                   what the benchmark ran here: parameters, seconds, metrics per method
    <output_dir>/seeds/<k>/<category>/   the same, seed k of `demo --seeds N`;
    <output_dir>/seeds/<category>_summary.json   mean ± std over those seeds
    <output_dir>/results.{csv,md,png,json}   the benchmark's table over categories (`benchmark`)
    <output_dir>/cifar/<anomaly_class>/  CIFAR runs (`cifar_one_class_normal/` for the inverse protocol)
        checkpoint.pt, metrics.json;     <output_dir>/cifar/summary.csv for all classes
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .utils import PathLike


def _file(name: str, doc: str) -> property:
    """A RunPaths attribute: the file (or folder) `name` in the run folder."""
    return property(lambda self: self.root / name, doc=f"{name}: {doc}")


@dataclass(frozen=True)
class RunPaths:
    """The files of one category's run under `<output_dir>/<category>/`. `prefix` names the training
    files of one objective ("" for the GAN, "restore_" for the restorer: `run_paths(..., objective)`),
    so that a GAN and a restorer of one category live side by side."""
    output_dir: Path
    category: str
    prefix: str = ""

    checkpoint = _file("checkpoint.pt", "the GAN training state (resumable)")
    weights = _file("weights.pt", "the checkpoint's weights only (EMA G, D, configs), for scoring")
    encoder = _file("encoder.pt", "the f-AnoGAN encoder of that GAN")
    restorer = _file("restorer.pt", "the restorer's training state (objective 'restore'; resumable)")
    metrics = _file("metrics.json", "notebook 04's metrics")
    data_summary = _file("data_summary.json", "notebook 01's data summary")
    train_config = _file("train_config.json", "the TrainConfig a torchrun training was launched with")
    train_log = _file("train_log.txt", "the log of a torchrun training (`launch.train_distributed`)")
    notebooks = _file("notebooks", "the executed notebooks of the demo job")
    benchmark = _file("benchmark.json", "the benchmark's record: parameters, seconds, metrics per method")

    @property
    def root(self) -> Path:
        return Path(self.output_dir) / self.category

    def mapping(self, method: str) -> Path:
        return self.root / f"mapping_{method}.pt"

    def fusion(self, method: str) -> Path:
        """fusion_<method>.pt: the fused map's weight, standardisation and patch bank (`restorer.fusion`)."""
        return self.root / f"fusion_{method}.pt"

    def mapping_summary(self, method: str) -> Path:
        return self.root / f"mapping_{method}.json"

    @property
    def train_summary(self) -> Path:
        """train_summary.json (restore_train_summary.json): notebook 02's last epoch."""
        return self.root / f"{self.prefix}train_summary.json"

    def method_metrics(self, method: str) -> Path:
        """metrics_<method>.json: notebook 04's metrics of `method` (metrics.json holds the last run's)."""
        return self.root / f"metrics_{method}.json"

    def history(self, suffix: str) -> Path:
        """history.json, history.csv or history.png (`suffix` without the dot), prefixed."""
        return self.root / f"{self.prefix}history.{suffix}"

    def training_file(self, objective: str) -> Path:
        """The training checkpoint of an objective's network: checkpoint.pt ("gan") or restorer.pt."""
        return self.root / TRAINING_FILES[objective]

    def samples(self, epoch: int = None) -> Path:
        """samples_epoch_<NNNN>.png for `epoch`, samples_latest.png for None, prefixed."""
        return self.root / (f"{self.prefix}samples_latest.png" if epoch is None
                            else f"{self.prefix}samples_epoch_{epoch:04d}.png")


OBJECTIVE_PREFIX = {"gan": "", "restore": "restore_"}
TRAINING_FILES = {"gan": "checkpoint.pt", "restore": "restorer.pt"}


def run_paths(output_dir: PathLike, category: str, objective: str = "gan") -> RunPaths:
    """The run folder of `category` under `output_dir`; `objective` ("gan", "restore") picks the
    names of its training files (history, samples, train summary)."""
    if objective not in OBJECTIVE_PREFIX:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVE_PREFIX)}, got {objective!r}")
    return RunPaths(Path(output_dir), category, OBJECTIVE_PREFIX[objective])


def seed_output_dir(output_dir: PathLike, seed: int) -> Path:
    """`<output_dir>/seeds/<seed>`: the output_dir of one seed of a multi-seed job (its run folders
    `<category>/` lie inside)."""
    return Path(output_dir) / "seeds" / str(seed)


def seed_summary_path(output_dir: PathLike, category: str) -> Path:
    """`<output_dir>/seeds/<category>_summary.json`: mean ± std over the seeds of a multi-seed job."""
    return Path(output_dir) / "seeds" / f"{category}_summary.json"


def benchmark_results(output_dir: PathLike, suffix: str) -> Path:
    """`<output_dir>/results.<suffix>` (csv, md, png, json): the benchmark's table over categories."""
    return Path(output_dir) / f"results.{suffix}"


def cifar_root(output_dir: PathLike, protocol: str = "one_vs_rest_anomaly") -> Path:
    """`<output_dir>/cifar` (the inverse protocol: `<output_dir>/cifar_one_class_normal`)."""
    return Path(output_dir) / ("cifar" if protocol == "one_vs_rest_anomaly" else f"cifar_{protocol}")


def cifar_run_dir(output_dir: PathLike, protocol: str, anomaly_class) -> Path:
    """`cifar_root/<anomaly_class>`: checkpoint.pt and metrics.json of one class."""
    return cifar_root(output_dir, protocol) / str(anomaly_class)


FINGERPRINT_CHUNK = 1 << 20  # bytes hashed at each end of a file


def file_fingerprint(path: PathLike) -> str:
    """A cheap content fingerprint of a run file: sha256 over its size and its first and last MiB.

    It survives copying and renaming, and changes when the content does: a torch checkpoint is a
    zip whose central directory, at the end, holds the CRC32 of every entry, so a retrained
    checkpoint differs in its last MiB even when its size is the same. Reads at most 2 MiB of a
    multi-GB file. Returns "sha256:<hex>"; FileNotFoundError when the file is missing.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(FINGERPRINT_CHUNK))
        if size > FINGERPRINT_CHUNK:
            f.seek(max(size - FINGERPRINT_CHUNK, FINGERPRINT_CHUNK))
            digest.update(f.read())
    return f"sha256:{digest.hexdigest()}"


def run_paths_of(checkpoint_or_run_dir: PathLike) -> RunPaths:
    """The run folder of a checkpoint path (`<output_dir>/<category>/checkpoint.pt`) or of the
    folder itself."""
    path = Path(checkpoint_or_run_dir)
    root = path if path.is_dir() else path.parent
    return RunPaths(root.parent, root.name)
