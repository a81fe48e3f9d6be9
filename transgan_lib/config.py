"""Experiment configurations: one dataclass per experiment kind.

Every field is a plain value so a config can be saved inside a checkpoint (`to_dict`) and
rebuilt from it (`from_dict`). Notebook `parameters` cells use the same names.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .registry import (  # noqa: F401 (re-exported: the names configs validate against)
    MAPPING_METHODS,
    METHODS,
    OBJECTIVE_ALIASES,
    OBJECTIVES,
    RESTORE_METHOD,
    Method,
    get_method,
)

# Architecture presets. `g_dim` is the width of the first (bottom_width x bottom_width) stage;
# each pixel-shuffle upsampling divides the width by 4 (as in TransGAN) down to `g_min_dim`.
MODEL_PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(bottom_width=8, g_dim=128, g_min_dim=16, g_depths=(1, 1, 1, 1), g_heads=4,
                 d_dim=64, d_depth=2, d_heads=4, window_size=8, mlp_ratio=4),
    "small": dict(bottom_width=8, g_dim=384, g_min_dim=32, g_depths=(2, 2, 1, 1), g_heads=4,
                  d_dim=192, d_depth=3, d_heads=4, window_size=8, mlp_ratio=4),
    "base": dict(bottom_width=8, g_dim=1024, g_min_dim=64, g_depths=(5, 4, 2, 1), g_heads=4,
                 d_dim=384, d_depth=4, d_heads=4, window_size=8, mlp_ratio=4),
}


class ConfigError(ValueError):
    """A configuration value is invalid or does not match a checkpoint."""


class SavedConfig:
    """`to_dict` / `from_dict` of a config dataclass, whose plain values are saved inside the files
    it produces (checkpoints, mapping files, metrics.json) and read back from them."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]):
        return dataclass_from_dict(cls, d)


def config_from_parameters(cls, namespace: Mapping[str, Any], **overrides):
    """Build the dataclass `cls` from a notebook's parameters: every field of `cls` whose name is
    in `namespace` (e.g. `globals()` after the papermill `parameters` cell) takes that value, the
    others keep their defaults; `overrides` win over both."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in namespace.items() if k in names}, **overrides})


def dataclass_from_dict(cls, d: Dict[str, Any]):
    """`cls(**d)` with lists turned back into tuples; ConfigError naming unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return cls(**kwargs)


def check_number(cfg, name: str, kind: type = float, *, low: float = None, high: float = None,
                 low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """ConfigError unless `cfg.<name>` is a number of `kind` (int: a whole number, a float such as
    10.0 becomes 10) in the range [low, high] (`low_open` / `high_open`: that end excluded); None
    passes when `optional`. Papermill passes a mistyped value as text (`-p epochs ten`): refused here,
    before any work, instead of deep inside the training loop."""
    value, where = getattr(cfg, name), f"{type(cfg).__name__}.{name}"
    if value is None and optional:
        return
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
        setattr(cfg, name, value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (kind is int and not isinstance(value, int)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be {'a whole number' if kind is int else 'a number'}"
                          f"{' or None' if optional else ''}, got {value!r} ({type(value).__name__})")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise ConfigError(f"{where} must be {' and '.join(t for t in (lo, hi) if t)}, got {value!r}")


def check_choice(cfg, name: str, allowed) -> None:
    """ConfigError unless `cfg.<name>` is one of `allowed`, with a "did you mean" for a near miss."""
    value = getattr(cfg, name)
    if value in tuple(allowed):
        return
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{type(cfg).__name__}.{name} must be one of {tuple(allowed)}, got {value!r}.{hint}")


@dataclass
class ModelConfig(SavedConfig):
    """TransGAN generator + discriminator architecture.

    Fields left as None take their value from `MODEL_PRESETS[model_size]` in `__post_init__`.
    """
    image_size: int = 64
    model_size: str = "base"
    latent_dim: int = 1024
    channels: int = 3
    bottom_width: Optional[int] = None
    g_dim: Optional[int] = None
    g_min_dim: Optional[int] = None
    g_depths: Optional[Tuple[int, ...]] = None
    g_heads: Optional[int] = None
    d_dim: Optional[int] = None
    d_depth: Optional[int] = None
    d_heads: Optional[int] = None
    d_patch_size: Optional[int] = None
    window_size: Optional[int] = None
    mlp_ratio: Optional[int] = None
    attn_impl: str = "sdpa"  # "sdpa" (F.scaled_dot_product_attention) or "math" (matmul-softmax)
    # Per-image, per-channel scale and shift of the generator's output computed from z (zero-
    # initialised: the plain TransGAN output at the start). Gives global lighting an easy path.
    global_affine: bool = True

    def __post_init__(self):
        check_choice(self, "model_size", MODEL_PRESETS)
        check_number(self, "image_size", int, low=8)
        check_number(self, "latent_dim", int, low=1)
        check_number(self, "channels", int, low=1)
        for k, v in MODEL_PRESETS[self.model_size].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.d_patch_size is None:
            self.d_patch_size = max(2, self.image_size // 16)  # 16x16 fine tokens
        if isinstance(self.g_depths, list):
            self.g_depths = tuple(self.g_depths)
        n_up = self.image_size // self.bottom_width
        if self.image_size % self.bottom_width or n_up & (n_up - 1):
            raise ConfigError(f"image_size {self.image_size} must be bottom_width ({self.bottom_width}) "
                              "times a power of two (e.g. 32 or 64)")
        if self.image_size % (2 * self.d_patch_size):
            raise ConfigError(f"image_size {self.image_size} must be divisible by 2*d_patch_size")
        if self.attn_impl not in ("sdpa", "math"):
            raise ConfigError(f"attn_impl must be 'sdpa' or 'math', got {self.attn_impl!r}")

    @property
    def n_stages(self) -> int:
        """Number of generator stages: bottom_width, 2x, 4x, ... up to image_size."""
        return (self.image_size // self.bottom_width).bit_length()

    def stage_dims(self) -> Tuple[int, ...]:
        return tuple(max(self.g_dim // 4 ** i, self.g_min_dim) for i in range(self.n_stages))

    def stage_depths(self) -> Tuple[int, ...]:
        depths = tuple(self.g_depths)
        return tuple(depths[i] if i < len(depths) else depths[-1] for i in range(self.n_stages))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        # configs saved before `global_affine` existed describe generators without it
        return dataclass_from_dict(cls, {"global_affine": False, **d})


@dataclass
class TrainConfig(SavedConfig):
    """GAN training on the normal images of one MVTec-layout category."""
    data_root: str = "data/mvtec_ad"
    category: str = "bottle"
    output_dir: str = "runs"
    # Your own folders instead of the MVTec layout (anomalib's Folder names, `data.folder`): a set
    # normal_dir selects them, and `category` then only names the run folder
    normal_dir: Optional[str] = None
    abnormal_dir: Optional[Any] = None  # a folder, or a list of folders (one defect type each)
    mask_dir: Optional[Any] = None  # optional masks (a folder, or one per abnormal_dir)
    normal_test_dir: Optional[str] = None  # None: normal_split_ratio of normal_dir is held out as test normals
    extensions: Optional[Any] = None  # None: every image extension read (data.images.IMAGE_EXTENSIONS)
    normal_split_ratio: Optional[float] = None  # None: 0.2
    # None: the objective's own default (OBJECTIVE_DEFAULTS)
    image_size: Optional[int] = None
    model_size: Optional[str] = None
    latent_dim: int = 1024
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    beta1: float = 0.001
    beta2: float = 0.99
    loss: str = "wgan-gp"  # or "hinge"
    gp_weight: float = 10.0
    drift_weight: float = 1e-3
    n_critic: int = 1  # discriminator steps per generator step
    grad_clip: float = 5.0
    ema_decay: float = 0.999
    # DiffAugment policy; no "color": lighting is most of the normals' variation, and a colour change
    # (a stain) is itself a defect (docs/experiments.md). Add it for tiny, varied sets.
    diffaug: str = "translation,cutout"
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # "auto" (bf16 on CUDA if supported, else fp16), "bf16", "fp16", "off"
    # Reproducibility: `deterministic` makes CUDA use deterministic kernels (CPU runs already repeat
    # exactly); `threads` > 0 pins torch's CPU threads, since the thread count changes float rounding
    # (README, "Reproducibility"). 0 keeps torch's default (the number of cores).
    deterministic: bool = False
    threads: int = 0
    sample_every: int = 10  # epochs between sample grids / plots
    # epochs between checkpoints (and always after the last one): a base checkpoint is ~2.2 GB
    checkpoint_every: int = 10
    num_workers: int = 0
    model: Dict[str, Any] = field(default_factory=dict)  # extra ModelConfig overrides
    # which network trains: "gan" (the study's TransGAN on normals) or "restore" (the restorer on
    # synthetic defects, "restorer" is the same; its settings: RestoreConfig fields overridden by `restore`)
    objective: str = "gan"
    restore: Dict[str, Any] = field(default_factory=dict)  # RestoreConfig overrides
    # Fields that may change between a checkpoint and the run resuming it without a warning (`model`:
    # the architecture is checked on its own). A class attribute, not a field: it has no annotation.
    RESUME_FREE = ("epochs", "device", "num_workers", "sample_every", "checkpoint_every", "data_root",
                   "output_dir", "amp", "model", "deterministic")

    def __post_init__(self):
        self.objective = OBJECTIVE_ALIASES.get(self.objective, self.objective)
        check_choice(self, "objective", OBJECTIVES)
        for name, value in OBJECTIVE_DEFAULTS[self.objective].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check_choice(self, "loss", ("wgan-gp", "hinge"))
        check_choice(self, "amp", AMP_MODES)
        for name in ("epochs", "batch_size", "n_critic", "sample_every", "checkpoint_every", "latent_dim"):
            check_number(self, name, int, low=1)
        for name in ("threads", "num_workers"):
            check_number(self, name, int, low=0)
        check_number(self, "seed", int)
        check_number(self, "lr", low=0, low_open=True)
        for name in ("beta1", "beta2", "val_fraction"):
            check_number(self, name, low=0, high=1, high_open=True)
        check_number(self, "ema_decay", low=0, high=1)
        for name in ("gp_weight", "drift_weight", "grad_clip"):
            check_number(self, name, low=0)
        check_diffaug(self.diffaug)
        check_number(self, "normal_split_ratio", low=0, high=1, high_open=True, optional=True)
        for name in ("abnormal_dir", "mask_dir", "extensions"):  # a list from JSON or papermill: a tuple
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        self.restore_config()  # validate early
        self.model_config()  # validate early

    def model_config(self) -> ModelConfig:
        return ModelConfig(image_size=self.image_size, model_size=self.model_size,
                           latent_dim=self.latent_dim, **self.model)

    def restore_config(self) -> "RestoreConfig":
        return RestoreConfig.from_dict(self.restore)


# The training settings that differ between the two networks; a TrainConfig field left None takes its
# objective's. The restorer's are the settings of the README's restorer table (docs/experiments.md).
OBJECTIVE_DEFAULTS = {
    "gan": dict(image_size=64, model_size="base", epochs=350, batch_size=8, lr=1e-4),
    "restore": dict(image_size=64, model_size="tiny", epochs=40, batch_size=16, lr=5e-4),
}
AMP_MODES = ("auto", "bf16", "fp16", "off")


def check_diffaug(policy) -> None:
    """ConfigError unless `policy` is a comma-separated list of DiffAugment ops ("" or "none": none)."""
    if isinstance(policy, str) and policy.strip().lower() == "none":
        return
    ops = [op.strip() for op in str(policy or "").split(",") if op.strip()]
    unknown = [op for op in ops if op not in DIFFAUG_OPS]
    if not isinstance(policy, (str, type(None))) or unknown:
        raise ConfigError(f"TrainConfig.diffaug must list ops from {DIFFAUG_OPS} separated by commas, got {policy!r}")


DIFFAUG_OPS = ("color", "translation", "cutout")


@dataclass
class RestoreConfig(SavedConfig):
    """The restorer (`TrainConfig.objective = "restore"`, `methods.restorer`): its extra
    architecture, synthetic defects and loss weights. Saved in the checkpoint's config ("restore")."""
    enc_depth: int = 2  # transformer blocks of the image encoder
    head_dim: int = 32  # width of the segmentation head
    head_input: str = "both"  # what the head sees: "both" (input, restoration, |difference|) or "input"
    l1_weight: float = 1.0  # restoration: L1 of the restoration against the normal image
    ssim_weight: float = 1.0  # restoration: 1 - SSIM
    adv_weight: float = 0.05  # the discriminator's judgement of the restorations
    seg_weight: float = 1.0  # focal loss of the head's map against the defect mask
    focal_gamma: float = 2.0  # 0: plain BCE
    seg_detach: bool = True  # the head's loss does not reach the restorer
    sources: str = "foreign,self,cutpaste,texture"  # synthetic defect sources (`data.synthetic`)
    mask_kinds: str = "noise,strip,blob"
    opacity_min: float = 0.5  # blending opacity drawn in [opacity_min, 1]
    p_defect: float = 0.75  # fraction of training images given a defect (the rest stay normal)

    def __post_init__(self):
        if self.head_input not in ("both", "input"):
            raise ConfigError(f"head_input must be 'both' or 'input', got {self.head_input!r}")
        check_number(self, "enc_depth", int, low=1)
        check_number(self, "head_dim", int, low=1)
        for name in ("l1_weight", "ssim_weight", "adv_weight", "seg_weight", "focal_gamma"):
            check_number(self, name, low=0)
        check_number(self, "opacity_min", low=0, high=1)
        check_number(self, "p_defect", low=0, high=1, low_open=True)


FEATURE_KINDS = ("discriminator", "perceptual", "none")
MAP_KINDS = ("residual", "shift_residual", "ssim", "msgms")
DEFECT_MAP_KIND = "defect"  # the restorer head's map: one more map kind
FUSED_MAP_KIND = "fused"  # the restorer head's map fused with the patch distance (`methods.restorer.fusion`)
RESTORER_MAP_KINDS = (DEFECT_MAP_KIND, FUSED_MAP_KIND)  # kinds only a restorer has
SELECTION_DEFECTS = ("auto", "cutpaste", "probe")
THRESHOLD_RULES = ("conformal", "percentile")


@dataclass
class MappingConfig(SavedConfig):
    """Latent mapping and scoring of one category (notebooks 03 and 04, `python -m transgan_lib score`).

    Saved inside the mapping file `mapping_<method>.pt` and in metrics.json ("mapping_config"), and
    read back from there by evaluation and scoring, so new images are scored exactly as the
    evaluated ones were.
    """
    method: str = "iterative"  # one of MAPPING_METHODS, or RESTORE_METHOD (a trained restorer, one pass)
    iterations: Optional[int] = 1000  # as given; `methods.transgan.mapping.resolve_iterations` gives the steps run
    lambda_: float = 0.1  # weight of the feature term of the mapping loss
    feature: str = "discriminator"  # one of FEATURE_KINDS
    restarts: int = 1  # initial codes per image, the best kept
    candidates: int = 0  # prior codes screened per image (0: off)
    batch_size: int = 32  # images searched at once (changes nothing but rounding)
    seed: int = 0  # base of the per-image initial codes and of the CutPaste copies
    lr: float = 0.01  # Adam step size on z
    synthetic_copies: int = 3  # synthetic copies of each validation normal (map-kind choice)
    # which copies: "auto" (CutPaste for the TransGAN, which trained on normals alone; probe defects,
    # `data.probe_defects`, for the restorer, which trained on CutPaste among others), "cutpaste" or "probe";
    # never a family the network trained on (`pipeline.selection_family`)
    selection_defects: str = "auto"
    # "auto" (chosen on validation normals and their copies) or one of MAP_KINDS (or "defect": the
    # restorer head's map, or "fused": that map with the patch distance; method "restore" only)
    map_kind: str = "auto"
    sigma: float = 4.0  # Gaussian smoothing of the map, pixels
    # decision threshold (`metrics.conformal_threshold`): "conformal", the calibration normals' order statistic
    # that flags at most fpr_target of new normals in expectation; or "percentile", their threshold_q-th percentile
    threshold_rule: str = "conformal"
    fpr_target: float = 0.05
    threshold_q: float = 99.0
    # a folder of good images apart from every split, for the threshold only (none: the validation normals,
    # on which the map is also chosen); the test normals' FPR holds only if nothing was chosen on them
    calibration_dir: Optional[str] = None

    def __post_init__(self):
        if self.method in METHODS:  # the registry's name: "restorer" is scored as "restore"
            self.method = METHODS[self.method].scoring
        for name, value, allowed in (("method", self.method, MAPPING_METHODS + (RESTORE_METHOD,)),
                                     ("feature", self.feature, FEATURE_KINDS),
                                     ("selection_defects", self.selection_defects, SELECTION_DEFECTS),
                                     ("map_kind", self.map_kind, ("auto",) + RESTORER_MAP_KINDS + MAP_KINDS),
                                     ("threshold_rule", self.threshold_rule, THRESHOLD_RULES)):
            if value not in allowed:
                raise ConfigError(f"MappingConfig.{name} must be one of {allowed}, got {value!r}")
        if self.method == "encoder" and self.restarts != 1:
            raise ConfigError("method='encoder' has a single code per image; restarts must be 1")
        check_number(self, "iterations", int, low=0, optional=True)
        for name in ("restarts", "batch_size"):
            check_number(self, name, int, low=1)
        for name in ("candidates", "synthetic_copies"):
            check_number(self, name, int, low=0)
        check_number(self, "seed", int)
        # the search loss is (1 - λ)·R + λ·F: outside [0, 1] one term is rewarded for growing
        check_number(self, "lambda_", low=0, high=1)
        check_number(self, "lr", low=0, low_open=True)
        check_number(self, "sigma", low=0)
        check_number(self, "threshold_q", low=0, high=100, low_open=True)
        check_number(self, "fpr_target", low=0, high=1, low_open=True, high_open=True)
        if self.calibration_dir is not None:
            self.calibration_dir = str(self.calibration_dir)


@dataclass
class EncoderConfig(SavedConfig):
    """Training of the f-AnoGAN encoder (`methods.transgan.encoder.train_encoder`); saved in
    encoder.pt, which is reused only for the same settings and GAN checkpoint."""
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4
    kappa: float = 1.0  # weight of the discriminator-feature MSE
    seed: int = 0
    model_size: str = "tiny"

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            check_number(self, name, int, low=1)
        check_number(self, "lr", low=0, low_open=True)
        check_number(self, "kappa", low=0)
        check_number(self, "seed", int)
        check_choice(self, "model_size", MODEL_PRESETS)

