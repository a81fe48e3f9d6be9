"""Opening a category's splits: the one place where an embedded demo category (`demo.DEMO_CATEGORIES`)
is built on first use; every other category, or a user's own folders, is read as it is, with
`DatasetError` naming the fix when it is missing or mis-laid."""
from __future__ import annotations

from typing import Optional, Tuple

from torch.utils.data import Subset

from ..utils import PathLike
from .demo import DEMO_CATEGORIES, prepare_data
from .folder import FolderDataset, FolderSpec
from .images import ImageSet
from .mvtec import MVTecAD, split_train_val


def open_split(data_root: PathLike, category: str, split: str, image_size: int,
               folder: Optional[FolderSpec] = None) -> ImageSet:
    """The `split` ("train"/"test") of `<data_root>/<category>` (builds a demo category first), or of
    the user's folders `folder` when given (`data.folder`; data_root and category are then unused)."""
    if folder is not None:
        return FolderDataset(folder, split=split, image_size=image_size)
    if category in DEMO_CATEGORIES:
        prepare_data(data_root, category)
    return MVTecAD(data_root=data_root, category=category, split=split, image_size=image_size)


def train_val_split(data_root: PathLike, category: str, image_size: int, val_fraction: float,
                    seed: int, folder: Optional[FolderSpec] = None) -> Tuple[Subset, Subset]:
    """(train, validation) normals of train/good: the seeded split training and scoring share.

    Every training image is read here (and cached), so an unreadable file stops the run before
    training starts, with DatasetError naming each bad file, instead of in the middle of an epoch.
    """
    return split_train_val(open_split(data_root, category, "train", image_size, folder).verify(), val_fraction, seed)
