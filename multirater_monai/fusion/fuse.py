"""One entry point to the label fusions: the fused label of an image as (L, *S) class probabilities."""

from __future__ import annotations

import numpy as np
import torch

from multirater_monai.fusion.multilabel_staple import multilabel_staple
from multirater_monai.fusion.staple import staple
from multirater_monai.fusion.utils import as_rater_labels, one_hot_numpy
from multirater_monai.fusion.voting import majority_vote, mean_label

__all__ = ["FUSION_METHODS", "fuse"]

FUSION_METHODS = ("mean", "majority", "staple")


def fuse(labels: np.ndarray | torch.Tensor, method: str, num_classes: int, hard: bool = False) -> np.ndarray:
    """Fuse the annotating raters' label maps into per-class probabilities.

    Methods:
        - ``"mean"``: :func:`~multirater_monai.fusion.mean_label`.
        - ``"majority"``: one-hot of :func:`~multirater_monai.fusion.majority_vote` (ties to the
          lowest class index); always hard.
        - ``"staple"``: for ``L == 2``, binary :func:`~multirater_monai.fusion.staple` of class 1
          stacked as ``[1 - p, p]``; for ``L > 2``,
          :func:`~multirater_monai.fusion.multilabel_staple` posterior probabilities.

    Args:
        labels: (R, *S) integer class indices in ``0..L-1``; a channel entirely ``-1`` is a rater
            who did not annotate the image and is ignored. STAPLE needs *S to be 2D or 3D.
        method: one of ``FUSION_METHODS``.
        num_classes: ``L`` (at least 2).
        hard: return the one-hot of the argmax (ties to the lowest class index: a binary STAPLE
            probability of exactly 0.5 gives background) instead of soft probabilities.

    Returns:
        (L, *S) float32 array summing to 1 over the class axis.

    Raises:
        ValueError: unknown method, ``num_classes < 2``, no annotating rater, or labels outside
            ``0..L-1`` other than whole missing channels of -1.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}, expected one of {FUSION_METHODS}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background and one class), got {num_classes}.")
    arr, _ = as_rater_labels(labels, num_classes)

    if method == "majority":
        return one_hot_numpy(majority_vote(arr, num_classes), num_classes)
    if method == "mean":
        fused = mean_label(arr, num_classes)
    elif num_classes == 2:
        p = staple(arr, foreground=1).probability
        fused = np.stack([1.0 - p, p]).astype(np.float32)
    else:
        result = multilabel_staple(arr, num_classes)
        if hard:
            return one_hot_numpy(result.label, num_classes)
        fused = result.probabilities
    if hard:
        return one_hot_numpy(np.argmax(fused, axis=0), num_classes)
    return fused
