"""Per-recurrence outputs of a recurrent method (MrPrism's Rec0 .. RecT) for the evaluation metrics."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["RecurrenceOutputsd"]


class RecurrenceOutputsd(MapTransform):
    """Split (T, L, *S) per-recurrence logits of one item into per-recurrence probabilities and one-hot masks.

    For each recurrence ``i`` it stores ``<prefix><i>_prob``, the foreground probabilities (L - 1, *S) (the
    input of soft Dice against the rater mean), and ``<prefix><i>_pred``, the one-hot arg-max (L, *S) (the
    input of Dice and mIoU).

    Args:
        keys: the (T, L, *S) logits key (e.g. ``recurrence_logits``).
        prefix: name prefix of the stored entries.
    """

    def __init__(self, keys: KeysCollection = "recurrence_logits", prefix: str = "rec", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.prefix = prefix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            logits = torch.as_tensor(d[key])
            if logits.ndim < 3:
                raise ValueError(f"RecurrenceOutputsd: '{key}' must be (T, L, *S), got shape {tuple(logits.shape)}.")
            probs = torch.softmax(logits.float(), dim=1)
            num_classes = probs.shape[1]
            for i in range(probs.shape[0]):
                d[f"{self.prefix}{i}_prob"] = probs[i, 1:]
                one_hot = torch.nn.functional.one_hot(probs[i].argmax(0), num_classes).movedim(-1, 0)
                d[f"{self.prefix}{i}_pred"] = one_hot.to(torch.float32)
        return d
