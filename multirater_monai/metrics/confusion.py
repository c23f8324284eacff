"""Confusion matrices between a rater's label map and the truth.

Convention used across the project (CM-Net, ``bundles/cmnet/docs/README.md``): a confusion matrix ``A`` of ``L``
classes is column-normalised, ``A[i, j] = p(rater says i | truth is j)``; each column sums to 1.
A column whose true class does not occur in the image is undefined and set to NaN.
"""

from __future__ import annotations

import numpy as np
import torch

from multirater_monai.constants import MISSING_LABEL

__all__ = ["empirical_confusion_matrix"]


def empirical_confusion_matrix(
    rater_label: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, num_classes: int
) -> np.ndarray:
    """Column-normalised confusion matrix of one rater's label map against the truth.

    Args:
        rater_label: (*S) or (1, *S) integer class indices in ``0..L-1``.
        truth: same shape, integer class indices in ``0..L-1``.
        num_classes: ``L``.

    Returns:
        (L, L) float64 array, ``A[i, j] = #(rater == i and truth == j) / #(truth == j)``;
        columns of classes absent from ``truth`` are NaN. A rater map that is entirely
        ``MISSING_LABEL`` gives an all-NaN matrix.
    """
    r = np.asarray(rater_label.cpu() if isinstance(rater_label, torch.Tensor) else rater_label).ravel()
    t = np.asarray(truth.cpu() if isinstance(truth, torch.Tensor) else truth).ravel()
    if r.shape != t.shape:
        raise ValueError(f"rater label and truth differ in size: {r.shape} vs {t.shape}.")
    if np.all(r == MISSING_LABEL):
        return np.full((num_classes, num_classes), np.nan)
    r = r.astype(np.int64)
    t = t.astype(np.int64)
    if r.min() < 0 or r.max() >= num_classes or t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}.")
    counts = np.bincount(r * num_classes + t, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    column_totals = counts.sum(axis=0, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cm = counts / column_totals
    cm[:, column_totals[0] == 0] = np.nan
    return cm
