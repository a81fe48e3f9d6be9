"""Reading image and mask files: any size, 8/16-bit, grey/RGB/RGBA/palette, png/jpg/bmp/tif, as float
tensors in [-1, 1] (images, (3, S, S)) and {0, 1} (masks, (1, S, S)); shared by every data layout.

A mask shrunk below its file's size keeps every defect: a cell is defective when any pixel it covers
is (`resize_mask`), so a 3 px scratch of a 900 px mask survives at 32 px.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from ..utils import PathLike

IMAGE_EXTENSIONS: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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


def images_under(folder: PathLike) -> List[Path]:
    """Image files in `folder` and every folder below it (`list_images` of each), sorted by path."""
    folder = Path(folder)
    return sorted(p for d in [folder, *(q for q in folder.rglob("*") if q.is_dir())] for p in list_images(d))


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
                                 f"{arr.max():.0f}): probably 12-bit camera frames; they are scaled by "
                                 f"{SIXTEEN_BIT_MAX} like every 16-bit image, so they load dark. Rescale them to "
                                 "the full 16-bit range (or save them as 8-bit) for a brighter input")
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
    except READ_ERRORS as e:
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
    except READ_ERRORS as e:
        raise DatasetError(f"cannot read mask {path}: {e}; delete or replace it") from e
    return resize_mask((pil_to_tensor(img) > 0).float(), int(image_size))  # (1, S, S) from (1, H, W)


def mask_file_size(path: PathLike) -> int:
    """The larger side in pixels of a mask file (read from its header, no decoding)."""
    try:
        with Image.open(path) as img:
            return max(img.size)
    except READ_ERRORS as e:
        raise DatasetError(f"cannot read mask {path}: {e}; delete or replace it") from e


def _file_size(path: Path, what: str) -> Tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except READ_ERRORS as e:
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


GOOD = "good"  # the defect name of a normal image


class ImageSet(Dataset):
    """Labelled image files read on demand (the base of `mvtec.MVTecAD` and `folder.FolderDataset`).

    Items are dicts::

        {"image": (3, H, W) float in [-1, 1], "label": 0 good / 1 defect,
         "mask": (1, H, W) float {0, 1} (zeros for good, and for a defect without a mask),
         "defect": "good" or defect name, "path": str}

    Attributes `paths`, `labels` (list of int), `defects` (list of str), `defect_types` (sorted unique
    non-good), `has_masks`. With `cache=True` decoded tensors stay in memory after the first load.
    """

    def _set_sizes(self, split: str, image_size: int, mask_size: Optional[int], cache: bool) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        for name, value in (("image_size", image_size), ("mask_size", mask_size)):
            if value is not None and int(value) <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.split, self.image_size, self.cache = split, int(image_size), cache
        self.mask_size = self.image_size if mask_size is None else int(mask_size)

    def _set_items(self, items: List[Tuple[Path, str]], masks: Dict[Path, Path]) -> None:
        """`items`: (image path, defect name or GOOD); `masks`: {defective image: its mask file}."""
        self._masks = dict(masks)
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
        mask = self._masks.get(Path(self.paths[index])) if self.labels[index] else None
        return torch.zeros(1, size, size) if mask is None else load_mask(mask, size)

    @property
    def has_masks(self) -> bool:
        """Whether every defective image has a mask (else no pixel metric can be computed)."""
        return all(Path(p) in self._masks for p, y in zip(self.paths, self.labels) if y)

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

    def verify(self) -> "ImageSet":
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
