"""A cumulative metric base class that reduces its (B, C) buffer as MONAI's ``DiceMetric`` does."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = ["ReducedCumulativeMetric", "as_plain_tensor"]


def as_plain_tensor(x: torch.Tensor | object) -> torch.Tensor:
    """``x`` as a torch tensor without MONAI metadata (a ``MetaTensor`` becomes a plain ``Tensor``)."""
    t = torch.as_tensor(x)
    return t.as_tensor() if hasattr(t, "as_tensor") else t


class ReducedCumulativeMetric(CumulativeIterationMetric):
    """Base class: subclasses implement ``_compute_tensor`` returning a (B, C) tensor per iteration.

    Args:
        reduction: mode of reduction over the not-NaN values of the accumulated (B, C) scores, one of
            {``"none"``, ``"mean"``, ``"sum"``, ``"mean_batch"``, ``"sum_batch"``, ``"mean_channel"``,
            ``"sum_channel"``}; see :py:func:`monai.metrics.utils.do_metric_reduction`.
        get_not_nans: whether :meth:`aggregate` also returns the count of not-NaN values.
    """

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the accumulated (B, C) scores, ignoring NaN values.

        Args:
            reduction: overrides the reduction given at construction when not None.

        Returns:
            the reduced scores, and the not-NaN counts when ``get_not_nans`` is True.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f
