"""Every bundle's inference, built and run as MONAI Label 0.8.5's bundle infer task does, without MONAI Label.

:class:`~multirater_monai.serving.BundleInference` reads a bundle as ``monailabel.tasks.infer.bundle.BundleInferTask``
does (``network_def``, ``preprocessing``, ``inferer``, ``postprocessing`` without ``SaveImaged``, the labels of the
metadata's ``channel_def``, ``models/model.pt`` loaded strictly with ``weights_only=True``) and runs it with the keys
MONAI Label adds (``image_path``). ``test_monailabel_server.py`` checks the same against a real server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged, Spacingd

from multirater_monai.errors import UserError
from multirater_monai.serving import (
    BundleInference,
    ChannelIndexView,
    DisagreementView,
    LevelsView,
    RaterSegmentationViews,
    SetAsided,
    expand_views,
    model_spatial_dims,
    served_bundles,
    write_label_nifti,
)

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
AFFINE_2D = np.array([[0.7, 0, 0, -20.0], [0, 0.8, 0, 11.0], [0, 0, 1, 0], [0, 0, 0, 1]])
AFFINE_3D = np.array([[0, -0.9, 0, 30.0], [1.1, 0, 0, -12.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def scratch_bundle(name: str, target: Path, variant: str | None = None, edit=None) -> Path:
    """A copy of bundle ``name`` with a ``model.pt`` of its (freshly initialised) ``network_def``."""
    shutil.copytree(
        ROOT / "bundles" / name, target, ignore=shutil.ignore_patterns("models", "runs", "eval", "predictions")
    )
    if edit is not None:
        path = target / "configs" / "inference.json"
        config = json.loads(path.read_text())
        edit(config)
        path.write_text(json.dumps(config))
    files = [str(target / "configs" / "inference.json")] + ([str(target / "configs" / variant)] if variant else [])
    parser = ConfigParser()
    parser.read_config(files)
    (target / "models").mkdir()
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), target / "models" / "model.pt")
    return target


def nifti(path: Path, shape, affine) -> Path:
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=shape).astype(np.float32), affine), path)
    return path


def check_label(data: dict, image: Path, labels: dict[str, int]) -> set[int]:
    """The label map has the image's shape, its values are background or labels, and written it has the affine."""
    reference = nib.load(image)
    pred = data["pred"]
    assert tuple(pred.shape) == reference.shape
    values = set(torch.unique(torch.as_tensor(pred)).int().tolist())
    assert values <= {0, *labels.values()}, (values, labels)
    out = image.parent / f"label_{image.name}"
    write_label_nifti(pred, data.get("image_meta_dict"), out)
    written = nib.load(out)
    assert written.shape == reference.shape
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(torch.as_tensor(pred)))
    return values


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_serves_consensus_and_views_as_monailabel_runs_them(name, tmp_path):
    bundle = scratch_bundle(name, tmp_path / "bundles" / name)
    image = nifti(tmp_path / "case.nii.gz", (72, 64), AFFINE_2D)
    inference = BundleInference(bundle)
    config = ConfigParser.load_config_file(str(bundle / "configs" / "inference.json"))
    # labels from the metadata's channel_def, as MONAI Label derives them: the config's classes but background
    assert inference.labels == {c.lower(): i for i, c in enumerate(config["class_names"]) if i > 0}
    assert inference.dimension == 2
    # network_def's forward: one tensor, the consensus logits
    out = inference.network()(torch.zeros(1, 1, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, config["num_classes"], 64, 64)
    # the post-processing MONAI Label runs holds no writer
    assert not any(type(t).__name__ == "SaveImaged" for t in inference.postprocessing())

    data = inference.run(image)
    assert data["image_path"] == str(image)  # the key MONAI Label adds survives the pre-processing
    check_label(data, image, inference.labels)
    for view in inference.views():
        assert min(view.labels.values()) >= 1 and len(set(view.labels.values())) == len(view.labels)
        check_label(inference.run(image, view.name), image, view.labels)


def test_every_multi_rater_bundle_has_views():
    """The bundles whose networks predict more than the consensus show it (the fused-label U-Net has nothing more)."""
    views = {}
    for name in BUNDLES:
        config = ConfigParser()
        config.read_config(str(ROOT / "bundles" / name / "configs" / "inference.json"))
        views[name] = [v.name for v in expand_views(config.get_parsed_content("label_views"))]
    assert views["fused_unet"] == []
    assert {"rater_good", "disagreement", "reliability"} <= set(views["cmnet"])
    assert {"rater_good", "disagreement", "agreement"} <= set(views["mrprism"])
    assert {"who", "disagreement", "rater_dilated"} <= set(views["tax"])
    assert {"heatmap_kind1", "heatmap_kind3"} <= set(views["unrolled_lrp"])
    assert {"prototype", "group"} <= set(views["scaleprotoseg"])


def test_3d_model_is_served_with_the_3d_variant(tmp_path):
    bundle = scratch_bundle("cmnet", tmp_path / "bundles" / "cmnet", variant="3d.json")
    image = nifti(tmp_path / "case.nii.gz", (40, 36, 24), AFFINE_3D)
    inference = BundleInference(bundle)
    assert model_spatial_dims(inference.state_dict()) == 3
    assert inference.dimension == 3 and inference.config_files[-1].name == "3d.json"
    check_label(inference.run(image), image, inference.labels)
    check_label(inference.run(image, "rater_over"), image, inference.labels)


def with_spacing(config: dict) -> None:
    """Edit an inference config: resample the image to 1 mm before the network (a bundle that uses Spacingd)."""
    transforms = config["preprocessing"]["transforms"]
    transforms.insert(1, {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0], "mode": "bilinear"})


def test_resampling_bundle_survives_image_path(tmp_path):
    """MONAI 1.6's Spacingd reads every ``image_*`` entry as a meta dict; MONAI Label adds ``image_path``."""
    image = nifti(tmp_path / "case.nii.gz", (72, 64), AFFINE_2D)
    load = LoadImaged("image", image_only=False, ensure_channel_first=True)
    spacing = Spacingd("image", pixdim=(1.0, 1.0))
    data = {"image": str(image), "image_path": str(image)}
    with pytest.raises(RuntimeError):  # the trap, as MONAI Label would hit it
        Compose([load, spacing])(dict(data))
    out = SetAsided(Compose([load, spacing]))(dict(data))
    assert out["image_path"] == str(image) and out["image"].shape[1:] == (51, 51)  # 72 x 0.7 mm, 64 x 0.8 mm at 1 mm

    bundle = scratch_bundle("fused_unet", tmp_path / "bundles" / "fused_unet", edit=with_spacing)
    inference = BundleInference(bundle)
    # resampled for the network, back on the input's grid for the label (MONAI Label's Restored)
    check_label(inference.run(image), image, inference.labels)


def test_missing_or_foreign_model_is_refused_naming_the_file(tmp_path):
    bundle = scratch_bundle("fused_unet", tmp_path / "bundles" / "fused_unet")
    model = bundle / "models" / "model.pt"
    state = torch.load(model, weights_only=True)

    torch.save({k: v for k, v in list(state.items())[:-1]}, model)
    with pytest.raises(UserError, match=r"model\.pt: does not fit the bundle's network_def"):
        BundleInference(bundle).network()

    torch.save({"network": state, "epoch": 3}, model)  # a training checkpoint, not a state dict
    with pytest.raises(UserError, match=r"model\.pt: not a plain state dict"):
        BundleInference(bundle)

    torch.save(torch.nn.Linear(2, 2), model)  # a pickled module: refused by weights_only=True
    with pytest.raises(UserError, match=r"model\.pt: not loadable with weights_only=True"):
        BundleInference(bundle)

    model.unlink()
    with pytest.raises(UserError, match=r"model\.pt: missing"):
        BundleInference(bundle)
    assert served_bundles(tmp_path / "bundles") == []


def test_served_bundles_are_those_with_a_model(tmp_path):
    scratch_bundle("cmnet", tmp_path / "bundles" / "cmnet")
    shutil.copytree(ROOT / "bundles" / "tax", tmp_path / "bundles" / "tax", ignore=shutil.ignore_patterns("models"))
    assert [p.name for p in served_bundles(tmp_path / "bundles")] == ["cmnet"]


def test_write_label_nifti_keeps_2d_and_3d_geometry(tmp_path):
    for shape, affine in (((30, 20), AFFINE_2D), ((12, 10, 8), AFFINE_3D)):
        image = nifti(tmp_path / f"image{len(shape)}.nii.gz", shape, affine)
        meta = LoadImaged("image", image_only=False)({"image": str(image)})["image_meta_dict"]
        label = torch.randint(0, 3, shape)
        write_label_nifti(label, meta, tmp_path / "label.nii.gz")
        written = nib.load(tmp_path / "label.nii.gz")
        np.testing.assert_allclose(written.affine, affine, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(written.dataobj), label.numpy())
    with pytest.raises(ValueError, match="no affine"):
        write_label_nifti(label, {}, tmp_path / "x.nii.gz")


# label views, on hand-made outputs


def test_rater_segmentations_and_disagreement():
    consensus = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 4.0, 4.0]]])  # (L=2, 1, 3): classes 0, 1, 1
    raters = torch.zeros(3, 2, 1, 3)
    raters[:, 1] = torch.tensor(
        [[[1.0, 1.0, 1.0]], [[-1.0, 1.0, -1.0]], [[-1.0, -1.0, -1.0]]]
    )  # classes 1 1 1 / 0 1 0 / 000
    views = RaterSegmentationViews("rater_probs", ["a", "b-c", "d"], ["background", "lesion"]).views()
    assert [v.name for v in views] == ["rater_a", "rater_b_c", "rater_d"]
    data = {"pred": consensus, "rater_probs": raters}
    assert views[1](data)["pred"].tolist() == [[[0, 1, 0]]]
    assert views[0].labels == {"lesion": 1}
    disagreement = DisagreementView("rater_probs", 3)
    # voxel 0: consensus 0, raters 1 0 0 -> 1 differs; voxel 1: consensus 1, raters 1 1 0 -> 1; voxel 2: 1 vs 1 0 0 -> 2
    assert disagreement(data)["pred"].tolist() == [[[1, 1, 2]]]
    assert disagreement.labels["3 of 3 raters differ"] == 3


def test_levels_and_channel_index():
    data = {"pred": torch.zeros(2, 1, 4), "map": torch.tensor([[[0.1, 0.5, 0.85, 0.99]], [[0.3, 0.5, 0.75, 0.99]]])}
    levels = LevelsView("reliability", "map", [0.5, 0.8, 0.95], reduce="mean")
    # means 0.2, 0.5, 0.8, 0.99 -> below 0.5, 0.5-0.8 (0.5 is the boundary's upper side), 0.8-0.95, >= 0.95
    assert levels(data)["pred"].tolist() == [[[1, 2, 3, 4]]]
    assert list(levels.labels) == [
        "reliability < 0.5",
        "reliability 0.5-0.8",
        "reliability 0.8-0.95",
        "reliability >= 0.95",
    ]
    assert LevelsView("r", "map", [0.5], reduce="min")(data)["pred"].tolist() == [[[1, 2, 2, 2]]]
    relevance = {"pred": torch.tensor([[[-2.0, 0.0, 1.0, 4.0]]])}
    heat = LevelsView("heat", "pred", [0.25, 0.5], reduce=0, relative=True, positive_only=True)
    assert heat(relevance)["pred"].tolist() == [[[0, 0, 2, 3]]]  # relative to |max| = 4: -, 0, 0.25, 1
    who = ChannelIndexView("who", "map", ["x", "y"], mask_background=False)
    assert who(data)["pred"].tolist() == [[[2, 1, 1, 1]]]  # 0.3 > 0.1; ties go to the first channel
    with pytest.raises(ValueError, match="3 names for 2 channels"):
        ChannelIndexView("who", "map", ["x", "y", "z"])(data)
    with pytest.raises(ValueError, match="increasing"):
        LevelsView("bad", "map", [0.8, 0.5])
    with pytest.raises(ValueError, match="named more than once"):
        expand_views([levels, LevelsView("reliability", "map", [0.5])])
