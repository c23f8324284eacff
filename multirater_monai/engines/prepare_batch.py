"""``prepare_batch`` callables: which entries of a multi-rater batch go to the device, as a tuple or by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

from multirater_monai.constants import FUSED_LABEL

__all__ = ["PrepareBatchDict", "PrepareBatchKeys"]


def _to(value: Any, device: Any, non_blocking: bool, **kwargs: Any) -> Any:
    return value.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(value, torch.Tensor) else value


class PrepareBatchKeys(PrepareBatch):
    """Return ``(batch[image_key], batch[label_key])`` moved to ``device`` (for MONAI's evaluators).

    MONAI's default takes ``"image"`` and ``"label"``; in the multi-rater data contract ``label`` is the
    (B, R, *S) stack of raters, so an evaluator against the truth uses ``label_key="gt"`` and one against
    the fused labels ``label_key="fused_label"``.

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
        image = _to(batchdata[self.image_key], device, non_blocking, **kwargs)
        if self.label_key is None:
            return image, None
        return image, _to(batchdata[self.label_key], device, non_blocking, **kwargs)


class PrepareBatchDict(PrepareBatch):
    """Return the batch as a dict of its entries, tensors moved to ``device`` (for training steps).

    The training step gives the network and the loss what they need by name (image, rater labels, rater
    mask, truth, class labels, annotator, ...). Meta data entries (``*_meta_dict``, ``*_transforms``) are
    left out.

    Args:
        keys: the entries to keep; None keeps every entry. A listed key missing from the batch is an error
            naming the keys the batch has.
    """

    def __init__(self, keys: Sequence[str] | None = None) -> None:
        self.keys = None if keys is None else list(keys)

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        if self.keys is not None:
            missing = [k for k in self.keys if k not in batchdata]
            if missing:
                raise KeyError(f"batch has no {missing} (keys: {sorted(batchdata)}); check the pre-processing transforms.")
        keys = self.keys if self.keys is not None else [
            k for k in batchdata if not str(k).endswith(("_meta_dict", "_transforms"))
        ]
        return {k: _to(batchdata[k], device, non_blocking, **kwargs) for k in keys}
