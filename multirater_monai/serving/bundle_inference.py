"""A bundle's inference pipeline read the way MONAI Label 0.8.5's bundle infer task reads it.

MONAI Label's ``BundleInferTask`` (``monailabel/tasks/infer/bundle.py``) takes from a bundle:
``configs/inference.json`` with ``bundle_root`` set to the bundle's folder; the network from ``network_def``, its
weights from ``models/model.pt`` (a state dict, loaded with ``load_state_dict``); ``preprocessing`` (a ``Compose``
becomes its list of transforms, and ``LoadImaged`` loads meta data too); ``inferer``; ``postprocessing`` without its
``SaveImaged`` transforms; the label names from ``network_data_format.outputs.<first>.channel_def`` in
``configs/metadata.json`` (lower-cased, background left out) and the dimension from the input's ``spatial_shape``
(:class:`BundleInference` takes it from the served config's ``spatial_dims`` instead: see its 3D variant below).
It puts the image path under ``image_path`` in the data, runs the network's ``forward`` on the pre-processed image
(one tensor out: the consensus logits), and writes ``pred``.

:class:`BundleInference` does the same without MONAI Label installed, so that the contract tests in CI exercise
what the server will run, and the MONAI Label app (``apps/monailabel``) builds its tasks from it, adding the
bundle's :mod:`label views <multirater_monai.serving.label_views>`, which run the bundle's ``infer_network`` (every
output) instead of ``forward``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.config import KeysCollection
from monai.transforms import Compose, LoadImaged, MapTransform, Resize, SaveImaged

from multirater_monai.errors import UserError
from multirater_monai.serving.label_views import LabelView, expand_views

__all__ = [
    "BundleInference",
    "SetAsided",
    "ToLabelMapd",
    "consensus_labels",
    "model_spatial_dims",
    "served_bundles",
    "write_label_nifti",
]

CONFIG = "inference.json"
METADATA = "metadata.json"
MODEL = "model.pt"


class SetAsided:
    """Run ``transform`` with some entries of the data dict set aside, and put them back afterwards.

    MONAI Label adds the image's path as ``image_path``, a string. MONAI 1.6's ``Spacingd`` takes every entry whose
    name starts with ``<key>_`` for a meta-data dict of ``<key>`` and calls ``.update`` on it, so ``image_path``
    makes it fail (``'str' object has no attribute 'update'``) for a NIfTI image. Wrapping a bundle's
    pre-processing in this transform keeps any such bundle working under MONAI Label, without changing the bundle.

    Args:
        transform: the callable run on the data dict (e.g. the pre-processing ``Compose``).
        keys: the entries to set aside.
    """

    def __init__(self, transform: Callable, keys: Sequence[str] = ("image_path",)) -> None:
        self.transform = transform
        self.keys = tuple(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        aside = {k: d.pop(k) for k in self.keys if k in d}
        out = dict(self.transform(d))
        out.update(aside)
        return out


class ToLabelMapd(MapTransform):
    """A (1, *S) label map as (*S): what MONAI Label's writer expects.

    MONAI Label writes ``pred`` as it is; its ``Restored`` drops the channel axis of a 3D result but keeps it in
    2D, so a (H, W) image would get a (1, H, W) label file. A map that already has no channel axis is left alone.

    Args:
        keys: the label map(s).
        image_key: the channel-first image, whose number of spatial axes tells whether a map has a channel axis.
    """

    def __init__(
        self, keys: KeysCollection = "pred", image_key: str = "image", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        spatial_axes = len(d[self.image_key].shape) - 1
        for key in self.key_iterator(d):
            if len(d[key].shape) == spatial_axes + 1 and d[key].shape[0] == 1:
                d[key] = d[key][0]
        return d


def write_label_nifti(label: Any, meta: Mapping[str, Any] | None, path: str | os.PathLike) -> None:
    """Write a (*S) label map to NIfTI with the input image's affine.

    The affine is the input's ``original_affine`` (what the image had before any resampling the pre-processing
    did, which MONAI Label's ``Restored`` undoes), else its ``affine``; MONAI keeps the NIfTI's own 4×4 affine
    there for 2D images as for 3D, so the label gets exactly the input's geometry. MONAI Label 0.8.5's writers do
    not: its ITK writer passes no affine for a 2D array, and MONAI's ``NibabelWriter`` refuses a 4×4 affine for one.

    Raises:
        ValueError: no affine in ``meta``.
    """
    import nibabel as nib
    import numpy as np

    meta = meta or {}
    affine = meta.get("original_affine")
    affine = meta.get("affine") if affine is None else affine
    if affine is None:
        raise ValueError(f"{path}: no affine in the input's meta data to write the label with")
    affine = np.asarray(torch.as_tensor(affine).double().cpu())
    if affine.shape == (3, 3):  # a 2D affine: embed it in the NIfTI 4×4
        affine = np.array(
            [[*affine[0, :2], 0, affine[0, 2]], [*affine[1, :2], 0, affine[1, 2]], [0, 0, 1, 0], [0, 0, 0, 1]]
        )
    array = np.asarray(torch.as_tensor(label).detach().cpu())
    dtype = np.uint8 if array.size and array.min() >= 0 and array.max() < 256 else np.int32
    nib.save(nib.Nifti1Image(array.astype(dtype), affine), str(path))


def model_spatial_dims(state: Mapping[str, torch.Tensor]) -> int | None:
    """2 or 3: the spatial dimensions of a network's convolutions, read from its first convolution weight
    (a (out, in, k, k) or (out, in, k, k, k) tensor); None if it has none."""
    for name, value in state.items():
        if name.endswith("weight") and value.ndim in (4, 5):
            return value.ndim - 2
    return None


def consensus_labels(metadata: Mapping[str, Any]) -> dict[str, int]:
    """Label name -> value of a bundle's consensus output, as MONAI Label derives them: the first output's
    ``channel_def``, names lower-cased, background left out."""
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    if not outputs:
        return {}
    pred = next(iter(outputs.values()))
    return {str(v).lower(): int(k) for k, v in pred.get("channel_def", {}).items() if str(v).lower() != "background"}


def served_bundles(bundles_dir: str | os.PathLike) -> list[Path]:
    """The bundle folders under ``bundles_dir`` that MONAI Label can serve: an ``inference.json``, a
    ``metadata.json`` and a trained ``models/model.pt``, sorted by name."""
    root = Path(bundles_dir)
    return (
        sorted(
            p
            for p in root.iterdir()
            if (p / "configs" / CONFIG).is_file()
            and (p / "configs" / METADATA).is_file()
            and (p / "models" / MODEL).is_file()
        )
        if root.is_dir()
        else []
    )


class BundleInference:
    """A bundle's inference, as MONAI Label's bundle infer task reads and runs it.

    A bundle trained with its 3D variant (``configs/3d.json`` merged over ``train.json``) has a 3D ``model.pt``
    in the same ``models/`` folder; it is served with ``3d.json`` merged over ``inference.json``, so that one
    bundle folder serves whichever model it holds.

    Args:
        bundle_dir: the bundle's folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        device: where the network runs.

    Raises:
        UserError: a missing file, or a ``model.pt`` that is not a state dict of ``network_def``.
    """

    def __init__(self, bundle_dir: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.name = self.bundle_dir.name
        self.device = torch.device(device)
        for path in (self.config_path, self.metadata_path, self.model_path):
            if not path.is_file():
                raise UserError(f"{path}: missing; MONAI Label serves a bundle with a trained model only")
        self.config_files = [self.config_path]
        self.parser = ConfigParser()
        self.parser.read_config(str(self.config_path))
        trained_dims = model_spatial_dims(self.state_dict())
        configured = self.parser.config.get("spatial_dims")
        if trained_dims is not None and isinstance(configured, int) and trained_dims != configured:
            variant = self.bundle_dir / "configs" / f"{trained_dims}d.json"
            if not variant.is_file():
                raise UserError(
                    f"{self.model_path}: a {trained_dims}D model, but {self.config_path} is {configured}D "
                    f"and there is no {variant.name}"
                )
            # a bundle trained with its 3D variant (`--config_file "['configs/train.json','configs/3d.json']"`)
            # is served with that variant merged over inference.json
            self.config_files.append(variant)
            self.parser.read_config([str(p) for p in self.config_files])
        self.parser.config.update({"bundle_root": str(self.bundle_dir), "device": str(self.device)})
        with open(self.metadata_path) as f:
            self.metadata = json.load(f)
        inputs = self.metadata.get("network_data_format", {}).get("inputs", {})
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        if not inputs or not outputs:
            raise UserError(f"{self.metadata_path}: network_data_format needs an input and an output")
        self.image_key, image = next(iter(inputs.items()))
        self.pred_key = next(iter(outputs))
        self.labels = consensus_labels(self.metadata)
        self.dimension = int(self.parser.config.get("spatial_dims", 3))
        self.description = self.metadata.get("description", "")
        self.version = self.metadata.get("version")

    @property
    def config_path(self) -> Path:
        return self.bundle_dir / "configs" / CONFIG

    @property
    def metadata_path(self) -> Path:
        return self.bundle_dir / "configs" / METADATA

    @property
    def model_path(self) -> Path:
        return self.bundle_dir / "models" / MODEL

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``models/model.pt`` loaded with ``weights_only=True`` (what recent torch does by default); read once and
        again only when the file changes (a retrained model), not for every network built from it."""
        stat = self.model_path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        if getattr(self, "_state", None) is None or self._state[0] != key:
            self._state = (key, self._read_state_dict())
        return self._state[1]

    def _read_state_dict(self) -> dict[str, torch.Tensor]:
        try:
            state = torch.load(self.model_path, map_location=self.device, weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure is the file's fault
            raise UserError(
                f"{self.model_path}: not loadable with weights_only=True ({type(error).__name__}: {error})"
            ) from None
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{self.model_path}: not a plain state dict of tensors")
        return dict(state)

    def _load(self, network: torch.nn.Module) -> torch.nn.Module:
        try:
            network.load_state_dict(self.state_dict(), strict=True)
        except RuntimeError as error:
            from multirater_monai.engines.checkpoints import state_dict_hint

            first = state_dict_hint(network, self.state_dict()) or str(error).strip().splitlines()[0]
            raise UserError(f"{self.model_path}: does not fit the bundle's network_def ({first})") from None
        return network.to(self.device).eval()

    def network(self) -> torch.nn.Module:
        """``network_def`` with ``model.pt`` loaded strictly: what MONAI Label runs for the consensus."""
        return self._load(self.parser.get_parsed_content("network_def", instantiate=True))

    def view_network(self) -> torch.nn.Module:
        """The bundle's ``infer_network`` (every output stacked in one tensor) around a loaded ``network_def``."""
        from multirater_monai.engines.adapters import unwrap_network

        network = self.parser.get_parsed_content("infer_network", instantiate=True)
        self._load(unwrap_network(network))
        return network.to(self.device).eval()

    def preprocessing(self) -> list[Callable]:
        """``preprocessing`` as a list, ``LoadImaged`` loading meta data (as MONAI Label does)."""
        transforms = self._transform_list("preprocessing")
        for t in transforms:
            if isinstance(t, LoadImaged):
                t._loader.image_only = False
        return transforms

    def inferer(self) -> Callable:
        return self.parser.get_parsed_content("inferer", instantiate=True)

    def postprocessing(self) -> list[Callable]:
        """``postprocessing`` as a list without ``SaveImaged`` (MONAI Label writes the result itself)."""
        return [t for t in self._transform_list("postprocessing") if not isinstance(t, SaveImaged)]

    def views(self) -> list[LabelView]:
        """The bundle's label views (``label_views`` in ``inference.json``; none if it lists none)."""
        if "label_views" not in self.parser.config:
            return []
        return expand_views(self.parser.get_parsed_content("label_views", instantiate=True))

    def view_postprocessing(self, view: LabelView, network: torch.nn.Module) -> list[Callable]:
        """The transforms that turn ``network``'s (the :meth:`view_network`) output into ``view``'s label map:
        the split of the stacked outputs where the bundle stacks several, then the view."""
        from multirater_monai.engines.adapters import StackedOutputs
        from multirater_monai.transforms import SplitOutputsd

        if isinstance(network, StackedOutputs):
            return [SplitOutputsd(keys=self.pred_key, split=network.split), view]
        return [view]

    def _transform_list(self, key: str) -> list[Callable]:
        if key not in self.parser.config:
            raise UserError(f"{self.config_path}: no '{key}'")
        parsed = self.parser.get_parsed_content(key, instantiate=True)
        return list(parsed.transforms) if isinstance(parsed, Compose) else list(parsed)

    def run(self, image_path: str | os.PathLike, view: str | None = None) -> dict[Hashable, Any]:
        """Run the consensus (``view`` None) or a label view on one image as MONAI Label does.

        Returns:
            the data dict after post-processing: ``pred`` the (*S) label map MONAI Label writes (a MetaTensor with
            the image's affine), ``image`` the pre-processed image.
        """
        data: dict[Hashable, Any] = {self.image_key: str(image_path), "image_path": str(image_path), "model": self.name}
        data = SetAsided(Compose(self.preprocessing()), keys=("image_path", "model"))(data)
        if view is None:
            network, post = self.network(), self.postprocessing()
        else:
            chosen = {v.name: v for v in self.views()}
            if view not in chosen:
                raise UserError(f"{self.config_path}: no label view '{view}' (views: {', '.join(chosen) or 'none'})")
            network = self.view_network()
            post = self.view_postprocessing(chosen[view], network)
        inputs = torch.as_tensor(data[self.image_key])[None].to(self.device)
        with torch.no_grad():
            outputs = self.inferer()(inputs, network)
        if not isinstance(outputs, torch.Tensor):
            raise UserError(f"{self.config_path}: the network returned {type(outputs).__name__}, not one tensor")
        data[self.pred_key] = outputs[0]
        for transform in post:
            data = transform(data)
        # MONAI Label's `Restored`: back to the input's grid where the pre-processing resampled the image
        shape = (data.get(f"{self.image_key}_meta_dict") or {}).get("spatial_shape")
        pred = data[self.pred_key]
        if shape is not None and tuple(pred.shape[1:]) != tuple(int(n) for n in shape):
            data[self.pred_key] = Resize(spatial_size=[int(n) for n in shape], mode="nearest")(pred)
        return ToLabelMapd(keys=self.pred_key, image_key=self.image_key)(data)
