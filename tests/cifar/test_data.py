"""Tests for transgan_lib.cifar: the CIFAR-10 reader on real-format files, the folder reader, the split."""
import io
import os
import pickle
import struct
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from transgan_lib.cifar.data import (
    CIFAR10_CLASSES,
    LabelledImages,
    list_classes,
    load_anomaly_split,
    load_classification,
    make_anomaly_split,
    resolve_class,
    to_float,
)
from transgan_lib.data.mvtec import DatasetError


# ----------------------------------------------------------------------------- CIFAR-10 files
class Py2Str(bytes):
    """A Python 2 `str`: the official CIFAR-10 batches are Python 2 pickles of such strings."""


class Py2Pickler(pickle._Pickler):
    """Writes Py2Str as SHORT_BINSTRING/BINSTRING (as Python 2 did), numpy data included, so
    `pickle.load(f, encoding="latin1")` (torchvision) gives str keys and encoding="bytes" gives b"data"."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2str(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            fn, args, state = obj.__reduce__()
            return fn, (args[0], args[1], Py2Str(args[2])), state[:4] + (Py2Str(state[4]),)
        return NotImplemented


def dump_py2(obj, path):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def cifar_image(label: int, serial: int) -> np.ndarray:
    """(3, 32, 32) uint8: R = 20 * label, G = 8 * column, B[0, 0] = serial (rest 8 * row)."""
    img = np.zeros((3, 32, 32), np.uint8)
    img[0] = 20 * label
    img[1] = (8 * np.arange(32))[None, :]
    img[2] = (8 * np.arange(32))[:, None]
    img[2, 0, 0] = serial
    return img


def write_cifar10(root, per_batch=20, n_test=30):
    """The official layout: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    serial = 0
    batches = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in batches:
        labels = [(serial + k) % 10 for k in range(n)]
        data = np.stack([cifar_image(lab, (serial + k) % 256) for k, lab in enumerate(labels)])
        serial += n
        dump_py2({Py2Str(b"batch_label"): Py2Str(f"{name} label".encode()), Py2Str(b"labels"): labels,
                  Py2Str(b"data"): data.reshape(n, 3072),  # (N, 3072): 1024 R, 1024 G, 1024 B, row-major
                  Py2Str(b"filenames"): [Py2Str(f"img_{k}.png".encode()) for k in range(n)]},
                 folder / name)
    dump_py2({Py2Str(b"num_cases_per_batch"): per_batch,
              Py2Str(b"label_names"): [Py2Str(c.encode()) for c in CIFAR10_CLASSES],
              Py2Str(b"num_vis"): 3072}, folder / "batches.meta")
    return folder


@pytest.fixture
def skip_md5(monkeypatch):
    """torchvision checks the official files' md5; ours differ. Keep the existence check only."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))


def test_written_batches_match_the_official_pickle_format(tmp_path):
    folder = write_cifar10(tmp_path)
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")  # how the CIFAR-10 page says to read them
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (20, 3072)


def test_cifar10_reader_on_official_format(tmp_path, skip_md5):
    write_cifar10(tmp_path)
    train, test = load_classification("cifar10", tmp_path, image_size=32, download=False)
    assert train.classes == list(CIFAR10_CLASSES) and len(train) == 100 and len(test) == 30
    assert train.images.dtype == torch.uint8 and train.images.shape == (100, 3, 32, 32)
    assert train.targets.tolist() == [k % 10 for k in range(100)]
    # channel order and row-major pixel layout survive the (N, 3072) -> (N, 3, H, W) reshape
    assert torch.equal(train.images[:, 0, 5, 7], 20 * train.targets.to(torch.uint8))
    assert torch.all(train.images[:, 1, 3, :] == 8 * torch.arange(32, dtype=torch.uint8))
    assert torch.all(train.images[:, 2, 1:, 4] == 8 * torch.arange(1, 32, dtype=torch.uint8))
    assert test.images[0, 2, 0, 0] == 100 and test.targets[0] == 0  # first test serial follows train
    small, _ = load_classification("cifar10", tmp_path, image_size=16, download=False)
    assert small.images.shape == (100, 3, 16, 16)


def test_cifar10_offline_download_failure_says_what_to_do(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    with pytest.raises(DatasetError) as err:
        load_classification("cifar10", tmp_path / "data", download=True)
    msg = str(err.value)
    assert "could not download" in msg and "cifar-10-batches-py" in msg and "dataset='folder'" in msg
    assert str(tmp_path / "data") in msg
    with pytest.raises(DatasetError, match="not found or corrupted"):
        load_classification("cifar10", tmp_path / "data", download=False)


# ----------------------------------------------------------------------------- folder
def write_folder(root, classes=("bird", "cat", "dog"), n_train=3, n_test=2, size=20):
    for split, n in (("train", n_train), ("test", n_test)):
        for c_idx, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for k in range(n):
                rgb = np.full((size, size, 3), (40 * c_idx, 10 * k, 200), np.uint8)
                Image.fromarray(rgb).save(d / f"{k}.png")
    Image.fromarray(np.full((size, size), 77, np.uint8), mode="L").save(root / "train" / "cat" / "gray.png")


def test_folder_reader(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"macOS resource fork")  # nor hidden files
    train, test = load_classification("folder", tmp_path, image_size=16)
    assert train.classes == ["bird", "cat", "dog"] == list_classes("folder", tmp_path)
    assert train.images.shape == (10, 3, 16, 16) and test.images.shape == (6, 3, 16, 16)
    assert torch.bincount(train.targets).tolist() == [3, 4, 3]
    cat = train.images[train.targets == 1]
    gray = cat[(cat[:, 0, 0, 0] == 77)]
    assert gray.shape[0] == 1 and torch.all(gray == 77)  # grayscale -> 3 equal channels
    assert torch.all(train.images[train.targets == 2][:, 0] == 80)  # dog: R = 40 * 2
    assert to_float(train.images).min() >= -1 and to_float(train.images).max() <= 1


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="train"):
        load_classification("folder", tmp_path / "missing")
    write_folder(tmp_path)
    (tmp_path / "test" / "zebra").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "test" / "zebra" / "z.png")
    with pytest.raises(DatasetError, match="zebra"):
        load_classification("folder", tmp_path)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_classification("folder", tmp_path / "empty")
    with pytest.raises(DatasetError, match="dataset must be"):
        load_classification("mnist", tmp_path)


def test_resolve_class():
    classes = ["bird", "cat", "dog"]
    assert resolve_class("cat", classes) == 1 and resolve_class(2, classes) == 2 and resolve_class("0", classes) == 0
    with pytest.raises(DatasetError, match="horse"):
        resolve_class("horse", classes)
    with pytest.raises(DatasetError, match="out of range"):
        resolve_class(3, classes)


# ----------------------------------------------------------------------------- split
def id_images(ids):
    """Tiny uint8 images carrying a unique id in their first two pixels."""
    imgs = torch.zeros(len(ids), 3, 2, 2, dtype=torch.uint8)
    ids = torch.as_tensor(ids)
    imgs[:, 0, 0, 0], imgs[:, 0, 0, 1] = (ids // 256).to(torch.uint8), (ids % 256).to(torch.uint8)
    return imgs


def image_ids(imgs):
    return set((imgs[:, 0, 0, 0].long() * 256 + imgs[:, 0, 0, 1].long()).tolist())


@pytest.fixture
def balanced():
    """10 classes x 100 train images (ids 0..999), 10 x 20 test images (ids 1000..1199)."""
    classes = [f"c{i}" for i in range(10)]
    train = LabelledImages(id_images(range(1000)), torch.arange(1000) % 10, classes)
    test = LabelledImages(id_images(range(1000, 1200)), torch.arange(200) % 10, classes)
    return train, test


def test_split_counts_and_disjointness(balanced):
    train, test = balanced
    s = make_anomaly_split(train, test, target_class=3, labelled_anomaly_ratio=0.05, val_fraction=0.1, seed=0)
    c = s.counts()
    assert c["n_train_anomalous"] + c["n_val_anomalous"] == 5  # 100 anomaly-class images x 0.05
    assert c["n_train_normal"] + c["n_val_normal"] == 900 and c["n_val_normal"] == 90
    assert c["n_test"] == 200 and c["n_test_anomalous"] == 20
    train_ids, val_ids = image_ids(s.train_images), image_ids(s.val_images)
    assert len(train_ids) == s.train_images.shape[0] and not train_ids & val_ids
    assert max(train_ids | val_ids) < 1000  # no test image in training or validation
    assert torch.equal(s.test_labels, (test.targets == 3).long())
    # labels follow the classes: ids of anomalies are the anomaly class's (id % 10 == 3)
    anomalous_ids = image_ids(s.train_images[s.train_labels == 1])
    assert anomalous_ids and all(i % 10 == 3 for i in anomalous_ids)
    normal_ids = image_ids(s.train_images[s.train_labels == 0]) | image_ids(s.val_images[s.val_labels == 0])
    assert all(i % 10 != 3 for i in normal_ids)
    per_class = np.bincount([i % 10 for i in normal_ids], minlength=10)
    assert per_class[3] == 0 and all(per_class[k] == 100 for k in range(10) if k != 3)


def test_split_is_seeded(balanced):
    train, test = balanced
    a = make_anomaly_split(train, test, target_class="c3", seed=1)
    b = make_anomaly_split(train, test, target_class=3, seed=1)
    c = make_anomaly_split(train, test, target_class=3, seed=2)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_images, b.val_images)
    assert image_ids(a.val_images) != image_ids(c.val_images)
    assert image_ids(a.train_images[a.train_labels == 1]) != image_ids(c.train_images[c.train_labels == 1])


def test_split_inverse_protocol_and_caps(balanced):
    train, test = balanced
    s = make_anomaly_split(train, test, target_class=3, protocol="one_class_normal",
                           labelled_anomaly_ratio=0.05, val_fraction=0.1, seed=0)
    c = s.counts()
    assert c["n_train_normal"] + c["n_val_normal"] == 100 and c["n_val_normal"] == 10
    assert c["n_train_anomalous"] + c["n_val_anomalous"] == 45 and c["n_val_anomalous"] == 4
    assert torch.equal(s.test_labels, (test.targets != 3).long()) and c["n_test_anomalous"] == 180
    normal_ids = image_ids(s.train_images[s.train_labels == 0])
    assert all(i % 10 == 3 for i in normal_ids)
    capped = make_anomaly_split(train, test, target_class=3, max_train_images=200, max_test_images=50)
    cc = capped.counts()
    assert cc["n_test"] == 50 and sum(cc[k] for k in ("n_train_normal", "n_train_anomalous",
                                                      "n_val_normal", "n_val_anomalous")) < 200
    with pytest.raises(DatasetError, match="protocol"):
        make_anomaly_split(train, test, target_class=3, protocol="nope")


def test_load_anomaly_split_from_cifar_files(tmp_path, skip_md5):
    write_cifar10(tmp_path, per_batch=40)
    s = load_anomaly_split(dataset="cifar10", data_root=tmp_path, anomaly_class="cat",
                           labelled_anomaly_ratio=0.1, val_fraction=0.1, seed=0)
    assert s.classes[s.target_class] == "cat" and s.counts()["n_test_anomalous"] == 3
    assert s.counts()["n_train_anomalous"] + s.counts()["n_val_anomalous"] == 2  # 20 cats x 0.1
    assert torch.all(s.train_images[s.train_labels == 1][:, 0] == 60)  # cat = label 3, R = 20 * 3


# ----------------------------------------------------------------------------- digits
def test_digits_are_scikit_learns_real_images_with_a_fixed_stratified_split():
    """`dataset="digits"`: sklearn's 1,797 bundled 8x8 digits at 32 px, 3 equal channels, the same
    train/test split whatever the run's seed (25 % of every class is test), classes "0".."9"."""
    from sklearn.datasets import load_digits
    train, test = load_classification("digits", "unused", image_size=32)
    assert (len(train), len(test)) == (1347, 450) and train.classes == [str(c) for c in range(10)]
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    assert list_classes("digits", "unused") == train.classes
    per_class = torch.bincount(test.targets, minlength=10)
    assert all(abs(n - 0.25 * t) <= 0.5 for n, t in zip(per_class.tolist(), np.bincount(load_digits().target)))
    # the real pixels: each image shrunk back to 8 x 8 is one of sklearn's digits of its class
    small = torch.nn.functional.interpolate(to_float(test.images[:20, :1]), size=(8, 8), mode="area")
    ref = torch.from_numpy(load_digits().images).float() / 8.0 - 1.0  # 0..16 -> [-1, 1]
    nearest = torch.cdist(small.flatten(1), ref.flatten(1)).argmin(dim=1)
    assert torch.equal(torch.from_numpy(load_digits().target)[nearest], test.targets[:20])
    again, _ = load_classification("digits", "unused", image_size=32)
    assert torch.equal(again.images, train.images)
    s1 = load_anomaly_split(dataset="digits", anomaly_class="3", seed=1)
    s2 = load_anomaly_split(dataset="digits", anomaly_class=3, seed=2)
    assert torch.equal(s1.test_images, s2.test_images) and s1.counts()["n_test_anomalous"] == 46
    assert not torch.equal(s1.val_images, s2.val_images)


# ----------------------------------------------------------------------------- photos
def test_photos_are_crops_of_bundled_photos_none_of_them_reserved():
    """`dataset="photos"`: nine classes of 32 px crops (300 train and 100 test each), from none of the
    photos kept for an independent check."""
    from transgan_lib.cifar.photos import PHOTOS
    reserved = {"astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "brick", "page", "moon",
                "hubble_deep_field", "china", "flower"}
    assert not set(PHOTOS) & reserved and len(PHOTOS) >= 8 and list(PHOTOS) == sorted(PHOTOS)
    train, test = load_classification("photos", "unused", image_size=32)
    assert train.images.shape == (2700, 3, 32, 32) and test.images.shape == (900, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.classes == list(PHOTOS) == list_classes("photos", "unused")
    assert torch.bincount(test.targets).tolist() == [100] * 9
    again, _ = load_classification("photos", "unused", image_size=32)
    assert torch.equal(again.images, train.images)  # a fixed draw, whatever the run's seed


def test_photo_crops_lie_inside_one_tile_of_their_split(monkeypatch):
    """Every crop lies inside one tile, test crops in test tiles only: no test crop overlaps a training one."""
    from transgan_lib.cifar import photos
    h, w = 256, 320
    rows, cols = np.meshgrid(np.arange(h) // photos.TILE, np.arange(w) // photos.TILE, indexing="ij")
    coded = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)  # each pixel names its tile
    monkeypatch.setattr(photos, "photo", lambda name: coded)
    for split in ("train", "test"):
        for crop in photos.crops("text", split):
            r, c = crop[0].unique(), crop[1].unique()
            assert len(r) == 1 and len(c) == 1  # one tile
            assert photos.is_test_tile(int(r), int(c)) == (split == "test")
