"""QUBIQ reader on a replica of the 2020 / 2021 layouts: datasets, tasks, rater gaps, singleton axes, 2D and 3D."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from multirater_monai.data import PrepareError, load_multirater_datalist
from multirater_monai.data.real import QUBIQ_DATASETS, QUBIQ_THRESHOLDS, prepare_qubiq
from multirater_monai.data.real.replicas import make_qubiq_replica

ROOT = Path(__file__).resolve().parents[1]


def load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return make_qubiq_replica(tmp_path_factory.mktemp("qubiq"), num_cases=4, num_validation=1, size=16)


@pytest.mark.parametrize("subset", sorted(QUBIQ_DATASETS))
def test_each_dataset(src, subset, tmp_path):
    facts = QUBIQ_DATASETS[subset]
    report = prepare_qubiq(src, tmp_path / "out", subset=subset)
    assert report.raters == [f"seg{r:02d}" for r in range(1, facts["raters"] + 1)]
    assert report.in_channels == facts["channels"] and report.spatial_dims == facts["spatial_dims"]
    assert report.items["test"] == 1 and report.cases_used == 5  # the Validation folder is the test split
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    for split in ("training", "validation", "test"):
        load_multirater_datalist(
            tmp_path / "out" / "datalist.json",
            split,
            num_raters=facts["raters"],
            num_classes=2,
            in_channels=facts["channels"],
            spatial_dims=facts["spatial_dims"],
        )
    gap = next(i for s in ("training", "validation") for i in datalist[s] if i["case"] == "case02")
    missing = min(3, facts["raters"]) - 1
    assert gap["label"][missing] is None and sum(p is None for p in gap["label"]) == 1  # rater number with a gap
    overlay = json.loads((tmp_path / "out" / "bundle_config.json").read_text())
    assert overlay["soft_dice_thresholds"] == QUBIQ_THRESHOLDS == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert overlay["val_target"] == "fused_label"


def test_channels_last_and_singleton_axes(src, tmp_path):
    prepare_qubiq(src, tmp_path / "tumor", subset="brain-tumor", task=2)
    item = json.loads((tmp_path / "tumor" / "datalist.json").read_text())["training"][0]
    raw = nib.load(
        str(src / "training_data_v3" / "brain-tumor" / "Training" / item["case"] / "image.nii.gz")
    ).get_fdata()
    assert raw.shape == (16, 16, 4) and len(item["image"]) == 4
    np.testing.assert_allclose(load(tmp_path / "tumor" / item["image"][2]), raw[..., 2], rtol=1e-6)
    assert "task02_seg01" in item["source"][1] or any("task02" in s for s in item["source"])
    prepare_qubiq(src, tmp_path / "prostate", subset="prostate", task=2)
    item = json.loads((tmp_path / "prostate" / "datalist.json").read_text())["training"][0]
    assert nib.load(str(src / "training_data_v3" / "prostate" / "Training" / item["case"] / "image.nii.gz")).shape == (
        16,
        16,
        1,
    )
    assert load(tmp_path / "prostate" / item["image"]).shape == (16, 16)


def test_3d_dataset_as_2d_slices(src, tmp_path):
    report = prepare_qubiq(src, tmp_path / "out", subset="pancreas", spatial_dims=2)
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert report.spatial_dims == 2 and all("slice" in i for i in datalist["training"])
    assert load(tmp_path / "out" / datalist["training"][0]["image"]).ndim == 2
    with pytest.raises(PrepareError, match="cannot be prepared in 3D"):
        prepare_qubiq(src, tmp_path / "x", subset="kidney", spatial_dims=3)


def test_choice_of_dataset_and_task(src, tmp_path):
    with pytest.raises(PrepareError, match="several QUBIQ datasets"):
        prepare_qubiq(src, tmp_path / "x")
    with pytest.raises(PrepareError, match="no task 2"):
        prepare_qubiq(src, tmp_path / "x", subset="kidney", task=2)
    with pytest.raises(PrepareError, match="no QUBIQ dataset 'liver'"):
        prepare_qubiq(src, tmp_path / "x", subset="liver")
    report = prepare_qubiq(src / "training_data_v3" / "kidney", tmp_path / "only")  # one dataset: no --subset needed
    assert report.items["test"] > 0 and report.cases_used == 4  # no validation folder: three-way split


def test_rater_with_other_shape_reported(tmp_path):
    src = make_qubiq_replica(tmp_path / "src", datasets=["kidney"], num_cases=5, num_validation=0, size=16)
    case = src / "training_data_v3" / "kidney" / "Training" / "case03"
    seg = nib.load(str(case / "task01_seg02.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((12, 16), np.uint8), seg.affine), str(case / "task01_seg02.nii.gz"))
    with pytest.raises(PrepareError, match=r"case03/task01_seg02.nii.gz: shape \(12, 16\) differs"):
        prepare_qubiq(src, tmp_path / "out")
    assert prepare_qubiq(src, tmp_path / "out", skip_bad=True).skipped_cases == ["case03"]


def test_rater_coverage_impossible_is_explained(tmp_path):
    src = make_qubiq_replica(tmp_path / "src", datasets=["kidney"], num_cases=3, num_validation=0, size=16)
    with pytest.raises(PrepareError, match="seg03 annotates no item of the"):
        prepare_qubiq(src, tmp_path / "out")  # case02 lacks seg03: three cases, three splits


def test_evaluate_config_uses_qubiq_thresholds(src, tmp_path):
    prepare_qubiq(src, tmp_path / "out", subset="brain-growth")
    parser = ConfigParser()
    configs = ROOT / "bundles" / "fused_unet" / "configs"
    parser.read_config(
        [str(configs / "train.json"), str(configs / "evaluate.json"), str(tmp_path / "out" / "bundle_config.json")]
    )
    assert parser.get_parsed_content("soft_dice_thresholds") == QUBIQ_THRESHOLDS
    assert parser.get_parsed_content("datalist") == str(tmp_path / "out" / "datalist.json")
