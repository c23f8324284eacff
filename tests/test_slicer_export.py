"""`multirater export-slicer`: the review package read back with slicerio / SimpleITK, 2D and 3D, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from multirater_monai.cli import main
from multirater_monai.errors import UserError
from multirater_monai.slicer import export_slicer_package, find_cases

# oblique, anisotropic, off-origin geometries: any axis or sign error shows
AFFINE_2D = np.array([[0.0, -0.7, 0, 12.5], [0.9, 0.0, 0, -8.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
AFFINE_3D = np.array([[0.6, -0.8, 0, 30.0], [0.8, 0.6, 0, -12.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def make_case(root: Path, shape: tuple[int, ...], affine: np.ndarray, name: str = "case_01") -> dict:
    """An inference output folder of a two-rater, three-class bundle, the images folder and a datalist."""
    rng = np.random.default_rng(len(shape))
    pred, images, labels = root / "pred", root / "images", root / "labels"
    for d in (pred, images, labels):
        d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "consensus": rng.integers(0, 3, shape).astype(np.uint8),
        "rater_a": rng.integers(0, 3, shape).astype(np.uint8),
        "rater_b": rng.integers(0, 2, shape).astype(np.uint8),  # never class 2: its segment is empty
        "drawn_a": rng.integers(0, 3, shape).astype(np.uint8),
        "drawn_b": np.zeros(shape, np.uint8),  # drew nothing
        "gt": rng.integers(0, 3, shape).astype(np.uint8),
        "reliability_a": rng.random(shape).astype(np.float32),
        "prototypes": rng.random((*shape, 1, 3) if len(shape) == 2 else (*shape, 3)).astype(np.float32),
    }
    save(images / f"{name}.nii.gz", rng.normal(size=shape).astype(np.float32), affine)
    save(pred / f"{name}_seg.nii.gz", arrays["consensus"], affine)
    save(pred / f"{name}_rater_seg_a.nii.gz", arrays["rater_a"], affine)
    save(pred / f"{name}_rater_seg_b.nii.gz", arrays["rater_b"], affine)
    save(pred / f"{name}_reliability_a.nii.gz", arrays["reliability_a"], affine)
    save(pred / f"{name}_prototypes.nii.gz", arrays["prototypes"], affine)
    save(pred / f"{name}_why.nii.gz", np.zeros((7, 5), np.float32), np.eye(4))  # a patch mosaic: not on the grid
    (pred / f"{name}_why.png").write_bytes(b"png")
    save(labels / f"{name}_a.nii.gz", arrays["drawn_a"], affine)
    save(labels / f"{name}_b.nii.gz", arrays["drawn_b"], affine)
    save(labels / f"{name}_gt.nii.gz", arrays["gt"], affine)
    datalist = {
        "labels": {"0": "background", "1": "liver", "2": "lesion"},
        "raters": ["a", "b"],
        "test": [
            {
                "image": f"images/{name}.nii.gz",
                "label": [f"labels/{name}_a.nii.gz", f"labels/{name}_b.nii.gz"],
                "gt": f"labels/{name}_gt.nii.gz",
            }
        ],
    }
    (root / "datalist.json").write_text(json.dumps(datalist))
    return {"pred": pred, "images": images, "datalist": root / "datalist.json", "arrays": arrays, "name": name}


def ijk(array: np.ndarray) -> np.ndarray:
    return array[..., None] if array.ndim == 2 else array


@pytest.mark.parametrize("shape,affine", [((24, 20), AFFINE_2D), ((16, 14, 6), AFFINE_3D)], ids=["2d", "3d"])
def test_package_holds_every_segment_and_map_on_the_image_grid(tmp_path, shape, affine):
    case = make_case(tmp_path, shape, affine)
    out = tmp_path / "package"
    package = export_slicer_package(case["pred"], out, datalist=case["datalist"])
    folder = out / case["name"]
    arrays = case["arrays"]

    # one segmentation: a segment per class (liver, lesion) of each source, empty ones kept, overlaps in layers
    segmentation = slicerio.read_segmentation(str(folder / f"{case['name']}.seg.nrrd"))
    sources = {
        "consensus": "consensus",
        "a (predicted)": "rater_a",
        "b (predicted)": "rater_b",
        "a (drawn)": "drawn_a",
        "b (drawn)": "drawn_b",
        "reference": "gt",
    }
    expected = {f"{s}: {c}": (key, v) for s, key in sources.items() for v, c in ((1, "liver"), (2, "lesion"))}
    names = [s["name"] for s in segmentation["segments"]]
    assert sorted(names) == sorted(expected) == sorted(package["cases"][case["name"]]["segments"])
    for segment in segmentation["segments"]:
        key, value = expected[segment["name"]]
        mask = slicerio.segment_mask(segmentation, segment)
        np.testing.assert_array_equal(mask, ijk(arrays[key] == value), err_msg=segment["name"])
        assert len(segment["color"]) == 3 and all(0 <= c <= 1 for c in segment["color"])
    assert not slicerio.segment_mask(segmentation, "b (drawn): liver").any()
    layers = {}
    for segment in segmentation["segments"]:
        layers.setdefault(segment["layer"], []).append(slicerio.segment_mask(segmentation, segment))
    assert len(layers) > 1  # the sources overlap
    for masks in layers.values():
        assert (np.sum(masks, axis=0) <= 1).all()  # no two segments of a layer overlap

    # geometry: every written file against the input image, read by SimpleITK (not the library that wrote them)
    source = sitk.ReadImage(str(case["images"] / f"{case['name']}.nii.gz"))
    n = source.GetDimension()
    for path in [folder / f"{case['name']}.seg.nrrd", *sorted(folder.glob("*.nrrd"))]:
        written = sitk.ReadImage(str(path))
        assert written.GetSize()[:n] == source.GetSize(), path.name
        np.testing.assert_allclose(written.GetOrigin()[:n], source.GetOrigin(), atol=1e-5, err_msg=path.name)
        np.testing.assert_allclose(written.GetSpacing()[:n], source.GetSpacing(), atol=1e-5, err_msg=path.name)
        direction = np.reshape(written.GetDirection(), (3, 3))[:n, :n]
        np.testing.assert_allclose(direction, np.reshape(source.GetDirection(), (n, n)), atol=1e-5, err_msg=path.name)
        if n == 2:
            assert written.GetSize()[2] == 1

    # maps as scalar volumes, multi-channel ones split, disagreement = raters predicted to differ from the consensus
    def volume(name: str) -> np.ndarray:
        return slicerio.read_volume(str(folder / f"{case['name']}_{name}.nrrd"))["voxels"]

    np.testing.assert_allclose(volume("reliability_a"), ijk(arrays["reliability_a"]))
    channels = arrays["prototypes"].reshape(*shape, 3)
    for c in range(3):
        np.testing.assert_allclose(volume(f"prototypes_{c}"), ijk(channels[..., c]))
    differ = (arrays["rater_a"] != arrays["consensus"]).astype(int) + (arrays["rater_b"] != arrays["consensus"])
    np.testing.assert_array_equal(volume("disagreement"), ijk(differ))
    np.testing.assert_allclose(
        volume("image"), ijk(np.asarray(nib.load(case["images"] / f"{case['name']}.nii.gz").dataobj))
    )
    assert (folder / "explanations" / f"{case['name']}_why.png").is_file()
    assert (folder / "explanations" / f"{case['name']}_why.nii.gz").is_file()
    for name in ("README.md", "package.json", "load_in_slicer.py"):
        assert (out / name).is_file()
    compile((out / "load_in_slicer.py").read_text(), "load_in_slicer.py", "exec")


def test_images_folder_without_datalist(tmp_path):
    case = make_case(tmp_path, (12, 10), AFFINE_2D)
    package = export_slicer_package(
        case["pred"], tmp_path / "out", image_dir=case["images"], class_names=["bg", "x", "y"]
    )
    segments = package["cases"][case["name"]]["segments"]
    assert sorted(segments) == sorted(
        f"{s}: {c}" for s in ("consensus", "a (predicted)", "b (predicted)") for c in "xy"
    )


def test_cases_are_grouped_by_name(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in ("p1_seg", "p1_2_seg", "p1_rater_seg_x", "p1_2_rater_seg_x", "p1_2_reliability_x", "p1_why"):
        save(pred / f"{name}.nii.gz", np.zeros((2, 2), np.uint8), np.eye(4))
    cases = {c.name: c for c in find_cases(pred)}
    assert sorted(cases) == ["p1", "p1_2"]
    assert list(cases["p1"].rater_predictions) == ["x"] and cases["p1"].maps == {}
    assert list(cases["p1_2"].maps) == ["reliability_x"] and [p.name for p in cases["p1"].figures] == ["p1_why.nii.gz"]


def test_bad_inference_folders_are_refused_before_writing(tmp_path):
    case = make_case(tmp_path, (12, 10), AFFINE_2D)
    out = tmp_path / "out"
    name = case["name"]

    with pytest.raises(UserError, match="no <case>_seg.nii.gz"):
        export_slicer_package(case["images"], out, image_dir=case["images"])
    with pytest.raises(UserError, match="no such inference output folder"):
        export_slicer_package(tmp_path / "nowhere", out, image_dir=case["images"])
    with pytest.raises(UserError, match="give --images"):
        export_slicer_package(case["pred"], out)

    (case["images"] / f"{name}.nii.gz").rename(tmp_path / "moved.nii.gz")
    with pytest.raises(UserError, match=rf"images/{name}.nii.gz: missing"):
        export_slicer_package(case["pred"], out, image_dir=case["images"])
    (tmp_path / "moved.nii.gz").rename(case["images"] / f"{name}.nii.gz")

    shifted = AFFINE_2D.copy()
    shifted[0, 3] += 0.5
    save(case["pred"] / f"{name}_reliability_a.nii.gz", case["arrays"]["reliability_a"], shifted)
    with pytest.raises(
        UserError, match=rf"{name}_reliability_a.nii.gz: geometry \(affine\) differs from {name}_seg.nii.gz's"
    ):
        export_slicer_package(case["pred"], out, image_dir=case["images"])
    save(case["pred"] / f"{name}_reliability_a.nii.gz", np.zeros((12, 11), np.float32), AFFINE_2D)
    with pytest.raises(UserError, match=r"reliability_a.nii.gz: shape \(12, 11\) does not match"):
        export_slicer_package(case["pred"], out, image_dir=case["images"])
    save(case["pred"] / f"{name}_reliability_a.nii.gz", case["arrays"]["reliability_a"], AFFINE_2D)

    with pytest.raises(UserError, match=r"label values \[2\] have no class name"):
        export_slicer_package(case["pred"], out, image_dir=case["images"], class_names=["background", "liver"])
    (tmp_path / "labels" / f"{name}_b.nii.gz").unlink()
    with pytest.raises(UserError, match=rf"{name}_b.nii.gz: missing"):
        export_slicer_package(case["pred"], out, datalist=case["datalist"])
    assert not out.exists()  # nothing written by any refused export


def test_existing_package_is_kept_unless_overwrite(tmp_path):
    case = make_case(tmp_path, (12, 10), AFFINE_2D)
    out = tmp_path / "out"
    export_slicer_package(case["pred"], out, image_dir=case["images"])
    (out / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"out/README.md: exists from an earlier export; pass --overwrite"):
        export_slicer_package(case["pred"], out, image_dir=case["images"])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    export_slicer_package(case["pred"], out, datalist=case["datalist"], overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # only the package's own files are replaced
    segments = json.loads((out / "package.json").read_text())["cases"][case["name"]]["segments"]
    assert "reference: lesion" in segments


def test_command_line(tmp_path, capsys):
    case = make_case(tmp_path, (12, 10), AFFINE_2D)
    assert (
        main(["export-slicer", str(case["pred"]), "--out", str(tmp_path / "out"), "--datalist", str(case["datalist"])])
        == 0
    )
    assert "1 case(s), 12 segments" in capsys.readouterr().out
    assert (
        main(["export-slicer", str(case["pred"]), "--out", str(tmp_path / "out"), "--images", str(case["images"])]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ERROR: ") and "--overwrite" in err
