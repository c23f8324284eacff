"""``prepare_batch`` callables that pick the input and target keys of a multi-rater batch."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

from multirater_monai.constants import FUSED_LABEL

__all__ = ["PrepareBatchKeys"]


class PrepareBatchKeys(PrepareBatch):
    """Return ``(batch[image_key], batch[label_key])`` moved to ``device``.

    MONAI's default takes ``"image"`` and ``"label"``; in the multi-rater data contract ``label`` is the
    (B, R, *S) stack of raters, so a trainer on fused labels uses ``label_key="fused_label"`` and an
    evaluator against the truth ``label_key="gt"``.

    Args:
        image_key: input key, (B, C, *S).
        label_key: target key; ``None`` returns no target (inference).
    """

    def __init__(self, image_key: str = CommonKeys.IMAGE, label_key: str | None = FUSED_LABEL) -> None:
        self.image_key = image_key
        self.label_key = label_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        for key in (self.image_key, self.label_key):
            if key is not None and key not in batchdata:
                raise KeyError(f"batch has no '{key}' (keys: {sorted(batchdata)}); check the pre-processing transforms.")
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        if self.label_key is None:
            return image, None
        label = batchdata[self.label_key].to(device=device, non_blocking=non_blocking, **kwargs)
        return image, label
