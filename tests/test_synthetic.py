"""The synthetic multi-rater dataset generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

import multirater_monai.data.synthetic as synthetic
from multirater_monai.cli import main as cli_main
from multirater_monai.data import ensure_synthetic_dataset, generate_synthetic_dataset, make_synthetic_image
from multirater_monai.metrics.confusion import empirical_confusion_matrix

RATERS = ["good", "over", "under", "wrong", "blank"]
TINY = {2: dict(num_train=3, num_val=1, num_test=1), 3: dict(image_size=24, num_train=2, num_val=1, num_test=1)}


@pytest.fixture(scope="module", params=[(2, 2), (3, 2), (2, 3)], ids=["2d", "3d", "2d-3class"])
def dataset(request, tmp_path_factory):
    spatial_dims, num_classes = request.param
    root = tmp_path_factory.mktemp(f"syn{spatial_dims}d{num_classes}")
    path = generate_synthetic_dataset(
        root / "data", spatial_dims=spatial_dims, num_classes=num_classes, seed=1, **TINY[spatial_dims]
    )
    return path, spatial_dims, num_classes


def items(datalist: dict) -> list[dict]:
    return datalist["training"] + datalist["validation"] + datalist["test"]


def test_datalist_structure(dataset):
    path, spatial_dims, num_classes = dataset
    datalist = json.loads(path.read_text())
    assert path.name == "datalist.json"
    assert datalist["spatial_dims"] == spatial_dims and datalist["num_classes"] == num_classes
    assert datalist["raters"] == RATERS and datalist["labels_per_image"] is None
    assert datalist["generator"]["seed"] == 1 and datalist["generator"]["raters"] == RATERS
    assert isinstance(datalist["name"], str)
    sizes = TINY[spatial_dims]
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [
        sizes["num_train"],
        sizes["num_val"],
        sizes["num_test"],
    ]
    for item in items(datalist):
        assert set(item) == {"image", "label", "gt", "true_cm"}
        assert len(item["label"]) == len(RATERS) and all(isinstance(p, str) for p in item["label"])
        assert np.array(item["true_cm"], dtype=float).shape == (len(RATERS), num_classes, num_classes)
        for p in [item["image"], item["gt"], *item["label"]]:
            assert not Path(p).is_absolute() and (path.parent / p).is_file()


def test_files_load_with_monai(dataset):
    path, spatial_dims, num_classes = dataset
    datalist = json.loads(path.read_text())
    keys = ["image", "gt", "label"]
    load = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)])
    size = 64 if spatial_dims == 2 else 24
    for item in items(datalist):
        sample = {
            "image": str(path.parent / item["image"]),
            "gt": str(path.parent / item["gt"]),
            "label": [str(path.parent / p) for p in item["label"]],
        }
        data = load(sample)
        assert data["image"].shape == (1, *(size,) * spatial_dims)
        assert data["gt"].shape == (1, *(size,) * spatial_dims)
        assert data["label"].shape == (len(RATERS), *(size,) * spatial_dims)
        assert 0 < data["gt"].max() <= num_classes - 1 and data["gt"].min() == 0
        assert abs(float(data["image"].mean())) < 0.1 and abs(float(data["image"].std()) - 1) < 0.1


def test_true_cm_matches_files(dataset):
    path, _, num_classes = dataset
    datalist = json.loads(path.read_text())
    import nibabel as nib

    for item in items(datalist):
        truth = np.asarray(nib.load(path.parent / item["gt"]).dataobj)
        true_cm = np.array(item["true_cm"], dtype=float)
        for r, label_path in enumerate(item["label"]):
            rater = np.asarray(nib.load(path.parent / label_path).dataobj)
            expected = empirical_confusion_matrix(rater, truth, num_classes)
            np.testing.assert_allclose(true_cm[r], expected, equal_nan=True)
            present = np.bincount(truth.ravel(), minlength=num_classes) > 0
            np.testing.assert_allclose(true_cm[r][:, present].sum(axis=0), 1.0)
            assert np.all(np.isnan(true_cm[r][:, ~present]))
        blank = true_cm[RATERS.index("blank")]
        np.testing.assert_allclose(blank[0][~np.isnan(blank[0])], 1.0)


def test_determinism(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", seed=3, **TINY[2])
    b = generate_synthetic_dataset(tmp_path / "b", seed=3, **TINY[2])
    c = generate_synthetic_dataset(tmp_path / "c", seed=4, **TINY[2])
    assert a.read_bytes() == b.read_bytes()
    for file in sorted(a.parent.rglob("*.nii.gz")):
        assert file.read_bytes() == (b.parent / file.relative_to(a.parent)).read_bytes()
    assert (a.parent / "images/train_0000.nii.gz").read_bytes() != (c.parent / "images/train_0000.nii.gz").read_bytes()
    image_a, truth_a = make_synthetic_image(np.random.default_rng(0), 3, 3, 20)
    image_b, truth_b = make_synthetic_image(np.random.default_rng(0), 3, 3, 20)
    assert image_a.dtype == np.float32 and image_a.shape == (1, 20, 20, 20) and truth_a.shape == (20, 20, 20)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(truth_a, truth_b)


def test_refuses_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="mine"):
        generate_synthetic_dataset(foreign, **TINY[2])
    with pytest.raises(ValueError, match="mine"):
        ensure_synthetic_dataset(foreign, **TINY[2])
    assert (foreign / "notes.txt").read_text() == "precious" and len(list(foreign.iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left


def test_ensure_reuses_and_checks_parameters(tmp_path):
    root = tmp_path / "data"
    path = ensure_synthetic_dataset(root, **TINY[2])  # generated on first use
    stamp = path.stat().st_mtime_ns
    assert ensure_synthetic_dataset(root, **TINY[2]) == path and path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        ensure_synthetic_dataset(root, **{**TINY[2], "num_train": 4})
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(root, seed=9, **TINY[2])
    assert generate_synthetic_dataset(root, **TINY[2]) == path and path.stat().st_mtime_ns == stamp  # kept
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_synthetic_dataset(empty, **TINY[2]).is_file()


def test_concurrent_generation_keeps_the_first_dataset(tmp_path, monkeypatch):
    """Two processes (e.g. the ranks of a torchrun job) generating the same dataset at once: the one that
    finishes second must not replace the folder the first is already reading from."""
    root = tmp_path / "data"
    write = synthetic._write_dataset
    other = {}

    def racing(folder, params):
        write(folder, params)
        if not other:  # another process finishes while this one is still writing
            monkeypatch.setattr(synthetic, "_write_dataset", write)
            other["path"] = generate_synthetic_dataset(root, **TINY[2])
            other["inode"] = root.stat().st_ino

    monkeypatch.setattr(synthetic, "_write_dataset", racing)
    assert ensure_synthetic_dataset(root, **TINY[2]) == other["path"]
    assert root.stat().st_ino == other["inode"]  # not swapped under the first process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left
    assert ensure_synthetic_dataset(root, **TINY[2]) == other["path"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def broken(root, params):
        (root / "images").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_dataset", broken)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(tmp_path / "data", **TINY[2])
    assert list(tmp_path.iterdir()) == []


def test_labels_per_image(tmp_path):
    path = generate_synthetic_dataset(tmp_path / "k", labels_per_image=2, num_train=4, num_val=1, num_test=1)
    datalist = json.loads(path.read_text())
    assert datalist["labels_per_image"] == 2
    for item in items(datalist):
        assert sum(p is not None for p in item["label"]) == 2
        for r, p in enumerate(item["label"]):
            assert p is None or (path.parent / p).is_file()
        assert not np.isnan(np.array(item["true_cm"], dtype=float)[:, :, 0]).any()  # hidden raters too
    hidden = [f"{Path(i['image']).name[:-7]}_{n}" for i in items(datalist) for n, p in zip(RATERS, i["label"]) if not p]
    assert not any((path.parent / "labels" / f"{h}.nii.gz").exists() for h in hidden)
    annotated = np.array([[p is not None for p in item["label"]] for item in datalist["training"]])
    assert annotated.any(axis=0).all()  # every rater annotates some training image


def test_invalid_parameters(tmp_path):
    with pytest.raises(ValueError, match="unknown rater"):
        generate_synthetic_dataset(tmp_path / "x", raters=["good", "sloppy"], **TINY[2])
    with pytest.raises(ValueError, match="labels_per_image"):
        generate_synthetic_dataset(tmp_path / "x", labels_per_image=6, **TINY[2])
    assert list(tmp_path.iterdir()) == []


def test_cli_synthesize(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["synthesize", str(out), "--num-train", "2", "--num-val", "1", "--num-test", "1"]) == 0
    assert "datalist" in capsys.readouterr().out and (out / "datalist.json").is_file()


def test_assign_raters_covers_every_rater():
    for seed in range(5):
        kept = synthetic.assign_raters(np.random.default_rng(seed), num_images=5, num_raters=5, k=1)
        assert kept.sum(axis=1).tolist() == [1] * 5 and kept.sum(axis=0).tolist() == [1] * 5


def test_concurrent_generation_of_the_same_dataset(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write = synthetic._write_dataset

    def racing(tmp, params):  # another process finishes the same dataset while this one writes
        write(tmp, params)
        monkeypatch.setattr(synthetic, "_write_dataset", write)
        generate_synthetic_dataset(root, **TINY[2])

    monkeypatch.setattr(synthetic, "_write_dataset", racing)
    assert generate_synthetic_dataset(root, **TINY[2]) == root / "datalist.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
