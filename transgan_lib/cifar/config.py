"""Settings of the dual-discriminator CIFAR / image-folder method (notebook 05 uses the same names), its
loss and score part names, and where a run's files go.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Tuple, Union

from ..config import AMP_MODES, ConfigError, ModelConfig, check_choice, check_number, dataclass_from_dict
from ..runs import RunPaths, cifar_root, cifar_run_dir, run_paths
from .data import DATASETS
from .losses import D_LOSSES
from .model import FEATURE_EXTRACTORS

# Encoder defaults per model size: (feature extractor, encoder input size). `tiny`: a small conv net
# trained with the model, for CPUs (docs/experiments.md); `base`: the study's ImageNet ResNet50.
ENCODER_PRESETS: Dict[str, Tuple[str, int]] = {
    "tiny": ("convnet", 32), "small": ("resnet50", 128), "base": ("resnet50", 224)}
LOSS_NAMES = ("l1", "patch", "latent", "adv_normal", "adv_anomalous", "abc")
SCORE_PARTS = ("l1", "patch", "latent", "nearest", "features", "anomalies", "d_anomalous")  # see cifar.score
SCORE_COMBINERS = ("sum", "logistic")


@dataclass
class CifarConfig:
    """Imbalanced anomaly detection with two discriminators (notebook 05 uses the same names)."""
    dataset: str = "cifar10"  # "cifar10", "folder" or "digits" (scikit-learn's bundled digits, offline)
    data_root: str = "data"
    download: bool = True
    anomaly_class: Union[int, str] = 0  # index into the sorted class names, or a name
    protocol: str = "one_vs_rest_anomaly"  # or "one_class_normal" (anomaly_class = the normal class)
    labelled_anomaly_ratio: float = 0.05
    val_fraction: float = 0.1
    max_train_images: Optional[int] = None  # seeded subset of the train split (e.g. for CPU runs)
    max_test_images: Optional[int] = None
    image_size: int = 32
    model_size: str = "base"
    latent_dim: int = 256
    feature_extractor: Optional[str] = None  # "resnet50" / "resnet18" / "convnet"; None: ENCODER_PRESETS
    encoder_input_size: Optional[int] = None  # None: ENCODER_PRESETS
    pretrained: bool = True  # ImageNet weights for a ResNet (a convnet has none)
    finetune_encoder: Optional[bool] = None  # None: train the encoder unless it holds ImageNet weights
    head_hidden: int = 512
    epochs: int = 15
    batch_size: int = 64
    anomaly_batch_size: Optional[int] = None  # None: max(1, batch_size // 4)
    lr: float = 1e-4
    beta1: float = 0.001
    beta2: float = 0.99
    d_loss: str = "hinge"  # or "bce"
    grad_clip: float = 5.0
    ema_decay: float = 0.995  # EMA of the reconstruction model, which scores (warm-up: see training.stack.build_ema)
    w_l1: float = 10.0
    w_patch: float = 10.0
    w_latent: float = 1.0
    w_adv_normal: float = 1.0
    w_adv_anomalous: float = 3.0  # chosen on validation data (README): 3 beat 1 and 5
    w_abc: float = 1.0
    patch_size: int = 8
    patch_top_k: int = 4
    abc_eps: float = 1e-6
    # Chosen on validation data (README): how far from the normals and how near the labelled anomalies the
    # trained encoder puts an image; the other parts are reported
    score_weights: Dict[str, float] = field(default_factory=lambda: {"features": 1.0, "anomalies": 1.0})
    # "logistic": a logistic regression on all parts, fitted on the validation normals against the labelled
    # anomalies (cifar.score.fit_combiner; chosen on validation data, README; without labelled anomalies: the
    # sum); "sum": the weighted sum above
    score_combiner: str = "logistic"
    threshold_percentile: float = 99.0
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # as TrainConfig: bf16/fp16 autocast on CUDA, fp32 on CPU
    checkpoint_every: int = 1
    resume: bool = True  # continue from run_dir's checkpoint.pt if there is one (a finished run is loaded)
    progress: bool = True
    model: Dict[str, Any] = field(default_factory=dict)  # extra ModelConfig overrides
    # Fields that may differ between a checkpoint and the config that resumes it (`training.stack.check_resume`)
    # (score_weights and threshold_percentile only score: a finished run is re-scored with new ones)
    RESUME_FREE: ClassVar[Tuple[str, ...]] = ("epochs", "resume", "device", "progress", "amp", "checkpoint_every",
                                              "download", "output_dir", "score_weights", "threshold_percentile",
                                              "score_combiner")

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.protocol not in ("one_vs_rest_anomaly", "one_class_normal"):
            raise ConfigError(f"protocol must be 'one_vs_rest_anomaly' or 'one_class_normal', got {self.protocol!r}")
        if self.d_loss not in D_LOSSES:
            raise ConfigError(f"d_loss must be one of {D_LOSSES}, got {self.d_loss!r}")
        preset = ENCODER_PRESETS.get(self.model_size, ENCODER_PRESETS["base"])
        self.feature_extractor = self.feature_extractor or preset[0]
        self.encoder_input_size = self.encoder_input_size or preset[1]
        if self.finetune_encoder is None:  # random weights must learn; ImageNet ones stay as they are
            self.finetune_encoder = not (self.pretrained and self.feature_extractor != "convnet")
        if self.feature_extractor not in FEATURE_EXTRACTORS:
            raise ConfigError(f"feature_extractor must be one of {list(FEATURE_EXTRACTORS)}, "
                              f"got {self.feature_extractor!r}")
        unknown = sorted(set(self.score_weights) - set(SCORE_PARTS))
        if unknown:
            raise ConfigError(f"score_weights has unknown parts {unknown}; known: {list(SCORE_PARTS)}")
        check_number(self, "epochs", int, low=0)  # 0: the untrained model, scored (a floor)
        for name in ("batch_size", "checkpoint_every", "image_size", "latent_dim", "head_hidden", "patch_size",
                     "patch_top_k"):
            check_number(self, name, int, low=1)
        for name in ("anomaly_batch_size", "max_train_images", "max_test_images"):
            check_number(self, name, int, low=1, optional=True)
        check_number(self, "seed", int)
        for name in ("labelled_anomaly_ratio", "val_fraction", "beta1", "beta2"):
            check_number(self, name, low=0, high=1, high_open=True)
        check_number(self, "ema_decay", low=0, high=1)
        for name in ("lr", "abc_eps"):
            check_number(self, name, low=0, low_open=True)
        for name in ("grad_clip",) + tuple(f"w_{loss}" for loss in LOSS_NAMES):
            check_number(self, name, low=0)
        check_number(self, "threshold_percentile", low=0, high=100, low_open=True)
        check_choice(self, "amp", AMP_MODES)
        check_choice(self, "score_combiner", SCORE_COMBINERS)
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        self.model_config()  # validate early

    def model_config(self) -> ModelConfig:
        return ModelConfig(image_size=self.image_size, model_size=self.model_size,
                           latent_dim=self.latent_dim, **self.model)

    def loss_weights(self) -> Dict[str, float]:
        return {name: float(getattr(self, f"w_{name}")) for name in LOSS_NAMES}

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CifarConfig":
        return dataclass_from_dict(cls, d)


# ----------------------------------------------------------------------------- run folder
def run_root(cfg: CifarConfig) -> Path:
    """`<output_dir>/cifar` (the inverse protocol: `<output_dir>/cifar_one_class_normal`)."""
    return cifar_root(cfg.output_dir, cfg.protocol)


def run_dir(cfg: CifarConfig) -> Path:
    """`run_root(cfg)/<anomaly_class>`: checkpoint.pt and metrics.json of one class."""
    return cifar_run_dir(cfg.output_dir, cfg.protocol, cfg.anomaly_class)


def run_files(cfg: CifarConfig) -> RunPaths:
    """The files of one class's run in `run_dir(cfg)`: `.checkpoint`, `.metrics`."""
    return run_paths(run_root(cfg), str(cfg.anomaly_class))


__all__ = ["CifarConfig", "ENCODER_PRESETS", "LOSS_NAMES", "SCORE_PARTS", "SCORE_COMBINERS", "run_root", "run_dir",
           "run_files"]
