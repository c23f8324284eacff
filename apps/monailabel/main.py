"""MONAI Label app serving every trained bundle of this repository, with no download.

    monailabel start_server --app apps/monailabel --studies <folder of NIfTI images> \
        --conf bundles <bundles folder, default: this repository's bundles/> --conf models all

Every bundle folder with ``configs/inference.json``, ``configs/metadata.json`` and a trained ``models/model.pt`` is
served as an infer task named after the bundle: its consensus segmentation, as MONAI Label's own bundle infer task
runs it (``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``, ``model.pt``), labels from the bundle's
metadata. Each of the bundle's label views (``label_views`` in its ``inference.json``: what each rater would have
drawn, where the raters disagree, their reliability, the annotator a voxel is attributed to, the prototype that
explains it) is served as ``<bundle>_<view>``, a label map with named values that the MONAI Label 3D Slicer module
loads as a segmentation. A new bundle is served without editing this file. See ``apps/monailabel/README.md``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import file_ext
from monai.bundle import ConfigParser
from monai.transforms import Compose

from multirater_monai.serving import BundleInference, SetAsided, ToLabelMapd, served_bundles, write_label_nifti

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[2]


class MultiraterInferTask(BundleInferTask):
    """MONAI Label's bundle infer task, plus what this repository's bundles need.

    - the pre-processing runs with ``image_path`` set aside (:class:`~multirater_monai.serving.SetAsided`);
    - a 2D result is written without its channel axis (MONAI Label's ``Restored`` drops it in 3D only), and a NIfTI
      result with the input's affine (:func:`~multirater_monai.serving.write_label_nifti`; MONAI Label's writers
      lose a 2D result's geometry);
    - a bundle whose ``model.pt`` is 3D is served with its ``configs/3d.json`` merged over ``inference.json``;
    - with ``view`` set, the task serves that label view: the bundle's ``infer_network`` (every output) and the
      view's post-processing, with the view's label names.
    """

    def __init__(self, path: str, conf: dict[str, str], view: str | None = None, **kwargs: Any) -> None:
        self.inference = BundleInference(path)
        self.view = None
        if view is not None:
            self.view = {v.name: v for v in self.inference.views()}[view]
        super().__init__(path, conf, load_strict=True, **kwargs)
        self.dimension = self.inference.dimension
        if self.view is not None:
            self.labels = dict(self.view.labels)
            self.description = f"{self.inference.name}: {self.view.description}"

    def _load_bundle_config(self, path, config):
        # inference.json, with configs/3d.json merged over it where model.pt is a 3D model
        parser = ConfigParser()
        parser.read_config([str(p) for p in self.inference.config_files])
        parser.config.update({self.const.key_bundle_root(): path})
        return parser

    def pre_transforms(self, data=None):
        return [SetAsided(Compose(super().pre_transforms(data)), keys=("image_path",))]

    def _view_network(self):
        """The bundle's ``infer_network`` with the current ``model.pt``, reloaded when the file changes."""
        mtime = os.stat(self.inference.model_path).st_mtime
        if getattr(self, "_view_cache", None) is None or self._view_cache[1] != mtime:
            self._view_cache = (self.inference.view_network(), mtime)
        return self._view_cache[0]

    def _get_network(self, device, data):
        if self.view is None:
            return super()._get_network(device, data)
        return self._view_network().to(device)

    def post_transforms(self, data=None):
        if self.view is None:
            post = super().post_transforms(data)
        else:
            post = [*self.inference.view_postprocessing(self.view, self._view_network()), *self._restore()]
        return [*post, ToLabelMapd(keys=self.key_pred, image_key=self.key_image)]

    def writer(self, data, extension=None, dtype=None):
        # MONAI Label's writers lose a 2D label's geometry (its ITK writer passes no affine for two axes; MONAI's
        # NibabelWriter refuses the 4x4 NIfTI affine of a 2D image): NIfTI results are written with the input's affine
        path = data.get("image_path")
        ext = extension or data.get("result_extension") or (file_ext(path) if path else None)
        if not ext or ext.lower() not in (".nii", ".nii.gz"):
            return super().writer(data, extension, dtype)
        output = tempfile.NamedTemporaryFile(suffix=ext, delete=False).name
        write_label_nifti(data[self.output_label_key], data.get(f"{self.key_image}_meta_dict"), output)
        return output, data.get(self.output_json_key, {})

    def _restore(self):
        from monailabel.transform.post import Restored

        return [Restored(keys=self.key_pred, ref_image=self.key_image)] if self.add_post_restore else []


class MultiraterApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles_dir = Path(conf.get("bundles", REPOSITORY / "bundles")).resolve()
        chosen = conf.get("models", "all")
        self.chosen = None if chosen in ("all", "") else {m.strip() for m in chosen.split(",")}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"multirater-monai bundles (MONAI Label {monailabel.__version__})",
            description="Multi-rater segmentation bundles: consensus, per-rater predictions, reliability, explanations",
            version=monailabel.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        bundles = served_bundles(self.bundles_dir)
        if not bundles:
            logger.warning(f"no trained bundle under {self.bundles_dir} (a bundle needs models/model.pt)")
        for path in bundles:
            name = path.name
            if self.chosen is not None and name not in self.chosen:
                continue
            infers[name] = MultiraterInferTask(str(path), self.conf)
            for view in infers[name].inference.views():
                infers[f"{name}_{view.name}"] = MultiraterInferTask(str(path), self.conf, view=view.name)
            logger.info(f"+++ Serving bundle {name}: {[k for k in infers if k == name or k.startswith(name + '_')]}")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        # training runs with the bundles' own train.json (README); this app serves inference only
        return {}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}
