"""Binary STAPLE (Warfield et al. 2004) of multi-rater label maps, through SimpleITK."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from multirater_monai.fusion.utils import as_rater_labels

__all__ = ["StapleResult", "staple"]


@dataclass
class StapleResult:
    """Output of :func:`staple`.

    Attributes:
        probability: (*S) float32, the estimated probability that each pixel is foreground.
        sensitivity: (R,) float64, each rater's estimated true positive fraction; NaN for a rater who
            did not annotate the image, and NaN when the estimated foreground is empty.
        specificity: (R,) float64, each rater's estimated true negative fraction; NaN for a rater who
            did not annotate the image, and NaN when the estimated foreground fills the image.
        rater_mask: (R,) bool, the raters that annotated the image (those given to STAPLE).
    """

    probability: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    rater_mask: np.ndarray


def staple(
    labels: np.ndarray | torch.Tensor,
    foreground: int = 1,
    max_iterations: int | None = None,
    confidence_weight: float = 1.0,
) -> StapleResult:
    """Binary STAPLE of the annotating raters, with ``sitk.STAPLEImageFilter``.

    Each annotating rater's map is binarised (``label == foreground``) and given to SimpleITK as an
    8-bit integer image; raters whose channel is entirely ``-1`` are left out. SimpleITK's reversed
    axis order does not matter here: arrays go through ``GetImageFromArray`` and come back through
    ``GetArrayFromImage`` in numpy order.

    Degenerate inputs: when every annotating rater marks no foreground (or every pixel as foreground)
    SimpleITK's estimate is undefined (NaN). Then, and whenever its probability map is not finite,
    the probability falls back to the raters' mean, and sensitivity / specificity are computed
    against it: ``sum(p * d_r) / sum(p)`` and ``sum((1 - p)(1 - d_r)) / sum(1 - p)``, NaN where the
    denominator is 0. All raters blank thus gives a probability of 0 everywhere, specificity 1 and
    sensitivity NaN. A single annotating rater gives its own mask as probability.

    Args:
        labels: (R, *S) integer class indices, *S 2D or 3D; a channel entirely ``-1`` is a missing rater.
        foreground: the class index taken as foreground; every other class is background.
        max_iterations: cap on the EM iterations (SimpleITK's default when None: until convergence).
        confidence_weight: SimpleITK's scaling of the foreground prior (1.0: no scaling).

    Returns:
        a :class:`StapleResult`.

    Raises:
        ValueError: invalid labels (see :func:`~multirater_monai.fusion.utils.as_rater_labels`) or
            spatial dimensions other than 2 or 3.
    """
    arr, rater_mask = as_rater_labels(labels, min_spatial_dims=2)
    if arr.ndim not in (3, 4):
        raise ValueError(f"STAPLE needs 2D or 3D label maps, (R, H, W) or (R, D, H, W); got shape {arr.shape}.")
    masks = (arr[rater_mask] == foreground).astype(np.uint8)

    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1)
    f.SetConfidenceWeight(float(confidence_weight))
    if max_iterations is not None:
        f.SetMaximumIterations(int(max_iterations))
    out = f.Execute([sitk.GetImageFromArray(m) for m in masks])
    probability = sitk.GetArrayFromImage(out).astype(np.float64)
    sens = np.asarray(f.GetSensitivity(), dtype=np.float64)
    spec = np.asarray(f.GetSpecificity(), dtype=np.float64)

    if not np.all(np.isfinite(probability)):
        probability = masks.mean(axis=0, dtype=np.float64)
        sens, spec = _performance_against(probability, masks)

    num_raters = arr.shape[0]
    sensitivity = np.full(num_raters, np.nan)
    specificity = np.full(num_raters, np.nan)
    sensitivity[rater_mask] = sens
    specificity[rater_mask] = spec
    return StapleResult(
        probability=np.clip(probability, 0.0, 1.0).astype(np.float32),
        sensitivity=sensitivity,
        specificity=specificity,
        rater_mask=rater_mask,
    )


def _performance_against(probability: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity (K,) of binary masks (K, *S) against a soft truth (*S)."""
    p = probability.reshape(1, -1)
    d = masks.reshape(masks.shape[0], -1).astype(np.float64)
    fg, bg = p.sum(), (1.0 - p).sum()
    undefined = np.full(d.shape[0], np.nan)
    sens = (p * d).sum(axis=1) / fg if fg > 0 else undefined
    spec = ((1.0 - p) * (1.0 - d)).sum(axis=1) / bg if bg > 0 else undefined
    return sens, spec
