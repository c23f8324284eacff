"""Simulated raters and the SimulateRatersd transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from multirater_monai.constants import MISSING_LABEL
from multirater_monai.transforms import (
    RATERS,
    ComposeRaters,
    ContrastRater,
    FractureRater,
    OverRater,
    SimulateRatersd,
    make_rater,
    rater_rng,
)
from multirater_monai.transforms.raters import dilate_mask


def ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def truth_map(spatial_dims: int, nested: bool = False) -> np.ndarray:
    """(*S) uint8: two objects (class 1), with a class-2 core in the first if ``nested``."""
    n = 48 if spatial_dims == 2 else 28
    shape = (n,) * spatial_dims
    label = np.zeros(shape, dtype=np.uint8)
    label[ball(shape, (n * 0.3,) * spatial_dims, n * 0.2)] = 1
    label[ball(shape, (n * 0.72,) * spatial_dims, n * 0.15)] = 1
    if nested:
        label[ball(shape, (n * 0.3,) * spatial_dims, n * 0.1)] = 2
    return label


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


DIMS = pytest.mark.parametrize("spatial_dims", [2, 3])


@DIMS
def test_over_contains_truth_and_is_larger(spatial_dims):
    truth = truth_map(spatial_dims)
    out = make_rater("over")(truth, None, np.random.default_rng(0))
    assert out.shape == truth.shape and out.dtype == truth.dtype
    assert np.all(out[truth > 0] > 0) and (out > 0).sum() > (truth > 0).sum()
    wider = make_rater("over", radius=3)(truth, None, np.random.default_rng(0))
    assert (wider > 0).sum() > (out > 0).sum()


@DIMS
def test_under_inside_truth_and_is_smaller(spatial_dims):
    truth = truth_map(spatial_dims)
    out = make_rater("under")(truth, None, np.random.default_rng(0))
    assert np.all(truth[out > 0] > 0) and 0 < (out > 0).sum() < (truth > 0).sum()


@DIMS
def test_blank(spatial_dims):
    assert not make_rater("blank")(truth_map(spatial_dims), None, np.random.default_rng(0)).any()


@DIMS
def test_good_is_close_but_not_identical(spatial_dims):
    truth = truth_map(spatial_dims)
    outs = [make_rater("good")(truth, None, np.random.default_rng(seed)) for seed in range(3)]
    assert all(dice(o > 0, truth > 0) > 0.85 for o in outs)
    assert any(not np.array_equal(o, truth) for o in outs)
    both = [((o > 0) & (truth == 0)).any() and ((o == 0) & (truth > 0)).any() for o in outs]
    assert any(both)  # grows in some patches, shrinks in others


@DIMS
def test_wrong_has_false_positives_and_false_negatives(spatial_dims):
    truth = truth_map(spatial_dims)
    out = make_rater("wrong")(truth, None, np.random.default_rng(0))
    assert ((out > 0) & (truth == 0)).any()
    assert ((out == 0) & (truth > 0)).any()
    holes = FractureRater()(truth, None, np.random.default_rng(0))
    assert np.all(truth[holes > 0] > 0) and (holes > 0).sum() < (truth > 0).sum()


@DIMS
def test_contrast_over_on_bright_under_on_faint(spatial_dims):
    truth = truth_map(spatial_dims)
    shape = truth.shape
    n = shape[0]
    bright = ball(shape, (n * 0.3,) * spatial_dims, n * 0.2)
    faint = ball(shape, (n * 0.72,) * spatial_dims, n * 0.15)
    image = 0.1 * np.random.default_rng(0).standard_normal(shape) + 2.0 * bright + 0.2 * faint
    out = ContrastRater()(truth, image[None], np.random.default_rng(0)) > 0
    assert np.all(out[bright]) and (out & ~bright & ~faint).sum() > 0  # bright object grew
    assert np.all(faint[out & ~dilate_mask(bright, 3.0)]) and (out & faint).sum() < faint.sum()  # faint shrank
    with pytest.raises(ValueError, match="image"):
        ContrastRater()(truth, None, np.random.default_rng(0))


@DIMS
@pytest.mark.parametrize("name", sorted(RATERS))
def test_seeded_reproducibility(spatial_dims, name):
    truth = truth_map(spatial_dims, nested=True)
    image = truth[None].astype(np.float32) + 0.1 * np.random.default_rng(1).standard_normal(truth.shape)
    rater = make_rater(name)
    a = rater(truth, image, rater_rng(3, 7, 1))
    b = rater(truth, image, rater_rng(3, 7, 1))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 2


@pytest.mark.parametrize("name", ["good", "wrong", "fracture"])
def test_random_raters_depend_on_rng(name):
    truth = truth_map(2)
    a = make_rater(name)(truth, None, rater_rng(0, 0, 0))
    b = make_rater(name)(truth, None, rater_rng(0, 1, 0))
    assert not np.array_equal(a, b)


@DIMS
def test_multiclass_nested_regions(spatial_dims):
    truth = truth_map(spatial_dims, nested=True)
    over = make_rater("over")(truth, None, np.random.default_rng(0))
    under = make_rater("under")(truth, None, np.random.default_rng(0))
    for c in (1, 2):
        assert np.all(over[truth >= c] >= c) and (over >= c).sum() > (truth >= c).sum()
        assert np.all(truth[under >= c] >= c) and (under >= c).sum() < (truth >= c).sum()
    assert set(np.unique(over)) == {0, 1, 2}
    # the eroded core stays inside the object: no background gap opens around it
    core_ring = (truth == 2) & (under < 2)
    assert np.all(under[core_ring] == 1)


def test_torch_and_float_input():
    truth = truth_map(2)
    expected = make_rater("over")(truth, None, 0)
    out = make_rater("over")(torch.as_tensor(truth.astype(np.float32)), None, 0)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, expected)


def test_compose_and_registry():
    truth = truth_map(2)
    composed = make_rater("over+fracture")
    assert isinstance(composed, ComposeRaters) and composed.name == "over+fracture"
    rng = np.random.default_rng(5)
    manual = FractureRater()(OverRater()(truth, None, rng), None, rng)
    np.testing.assert_array_equal(composed(truth, None, np.random.default_rng(5)), manual)
    assert make_rater("wrong").name == "wrong"
    with pytest.raises(ValueError, match="unknown rater"):
        make_rater("sloppy")


def test_simulate_ratersd_numpy_and_masking():
    truth = truth_map(2, nested=True)[None]
    image = truth.astype(np.float32)
    raters = ["good", "over", "under", "wrong", "blank", "contrast"]
    t = SimulateRatersd("gt", raters=raters, image_key="image", labels_per_image=2, rater_mask_key="rater_mask")
    t.set_random_state(0)
    seen = np.zeros(len(raters), dtype=bool)
    for _ in range(10):
        out = t({"gt": truth, "image": image})
        label = out["label"]
        assert isinstance(label, np.ndarray) and label.dtype == np.int64 and label.shape == (6, *truth.shape[1:])
        present = ~np.all(label == MISSING_LABEL, axis=tuple(range(1, label.ndim)))
        assert present.sum() == 2 and np.array_equal(present, out["rater_mask"])
        assert np.all(label[~present] == MISSING_LABEL) and label[present].min() >= 0
        seen |= present
    assert seen.sum() >= 5
    dense = SimulateRatersd("gt", raters=raters[:5])({"gt": truth})["label"]
    assert dense.shape == (5, *truth.shape[1:]) and dense.min() >= 0


@DIMS
def test_simulate_ratersd_metatensor_and_determinism(spatial_dims):
    truth = truth_map(spatial_dims)
    gt = MetaTensor(torch.as_tensor(truth[None], dtype=torch.float32), meta={"filename_or_obj": "case.nii.gz"})
    gt.affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    t = SimulateRatersd("gt", raters=["good", "wrong", make_rater("over", radius=1)], labels_per_image=2)
    a = t.set_random_state(seed=42)({"gt": gt})["label"]
    b = t.set_random_state(seed=42)({"gt": gt})["label"]
    c = t.set_random_state(seed=43)({"gt": gt})["label"]
    assert isinstance(a, MetaTensor) and a.dtype == torch.int64 and a.shape == (3, *truth.shape)
    assert a.meta["filename_or_obj"] == "case.nii.gz" and torch.equal(a.affine, gt.affine)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_simulate_ratersd_validation():
    with pytest.raises(ValueError, match="labels_per_image"):
        SimulateRatersd("gt", raters=["good", "over"], labels_per_image=3)
    with pytest.raises(ValueError, match="one channel"):
        SimulateRatersd("gt", raters=["good"])({"gt": np.zeros((2, 8, 8), dtype=np.int64)})


@DIMS
def test_simplify_straightens_outlines_and_covers_the_object(spatial_dims):
    truth = truth_map(spatial_dims)
    truth[tuple(slice(int(0.28 * n), int(0.32 * n)) for n in truth.shape)] = 0  # a hole, filled by the polytope
    out = make_rater("simplified")(truth, rng=0)
    assert (out[truth == 1] == 1).all() and out.sum() > truth.sum()
    assert dice(out == 1, truth == 1) > 0.8  # a simplification, not another object
    assert make_rater("simplify")(np.zeros_like(truth), rng=0).sum() == 0


def test_tax_tendency_names():
    from multirater_monai.transforms import TAX_RATERS, OverRater, PerfectRater, SimplifyRater, UnderRater

    kinds = [type(make_rater(n)) for n in TAX_RATERS]
    assert kinds == [OverRater, UnderRater, SimplifyRater, PerfectRater]
