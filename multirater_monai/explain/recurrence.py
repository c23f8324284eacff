"""Explanation outputs of recurrent calibration (MrPrism): rater agreement maps and a figure of the recurrence."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from multirater_monai.explain.confusion_maps import ReliabilityMapd, _case_name, values_at_class

__all__ = ["RaterAgreementd", "SaveRecurrenceFigured", "plot_recurrence"]


class RaterAgreementd(ReliabilityMapd):
    """Each rater's predicted probability of the consensus class at every voxel: where a rater is expected to agree.

    From (R, L, *S) per-rater probabilities and the consensus label, store (R, *S) ``probs[r, label]``,
    MrPrism's confidence ``exp(w)`` read at the calibrated segmentation's class (as CM-Net's reliability map
    reads each matrix's diagonal there).

    Args:
        keys: the (R, L, *S) rater probabilities key.
        label_key: (1, *S) / (*S) class indices, or (L, *S) probabilities or logits (arg-max is taken).
        output_key: where to store the (R, *S) map.
    """

    def __init__(self, keys: KeysCollection = "rater_probs", label_key: str = "pred", output_key: str = "agreement",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, label_key, output_key, allow_missing_keys)

    @staticmethod
    def per_rater_map(values: torch.Tensor, label: Any) -> torch.Tensor:
        return values_at_class(values, label)


def _middle_slice(x: np.ndarray, spatial_dims: int) -> np.ndarray:
    """The 2D view of a (*S) array: itself in 2D, the middle slice of the last axis in 3D."""
    return x if spatial_dims == 2 else x[..., x.shape[-1] // 2]


def plot_recurrence(image: np.ndarray, probs: np.ndarray, title: str = ""):
    """A matplotlib figure: the image, then the foreground probability of each recurrence (Rec0 .. RecT-1).

    Args:
        image: (H, W) image.
        probs: (T, H, W) foreground probabilities.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = probs.shape[0]
    fig, axes = plt.subplots(1, t + 1, figsize=(2.2 * (t + 1), 2.6), squeeze=False)
    axes[0, 0].imshow(image, cmap="gray")
    axes[0, 0].set_title("image", fontsize=9)
    for i in range(t):
        axes[0, i + 1].imshow(probs[i], cmap="magma", vmin=0.0, vmax=1.0)
        axes[0, i + 1].set_title(f"Rec{i}", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


class SaveRecurrenceFigured(MapTransform):
    """Save ``<case>_recurrence.png``: the image beside each recurrence's foreground probability (3D: middle slice).

    Args:
        keys: the (T, L, *S) per-recurrence logits key.
        output_dir: destination folder.
        image_key: the (C, *S) image (its first channel is drawn; its file name names the figure).
        foreground: the class whose probability is drawn; None draws ``1 - p(background)``.
    """

    def __init__(self, keys: KeysCollection, output_dir: str | os.PathLike, image_key: str = "image",
                 foreground: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.foreground = foreground

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import matplotlib.pyplot as plt

        d = dict(data)
        for key in self.key_iterator(d):
            probs = torch.softmax(torch.as_tensor(d[key]).float(), dim=1)
            fg = 1.0 - probs[:, 0] if self.foreground is None else probs[:, self.foreground]
            image = torch.as_tensor(d[self.image_key])[0].float()
            dims = image.ndim
            meta = d[self.image_key].meta if isinstance(d[self.image_key], MetaTensor) else {}
            case = _case_name(meta)
            fig = plot_recurrence(_middle_slice(image.cpu().numpy(), dims), _middle_slice(fg.cpu().numpy(), dims), case)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.output_dir / f"{case}_recurrence.png", dpi=100)
            plt.close(fig)
        return d
