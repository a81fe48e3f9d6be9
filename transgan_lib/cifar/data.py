"""Data for imbalanced anomaly detection on CIFAR-10 or any image-classification folder.

Shape letters: N images, C = 3 channels, H, W height and width.
Images are kept as uint8 tensors (N, 3, H, W) (CIFAR-10's 60,000 images take 184 MB instead of
737 MB as floats); `to_float` turns a batch into float [-1, 1] on the way to the model.

Three sources (`dataset`):

* ``"cifar10"``: torchvision's CIFAR-10 reader over ``<data_root>/cifar-10-batches-py`` (the
  official python-pickle batches; downloaded when `download=True` and the network allows).
* ``"folder"``: torchvision's ImageFolder layout, ``<data_root>/train/<class>/*`` and
  ``<data_root>/test/<class>/*``; grayscale images become 3 equal channels.
* ``"digits"``: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`: 1,797
  real 8x8 grayscale images of the digits 0-9, no download), upscaled bilinearly to `image_size`
  with 3 equal channels. Its train/test split is fixed (seed `DIGITS_SPLIT_SEED`, stratified: a
  `DIGITS_TEST_FRACTION` share of every class is the test split: 1,347 train, 450 test images),
  whatever the run's seed; the run's seed draws the labelled anomalies and the validation split
  from the train split, as for CIFAR-10. Runs offline, in CI and on a CPU.
* ``"photos"``: 32x32 crops of nine photos bundled with scikit-image and matplotlib, one class per photo,
  training and test crops from disjoint tiles of each photo (`cifar.photos`: 2,700 train, 900 test
  images): natural images, offline, where digits are too easy to show what training adds.

Two protocols (`protocol`), both singling out one class (`target_class`, an index into the sorted
class names or a class name):

* ``"one_vs_rest_anomaly"`` (GANomaly's CIFAR-10 protocol): the target class is the anomaly, all
  other classes are normal.
* ``"one_class_normal"`` (the inverse setting): the target class is the only normal class, all
  other classes are anomalous.

The training set holds every normal training image plus a `labelled_anomaly_ratio` fraction of the
anomalous training images, with labels (1 = anomalous); a seeded validation split is taken from it
(`val_fraction` of the normals and of the labelled anomalies); the test set is the whole test split.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torchvision
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from ..data.mvtec import DatasetError, load_image
from ..utils import PathLike
from .photos import PHOTOS, load_photos

DATASETS: Tuple[str, ...] = ("cifar10", "folder", "digits", "photos")
PROTOCOLS: Tuple[str, ...] = ("one_vs_rest_anomaly", "one_class_normal")
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES: Tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                    "horse", "ship", "truck")
_CIFAR_ERRORS = (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError)
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25


@dataclass
class LabelledImages:
    """A classification split: uint8 images (N, 3, H, W), class indices (N,), sorted class names."""
    images: torch.Tensor
    targets: torch.Tensor
    classes: List[str]

    def __len__(self) -> int:
        return int(self.targets.numel())


@dataclass
class AnomalySplit:
    """Train / validation / test images of one anomaly-detection task.

    Images are uint8 (N, 3, H, W); labels are int64 (N,) with 1 = anomalous. `test_targets` keeps
    the original class index of every test image.
    """
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_targets: torch.Tensor
    classes: List[str]
    target_class: int
    protocol: str

    def counts(self) -> Dict[str, int]:
        """Image counts: n_train_normal, n_train_anomalous, n_val_normal, n_val_anomalous,
        n_test, n_test_normal, n_test_anomalous."""
        out = {}
        for name, labels in (("train", self.train_labels), ("val", self.val_labels)):
            out[f"n_{name}_normal"] = int((labels == 0).sum())
            out[f"n_{name}_anomalous"] = int((labels == 1).sum())
        out["n_test"] = int(self.test_labels.numel())
        out["n_test_normal"] = int((self.test_labels == 0).sum())
        out["n_test_anomalous"] = int((self.test_labels == 1).sum())
        return out


# ----------------------------------------------------------------------------- helpers
def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float images (B, 3, H, W) in [-1, 1] -> uint8 (rounded, clipped)."""
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def resize_uint8(images: torch.Tensor, image_size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize uint8 images (N, 3, h, w) to (N, 3, image_size, image_size), antialiased bilinear."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    out = [to_uint8(F.interpolate(to_float(images[i:i + chunk]), size=(image_size, image_size),
                                  mode="bilinear", antialias=True, align_corners=False))
           for i in range(0, images.shape[0], chunk)]
    return torch.cat(out)


def resolve_class(target: Union[int, str], classes: List[str]) -> int:
    """The index of `target` (an index or a class name) in the sorted `classes`."""
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        raise DatasetError(f"class {target!r} not found; classes are {classes}")
    index = int(target)
    if not 0 <= index < len(classes):
        raise DatasetError(f"class index {index} out of range: there are {len(classes)} classes {classes}")
    return index


# ----------------------------------------------------------------------------- readers
def _cifar_help(root: Path) -> str:
    return (f"put the extracted '{CIFAR10_FOLDER}' folder (from {CIFAR10_URL}) under {root} "
            f"(so that {root / CIFAR10_FOLDER / 'data_batch_1'} exists), or use dataset='folder' "
            "with an ImageFolder layout <data_root>/train/<class>/*, <data_root>/test/<class>/*")


def load_cifar10(data_root: PathLike, *, train: bool, download: bool = False,
                 image_size: int = 32) -> LabelledImages:
    """CIFAR-10's train or test split via torchvision (`download=True` fetches it when missing).

    Raises DatasetError saying what to do when the files are missing and cannot be downloaded
    (e.g. offline) or are corrupted.
    """
    root = Path(data_root)
    try:
        ds = torchvision.datasets.CIFAR10(root=str(root), train=train, download=download)
    except _CIFAR_ERRORS as e:
        what = "could not download CIFAR-10" if download else "CIFAR-10 not found or corrupted"
        raise DatasetError(f"{what} in {root} ({type(e).__name__}: {e}); {_cifar_help(root)}") from e
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    targets = torch.as_tensor(ds.targets, dtype=torch.long)
    return LabelledImages(resize_uint8(images, image_size), targets, list(ds.classes))


def _is_image(path: str) -> bool:
    name = os.path.basename(path)
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")  # skip macOS "._x.png"


def _scan_folder(root: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
    """(sorted class names, [(path, class index)]) of an ImageFolder-layout folder.

    Hidden folders (e.g. Jupyter's `.ipynb_checkpoints`) are not classes.
    """
    if not root.is_dir():
        raise DatasetError(f"folder {root} not found; expected an ImageFolder layout "
                           "<data_root>/train/<class>/*, <data_root>/test/<class>/*")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class folders; put the images of each class in {root}/<class>/")
    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, is_valid_file=_is_image,
                           allow_empty=True)
    if not samples:
        raise DatasetError(f"no images ({', '.join(IMG_EXTENSIONS)}) in the class folders of {root}")
    return classes, samples


def load_image_folder(data_root: PathLike, *, split: str, image_size: int,
                      classes: Optional[List[str]] = None) -> LabelledImages:
    """Images of `<data_root>/<split>/<class>/*` as uint8 (N, 3, image_size, image_size).

    `classes` (the training split's names) fixes the class indices: a test split may lack some
    classes but must not have new ones. Unreadable images raise DatasetError naming the file.
    """
    found, samples = _scan_folder(Path(data_root) / split)
    classes = list(found) if classes is None else list(classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{Path(data_root) / split} has classes {unknown} that the training split "
                           f"lacks (training classes: {classes})")
    images = [to_uint8(load_image(path, image_size)) for path, _ in samples]  # each (3, H, W)
    targets = [classes.index(found[idx]) for _, idx in samples]
    return LabelledImages(torch.stack(images), torch.tensor(targets, dtype=torch.long), classes)


def load_digits(*, image_size: int = 32) -> Tuple[LabelledImages, LabelledImages]:
    """(train, test) of scikit-learn's 8x8 digits as uint8 (N, 3, image_size, image_size); the split
    is fixed and stratified (see module doc: 1,347 train and 450 test images)."""
    from sklearn.datasets import load_digits as sklearn_digits  # bundled with scikit-learn
    digits = sklearn_digits()
    small = torch.from_numpy(digits.images).float().mul(255.0 / 16.0).round().to(torch.uint8)  # (N, 8, 8)
    images = resize_uint8(small[:, None].expand(-1, 3, -1, -1).contiguous(), image_size)  # (N, 3, S, S)
    targets = torch.from_numpy(digits.target).long()
    g = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    is_test = torch.zeros(targets.numel(), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(targets == c).flatten()
        is_test[idx[torch.randperm(idx.numel(), generator=g)[:round(idx.numel() * DIGITS_TEST_FRACTION)]]] = True
    classes = [str(c) for c in range(10)]
    return (LabelledImages(images[~is_test], targets[~is_test], classes),
            LabelledImages(images[is_test], targets[is_test], classes))


def load_classification(dataset: str, data_root: PathLike, *, image_size: int = 32,
                        download: bool = False) -> Tuple[LabelledImages, LabelledImages]:
    """(train, test) splits of `dataset` ("cifar10", "folder" or "digits") with the same class indices."""
    if dataset == "cifar10":
        return (load_cifar10(data_root, train=True, download=download, image_size=image_size),
                load_cifar10(data_root, train=False, download=False, image_size=image_size))
    if dataset == "folder":
        train = load_image_folder(data_root, split="train", image_size=image_size)
        return train, load_image_folder(data_root, split="test", image_size=image_size,
                                        classes=train.classes)
    if dataset == "digits":
        return load_digits(image_size=image_size)
    if dataset == "photos":
        splits = load_photos()
        return tuple(LabelledImages(resize_uint8(splits[s][0], image_size), splits[s][1], list(PHOTOS))
                     for s in ("train", "test"))
    raise DatasetError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def list_classes(dataset: str, data_root: PathLike) -> List[str]:
    """Sorted class names without reading the images (CIFAR-10's are fixed)."""
    if dataset == "cifar10":
        return list(CIFAR10_CLASSES)
    if dataset == "folder":
        return _scan_folder(Path(data_root) / "train")[0]
    if dataset == "digits":
        return [str(c) for c in range(10)]
    if dataset == "photos":
        return list(PHOTOS)
    raise DatasetError(f"dataset must be one of {DATASETS}, got {dataset!r}")


# ----------------------------------------------------------------------------- split
def _subsample(data: LabelledImages, n_max: Optional[int], g: torch.Generator) -> LabelledImages:
    if n_max is None or n_max >= len(data):
        return data
    keep = torch.randperm(len(data), generator=g)[:n_max].sort().values
    return LabelledImages(data.images[keep], data.targets[keep], data.classes)


def _n_part(n: int, fraction: float, at_least_one: bool) -> int:
    k = int(round(n * fraction))
    return max(k, 1) if at_least_one and fraction > 0 and n >= 1 else k


def make_anomaly_split(train: LabelledImages, test: LabelledImages, *, target_class: Union[int, str],
                       protocol: str = "one_vs_rest_anomaly", labelled_anomaly_ratio: float = 0.05,
                       val_fraction: float = 0.1, seed: int = 0, max_train_images: Optional[int] = None,
                       max_test_images: Optional[int] = None) -> AnomalySplit:
    """Build the imbalanced training set, a validation split and the test set (see module doc).

    `max_train_images` / `max_test_images` first draw a seeded random subset of the whole train /
    test split (all classes), e.g. for CPU runs. At least one anomaly is labelled when the ratio is
    > 0; validation takes round(val_fraction * n) normals (at least one) and
    floor(val_fraction * n) labelled anomalies. The same seed gives the same split.
    """
    if protocol not in PROTOCOLS:
        raise DatasetError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not 0.0 <= labelled_anomaly_ratio <= 1.0:
        raise DatasetError(f"labelled_anomaly_ratio must be in [0, 1], got {labelled_anomaly_ratio}")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    t = resolve_class(target_class, train.classes)
    g = torch.Generator().manual_seed(int(seed))
    train, test = _subsample(train, max_train_images, g), _subsample(test, max_test_images, g)

    def is_anomalous(targets: torch.Tensor) -> torch.Tensor:
        return targets == t if protocol == "one_vs_rest_anomaly" else targets != t

    anom = is_anomalous(train.targets)
    normal_idx = torch.nonzero(~anom).flatten()
    anom_idx = torch.nonzero(anom).flatten()
    if normal_idx.numel() < 2:
        raise DatasetError(f"only {normal_idx.numel()} normal training images for class {t} "
                           f"({train.classes[t]!r}) under protocol {protocol!r}; need at least 2")
    # 1. labelled anomalies: a seeded random subset of the anomalous training images
    n_lab = _n_part(anom_idx.numel(), labelled_anomaly_ratio, at_least_one=True)
    labelled = anom_idx[torch.randperm(anom_idx.numel(), generator=g)[:n_lab]]
    # 2. validation: part of the normals and of the labelled anomalies
    normal_idx = normal_idx[torch.randperm(normal_idx.numel(), generator=g)]
    n_val_n = min(_n_part(normal_idx.numel(), val_fraction, at_least_one=True), normal_idx.numel() - 1)
    n_val_a = int(labelled.numel() * val_fraction)
    val_idx = torch.cat([normal_idx[:n_val_n], labelled[:n_val_a]])
    train_idx = torch.cat([normal_idx[n_val_n:], labelled[n_val_a:]])
    return AnomalySplit(
        train_images=train.images[train_idx], train_labels=anom[train_idx].long(),
        val_images=train.images[val_idx], val_labels=anom[val_idx].long(),
        test_images=test.images, test_labels=is_anomalous(test.targets).long(),
        test_targets=test.targets, classes=list(train.classes), target_class=t, protocol=protocol)


def load_anomaly_split(*, dataset: str = "cifar10", data_root: PathLike = "data",
                       anomaly_class: Union[int, str] = 0, protocol: str = "one_vs_rest_anomaly",
                       labelled_anomaly_ratio: float = 0.05, val_fraction: float = 0.1, seed: int = 0,
                       image_size: int = 32, download: bool = False,
                       max_train_images: Optional[int] = None,
                       max_test_images: Optional[int] = None) -> AnomalySplit:
    """Read `dataset` and build the split of `make_anomaly_split` (`anomaly_class` is its target)."""
    train, test = load_classification(dataset, data_root, image_size=image_size, download=download)
    return make_anomaly_split(train, test, target_class=anomaly_class, protocol=protocol,
                              labelled_anomaly_ratio=labelled_anomaly_ratio, val_fraction=val_fraction,
                              seed=seed, max_train_images=max_train_images,
                              max_test_images=max_test_images)


__all__ = ["DATASETS", "PROTOCOLS", "CIFAR10_CLASSES", "LabelledImages", "AnomalySplit", "to_float",
           "to_uint8", "resize_uint8", "resolve_class", "load_cifar10", "load_image_folder", "load_digits",
           "load_classification", "list_classes", "make_anomaly_split", "load_anomaly_split"]
