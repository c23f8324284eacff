"""Dictionary transforms that load the raters' label maps into the data contract's ``label``, ``rater_mask`` and
``annotator``."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from multirater_monai.constants import ANNOTATOR, IMAGE, LABEL, MISSING_LABEL, RATER_MASK

__all__ = ["AnnotatorIndexd", "LoadRaterLabelsd", "RaterMaskd", "rater_mask_of"]


def rater_mask_of(label: torch.Tensor | np.ndarray, spatial_dims: int | None = None) -> torch.Tensor:
    """Which raters annotated a sample.

    Args:
        label: (R, *S) rater labels, or batched (B, R, *S) when ``spatial_dims`` is given;
            ``-1`` marks a rater who did not annotate.
        spatial_dims: number of spatial axes; by default every axis after the first is spatial.

    Returns:
        (R,) or (B, R) bool: a channel counts as annotated when any of its voxels is not ``-1``.
    """
    label = torch.as_tensor(label)
    start = 1 if spatial_dims is None else label.ndim - spatial_dims
    return (label != MISSING_LABEL).flatten(start_dim=start).any(dim=-1)


class LoadRaterLabelsd(MapTransform):
    """Load a list of per-rater label files into one (R, *S) integer MetaTensor.

    ``None`` entries (raters who did not annotate) become a channel of ``-1``. Every file must have the
    same spatial shape; values must be class indices in ``0..num_classes-1`` (or ``-1``). A problem is
    reported as a ``ValueError`` naming the file.

    An item without any pixel label (every entry ``None``: semi-supervised data) is an error unless
    ``allow_unlabelled``; then its label is ``R`` channels of ``-1`` of the spatial shape of
    ``reference_key`` (the loaded (C, *S) image), so that it batches with labelled items.

    Args:
        keys: keys holding the list of rater files (usually ``"label"``).
        num_classes: if given, the valid class range is checked.
        reader: reader passed to :class:`monai.transforms.LoadImage`.
        dtype: integer dtype of the stacked labels.
        allow_unlabelled: accept items whose every rater entry is ``None``.
        reference_key: the loaded channel-first image giving the shape of an unlabelled item's label.
        allow_missing_keys: as in MONAI.
    """

    def __init__(
        self,
        keys: KeysCollection = LABEL,
        num_classes: int | None = None,
        reader: Any = None,
        dtype: torch.dtype = torch.int64,
        allow_unlabelled: bool = False,
        reference_key: str = IMAGE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=False)
        self.dtype = dtype
        self.allow_unlabelled = allow_unlabelled
        self.reference_key = reference_key

    def _load_one(self, path: str) -> MetaTensor:
        try:
            img = self.loader(path)
        except Exception as e:  # noqa: BLE001 - the reader's error is re-raised with the file named
            raise ValueError(f"{path}: cannot read rater label file ({type(e).__name__}: {e})") from e
        data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if torch.is_floating_point(data) and not torch.all(data == torch.round(data)):
            raise ValueError(f"{path}: rater label values must be integer class indices")
        return img

    def stack(self, files: Sequence[str | None]) -> MetaTensor:
        """Stack the rater files of one sample into (R, *S)."""
        files = list(files) if isinstance(files, (list, tuple)) else [files]
        loaded: list[MetaTensor | None] = [None if f is None else self._load_one(str(f)) for f in files]
        present = [(f, x) for f, x in zip(files, loaded) if x is not None]
        if not present:
            raise ValueError(f"no rater annotated this sample (rater entries: {files})")
        ref_file, ref = present[0]
        shape = tuple(ref.shape)
        for f, x in present[1:]:
            if tuple(x.shape) != shape:
                raise ValueError(f"{f}: rater label shape {tuple(x.shape)} differs from {ref_file} {shape}")
        channels = []
        for f, x in zip(files, loaded):
            if x is None:
                channels.append(torch.full(shape, MISSING_LABEL, dtype=self.dtype))
                continue
            values = torch.as_tensor(x.as_tensor() if isinstance(x, MetaTensor) else x).to(self.dtype)
            if self.num_classes is not None:
                bad = (values != MISSING_LABEL) & ((values < 0) | (values >= self.num_classes))
                if bool(bad.any()):
                    found = torch.unique(values[bad])[:8].tolist()
                    raise ValueError(f"{f}: label values {found} outside 0..{self.num_classes - 1}")
            channels.append(values)
        out = MetaTensor(torch.stack(channels), meta=dict(ref.meta))
        out.meta["filename_or_obj"] = ref.meta.get("filename_or_obj", ref_file)
        out.meta["rater_files"] = [os.fspath(f) if f is not None else "" for f in files]
        return out

    def unlabelled(self, num_raters: int, reference: Any) -> MetaTensor:
        """(R, *S) of ``-1`` shaped like the channel-first ``reference`` image (C, *S)."""
        if reference is None:
            raise ValueError(f"an unlabelled item needs its '{self.reference_key}' loaded before its labels")
        spatial = tuple(reference.shape[1:])
        meta = dict(reference.meta) if isinstance(reference, MetaTensor) else {}
        out = MetaTensor(torch.full((num_raters, *spatial), MISSING_LABEL, dtype=self.dtype), meta=meta)
        out.meta["rater_files"] = [""] * num_raters
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            files = d[key] if isinstance(d[key], (list, tuple)) else [d[key]]
            if self.allow_unlabelled and all(f is None for f in files):
                d[key] = self.unlabelled(len(files), d.get(self.reference_key))
            else:
                d[key] = self.stack(files)
        return d


class RaterMaskd(MapTransform):
    """Derive ``rater_mask`` (R,) bool from the stacked rater labels (R, *S).

    Args:
        keys: the stacked label key (usually ``"label"``).
        output_key: where to store the mask.
    """

    def __init__(
        self, keys: KeysCollection = LABEL, output_key: str = RATER_MASK, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key].as_tensor() if isinstance(d[key], MetaTensor) else d[key]
            d[self.output_key] = rater_mask_of(label)
        return d


class AnnotatorIndexd(MapTransform):
    """The data contract's ``annotator``: index of the one rater of a one-annotator-per-image item.

    Kept from the item when the datalist gives it (an int), else derived from the stacked rater labels
    (R, *S) of ``keys``: the single rater who annotated the image. An item annotated by several raters or
    by none has no single annotator: a ``ValueError`` naming its first rater file.

    Args:
        keys: the stacked label key (usually ``"label"``).
        output_key: where to store the index, a 0-d int64 tensor (batched: (B,)).
    """

    def __init__(
        self, keys: KeysCollection = LABEL, output_key: str = ANNOTATOR, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d.get(self.output_key) is not None:
                d[self.output_key] = torch.as_tensor(int(d[self.output_key]), dtype=torch.int64)
                continue
            label = d[key]
            annotated = torch.nonzero(rater_mask_of(label.as_tensor() if isinstance(label, MetaTensor) else label))
            if annotated.numel() != 1:
                files = label.meta.get("rater_files", []) if isinstance(label, MetaTensor) else []
                where = next((f for f in files if f), "item")
                raise ValueError(
                    f"{where}: one annotator per image expected, found {annotated.numel()} annotating raters "
                    f"{annotated.flatten().tolist()}"
                )
            d[self.output_key] = annotated.reshape(()).to(torch.int64)
        return d
