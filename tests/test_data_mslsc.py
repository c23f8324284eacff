"""ISBI 2015 MS lesion reader on a replica of the challenge's training layout, 3D and 2D, split by subject."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from multirater_monai.data import PrepareError, load_multirater_datalist
from multirater_monai.data.real import prepare_mslsc
from multirater_monai.data.real.replicas import make_mslsc_replica

SHAPE = (14, 16, 12)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_mslsc_replica(tmp_path_factory.mktemp("ms"), num_subjects=4, time_points=2, shape=SHAPE)


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_two_raters_split_by_subject(src, spatial_dims, tmp_path):
    report = prepare_mslsc(src.parent, tmp_path / "out", spatial_dims=spatial_dims)  # the folder above training/ works
    assert report.cases_found == 8 and report.raters == ["rater1", "rater2"] and report.in_channels == 4
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    subjects = {}
    for split in ("training", "validation", "test"):
        load_multirater_datalist(
            tmp_path / "out" / "datalist.json",
            split,
            num_raters=2,
            num_classes=2,
            in_channels=4,
            spatial_dims=spatial_dims,
        )
        for item in datalist[split]:
            subjects.setdefault(item["group"], set()).add(split)
            assert "gt" not in item and len(item["image"]) == 4
    assert len(subjects) == 4 and all(len(s) == 1 for s in subjects.values())
    item = datalist["training"][0]
    assert item["source"][0].startswith("training/training0")  # relative to the source
    mask = np.asarray(nib.load(str(tmp_path / "out" / item["label"][0])).dataobj)
    assert mask.ndim == spatial_dims and (spatial_dims == 3 or mask.any())
    overlay = json.loads((tmp_path / "out" / "bundle_config.json").read_text())
    assert overlay["val_target"] == "fused_label" and len(overlay["patch_size"]) == spatial_dims


def test_geometry_and_label_problems(tmp_path):
    src = make_mslsc_replica(tmp_path / "src", num_subjects=3, time_points=1, shape=SHAPE)
    mask = src / "training02" / "masks" / "training02_01_mask1.nii"
    img = nib.load(str(mask))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine), str(mask))
    t2 = src / "training03" / "preprocessed" / "training03_01_t2_pp.nii"
    img = nib.load(str(t2))
    nib.save(nib.Nifti1Image(np.zeros((14, 16, 10), np.float32), img.affine), str(t2))
    with pytest.raises(PrepareError) as err:
        prepare_mslsc(src, tmp_path / "out")
    assert "training02_01_mask1.nii: unexpected label value(s) [2]" in str(err.value)
    assert "training03_01_t2_pp.nii: shape (14, 16, 10) differs from training03_01_flair_pp.nii" in str(err.value)
