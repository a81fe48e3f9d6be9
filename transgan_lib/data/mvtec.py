"""MVTec AD data layer: image/mask loading, the `MVTecAD` dataset, splits and stacking.

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
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.transforms.functional import pil_to_tensor

from ..utils import PathLike

MVTEC_CATEGORIES: Tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
IMAGE_EXTENSIONS: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
GOOD = "good"
# Defaults shared with `transgan_lib.demo` (kept here so the messages below can name them).
DEMO_CATEGORY_NAME = "demo"
LAYOUT_HELP = ("Expected layout: <data_root>/<category>/train/good/*.png, "
               "<data_root>/<category>/test/<good|defect>/*.png, "
               "<data_root>/<category>/ground_truth/<defect>/<stem>_mask.png")

_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DatasetError(ValueError):
    """A data problem (missing folder, bad layout, missing mask, unreadable image).

    The message names the path and says how to fix it.
    """


# ----------------------------------------------------------------------------- files
def list_images(folder: PathLike) -> List[Path]:
    """Image files (.png/.jpg/.jpeg/.bmp/.tif/.tiff, any case) directly in `folder`, sorted by name.

    Hidden files (e.g. macOS `._000.png` resource forks) are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


# 16-bit images are scaled by their bit depth, the same for every image (scaling each by its own
# maximum made two frames of one scene load far apart); one whose values stay below this is likely a
# 12-bit camera frame stored in 16 bits, and a note says so.
SIXTEEN_BIT_MAX = 65535
TWELVE_BIT_LIMIT = 4096
_NOTES_GIVEN: set = set()


def _note_once(kind: str, message: str) -> None:
    """A warning of `kind` once per process (a dataset of 1,000 such files gets one note, not 1,000)."""
    if kind not in _NOTES_GIVEN:
        _NOTES_GIVEN.add(kind)
        warnings.warn(message, stacklevel=3)


def _open_rgb(path: Path) -> Image.Image:
    """The file as a PIL image: "RGB" (8 bit), or "F" (grey, float in [0, 255]) for 16/32-bit grey."""
    with Image.open(path) as img:
        img.load()  # decode now, inside the caller's try: truncated files raise here
        return _to_rgb(img, path)


def _to_rgb(img: Image.Image, path: Optional[Path] = None) -> Image.Image:
    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit grey: divide by the bit depth, not the image's own maximum; kept as float ("F") so the
        # 16-bit precision survives the resize (an 8-bit round would leave a 12-bit frame 16 levels)
        arr = np.asarray(img, dtype=np.float64)
        if arr.max() < TWELVE_BIT_LIMIT:
            _note_once("12-bit", f"16-bit image(s) whose values stay below {TWELVE_BIT_LIMIT} (e.g. {path}, max "
                          f"{arr.max():.0f}): probably 12-bit camera frames; they are scaled by {SIXTEEN_BIT_MAX} "
                          "like every 16-bit image, so they load dark. Rescale them to the full 16-bit range (or "
                          "save them as 8-bit) for a brighter input")
        return Image.fromarray((np.clip(arr, 0, SIXTEEN_BIT_MAX) * (255.0 / SIXTEEN_BIT_MAX)).astype(np.float32),
                               mode="F")
    if img.mode == "P":
        img = img.convert("RGBA")  # palette with transparency converts cleanly via RGBA
    return img.convert("RGB")  # L -> 3 equal channels; RGBA/LA drop alpha


def load_image(path: PathLike, image_size: int) -> torch.Tensor:
    """Read an image file as a float tensor (3, image_size, image_size) in [-1, 1].

    Grayscale, RGBA and palette images become RGB (grayscale gives 3 equal channels); 16-bit images
    are scaled by 65535 (their bit depth); the image is resized with antialiased bilinear filtering
    (a non-square image is stretched to square, with a note). Raises DatasetError naming the file if it
    cannot be read or is truncated.
    """
    path = Path(path)
    try:
        img = _open_rgb(path)
        if img.width != img.height:
            _note_once("non-square", f"non-square images (e.g. {path}, {img.width}x{img.height}) are stretched to "
                          f"{image_size}x{image_size}; crop them to square first to keep their proportions")
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read image {path}: {e}; delete or replace it") from e
    x = torch.from_numpy(np.array(img, dtype=np.float32))  # (H, W, 3) or (H, W) in [0, 255]
    x = x.permute(2, 0, 1) if x.ndim == 3 else x[None].expand(3, -1, -1)  # (3, H, W)
    return x / 127.5 - 1.0


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a binary mask (1, H, W) to (1, size, size) so that no defect is lost.

    Enlarging: nearest neighbour. Shrinking: a cell is defective iff any pixel it covers is
    (adaptive max pooling, whose cells cover every pixel), so a scratch thinner than a cell keeps
    pixels instead of vanishing as it would under nearest neighbour; regions grow by under a cell.
    """
    m = mask[None].float()  # (1, 1, H, W)
    h, w = m.shape[-2:]
    up = (max(h, size), max(w, size))
    if up != (h, w):
        m = F.interpolate(m, size=up, mode="nearest-exact")  # (1, 1, H', W'), each side >= size
    if up != (size, size):
        m = F.adaptive_max_pool2d(m, size)  # (1, 1, size, size)
    return m[0]


def load_mask(path: PathLike, image_size: int) -> torch.Tensor:
    """Read a ground-truth mask as a float tensor (1, image_size, image_size) in {0, 1}.

    Any pixel > 0 counts as defective; resized by `resize_mask` (a shrunk mask keeps every defect).
    Raises DatasetError if unreadable.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("L")
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read mask {path}: {e}; delete or replace it") from e
    return resize_mask((pil_to_tensor(img) > 0).float(), int(image_size))  # (1, S, S) from (1, H, W)


def mask_file_size(path: PathLike) -> int:
    """The larger side in pixels of a mask file (read from its header, no decoding)."""
    try:
        with Image.open(path) as img:
            return max(img.size)
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read mask {path}: {e}; delete or replace it") from e


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


def _file_size(path: Path, what: str) -> Tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read {what} {path}: {e}; delete or replace it") from e


def check_mask_sizes(masks: Dict[Path, Path]) -> None:
    """DatasetError unless every mask has its image's width and height (read from the file headers):
    a mask of another size or aspect would be stretched onto the image and mark the wrong pixels."""
    wrong = []
    for image, mask in masks.items():
        image_size, mask_size = _file_size(image, "image"), _file_size(mask, "mask")
        if image_size != mask_size:
            wrong.append(f"{mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                         f"{image_size[0]}x{image_size[1]}")
    if wrong:
        raise DatasetError(f"{len(wrong)} mask(s) do not fit their image (a mask must have its image's width and "
                           f"height): " + "; ".join(wrong[:5]) + ("; ..." if len(wrong) > 5 else "")
                           + ". Resize or redraw those masks")


# ----------------------------------------------------------------------------- dataset
class MVTecAD(Dataset):
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
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        for name, value in (("image_size", image_size), ("mask_size", mask_size)):
            if value is not None and int(value) <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.data_root = Path(data_root)
        self.category = category
        self.split = split
        self.image_size = int(image_size)
        self.mask_size = self.image_size if mask_size is None else int(mask_size)
        self.cache = cache
        self.root = check_category_root(self.data_root, category)
        if split == "train":
            items, self._masks = _scan_train(self.root), {}
        else:
            items, self._masks = _scan_test(self.root)
        self.paths: List[str] = [str(p) for p, _ in items]
        self.defects: List[str] = [d for _, d in items]
        self.labels: List[int] = [int(d != GOOD) for d in self.defects]
        self.defect_types: List[str] = sorted(set(self.defects) - {GOOD})
        self._cache: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return load_image(self.paths[index], self.image_size), self._mask(index, self.mask_size)

    def _mask(self, index: int, size: int) -> torch.Tensor:
        if self.labels[index]:
            return load_mask(self._masks[Path(self.paths[index])], size)
        return torch.zeros(1, size, size)

    def native_mask_size(self) -> Optional[int]:
        """The larger side of the largest ground-truth mask file, in pixels (None: no mask)."""
        return max((mask_file_size(p) for p in self._masks.values()), default=None)

    def load_masks(self, size: Optional[int] = None) -> torch.Tensor:
        """Every item's mask (N, 1, S, S), S = `size` (None: `mask_size`), without decoding the
        images; shrunk masks keep every defect (`resize_mask`)."""
        size = self.mask_size if size is None else int(size)
        return torch.stack([self._mask(i, size) for i in range(len(self))])  # (N, 1, S, S)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if self.cache and index in self._cache:
            image, mask = self._cache[index]
        else:
            image, mask = self._load(index)
            if self.cache:
                self._cache[index] = (image, mask)
        return {"image": image, "label": self.labels[index], "mask": mask,
                "defect": self.defects[index], "path": self.paths[index]}

    def verify(self) -> "MVTecAD":
        """Load every image (and mask); raise DatasetError listing the unreadable files.

        Returns self, so `MVTecAD(...).verify()` chains. Fills the cache when `cache=True`.
        """
        bad = []
        for i in range(len(self)):
            try:
                self[i]
            except DatasetError as e:
                bad.append(str(e))
        if bad:
            shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
            raise DatasetError(f"{len(bad)} unreadable file(s) in {self.root} ({self.split}):\n  {shown}")
        return self

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
