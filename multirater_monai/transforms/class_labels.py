"""Image-level class labels (the data contract's ``class_label``), given by the datalist or derived from the masks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from multirater_monai.constants import CLASS_LABEL, LABEL, MISSING_LABEL

__all__ = ["ClassLabelsd", "class_labels_from_raters"]

RULES = ("majority", "any")


def class_labels_from_raters(label: torch.Tensor, num_classes: int, rule: str = "majority") -> torch.Tensor:
    """Multi-hot image-level labels from stacked rater labels.

    Args:
        label: (R, *S) class indices, ``-1`` for raters who did not annotate.
        num_classes: ``L``.
        rule: ``"majority"``: class ``c`` is present when at least half of the annotating raters drew it
            somewhere (robust to one rater's stray blob); ``"any"``: when any annotating rater did.

    Returns:
        (L,) float32 in {0, 1}; all zeros when no rater annotated. Background (class 0) is present when
        some voxel is background by the same rule.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    label = torch.as_tensor(label)
    annotated = (label != MISSING_LABEL).flatten(1).any(1)  # (R,)
    flat = label[annotated].flatten(1).long()  # (R', N)
    if flat.shape[0] == 0:
        return torch.zeros(num_classes, dtype=torch.float32)
    present = torch.stack([(flat == c).any(1) for c in range(num_classes)], 1).float()  # (R', L)
    votes = present.mean(0)
    return (votes >= 0.5).float() if rule == "majority" else (votes > 0).float()


class ClassLabelsd(MapTransform):
    """Store the (L,) multi-hot image-level labels under ``output_key``.

    The datalist's ``class_label`` (a list of ``L`` values 0/1) is kept when the item has one; otherwise
    it is derived from the stacked rater labels of ``keys`` (:func:`class_labels_from_raters`). An item
    with neither (no pixel label and no ``class_label``) raises a ``ValueError`` naming the item's file.

    Args:
        keys: the stacked rater label key (R, *S) (usually ``"label"``).
        num_classes: ``L``.
        output_key: where the labels go (default ``"class_label"``).
        rule: ``"majority"`` or ``"any"``, see :func:`class_labels_from_raters`.
    """

    def __init__(
        self,
        keys: KeysCollection = LABEL,
        num_classes: int = 2,
        output_key: str = CLASS_LABEL,
        rule: str = "majority",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
        self.num_classes = num_classes
        self.output_key = output_key
        self.rule = rule

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            given = d.get(self.output_key)
            label = d[key]
            where = label.meta.get("filename_or_obj", "item") if isinstance(label, MetaTensor) else "item"
            if given is not None:
                value = torch.as_tensor(given, dtype=torch.float32).flatten()
                if value.numel() != self.num_classes:
                    raise ValueError(f"{where}: '{self.output_key}' has {value.numel()} entries, expected {self.num_classes}")
                d[self.output_key] = value
                continue
            plain = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
            if not bool((plain != MISSING_LABEL).any()):
                raise ValueError(f"{where}: no pixel label and no '{self.output_key}': image-level labels unknown")
            d[self.output_key] = class_labels_from_raters(plain, self.num_classes, self.rule)
        return d
