"""BraTS reader on replicas of the 2019-2023 layouts: labels, channels, 2D/3D, simulated raters, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from multirater_monai.data import PrepareError, load_multirater_datalist
from multirater_monai.data.real import prepare_brats
from multirater_monai.data.real.replicas import make_brats_replica

SHAPE = (20, 20, 12)
ENHANCING = {"2019": 4, "2020": 4, "2021": 4, "2023": 3}


def load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module", params=sorted(ENHANCING))
def prepared_3d(request, tmp_path_factory):
    release = request.param
    root = tmp_path_factory.mktemp(f"brats{release}")
    src = make_brats_replica(root / "src", release, num_cases=4, shape=SHAPE)
    report = prepare_brats(src, root / "out", spatial_dims=3)
    return release, src, root / "out", report


def test_layout_release_and_datalist(prepared_3d):
    release, _, out, report = prepared_3d
    assert report.source_format == f"BraTS {release}" and report.cases_used == 4
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["raters"] == ["good", "over", "under", "wrong"] and datalist["num_classes"] == 4
    assert datalist["channels"] == ["flair", "t1", "t1ce", "t2"]
    assert datalist["simulated_raters"]["seed"] == 0 and datalist["label_convention"]["release"] == release
    item = datalist["training"][0]
    assert len(item["image"]) == 4 and item["gt"].startswith("gt/")
    for split in ("training", "validation", "test"):
        load_multirater_datalist(
            out / "datalist.json", split, num_raters=4, num_classes=4, in_channels=4, spatial_dims=3
        )
    overlay = json.loads((out / "bundle_config.json").read_text())
    assert overlay["in_channels"] == 4 and overlay["val_target"] == "gt" and overlay["spatial_dims"] == 3


def test_labels_mapped_to_nested_regions(prepared_3d):
    release, src, out, _ = prepared_3d
    item = json.loads((out / "datalist.json").read_text())["training"][0]
    case_dir = src / ("HGG" if release == "2019" else "") / item["case"]
    sep = "-" if release == "2023" else "_"
    seg = load(case_dir / f"{item['case']}{sep}seg.nii.gz")
    gt = load(out / item["gt"])
    assert set(np.unique(seg)) == {0, 1, 2, ENHANCING[release]}
    np.testing.assert_array_equal(gt == 1, seg == 2)  # edema
    np.testing.assert_array_equal(gt == 2, seg == 1)  # necrotic / non-enhancing core
    np.testing.assert_array_equal(gt == 3, seg == ENHANCING[release])
    np.testing.assert_allclose(
        nib.load(str(out / item["gt"])).affine, nib.load(str(case_dir / f"{item['case']}{sep}seg.nii.gz")).affine
    )


def test_images_normalised_per_case_and_modality(prepared_3d):
    _, _, out, _ = prepared_3d
    item = json.loads((out / "datalist.json").read_text())["validation"][0]
    for path in item["image"]:
        image = load(out / path)
        brain = image[image != 0]
        assert image.dtype == np.float32 and abs(brain.mean()) < 1e-3 and abs(brain.std() - 1) < 1e-3


def test_simulated_raters_follow_their_tendency(prepared_3d):
    _, _, out, _ = prepared_3d
    item = json.loads((out / "datalist.json").read_text())["training"][0]
    gt = load(out / item["gt"]) > 0
    _, over, under, wrong = (load(out / p) > 0 for p in item["label"])
    assert over.sum() > gt.sum() > under.sum() and (over >= gt).all() and (under <= gt).all()
    assert wrong.sum() != gt.sum()


def test_2d_slices_crop_and_determinism(tmp_path):
    src = make_brats_replica(tmp_path / "src", "2021", num_cases=3, shape=SHAPE)
    report = prepare_brats(src, tmp_path / "a", spatial_dims=2, crop_size=(16, 16), seed=1)
    prepare_brats(src, tmp_path / "b", spatial_dims=2, crop_size=(16, 16), seed=1)
    text = (tmp_path / "a" / "datalist.json").read_text()
    assert text == (tmp_path / "b" / "datalist.json").read_text()
    datalist = json.loads(text)
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    assert report.spatial_dims == 2 and len(items) == sum(report.items.values())
    by_case = {}
    for split in ("training", "validation", "test"):
        for item in datalist[split]:
            by_case.setdefault(item["case"], set()).add(split)
            gt = load(tmp_path / "a" / item["gt"])
            assert gt.shape == (16, 16) and gt.any()  # foreground slices only, cropped
    assert all(len(splits) == 1 for splits in by_case.values())  # slices split by case
    item = datalist["training"][0]
    for p in item["label"]:
        np.testing.assert_array_equal(load(tmp_path / "a" / p), load(tmp_path / "b" / p))
    # the slice's world position: z = slice index, the 2-voxel crop offset on the negative x / y axes
    affine = nib.load(str(tmp_path / "a" / item["gt"])).affine
    np.testing.assert_allclose(affine[:3, 3], [-2.0, SHAPE[1] - 1 - 2.0, item["slice"]])


def test_rater_class_and_binary_scheme(tmp_path):
    src = make_brats_replica(tmp_path / "src", "2021", num_cases=3, shape=SHAPE)
    prepare_brats(src, tmp_path / "c", spatial_dims=3, raters=["over", "under"], rater_class=3)
    item = json.loads((tmp_path / "c" / "datalist.json").read_text())["training"][0]
    gt = load(tmp_path / "c" / item["gt"]).astype(int)
    over, under = (load(tmp_path / "c" / p).astype(int) for p in item["label"])
    changed = over != gt
    assert changed.any() and (over[changed] == 3).all()  # only the enhancing region grew
    changed = under != gt
    assert changed.any() and ((under[changed] == 2) & (gt[changed] == 3)).all()
    report = prepare_brats(src, tmp_path / "wt", spatial_dims=3, label_scheme="wt")
    item = json.loads((tmp_path / "wt" / "datalist.json").read_text())["training"][0]
    assert report.num_classes == 2 and set(np.unique(load(tmp_path / "wt" / item["gt"]))) == {0, 1}
    with pytest.raises(PrepareError, match="rater_class"):
        prepare_brats(src, tmp_path / "x", label_scheme="wt", rater_class=2)


def _corrupt(src: Path) -> dict[str, str]:
    """Break cases 1-5 of a 2021 replica in different ways and duplicate case 0; return case -> expected message."""

    def c(i: int) -> Path:
        return src / f"BraTS2021_{i:05d}"

    (c(1) / "BraTS2021_00001_t1ce.nii.gz").unlink()
    seg = nib.load(str(c(2) / "BraTS2021_00002_seg.nii.gz"))
    nib.save(
        nib.Nifti1Image(np.asarray(seg.dataobj), seg.affine * np.diag([2, 1, 1, 1])),
        str(c(2) / "BraTS2021_00002_seg.nii.gz"),
    )
    flair = nib.load(str(c(3) / "BraTS2021_00003_flair.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(flair.shape, np.int16), flair.affine), str(c(3) / "BraTS2021_00003_flair.nii.gz"))
    t2 = nib.load(str(c(4) / "BraTS2021_00004_t2.nii.gz"))
    nib.save(nib.Nifti1Image(np.full(t2.shape, np.nan, np.float32), t2.affine), str(c(4) / "BraTS2021_00004_t2.nii.gz"))
    seg = nib.load(str(c(5) / "BraTS2021_00005_seg.nii.gz"))
    bad = np.asarray(seg.dataobj).copy()
    bad[bad == 4] = 3
    nib.save(nib.Nifti1Image(bad, seg.affine), str(c(5) / "BraTS2021_00005_seg.nii.gz"))
    shutil.copytree(c(0), src / "copy" / "BraTS2021_00000")
    return {
        "BraTS2021_00001": "BraTS2021_00001_t1ce.nii.gz: missing modality 't1ce'",
        "BraTS2021_00002": "BraTS2021_00002_seg.nii.gz: geometry (affine",
        "BraTS2021_00003": "BraTS2021_00003_flair.nii.gz: empty image",
        "BraTS2021_00004": "BraTS2021_00004_t2.nii.gz: all-NaN image",
        "BraTS2021_00005": "BraTS2021_00005_seg.nii.gz: unexpected label value(s) [3] (expected 0/1/2/4)",
        "BraTS2021_00000": "duplicated case",
    }


def test_bad_input_reported_per_case_then_skipped(tmp_path):
    src = make_brats_replica(tmp_path / "src", "2021", num_cases=9, shape=(16, 16, 8))
    expected = _corrupt(src)
    with pytest.raises(PrepareError) as err:
        prepare_brats(src, tmp_path / "out")
    message = str(err.value)
    for case, part in expected.items():
        assert case in message and part in message, part
    assert not (tmp_path / "out").exists()
    report = prepare_brats(src, tmp_path / "out", skip_bad=True)
    assert report.cases_found == 10 and report.cases_used == 4 and len(report.skipped_cases) == 6
    assert "BraTS2021_00001" in report.skipped_cases and report.written
    assert "BraTS2021_00001_t1ce.nii.gz" in report.summary()


def test_misnamed_segmentation_hint_and_mixed_releases(tmp_path):
    src = make_brats_replica(tmp_path / "src", "2020", num_cases=3, shape=(16, 16, 8))
    case = src / "BraTS20_Training_002"
    (case / "BraTS20_Training_002_seg.nii.gz").rename(case / "W39_1998.09.19_Segm.nii")
    with pytest.raises(PrepareError, match="missing segmentation; found W39_1998.09.19_Segm.nii instead"):
        prepare_brats(src, tmp_path / "out")
    make_brats_replica(tmp_path / "src", "2023", num_cases=3, shape=(16, 16, 8))
    with pytest.raises(PrepareError, match="several BraTS releases"):
        prepare_brats(tmp_path / "src", tmp_path / "out")
    report = prepare_brats(tmp_path / "src", tmp_path / "out", release="2023")
    assert report.cases_used == 3


def test_not_a_brats_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="no BraTS case folder"):
        prepare_brats(tmp_path / "empty", tmp_path / "out")
