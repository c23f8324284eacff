"""Explanation outputs of confusion-matrix methods: reliability maps, per-rater NIfTI files, CM figures."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SaveImage

__all__ = [
    "ReliabilityMapd",
    "SaveConfusionFigured",
    "SaveRaterMapsd",
    "class_indices",
    "plot_confusion_matrices",
    "reliability_map",
    "values_at_class",
]


def class_indices(label: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(*S) class indices from (*S) or (1, *S) indices, or from (L, *S) probabilities / logits (arg-max)."""
    label = torch.as_tensor(label)
    if label.ndim == spatial_dims + 1:
        label = label.argmax(0) if label.shape[0] > 1 else label[0]
    return label.long()


def values_at_class(values: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(R, L, *S) per-rater, per-class values read at each voxel's class: (R, *S).

    ``label``: (*S) / (1, *S) class indices or (L, *S) probabilities (see :func:`class_indices`).
    """
    index = class_indices(label, values.ndim - 2)
    return torch.gather(values, 1, index[None, None].expand(values.shape[0], 1, *index.shape))[:, 0]


def reliability_map(cm: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Probability that each rater labels a voxel correctly, given its (estimated) class.

    Args:
        cm: (R, L, L, *S) pixel-wise confusion matrices, columns are distributions over the rater's label.
        label: (*S) or (1, *S) class indices (e.g. the consensus segmentation), or (L, *S) probabilities.

    Returns:
        (R, *S): ``cm[r, label, label]`` at every voxel, the diagonal entry of the voxel's class.
    """
    return values_at_class(torch.diagonal(cm, dim1=1, dim2=2).movedim(-1, 1), label)


class ReliabilityMapd(MapTransform):
    """Store :func:`reliability_map` of ``keys`` (the (R, L, L, *S) CMs) under ``output_key``.

    Args:
        keys: the confusion-matrix key.
        label_key: (1, *S) or (*S) class indices, or (L, *S) probabilities/logits (argmax is taken).
        output_key: where to store the (R, *S) map.
    """

    def __init__(
        self, keys: KeysCollection = "cm", label_key: str = "pred", output_key: str = "reliability", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.output_key = output_key

    @staticmethod
    def per_rater_map(values: torch.Tensor, label: Any) -> torch.Tensor:
        """(R, *S) map of ``values`` (the ``keys`` entry) at ``label``'s classes; subclasses read other entries."""
        return reliability_map(values, label)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            out = self.per_rater_map(torch.as_tensor(d[key]), d[self.label_key])
            d[self.output_key] = MetaTensor(out, meta=dict(d[key].meta)) if isinstance(d[key], MetaTensor) else out
        return d


def _case_name(meta: Mapping) -> str:
    name = os.path.basename(str(meta.get("filename_or_obj", "case")))
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


class SaveRaterMapsd(MapTransform):
    """Write per-rater maps (R, *S) as one NIfTI per rater, ``<case>_<key>_<rater>.nii.gz``, in the input's geometry.

    Args:
        keys: keys of (R, *S) maps (e.g. per-rater segmentations, reliability maps).
        output_dir: destination folder.
        rater_names: names used in the file names (defaults to ``rater0..``).
        meta_key: key whose meta data (affine, file name) the files take, usually ``"image"``.
        dtypes: output dtype per key (e.g. ``uint8`` for segmentations, ``float32`` for maps).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        rater_names: Sequence[str] | None = None,
        meta_key: str = "image",
        dtypes: Sequence[Any] | Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = str(output_dir)
        self.rater_names = list(rater_names) if rater_names is not None else None
        self.meta_key = meta_key
        self.dtypes = list(dtypes) if isinstance(dtypes, (list, tuple)) else [dtypes] * len(self.keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = d[self.meta_key]
        meta = dict(reference.meta) if isinstance(reference, MetaTensor) else {}
        for key, dtype in zip(self.keys, self.dtypes):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"SaveRaterMapsd: no '{key}' to save.")
            maps = torch.as_tensor(d[key])
            names = self.rater_names or [f"rater{r}" for r in range(maps.shape[0])]
            if len(names) != maps.shape[0]:
                raise ValueError(f"{len(names)} rater names for {maps.shape[0]} maps in '{key}'.")
            for r, rater in enumerate(names):
                writer = SaveImage(
                    output_dir=self.output_dir,
                    output_postfix=f"{key}_{rater}",
                    output_dtype=dtype,
                    resample=False,
                    separate_folder=False,
                    print_log=False,
                )
                writer(MetaTensor(maps[r : r + 1].detach().cpu(), meta=dict(meta)))
        return d


def plot_confusion_matrices(
    cms: np.ndarray, rater_names: Sequence[str], class_names: Sequence[str] | None = None, title: str = ""
):
    """A matplotlib figure of R confusion matrices (R, L, L), columns = true class, rows = rater's label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cms = np.asarray(cms, dtype=float)
    r, l = cms.shape[0], cms.shape[1]
    class_names = list(class_names) if class_names is not None else [str(i) for i in range(l)]
    fig, axes = plt.subplots(1, r, figsize=(2.2 * r + 0.6, 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(np.nan_to_num(cms[i], nan=0.0), vmin=0.0, vmax=1.0, cmap="viridis")
        for row in range(l):
            for col in range(l):
                value = cms[i, row, col]
                text = "-" if np.isnan(value) else f"{value:.2f}"
                ax.text(col, row, text, ha="center", va="center", color="w" if value < 0.6 else "k", fontsize=8)
        ax.set_title(rater_names[i], fontsize=9)
        ax.set_xticks(range(l), class_names, fontsize=7)
        ax.set_yticks(range(l), class_names, fontsize=7)
        ax.set_xlabel("true", fontsize=8)
        if i == 0:
            ax.set_ylabel("rater says", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


class SaveConfusionFigured(MapTransform):
    """Save a PNG of each rater's confusion matrix over the image, ``<case>_cm.png``.

    The pixel-wise CMs (R, L, L, *S) are averaged over the voxels of each (consensus) class, which
    gives an image-level CM comparable to a rater's empirical one.

    Args:
        keys: the (R, L, L, *S) confusion-matrix key.
        label_key: (1, *S)/(*S) class indices or (L, *S) probabilities used as the truth for averaging.
        output_dir: destination folder.
        rater_names, class_names: labels of the figure.
        meta_key: key whose file name names the figure.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        rater_names: Sequence[str],
        class_names: Sequence[str] | None = None,
        label_key: str = "pred",
        meta_key: str = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.rater_names = list(rater_names)
        self.class_names = class_names
        self.label_key = label_key
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import matplotlib.pyplot as plt

        from multirater_monai.transforms.confusion import image_confusion_matrix

        d = dict(data)
        for key in self.key_iterator(d):
            image_cm = image_confusion_matrix(d[key], d[self.label_key]).cpu().numpy()
            meta = d[self.meta_key].meta if isinstance(d[self.meta_key], MetaTensor) else {}
            case = _case_name(meta)
            fig = plot_confusion_matrices(image_cm, self.rater_names, self.class_names, title=case)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.output_dir / f"{case}_cm.png", dpi=100)
            plt.close(fig)
        return d
