"""Explanations of a classifier-segmenter (unrolled LRP): image-level class scores and per-class heatmaps.

:class:`ClassScoresd` runs the network's classifier (its ``encoder``) on the whole image;
:class:`SaveHeatmapsd` writes, for every foreground class the classifier finds present, its heatmap
(NIfTI in the input's geometry and a PNG beside the image) and all class scores as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SaveImage

from multirater_monai.engines.adapters import unwrap_network
from multirater_monai.explain.confusion_maps import _case_name
from multirater_monai.explain.recurrence import _middle_slice

__all__ = ["ClassScoresd", "SaveHeatmapsd", "plot_heatmaps"]


class ClassScoresd(MapTransform):
    """Image-level class scores (L,) of the image under ``keys``: the network's ``encoder`` on the whole image.

    The image is zero-padded at the end of each axis to a multiple of the encoder's ``downsampling`` when it
    is not one (a padded border enters the average pooling; sizes that are multiples are unchanged).

    Args:
        keys: the image key (C, *S).
        network: a network with an ``encoder`` returning (B, L) class scores (possibly wrapped by an adapter).
        output_key: where the (L,) scores go.
    """

    def __init__(self, keys: KeysCollection, network: torch.nn.Module, output_key: str = "class_scores") -> None:
        super().__init__(keys)
        self.network = network
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        encoder = unwrap_network(self.network).encoder
        step = int(encoder.downsampling)
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key]).float()
            pad: list[int] = []
            for size in reversed(image.shape[1:]):
                pad += [0, (-size) % step]
            device = next(encoder.parameters()).device
            with torch.no_grad():
                scores = encoder(F.pad(image, pad).unsqueeze(0).to(device))[0]
            d[self.output_key] = scores.cpu()
        return d


class SaveHeatmapsd(MapTransform):
    """Write the heatmaps of the classes found present, and the class scores.

    For an image ``<case>``: ``<case>_heatmap_<class>.nii.gz`` (float32, the input's geometry) for every
    foreground class whose score's sigmoid is at least ``threshold``; ``<case>_heatmaps.png`` (the image
    beside those heatmaps; 3D: middle slice of the last axis); ``<case>_class_scores.json`` (every class:
    score, probability, present). The background's score is not trained (weight 0 in the paper's
    classification loss) and is never called present.

    Args:
        keys: the heatmaps (L, *S) (the segmentation logits before the arg-max).
        scores_key: the (L,) class scores (:class:`ClassScoresd`).
        class_names: ``L`` names (file names and the JSON).
        output_dir: destination folder.
        meta_key: the key whose meta data (affine, file name) the files take.
        threshold: probability from which a class counts as present.
        save_figure: write the PNG.
    """

    def __init__(
        self,
        keys: KeysCollection,
        scores_key: str,
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        meta_key: str = "image",
        threshold: float = 0.5,
        save_figure: bool = True,
    ) -> None:
        super().__init__(keys)
        self.scores_key = scores_key
        self.class_names = [str(c) for c in class_names]
        self.output_dir = Path(output_dir)
        self.meta_key = meta_key
        self.threshold = float(threshold)
        self.save_figure = save_figure

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = d[self.meta_key]
        meta = dict(reference.meta) if isinstance(reference, MetaTensor) else {}
        case = _case_name(meta)
        scores = torch.as_tensor(d[self.scores_key]).float().cpu()
        if scores.numel() != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names for {scores.numel()} class scores.")
        probs = torch.sigmoid(scores)
        present = [c for c in range(1, scores.numel()) if probs[c] >= self.threshold]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        report = {
            name: {"score": float(scores[c]), "probability": float(probs[c]), "present": c in present}
            for c, name in enumerate(self.class_names)
        }
        report[self.class_names[0]]["present"] = None
        (self.output_dir / f"{case}_class_scores.json").write_text(json.dumps(report, indent=2) + "\n")
        for key in self.key_iterator(d):
            maps = torch.as_tensor(d[key]).detach().float().cpu()
            for c in present:
                writer = SaveImage(
                    output_dir=str(self.output_dir),
                    output_postfix=f"heatmap_{self.class_names[c]}",
                    output_dtype=np.float32,
                    resample=False,
                    separate_folder=False,
                    print_log=False,
                )
                writer(MetaTensor(maps[c : c + 1], meta=dict(meta)))
            if self.save_figure:
                dims = maps.ndim - 1
                image = torch.as_tensor(reference).detach().float().cpu().numpy()[0]
                fig = plot_heatmaps(
                    _middle_slice(image, dims),
                    {self.class_names[c]: _middle_slice(maps[c].numpy(), dims) for c in present},
                    title=case,
                )
                import matplotlib.pyplot as plt

                fig.savefig(self.output_dir / f"{case}_heatmaps.png", dpi=100)
                plt.close(fig)
        return d


def plot_heatmaps(image: np.ndarray, heatmaps: Mapping[str, np.ndarray], title: str = ""):
    """A matplotlib figure: the (H, W) image, then each named (H, W) heatmap (diverging colours centred on 0:
    red is evidence for the class, blue against)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 1 + len(heatmaps)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), squeeze=False)
    axes[0, 0].imshow(image, cmap="gray")
    axes[0, 0].set_title("image")
    for ax, (name, heat) in zip(axes[0, 1:], heatmaps.items()):
        bound = float(np.abs(heat).max()) or 1.0
        ax.imshow(heat, cmap="bwr", vmin=-bound, vmax=bound)
        ax.set_title(f"heatmap: {name}")
    for ax in axes[0]:
        ax.axis("off")
    if not heatmaps:
        axes[0, 0].set_title("image (no class found present)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
