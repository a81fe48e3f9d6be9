"""MVTec AD data layer: the `MVTecAD` dataset, its layout checks, splits and stacking (files: `images`).

Shape letters: N images, C channels (3 for images, 1 for masks), H, W height and width.
Images are float tensors in [-1, 1] of shape (3, H, W); masks are float {0, 1} of shape (1, H, W).
A mask shrunk below its file's size keeps every defect: a cell is defective when any pixel it covers
is (`resize_mask`), so a 3 px scratch of a 900 px mask survives at 32 px.

Expected folder layout (the layout of the official MVTec AD archive)::

    <data_root>/<category>/train/good/*.png
    <data_root>/<category>/test/good/*.png
    <data_root>/<category>/test/<defect>/*.png
    <data_root>/<category>/ground_truth/<defect>/<stem>_mask.png

Any category folder in this layout works, not only the 15 official ones (the embedded demo
category of `transgan_lib.data.demo` uses it too). Every layout problem raises `DatasetError` when the
dataset is constructed, so a user learns about it before training.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, Subset

from ..utils import PathLike
from .images import (  # noqa: F401 (re-exported: the names users import from here)
    READ_ERRORS, GOOD, IMAGE_EXTENSIONS, SIXTEEN_BIT_MAX, TWELVE_BIT_LIMIT, DatasetError, ImageSet, check_mask_sizes,
    list_images, load_image, load_mask, mask_file_size, resize_mask)

MVTEC_CATEGORIES: Tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
# Defaults shared with `transgan_lib.demo` (kept here so the messages below can name them).
DEMO_CATEGORY_NAME = "demo"
LAYOUT_HELP = ("Expected layout: <data_root>/<category>/train/good/*.png, "
               "<data_root>/<category>/test/<good|defect>/*.png, "
               "<data_root>/<category>/ground_truth/<defect>/<stem>_mask.png")



def find_mask(category_root: Path, defect: str, image_path: Path) -> Optional[Path]:
    """The mask file `ground_truth/<defect>/<stem>_mask.<ext>` of a test image, or None."""
    folder = category_root / "ground_truth" / defect
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{image_path.stem}_mask{ext}",
                          folder / f"{image_path.stem}_mask{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def find_categories(data_root: PathLike) -> List[str]:
    """Names of the sub-folders of `data_root` that look like MVTec categories (have train/good)."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        return []
    return sorted(p.name for p in data_root.iterdir() if (p / "train" / GOOD).is_dir())


# ----------------------------------------------------------------------------- checks
def _missing_root_message(data_root: Path, category: str) -> str:
    return (f"data_root {data_root} is missing. Either download MVTec AD from {MVTEC_URL} "
            f"and extract it so that {data_root / category / 'train' / GOOD} exists, or use the "
            f"embedded demo category: category='{DEMO_CATEGORY_NAME}' and call "
            f"transgan_lib.data.demo.prepare_data('{data_root}', '{DEMO_CATEGORY_NAME}') "
            f"(or ensure_demo_data) once to build it")


def _missing_category_message(data_root: Path, category: str) -> str:
    found = find_categories(data_root)
    found_txt = ", ".join(found) if found else "none"
    msg = (f"category folder {data_root / category} is missing (or has no train/good). "
           f"Categories found under {data_root}: {found_txt}. {LAYOUT_HELP}.")
    nested = [p for p in sorted(data_root.iterdir())
              if p.is_dir() and (p / category / "train" / GOOD).is_dir()]
    if nested:
        msg += f" Found it one level deeper: set data_root={nested[0]}."
    elif (data_root / category / category / "train" / GOOD).is_dir():
        msg += f" Found it nested twice: set data_root={data_root / category}."
    close = difflib.get_close_matches(category, list(found) + list(MVTEC_CATEGORIES), n=1)
    if close and close[0] != category:
        msg += f" Did you mean '{close[0]}'?"
    if category == DEMO_CATEGORY_NAME:
        msg += (f" Build the demo first: transgan_lib.data.demo.prepare_data('{data_root}', "
                f"'{DEMO_CATEGORY_NAME}').")
    elif category in MVTEC_CATEGORIES:
        msg += f" Get MVTec AD from {MVTEC_URL}."
    return msg


def check_category_root(data_root: PathLike, category: str) -> Path:
    """Return `<data_root>/<category>` or raise DatasetError saying what is wrong and the fix."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise DatasetError(_missing_root_message(data_root, category))
    if (data_root / "train" / GOOD).is_dir() and not (data_root / category).is_dir():
        raise DatasetError(
            f"data_root {data_root} looks like a category folder itself (it has train/good): "
            f"point data_root at the parent folder, i.e. data_root={data_root.parent}, "
            f"category='{data_root.name}'")
    root = data_root / category
    if not (root / "train" / GOOD).is_dir():
        raise DatasetError(_missing_category_message(data_root, category))
    return root


def _scan_train(root: Path) -> List[Tuple[Path, str]]:
    folder = root / "train" / GOOD
    images = list_images(folder)
    if not images:
        raise DatasetError(f"training folder {folder} has no images "
                           f"({'/'.join(IMAGE_EXTENSIONS)}); add the normal training images there")
    return [(p, GOOD) for p in images]


def _scan_test(root: Path) -> Tuple[List[Tuple[Path, str]], Dict[Path, Path]]:
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"test folder {test_dir} is missing. {LAYOUT_HELP}")
    items: List[Tuple[Path, str]] = []
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        items += [(p, sub.name) for p in list_images(sub)]
    if not items:
        raise DatasetError(f"test folder {test_dir} has no images; put test images in "
                           f"{test_dir}/good and {test_dir}/<defect>")
    masks: Dict[Path, Path] = {}
    missing = []
    for path, defect in items:
        if defect == GOOD:
            continue
        mask = find_mask(root, defect, path)
        if mask is None:
            missing.append((path, root / "ground_truth" / defect / f"{path.stem}_mask.png"))
        else:
            masks[path] = mask
    if missing:
        img, expected = missing[0]
        raise DatasetError(f"{len(missing)} defect test image(s) have no mask; first: {img} "
                           f"expects mask {expected}. Add the masks or remove those images")
    check_mask_sizes(masks)
    return items, masks


# ----------------------------------------------------------------------------- dataset
class MVTecAD(ImageSet):
    """One category of MVTec AD (or any folder in its layout), split "train" or "test".

    Items are dicts::

        {"image": (3, H, W) float in [-1, 1], "label": 0 good / 1 defect,
         "mask": (1, H, W) float {0, 1} (zeros for good), "defect": "good" or defect name,
         "path": str}

    in sorted, deterministic order (by defect folder, then file name). Attributes `paths`,
    `labels` (list of int), `defects` (list of str) and `defect_types` (sorted unique non-good).
    Masks are `mask_size` px (None: `image_size`); `load_masks` reads the masks alone, at any size.
    With `cache=True` decoded tensors stay in memory after the first load.
    All layout errors raise DatasetError here, at construction; unreadable images raise when
    loaded (call `verify()` to check every file up front).
    """

    def __init__(self, *, data_root: PathLike, category: str, split: str = "train",
                 image_size: int = 64, mask_size: Optional[int] = None, cache: bool = True):
        self._set_sizes(split, image_size, mask_size, cache)
        self.data_root = Path(data_root)
        self.category = category
        self.root = check_category_root(self.data_root, category)
        if split == "train":
            items, self._masks = _scan_train(self.root), {}
        else:
            items, self._masks = _scan_test(self.root)
        self._set_items(items, self._masks)

    def __repr__(self) -> str:
        return (f"MVTecAD(category={self.category!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size}, mask_size={self.mask_size}, defect_types={self.defect_types})")


# ----------------------------------------------------------------------------- helpers
def split_train_val(dataset: Dataset, val_fraction: float = 0.1,
                    seed: int = 0) -> Tuple[Subset, Subset]:
    """Split the normal training images into (train, val) subsets by a seeded permutation.

    Validation normals are for model selection and for choosing thresholds; the test set is
    never used for either. At least one validation image when `val_fraction > 0` and the
    dataset has >= 2 images; at least one training image always.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(dataset)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g).tolist()
    return Subset(dataset, sorted(perm[n_val:])), Subset(dataset, sorted(perm[:n_val]))


def stack_dataset(dataset: Dataset) -> dict:
    """Load every item into stacked tensors.

    Returns {"images": (N, 3, H, W), "masks": (N, 1, H, W), "labels": (N,) long,
    "defects": list[str], "paths": list[str]}.
    """
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise DatasetError("cannot stack an empty dataset")
    return {
        "images": torch.stack([it["image"] for it in items]),  # (N, 3, H, W)
        "masks": torch.stack([it["mask"] for it in items]),  # (N, 1, H, W)
        "labels": torch.tensor([int(it["label"]) for it in items], dtype=torch.long),
        "defects": [it["defect"] for it in items],
        "paths": [it["path"] for it in items],
    }


__all__: Sequence[str] = (
    "MVTEC_CATEGORIES", "IMAGE_EXTENSIONS", "DatasetError", "MVTecAD", "load_image", "load_mask",
    "resize_mask", "mask_file_size", "list_images", "find_mask", "find_categories", "check_category_root",
    "split_train_val", "stack_dataset",
)
