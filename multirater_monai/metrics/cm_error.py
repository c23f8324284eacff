"""Confusion-matrix estimation error (CM-Net): how far estimated rater confusion matrices are from the truth.

Both estimated and true matrices follow the project convention of
:mod:`~multirater_monai.metrics.confusion`: column-normalised, ``A[i, j] = p(rater says i | truth j)``,
NaN columns for classes absent from the truth.
"""

from __future__ import annotations

import torch
from monai.utils import MetricReduction

from multirater_monai.metrics.reduction import ReducedCumulativeMetric, as_plain_tensor

__all__ = ["ConfusionMatrixErrorMetric", "compute_cm_error", "pixelwise_to_image_cm"]


def compute_cm_error(
    estimated: torch.Tensor, true: torch.Tensor, rater_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Root-mean-square error between estimated and true column-normalised confusion matrices.

    ``error[b, r] = sqrt(mean over the defined entries (i, j) of (Â[b, r, i, j] - A[b, r, i, j])²)``.
    An entry is defined where ``true`` is not NaN, so the columns of classes absent from the truth
    (NaN in :func:`~multirater_monai.metrics.empirical_confusion_matrix`) are ignored. A NaN in
    ``estimated`` at a defined entry propagates (the error is NaN). Pixel-wise matrices
    (B, R, L, L, *S) on both sides are accepted too: the mean then runs over entries and pixels.

    Args:
        estimated: (B, R, L, L) (or (B, R, L, L, *S)) estimated confusion matrices.
        true: the true matrices, same shape.
        rater_mask: optional (B, R) bool, False for raters to leave out (error NaN).

    Returns:
        (B, R) float error; NaN for raters masked out or whose true matrix is entirely NaN (a
        rater who did not annotate the image).
    """
    estimated, true = as_plain_tensor(estimated), as_plain_tensor(true)
    if estimated.shape != true.shape or estimated.ndim < 4 or estimated.shape[2] != estimated.shape[3]:
        raise ValueError(
            f"estimated and true must both be (B, R, L, L[, *S]), got {tuple(estimated.shape)} and {tuple(true.shape)}."
        )
    dtype = torch.promote_types(torch.promote_types(estimated.dtype, true.dtype), torch.float32)
    estimated, true = estimated.to(dtype).flatten(2), true.to(dtype).flatten(2)
    defined = ~torch.isnan(true)
    squared = torch.where(defined, (estimated - true) ** 2, torch.zeros_like(true))
    count = defined.sum(-1)
    mse = squared.sum(-1) / count.clamp_min(1)
    error = torch.where(count > 0, mse.sqrt(), torch.full_like(mse, float("nan")))
    if rater_mask is not None:
        rater_mask = as_plain_tensor(rater_mask).to(error.device).bool()
        if rater_mask.shape != error.shape:
            raise ValueError(f"rater_mask must be (B, R) = {tuple(error.shape)}, got {tuple(rater_mask.shape)}.")
        error = torch.where(rater_mask, error, torch.full_like(error, float("nan")))
    return error


def pixelwise_to_image_cm(cm_map: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Aggregate pixel-wise (or global) confusion matrices into one matrix per image and rater.

    Column ``j`` of the result is the mean of the pixel-wise column ``j`` over the pixels whose true
    class is ``j``; NaN where class ``j`` is absent from the truth. This is comparable with
    :func:`~multirater_monai.metrics.empirical_confusion_matrix` of a rater's labels against the
    same truth: when the rater's label at each pixel is drawn from the pixel's column, the
    expectation of the empirical matrix is this aggregate.

    Args:
        cm_map: (B, R, L, L, *S) pixel-wise column-normalised matrices; or image-level matrices,
            (B, R, L, L) per image or (R, L, L) global (image-independent, broadcast to every image),
            which are only given NaN columns for the classes absent from each image.
        truth: (B, *S) or (B, 1, *S) true class indices in ``0..L-1``.
        num_classes: ``L``.

    Returns:
        (B, R, L, L) float tensor.
    """
    cm_map, truth = as_plain_tensor(cm_map), as_plain_tensor(truth).long()
    dtype = cm_map.dtype if cm_map.is_floating_point() else torch.float32
    cm_map = cm_map.to(dtype)
    batch = truth.shape[0]
    if truth.numel() and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(f"truth must hold class indices in 0..{num_classes - 1}.")
    matrix_dims = 1 if cm_map.ndim == 3 else 2
    if cm_map.ndim < 3 or cm_map.shape[matrix_dims : matrix_dims + 2] != (num_classes, num_classes):
        raise ValueError(
            f"cm_map must be (B, R, L, L, *S), (B, R, L, L) or (R, L, L) with L = {num_classes}, "
            f"got shape {tuple(cm_map.shape)}."
        )
    if cm_map.ndim >= 4 and cm_map.shape[0] != batch:
        raise ValueError(f"cm_map has batch size {cm_map.shape[0]}, truth {batch}.")

    if cm_map.ndim <= 4:
        # image-level matrices: the aggregate is the matrix itself, NaN columns for absent classes
        counts = torch.stack([torch.bincount(t.flatten(), minlength=num_classes) for t in truth])  # (B, L)
        means = cm_map.expand(batch, -1, -1, -1) if cm_map.ndim == 3 else cm_map
    else:
        spatial = cm_map.shape[4:]
        if truth.shape[1:] != spatial:
            if truth.ndim == len(spatial) + 2 and truth.shape[1] == 1 and truth.shape[2:] == spatial:
                truth = truth[:, 0]
            else:
                raise ValueError(
                    f"truth {tuple(truth.shape)} does not match the spatial shape {tuple(spatial)} of cm_map."
                )
        onehot = torch.nn.functional.one_hot(truth.flatten(1), num_classes).to(dtype)  # (B, P, L)
        counts = onehot.sum(1)  # (B, L)
        sums = torch.einsum("brijp,bpj->brij", cm_map.flatten(4), onehot)
        means = sums / counts.clamp_min(1)[:, None, None, :]
    present = (counts > 0)[:, None, None, :]
    return torch.where(present, means, torch.full_like(means, float("nan")))


class ConfusionMatrixErrorMetric(ReducedCumulativeMetric):
    """Cumulative :func:`compute_cm_error`, (B, R) per iteration.

    ``y_pred`` are the estimated and ``y`` the true (B, R, L, L) matrices (for pixel-wise estimates,
    aggregate them first with :func:`pixelwise_to_image_cm`). Raters whose true matrix is all NaN
    (did not annotate the image) give NaN, which the reduction skips; the default ``"mean"`` averages
    over raters, then images.

    Args:
        reduction: see :class:`~multirater_monai.metrics.reduction.ReducedCumulativeMetric`.
        get_not_nans: whether ``aggregate`` also returns the not-NaN counts.
    """

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: object
    ) -> torch.Tensor:
        """(B, R) error of the estimated matrices ``y_pred`` against the true matrices ``y``."""
        if y is None:
            raise ValueError("y is required.")
        return compute_cm_error(y_pred, y)
