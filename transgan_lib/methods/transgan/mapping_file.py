"""The mapping file `<output_dir>/<category>/mapping_<method>.pt`: what notebook 03 mapped, with the
settings and the files it was mapped with, read back by notebook 04 and by scoring.

It holds one `MappingRun`: the `MappingConfig`, the fingerprints (`runs.file_fingerprint`) of the
GAN checkpoint and, for "encoder"/"hybrid", of encoder.pt, and a `MappingResult` for each of the
validation normals, the test images and the CutPaste copies of the validation normals, beside the
labels, defect names and paths of their images. Saved as plain tensors, lists and dicts (loaded
with `weights_only=True`), so a file never runs code and survives renamed classes.

Shape letters: B images, C channels, H/W image height/width.
"""
from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ...config import ConfigError, MappingConfig
from ...utils import PathLike, atomic_torch_save
from .mapping import MappingResult

MAPPING_FORMAT = 2  # 1: the dicts written before MappingConfig and the fingerprints
PARTS = ("val", "test", "val_synthetic")


@dataclass
class MappedImages:
    """One mapped set of images: its MappingResult and what identifies the images.

    labels: (B,) long, 0 normal / 1 defect; defects, paths: B strings. images (B, C, H, W) and
    masks (B, 1, H, W) only for generated images (the CutPaste copies), which no folder holds.
    """
    result: MappingResult
    labels: torch.Tensor
    defects: List[str]
    paths: List[str]
    images: Optional[torch.Tensor] = None
    masks: Optional[torch.Tensor] = None


@dataclass
class MappingRun:
    """Everything `pipeline.run_mapping` writes to mapping_<method>.pt.

    fingerprints: {"checkpoint": the GAN checkpoint's, "encoder": encoder.pt's or None}.
    model_config, train_config: the checkpoint's, as dicts (the data split is rebuilt from them).
    """
    config: MappingConfig
    fingerprints: Dict[str, Optional[str]]
    category: str
    model_config: Dict[str, Any]
    train_config: Dict[str, Any]
    val: MappedImages
    test: MappedImages
    val_synthetic: Optional[MappedImages] = None
    encoder_history: Optional[Dict[str, list]] = None

    @property
    def method(self) -> str:
        return self.config.method

    def save(self, path: PathLike) -> Path:
        """Atomically write the run to `path` (plain tensors, lists and dicts)."""
        state = {**_fields(self), "format_version": MAPPING_FORMAT, "config": self.config.to_dict()}
        for part in PARTS:
            mapped = getattr(self, part)
            state[part] = None if mapped is None else {**_fields(mapped), "result": _fields(mapped.result)}
        return atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: PathLike, method: str = "iterative") -> "MappingRun":
        """The run saved at `path`; FileNotFoundError (run notebook 03) when there is none and
        ConfigError (rerun notebook 03) for a file of an older format."""
        path = Path(path)
        fix = f"run notebook 03 (pipeline.run_mapping) with method={method!r}"
        if not path.is_file():
            raise FileNotFoundError(f"no mapping results at {path}: {fix} first")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # objects of an older version of the library
            raise ConfigError(f"{path} is not a mapping file of this version ({e.__class__.__name__}): re{fix}") from e
        if not isinstance(state, dict) or state.get("format_version") != MAPPING_FORMAT:
            raise ConfigError(f"{path} was written by an older version of transgan_lib (no MappingConfig, no "
                              f"checkpoint fingerprint): re{fix}")
        parts = {part: None if state[part] is None else
                 MappedImages(**{**state[part], "result": MappingResult(**state[part]["result"])}) for part in PARTS}
        rest = {k: state[k] for k in ("fingerprints", "category", "model_config", "train_config", "encoder_history")}
        return cls(config=MappingConfig.from_dict(state["config"]), **rest, **parts)

    def check_checkpoint(self, checkpoint_fingerprint: str, *, path: PathLike, checkpoint: PathLike) -> None:
        """ConfigError naming both files and the fix unless this run was mapped with the checkpoint
        whose fingerprint is `checkpoint_fingerprint` (`path`: where this run was read from)."""
        if self.fingerprints.get("checkpoint") != checkpoint_fingerprint:
            raise ConfigError(
                f"{path} was mapped with another GAN checkpoint than the one now at {checkpoint} (retrained or "
                f"replaced since?): rerun notebook 03 (pipeline.run_mapping) with method={self.method!r}, then "
                "notebook 04, to map and evaluate with this checkpoint")


def _fields(obj) -> Dict[str, Any]:
    """The fields of a dataclass, shallow (tensors are not copied, unlike `dataclasses.asdict`)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
