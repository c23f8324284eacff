"""Label views: a bundle's extra outputs as label maps, the form MONAI Label's Slicer module loads.

MONAI Label returns one label map per inference request, and its 3D Slicer module loads that map as a
segmentation, one segment per label value named from the task's ``labels``. A multi-rater bundle has more to
show than its consensus: what each rater would have drawn, where the raters disagree, how reliable they are
there, which annotator a voxel is attributed to, which prototype explains it. Each :class:`LabelView` turns
the bundle's network outputs (the entries of its ``infer_network``, split by
:class:`~multirater_monai.transforms.SplitOutputsd`) into one such label map, and the MONAI Label app serves
each view as an infer task ``<bundle>_<view>`` (``apps/monailabel``). A bundle lists its views under
``label_views`` in its ``inference.json``; continuous maps are shown as a few named levels (``LevelsView``).

Every view reads a data dict holding ``"pred"``, the consensus logits (L, *S), and the other split outputs,
and stores the (1, *S) label map under ``"pred"`` (the key MONAI Label writes).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import Compose

__all__ = [
    "ChannelIndexView",
    "DisagreementView",
    "LabelView",
    "LevelsView",
    "RaterSegmentationViews",
    "expand_views",
    "level_names",
]


def _like(result: torch.Tensor, reference: Any) -> torch.Tensor:
    """``result`` as a MetaTensor with ``reference``'s meta data (affine, file name) where it has them."""
    if isinstance(reference, MetaTensor):
        return MetaTensor(result, meta=dict(reference.meta))
    return result


class LabelView:
    """One label map derived from a bundle's outputs.

    Args:
        name: the view's name; MONAI Label serves it as ``<bundle>_<name>``.
        labels: label name -> value of the map (values from 1; 0 is background and unnamed).
        description: one line shown in MONAI Label's model list.
        prepare: dictionary transforms run first (e.g. one that computes a reliability map from the outputs).
    """

    def __init__(
        self, name: str, labels: Mapping[str, int], description: str = "", prepare: Sequence[Callable] = ()
    ) -> None:
        if not name or not name.replace("_", "").isalnum():
            raise ValueError(f"label view name '{name}' must be letters, digits and underscores")
        self.name = name
        self.labels = {str(k): int(v) for k, v in labels.items()}
        self.description = description
        self.prepare = Compose(list(prepare)) if prepare else None

    def label_map(self, data: Mapping[Hashable, Any]) -> torch.Tensor:
        """(1, *S) integer label map from the data dict; subclasses implement it."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.prepare is not None:
            d = dict(self.prepare(d))
        reference = d["pred"]
        d["pred"] = _like(
            self.label_map(d).to(torch.uint8 if max(self.labels.values(), default=0) < 256 else torch.int32), reference
        )
        return d

    def views(self) -> list[LabelView]:
        return [self]


class RaterSegmentationViews:
    """One view per rater: the segmentation that rater is predicted to draw (``rater_<name>``).

    Args:
        key: the (R, L, *S) per-rater probabilities or logits.
        rater_names: the R raters' names.
        class_names: the L class names (index 0, background, is left unnamed).
    """

    def __init__(self, key: str, rater_names: Sequence[str], class_names: Sequence[str]) -> None:
        self.key = key
        self.rater_names = list(rater_names)
        self.class_names = list(class_names)

    def views(self) -> list[LabelView]:
        return [_RaterSegmentation(self.key, r, name, self.class_names) for r, name in enumerate(self.rater_names)]


class _RaterSegmentation(LabelView):
    def __init__(self, key: str, index: int, rater: str, class_names: Sequence[str]) -> None:
        labels = {name: c for c, name in enumerate(class_names) if c > 0}
        safe = "".join(ch if ch.isalnum() else "_" for ch in rater)
        super().__init__(f"rater_{safe}", labels, f"the segmentation rater '{rater}' is predicted to draw")
        self.key = key
        self.index = index

    def label_map(self, data: Mapping[Hashable, Any]) -> torch.Tensor:
        per_rater = torch.as_tensor(data[self.key])
        return per_rater[self.index].argmax(0, keepdim=True)


class DisagreementView(LabelView):
    """How many raters are predicted to label a voxel differently from the consensus (``k of R``, k >= 1).

    Args:
        key: the (R, L, *S) per-rater probabilities or logits.
        num_raters: R.
        name: the view's name.
    """

    def __init__(self, key: str, num_raters: int, name: str = "disagreement") -> None:
        num_raters = int(num_raters)
        labels = {f"{k} of {num_raters} raters differ": k for k in range(1, num_raters + 1)}
        super().__init__(name, labels, "how many raters are predicted to differ from the consensus")
        self.key = key

    def label_map(self, data: Mapping[Hashable, Any]) -> torch.Tensor:
        consensus = torch.as_tensor(data["pred"]).argmax(0)
        raters = torch.as_tensor(data[self.key]).argmax(1)
        return (raters != consensus[None]).sum(0, keepdim=True)


def level_names(thresholds: Sequence[float], what: str) -> list[str]:
    """Names of the ``len(thresholds) + 1`` levels a map falls into, e.g. ``"reliability 0.5-0.8"``."""
    edges = [None, *thresholds, None]
    names = []
    for low, high in zip(edges[:-1], edges[1:]):
        if low is None:
            names.append(f"{what} < {high:g}")
        elif high is None:
            names.append(f"{what} >= {low:g}")
        else:
            names.append(f"{what} {low:g}-{high:g}")
    return names


class LevelsView(LabelView):
    """A continuous map shown as named levels: value ``k + 1`` where the map lies in the k-th interval.

    Args:
        name: the view's name.
        key: the (C, *S) map.
        thresholds: increasing level boundaries; ``len(thresholds) + 1`` levels.
        reduce: how the C channels become one: ``"min"``, ``"mean"``, ``"max"``, or an int (that channel).
        what: the quantity's name in the level names (defaults to ``name``).
        relative: divide the map by its largest absolute value in the image first (for relevance heatmaps,
            whose scale differs per image).
        positive_only: voxels whose (reduced) value is not positive stay 0 (unlabelled), e.g. negative relevance.
        description: one line for MONAI Label's model list.
        prepare: dictionary transforms run first (e.g. one that computes the map).
    """

    def __init__(
        self,
        name: str,
        key: str,
        thresholds: Sequence[float],
        reduce: str | int = "mean",
        what: str | None = None,
        relative: bool = False,
        positive_only: bool = False,
        description: str = "",
        prepare: Sequence[Callable] = (),
    ) -> None:
        self.thresholds = [float(t) for t in thresholds]
        if not self.thresholds or any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise ValueError(f"label view '{name}': thresholds must be a non-empty increasing list, got {thresholds}")
        if not (isinstance(reduce, int) or reduce in ("min", "mean", "max")):
            raise ValueError(
                f"label view '{name}': reduce must be 'min', 'mean', 'max' or a channel index, got {reduce!r}"
            )
        names = level_names(self.thresholds, what or name)
        super().__init__(
            name, {n: k + 1 for k, n in enumerate(names)}, description or f"{what or name} in levels", prepare
        )
        self.key = key
        self.reduce = reduce
        self.relative = relative
        self.positive_only = positive_only

    def label_map(self, data: Mapping[Hashable, Any]) -> torch.Tensor:
        values = torch.as_tensor(data[self.key]).float()
        if isinstance(self.reduce, int):
            values = values[self.reduce]
        else:
            values = {"min": torch.amin, "mean": torch.mean, "max": torch.amax}[self.reduce](values, dim=0)
        if self.relative:
            values = values / values.abs().max().clamp_min(1e-12)
        levels = torch.bucketize(values, torch.tensor(self.thresholds, device=values.device), right=True) + 1
        if self.positive_only:
            levels = torch.where(values > 0, levels, torch.zeros_like(levels))
        return levels[None]


class ChannelIndexView(LabelView):
    """Which of C channels is largest at each voxel (value ``c + 1``), e.g. the annotator TAX attributes a voxel
    to, or the prototype that fires most.

    Args:
        name: the view's name.
        key: the (C, *S) map.
        names: the C channels' names.
        description: one line for MONAI Label's model list.
        mask_background: leave voxels whose consensus class is background unlabelled.
    """

    def __init__(
        self, name: str, key: str, names: Sequence[str], description: str = "", mask_background: bool = False
    ) -> None:
        super().__init__(name, {str(n): c + 1 for c, n in enumerate(names)}, description)
        self.key = key
        self.mask_background = mask_background

    def label_map(self, data: Mapping[Hashable, Any]) -> torch.Tensor:
        values = torch.as_tensor(data[self.key])
        if values.shape[0] != len(self.labels):
            raise ValueError(
                f"label view '{self.name}': {len(self.labels)} names for {values.shape[0]} channels of '{self.key}'"
            )
        index = values.argmax(0, keepdim=True) + 1
        if self.mask_background:
            index = torch.where(
                torch.as_tensor(data["pred"]).argmax(0, keepdim=True) > 0, index, torch.zeros_like(index)
            )
        return index


def expand_views(views: Sequence[Any] | None) -> list[LabelView]:
    """A bundle's ``label_views`` (views and view groups such as :class:`RaterSegmentationViews`) as a flat list.

    Raises:
        ValueError: two views with the same name.
    """
    flat: list[LabelView] = []
    for item in views or []:
        flat.extend(item.views())
    names = [v.name for v in flat]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"label views named more than once: {', '.join(duplicates)}")
    return flat
