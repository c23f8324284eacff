"""Dictionary transform that fuses the raters' labels into one training target."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from multirater_monai.constants import FUSED_LABEL, LABEL, MISSING_LABEL
from multirater_monai.fusion import fuse

__all__ = ["FuseRatersd"]


class FuseRatersd(MapTransform):
    """Fuse stacked rater labels (R, *S) into class probabilities (L, *S) float32.

    Raters who did not annotate (channels of ``-1``) are ignored. The result keeps the labels' meta data.

    Args:
        keys: the stacked rater label key (usually ``"label"``).
        method: ``"mean"`` (fraction of raters per class), ``"majority"`` (one-hot majority vote) or
            ``"staple"`` (SimpleITK STAPLE probabilities for 2 classes, multi-label STAPLE otherwise).
        num_classes: number of classes ``L``.
        output_key: where to store the fused label; defaults to ``"fused_label"``.
        hard: one-hot the fused probabilities (argmax) instead of keeping them soft.
        allow_unlabelled: an image that no rater annotated (semi-supervised data, every channel ``-1``) gets
            a fused label of zeros (no class has any probability), which the losses leave out through the
            sample's ``rater_mask``; by default such an image is an error.
    """

    def __init__(
        self,
        keys: KeysCollection = LABEL,
        method: str = "majority",
        num_classes: int = 2,
        output_key: str = FUSED_LABEL,
        hard: bool = False,
        allow_unlabelled: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("FuseRatersd fuses one stacked label key at a time.")
        self.method = method
        self.num_classes = num_classes
        self.output_key = output_key
        self.hard = hard
        self.allow_unlabelled = allow_unlabelled

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = d[key]
            array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
            if self.allow_unlabelled and np.all(array == MISSING_LABEL):
                fused = np.zeros((self.num_classes, *array.shape[1:]), dtype=np.float32)
            else:
                fused = self._fuse(array, labels)
            fused_t = torch.as_tensor(fused, dtype=torch.float32)
            d[self.output_key] = MetaTensor(fused_t, meta=dict(labels.meta)) if isinstance(labels, MetaTensor) else fused_t
        return d

    def _fuse(self, array: np.ndarray, labels: Any) -> np.ndarray:
        try:
            return fuse(array, method=self.method, num_classes=self.num_classes, hard=self.hard)
        except ValueError as e:
            name = labels.meta.get("filename_or_obj", "") if isinstance(labels, MetaTensor) else ""
            raise ValueError(f"{name}: cannot fuse the rater labels ({e})") from e
