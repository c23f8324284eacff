"""Dictionary transforms around confusion matrices."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from multirater_monai.constants import TRUE_CM

__all__ = ["ToConfusionMatrixd", "SplitOutputsd", "ImageConfusionMatrixd", "image_confusion_matrix"]


class ToConfusionMatrixd(MapTransform):
    """Turn the datalist's ``true_cm`` (nested lists (R, L, L), ``null`` for undefined columns) into a float tensor.

    ``null`` entries (a class absent from the image's truth) become NaN, which the CM error ignores.
    """

    def __init__(self, keys: KeysCollection = TRUE_CM, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, torch.Tensor):
                continue
            array = np.array(value, dtype=object)
            array[np.equal(array, None)] = np.nan
            d[key] = torch.as_tensor(array.astype(np.float32))
        return d


class SplitOutputsd(MapTransform):
    """Unpack a network's concatenated output maps into named entries of the data dict.

    For networks that stack several outputs as channels so that a sliding-window inferer can stitch
    them (:class:`multirater_monai.engines.StackedOutputs`, whose ``split`` fits here). ``split`` maps a
    batched (B, C, *S) tensor to a dict of batched tensors; each entry is stored (unbatched) under its name, and ``keys`` is replaced by the
    entry ``pred_entry`` (the consensus logits). Meta data of the input is kept.

    Args:
        keys: the key holding the concatenated maps (usually ``"pred"``).
        split: callable (B, C, *S) -> dict of (B, ...) tensors.
        pred_entry: which entry replaces ``keys``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        split: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
        pred_entry: str = "logits",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.split = split
        self.pred_entry = pred_entry

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            maps = d[key]
            meta = dict(maps.meta) if isinstance(maps, MetaTensor) else None
            plain = maps.as_tensor() if isinstance(maps, MetaTensor) else torch.as_tensor(maps)
            parts = self.split(plain[None])
            for name, value in parts.items():
                value = value[0]
                d[key if name == self.pred_entry else name] = MetaTensor(value, meta=meta) if meta is not None else value
        return d


class ImageConfusionMatrixd(MapTransform):
    """Aggregate pixel-wise confusion matrices (R, L, L, *S) into image-level ones (R, L, L).

    Column ``j`` is the mean of the pixel-wise column ``j`` over the voxels whose reference class is ``j``
    (:func:`multirater_monai.metrics.pixelwise_to_image_cm`), comparable to a rater's empirical CM
    against the same reference; NaN for classes absent from the reference.

    Args:
        keys: the pixel-wise CM key.
        label_key: the reference: (1, *S)/(*S) class indices, or (L, *S) one-hot/probabilities (argmax).
        output_key: where to store the (R, L, L) matrices.
    """

    def __init__(
        self, keys: KeysCollection = "cm", label_key: str = "gt", output_key: str = "cm_image", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = image_confusion_matrix(d[key], d[self.label_key])
        return d


def image_confusion_matrix(cm: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Image-level confusion matrices (R, L, L) from pixel-wise ones (R, L, L, *S) against a reference.

    Args:
        cm: (R, L, L, *S) pixel-wise confusion matrices.
        label: the reference: (1, *S)/(*S) class indices, or (L, *S) one-hot/probabilities (argmax taken).
    """
    from multirater_monai.metrics import pixelwise_to_image_cm

    cm = torch.as_tensor(cm).float()
    label = torch.as_tensor(label)
    if label.ndim == cm.ndim - 2 and label.shape[0] > 1:
        label = label.argmax(0)
    label = label.reshape(cm.shape[3:])
    return pixelwise_to_image_cm(cm[None], label[None], cm.shape[1])[0]
