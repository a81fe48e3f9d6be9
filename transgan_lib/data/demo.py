"""Embedded demo categories in MVTec AD layout: "demo" and the held-out "demo_holdout". DEMOS, not
benchmarks.

Built deterministically on first use (a few seconds, no download) from real photos bundled in
scikit-image: `skimage.data.brick()` for the normal surface and `skimage.data.gravel()` for
pasted foreign material. Both are CC0 (public domain) 512x512 grayscale texture photos that ship
inside the scikit-image wheel. Numbers measured on this data show that the code works end to
end; they say nothing about MVTec AD, whose results must be measured on MVTec AD itself.

Normal images: a brick-wall crop (256 px of the photo -> `size` px) at a small random sub-pixel
offset, a fixed terracotta tint (RGB), and a random per-image lighting change (brightness and
contrast) large enough that mean intensity alone does not tell normal from defective.
Defects (each its own test folder, masks in ground_truth/<defect>/<stem>_mask.png, 0/255 L mode):

* scratch: a thin bright or dark curve (3-4 px at 128 px),
* stain:   a smooth teal blob whose colour shift has zero mean and zero luminance change,
* patch:   an irregular region pasted from the gravel photo, matched to the local mean.

Defects cover roughly 1-8 % of the image and leave the mean intensity almost unchanged.
Same seed and parameters -> byte-identical files.

"demo_holdout" is built the same way from another bundled CC0 photo, `skimage.data.grass()`, with a
green tint and three other defect kinds: hole (a dark pit with a lit rim), blur (a region whose
texture is smoothed away, same mean colour) and fold (a band of the surface shifted against the
rest). No setting of this repository is ever tuned on it: it is reported beside "demo" to show
how the demo's settings carry over to a surface nobody looked at.

Two more held-out surfaces, built the same way and never tuned on either, widen the check:
"demo_gravel" from `skimage.data.gravel()` (a grey-beige tint; scratch, hole and stain) and
"demo_tissue" from `skimage.data.immunohistochemistry()` (its grey level, a pink tint; fold, gravel
patch and scratch). Their defect kinds are the ones above, each drawn on the new surface ("blur" is
not used on tissue: the stained tissue is too smooth at this scale for it to be visible, 3-8 grey
levels inside its mask against the > 8 every defect must show).

Three more, added with the restorer's fused map (issue 23) and first evaluated after its design was
fixed: "demo_retina" (`skimage.data.retina()`, the vessels beside the optic disc), "demo_text"
(`skimage.data.text()`) and "demo_hopper" (matplotlib's sample photo `grace_hopper`, the face: an
aligned object rather than a texture). Their test defects (crack, spots, dent, fade; fade not on the
retina, too smooth to lose contrast) are drawn by `independent_defects`, code that shares nothing with
the defects any detector trains or chooses on; cracks and spots cover under 1 % of the image.

Shape letters: H, W image height and width (= `size`).

Command line (from the repository root)::

    python -m transgan_lib.data.demo [data_root] [category]  # builds <data_root>/demo by default
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from . import independent_defects
from .mvtec import DEMO_CATEGORY_NAME, DatasetError, MVTecAD, PathLike

DEMO_CATEGORY = DEMO_CATEGORY_NAME
HOLDOUT_CATEGORY = "demo_holdout"  # never tuned on
DEMO_VERSION = 3
DEMO_DEFECTS: Tuple[str, ...] = ("patch", "scratch", "stain")
HOLDOUT_DEFECTS: Tuple[str, ...] = ("blur", "fold", "hole")
GRAVEL_CATEGORY, TISSUE_CATEGORY = "demo_gravel", "demo_tissue"  # never tuned on either
# Never tuned on, and their test defects drawn by `independent_defects`, code that shares nothing with the
# defects any detector trains or chooses on.
RETINA_CATEGORY, TEXT_CATEGORY, HOPPER_CATEGORY = "demo_retina", "demo_text", "demo_hopper"
INDEPENDENT_DEFECTS: Tuple[str, ...] = tuple(independent_defects.DEFECTS)


@dataclass(frozen=True)
class DemoSpec:
    """How a demo category is drawn: the texture photo, its window (`crop` px of the 512 px photo,
    jittered by `jitter` px), the RGB tint, and the defect kinds (one test folder each)."""
    texture: str
    crop: int
    jitter: float
    tint: Tuple[float, float, float]
    defects: Tuple[str, ...]
    centre: Tuple[float, float] = (0.5, 0.5)  # the window's centre (x, y) as fractions of the photo's width, height


DEMO_SPECS: Dict[str, DemoSpec] = {
    DEMO_CATEGORY: DemoSpec("brick", 128, 4.0, (1.10, 0.86, 0.70), DEMO_DEFECTS),  # terracotta
    HOLDOUT_CATEGORY: DemoSpec("grass", 160, 4.0, (0.80, 1.08, 0.72), HOLDOUT_DEFECTS),  # green
    GRAVEL_CATEGORY: DemoSpec("gravel", 128, 4.0, (0.98, 0.93, 0.84), ("hole", "scratch", "stain")),  # beige
    TISSUE_CATEGORY: DemoSpec("immunohistochemistry", 192, 4.0, (1.06, 0.82, 0.98),  # pink
                              ("fold", "patch", "scratch")),
    # The retina's vessel arcade beside the optic disc (orange; too smooth at this scale for "fade" to show);
    # Grace Hopper's face (an aligned "object", grey).
    RETINA_CATEGORY: DemoSpec("retina", 384, 4.0, (1.15, 0.82, 0.60), ("crack", "dent", "spots"), (0.27, 0.36)),
    TEXT_CATEGORY: DemoSpec("text", 128, 4.0, (0.94, 0.96, 1.04), INDEPENDENT_DEFECTS),  # paper white
    HOPPER_CATEGORY: DemoSpec("grace_hopper", 256, 4.0, (1.0, 1.0, 1.0), INDEPENDENT_DEFECTS, (0.5, 0.4)),  # grey
}
DEMO_CATEGORIES: Tuple[str, ...] = tuple(DEMO_SPECS)
MARKER = ".demo_complete"

# "demo": 128 px of the 512 px photo per image (a few large bricks, visible even at 32 px), jittered
# by 4 px (the surface is aligned, as an inspected part is in its fixture).
_REF_MEAN, _REF_STD = 120.0, 28.0  # grey level statistics of the normalised texture
# Colour direction with zero channel sum and zero luminance (teal: less red, more green/blue).
_STAIN_DIR = np.cross([1.0, 1.0, 1.0], [0.299, 0.587, 0.114])
_STAIN_DIR = (_STAIN_DIR / np.linalg.norm(_STAIN_DIR)).astype(np.float32)


# ----------------------------------------------------------------------------- textures
@functools.lru_cache(maxsize=None)
def _texture(name: str) -> np.ndarray:
    """A scikit-image photo (or matplotlib's sample `grace_hopper`) as (H, W) float32 (colour photos: their
    channel mean), normalised to the reference mean/std."""
    if name == "grace_hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
            t = np.asarray(img, dtype=np.float32)
    else:
        from skimage import data as skdata

        t = getattr(skdata, name)().astype(np.float32)
    t = t.mean(-1) if t.ndim == 3 else t
    return (t - t.mean()) / t.std() * _REF_STD + _REF_MEAN


def _crop(texture: np.ndarray, rng: np.random.Generator, size: int, jitter: float,
          crop: int, centre: Tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """A `crop` px window of `texture` near `centre` (fractions of its width, height; random sub-pixel
    offset), as (size, size)."""
    h, w = texture.shape
    x0 = w * centre[0] - crop / 2 + rng.uniform(-jitter, jitter)
    y0 = h * centre[1] - crop / 2 + rng.uniform(-jitter, jitter)
    img = Image.fromarray(texture)  # mode F
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop, y0 + crop))
    return np.asarray(out, dtype=np.float32)


def _blob(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """An irregular filled blob (size, size) bool, fully inside the image with a margin."""
    margin = max(4, size // 16) + radius * 1.5
    cy, cx = rng.uniform(margin, size - margin, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.7, 1.0)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / radius
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / (radius * aspect)
    theta, dist = np.arctan2(v, u), np.hypot(u, v)
    edge = 1.0 + sum(rng.uniform(0.05, 0.15) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
                     for k in (2, 3, 5))
    return dist < edge


# ----------------------------------------------------------------------------- defects
def _add_scratch(grey: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A bright or dark quadratic Bezier curve; returns (grey, mask)."""
    size = grey.shape[0]
    margin = max(4, size // 16) + 2
    length = rng.uniform(0.40, 0.60) * size
    angle = rng.uniform(-1.1, 1.1)  # >= 27 deg off vertical: never hides in a mortar line
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    centre = rng.uniform(margin + abs(half), size - margin - abs(half))
    p0, p2 = centre - half, centre + half
    bend = rng.uniform(-0.25, 0.25) * length * np.array([-np.sin(angle), np.cos(angle)])
    p1 = centre + bend
    t = np.linspace(0, 1, 64)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (64, 2) as (x, y)
    pts = np.clip(pts, margin, size - 1 - margin)
    width = max(2, int(round(rng.uniform(3.0, 4.5) * size / 128)))
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in pts], fill=255, width=width, joint="curve")
    mask = np.asarray(canvas) > 0
    sign = rng.choice([-1.0, 1.0])  # bright and dark scratches balance the mean
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 0.6)
    return grey + sign * rng.uniform(65, 90) * np.clip(soft * 1.5, 0, 1), mask


def _add_patch(grey: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A blob of gravel pasted in, matched to the local mean; returns (grey, mask)."""
    size = grey.shape[0]
    mask = _blob(rng, size, rng.uniform(0.09, 0.14) * size)
    # Gravel at twice the brick's magnification: stones stay visible at 64 px.
    gravel = _crop(_texture("gravel"), rng, size, jitter=150, crop=DEMO_SPECS[DEMO_CATEGORY].crop // 2)
    local_mean = grey[mask].mean()
    patch = (gravel - gravel[mask].mean()) * 1.5 + local_mean  # stronger texture, same mean
    out = np.where(mask, patch, grey)
    return out, mask


def _add_stain(rgb: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A smooth teal blob with zero mean and luminance change; returns (rgb, mask)."""
    size = rgb.shape[0]
    radius = rng.uniform(0.09, 0.13) * size
    hard = _blob(rng, size, radius)
    alpha = ndimage.gaussian_filter(hard.astype(np.float32), 0.2 * radius)
    alpha = np.clip(alpha / max(alpha.max(), 1e-6) * 1.2, 0, 1)  # (H, W) soft edge, flat core
    shift = rng.uniform(70, 95) * _STAIN_DIR  # (3,)
    return rgb + alpha[..., None] * shift, alpha >= 0.5


def _add_hole(grey: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A dark pit with a lit rim on one side (light from the upper left); returns (grey, mask)."""
    size = grey.shape[0]
    mask = _blob(rng, size, rng.uniform(0.06, 0.10) * size)
    depth = ndimage.gaussian_filter(mask.astype(np.float32), 0.01 * size + 0.5)  # (H, W) soft pit
    rim = np.clip(ndimage.shift(depth, (1.5, 1.5), order=1) - depth, 0, 1)  # lit lower-right edge
    out = grey - rng.uniform(55, 75) * depth + rng.uniform(35, 50) * rim
    return out, mask | (rim > 0.25)


def _add_blur(grey: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A region whose texture is smoothed away (worn or molten surface), same local mean."""
    size = grey.shape[0]
    mask = _blob(rng, size, rng.uniform(0.10, 0.14) * size)
    smooth = ndimage.gaussian_filter(grey, 0.03 * size)
    return np.where(mask, smooth - smooth[mask].mean() + grey[mask].mean(), grey), mask


def _add_fold(grey: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A straight band across the image where the surface is shifted against the rest."""
    size = grey.shape[0]
    angle = rng.uniform(0, np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])  # (y, x) direction across the band
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    offset = (yy - size / 2) * normal[0] + (xx - size / 2) * normal[1] - rng.uniform(-0.2, 0.2) * size
    mask = np.abs(offset) < rng.uniform(0.03, 0.05) * size
    shifted = ndimage.shift(grey, rng.uniform(0.08, 0.12) * size * normal[::-1], order=1, mode="reflect")
    return np.where(mask, shifted, grey), mask


# Drawn on the grey texture ("stain" on the tinted colour image); the newest surfaces' from their own module.
GREY_DEFECTS = {"scratch": _add_scratch, "patch": _add_patch, "hole": _add_hole, "blur": _add_blur,
                "fold": _add_fold, **independent_defects.DEFECTS}


# ----------------------------------------------------------------------------- images
def make_demo_image(rng: np.random.Generator, size: int, defect: str = "good",
                    category: str = DEMO_CATEGORY) -> Tuple[np.ndarray, np.ndarray]:
    """One image of demo `category` (H, W, 3) uint8 and its mask (H, W) uint8 0/255 (all zero for
    "good")."""
    spec = demo_spec(category)
    if defect not in ("good",) + spec.defects:
        raise ValueError(f"unknown {category} defect {defect!r}; known: good, {', '.join(spec.defects)}")
    # Background and lighting are drawn first: the same rng state gives the same normal image.
    grey = _crop(_texture(spec.texture), rng, size, jitter=spec.jitter, crop=spec.crop, centre=spec.centre)
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-40, 40)
    mask = np.zeros((size, size), dtype=bool)
    if defect in GREY_DEFECTS:
        grey, mask = GREY_DEFECTS[defect](grey, rng)
    rgb = grey[..., None] * np.array(spec.tint, dtype=np.float32)  # (H, W, 3)
    if defect == "stain":
        rgb, mask = _add_stain(rgb, rng)
    # Lighting: per-image contrast and brightness around the reference grey level.
    rgb = (rgb - _REF_MEAN) * contrast + _REF_MEAN + brightness
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


def demo_spec(category: str) -> DemoSpec:
    """The `DemoSpec` of an embedded demo category (ValueError naming the known ones)."""
    if category not in DEMO_SPECS:
        raise ValueError(f"{category!r} is not an embedded demo category; known: {list(DEMO_SPECS)}")
    return DEMO_SPECS[category]


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False)


# ----------------------------------------------------------------------------- build
def _params(n_train: int, n_test_good: int, n_test_per_defect: int, size: int, seed: int,
            category: str = DEMO_CATEGORY) -> dict:
    return {"version": DEMO_VERSION, "n_train": int(n_train), "n_test_good": int(n_test_good),
            "n_test_per_defect": int(n_test_per_defect), "size": int(size), "seed": int(seed),
            "defects": list(demo_spec(category).defects)}


def _read_marker(folder: Path):
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_demo(folder: Path, params: dict, category: str) -> None:
    """Write every file of the demo `category` into `folder` (which exists and is empty)."""
    size, seed = params["size"], params["seed"]
    plan = [("train", "good", params["n_train"]), ("test", "good", params["n_test_good"])]
    plan += [("test", d, params["n_test_per_defect"]) for d in params["defects"]]
    for split_id, (split, defect, n) in enumerate(plan):
        (folder / split / defect).mkdir(parents=True)
        if defect != "good":
            (folder / "ground_truth" / defect).mkdir(parents=True)
        for i in range(n):
            # One generator per image: adding images never changes the existing ones.
            rng = np.random.default_rng([seed, split_id, i])
            image, mask = make_demo_image(rng, size, defect, category)
            _save_png(image, folder / split / defect / f"{i:03d}.png")
            if defect != "good":
                _save_png(mask, folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    (folder / "README.txt").write_text(
        "Demo category built by transgan_lib.demo: a DEMO, not a benchmark.\n"
        f"Source photo: skimage.data.{DEMO_SPECS[category].texture}() (CC0, bundled in scikit-image; "
        "gravel pasted by 'patch').\nDefects are synthetic: " + ", ".join(params["defects"]) + ".\n")
    (folder / MARKER).write_text(json.dumps(params, indent=2, sort_keys=True))


def ensure_demo_data(data_root: PathLike = "data/mvtec_ad", category: str = DEMO_CATEGORY, *,
                     n_train: int = 200, n_test_good: int = 40, n_test_per_defect: int = 20,
                     size: int = 128, seed: int = 0) -> Path:
    """Build the demo category `<data_root>/<category>` in MVTec layout if needed; return its path.

    A demo, not a benchmark (see the module docstring). Idempotent: if the folder holds a
    `.demo_complete` marker with the same version and parameters, it returns at once. Otherwise
    it builds into a temporary folder next to it and renames that into place, so an interrupted
    build never leaves half a dataset. A demo built with other parameters is replaced; a folder
    without the marker is never touched (DatasetError).
    """
    if min(n_train, n_test_good, n_test_per_defect) < 1 or size < 16:
        raise ValueError(f"demo needs n_train, n_test_good, n_test_per_defect >= 1 and size >= 16; "
                         f"got {n_train}, {n_test_good}, {n_test_per_defect}, {size}")
    data_root, params = Path(data_root), _params(n_train, n_test_good, n_test_per_defect, size, seed, category)
    target = data_root / category
    if _read_marker(target) == params:
        return target
    if target.exists() and _read_marker(target) is None:
        raise DatasetError(f"{target} exists but is not a complete demo build (no {MARKER}); "
                           f"delete it or choose another data_root/category")
    data_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=data_root, prefix=f".{category}.building-"))
    try:
        _write_demo(tmp, params, category)
        if target.exists():  # an old demo with other parameters: move aside, then replace
            old = data_root / f".{category}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if _read_marker(target) == params:  # another process finished the same build first
                return target
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare_data(data_root: PathLike, category: str, **demo_kwargs) -> Path:
    """Make `<data_root>/<category>` ready and return its path (notebooks call this first).

    For the demo category, build it if needed (`ensure_demo_data`, `demo_kwargs` passed on); a
    complete build of the current version is kept as it is when no `demo_kwargs` are given;
    for any other category, check the folder by constructing the MVTecAD train split, which
    raises DatasetError with the fix when the data are missing or mis-laid.
    """
    if category in DEMO_CATEGORIES:
        marker = _read_marker(Path(data_root) / category)
        if not demo_kwargs and marker is not None and marker.get("version") == DEMO_VERSION:
            return Path(data_root) / category  # keep a complete build of this version, whatever its size
        return ensure_demo_data(data_root, category, **demo_kwargs)
    if demo_kwargs:
        raise ValueError(f"demo options {sorted(demo_kwargs)} only apply to category '{DEMO_CATEGORY}'")
    return MVTecAD(data_root=data_root, category=category, split="train").root


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    root = ensure_demo_data(args[0] if args else "data/mvtec_ad", args[1] if len(args) > 1 else DEMO_CATEGORY)
    print(f"demo category ready (a demo, not a benchmark): {root}")


if __name__ == "__main__":
    main()
