"""TAX's annotator assignment loss (eq. 12): cross-entropy of G's soft annotator mask against the pseudo masks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["pooled_one_hot", "AnnotatorAssignmentLoss"]


def pooled_one_hot(index: torch.Tensor, num_classes: int, size: list[int] | tuple[int, ...]) -> torch.Tensor:
    """(B, 1, *S) indices -> (B, num_classes, *size): the one-hot map averaged over each cell of ``size`` (the paper's
    down-sampling of the one-hot pseudo mask to M's resolution)."""
    one_hot = F.one_hot(index[:, 0].long(), num_classes).movedim(-1, 1).float()
    pool = (F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[one_hot.ndim - 4]
    return pool(one_hot, list(size))


class AnnotatorAssignmentLoss(torch.nn.Module):
    """``CE(softmax(M), M^pseu)`` averaged over locations and images, with soft targets (eq. 12-13).

    Called as ``loss(outputs, batch)``: ``outputs[pred_key]`` (B, N + 1, *s) assignment logits,
    ``batch[target_key]`` (B, 1, *S) pseudo annotator indices (``S`` a multiple of ``s``).
    """

    def __init__(self, pred_key: str = "assign_logits", target_key: str = "pseudo_annotator") -> None:
        super().__init__()
        self.pred_key = pred_key
        self.target_key = target_key

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        logits = outputs[self.pred_key]
        target = pooled_one_hot(batch[self.target_key], logits.shape[1], tuple(logits.shape[2:]))
        return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
