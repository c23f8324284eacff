"""Checks shared by the label-fusion functions: the multi-rater data contract of ``docs/design.md``."""

from __future__ import annotations

import numpy as np
import torch

from multirater_monai.constants import MISSING_LABEL

__all__ = ["as_rater_labels", "one_hot_numpy"]


def as_rater_labels(
    labels: np.ndarray | torch.Tensor, num_classes: int | None = None, min_spatial_dims: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Validate multi-rater label maps and find the raters that annotated the image.

    Args:
        labels: (R, *S) integer class indices in ``0..L-1``, one channel per rater; a channel made
            entirely of ``MISSING_LABEL`` (-1) marks a rater that did not annotate the image.
            Float arrays are accepted when their values are whole numbers.
        num_classes: ``L``; when given, every annotated value must lie in ``0..L-1``.
        min_spatial_dims: the least number of spatial dimensions ``len(S)`` accepted.

    Returns:
        ``(labels, rater_mask)``: the labels as an (R, *S) int64 numpy array and an (R,) bool array,
        True for the raters that annotated the image.

    Raises:
        ValueError: a channel mixes ``MISSING_LABEL`` with class indices, a value lies outside
            ``0..L-1`` (other than -1), values are not whole numbers, or no rater annotated the image.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim < 1 + min_spatial_dims:
        raise ValueError(
            f"labels must be (R, *S) with at least {min_spatial_dims} spatial dimension(s), got shape {arr.shape}."
        )
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("labels must be integer class indices.")
    arr = arr.astype(np.int64)
    flat = arr.reshape(arr.shape[0], -1)
    missing = np.all(flat == MISSING_LABEL, axis=1)
    rater_mask = ~missing
    if not rater_mask.any():
        raise ValueError("no rater annotated this image: every label channel is MISSING_LABEL (-1).")
    annotated = flat[rater_mask]
    if annotated.min() < 0:
        raise ValueError(
            "a rater channel must be either entirely MISSING_LABEL (-1) or entirely class indices >= 0; "
            "got negative values in an annotated channel."
        )
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        if annotated.max() >= num_classes:
            raise ValueError(
                f"labels must be in 0..{num_classes - 1} (or -1 for a missing rater), got {annotated.max()}."
            )
    return arr, rater_mask


def one_hot_numpy(label: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot encode a class-index map.

    Args:
        label: (*S) integer class indices in ``0..L-1``.
        num_classes: ``L``.

    Returns:
        (L, *S) float32 array.
    """
    classes = np.arange(num_classes).reshape((num_classes,) + (1,) * label.ndim)
    return (label[None] == classes).astype(np.float32)
