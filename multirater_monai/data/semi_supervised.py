"""Semi-supervised datalists: every item keeps its image-level labels, only some keep their pixel labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from multirater_monai.constants import CLASS_LABEL, LABEL

__all__ = ["MixedSampler", "keep_pixel_labels", "mixed_sampler", "semi_supervised_datalist", "set_labelled_share"]


def _has_pixel_labels(item: dict) -> bool:
    """Whether an item has a label file of some rater."""
    return any(f is not None for f in item.get(LABEL) or [])


def keep_pixel_labels(
    items: Sequence[dict], keep: int | float, num_classes: int, seed: int = 0, rule: str = "majority"
) -> list[dict]:
    """Keep the pixel labels of ``keep`` items, drop the others' (their ``label`` entries become ``null``).

    Every item gets ``class_label`` first (kept when the datalist has it, else derived from its rater
    files, :func:`multirater_monai.transforms.class_labels_from_raters`), so the items without pixel labels
    still carry image-level labels, checked against the rater labels where an item has both. The kept items
    are drawn with ``seed`` such that every foreground class present in ``items`` appears in at least one kept
    item (one item per class first, the rest at random); a ``keep`` too small for that is an error. Load the
    result with ``allow_unlabelled=True``.

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
        given = item.get(CLASS_LABEL)
        if not _has_pixel_labels(item):
            if given is None:
                raise ValueError(f"{item.get('image')}: no pixel label and no '{CLASS_LABEL}': image-level labels unknown")
            labelled.append(dict(item))
            continue
        stacked = loader({LABEL: item[LABEL]})[LABEL]
        derived = [int(v) for v in class_labels_from_raters(stacked.as_tensor(), num_classes, rule).tolist()]
        if given is not None and [int(v) for v in given] != derived:
            raise ValueError(
                f"{item.get('image')}: '{CLASS_LABEL}' {list(given)} contradicts its rater labels, which give "
                f"{derived} (rule '{rule}')"
            )
        labelled.append({**item, CLASS_LABEL: derived})
    has_pixels = [i for i, item in enumerate(labelled) if _has_pixel_labels(item)]
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
    present = {c for item in labelled for c in range(1, num_classes) if item[CLASS_LABEL][c]}
    covered = {c for i in kept for c in range(1, num_classes) if labelled[i][CLASS_LABEL][c]}
    if present - covered:
        missing = sorted(present - covered)
        raise ValueError(
            f"keeping the pixel labels of {count} image(s) leaves class(es) {missing} without any pixel-labelled "
            f"image (they are present in the images' image-level labels): keep more images"
        )
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


def semi_supervised_datalist(
    items: Sequence[dict],
    keep: int | float | None,
    num_classes: int,
    seed: int = 0,
    allow_unlabelled: bool = False,
    source: str = "",
) -> list[dict]:
    """A bundle's training items with only ``keep`` of them pixel-labelled (its ``pixel_labels`` option).

    ``keep`` None returns ``items`` unchanged. Otherwise :func:`keep_pixel_labels` draws the items that keep
    their pixel labels; problems (an image with neither pixel nor image-level labels, image-level labels
    that contradict the rater labels, a class left without any pixel-labelled image) raise one
    ``ValueError`` naming ``source`` (the datalist) and the image.

    Args:
        items: a path-resolved datalist section.
        keep: count (int) or fraction (float in (0, 1]) of items that keep their pixel labels; None: all.
        num_classes: ``L``.
        seed: seed of the draw (the same for every arm compared, so all train on the same labelled images).
        allow_unlabelled: whether the bundle trains on images without pixel labels; ``keep`` needs it.
        source: the datalist's path, for the error message.
    """
    if keep is None:
        return list(items)
    where = f"{source}: " if source else ""
    if not allow_unlabelled:
        raise ValueError(
            f"{where}pixel_labels={keep!r} drops pixel labels, but this bundle does not train on images without "
            f"them (allow_unlabelled is false)"
        )
    try:
        return keep_pixel_labels(items, keep, num_classes, seed=seed)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None


class MixedSampler(torch.utils.data.WeightedRandomSampler):
    """Draws training items with replacement, pixel-labelled ones in the proportion ``labelled_share`` on average.

    A :class:`torch.utils.data.WeightedRandomSampler` whose weights follow :meth:`set_labelled_share`, so that
    a stage of a schedule can change the mixture: classification pre-training draws every item alike
    (``None``), the joint stage the configured share. Build it with :func:`mixed_sampler`.

    Args:
        labelled: one flag per item, whether it has pixel labels.
        labelled_share: expected share of pixel-labelled items in a batch, in [0, 1]; ``None`` draws every
            item with the same probability.
        num_samples: draws per epoch.
        seed: seed of the sampler's own generator, whose state :meth:`state_dict` gives to the training
            checkpoints (``RandomStates``), so that a resumed run draws what the uninterrupted one did.
    """

    def __init__(self, labelled: Sequence[bool], labelled_share: float | None, num_samples: int, seed: int = 0) -> None:
        self.labelled = [bool(flag) for flag in labelled]
        super().__init__([1.0] * len(self.labelled), int(num_samples), replacement=True, generator=torch.Generator().manual_seed(seed))
        self.set_labelled_share(labelled_share)

    def set_labelled_share(self, labelled_share: float | None) -> None:
        """Draw pixel-labelled items in the proportion ``labelled_share`` from now on (``None``: every item alike)."""
        n_labelled = sum(self.labelled)
        n_other = len(self.labelled) - n_labelled
        if labelled_share is not None and not 0.0 <= float(labelled_share) <= 1.0:
            raise ValueError(f"labelled_share must be in [0, 1], got {labelled_share}.")
        if labelled_share is None or n_labelled == 0 or n_other == 0:  # nothing to mix
            weights = [1.0] * len(self.labelled)
        else:
            share = float(labelled_share)
            weights = [share / n_labelled if flag else (1.0 - share) / n_other for flag in self.labelled]
        self.labelled_share = labelled_share
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def state_dict(self) -> dict:
        """The generator's state (the draws to come)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def set_labelled_share(sampler: MixedSampler | None, labelled_share: float | None) -> None:
    """:meth:`MixedSampler.set_labelled_share` for a stage's ``on_start``; nothing when there is no mixed sampler."""
    if sampler is not None:
        sampler.set_labelled_share(labelled_share)


def mixed_sampler(items: Sequence[dict], labelled_share: float, num_samples: int | None = None, seed: int = 0) -> MixedSampler:
    """A :class:`MixedSampler` whose batches hold pixel-labelled items in the proportion ``labelled_share`` on average.

    The paper of unrolled LRP fills each batch with a mixture of pixel-labelled and image-level-labelled
    images (about half labelled); its U-Net sees labelled images only (``labelled_share`` 1). Items are
    drawn with replacement, ``num_samples`` per epoch (default ``len(items)``, so every arm takes as many
    optimiser steps per epoch). When every item has pixel labels there is nothing to mix: every item is drawn
    alike, as in the classification pre-training, so that arms of different ``labelled_share`` see the same
    draws.

    Args:
        items: the training items (``pixel_labelled`` marks the labelled ones, see :func:`keep_pixel_labels`;
            an item without the mark counts as labelled when it has a label file).
        labelled_share: expected share of pixel-labelled items in a batch, in [0, 1].
        num_samples: draws per epoch.
        seed: seed of the sampler's generator.
    """
    labelled = [bool(item.get("pixel_labelled", _has_pixel_labels(item))) for item in items]
    sampler = MixedSampler(labelled, labelled_share, num_samples or len(items), seed)  # checks the share's range
    if labelled_share > 0 and not any(labelled):
        raise ValueError("no training item has pixel labels: nothing to sample")
    return sampler
