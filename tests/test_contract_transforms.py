"""Data-contract transforms (load raters, rater mask, fusion) and the engine helpers the bundles use."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from multirater_monai.bundle_utils import default_dataset_dir, find_bundle_root, sqlite_tracking_uri
from multirater_monai.engines import BestModelSaver, CheckpointError, PrepareBatchKeys, latest_checkpoint
from multirater_monai.transforms import FuseRatersd, LoadRaterLabelsd, RaterMaskd, rater_mask_of


def _save(path: Path, array: np.ndarray) -> str:
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


@pytest.fixture
def rater_files(tmp_path):
    a = np.zeros((6, 5), np.uint8)
    a[1:4, 1:3] = 1
    b = np.zeros((6, 5), np.uint8)
    b[1:5, 1:4] = 1
    return [_save(tmp_path / "r0.nii.gz", a), None, _save(tmp_path / "r2.nii.gz", b)], a, b


def test_load_rater_labels_stacks_and_marks_missing(rater_files):
    files, a, b = rater_files
    out = LoadRaterLabelsd(keys="label", num_classes=2)({"label": files})["label"]
    assert isinstance(out, MetaTensor) and out.shape == (3, 6, 5) and out.dtype == torch.int64
    np.testing.assert_array_equal(out[0].numpy(), a)
    assert torch.all(out[1] == -1)
    np.testing.assert_array_equal(out[2].numpy(), b)
    np.testing.assert_allclose(np.diag(out.affine.numpy())[:2], [0.5, 0.5])  # geometry of the files kept
    assert rater_mask_of(out).tolist() == [True, False, True]


def test_load_rater_labels_errors_name_the_file(rater_files, tmp_path):
    files, _, _ = rater_files
    other = _save(tmp_path / "other.nii.gz", np.zeros((7, 5), np.uint8))
    with pytest.raises(ValueError, match=f"{other}: rater label shape"):
        LoadRaterLabelsd(keys="label")({"label": [files[0], other]})
    bad = np.zeros((6, 5), np.uint8)
    bad[0, 0] = 7
    bad_file = _save(tmp_path / "bad.nii.gz", bad)
    with pytest.raises(ValueError, match=f"{bad_file}: label values \\[7\\] outside 0..2"):
        LoadRaterLabelsd(keys="label", num_classes=3)({"label": [bad_file]})
    with pytest.raises(ValueError, match="no rater annotated this sample"):
        LoadRaterLabelsd(keys="label")({"label": [None, None]})
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"{broken}: cannot read rater label file"):
        LoadRaterLabelsd(keys="label")({"label": [str(broken)]})


def test_rater_mask_batched():
    label = torch.zeros(2, 3, 4, 4, dtype=torch.int64)
    label[0, 1] = -1
    label[1, 2] = -1
    assert rater_mask_of(label, spatial_dims=2).tolist() == [[True, False, True], [True, True, False]]
    assert RaterMaskd(keys="label")({"label": label[0]})["rater_mask"].tolist() == [True, False, True]


def test_fuse_raters_transform(rater_files):
    files, a, b = rater_files
    data = LoadRaterLabelsd(keys="label")({"label": files})
    mean = FuseRatersd(keys="label", method="mean", num_classes=2)(data)["fused_label"]
    assert mean.shape == (2, 6, 5) and mean.dtype == torch.float32
    expected_fg = (a.astype(np.float32) + b) / 2  # the missing rater is ignored
    np.testing.assert_allclose(mean[1].numpy(), expected_fg)
    np.testing.assert_allclose(mean.sum(0).numpy(), 1.0)
    assert isinstance(mean, MetaTensor) and mean.meta["filename_or_obj"] == data["label"].meta["filename_or_obj"]
    majority = FuseRatersd(keys="label", method="majority", num_classes=2, output_key="m")(data)["m"]
    # a tie between two raters goes to the lowest class: only the pixels both raters mark are foreground
    np.testing.assert_array_equal(majority[1].numpy(), (a & b).astype(np.float32))


def test_fuse_raters_error_names_the_file(rater_files):
    files, _, _ = rater_files
    data = LoadRaterLabelsd(keys="label")({"label": files})
    with pytest.raises(ValueError, match="r0.nii.gz: cannot fuse"):
        FuseRatersd(keys="label", method="vote-by-mood", num_classes=2)(data)


def test_prepare_batch_keys():
    batch = {"image": torch.ones(2, 1, 4, 4), "fused_label": torch.zeros(2, 2, 4, 4), "gt": torch.ones(2, 1, 4, 4)}
    image, target = PrepareBatchKeys(label_key="gt")(batch, device="cpu")
    assert image.shape == (2, 1, 4, 4) and torch.equal(target, batch["gt"])
    assert PrepareBatchKeys(label_key=None)(batch)[1] is None
    with pytest.raises(KeyError, match="batch has no 'label'"):
        PrepareBatchKeys(label_key="label")(batch)


def test_best_model_saver_keeps_the_best(tmp_path):
    net = torch.nn.Linear(2, 1)
    path = tmp_path / "models" / "model.pt"
    saver = BestModelSaver(net, path, key_metric_name="dice")
    engine = Engine(lambda e, b: None)
    for value, weight in [(0.5, 1.0), (0.4, 2.0), (0.7, 3.0)]:
        torch.nn.init.constant_(net.weight, weight)
        engine.state.metrics = {"dice": value}
        saver(engine)
        saved = torch.load(path, weights_only=True)
        best_weight = {0.5: 1.0, 0.4: 1.0, 0.7: 3.0}[value]  # 0.4 is worse than 0.5: not saved
        assert float(saved["weight"][0, 0]) == best_weight
    assert saver.state_dict() == {"best": 0.7}
    assert not list(path.parent.glob("*.tmp"))
    resumed = BestModelSaver(net, path, key_metric_name="dice")
    resumed.load_state_dict(saver.state_dict())
    engine.state.metrics = {"dice": 0.6}
    torch.nn.init.constant_(net.weight, 9.0)
    resumed(engine)
    assert float(torch.load(path, weights_only=True)["weight"][0, 0]) == 3.0


def test_latest_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no training checkpoint to resume from"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path, required=False) is None
    older, newer = tmp_path / "train_checkpoint_epoch=9.pt", tmp_path / "train_checkpoint_epoch=10.pt"
    older.write_bytes(b"1")
    newer.write_bytes(b"2")
    (tmp_path / "notes.pt").write_bytes(b"not a checkpoint of the trainer")
    os.utime(older, (time.time() + 10, time.time() + 10))  # the epoch decides, not the file time
    assert latest_checkpoint(tmp_path) == str(newer)


def test_bundle_locations(tmp_path, monkeypatch):
    bundle = tmp_path / "bundles" / "demo"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert find_bundle_root("demo") == str(bundle)  # from the repository root
    monkeypatch.chdir(bundle)
    assert find_bundle_root("demo") == str(bundle)  # from inside the bundle
    (tmp_path / "datasets").mkdir()
    assert default_dataset_dir(bundle, "synthetic_2d") == str(tmp_path / "datasets" / "synthetic_2d")
    elsewhere = tmp_path / "copied_bundle"
    assert default_dataset_dir(elsewhere, "x") == str(elsewhere.resolve() / "datasets" / "x")
    uri = sqlite_tracking_uri(tmp_path / "runs")
    assert uri == "sqlite:///" + (tmp_path / "runs" / "mlflow.db").as_posix() and (tmp_path / "runs").is_dir()
