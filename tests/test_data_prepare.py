"""Dataset preparation machinery: splits, destination rules, atomic writes, determinism, report, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from multirater_monai.cli import main as cli_main
from multirater_monai.data import PrepareError, PrepareReport, prepare_dataset
from multirater_monai.data.real import detect_datasets, split_groups
from multirater_monai.data.real.arrays import (
    center_crop_or_pad,
    normalize_nonzero,
    shift_affine,
    slice_affine,
    squeeze_axes,
)
from multirater_monai.data.real.replicas import make_mslsc_replica, make_qubiq_replica


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ms_src(tmp_path_factory) -> Path:
    return make_mslsc_replica(tmp_path_factory.mktemp("ms"), num_subjects=3, time_points=1, shape=(12, 14, 12))


def test_split_groups_deterministic_and_complete():
    groups = [f"p{i}" for i in range(10)] * 3
    a = split_groups(groups, (0.7, 0.1, 0.2), seed=3)
    assert a == split_groups(list(reversed(groups)), (0.7, 0.1, 0.2), seed=3)  # order of the input does not matter
    assert set(a) == set(groups)
    assert sorted(a.values()).count("training") == 7 and list(a.values()).count("test") == 2
    assert a != split_groups(groups, (0.7, 0.1, 0.2), seed=4)
    assert a != split_groups(groups, (0.7, 0.1, 0.2), seed=3, attempt=1)


@pytest.mark.parametrize("n,expected", [(1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1)), (5, (3, 1, 1))])
def test_split_groups_small_counts(n, expected):
    split = list(split_groups([str(i) for i in range(n)], (0.7, 0.1, 0.2)).values())
    assert (split.count("training"), split.count("validation"), split.count("test")) == expected


def test_split_groups_rejects_bad_fractions():
    with pytest.raises(ValueError):
        split_groups(["a"], (0.0, 0.5, 0.5))
    with pytest.raises(ValueError):
        split_groups(["a"], (0.5, 0.5))


def test_array_helpers_geometry():
    affine = np.array([[2.0, 0, 0, 10], [0, 3.0, 0, 20], [0, 0, 4.0, 30], [0, 0, 0, 1]])
    squeezed, new_affine = squeeze_axes(np.zeros((5, 1, 7)), affine)
    assert squeezed.shape == (5, 7)
    np.testing.assert_allclose(new_affine[:, :2], affine[:, [0, 2]])  # kept axes' columns first
    sliced = slice_affine(affine, axis=2, index=3)
    np.testing.assert_allclose(sliced[:3, 3], [10, 20, 42])
    cropped, start = center_crop_or_pad(np.arange(2 * 6 * 4).reshape(2, 6, 4), (4, 6))
    assert cropped.shape == (2, 4, 6) and start.tolist() == [1, -1]
    assert cropped[0, 0, 0] == 0 and cropped[0, 0, 1] == 4  # padded column, then the original's (1, 0)
    np.testing.assert_allclose(shift_affine(affine, start)[:3, 3], [12, 17, 30])
    image = np.stack([np.r_[0, 0, 1, 2, 3.0], np.r_[5, 5, 5, 0, 0.0]])
    out = normalize_nonzero(image)
    assert out[0, :2].tolist() == [0, 0] and abs(out[0, 2:].mean()) < 1e-6 and abs(out[0, 2:].std() - 1) < 1e-5
    assert out[1].tolist() == [0, 0, 0, 0, 0]  # constant brain: centred, not divided by zero


def test_prepare_twice_same_datalist_and_source_untouched(ms_src, tmp_path):
    before = tree_digest(ms_src)
    first = prepare_dataset("mslsc", ms_src, tmp_path / "a", seed=5)
    second = prepare_dataset("mslsc", ms_src, tmp_path / "b", seed=5)
    text_a = (tmp_path / "a" / "datalist.json").read_text()
    assert text_a == (tmp_path / "b" / "datalist.json").read_text()
    assert tree_digest(ms_src) == before
    assert isinstance(first, PrepareReport) and first.items == second.items
    again = prepare_dataset("mslsc", ms_src, tmp_path / "a", seed=5)  # a previous output of the same prepare
    assert (tmp_path / "a" / "datalist.json").read_text() == text_a and again.written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_destination_rules(ms_src, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="not empty"):
        prepare_dataset("mslsc", ms_src, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(PrepareError, match="inside the source"):
        prepare_dataset("mslsc", ms_src, ms_src / "out")
    with pytest.raises(PrepareError, match="inside the output"):
        prepare_dataset("mslsc", ms_src, ms_src.parent)
    prepare_dataset("mslsc", ms_src, tmp_path / "ms")
    qubiq = make_qubiq_replica(tmp_path / "q", datasets=["kidney"], num_cases=3, size=16)
    with pytest.raises(PrepareError, match="holds a prepared 'mslsc'"):
        prepare_dataset("qubiq", qubiq, tmp_path / "ms")
    with pytest.raises(PrepareError, match="unknown dataset"):
        prepare_dataset("acdc", ms_src, tmp_path / "x")


def test_failed_run_writes_nothing(ms_src, tmp_path):
    bad = tmp_path / "src"
    make_mslsc_replica(bad, num_subjects=3, time_points=1, shape=(12, 14, 12))
    (bad / "training" / "training02" / "preprocessed" / "training02_01_pd_pp.nii").unlink()
    with pytest.raises(PrepareError) as err:
        prepare_dataset("mslsc", bad, tmp_path / "out")
    assert "training02_01_pd_pp.nii" in str(err.value) and "--skip-bad" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]
    report = err.value.report
    assert report is not None and not report.written and report.problems[0].case == "training02_01"


def test_detect_datasets(ms_src, tmp_path):
    assert detect_datasets(ms_src) == ["mslsc"]
    assert detect_datasets(tmp_path) == []
    with pytest.raises(PrepareError, match="looks like ISBI 2015 MS lesion"):
        prepare_dataset("brats", ms_src, tmp_path / "out")


def test_cli_prepare_summary_and_json(ms_src, tmp_path, capsys):
    assert (
        cli_main(["prepare", "mslsc", "--src", str(ms_src), "--dst", str(tmp_path / "o"), "--spatial-dims", "2"]) == 0
    )
    out = capsys.readouterr().out
    for text in (
        "cases: 3 found, 3 used, 0 skipped",
        "raters (2): rater1, rater2",
        "classes (2): 0 background, 1 lesion",
        "image channels (4): flair, mprage, pd, t2",
        "bundle_config.json",
        "monai.bundle run",
    ):
        assert text in out
    assert cli_main(["prepare", "mslsc", "--src", str(ms_src), "--dst", str(tmp_path / "o"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["spatial_dims"] == 3 and report["written"] and report["raters"] == ["rater1", "rater2"]
    marker = json.loads((tmp_path / "o" / "prepare.json").read_text())
    assert marker["dataset"] == "mslsc" and marker["report"]["cases_used"] == 3


def test_cli_reports_problems_and_skip_bad(tmp_path, capsys):
    src = make_mslsc_replica(tmp_path / "src", num_subjects=4, time_points=1, shape=(12, 14, 12))
    (src / "training04" / "masks" / "training04_01_mask2.nii").unlink()
    args = ["prepare", "mslsc", "--src", str(src), "--dst", str(tmp_path / "o")]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "training04_01_mask2.nii: missing lesion mask of rater 2" in err and not (tmp_path / "o").exists()
    assert cli_main([*args, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "cases: 4 found, 3 used, 1 skipped" in out and "training04_01_mask2.nii" in out


def test_cli_replica(tmp_path, capsys):
    assert cli_main(["prepare", "replica", "qubiq", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "training_data_v3" / "kidney" / "Training" / "case01" / "image.nii.gz").is_file()


def test_prepare_again_keeps_the_users_files(ms_src, tmp_path):
    """Only what an earlier prepare wrote is replaced; a file the user added stops the run, named, untouched."""
    out = tmp_path / "ms"
    prepare_dataset("mslsc", ms_src, out)
    for extra in (out / "my_notes.txt", out / "images" / "extra" / "user.txt"):
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text("mine")
        before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
        with pytest.raises(PrepareError, match=f"{extra}: not written by 'multirater prepare'"):
            prepare_dataset("mslsc", ms_src, out)
        assert extra.read_text() == "mine" and sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
        extra.unlink()
    (out / "images" / "extra").rmdir()
    assert prepare_dataset("mslsc", ms_src, out).written  # its own earlier output is replaced
    # an output of the first version (no file list): the files of its layout are its own, nothing else
    marker = json.loads((out / "prepare.json").read_text())
    del marker["files"]
    (out / "prepare.json").write_text(json.dumps(marker))
    assert prepare_dataset("mslsc", ms_src, out).written
    (out / "prepare.json").write_text(json.dumps({k: v for k, v in json.loads((out / "prepare.json").read_text()).items() if k != "files"}))
    (out / "labels" / "mine.txt").write_text("mine")
    with pytest.raises(PrepareError, match="mine.txt: not written"):
        prepare_dataset("mslsc", ms_src, out)
