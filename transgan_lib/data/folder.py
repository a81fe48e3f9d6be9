"""A user's own image folders, with the parameter names of anomalib's `Folder` data module: a folder of
good parts (`normal_dir`), one or several folders of rejects (`abnormal_dir`), optional pixel masks
(`mask_dir`) and an optional folder of good test parts (`normal_test_dir`).

- Without `normal_test_dir`, a seeded `normal_split_ratio` of the good parts is held out as the test
  set's normals (never trained on); the rest is the training set (its validation normals are split off
  later, as for MVTec AD: `mvtec.split_train_val`).
- Each abnormal folder is one defect type, named after the folder.
- Masks are optional. A mask is found in `mask_dir` by the image's file name (`000.png`), or its stem
  with `_mask` (`000_mask.png`), any image extension; with several abnormal folders, `mask_dir` may hold
  one sub-folder per defect type. Without masks for every reject, the pixel metrics are reported as not
  available, never as a number.
- Any image size and aspect (stretched to `image_size` squares, with a note), 8/16-bit, grey/RGB/RGBA,
  png/jpg/bmp/tif (`images.load_image`). Relative folders are read from `root` when it is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..utils import PathLike
from .images import GOOD, IMAGE_EXTENSIONS, DatasetError, ImageSet, check_mask_sizes, list_images

PathList = Union[None, str, Sequence[str]]


def _as_tuple(value: PathList) -> Tuple[str, ...]:
    if value is None or value == "":
        return ()
    return (str(value),) if isinstance(value, (str, Path)) else tuple(str(v) for v in value)


@dataclass(frozen=True)
class FolderSpec:
    """Where a user's images are (anomalib's `Folder` names); `folder_spec_of(TrainConfig)` builds it."""
    normal_dir: str
    abnormal_dir: Tuple[str, ...] = ()
    mask_dir: Tuple[str, ...] = ()
    normal_test_dir: Optional[str] = None
    extensions: Tuple[str, ...] = IMAGE_EXTENSIONS
    normal_split_ratio: float = 0.2  # of the good parts, held out as test normals without normal_test_dir
    seed: int = 0
    root: Optional[str] = None

    @classmethod
    def create(cls, *, normal_dir: PathLike, abnormal_dir: PathList = None, mask_dir: PathList = None,
               normal_test_dir: Optional[PathLike] = None, extensions: PathList = None,
               normal_split_ratio: float = 0.2, seed: int = 0, root: Optional[PathLike] = None) -> "FolderSpec":
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in _as_tuple(extensions))
        spec = cls(normal_dir=str(normal_dir), abnormal_dir=_as_tuple(abnormal_dir), mask_dir=_as_tuple(mask_dir),
                   normal_test_dir=None if normal_test_dir in (None, "") else str(normal_test_dir),
                   extensions=exts or IMAGE_EXTENSIONS, normal_split_ratio=float(normal_split_ratio),
                   seed=int(seed), root=None if root in (None, "") else str(root))
        if not 0 <= spec.normal_split_ratio < 1:
            raise DatasetError(f"normal_split_ratio must be in [0, 1), got {normal_split_ratio}")
        if spec.normal_test_dir is None and spec.abnormal_dir and spec.normal_split_ratio == 0:
            raise DatasetError("no good test parts: give normal_test_dir, or normal_split_ratio > 0 to hold some of "
                               "normal_dir's images out of training for the test set")
        if len(spec.mask_dir) > 1 and len(spec.mask_dir) != len(spec.abnormal_dir):
            raise DatasetError(f"{len(spec.mask_dir)} mask_dir folders for {len(spec.abnormal_dir)} abnormal_dir "
                               "folders: give one mask_dir (masks of every defect type) or one per abnormal_dir")
        return spec

    def path(self, folder: str) -> Path:
        return Path(self.root) / folder if self.root is not None else Path(folder)


def _images(spec: FolderSpec, folder: str, what: str) -> List[Path]:
    path = spec.path(folder)
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder")
    found = [p for p in list_images(path) if p.suffix.lower() in spec.extensions]
    if not found:
        raise DatasetError(f"{what} {path} holds no images ({'/'.join(spec.extensions)})")
    return found


def _find_mask(spec: FolderSpec, index: int, image: Path) -> Optional[Path]:
    """The mask of the `index`-th abnormal folder's `image`: the same name, or its stem with `_mask`."""
    if not spec.mask_dir:
        return None
    folder = spec.path(spec.mask_dir[index if len(spec.mask_dir) > 1 else 0])
    candidates = [folder, folder / Path(spec.abnormal_dir[index]).name] if len(spec.mask_dir) == 1 else [folder]
    for base in candidates:
        for stem in (image.stem, f"{image.stem}_mask"):
            for ext in IMAGE_EXTENSIONS:
                for name in (f"{stem}{ext}", f"{stem}{ext.upper()}"):
                    if (base / name).is_file():
                        return base / name
    return None


def _normal_split(spec: FolderSpec) -> Tuple[List[Path], List[Path]]:
    """(training normals, test normals): normal_test_dir's, or a seeded normal_split_ratio of normal_dir's."""
    normals = _images(spec, spec.normal_dir, "normal_dir")
    if spec.normal_test_dir is not None:
        return normals, _images(spec, spec.normal_test_dir, "normal_test_dir")
    n_test = int(round(len(normals) * spec.normal_split_ratio))
    if spec.normal_split_ratio > 0:
        n_test = min(max(n_test, 1), len(normals) - 1)
    g = torch.Generator().manual_seed(spec.seed)
    order = torch.randperm(len(normals), generator=g).tolist()
    held = set(order[:n_test])
    return ([p for i, p in enumerate(normals) if i not in held], [p for i, p in enumerate(normals) if i in held])


FOLDER_PARAMETERS = ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir", "extensions", "normal_split_ratio")


def folder_spec_of(cfg) -> Optional[FolderSpec]:
    """The FolderSpec of a config (or dict, e.g. a notebook's globals()) with FOLDER_PARAMETERS (`TrainConfig`),
    None when its normal_dir is not set (the MVTec layout under data_root/category). The test normals held
    out of normal_dir are the same for every training seed (split seed 0), so seeds are compared on one
    test set."""
    get = cfg.get if isinstance(cfg, dict) else lambda name, default=None: getattr(cfg, name, default)
    if not get("normal_dir"):
        return None
    ratio = get("normal_split_ratio")
    return FolderSpec.create(normal_dir=get("normal_dir"), abnormal_dir=get("abnormal_dir"), mask_dir=get("mask_dir"),
                             normal_test_dir=get("normal_test_dir"), extensions=get("extensions"),
                             normal_split_ratio=0.2 if ratio is None else ratio)


class FolderDataset(ImageSet):
    """The "train" (good parts) or "test" split (held-out good parts, then each abnormal folder) of a
    `FolderSpec`, items as `ImageSet`'s. Defect names are the abnormal folders' names."""

    def __init__(self, spec: FolderSpec, *, split: str = "train", image_size: int = 64,
                 mask_size: Optional[int] = None, cache: bool = True):
        self._set_sizes(split, image_size, mask_size, cache)
        self.spec, self.category = spec, Path(spec.normal_dir).name
        self.root = spec.path(spec.normal_dir)
        train, test_normals = _normal_split(spec)  # at least one image each way (or normal_test_dir's)
        items: List[Tuple[Path, str]] = [(p, GOOD) for p in (train if split == "train" else test_normals)]
        masks: Dict[Path, Path] = {}
        names = [Path(d).name for d in spec.abnormal_dir]
        if len(set(names)) != len(names):
            raise DatasetError(f"abnormal_dir folders must have distinct names (they name the defect types): {names}")
        for i, folder in enumerate(spec.abnormal_dir if split == "test" else ()):
            for image in _images(spec, folder, "abnormal_dir"):
                items.append((image, names[i]))
                mask = _find_mask(spec, i, image)
                if mask is not None:
                    masks[image] = mask
        if spec.mask_dir and split == "test" and len(masks) < sum(d != GOOD for _, d in items):
            missing = next(p for p, d in items if d != GOOD and p not in masks)
            raise DatasetError(f"mask_dir is given but {missing} has no mask there (looked for {missing.name} and "
                               f"{missing.stem}_mask.*): add the missing masks, or leave mask_dir out for image "
                               "metrics only")
        check_mask_sizes(masks)
        self._set_items(items, masks)

    def __repr__(self) -> str:
        return (f"FolderDataset(normal_dir={self.spec.normal_dir!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size}, defect_types={self.defect_types}, masks={self.has_masks})")


__all__ = ["FOLDER_PARAMETERS", "FolderSpec", "FolderDataset", "folder_spec_of"]
