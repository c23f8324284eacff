"""Simulated raters drawn from a dataset's single reference segmentation (BraTS has one per case).

The raters are the project's (:mod:`multirater_monai.transforms.raters`): each item's rater ``r`` uses
``rater_rng(seed, item_index, r)`` with ``item_index`` a stable number derived from the item's name, so
a prepared dataset is reproducible and does not change when other cases are added or skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from multirater_monai.transforms.raters import RaterFn, make_rater, rater_rng

__all__ = ["CMNET_RATERS", "stable_index", "resolve_raters", "simulate_raters"]

CMNET_RATERS: tuple[str, ...] = ("good", "over", "under", "wrong")
"""The CM-Net paper's annotator types: near-truth, over-segmentation, under-segmentation, wrong segmentation."""

_MARGIN = 8


def stable_index(key: str) -> int:
    """A stable non-negative 32-bit number of ``key`` (its SHA-1), used as the image index of :func:`rater_rng`."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big")


def resolve_raters(raters: Sequence[str | RaterFn]) -> tuple[list[str], list[RaterFn]]:
    """Rater names and callables from registry names (``"over"``, ``"over+fracture"``) or callables."""
    fns = [make_rater(r) if isinstance(r, str) else r for r in raters]
    names = [r if isinstance(r, str) else getattr(r, "name", type(r).__name__) for r in raters]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"raters must be distinct and non-empty, got {names}.")
    return names, fns


def _box(reference: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the foreground of ``reference`` grown by ``margin`` voxels (the whole map if empty)."""
    if not reference.any():
        return tuple(slice(None) for _ in reference.shape)
    box = []
    for axis in range(reference.ndim):
        other = tuple(a for a in range(reference.ndim) if a != axis)
        hits = np.flatnonzero(reference.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, reference.shape[axis])))
    return tuple(box)


def simulate_raters(
    reference: np.ndarray,
    image: np.ndarray | None,
    raters: Sequence[RaterFn],
    seed: int,
    key: str,
    rater_class: int | None = None,
    margin: int = _MARGIN,
) -> list[np.ndarray]:
    """The label maps of simulated raters on one item.

    Raters work on the foreground's bounding box grown by ``margin`` voxels (much faster on large
    volumes; raters that move boundaries by more than ``margin`` need a larger one).

    Args:
        reference: (*S) reference class indices ``0..L-1`` (nested classes, see the raters module).
        image: (C, *S) image for image-dependent raters, or None.
        raters: rater callables.
        seed: the dataset's simulation seed.
        key: the item's name (gives the stable image index).
        rater_class: None: the raters alter every class region; ``c``: only the region of class ``c``
            (``reference >= c``) is altered: voxels it gains become ``c``, voxels it loses become ``c - 1``,
            the other classes keep the reference.
        margin: voxels around the foreground given to the raters.

    Returns:
        R (*S) uint8 label maps.
    """
    index = stable_index(key)
    box = _box(reference, margin)
    sub_ref = reference[box]
    sub_img = None if image is None else image[(slice(None), *box)]
    out = []
    for r, rater in enumerate(raters):
        rng = rater_rng(seed, index, r)
        if rater_class is None:
            result = np.asarray(rater(sub_ref, sub_img, rng))
        else:
            region = sub_ref >= rater_class
            moved = np.asarray(rater(region.astype(np.uint8), sub_img, rng)) > 0
            result = sub_ref.copy()
            result[moved & ~region] = rater_class
            result[region & ~moved] = rater_class - 1
        full = np.zeros(reference.shape, dtype=np.uint8)
        full[box] = result
        out.append(full)
    return out
