"""Label fusion: hand-computed cases in 2D and 3D, missing raters, STAPLE conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multirater_monai.fusion import fuse, majority_vote, mean_label, multilabel_staple, staple
from multirater_monai.metrics import empirical_confusion_matrix

MISSING_2X3 = np.full((2, 3), -1)

# three raters and a missing one on a 2x3 image, L = 3
RATERS_2D = np.stack(
    [
        np.array([[0, 1, 2], [1, 1, 0]]),
        np.array([[0, 1, 1], [2, 1, 0]]),
        np.array([[1, 1, 2], [2, 0, 0]]),
        MISSING_2X3,
    ]
)


def square(shape: tuple[int, ...] = (6, 8)) -> np.ndarray:
    """A foreground box well inside a 2D or 3D image."""
    t = np.zeros(shape, dtype=np.int64)
    t[tuple(slice(1, s - 1) for s in shape)] = 1
    return t


# ------------------------------------------------------------------------------------------ voting
def test_mean_label_2d_ignores_missing_rater():
    expected = np.array(
        [
            [[2 / 3, 0, 0], [0, 1 / 3, 1]],
            [[1 / 3, 1, 1 / 3], [1 / 3, 2 / 3, 0]],
            [[0, 0, 2 / 3], [2 / 3, 0, 0]],
        ]
    )
    out = mean_label(RATERS_2D, 3)
    assert out.dtype == np.float32 and out.shape == (3, 2, 3)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_majority_vote_2d():
    out = majority_vote(RATERS_2D, 3)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 1, 2], [2, 1, 0]])


def test_majority_vote_ties_go_to_lowest_class():
    raters = np.stack([np.array([[0, 2], [1, 2]]), np.array([[1, 1], [2, 0]])])
    np.testing.assert_array_equal(majority_vote(raters, 3), [[0, 1], [1, 0]])


def test_voting_3d_and_torch_input():
    r0 = np.array([[[1, 0]], [[1, 1]]])  # (D=2, H=1, W=2)
    r1 = np.array([[[1, 1]], [[0, 1]]])
    raters = torch.as_tensor(np.stack([r0, r1, np.full_like(r0, -1)]))
    np.testing.assert_allclose(mean_label(raters, 2)[1], [[[1.0, 0.5]], [[0.5, 1.0]]])
    np.testing.assert_array_equal(majority_vote(raters, 2), [[[1, 0]], [[0, 1]]])  # 1-1 ties -> 0


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        (np.stack([np.array([[0, -1], [1, 1]])]), 2, "entirely"),  # partially missing channel
        (np.stack([np.array([[0, 3], [1, 1]])]), 3, "0..2"),  # label outside 0..L-1
        (np.full((2, 2, 2), -1), 2, "no rater"),
        (np.full((1, 2, 2), 0.5), 2, "integer"),
    ],
)
def test_voting_rejects_invalid_labels(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        mean_label(labels, num_classes)


# ---------------------------------------------------------------------------------------- STAPLE
@pytest.mark.parametrize("shape", [(6, 8), (4, 5, 6)])
def test_staple_blank_and_perfect_raters(shape):
    t = square(shape)
    raters = np.stack([t, t, np.zeros_like(t), np.full_like(t, -1)])
    result = staple(raters)
    assert result.probability.shape == shape and result.probability.dtype == np.float32
    np.testing.assert_allclose(result.probability, t, atol=1e-4)
    np.testing.assert_allclose(result.sensitivity[:3], [1.0, 1.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(result.specificity[:3], [1.0, 1.0, 1.0], atol=1e-4)
    assert np.isnan(result.sensitivity[3]) and np.isnan(result.specificity[3])
    np.testing.assert_array_equal(result.rater_mask, [True, True, True, False])


def test_staple_foreground_class_and_torch_input():
    t = square()
    raters = torch.as_tensor(np.stack([2 * t, 2 * t, t]))  # class 2 is the structure; rater 2 says class 1
    result = staple(raters, foreground=2)
    np.testing.assert_allclose(result.probability, t, atol=1e-4)
    np.testing.assert_allclose(result.sensitivity, [1.0, 1.0, 0.0], atol=1e-4)


def test_staple_all_blank_gives_zero_probability():
    z = np.zeros((6, 8), dtype=np.int64)
    result = staple(np.stack([z, z, np.full_like(z, -1)]))
    np.testing.assert_array_equal(result.probability, np.zeros((6, 8)))
    assert np.all(np.isnan(result.sensitivity))  # no foreground: undefined
    np.testing.assert_array_equal(result.specificity[:2], [1.0, 1.0])
    assert np.isnan(result.specificity[2])


def test_staple_single_rater():
    t = square()
    result = staple(np.stack([np.full_like(t, -1), t]))
    np.testing.assert_allclose(result.probability, t, atol=1e-6)
    np.testing.assert_allclose(result.sensitivity[1], 1.0)
    np.testing.assert_allclose(result.specificity[1], 1.0)
    assert np.isnan(result.sensitivity[0])


def test_staple_rejects_1d_and_no_rater():
    with pytest.raises(ValueError):
        staple(np.zeros((2, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="no rater"):
        staple(np.full((2, 3, 3), -1))


# ----------------------------------------------------------------------------- multi-label STAPLE
TRUTH_3 = np.array([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]])


def test_multilabel_staple_confusion_matrix_convention():
    noisy = TRUTH_3.copy()
    noisy[0, 2] = 2  # one of the four truth-1 pixels called 2
    raters = np.stack([TRUTH_3, TRUTH_3, noisy, np.full_like(TRUTH_3, -1)])
    result = multilabel_staple(raters, 3)
    np.testing.assert_array_equal(result.label, TRUTH_3)
    assert result.label.dtype == np.int64
    cms = result.confusion_matrices
    assert cms.shape == (4, 3, 3)
    # A[i, j] = p(rater says i | truth j): the noisy rater's column 1 is (0, 3/4, 1/4)
    expected_noisy = np.array([[1.0, 0.0, 0.0], [0.0, 0.75, 0.0], [0.0, 0.25, 1.0]])
    np.testing.assert_allclose(cms[2], expected_noisy, atol=1e-6)
    np.testing.assert_allclose(cms[2], empirical_confusion_matrix(noisy, TRUTH_3, 3), atol=1e-6)
    np.testing.assert_allclose(cms[0], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(cms[:3].sum(axis=1), np.ones((3, 3)), atol=1e-9)
    assert np.all(np.isnan(cms[3]))
    probs = result.probabilities
    assert probs.shape == (3, 2, 6) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(probs.argmax(0), result.label)


def test_multilabel_staple_absent_class_column_is_nan():
    raters = np.stack([TRUTH_3, TRUTH_3])
    cms = multilabel_staple(raters, 4).confusion_matrices  # class 3 never used
    assert np.all(np.isnan(cms[:, :, 3]))
    np.testing.assert_allclose(cms[:, :, :3], np.stack([np.eye(4)[:, :3]] * 2), atol=1e-6)


def test_multilabel_staple_undecided_pixels_get_a_class():
    # two raters in complete, symmetric disagreement: SimpleITK leaves every pixel undecided
    a = np.array([[0, 1], [0, 1]])
    result = multilabel_staple(np.stack([a, 1 - a]), 2)
    np.testing.assert_array_equal(result.label, np.zeros((2, 2)))  # ties -> lowest class
    np.testing.assert_allclose(result.probabilities, np.full((2, 2, 2), 0.5), atol=1e-6)


def test_multilabel_staple_3d():
    truth = np.stack([TRUTH_3, TRUTH_3[:, ::-1]])  # (2, 2, 6)
    noisy = truth.copy()
    noisy[0, 0, 0] = 1  # one of the eight truth-0 voxels called 1
    result = multilabel_staple(np.stack([truth, noisy, truth]), 3)
    np.testing.assert_array_equal(result.label, truth)
    np.testing.assert_allclose(result.confusion_matrices[1][:, 0], [7 / 8, 1 / 8, 0.0], atol=1e-6)


# ------------------------------------------------------------------------------------------ fuse
def test_fuse_mean_and_majority():
    np.testing.assert_allclose(fuse(RATERS_2D, "mean", 3), mean_label(RATERS_2D, 3))
    majority = fuse(RATERS_2D, "majority", 3)
    assert majority.dtype == np.float32 and majority.shape == (3, 2, 3)
    np.testing.assert_array_equal(majority.argmax(0), [[0, 1, 2], [2, 1, 0]])
    np.testing.assert_array_equal(majority.sum(0), np.ones((2, 3)))
    # hard mean = one-hot of the argmax
    np.testing.assert_array_equal(fuse(RATERS_2D, "mean", 3, hard=True), majority)


def test_fuse_binary_staple():
    t = square()
    raters = np.stack([t, t, np.zeros_like(t), np.full_like(t, -1)])
    soft = fuse(raters, "staple", 2)
    assert soft.shape == (2, 6, 8) and soft.dtype == np.float32
    np.testing.assert_allclose(soft[1], t, atol=1e-4)
    np.testing.assert_allclose(soft[0], 1 - t, atol=1e-4)
    np.testing.assert_array_equal(fuse(raters, "staple", 2, hard=True), np.stack([1 - t, t]))


def test_fuse_multilabel_staple():
    raters = np.stack([TRUTH_3, TRUTH_3, np.full_like(TRUTH_3, -1)])
    soft = fuse(raters, "staple", 3)
    assert soft.shape == (3, 2, 6)
    np.testing.assert_allclose(soft.sum(0), 1.0, atol=1e-6)
    hard = fuse(raters, "staple", 3, hard=True)
    np.testing.assert_array_equal(hard.argmax(0), TRUTH_3)
    np.testing.assert_array_equal(hard.sum(0), np.ones_like(TRUTH_3))


def test_fuse_errors():
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(RATERS_2D, "median", 3)
    with pytest.raises(ValueError, match="no rater"):
        fuse(np.full((3, 2, 3), -1), "mean", 3)
    with pytest.raises(ValueError, match="0..1"):
        fuse(RATERS_2D, "majority", 2)
    with pytest.raises(ValueError, match="at least 2"):
        fuse(np.zeros((1, 2, 2), dtype=np.int64), "mean", 1)
