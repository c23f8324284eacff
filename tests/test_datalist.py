"""Bad input: each problem of a multi-rater datalist is reported with its file before training starts."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from multirater_monai.data import DatalistError, check_datalist, list_images, load_multirater_datalist


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def _dataset(root: Path, n: int = 2, raters: int = 3, shape=(8, 8)) -> Path:
    """A small valid datalist: ``n`` cases, ``raters`` raters, binary labels, 2D."""
    items = []
    rng = np.random.default_rng(0)
    for i in range(n):
        truth = np.zeros(shape, np.uint8)
        truth[2:5, 2:6] = 1
        image = _save(root / "images" / f"c{i}.nii.gz", rng.random(shape).astype(np.float32))
        labels = [_save(root / "labels" / f"c{i}_r{r}.nii.gz", truth) for r in range(raters)]
        items.append({"image": image, "label": labels, "gt": _save(root / "gt" / f"c{i}.nii.gz", truth)})
    datalist = {"raters": [f"r{r}" for r in range(raters)], "num_classes": 2, "training": items}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root / "datalist.json"


def _problems(items, **kwargs) -> str:
    with pytest.raises(DatalistError) as err:
        check_datalist(items, **kwargs)
    return str(err.value)


def test_valid_datalist_loads_with_absolute_paths(tmp_path):
    datalist = _dataset(tmp_path)
    content = json.loads(datalist.read_text())
    # relative paths are resolved against the datalist's folder
    for item in content["training"]:
        item["image"] = str(Path(item["image"]).relative_to(tmp_path))
    datalist.write_text(json.dumps(content))
    items = load_multirater_datalist(datalist, num_classes=2, in_channels=1, spatial_dims=2)
    assert len(items) == 2 and Path(items[0]["image"]).is_absolute() and Path(items[0]["image"]).is_file()


def test_missing_files_are_named(tmp_path):
    items = json.loads(_dataset(tmp_path).read_text())["training"]
    Path(items[0]["label"][1]).unlink()
    Path(items[1]["image"]).unlink()
    message = _problems(items, num_raters=3, num_classes=2)
    assert f"{items[0]['label'][1]}: rater file not found" in message
    assert f"{items[1]['image']}: image file not found" in message


def test_unreadable_image(tmp_path):
    items = json.loads(_dataset(tmp_path).read_text())["training"]
    Path(items[0]["image"]).write_bytes(b"this is not a nifti file")
    assert f"{items[0]['image']}: unreadable image" in _problems(items)


def test_rater_of_other_shape_or_geometry(tmp_path):
    items = json.loads(_dataset(tmp_path).read_text())["training"]
    _save(Path(items[0]["label"][0]), np.zeros((8, 9), np.uint8))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0  # same shape, other origin
    _save(Path(items[1]["label"][2]), np.zeros((8, 8), np.uint8), shifted)
    message = _problems(items)
    assert f"{items[0]['label'][0]}: rater label shape (8, 9) differs" in message
    assert f"{items[1]['label'][2]}: rater label geometry" in message


def test_image_without_annotating_rater(tmp_path):
    items = json.loads(_dataset(tmp_path).read_text())["training"]
    items[0]["label"] = [None, None, None]
    _save(Path(items[1]["label"][0]), np.full((8, 8), -1, np.int16))
    items[1]["label"] = [items[1]["label"][0], None, None]  # a file that is all -1 annotates nothing
    message = _problems(items, num_raters=3)
    assert f"{items[0]['image']}: no rater annotated this image" in message
    assert f"{items[1]['image']}: no rater annotated this image" in message


def test_wrong_number_of_channels(tmp_path):
    items = json.loads(_dataset(tmp_path).read_text())["training"]
    message = _problems(items, in_channels=4, spatial_dims=2)
    assert f"{items[0]['image']}: image has 1 channel(s), the network expects 4" in message
    # a list of single-channel modality files counts one channel each
    items = [dict(item, image=[item["image"]] * 4) for item in items]
    check_datalist(items, in_channels=4, spatial_dims=2)


def test_rater_count_differs_from_config(tmp_path):
    datalist = _dataset(tmp_path, raters=3)
    with pytest.raises(DatalistError, match="the datalist has 3 raters.*expects 5"):
        load_multirater_datalist(datalist, num_raters=5)


def test_labels_outside_class_range(tmp_path):
    items = json.loads(_dataset(tmp_path).read_text())["training"]
    bad = np.zeros((8, 8), np.int16)
    bad[0, 0] = 3
    _save(Path(items[0]["label"][1]), bad)
    assert f"{items[0]['label'][1]}: label values [3] outside 0..1" in _problems(items, num_classes=2)


def test_rater_with_no_label_anywhere(tmp_path):
    items = json.loads(_dataset(tmp_path).read_text())["training"]
    for item in items:
        item["label"][2] = None
    assert "rater 2 has no annotation on any image" in _problems(items, num_raters=3)


def test_every_problem_is_reported_at_once(tmp_path):
    items = json.loads(_dataset(tmp_path, n=3).read_text())["training"]
    for item in items:
        Path(item["gt"]).unlink()
    err = pytest.raises(DatalistError, check_datalist, items)
    assert len(err.value.problems) == 3


def test_invalid_json_and_missing_section(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatalistError, match="not a valid JSON"):
        load_multirater_datalist(bad)
    with pytest.raises(DatalistError, match="no 'validation' section"):
        load_multirater_datalist(_dataset(tmp_path / "d"), "validation")
    with pytest.raises(DatalistError, match="datalist file not found"):
        load_multirater_datalist(tmp_path / "nowhere.json")


def test_list_images(tmp_path):
    with pytest.raises(DatalistError, match="input folder not found"):
        list_images(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatalistError, match="no image files"):
        list_images(tmp_path / "empty")
    _dataset(tmp_path / "d")
    files = list_images(tmp_path / "d" / "images", in_channels=1, spatial_dims=2)
    assert [Path(f).name for f in files] == ["c0.nii.gz", "c1.nii.gz"]
