"""Generalized energy distance (GED) between a set of predicted masks and the raters' masks.

Distance ``d(a, b) = 1 - IoU(a, b)`` of foreground masks, with ``IoU(empty, empty) = 1``; the squared
GED is ``D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]``, each expectation the mean over all
pairs, the diagonal (a mask with itself, distance 0) included, as PHiSeg (Baumgartner et al. 2019)
computes and reports it. The number of samples ``N`` must be reported along with the value: the
self-distance terms make it depend on ``N``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import MetricReduction

from multirater_monai.constants import MISSING_LABEL
from multirater_monai.metrics.reduction import ReducedCumulativeMetric, as_plain_tensor

__all__ = [
    "GeneralizedEnergyDistanceMetric",
    "compute_generalized_energy_distance",
    "labels_to_foreground_masks",
    "pairwise_iou_distance",
]


def labels_to_foreground_masks(
    labels: torch.Tensor, foreground: int | Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground masks of multi-rater label maps, and which raters annotated each image.

    Args:
        labels: (B, R, *S) integer class indices (or binary masks), a channel entirely ``-1`` for a
            rater who did not annotate that image.
        foreground: the class index or indices counted as foreground; None: every class > 0.

    Returns:
        ``(masks, rater_mask)``: (B, R, *S) bool foreground masks (all False for missing raters) and
        (B, R) bool, True for the raters that annotated the image.
    """
    labels = as_plain_tensor(labels)
    if labels.ndim < 3:
        raise ValueError(f"labels must be (B, R, *S), got shape {tuple(labels.shape)}.")
    rater_mask = ~torch.all(labels.flatten(2) == MISSING_LABEL, dim=-1)
    if foreground is None:
        masks = labels > 0
    else:
        classes = torch.as_tensor([foreground] if isinstance(foreground, int) else list(foreground))
        masks = torch.isin(labels, classes.to(labels.device, labels.dtype))
    return masks, rater_mask


def pairwise_iou_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - IoU`` between every mask of ``a`` and every mask of ``b``, ``IoU(empty, empty) = 1``.

    Args:
        a: (B, N, *S) binary masks.
        b: (B, M, *S) binary masks.

    Returns:
        (B, N, M) float distances in [0, 1].
    """
    a, b = a.flatten(2).float(), b.flatten(2).float()
    intersection = torch.bmm(a, b.transpose(1, 2))
    union = a.sum(-1)[:, :, None] + b.sum(-1)[:, None, :] - intersection
    iou = torch.where(union > 0, intersection / union.clamp_min(1e-12), torch.ones_like(union))
    return 1.0 - iou


def _pair_mean(d: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """(B,) mean of the (B, N, M) distances over the pairs valid in (B, N) and (B, M); NaN if none."""
    weights = (mask_a[:, :, None] & mask_b[:, None, :]).to(d.dtype)
    count = weights.sum(dim=(1, 2))
    total = (d * weights).sum(dim=(1, 2))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def compute_generalized_energy_distance(
    samples: torch.Tensor,
    references: torch.Tensor,
    samples_mask: torch.Tensor | None = None,
    references_mask: torch.Tensor | None = None,
    squared: bool = True,
) -> torch.Tensor:
    """Generalized energy distance between predicted masks and reference (rater) masks.

    Returns the **squared** GED, ``D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` (PHiSeg's
    reported quantity), unless ``squared=False``, which gives ``D_GED = sqrt(max(D²_GED, 0))``.
    ``d = 1 - IoU`` with ``IoU(empty, empty) = 1``; expectations are means over all pairs including
    the diagonal (PHiSeg convention).

    Args:
        samples: (B, N, *S) binary foreground masks, e.g. per-rater predictions or samples.
        references: (B, M, *S) binary foreground masks, e.g. the raters' labels
            (see :func:`labels_to_foreground_masks`).
        samples_mask: optional (B, N) bool, False for samples to ignore.
        references_mask: optional (B, M) bool, False for references to ignore (missing raters).
        squared: return ``D²_GED`` (default) or ``D_GED``.

    Returns:
        (B,) float; NaN for an image without any valid sample or reference.
    """
    samples, references = as_plain_tensor(samples), as_plain_tensor(references)
    if samples.ndim < 3 or samples.shape[0] != references.shape[0] or samples.shape[2:] != references.shape[2:]:
        raise ValueError(
            f"samples (B, N, *S) and references (B, M, *S) must share B and *S, "
            f"got {tuple(samples.shape)} and {tuple(references.shape)}."
        )
    b, n, m = samples.shape[0], samples.shape[1], references.shape[1]
    device = samples.device
    s_mask = torch.ones(b, n, dtype=torch.bool, device=device) if samples_mask is None else samples_mask.bool()
    r_mask = torch.ones(b, m, dtype=torch.bool, device=device) if references_mask is None else references_mask.bool()
    s_mask, r_mask = as_plain_tensor(s_mask).to(device), as_plain_tensor(r_mask).to(device)
    if s_mask.shape != (b, n) or r_mask.shape != (b, m):
        raise ValueError(f"masks must be (B, N) = {(b, n)} and (B, M) = {(b, m)}.")
    samples, references = samples > 0.5, references > 0.5
    cross = _pair_mean(pairwise_iou_distance(samples, references), s_mask, r_mask)
    within_samples = _pair_mean(pairwise_iou_distance(samples, samples), s_mask, s_mask)
    within_references = _pair_mean(pairwise_iou_distance(references, references), r_mask, r_mask)
    ged2 = 2.0 * cross - within_samples - within_references
    return ged2 if squared else ged2.clamp_min(0.0).sqrt()


class GeneralizedEnergyDistanceMetric(ReducedCumulativeMetric):
    """Cumulative :func:`compute_generalized_energy_distance`, (B, 1) per iteration.

    ``y_pred`` (B, N, *S) are the samples and ``y`` (B, M, *S) the raters' label maps; both go through
    :func:`labels_to_foreground_masks`, so either may be binary masks or class-index maps, and a
    channel entirely ``-1`` is ignored (a missing rater). Probabilities must be thresholded first.

    Args:
        foreground: the class index or indices counted as foreground; None: every class > 0.
        squared: accumulate ``D²_GED`` (default, PHiSeg) or ``D_GED``.
        reduction: see :class:`~multirater_monai.metrics.reduction.ReducedCumulativeMetric`.
        get_not_nans: whether ``aggregate`` also returns the not-NaN counts.
    """

    def __init__(
        self,
        foreground: int | Sequence[int] | None = None,
        squared: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.foreground = foreground
        self.squared = squared

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: object
    ) -> torch.Tensor:
        """(B, 1) GED of the (B, N, *S) samples ``y_pred`` against the (B, M, *S) rater labels ``y``."""
        if y is None:
            raise ValueError("y is required.")
        samples, samples_mask = labels_to_foreground_masks(y_pred, self.foreground)
        references, references_mask = labels_to_foreground_masks(y, self.foreground)
        ged = compute_generalized_energy_distance(
            samples, references, samples_mask, references_mask, squared=self.squared
        )
        return ged[:, None]
