"""Voting fusions of multi-rater label maps: the mean label (soft) and the majority vote (hard)."""

from __future__ import annotations

import numpy as np
import torch

from multirater_monai.fusion.utils import as_rater_labels

__all__ = ["mean_label", "majority_vote"]


def mean_label(labels: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """Per class, the fraction of the annotating raters that voted for it.

    Args:
        labels: (R, *S) integer class indices in ``0..L-1``; a channel entirely ``-1`` is a rater
            who did not annotate the image and is ignored.
        num_classes: ``L``.

    Returns:
        (L, *S) float32 array; it sums to 1 over the class axis.

    Raises:
        ValueError: see :func:`~multirater_monai.fusion.utils.as_rater_labels`.
    """
    votes, num_raters = _count_votes(labels, num_classes)
    return (votes / num_raters).astype(np.float32)


def majority_vote(labels: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """The class voted by most of the annotating raters.

    Ties are broken towards the lowest class index (e.g. one vote for 1 and one for 2 gives 1; one
    vote for 0 and one for 1 gives background 0).

    Args:
        labels: (R, *S) integer class indices in ``0..L-1``; a channel entirely ``-1`` is a rater
            who did not annotate the image and is ignored.
        num_classes: ``L``.

    Returns:
        (*S) int64 array of class indices.

    Raises:
        ValueError: see :func:`~multirater_monai.fusion.utils.as_rater_labels`.
    """
    votes, _ = _count_votes(labels, num_classes)
    # np.argmax returns the first maximum, i.e. the lowest class index among tied classes.
    return np.argmax(votes, axis=0).astype(np.int64)


def _count_votes(labels: np.ndarray | torch.Tensor, num_classes: int) -> tuple[np.ndarray, int]:
    """(L, *S) int64 number of annotating raters voting each class, and the number of annotating raters."""
    arr, rater_mask = as_rater_labels(labels, num_classes)
    annotated = arr[rater_mask]
    votes = np.stack([np.count_nonzero(annotated == c, axis=0) for c in range(num_classes)]).astype(np.int64)
    return votes, annotated.shape[0]
