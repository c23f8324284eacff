"""Fewer raters per training image: a dense multi-rater datalist turned into ``k`` raters per image (1: one
annotator per image, the setting of TAX and of the CM-Net paper's one-label experiments)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from multirater_monai.constants import ANNOTATOR, LABEL

__all__ = ["keep_raters"]


def keep_raters(items: Sequence[dict], raters_per_image: int | None, seed: int = 0, source: str = "") -> list[dict]:
    """Each item keeps at most ``raters_per_image`` of its raters' label files, drawn with ``seed``.

    Items with no more raters than that are kept as they are (already one-annotator data stays unchanged);
    items without pixel labels too. With 1, every labelled item records its rater as ``"annotator"`` (an
    item that already names its annotator keeps it). The draw is uniform among an item's annotating raters,
    item by item from one generator: the same datalist and seed give the same draw.

    Args:
        items: a path-resolved datalist section (``label``: one file or None per rater).
        raters_per_image: ``k`` >= 1, or None (items unchanged).
        seed: seed of the draw.
        source: the datalist's path, for the error message.

    Raises:
        ValueError: ``raters_per_image`` below 1, naming ``source``.
    """
    if raters_per_image is None:
        return list(items)
    k = int(raters_per_image)
    if k < 1:
        raise ValueError(f"{source + ': ' if source else ''}raters_per_image must be >= 1 or null, got {raters_per_image!r}")
    rng = np.random.default_rng([int(seed), 7])
    out = []
    for item in items:
        labels = list(item.get(LABEL) or [])
        present = [r for r, f in enumerate(labels) if f is not None]
        item = dict(item)
        if len(present) > k:
            keep = set(int(r) for r in rng.choice(present, size=k, replace=False))
            if k == 1 and item.get(ANNOTATOR) is not None:
                keep = {int(item[ANNOTATOR])}
            item[LABEL] = [f if r in keep else None for r, f in enumerate(labels)]
            present = sorted(keep)
        if k == 1 and len(present) == 1:
            item[ANNOTATOR] = present[0]
        out.append(item)
    return out
