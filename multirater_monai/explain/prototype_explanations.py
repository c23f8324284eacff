"""ScaleProtoSeg's "why": each predicted class explained by the prototypes that drive it, each beside the training
patch it was projected onto.

The prototype and group activation maps themselves are written by ``SaveImaged`` in the input's geometry
(``inference.json``); :class:`SavePrototypeExplanationsd` adds, per image, the patches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from multirater_monai.engines.adapters import unwrap_network
from multirater_monai.engines.scaleprotoseg import crop_centred
from multirater_monai.explain.confusion_maps import _case_name
from multirater_monai.explain.prototype_patches import save_patch_mosaic

__all__ = ["SavePrototypeExplanationsd", "prototype_contributions"]


def prototype_contributions(network: torch.nn.Module, activations: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """How much each prototype adds to the predicted class where that class is predicted: (P,) values.

    ``activations`` (P, *S), ``pred`` (*S) class indices. Stage 1: ``h_proto``'s weight times the activation;
    grouped: the activation weighted by the class's group weights times ``h_group``'s weights (each prototype's
    share of the groups' log-linear combination). Prototypes of other classes and masked duplicates give 0.
    """
    net = unwrap_network(network)
    owner = net.prototype_class().to(activations.device)
    active = net.prototype_active.flatten().to(activations.device)
    flat = activations.flatten(1)
    where = pred.flatten().long()
    out = torch.zeros(activations.shape[0], device=activations.device)
    if bool(net.grouped):
        # prototype p of class c: sum over the class's groups g of h_group[c, c·G + g] · w[c, g, j(p)]
        matrix = net.group_matrix().detach()  # (L·G, P)
        head = net.group_last_layer.detach()  # (L, L·G)
        per_class = head @ matrix  # (L, P)
    else:
        per_class = net.last_layer * active[None].to(net.last_layer.dtype)
    for c in torch.unique(where).tolist():
        mask = where == c
        mean_act = flat[:, mask].mean(dim=1)
        own = (owner == c) & active
        out = torch.where(own, per_class[c].to(out.device) * mean_act, out)
    return out


class SavePrototypeExplanationsd(MapTransform):
    """Write, per image, the prototypes that contribute most to its predicted classes, each as the input patch
    where it activates most (within its class's predicted region) beside its training patch.

    Files: ``<case>_why.png`` (a row per prototype: input patch, training patch; 3D: middle slices),
    ``<case>_why.nii.gz`` (the same mosaic, float32) and ``<case>_why.json`` (prototype, class, scale, dilation,
    contribution, activation, location in the input; training case, image and location).

    Args:
        keys: the image (C, *S) as the network reads it.
        activations_key: the prototype activations (P, *S) (``forward_all``'s ``activations``).
        pred_key: the predicted label map (1, *S).
        network: the trained, projected ScaleProtoSeg.
        output_dir: destination folder.
        class_names: the ``L`` class names.
        num_prototypes: prototypes shown per predicted foreground class.
        save_figure: write the PNG.
    """

    def __init__(
        self,
        keys: KeysCollection,
        activations_key: str,
        pred_key: str,
        network: torch.nn.Module,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        num_prototypes: int = 3,
        save_figure: bool = True,
    ) -> None:
        super().__init__(keys)
        self.activations_key = activations_key
        self.pred_key = pred_key
        self.network = network
        self.output_dir = Path(output_dir)
        self.class_names = [str(c) for c in class_names]
        self.num_prototypes = int(num_prototypes)
        self.save_figure = save_figure

    def explain(self, image: torch.Tensor, activations: torch.Tensor, pred: torch.Tensor) -> dict[str, Any]:
        """Rows (R, 2, C, *side) and their records for one image."""
        net = unwrap_network(self.network)
        if not bool(net.projected):
            raise ValueError("the model's prototypes were never projected onto training patches: nothing to show (train it to the end).")
        image = torch.as_tensor(image).float().cpu()
        activations = torch.as_tensor(activations).float().cpu()
        pred = torch.as_tensor(pred).cpu().reshape(activations.shape[1:]).long()
        contribution = prototype_contributions(net, activations, pred).cpu()
        owner, scale = net.prototype_class(), net.prototype_scale()
        rows, records = [], []
        classes = [c for c in torch.unique(pred).tolist() if c > 0] or [0]
        for c in classes:
            candidates = torch.nonzero((owner == c) & (contribution > 0)).flatten()
            order = candidates[contribution[candidates].argsort(descending=True)][: self.num_prototypes]
            region = pred == c
            for p in order.tolist():
                act = torch.where(region, activations[p], torch.full_like(activations[p], -float("inf")))
                where = int(act.flatten().argmax())
                loc = [int(v) for v in torch.unravel_index(torch.tensor(where), tuple(pred.shape))]
                patch, corner = crop_centred(image, loc, net.patch_side)
                rows.append(torch.stack([patch, net.source_patches[p].cpu()]))
                records.append(
                    {
                        "prototype": p,
                        "class": self.class_names[c] if c < len(self.class_names) else str(c),
                        "scale": int(scale[p]),
                        "dilation": net.dilations[int(scale[p])],
                        "contribution": float(contribution[p]),
                        "activation": float(activations[p].flatten()[where]),
                        "location": loc,
                        "training_case": int(net.source_case[p]),
                        "training_location": [int(v) for v in net.source_location[p].tolist()],
                    }
                )
        return {"rows": torch.stack(rows) if rows else None, "records": records}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            reference = d[key]
            meta = dict(reference.meta) if isinstance(reference, MetaTensor) else {}
            case = _case_name(meta)
            found = self.explain(reference, d[self.activations_key], d[self.pred_key])
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / f"{case}_why.json").write_text(json.dumps({"image": case, "prototypes": found["records"]}, indent=1) + "\n")
            if found["rows"] is not None:
                titles = [
                    [f"{r['class']} scale {r['scale']} (p{r['prototype']})\n{r['location']} act {r['activation']:.2f}",
                     f"train case {r['training_case']}\n{r['training_location']}"]
                    for r in found["records"]
                ]
                save_patch_mosaic(self.output_dir / f"{case}_why", found["rows"], titles,
                                  f"{case}: why (where each prototype fires, then its training patch)", self.save_figure)
        return d
