"""Metrics: hand-computed values in 2D and 3D, empty conventions, NaN handling, accumulation, Ignite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.handlers import from_engine
from monai.networks.utils import one_hot

from multirater_monai.metrics import (
    ConfusionMatrixError,
    ConfusionMatrixErrorMetric,
    GeneralizedEnergyDistance,
    GeneralizedEnergyDistanceMetric,
    HardDiceMetric,
    MeanIoUMetric,
    SoftDice,
    SoftDiceMetric,
    compute_cm_error,
    compute_generalized_energy_distance,
    compute_hard_dice,
    compute_miou,
    compute_soft_dice,
    empirical_confusion_matrix,
    labels_to_foreground_masks,
    pixelwise_to_image_cm,
)


def onehot(label: list, num_classes: int = 3) -> torch.Tensor:
    """(1, L, *S) one-hot of a (*S) class-index map given as nested lists."""
    return one_hot(torch.tensor(label)[None, None], num_classes, dim=1)


PRED = [[0, 1, 1], [2, 2, 0]]
TRUTH = [[0, 1, 0], [2, 2, 2]]
# class 0: pred {(0,0),(1,2)}, truth {(0,0),(0,2)}: I=1, |P|+|T|=4, U=3
# class 1: pred {(0,1),(0,2)}, truth {(0,1)}: I=1, |P|+|T|=3, U=2
# class 2: pred {(1,0),(1,1)}, truth {(1,0),(1,1),(1,2)}: I=2, |P|+|T|=5, U=3
DICE = [1 / 2, 2 / 3, 4 / 5]
IOU = [1 / 3, 1 / 2, 2 / 3]


# ----------------------------------------------------------------------------------- hard Dice / IoU
def test_hard_dice_2d():
    out = compute_hard_dice(onehot(PRED), onehot(TRUTH))
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, torch.tensor([DICE[1:]]))
    with_background = compute_hard_dice(onehot(PRED), onehot(TRUTH), include_background=True)
    torch.testing.assert_close(with_background, torch.tensor([DICE]))


def test_hard_dice_3d_and_empty_conventions():
    pred = onehot([[[0, 0]], [[0, 1]]], 3)  # (1, 3, 2, 1, 2); class 2 absent from both -> 1
    truth = onehot([[[0, 1]], [[0, 1]]], 3)  # class 1: I=1, 1 + 2 -> 2/3
    torch.testing.assert_close(compute_hard_dice(pred, truth), torch.tensor([[2 / 3, 1.0]]))
    empty = onehot([[[0, 0]], [[0, 0]]], 3)
    torch.testing.assert_close(compute_hard_dice(empty, truth), torch.tensor([[0.0, 1.0]]))  # missed class -> 0
    torch.testing.assert_close(compute_hard_dice(truth, empty), torch.tensor([[0.0, 1.0]]))  # false class -> 0


def test_miou_2d_3d():
    torch.testing.assert_close(compute_miou(onehot(PRED), onehot(TRUTH)), torch.tensor([IOU]))
    pred = onehot([[[0, 0]], [[0, 1]]], 3)
    truth = onehot([[[0, 1]], [[0, 1]]], 3)
    # class 0: I=2, U=3; class 1: I=1, U=2; class 2 empty in both -> 1
    torch.testing.assert_close(compute_miou(pred, truth), torch.tensor([[2 / 3, 1 / 2, 1.0]]))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        compute_hard_dice(onehot(PRED), onehot([[0, 1], [1, 0]]))


# ------------------------------------------------------------------------------------- soft Dice
# three raters: mean in {0, 1/3, 2/3, 1}
SOFT_PRED = torch.tensor([[[[0.05, 0.2, 0.5], [0.6, 0.8, 0.95]]]])
RATER_MEAN = torch.tensor([[[[0.0, 1 / 3, 1 / 3], [2 / 3, 2 / 3, 1.0]]]])
# t=0.1: pred 5 px, mean 5 px, I=5 -> 1
# t=0.3: pred {(0,2),(1,*)}=4, mean 5 (1/3 >= 0.3), I=4 -> 8/9
# t=0.5: pred 4 (0.5 >= 0.5), mean {(1,*)}=3, I=3 -> 6/7
# t=0.7: pred {(1,1),(1,2)}, mean {(1,2)} (2/3 < 0.7), I=1 -> 2/3
# t=0.9: pred {(1,2)}, mean {(1,2)} -> 1
SOFT_DICE = (1 + 8 / 9 + 6 / 7 + 2 / 3 + 1) / 5  # = 278 / 315


def test_soft_dice_2d():
    out = compute_soft_dice(SOFT_PRED, RATER_MEAN)
    assert out.shape == (1, 1)
    torch.testing.assert_close(out, torch.tensor([[SOFT_DICE]]))
    # one threshold only
    torch.testing.assert_close(compute_soft_dice(SOFT_PRED, RATER_MEAN, thresholds=(0.5,)), torch.tensor([[6 / 7]]))


def test_soft_dice_3d_and_empty():
    out = compute_soft_dice(SOFT_PRED[:, :, None], RATER_MEAN[:, :, None])  # (1, 1, 1, 2, 3)
    torch.testing.assert_close(out, torch.tensor([[SOFT_DICE]]))
    low = torch.full((1, 1, 2, 2, 2), 0.05)
    torch.testing.assert_close(compute_soft_dice(low, torch.zeros_like(low)), torch.tensor([[1.0]]))
    # everything >= 0.1 in the raters but nothing in the prediction: 0 at every threshold
    torch.testing.assert_close(compute_soft_dice(low, torch.ones_like(low)), torch.tensor([[0.0]]))


# -------------------------------------------------------------------------------------------- GED
# raters Y1 = top row, Y2 = top-left pixel, Y3 missing; samples S1 = top row, S2 = empty.
# d(S1,Y1)=0, d(S1,Y2)=1/2, d(S2,Y1)=d(S2,Y2)=1 -> E[d(S,Y)] = 2.5/4
# E[d(S,S')] = (0 + 1 + 1 + 0)/4 (d(empty, empty) = 0); E[d(Y,Y')] = (0 + 1/2 + 1/2 + 0)/4
# D²_GED = 2 * 0.625 - 0.5 - 0.25 = 0.5
RATER_LABELS = torch.tensor([[[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[-1, -1], [-1, -1]]]])
SAMPLES = torch.tensor([[[[1, 1], [0, 0]], [[0, 0], [0, 0]]]])


def test_labels_to_foreground_masks():
    masks, rater_mask = labels_to_foreground_masks(torch.tensor([[[[0, 2], [1, 0]], [[-1, -1], [-1, -1]]]]))
    assert masks.dtype == torch.bool and rater_mask.tolist() == [[True, False]]
    assert masks[0, 0].tolist() == [[False, True], [True, False]] and not masks[0, 1].any()
    masks, _ = labels_to_foreground_masks(torch.tensor([[[[0, 2], [1, 0]]]]), foreground=2)
    assert masks[0, 0].tolist() == [[False, True], [False, False]]


def test_ged_2d_missing_rater_ignored():
    references, references_mask = labels_to_foreground_masks(RATER_LABELS)
    ged2 = compute_generalized_energy_distance(SAMPLES, references, references_mask=references_mask)
    assert ged2.shape == (1,)
    torch.testing.assert_close(ged2, torch.tensor([0.5]))
    ged = compute_generalized_energy_distance(SAMPLES, references, references_mask=references_mask, squared=False)
    torch.testing.assert_close(ged, torch.tensor([math.sqrt(0.5)]))
    # the same without the mask counts the missing rater as an empty mask: a different value
    # E[d(S,Y)] = (0 + 1/2 + 1 + 1 + 1 + 0)/6, E[d(Y,Y')] = (2 * 1/2 + 4 * 1)/9
    unmasked = compute_generalized_energy_distance(SAMPLES, references)
    torch.testing.assert_close(unmasked, torch.tensor([2 * 3.5 / 6 - 0.5 - 5 / 9]))


def test_ged_3d_identical_sets_and_empty():
    a = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]]])[None, :, None]  # (1, 2, 1, 2, 2)
    torch.testing.assert_close(compute_generalized_energy_distance(a, a.flip(1)), torch.tensor([0.0]))
    empty = torch.zeros(2, 3, 2, 2, 2)
    torch.testing.assert_close(compute_generalized_energy_distance(empty, empty[:, :2]), torch.zeros(2))
    no_reference = compute_generalized_energy_distance(a, a, references_mask=torch.tensor([[False, False]]))
    assert torch.isnan(no_reference).all()


def test_ged_metric_two_batches():
    metric = GeneralizedEnergyDistanceMetric()
    metric(y_pred=SAMPLES, y=RATER_LABELS)  # 0.5
    metric(y_pred=RATER_LABELS[:, :2], y=RATER_LABELS)  # samples = the raters -> 0
    assert metric.aggregate().item() == pytest.approx(0.25)
    assert metric.get_buffer().shape == (2, 1)


# ------------------------------------------------------------------------------------- CM error
def test_cm_error_rmse_nan_columns_and_masks():
    estimated = torch.tensor([[[[0.9, 0.2], [0.1, 0.8]]] * 3])  # (1, 3, 2, 2)
    true = torch.tensor(
        [
            [
                [[1.0, 0.5], [0.0, 0.5]],  # squared errors .01 .09 .01 .09 -> sqrt(.05)
                [[1.0, float("nan")], [0.0, float("nan")]],  # class 1 absent: column 0 only -> sqrt(.01)
                [[float("nan")] * 2] * 2,  # rater who did not annotate
            ]
        ]
    )
    out = compute_cm_error(estimated, true)
    assert out.shape == (1, 3)
    torch.testing.assert_close(out[0, :2], torch.tensor([math.sqrt(0.05), 0.1]))
    assert torch.isnan(out[0, 2])
    masked = compute_cm_error(estimated, true, rater_mask=torch.tensor([[False, True, True]]))
    assert torch.isnan(masked[0, 0]) and masked[0, 1].item() == pytest.approx(0.1)


def test_pixelwise_to_image_cm_2d():
    # pixels (1, 3), truth [0, 0, 1]; pixel CMs columns sum to 1
    pixel_cms = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]], [[0.8, 0.3], [0.2, 0.7]], [[0.6, 0.4], [0.4, 0.6]]]
    )  # (P, L, L)
    cm_map = pixel_cms.permute(1, 2, 0).reshape(1, 1, 2, 2, 1, 3)  # (B, R, L, L, H, W)
    out = pixelwise_to_image_cm(cm_map, torch.tensor([[[0, 0, 1]]]), 2)
    assert out.shape == (1, 1, 2, 2)
    # column 0 = mean of pixels 0 and 1, column 1 = pixel 2
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.9, 0.4], [0.1, 0.6]]))
    # (B, 1, *S) truth, class 1 absent -> NaN column
    out = pixelwise_to_image_cm(cm_map, torch.tensor([[[[0, 0, 0]]]]), 2)
    torch.testing.assert_close(out[0, 0, :, 0], torch.tensor([0.8, 0.2]))
    assert torch.isnan(out[0, 0, :, 1]).all()


def test_pixelwise_to_image_cm_global_broadcast():
    global_cms = torch.tensor([[[0.9, 0.3], [0.1, 0.7]], [[0.5, 0.5], [0.5, 0.5]]])  # (R=2, L, L)
    truth = torch.tensor([[[0, 1], [1, 1]], [[1, 1], [1, 1]]])  # image 2 has no class 0
    out = pixelwise_to_image_cm(global_cms, truth, 2)
    assert out.shape == (2, 2, 2, 2)
    torch.testing.assert_close(out[0], global_cms)
    assert torch.isnan(out[1, :, :, 0]).all()
    torch.testing.assert_close(out[1, :, :, 1], global_cms[:, :, 1])


def test_pixelwise_to_image_cm_matches_empirical_for_deterministic_3d_rater():
    truth = torch.tensor([[[0, 1, 2], [2, 2, 0]], [[1, 1, 0], [2, 0, 0]]])  # (D=2, H=2, W=3)
    rater = torch.tensor([[[0, 1, 1], [2, 0, 0]], [[1, 2, 0], [2, 0, 1]]])
    # a pixel-wise CM whose every column puts all mass on the rater's label at that pixel
    cm_map = one_hot(rater[None], 3, dim=0)[:, None].expand(3, 3, *rater.shape)  # (i, j, *S)
    image_cm = pixelwise_to_image_cm(cm_map[None, None], truth[None], 3)[0, 0]
    np.testing.assert_allclose(image_cm.numpy(), empirical_confusion_matrix(rater, truth, 3), atol=1e-6)


# ----------------------------------------------------------------------------- cumulative metrics
def test_hard_dice_metric_accumulates_two_batches():
    metric = HardDiceMetric(include_background=True)
    metric(y_pred=onehot(PRED), y=onehot(TRUTH))  # [1/2, 2/3, 4/5]
    metric(y_pred=onehot(TRUTH), y=onehot(TRUTH))  # [1, 1, 1]
    assert metric.aggregate().item() == pytest.approx((sum(DICE) / 3 + 1) / 2)
    torch.testing.assert_close(
        metric.aggregate("mean_batch"), torch.tensor([(d + 1) / 2 for d in DICE])
    )
    metric.reset()
    metric(y_pred=onehot(PRED), y=onehot(TRUTH))
    assert metric.aggregate().item() == pytest.approx(sum(DICE) / 3)


def test_hard_dice_and_miou_metrics_from_class_indices():
    dice = HardDiceMetric(num_classes=3, reduction="mean_batch")
    dice(y_pred=torch.tensor(PRED)[None, None], y=torch.tensor(TRUTH)[None, None])
    torch.testing.assert_close(dice.aggregate(), torch.tensor(DICE[1:]))
    miou = MeanIoUMetric(num_classes=3, get_not_nans=True)
    miou(y_pred=torch.tensor(PRED)[None, None], y=torch.tensor(TRUTH)[None, None])
    miou(y_pred=[torch.tensor(TRUTH)[None]], y=[torch.tensor(TRUTH)[None]])  # list of channel-first
    value, not_nans = miou.aggregate()
    assert value.item() == pytest.approx((sum(IOU) / 3 + 1) / 2)
    assert not_nans.item() == 2


def test_soft_dice_metric_two_batches():
    metric = SoftDiceMetric()
    metric(y_pred=SOFT_PRED, y=RATER_MEAN)
    metric(y_pred=RATER_MEAN, y=RATER_MEAN)
    assert metric.aggregate().item() == pytest.approx((SOFT_DICE + 1) / 2)


def test_cm_error_metric_skips_missing_raters():
    estimated = torch.tensor([[[[0.9, 0.2], [0.1, 0.8]]] * 2])
    nan = float("nan")
    true_a = torch.tensor([[[[1.0, 0.5], [0.0, 0.5]], [[nan, nan], [nan, nan]]]])  # sqrt(.05), NaN
    true_b = torch.tensor([[[[1.0, nan], [0.0, nan]], [[0.9, 0.2], [0.1, 0.8]]]])  # 0.1, 0
    metric = ConfusionMatrixErrorMetric()
    metric(y_pred=estimated, y=true_a)
    metric(y_pred=estimated, y=true_b)
    assert metric.aggregate().item() == pytest.approx((math.sqrt(0.05) + 0.05) / 2)
    torch.testing.assert_close(metric.aggregate("mean_batch"), torch.tensor([(math.sqrt(0.05) + 0.1) / 2, 0.0]))


# ------------------------------------------------------------------------------------ Ignite handlers
def _engine() -> Engine:
    """An engine whose output is the batch dict itself."""
    return Engine(lambda engine, batch: batch)


def test_soft_dice_handler_in_engine():
    batches = [
        {"pred_prob": SOFT_PRED, "rater_mean": RATER_MEAN},
        {"pred_prob": RATER_MEAN, "rater_mean": RATER_MEAN},
    ]
    engine = _engine()
    SoftDice(output_transform=from_engine(["pred_prob", "rater_mean"])).attach(engine, "soft_dice")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["soft_dice"] == pytest.approx((SOFT_DICE + 1) / 2, abs=1e-6)
    assert engine.state.metric_details["soft_dice"].shape == (2, 1)


def test_handlers_from_bundle_config():
    parser = ConfigParser(
        {
            "soft": {
                "_target_": "multirater_monai.metrics.SoftDice",
                "output_transform": "$monai.handlers.from_engine(['pred_prob', 'rater_mean'])",
            },
            "ged": {
                "_target_": "multirater_monai.metrics.GeneralizedEnergyDistance",
                "output_transform": "$monai.handlers.from_engine(['rater_pred', 'label'])",
            },
            "cm": {
                "_target_": "multirater_monai.metrics.ConfusionMatrixError",
                "output_transform": "$monai.handlers.from_engine(['cm', 'true_cm'])",
            },
        }
    )
    soft, ged, cm = parser.get_parsed_content("soft"), parser.get_parsed_content("ged"), parser.get_parsed_content("cm")
    assert isinstance(soft, SoftDice) and isinstance(ged, GeneralizedEnergyDistance)
    assert isinstance(cm, ConfusionMatrixError)
    batch = {"rater_pred": SAMPLES, "label": RATER_LABELS}
    engine = _engine()
    ged.attach(engine, "ged")
    engine.run([batch], max_epochs=1)
    assert engine.state.metrics["ged"] == pytest.approx(0.5, abs=1e-6)
