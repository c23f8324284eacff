"""LIDC-IDRI readers on replicas of the Prob. U-Net pickle, the PHiSeg HDF5 and the HPU-Net PNG crops."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from multirater_monai.data import PrepareError, load_multirater_datalist
from multirater_monai.data.real import LIDC_RATERS, prepare_lidc
from multirater_monai.data.real.replicas import (
    lidc_records,
    make_lidc_hdf5_replica,
    make_lidc_pickle_replica,
    make_lidc_png_replica,
)

RECORDS = dict(num_patients=5, crops_per_patient=2, size=20)


def items(datalist: dict) -> list[dict]:
    return datalist["training"] + datalist["validation"] + datalist["test"]


def load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lidc")
    return {
        "pickle": make_lidc_pickle_replica(root / "pickle", **RECORDS),
        "hdf5": make_lidc_hdf5_replica(root / "hdf5", **RECORDS),
        "png": make_lidc_png_replica(root / "png", **RECORDS),
    }


@pytest.mark.parametrize("fmt", ["pickle", "hdf5", "png"])
def test_formats_give_four_annotation_channels_split_by_patient(sources, fmt, tmp_path):
    src = sources[fmt] if fmt != "pickle" else sources[fmt].parent  # a folder holding the pickle works too
    report = prepare_lidc(src, tmp_path / "out")
    assert report.source_format and report.cases_used == 10 and report.spatial_dims == 2
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert datalist["raters"] == list(LIDC_RATERS) and "not a fixed radiologist" in datalist["rater_note"]
    patients = {}
    for split in ("training", "validation", "test"):
        load_multirater_datalist(tmp_path / "out" / "datalist.json", split, num_raters=4, num_classes=2, in_channels=1)
        for item in datalist[split]:
            assert len(item["label"]) == 4 and all(item["label"]) and "gt" not in item
            patients.setdefault(item["group"], set()).add(split)
    assert all(len(s) == 1 for s in patients.values())
    overlay = json.loads((tmp_path / "out" / "bundle_config.json").read_text())
    assert overlay["val_target"] == "fused_label" and overlay["num_raters"] == 4 and overlay["patch_size"] == [16, 16]


def test_pickle_content_and_orientation(sources, tmp_path):
    prepare_lidc(sources["pickle"], tmp_path / "out")
    record = lidc_records(**RECORDS)["LIDC-IDRI-0002_z-102.5_c1"]
    item = next(
        i
        for i in items(json.loads((tmp_path / "out" / "datalist.json").read_text()))
        if i["case"] == "LIDC-IDRI-0002_z-102.5_c1"
    )
    np.testing.assert_allclose(load(tmp_path / "out" / item["image"]), record["image"].T)  # axis 0 = column
    for path, mask in zip(item["label"], record["masks"]):
        np.testing.assert_array_equal(load(tmp_path / "out" / path), mask.T)
    assert item["group"] == "LIDC-IDRI-0002" and not load(tmp_path / "out" / item["label"][3]).any()


def test_hdf5_keeps_its_splits_unless_resplit(sources, tmp_path):
    import h5py

    report = prepare_lidc(sources["hdf5"], tmp_path / "kept")
    with h5py.File(sources["hdf5"]) as f:
        sizes = {g: f[g]["images"].shape[0] for g in ("train", "val", "test")}
    assert report.items == {"training": sizes["train"], "validation": sizes["val"], "test": sizes["test"]}
    resplit = prepare_lidc(sources["hdf5"], tmp_path / "resplit", keep_splits=False, seed=3)
    assert sum(resplit.items.values()) == 10


def test_png_masks_binarised_and_folder_without_splits(tmp_path):
    src = make_lidc_png_replica(tmp_path / "png", split_folders=False, **RECORDS)
    report = prepare_lidc(src, tmp_path / "out", seed=2)
    assert report.source_format.startswith("Hierarchical") and sum(report.groups.values()) == 5
    item = items(json.loads((tmp_path / "out" / "datalist.json").read_text()))[0]
    assert set(np.unique(load(tmp_path / "out" / item["label"][0]))) <= {0, 1}


def test_bad_crops_reported_with_their_file(tmp_path):
    src = make_lidc_png_replica(tmp_path / "png", split_folders=False, **RECORDS)
    gt = src / "gt" / "LIDC-IDRI-0003"
    (gt / "z-100.0_c0_l2.png").unlink()
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(gt / "z-102.5_c1_l0.png")
    Image.fromarray(np.zeros((12, 20), np.uint8)).save(src / "gt" / "LIDC-IDRI-0004" / "z-100.0_c0_l1.png")
    with pytest.raises(PrepareError) as err:
        prepare_lidc(src, tmp_path / "out")
    message = str(err.value)
    assert "z-100.0_c0_l2.png: missing annotation mask" in message
    assert "z-102.5_c1_l0.png: unexpected mask value(s) [7]" in message
    assert "z-100.0_c0_l1.png: mask shape (12, 20) differs" in message
    report = prepare_lidc(src, tmp_path / "out", skip_bad=True)
    assert report.cases_used == 7 and len(report.skipped_cases) == 3


def test_pickle_problems(tmp_path):
    data = {
        k: {"image": r["image"], "masks": r["masks"], "series_uid": r["series_uid"]}
        for k, r in lidc_records(**RECORDS).items()
    }
    key = "LIDC-IDRI-0001_z-100.0_c0"
    data[key]["masks"][1] = np.zeros((5, 5), np.uint8)
    data["LIDC-IDRI-0005_z-102.5_c1"]["image"] = np.full((20, 20), np.nan, np.float32)
    del data["LIDC-IDRI-0003_z-100.0_c0"]["series_uid"]
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "data_lidc.pickle", "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(PrepareError) as err:
        prepare_lidc(tmp_path / "src", tmp_path / "out")
    message = str(err.value)
    assert f"[{key!r}] [mask 1]: mask shape (5, 5) differs" in message
    assert "all-NaN image" in message and "without 'series_uid'" in message


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_pickle_runs_no_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "data_lidc.pickle", "wb") as f:
        pickle.dump({"x": _Exploit()}, f)
    with pytest.raises(PrepareError, match="refusing to unpickle"):
        prepare_lidc(tmp_path / "data_lidc.pickle", tmp_path / "out")
    assert not (tmp_path / "pwned.txt").exists()


def _global_pickle(module: str, name: str, arg: str = "") -> bytes:
    """A protocol-2 pickle calling ``module.name(arg)`` (how a hostile file names any callable)."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(arg).to_bytes(4, "little") + arg.encode() + b"\x85R."


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("subprocess", "Popen"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("numpy.f2py.__main__", "DType"),  # passed the earlier allow-list, whose check imported the module
        ("numpy", "load"),
        ("numpy.testing", "rundocs"),
    ],
)
def test_hostile_pickles_are_refused(tmp_path, monkeypatch, module, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data_lidc.pickle").write_bytes(_global_pickle(module, name, "echo pwned > pwned.txt"))
    with pytest.raises(PrepareError, match=f"refusing to unpickle {module}.{name}"):
        prepare_lidc(tmp_path / "data_lidc.pickle", tmp_path / "out")
    assert not (tmp_path / "pwned.txt").exists() and not (tmp_path / "out").exists()


def test_a_module_named_by_a_pickle_is_not_imported(tmp_path, monkeypatch):
    """Importing a module can run code: a refused pickle imports nothing."""
    (tmp_path / "sideeffect_mod.py").write_text("open('imported.txt', 'w').write('yes')\nclass DType: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for module, name in [("sideeffect_mod", "DType"), ("numpysideeffect_mod", "DType")]:
        (tmp_path / "data_lidc.pickle").write_bytes(_global_pickle(module, name))
        with pytest.raises(PrepareError, match="refusing to unpickle"):
            prepare_lidc(tmp_path / "data_lidc.pickle", tmp_path / "out")
    assert not (tmp_path / "imported.txt").exists() and "sideeffect_mod" not in sys.modules


def test_numpy_pickles_of_every_protocol_are_read(tmp_path):
    from multirater_monai.data.real.lidc import load_lidc_pickle

    value = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.uint8(3), "c": [np.zeros(2, bool)]}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pickle"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        loaded = load_lidc_pickle(path)
        np.testing.assert_array_equal(loaded["a"], value["a"]) and loaded["b"] == 3


def test_hdf5_that_is_not_phiseg(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_dataset("images", data=np.zeros((2, 4, 4)))
    with pytest.raises(PrepareError, match="not a PHiSeg LIDC HDF5"):
        prepare_lidc(tmp_path / "other.hdf5", tmp_path / "out")


def test_pylidc_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pylidc", None)  # as if not installed
    with pytest.raises(PrepareError, match=r"pip install 'multirater-monai\[lidc\]'"):
        prepare_lidc(tmp_path, tmp_path / "out", fmt="pylidc")


def test_not_lidc(tmp_path):
    with pytest.raises(PrepareError, match="no LIDC crops"):
        prepare_lidc(tmp_path, tmp_path / "out")
