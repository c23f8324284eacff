"""Synthetic multi-rater segmentation data with known truth and known rater confusion matrices.

Images are single-channel float32 2D or 3D images of several objects (ellipses/ellipsoids and
irregular blobs of varied size, elongation, orientation and contrast, some faint) on textured noise
(smoothed Gaussian noise at two scales) and a low-frequency bias field, z-score normalised. Two
layouts (:data:`LAYOUTS`):

- ``"nested"`` (default): every object is class 1; with ``num_classes = L > 2`` objects hold nested
  structures: class ``c >= 2`` is a smaller, shifted ellipsoid inside the class ``c - 1`` structure
  (like a tumour core inside a tumour) with its own intensity; each level is present with probability
  0.8, so some images miss some classes.
- ``"scene"``: classes are separate kinds of objects, each with its own look (intensity sign and
  level, elongation, irregularity), and each class is present in an image with probability 0.5, so the
  image-level labels vary from image to image (some images hold no object at all); a present class
  has one to three objects whose sizes span a wide range (radius log-uniform over a factor 6), so one
  image holds objects at several scales.
- ``"lesion"``: one small lesion per image (class 1, binary), 0.2 % to 1 % of the voxels, among bright
  elongated distractors (vessels) that are background: the regime of lung-nodule crops (LIDC-IDRI), where
  the foreground is rare. With the panel :data:`LESION_RATERS`, some raters' masks are empty.

Simulated raters (:mod:`multirater_monai.transforms.raters`) draw the rater labels from the truth
and the image. The dataset is written as NIfTI with a decathlon-style datalist (format in
:func:`generate_synthetic_dataset`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from multirater_monai.data.datalist import SPLITS, dump_datalist
from multirater_monai.metrics.confusion import empirical_confusion_matrix
from multirater_monai.transforms.raters import DEFAULT_RATERS, dilate_mask, make_rater, rater_rng

__all__ = [
    "LAYOUTS",
    "LESION_RATERS",
    "GENERATOR_VERSION",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SPLIT_SIZES",
    "make_synthetic_image",
    "assign_raters",
    "ASSIGNMENTS",
    "scanner_stripes",
    "synthetic_parameters",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
]

GENERATOR_VERSION = 1
"""Version of the generation algorithm; part of the recorded parameters, so that a dataset made
by another algorithm version is not mistaken for the requested one."""

LAYOUTS = ("nested", "scene", "lesion")
"""Scene layouts of :func:`make_synthetic_image`."""

LESION_RATERS: tuple[str, ...] = ("good", "over-1", "under-1", "miss")
"""A rater panel for the ``"lesion"`` layout: near-truth, one voxel wider, one voxel narrower (small
lesions vanish), and a reader who misses half of the lesions."""

LESION_FRACTION = (0.002, 0.01)
"""Range of the lesion's share of the image's voxels in the ``"lesion"`` layout."""

PARAMETER_DEFAULTS: dict[str, Any] = {"layout": "nested", "scanners": False, "assignment": "random"}
"""Generation parameters added after version 1, with the values that reproduce datasets written before them
(a dataset on disk without the entry was generated with this value)."""

DEFAULT_IMAGE_SIZE = {2: 64, 3: 32}
"""Side length of the images by ``spatial_dims``."""

DEFAULT_SPLIT_SIZES = {2: (200, 40, 40), 3: (48, 12, 12)}
"""(train, val, test) number of images by ``spatial_dims``: enough for a small CPU U-Net to learn in
a few minutes."""

DATALIST_NAME = "datalist.json"
_SPLIT_PREFIX = {"training": "train", "validation": "val", "test": "test"}
# Stream tags of the seed sequences (numpy zero-pads short seed sequences, so each stream has a tag
# in second position; rater streams use tag 2, see ``rater_rng``).
_IMAGE_STREAM = 1
_ASSIGN_STREAM = 3
_STRIPE_STREAM = 4
_SCANNER_STREAM = 5

ASSIGNMENTS = ("random", "scanner")
"""Which rater annotates an image (one label per image): drawn at random, or the image's scanner's reader."""

STRIPE_AMPLITUDE = 0.5
STRIPE_PERIODS = (4.0, 2.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """(*S) Gaussian noise smoothed with ``sigma`` (periodic), scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _random_rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    """(D, D) uniformly random rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _ellipsoid_level(
    coords: np.ndarray, centre: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """(*S) implicit function of an ellipsoid, <= 1 inside; ``coords`` is (D, *S)."""
    offsets = coords - centre.reshape(-1, *([1] * (coords.ndim - 1)))
    local = np.tensordot(rotation.T, offsets, axes=1)
    return (local**2 / semi_axes.reshape(-1, *([1] * (coords.ndim - 1))) ** 2).sum(axis=0)


def make_synthetic_image(
    rng: np.random.Generator,
    spatial_dims: int = 2,
    num_classes: int = 2,
    image_size: int | Sequence[int] | None = None,
    layout: str = "nested",
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its truth.

    Args:
        rng: the generator of all randomness.
        spatial_dims: 2 or 3.
        num_classes: ``L`` including background; ``L > 2`` adds nested structures (``"nested"``) or kinds of
            objects (``"scene"``).
        image_size: side length or per-axis sizes (default :data:`DEFAULT_IMAGE_SIZE`).
        layout: ``"nested"``, ``"scene"`` or ``"lesion"`` (module docstring).

    Returns:
        image (1, *S) float32, z-score normalised; truth (*S) uint8 class indices in ``0..L-1``.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    shape = _resolve_size(spatial_dims, image_size)
    side = float(min(shape))
    coords = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    if layout == "scene":
        truth, objects = _scene_objects(rng, coords, shape, num_classes)
    elif layout == "lesion":
        if num_classes != 2:
            raise ValueError(f"the 'lesion' layout is binary (num_classes 2), got {num_classes}.")
        truth, objects = _lesion_objects(rng, coords, shape)
    else:
        truth, objects = _nested_objects(rng, coords, shape, num_classes)
    return _render(rng, objects, shape, side), truth


def _place_object(
    rng: np.random.Generator,
    coords: np.ndarray,
    occupied: np.ndarray,
    shape_field: np.ndarray,
    min_voxels: int,
    draw: Callable[[np.random.Generator], tuple | None],
) -> tuple[np.ndarray, tuple] | None:
    """Up to 20 draws of an ellipsoid until one has ``min_voxels`` and misses the ``occupied`` voxels.

    ``draw(rng)`` gives ``(centre, semi_axes, rotation, irregular)``, or None to draw again; an irregular
    object's radius varies with the smooth random ``shape_field``. Returns the mask (its largest component)
    and the drawn parameters, or None when no draw fits.
    """
    for _attempt in range(20):
        params = draw(rng)
        if params is None:
            continue
        centre, semi_axes, rotation, irregular = params
        level = _ellipsoid_level(coords, centre, semi_axes, rotation)
        if irregular:
            level = level * np.clip(1.0 + 0.35 * shape_field, 0.5, 1.5)
        mask = _largest_component(level <= 1.0)
        if mask.sum() >= min_voxels and not (mask & occupied).any():
            return mask, params
    return None


def _nested_objects(
    rng: np.random.Generator, coords: np.ndarray, shape: tuple[int, ...], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Truth (*S) uint8 and object intensities (*S) of the "nested" layout: two to five objects of class 1
    (two to four in 3D), each holding nested cores of the higher classes."""
    spatial_dims = len(shape)
    side = float(min(shape))
    truth = np.zeros(shape, dtype=np.uint8)
    objects = np.zeros(shape, dtype=np.float64)
    shape_field = _smooth_noise(rng, shape, sigma=side / 16.0)
    occupied = np.zeros(shape, dtype=bool)
    num_objects = int(rng.integers(2, 6) if spatial_dims == 2 else rng.integers(2, 5))
    min_voxels = 12 if spatial_dims == 2 else 20

    def draw(rng: np.random.Generator) -> tuple:
        radius = rng.uniform(0.07, 0.16) * side if spatial_dims == 2 else rng.uniform(0.1, 0.2) * side
        semi_axes = radius * rng.uniform(0.65, 1.35, size=spatial_dims)
        margin = semi_axes.max() + 1.0
        centre = np.array([rng.uniform(margin, n - 1 - margin) for n in shape])
        rotation = _random_rotation(rng, spatial_dims)
        return centre, semi_axes, rotation, rng.random() < 0.4  # 40 % irregular blobs

    for _ in range(num_objects):
        placed = _place_object(rng, coords, occupied, shape_field, min_voxels, draw)
        if placed is None:
            continue
        mask, (centre, semi_axes, rotation, _) = placed
        occupied |= dilate_mask(mask, 2.0)
        truth[mask] = 1
        amplitude = rng.uniform(0.35, 0.6) if rng.random() < 0.35 else rng.uniform(1.0, 1.6)
        objects[mask] = amplitude
        parent, parent_axes, parent_centre, level_amplitude = mask, semi_axes, centre, amplitude
        for c in range(2, num_classes):  # nested structures
            if rng.random() >= 0.8:
                break
            axes = parent_axes * rng.uniform(0.4, 0.6, size=spatial_dims)
            shift = rng.uniform(-0.3, 0.3, size=spatial_dims) * parent_axes
            core = (_ellipsoid_level(coords, parent_centre + shift, axes, rotation) <= 1.0) & (
                ndimage.distance_transform_edt(parent) > 1.0
            )
            if core.sum() < 4:
                break
            truth[core] = c
            level_amplitude = level_amplitude + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 0.9)
            objects[core] = level_amplitude
            parent, parent_axes, parent_centre = core, axes, parent_centre + shift
    return truth, objects


def _render(rng: np.random.Generator, objects: np.ndarray, shape: tuple[int, ...], side: float) -> np.ndarray:
    """(1, *S) float32 image: the objects' intensities (*S) with partial-volume edges, texture and bias field."""
    texture = 0.6 * _smooth_noise(rng, shape, 0.8) + 0.4 * _smooth_noise(rng, shape, 2.0)
    bias = _smooth_noise(rng, shape, side / 4.0)
    objects = ndimage.gaussian_filter(objects, 0.6)  # partial-volume edges
    image = objects * (1.0 + 0.15 * bias) + 0.3 * texture + 0.35 * bias
    image = (image - image.mean()) / (image.std() + 1e-8)
    return image[None].astype(np.float32)


# Look of each class of the "scene" layout, cycled for classes beyond the list: intensity of its
# objects, their elongation (ratio of the longest to the shortest semi-axis) and whether their outline
# is irregular.
_SCENE_LOOKS = (
    {"amplitude": 1.4, "elongation": (1.0, 1.3), "irregular": False},
    {"amplitude": -1.2, "elongation": (2.0, 3.0), "irregular": False},
    {"amplitude": 0.9, "elongation": (1.0, 1.5), "irregular": True},
    {"amplitude": -0.7, "elongation": (1.0, 1.3), "irregular": True},
)


def _scene_objects(
    rng: np.random.Generator, coords: np.ndarray, shape: tuple[int, ...], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Truth (*S) uint8 and object intensities (*S) of a "scene": each class present with probability 0.5,
    one to three non-overlapping objects per present class, radius log-uniform in [0.04, 0.24] × side."""
    dims = len(shape)
    side = float(min(shape))
    truth = np.zeros(shape, dtype=np.uint8)
    objects = np.zeros(shape, dtype=np.float64)
    occupied = np.zeros(shape, dtype=bool)
    shape_field = _smooth_noise(rng, shape, sigma=side / 16.0)
    min_voxels = 6 if dims == 2 else 10
    present = rng.random(num_classes - 1) < 0.5
    for c in np.flatnonzero(present) + 1:
        look = _SCENE_LOOKS[(c - 1) % len(_SCENE_LOOKS)]

        def draw(rng: np.random.Generator, look: dict = look) -> tuple | None:
            radius = side * float(np.exp(rng.uniform(np.log(0.04), np.log(0.24))))
            stretch = rng.uniform(*look["elongation"])
            semi_axes = radius * np.array([stretch] + [1.0] * (dims - 1)) / stretch ** (1.0 / dims)
            margin = semi_axes.max() + 1.0
            if margin * 2 >= min(shape) - 2:
                return None
            centre = np.array([rng.uniform(margin, n - 1 - margin) for n in shape])
            return centre, semi_axes, _random_rotation(rng, dims), look["irregular"]

        for _ in range(int(rng.integers(1, 4))):
            placed = _place_object(rng, coords, occupied, shape_field, min_voxels, draw)
            if placed is None:
                continue
            mask = placed[0]
            occupied |= dilate_mask(mask, 2.0)
            truth[mask] = c
            objects[mask] = look["amplitude"] * rng.uniform(0.8, 1.2)
    return truth, objects


def _lesion_objects(rng: np.random.Generator, coords: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Truth (*S) uint8 and intensities (*S) of the "lesion" layout: one blob of class 1 covering a share of the
    voxels drawn in :data:`LESION_FRACTION`, away from the border, plus one to three thin bright vessels
    (class 0) that may pass near it."""
    dims = len(shape)
    voxels = float(np.prod(shape))
    truth = np.zeros(shape, dtype=np.uint8)
    objects = np.zeros(shape, dtype=np.float64)
    shape_field = _smooth_noise(rng, shape, sigma=min(shape) / 16.0)
    target = rng.uniform(*LESION_FRACTION) * voxels
    unit = np.pi if dims == 2 else 4.0 * np.pi / 3.0  # area / volume of the unit disc / ball
    radius = (target / unit) ** (1.0 / dims)

    def draw(rng: np.random.Generator) -> tuple:
        semi_axes = radius * rng.uniform(0.8, 1.25, size=dims)
        margin = semi_axes.max() + 0.15 * min(shape)
        centre = np.array([rng.uniform(margin, n - 1 - margin) for n in shape])
        return centre, semi_axes, _random_rotation(rng, dims), rng.random() < 0.4

    placed = _place_object(rng, coords, np.zeros(shape, dtype=bool), shape_field, 3, draw)
    if placed is not None:
        truth[placed[0]] = 1
        objects[placed[0]] = rng.uniform(0.5, 0.8) if rng.random() < 0.3 else rng.uniform(1.0, 1.6)
    for _ in range(int(rng.integers(1, 4))):  # vessels: long thin ellipsoids, background
        length = rng.uniform(0.25, 0.6) * min(shape)
        axes = np.array([length] + [rng.uniform(0.6, 1.2)] * (dims - 1))
        centre = np.array([rng.uniform(0, n - 1) for n in shape])
        vessel = (_ellipsoid_level(coords, centre, axes, _random_rotation(rng, dims)) <= 1.0) & (truth == 0)
        objects[vessel] = np.maximum(objects[vessel], rng.uniform(0.6, 1.2))
    return truth, objects


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (full connectivity) of a (*S) bool mask."""
    components, num = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if num <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _resolve_size(spatial_dims: int, image_size: int | Sequence[int] | None) -> tuple[int, ...]:
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE[spatial_dims]
    size = (int(image_size),) * spatial_dims if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    if len(size) != spatial_dims or min(size) < 16:
        raise ValueError(f"image_size must be >= 16 per axis with {spatial_dims} axes, got {image_size}.")
    return size


def scanner_stripes(scanner: int, shape: Sequence[int], phase: float) -> np.ndarray:
    """(*S) float32: scanner ``scanner``'s faint artefact, stripes across the first axis whose period is the
    scanner's own (:data:`STRIPE_PERIODS` ``[0] + scanner · [1]`` pixels; amplitude :data:`STRIPE_AMPLITUDE` of the
    z-scored image). Visible in every patch, and kept by flips and crops (a period, unlike an orientation)."""
    period = STRIPE_PERIODS[0] + STRIPE_PERIODS[1] * scanner
    along = np.arange(shape[0], dtype=np.float64).reshape(-1, *([1] * (len(shape) - 1)))
    return np.broadcast_to(STRIPE_AMPLITUDE * np.sin(2 * np.pi * along / period + phase), tuple(shape)).astype(np.float32)


def assign_raters(rng: np.random.Generator, num_images: int, num_raters: int, k: int) -> np.ndarray:
    """Which ``k`` of ``num_raters`` raters annotate each image.

    Each image gets ``k`` distinct raters at random; then, while some rater annotates no image, one of
    its slots is taken from a rater that annotates several, so every rater annotates some image when
    ``num_images * k >= num_raters``.

    Returns:
        (num_images, num_raters) bool.
    """
    if not 1 <= k <= num_raters:
        raise ValueError(f"labels_per_image must be in 1..{num_raters}, got {k}.")
    chosen = np.stack([rng.permutation(num_raters)[:k] for _ in range(num_images)]) if num_images else None
    kept = np.zeros((num_images, num_raters), dtype=bool)
    if chosen is None:
        return kept
    counts = np.bincount(chosen.ravel(), minlength=num_raters)
    for rater in range(num_raters):
        if counts[rater] > 0:
            continue
        slots = np.argwhere(counts[chosen] >= 2)
        if len(slots) == 0:
            break
        i, j = slots[rng.integers(len(slots))]
        counts[chosen[i, j]] -= 1
        chosen[i, j] = rater
        counts[rater] += 1
    np.put_along_axis(kept, chosen, True, axis=1)
    return kept


def synthetic_parameters(
    spatial_dims: int = 2,
    num_classes: int = 2,
    image_size: int | Sequence[int] | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    raters: Sequence[str] | None = None,
    labels_per_image: int | None = None,
    seed: int = 0,
    layout: str = "nested",
    scanners: bool = False,
    assignment: str = "random",
) -> dict[str, Any]:
    """The validated, fully resolved generation parameters (the datalist's ``"generator"`` entry)."""
    size = _resolve_size(spatial_dims, image_size)
    if num_classes < 2 or num_classes > 255:
        raise ValueError(f"num_classes must be in 2..255, got {num_classes}.")
    defaults = DEFAULT_SPLIT_SIZES[spatial_dims]
    splits = [d if n is None else int(n) for n, d in zip((num_train, num_val, num_test), defaults)]
    if min(splits) < 0:
        raise ValueError(f"split sizes must be >= 0, got {splits}.")
    names = list(DEFAULT_RATERS if raters is None else raters)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"raters must be distinct names, got {names}.")
    for name in names:
        if not isinstance(name, str) or not name.replace("+", "").replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"rater name {name!r} is not a plain registry name.")
        make_rater(name)  # raises on unknown names
    if labels_per_image is not None and not 1 <= labels_per_image <= len(names):
        raise ValueError(f"labels_per_image must be in 1..{len(names)}, got {labels_per_image}.")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if layout == "lesion" and num_classes != 2:
        raise ValueError(f"the 'lesion' layout is binary (num_classes 2), got {num_classes}.")
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}.")
    if assignment == "scanner" and not (scanners and labels_per_image == 1):
        raise ValueError("assignment 'scanner' (each scanner's images read by one rater) needs scanners=True and labels_per_image=1.")
    return {
        "version": GENERATOR_VERSION,
        "spatial_dims": int(spatial_dims),
        "num_classes": int(num_classes),
        "image_size": list(size),
        "num_train": splits[0],
        "num_val": splits[1],
        "num_test": splits[2],
        "raters": names,
        "labels_per_image": None if labels_per_image is None else int(labels_per_image),
        "seed": int(seed),
        "layout": layout,
        "scanners": bool(scanners),
        "assignment": assignment,
    }


def _save_nifti(array: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(array, affine=np.eye(4)), str(path))


def _cm_to_json(cm: np.ndarray) -> list:
    """(L, L) float array with NaN -> nested lists with None (JSON has no NaN)."""
    return [[None if np.isnan(v) else float(v) for v in row] for row in cm]


def _class_names(num_classes: int, layout: str) -> dict[str, str]:
    if layout == "lesion":
        return {"0": "background", "1": "lesion"}
    if layout == "scene":
        return {"0": "background", **{str(c): f"kind{c}" for c in range(1, num_classes)}}
    return {"0": "background", "1": "object", **{str(c): f"core{c - 1}" for c in range(2, num_classes)}}


def _write_dataset(root: Path, params: dict[str, Any]) -> None:
    """Write images, truths, rater labels and the datalist of ``params`` into the empty folder ``root``."""
    dims, num_classes, seed = params["spatial_dims"], params["num_classes"], params["seed"]
    names, k = params["raters"], params["labels_per_image"]
    raters = [make_rater(name) for name in names]
    label_dtype = np.uint8 if num_classes <= 255 else np.int16
    for folder in ("images", "gt", "labels"):
        (root / folder).mkdir()
    datalist: dict[str, Any] = {
        "name": f"synthetic_{dims}d_{num_classes}class",
        "description": "Synthetic multi-rater segmentation data (multirater_monai.data.synthetic).",
        "spatial_dims": dims,
        "num_classes": num_classes,
        "labels": _class_names(num_classes, params["layout"]),
        "raters": names,
        "labels_per_image": k,
        "generator": params,
    }
    sizes = (params["num_train"], params["num_val"], params["num_test"])
    case_index = 0
    for split_index, (split, size) in enumerate(zip(SPLITS, sizes)):
        if k is None:
            kept = np.ones((size, len(raters)), dtype=bool)
        else:
            kept = assign_raters(np.random.default_rng([seed, _ASSIGN_STREAM, split_index]), size, len(raters), k)
        if params["scanners"]:  # one scanner per image, balanced as raters are; its reader when assignment is 'scanner'
            scanner_of = assign_raters(np.random.default_rng([seed, _SCANNER_STREAM, split_index]), size, len(raters), 1).argmax(1)
            if params["assignment"] == "scanner":
                kept = np.eye(len(raters), dtype=bool)[scanner_of]
        items = []
        for i in range(size):
            case = f"{_SPLIT_PREFIX[split]}_{i:04d}"
            rng = np.random.default_rng([seed, _IMAGE_STREAM, case_index])
            image, truth = make_synthetic_image(rng, dims, num_classes, params["image_size"], params["layout"])
            clean = image
            if params["scanners"]:
                phase = np.random.default_rng([seed, _STRIPE_STREAM, case_index]).uniform(0, 2 * np.pi)
                image = image + scanner_stripes(int(scanner_of[i]), image.shape[1:], phase)[None]
            _save_nifti(image[0], root / "images" / f"{case}.nii.gz")
            _save_nifti(truth.astype(label_dtype), root / "gt" / f"{case}.nii.gz")
            paths, cms = [], []
            for r, (name, rater) in enumerate(zip(names, raters)):
                rater_label = rater(truth, clean, rater_rng(seed, case_index, r))
                cms.append(_cm_to_json(empirical_confusion_matrix(rater_label, truth, num_classes)))
                if kept[i, r]:
                    path = f"labels/{case}_{name}.nii.gz"
                    _save_nifti(rater_label.astype(label_dtype), root / path)
                    paths.append(path)
                else:
                    paths.append(None)
            item = {"image": f"images/{case}.nii.gz", "label": paths, "gt": f"gt/{case}.nii.gz", "true_cm": cms}
            if k == 1:  # one annotator per image: the data contract's "annotator"
                item["annotator"] = int(np.flatnonzero(kept[i])[0])
            if params["scanners"]:
                item["scanner"] = int(scanner_of[i])
            items.append(item)
            case_index += 1
        datalist[split] = items
    (root / DATALIST_NAME).write_text(dump_datalist(datalist))


def _existing_parameters(folder: Path) -> dict[str, Any] | None:
    """The ``"generator"`` entry of the synthetic datalist in ``folder``, or None if there is none."""
    try:
        params = json.loads((folder / DATALIST_NAME).read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        return None
    return None if params is None else {**PARAMETER_DEFAULTS, **params}


def _is_empty_or_missing(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def _move_into_place(tmp: Path, out: Path, params: dict[str, Any]) -> None:
    """Rename the finished dataset ``tmp`` to ``out`` in one step.

    A dataset already at ``out`` with the same parameters (written meanwhile by another process, e.g. the
    other DDP ranks of a ``torchrun`` job, or generated earlier) is kept as it is: replacing it would pull
    the files from under a process that is reading them. ``rename`` replaces a missing or empty folder
    atomically, so readers see either nothing or the whole dataset.
    """
    if _existing_parameters(out) == params:
        return
    try:
        os.replace(tmp, out)
        return
    except OSError:
        pass
    if _existing_parameters(out) == params:  # another process won the race with the same dataset
        return
    if out.is_dir() and not any(out.iterdir()):  # an empty folder that rename cannot replace on this platform
        out.rmdir()
        os.replace(tmp, out)
        return
    raise FileExistsError(
        f"'{out}' was filled by something other than this synthetic dataset while it was being generated; "
        "choose a new or empty folder."
    )


def generate_synthetic_dataset(
    output_dir: str | os.PathLike,
    spatial_dims: int = 2,
    num_classes: int = 2,
    image_size: int | Sequence[int] | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    raters: Sequence[str] | None = None,
    labels_per_image: int | None = None,
    seed: int = 0,
    layout: str = "nested",
    scanners: bool = False,
    assignment: str = "random",
) -> Path:
    """Generate a synthetic multi-rater dataset as NIfTI files and a decathlon-style datalist.

    Defaults: 2D images of 64×64 with 200/40/40 train/val/test images, 3D images of 32³ with
    48/12/12; raters ``("good", "over", "under", "wrong", "blank")``
    (:mod:`multirater_monai.transforms.raters`).

    Layout (paths in the datalist are relative to ``output_dir``)::

        images/<case>.nii.gz           (*S) float32 image (2D images are 2D NIfTI), identity affine
        gt/<case>.nii.gz               (*S) uint8 truth
        labels/<case>_<rater>.nii.gz   (*S) uint8 label of each rater that annotated the case
        datalist.json

    ``datalist.json`` has ``"name"``, ``"description"``, ``"spatial_dims"``, ``"num_classes"``,
    ``"labels"`` (class names), ``"raters"`` (ordered names), ``"labels_per_image"`` (null = every
    rater on every image), ``"generator"`` (all resolved parameters, see
    :func:`synthetic_parameters`) and ``"training"``, ``"validation"``, ``"test"`` lists of items::

        {"image": "images/train_0000.nii.gz",
         "label": ["labels/train_0000_good.nii.gz", null, ...],   # one entry per rater, null = hidden
         "gt": "gt/train_0000.nii.gz",
         "true_cm": [[[...L...], ...L rows], ...R raters]}         # (R, L, L)

    ``true_cm[r]`` is the column-normalised confusion matrix of rater ``r`` against the truth on that
    image (``empirical_confusion_matrix``, ``A[i][j] = p(rater says i | truth is j)``), for EVERY
    rater, also those hidden by ``labels_per_image`` (all raters are simulated, then some are hidden).
    Columns of classes absent from the image's truth are undefined: null in JSON
    (``np.array(true_cm, dtype=float)`` turns them into NaN).

    With ``labels_per_image=k`` each image keeps ``k`` raters drawn at random (seeded), adjusted so that
    every rater annotates some images of each split (when the split has ``size * k >= R``).

    Rater ``r`` on case number ``n`` (counted across training, validation, test) uses
    ``rater_rng(seed, n, r)``; the same parameters give byte-identical files and datalist.

    The dataset is written to a temporary sibling folder and renamed into place, so an interrupted
    run leaves nothing half-written at ``output_dir``.

    Args:
        output_dir: folder to create; it must be missing, empty, or hold a synthetic dataset generated
            with the same parameters (which is then kept as it is).
        spatial_dims: 2 or 3.
        num_classes: ``L`` including background (2 = binary; more adds nested structures).
        image_size: side length or per-axis sizes (default 64 in 2D, 32 in 3D).
        num_train, num_val, num_test: split sizes (defaults above).
        raters: registry rater names in order (``"a+b"`` composes).
        labels_per_image: raters kept per image; None keeps all. With 1, each item records its rater's
            index as ``"annotator"`` (one annotator per image, e.g. ``raters=TAX_RATERS``).
        seed: non-negative seed of everything.
        layout: ``"nested"`` (default), ``"scene"`` (classes present or absent per image, objects at
            several scales) or ``"lesion"`` (one small lesion per image), see the module docstring.
        scanners: each image comes from one of ``R`` scanners (balanced per split, item entry ``"scanner"``),
            whose faint stripe artefact of its own period (:func:`scanner_stripes`) is added to the image
            (the raters draw on the image without it).
        assignment: with ``labels_per_image=1``, ``"random"`` (default) draws each image's rater at random;
            ``"scanner"`` gives each scanner's images to one rater (rater ``s`` reads scanner ``s``), so who
            annotated an image is visible in it (TAX's assigner can learn it). The images of a ``"scanner"``
            and a ``"random"`` set with ``scanners=True`` are the same; only who labels them differs.

    Returns:
        Path of ``output_dir/datalist.json``.

    Raises:
        FileExistsError: ``output_dir`` holds something other than this dataset.
    """
    params = synthetic_parameters(
        spatial_dims, num_classes, image_size, num_train, num_val, num_test, raters, labels_per_image, seed, layout,
        scanners, assignment,
    )
    out = Path(output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"'{out}' exists and is not a folder; choose another output folder.")
    if _existing_parameters(out) == params:
        return out / DATALIST_NAME
    if not _is_empty_or_missing(out):
        raise FileExistsError(
            f"'{out}' is not empty and does not hold a synthetic dataset generated with these parameters; "
            "refusing to write into it. Choose a new or empty folder."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_dataset(tmp, params)
        _move_into_place(tmp, out, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / DATALIST_NAME


def ensure_synthetic_dataset(
    output_dir: str | os.PathLike,
    spatial_dims: int = 2,
    num_classes: int = 2,
    image_size: int | Sequence[int] | None = None,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    raters: Sequence[str] | None = None,
    labels_per_image: int | None = None,
    seed: int = 0,
    layout: str = "nested",
    scanners: bool = False,
    assignment: str = "random",
) -> Path:
    """The datalist of the synthetic dataset in ``output_dir``, generated on first use.

    Arguments as :func:`generate_synthetic_dataset`. Returns ``output_dir/datalist.json`` as is if it
    was generated with the same (resolved) parameters; generates the dataset if ``output_dir`` is
    missing or empty.

    Raises:
        ValueError: ``output_dir`` holds a dataset generated with other parameters, or something else.
    """
    params = synthetic_parameters(
        spatial_dims, num_classes, image_size, num_train, num_val, num_test, raters, labels_per_image, seed, layout,
        scanners, assignment,
    )
    out = Path(output_dir).expanduser().absolute()
    if _is_empty_or_missing(out):
        return generate_synthetic_dataset(out, **{k: v for k, v in params.items() if k != "version"})
    existing = _existing_parameters(out)
    if existing == params:
        return out / DATALIST_NAME
    if existing is None:
        raise ValueError(f"'{out}' is not empty and holds no synthetic dataset; choose a new or empty folder.")
    differing = sorted(k for k in set(params) | set(existing) if params.get(k) != existing.get(k))
    raise ValueError(
        f"'{out}' holds a synthetic dataset generated with other parameters (differing: {differing}); "
        "use another folder or remove this one."
    )
