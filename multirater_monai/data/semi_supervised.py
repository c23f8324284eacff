"""Semi-supervised datalists: every item keeps its image-level labels, only some keep their pixel labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from multirater_monai.constants import CLASS_LABEL, LABEL

__all__ = ["keep_pixel_labels"]


def keep_pixel_labels(
    items: Sequence[dict], keep: int | float, num_classes: int, seed: int = 0, rule: str = "majority"
) -> list[dict]:
    """Keep the pixel labels of ``keep`` items, drop the others' (their ``label`` entries become ``null``).

    Every item gets ``class_label`` first (kept when the datalist has it, else derived from its rater
    files, :func:`multirater_monai.transforms.class_labels_from_raters`), so the items without pixel labels
    still carry image-level labels. The kept items are drawn with ``seed`` such that every foreground
    class present in ``items`` appears in at least one kept item, where ``keep`` allows it (one item per
    class first, the rest at random). Load the result with ``allow_unlabelled=True``.

    Args:
        items: a path-resolved datalist section (:func:`~multirater_monai.data.load_multirater_datalist`).
        keep: number of items (an int >= 1) or fraction of the items (a float in (0, 1]) to keep.
        num_classes: ``L``.
        seed: seed of the draw.
        rule: how image-level labels are derived from several raters (``"majority"`` or ``"any"``).

    Returns:
        new item dicts; each has ``class_label`` and ``pixel_labelled`` (bool).
    """
    from multirater_monai.transforms import LoadRaterLabelsd, class_labels_from_raters

    count = _count(keep, len(items))
    loader = LoadRaterLabelsd(num_classes=num_classes)
    labelled = []
    for item in items:
        if item.get(CLASS_LABEL) is not None:
            labelled.append(dict(item))
            continue
        files = item.get(LABEL)
        if files is None or all(f is None for f in files):
            raise ValueError(f"{item.get('image')}: no pixel label and no '{CLASS_LABEL}': image-level labels unknown")
        stacked = loader({LABEL: files})[LABEL]
        labels = class_labels_from_raters(stacked.as_tensor(), num_classes, rule)
        labelled.append({**item, CLASS_LABEL: [int(v) for v in labels.tolist()]})
    has_pixels = [i for i, item in enumerate(labelled) if any(f is not None for f in item.get(LABEL) or [])]
    rng = np.random.default_rng(seed)
    order = [has_pixels[i] for i in rng.permutation(len(has_pixels))]
    chosen: list[int] = []
    for c in range(1, num_classes):  # one item per foreground class first
        if len(chosen) >= count:
            break
        if any(labelled[i][CLASS_LABEL][c] for i in chosen):
            continue
        candidate = next((i for i in order if labelled[i][CLASS_LABEL][c] and i not in chosen), None)
        if candidate is not None:
            chosen.append(candidate)
    chosen += [i for i in order if i not in chosen][: max(count - len(chosen), 0)]
    kept = set(chosen)
    out = []
    for i, item in enumerate(labelled):
        if i in kept:
            out.append({**item, "pixel_labelled": True})
        else:
            num_raters = len(item.get(LABEL) or [])
            out.append({**item, LABEL: [None] * num_raters, "pixel_labelled": False})
    return out


def _count(keep: int | float, total: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ValueError(f"keep must be a count (int) or a fraction (float), got {keep!r}.")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"a fraction to keep must be in (0, 1], got {keep}.")
        return max(1, int(round(keep * total)))
    if keep < 1:
        raise ValueError(f"a count to keep must be >= 1, got {keep}.")
    return min(int(keep), total)
