"""TAX's "why": the training patches behind each prototype, and per-image explanations by them.

:class:`PrototypePatchIndex` finds, once training is over, the ``K`` training images whose best location is
most similar to each prototype of the assigner's bank, and stores those patches (pixels, training case,
corner, cosine) in the network's bank buffers of ``models/model.pt`` and in ``models/prototype_patches.json``.
It runs on the model that model selection kept (``model.pt`` after the last validation), so the patches
describe the prototypes that inference will use.

:class:`SaveTAXExplanationsd` writes, for an inference image, the locations G assigned to an annotator with
the highest similarity, each beside the training patches of its winning prototype (PNG, NIfTI mosaic, JSON).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapTransform, NormalizeIntensityd

from multirater_monai.engines.adapters import unwrap_network
from multirater_monai.explain.confusion_maps import _case_name

__all__ = ["PrototypePatchIndex", "SaveTAXExplanationsd", "crop_patch", "pad_to_multiple", "save_patch_mosaic"]

logger = logging.getLogger(__name__)

INDEX_FILE = "prototype_patches.json"


def pad_to_multiple(image: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """(C, *S) -> (C, *S') zero-padded at the end of each axis to a multiple of ``multiple`` and at least ``minimum``."""
    pad: list[int] = []
    for size in reversed(image.shape[1:]):
        target = max(size + (-size) % multiple, minimum)
        target += (-target) % multiple
        pad += [0, target - size]
    return F.pad(image, pad)


def crop_patch(image: torch.Tensor, corner: Sequence[int], side: int) -> torch.Tensor:
    """(C, *S) -> (C, side, ...): the cube of ``side`` starting at ``corner``."""
    index = (slice(None),) + tuple(slice(int(c), int(c) + side) for c in corner)
    return image[index]


def _patch_corner(location: Sequence[int], cell: int, side: int, shape: Sequence[int]) -> list[int]:
    """Corner of the ``side`` cube centred on the ``cell``-wide grid location, moved inside an image of ``shape``."""
    return [min(max(int(u) * cell + cell // 2 - side // 2, 0), int(n) - side) for u, n in zip(location, shape)]


def save_patch_mosaic(prefix: str | os.PathLike, rows: torch.Tensor, titles: Sequence[Sequence[str]], title: str, figure: bool = True) -> None:
    """Write rows of patches side by side: ``<prefix>.nii.gz`` (float32 mosaic of channel 0, rows × columns of
    patches, 3D patches whole, identity affine: a mosaic has no place in the input's geometry) and, with
    ``figure``, ``<prefix>.png`` (3D: middle slices) with a title per patch.

    Args:
        prefix: path without suffix.
        rows: (R, K, C, *side) patches.
        titles: R lists of K titles.
        title: the figure's title.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rows = torch.as_tensor(rows)[:, :, 0].float()  # (R, K, *side), channel 0
    mosaic = torch.cat([torch.cat(list(row), dim=1) for row in rows], dim=0)  # (R·side, K·side, ...)
    nib.save(nib.Nifti1Image(mosaic.numpy().astype(np.float32), np.eye(4)), str(prefix.with_name(prefix.name + ".nii.gz")))
    if not figure:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multirater_monai.explain.recurrence import _middle_slice

    m, n = rows.shape[0], rows.shape[1]
    dims = rows.ndim - 2
    fig, axes = plt.subplots(m, n, figsize=(2.2 * n, 2.3 * m), squeeze=False)
    for i in range(m):
        for j in range(n):
            axes[i, j].imshow(_middle_slice(rows[i, j].numpy(), dims), cmap="gray")
            axes[i, j].axis("off")
            axes[i, j].set_title(titles[i][j], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.4 / (2.3 * m)))  # room for the title above the first row
    fig.savefig(prefix.with_name(prefix.name + ".png"), dpi=90)
    plt.close(fig)


def _default_loader() -> Callable[[Mapping], Mapping]:
    return Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            NormalizeIntensityd(keys="image", channel_wise=True),
        ]
    )


class PrototypePatchIndex:
    """For every prototype of a :class:`~multirater_monai.networks.TAX`, its ``K`` nearest training patches.

    Each training image is scored by its best location for each prototype (cosine of E's feature with the
    prototype); the ``K`` best images are kept per prototype (distinct images, so that the examples differ),
    with the patch of side ``patch_context`` centred on that location (moved inside the image at a border).

    As a trainer handler (``method_handlers``), :meth:`attach` builds the index when training completes,
    on ``model_path`` (the selected model; the running network when there is none yet), and writes it
    back into that file (atomically) and into ``index_file``. Only rank 0 writes under ``torch.distributed``.

    Args:
        network: the TAX network (wrappers are looked through); its architecture for loading ``model_path``.
        datalist: training items (``{"image": path, ...}``); ``case`` indices in the index refer to this list.
        model_path: ``models/model.pt``.
        index_file: the JSON written beside it (default ``prototype_patches.json`` in its folder).
        loader: item -> dict with ``"image"`` (C, *S), as training normalises it (default: load, channel
            first, z-score per channel).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        datalist: Sequence[Mapping[str, Any]],
        model_path: str | os.PathLike,
        index_file: str | os.PathLike | None = None,
        loader: Callable[[Mapping], Mapping] | None = None,
    ) -> None:
        self.network = network
        self.datalist = list(datalist)
        self.model_path = Path(model_path)
        self.index_file = Path(index_file) if index_file is not None else self.model_path.with_name(INDEX_FILE)
        self.loader = loader if loader is not None else _default_loader()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine: Engine) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        network = copy.deepcopy(unwrap_network(self.network))
        if self.model_path.is_file():
            network.load_state_dict(torch.load(self.model_path, map_location="cpu", weights_only=True))
        network.to(next(unwrap_network(self.network).parameters()).device)
        records = self.build(network)
        if self.model_path.is_file():
            state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
            tmp = self.model_path.with_name(self.model_path.name + ".index.tmp")
            torch.save(state, tmp)
            os.replace(tmp, self.model_path)
        self.write_json(records)
        logger.info(f"prototype patch index: {len(records)} prototypes, written into {self.model_path} and {self.index_file}")

    def build(self, network: torch.nn.Module) -> list[dict[str, Any]]:
        """Fill ``network``'s bank buffers; returns one record per prototype (JSON-ready)."""
        net = unwrap_network(network)
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        assigner = net.assigner
        cell, side = int(net.patch_size), int(net.patch_context)
        num_prototypes, k = net.bank_cases.shape
        if not self.datalist:
            raise ValueError("the prototype patch index needs training images; the training datalist is empty.")
        best = torch.full((num_prototypes, len(self.datalist)), -float("inf"))
        where: list[torch.Tensor] = []
        images: list[torch.Tensor] = []
        with torch.no_grad():
            for case, item in enumerate(self.datalist):
                image = torch.as_tensor(self.loader(dict(item))["image"]).float()
                image = pad_to_multiple(image, cell, side)
                sim = assigner.similarities(image.unsqueeze(0).to(device))[0].flatten(0, 1).flatten(1).cpu()  # (P, locations)
                value, location = sim.max(dim=1)
                best[:, case] = value
                where.append(location)
                images.append(image)
        top = best.topk(min(k, len(self.datalist)), dim=1)
        grid_shapes = [tuple(s // cell for s in img.shape[1:]) for img in images]
        patches = torch.zeros_like(net.bank_patches)
        cases = torch.full_like(net.bank_cases, -1)
        corners = torch.zeros_like(net.bank_corners)
        similarity = torch.zeros_like(net.bank_similarity)
        records = []
        groups = net.num_annotators + 1
        per_group = num_prototypes // groups
        for p in range(num_prototypes):
            entries = []
            for j, (value, case) in enumerate(zip(top.values[p].tolist(), top.indices[p].tolist())):
                location = np.unravel_index(int(where[case][p]), grid_shapes[case])
                corner = _patch_corner(location, cell, side, images[case].shape[1:])
                patches[p, j] = crop_patch(images[case], corner, side).to(patches.device)
                cases[p, j] = case
                corners[p, j] = torch.as_tensor(corner)
                similarity[p, j] = value
                entries.append({"case": case, "image": str(self.datalist[case].get("image")), "corner": corner, "similarity": value})
            group = p // per_group
            records.append({"prototype": p, "group": group, "shared": group == net.num_annotators, "patches": entries})
        net.bank_patches.copy_(patches)
        net.bank_cases.copy_(cases)
        net.bank_corners.copy_(corners)
        net.bank_similarity.copy_(similarity)
        net.bank_built.fill_(True)
        net.train(was_training)
        return records

    def write_json(self, records: list[dict[str, Any]]) -> None:
        self.index_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_file.with_name(self.index_file.name + ".tmp")
        tmp.write_text(json.dumps({"patch_side": int(unwrap_network(self.network).patch_context), "prototypes": records}, indent=1) + "\n")
        os.replace(tmp, self.index_file)


class SaveTAXExplanationsd(MapTransform):
    """Write the "why" of an image: its most confidently assigned locations beside their prototypes' training patches.

    For an image ``<case>``: the ``num_locations`` locations of M that G assigned to an annotator (not the
    shared group) with the highest similarity (the shared group's best when G assigned none), each with the
    ``K`` training patches of its winning prototype from the network's bank. Written as
    ``<case>_why.png`` (a row per location: the input patch, then the training patches; 3D: middle slices),
    ``<case>_why.nii.gz`` (the same mosaic, float32: rows × (1 + K) patches, identity affine) and ``<case>_why.json``
    (location, annotator, prototype, similarity; each training patch's case, image file, corner, similarity).

    Args:
        keys: the image (C, *S), as the network reads it.
        network: the trained TAX network (its bank built).
        output_dir: destination folder.
        rater_names: the ``N`` annotators' names.
        num_locations: locations explained per image.
        save_figure: write the PNG.
    """

    def __init__(
        self,
        keys: KeysCollection,
        network: torch.nn.Module,
        output_dir: str | os.PathLike,
        rater_names: Sequence[str],
        num_locations: int = 3,
        save_figure: bool = True,
    ) -> None:
        super().__init__(keys)
        self.network = network
        self.output_dir = Path(output_dir)
        self.rater_names = [str(r) for r in rater_names]
        self.num_locations = int(num_locations)
        self.save_figure = save_figure

    def explain(self, image: torch.Tensor) -> dict[str, Any]:
        """The explained locations of one (C, *S) image: input patches (M, C, *side), training patches (M, K, C, *side), records."""
        net = unwrap_network(self.network)
        if not bool(net.bank_built):
            raise ValueError("the model has no prototype patch index (bank_built is false): it is built when training completes.")
        if len(self.rater_names) != net.num_annotators:
            raise ValueError(f"{len(self.rater_names)} rater names for a network of {net.num_annotators} annotators.")
        cell, side = int(net.patch_size), int(net.patch_context)
        padded = pad_to_multiple(torch.as_tensor(image).float(), cell, side)
        device = next(net.parameters()).device
        with torch.no_grad():
            match = net.prototype_match(padded.unsqueeze(0).to(device))
        group, prototype, sim = (match[k][0].cpu() for k in ("group", "prototype", "similarity"))
        assigned = group != net.num_annotators
        score = torch.where(assigned, sim, sim - 10.0)  # cosines: every assigned location before every shared one
        order = score.flatten().argsort(descending=True)[: self.num_locations]
        inputs, patches, records = [], [], []
        names = self.rater_names + ["shared"]
        for flat in order.tolist():
            location = np.unravel_index(flat, tuple(group.shape))
            p = int(prototype.flatten()[flat])
            corner = _patch_corner(location, cell, side, padded.shape[1:])
            inputs.append(crop_patch(padded, corner, side))
            patches.append(net.bank_patches[p].cpu())
            records.append(
                {
                    "location": [int(u) * cell for u in location],
                    "patch_corner": corner,
                    "annotator": names[int(group.flatten()[flat])],
                    "prototype": p,
                    "similarity": float(sim.flatten()[flat]),
                    "training_patches": [
                        {"case": int(c), "corner": [int(v) for v in corner_k], "similarity": float(s)}
                        for c, corner_k, s in zip(net.bank_cases[p].tolist(), net.bank_corners[p].tolist(), net.bank_similarity[p].tolist())
                    ],
                }
            )
        return {"inputs": torch.stack(inputs), "patches": torch.stack(patches), "records": records}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            reference = d[key]
            meta = dict(reference.meta) if isinstance(reference, MetaTensor) else {}
            case = _case_name(meta)
            found = self.explain(torch.as_tensor(reference))
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / f"{case}_why.json").write_text(json.dumps({"image": case, "locations": found["records"]}, indent=1) + "\n")
            rows = torch.cat([found["inputs"].unsqueeze(1), found["patches"]], dim=1)  # (M, 1 + K, C, *side)
            titles = []
            for rec in found["records"]:
                titles.append(
                    [f"input {rec['location']}\n{rec['annotator']} ({rec['similarity']:.2f})"]
                    + [f"train case {p['case']}\n{p['corner']} ({p['similarity']:.2f})" for p in rec["training_patches"]]
                )
            save_patch_mosaic(self.output_dir / f"{case}_why", rows, titles,
                              f"{case}: why (input patch, then its prototype's training patches)", self.save_figure)
        return d
