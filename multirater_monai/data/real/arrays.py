"""Array helpers shared by the dataset readers: reading and checking volumes, geometry, crops, slices.

Every check appends ``(file, reason)`` to a ``problems`` list instead of raising, so that a reader can
report every problem of a case at once (:class:`~multirater_monai.data.real.core.CaseError`).
Shapes: ``(*S)`` one spatial map (2D or 3D), ``(C, *S)`` a channel-first image; affines are (4, 4)
voxel-to-world matrices as in NIfTI.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "Problems",
    "read_nifti",
    "check_image",
    "check_label",
    "check_geometry",
    "squeeze_axes",
    "normalize_nonzero",
    "center_crop_or_pad",
    "shift_affine",
    "slice_affine",
    "select_slices",
    "write_nifti",
    "fingerprint",
    "to_labels",
]

Problems = list[tuple[str, str]]
"""``(file, reason)`` pairs collected while reading one case."""

SLICE_POLICIES = ("foreground", "nonempty", "all")


def read_nifti(
    path: str | os.PathLike, problems: Problems, what: str = "image"
) -> tuple[np.ndarray, np.ndarray] | None:
    """Read a NIfTI file: (array, (4, 4) affine), or None with a problem recorded.

    Images are returned as float32 (scaling applied), label maps in their stored dtype.
    """
    path = str(path)
    if not os.path.isfile(path):
        problems.append((path, f"{what} file not found"))
        return None
    try:
        img = nib.load(path)
        data = img.get_fdata(dtype=np.float32) if what == "image" else np.asanyarray(img.dataobj)
        return np.asarray(data), np.asarray(img.affine, dtype=np.float64)
    except Exception as e:
        problems.append((path, f"cannot read the {what} ({type(e).__name__}: {e})"))
        return None


def check_image(image: np.ndarray, file: str, problems: Problems) -> bool:
    """Check one (*S) image channel: not empty, no NaN/inf, not constant. Returns whether it is usable."""
    if image.size == 0:
        problems.append((file, f"empty image (shape {image.shape})"))
        return False
    finite = np.isfinite(image)
    if not finite.any():
        problems.append((file, "all-NaN image (no finite value)"))
        return False
    if not finite.all():
        problems.append((file, f"{int((~finite).sum())} NaN/inf voxel(s)"))
        return False
    lo, hi = float(image.min()), float(image.max())
    if lo == hi:
        problems.append((file, f"empty image (every voxel is {lo:g})"))
        return False
    return True


def check_label(label: np.ndarray, file: str, allowed: Sequence[int], problems: Problems) -> bool:
    """Check a label map holds integer values among ``allowed`` (no NaN). Returns whether it is usable."""
    if label.size == 0:
        problems.append((file, f"empty label map (shape {label.shape})"))
        return False
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            problems.append((file, "label map contains NaN/inf"))
            return False
        if not np.all(np.equal(np.mod(label, 1), 0)):
            problems.append((file, "label values are not integers"))
            return False
    values = np.unique(label)
    unexpected = sorted(set(values.astype(np.int64).tolist()) - {int(a) for a in allowed})
    if unexpected:
        expected = "/".join(str(int(a)) for a in allowed)
        problems.append((file, f"unexpected label value(s) {unexpected[:8]} (expected {expected})"))
        return False
    return True


def check_geometry(
    shape: Sequence[int],
    affine: np.ndarray,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray,
    file: str,
    ref_file: str,
    problems: Problems,
    dims: int = 3,
) -> bool:
    """Record a problem when ``file`` has another shape or affine than ``ref_file``; return whether they match.

    Only the affine's columns of the first ``dims`` axes and its origin are compared (a 2D map's
    third column is not part of its geometry).
    """
    if tuple(shape) != tuple(ref_shape):
        problems.append((file, f"shape {tuple(shape)} differs from {os.path.basename(ref_file)} {tuple(ref_shape)}"))
        return False
    cols = list(range(dims)) + [3]
    if not np.allclose(affine[:3, cols], ref_affine[:3, cols], rtol=1e-4, atol=1e-3):
        problems.append(
            (file, f"geometry (affine: spacing/origin/direction) differs from {os.path.basename(ref_file)}")
        )
        return False
    return True


def squeeze_axes(array: np.ndarray, affine: np.ndarray, keep: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Drop singleton spatial axes (up to the first 3 axes) while at least ``keep`` axes remain.

    The affine's columns follow: the kept axes' columns come first, the dropped axes' columns after
    them (the origin is unchanged since a dropped axis has index 0). E.g. a (256, 256, 1) NIfTI
    becomes a (256, 256) map.

    Returns:
        the squeezed array and its (4, 4) affine.
    """
    spatial = min(array.ndim, 3)
    kept = [a for a in range(spatial) if array.shape[a] != 1]
    for a in range(spatial):
        if len(kept) >= keep:
            break
        if a not in kept:
            kept.append(a)
    kept.sort()
    dropped = [a for a in range(spatial) if a not in kept]
    squeezed = array.reshape([array.shape[a] for a in kept] + list(array.shape[spatial:]))
    order = kept + dropped + [a for a in range(spatial, 3)]
    new_affine = np.array(affine, dtype=np.float64, copy=True)
    new_affine[:, :3] = affine[:, order]
    return squeezed, new_affine


def normalize_nonzero(image: np.ndarray) -> np.ndarray:
    """Per-channel z-score over the non-zero voxels of each channel; zero voxels stay 0.

    Args:
        image: (C, *S) float image (e.g. skull-stripped MRI with a zero background).

    Returns:
        (C, *S) float32.
    """
    out = np.zeros(image.shape, dtype=np.float32)
    for c, channel in enumerate(image):
        mask = channel != 0
        if not mask.any():
            continue
        values = channel[mask].astype(np.float64)
        std = values.std()
        out[c][mask] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def center_crop_or_pad(array: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre crop (or zero-pad) the last ``len(size)`` axes of ``array`` to ``size``.

    Returns:
        the cropped array and the (D,) index of the output's first voxel in the input (negative
        where padded), for :func:`shift_affine`.
    """
    size = [int(s) for s in size]
    spatial = array.shape[array.ndim - len(size) :]
    start = np.array([(n - s) // 2 for n, s in zip(spatial, size)], dtype=np.int64)
    lead = array.ndim - len(size)
    out = np.zeros(array.shape[:lead] + tuple(size), dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for n, s, b in zip(spatial, size, start):
        lo, hi = max(b, 0), min(b + s, n)
        src.append(slice(int(lo), int(hi)))
        dst.append(slice(int(lo - b), int(hi - b)))
    out[tuple(dst)] = array[tuple(src)]
    return out, start


def shift_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """The affine of a crop whose first voxel is voxel ``start`` of the original (leading axes)."""
    out = np.array(affine, dtype=np.float64, copy=True)
    offset = np.zeros(3)
    offset[: len(start)] = start
    out[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
    return out


def slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The (4, 4) affine of 2D slice ``index`` along ``axis`` of a 3D volume with ``affine``.

    The in-plane axes (the other two, in order) become columns 0 and 1; the slice normal column 2;
    the origin is the world position of the slice's first voxel.
    """
    in_plane = [a for a in range(3) if a != axis]
    out = np.eye(4)
    out[:, :3] = affine[:, in_plane + [axis]]
    voxel = np.zeros(3)
    voxel[axis] = index
    out[:3, 3] = affine[:3, :3] @ voxel + affine[:3, 3]
    return out


def select_slices(image: np.ndarray, raters: Sequence[np.ndarray | None], policy: str, axis: int = 2) -> list[int]:
    """Indices of the slices along ``axis`` of a 3D case kept for 2D training.

    Args:
        image: (C, X, Y, Z) image.
        raters: (X, Y, Z) label maps (None entries ignored) whose foreground decides ``"foreground"``.
        policy: ``"foreground"`` slices where any rater (or the reference) marks foreground;
            ``"nonempty"`` slices where any image channel is non-zero; ``"all"`` every slice.
    """
    if policy not in SLICE_POLICIES:
        raise ValueError(f"slice policy must be one of {SLICE_POLICIES}, got {policy!r}.")
    depth = image.shape[1 + axis]
    if policy == "all":
        return list(range(depth))
    if policy == "nonempty":
        other = tuple(a for a in range(image.ndim) if a != 1 + axis)
        return np.flatnonzero(np.any(image != 0, axis=other)).tolist()
    keep = np.zeros(depth, dtype=bool)
    for label in raters:
        if label is not None:
            other = tuple(a for a in range(label.ndim) if a != axis)
            keep |= np.any(label > 0, axis=other)
    return np.flatnonzero(keep).tolist()


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype: type | np.dtype) -> None:
    """Write ``array`` (2D or 3D) as NIfTI with ``affine``, cast to ``dtype``."""
    img = nib.Nifti1Image(np.ascontiguousarray(array, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def fingerprint(array: np.ndarray) -> str:
    """Content hash of an array (shape, dtype and bytes), to find duplicated cases."""
    digest = hashlib.sha1()
    arr = np.ascontiguousarray(array)
    digest.update(str((arr.shape, arr.dtype.str)).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def to_labels(label: np.ndarray, mapping: dict[int, int] | None = None) -> np.ndarray:
    """Integer class map (uint8) of a checked label map, values remapped through ``mapping`` if given."""
    values = np.rint(label).astype(np.int64) if np.issubdtype(label.dtype, np.floating) else label.astype(np.int64)
    if mapping:
        lut = np.zeros(max(max(mapping), int(values.max(initial=0))) + 1, dtype=np.int64)
        for src, dst in mapping.items():
            lut[src] = dst
        values = lut[values]
    return values.astype(np.uint8)
