"""CM-Net loss: hand-computed values, masking of missing raters and pixels, trace warm-up, a sanity training."""

from __future__ import annotations

import math

import pytest
import torch

from multirater_monai.losses import CMNetLoss
from multirater_monai.networks import CMNet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost (large on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# 1 image, 2 raters, 2 classes, 2 pixels (1D spatial shape (2,)).
P = torch.tensor([[0.8, 0.3], [0.2, 0.7]])  # p[class, pixel]
A0 = torch.tensor([[0.9, 0.2], [0.1, 0.8]])  # A[noisy, true], trace 1.7
A1 = torch.tensor([[0.6, 0.3], [0.4, 0.7]])  # trace 1.3
# A_r · p by hand: rater 0, pixel 0: (0.9*0.8 + 0.2*0.2, 0.1*0.8 + 0.8*0.2) = (0.76, 0.24), pixel 1: (0.41, 0.59);
# rater 1, pixel 0: (0.6*0.8 + 0.3*0.2, 0.4*0.8 + 0.7*0.2) = (0.54, 0.46), pixel 1: (0.39, 0.61).
Q = torch.tensor([[[0.76, 0.41], [0.24, 0.59]], [[0.54, 0.39], [0.46, 0.61]]])  # q[rater, class, pixel]
LABELS = torch.tensor([[[0, 1], [1, 1]]])  # (B=1, R=2, 2 pixels)


def _outputs(raters=(0, 1)) -> dict:
    cm = torch.stack([A0, A1])[list(raters)][None, ..., None].expand(-1, -1, -1, -1, 2)  # (1, R, 2, 2, 2)
    return {"cm": cm, "rater_probs": Q[list(raters)][None]}


def test_hand_values_are_a_times_p():
    cm = _outputs()["cm"]
    torch.testing.assert_close(torch.einsum("brijs,bjs->bris", cm, P[None]), Q[None])


def test_nll_by_hand():
    nll0 = -(math.log(0.76) + math.log(0.59)) / 2
    nll1 = -(math.log(0.46) + math.log(0.61)) / 2
    loss_fn = CMNetLoss(trace_weight=0.0)
    loss = loss_fn(_outputs(), LABELS)
    assert loss.item() == pytest.approx((nll0 + nll1) / 2, rel=1e-5)
    assert loss_fn.last_nll.item() == pytest.approx((nll0 + nll1) / 2, rel=1e-5)
    per_pair = CMNetLoss(trace_weight=0.0, reduction="none")(_outputs(), LABELS)
    torch.testing.assert_close(per_pair, torch.tensor([[nll0, nll1]]))
    summed = CMNetLoss(trace_weight=0.0, reduction="sum")(_outputs(), LABELS)
    assert summed.item() == pytest.approx(nll0 + nll1, rel=1e-5)


def test_trace_by_hand():
    loss_fn = CMNetLoss(trace_weight=0.1, nll_weight=0.0)
    loss = loss_fn(_outputs(), LABELS)
    assert loss.item() == pytest.approx(0.1 * (1.7 + 1.3) / 2, rel=1e-5)  # mean trace over raters, not the sum
    assert loss_fn.last_trace.item() == pytest.approx(1.5, rel=1e-5)
    both = CMNetLoss(trace_weight=0.1)(_outputs(), LABELS)
    assert both.item() == pytest.approx(CMNetLoss(trace_weight=0.0)(_outputs(), LABELS).item() + 0.15, rel=1e-5)


def test_missing_rater_is_masked():
    labels = LABELS.clone()
    labels[:, 1] = -1  # rater 1 did not annotate
    for weight in (0.0, 0.3):
        masked = CMNetLoss(trace_weight=weight)(_outputs(), labels)
        removed = CMNetLoss(trace_weight=weight)(_outputs(raters=(0,)), LABELS[:, :1])
        assert masked.item() == pytest.approx(removed.item(), rel=1e-6)
    assert CMNetLoss(reduction="none")(_outputs(), labels)[0, 1] == 0


def test_ignored_pixels_are_masked():
    labels = LABELS.clone()
    labels[0, 0, 1] = -1  # rater 0 ignores pixel 1
    loss = CMNetLoss(trace_weight=0.0, reduction="none")(_outputs(), labels)
    assert loss[0, 0].item() == pytest.approx(-math.log(0.76), rel=1e-5)
    assert loss[0, 1].item() == pytest.approx(-(math.log(0.46) + math.log(0.61)) / 2, rel=1e-5)


def test_no_double_softmax_and_clamp():
    # a rater who is certain and right costs ~0; one who gets probability 0 costs -log(eps), finite
    cm = torch.eye(2)[None, None, ..., None]
    out = {"cm": cm, "rater_probs": torch.tensor([1.0, 0.0])[None, None, :, None]}
    assert CMNetLoss(trace_weight=0.0)(out, torch.tensor([[[0]]])).item() == pytest.approx(0.0, abs=1e-6)
    assert CMNetLoss(trace_weight=0.0, eps=1e-7)(out, torch.tensor([[[1]]])).item() == pytest.approx(-math.log(1e-7))


def test_shape_and_value_errors():
    loss_fn = CMNetLoss()
    with pytest.raises(ValueError, match="rater_labels must be"):
        loss_fn(_outputs(), LABELS[:, :1])  # 1 rater given, the network has 2
    with pytest.raises(ValueError, match="rater_labels must be in"):
        loss_fn(_outputs(), torch.tensor([[[0, 2], [1, 1]]]))
    with pytest.raises(ValueError, match="rater_labels must be in"):
        loss_fn(_outputs(), torch.tensor([[[0, -2], [1, 1]]]))
    with pytest.raises(ValueError, match="integer"):
        loss_fn(_outputs(), LABELS.float() + 0.5)
    torch.testing.assert_close(loss_fn(_outputs(), LABELS.float()), loss_fn(_outputs(), LABELS))


def test_warmup_maximises_the_trace():
    torch.manual_seed(0)
    small = {"channels": (4, 8), "strides": (2,), "num_res_units": 0, "feature_channels": 4, "head_channels": 4}
    net = CMNet(2, 1, 2, 2, cm_type="pixel", identity_init=0.0, **small)
    image, labels = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 2, 8, 8))
    loss_fn = CMNetLoss.warmup()
    assert loss_fn.trace_weight == -1.0 and loss_fn.nll_weight == 0.0
    optimizer = torch.optim.Adam(net.annotator.parameters(), lr=0.05)
    traces = []
    for _ in range(10):
        optimizer.zero_grad()
        loss_fn(net.forward_all(image), labels).backward()
        optimizer.step()
        traces.append(loss_fn.last_trace.item())
    assert traces[-1] > traces[0] + 0.2


def test_recovers_a_flipping_rater():
    """Perfect rater 0 on every image, rater 1 always says the other class on half of them.

    (With both raters on every image the problem is symmetric, consensus and flipped consensus explain
    the labels equally well and the mean confusion matrix is not diagonally dominant, so nothing
    identifies the truth; the images without the flipping rater break the tie.)
    """
    torch.manual_seed(0)
    n, size = 8, 16
    truth = torch.zeros(n, size, size, dtype=torch.long)
    for b in range(n):
        r0, c0 = torch.randint(0, 8, (2,)).tolist()
        h, w = torch.randint(4, 9, (2,)).tolist()
        truth[b, r0 : r0 + h, c0 : c0 + w] = 1
    image = (2.0 * truth - 1.0)[:, None] + 0.3 * torch.randn(n, 1, size, size)
    labels = torch.stack([truth, 1 - truth], 1)
    labels[n // 2 :, 1] = -1
    net = CMNet(2, 1, 2, 2, cm_type="global", channels=(4, 8), strides=(2,), num_res_units=0, feature_channels=4)
    loss_fn = CMNetLoss(trace_weight=0.01)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        loss_fn(net.forward_all(image), labels).backward()
        optimizer.step()
    cm = net.annotator.head.matrices().detach()
    assert cm[1, 1, 0] > 0.9 and cm[1, 0, 1] > 0.9  # the flipping rater's off-diagonal
    assert cm[0, 0, 0] > 0.9 and cm[0, 1, 1] > 0.9  # the perfect rater stays near identity
    with torch.no_grad():
        accuracy = (net.eval()(image).argmax(1) == truth).float().mean()
    assert accuracy > 0.95


def test_class_balanced_likelihood_by_hand():
    """Labels: 3 of class 1, 1 of class 0 -> balanced weights 4/(2·1) = 2 for class 0 and 4/(2·3) = 2/3 for class 1."""
    w0, w1 = 2.0, 2.0 / 3.0
    nll = {(0, 0): -math.log(0.76), (0, 1): -math.log(0.59), (1, 0): -math.log(0.46), (1, 1): -math.log(0.61)}
    labels = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 1}
    weight = {k: w0 if labels[k] == 0 else w1 for k in labels}
    pair = [sum(weight[r, i] * nll[r, i] for i in (0, 1)) / sum(weight[r, i] for i in (0, 1)) for r in (0, 1)]
    loss = CMNetLoss(trace_weight=0.0, class_weights="balanced")(_outputs(), LABELS)
    assert loss.item() == pytest.approx(sum(pair) / 2, rel=1e-5)
    fixed = CMNetLoss(trace_weight=0.0, class_weights=[w0, w1])(_outputs(), LABELS)
    assert fixed.item() == pytest.approx(loss.item(), rel=1e-5)
    plain = CMNetLoss(trace_weight=0.0)(_outputs(), LABELS)
    assert plain.item() == pytest.approx(sum(nll.values()) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="class_weights"):
        CMNetLoss(class_weights="inverse")
    with pytest.raises(ValueError, match="3 entries"):
        CMNetLoss(class_weights=[1.0, 2.0, 3.0])(_outputs(), LABELS)


def test_class_balance_is_an_exponent_on_the_weights_from_balanced_to_the_papers_likelihood():
    """class_balance 1: the balanced weights (2, 2/3); 0.5: their square roots; 0: every pixel the same."""
    nll = {(0, 0): -math.log(0.76), (0, 1): -math.log(0.59), (1, 0): -math.log(0.46), (1, 1): -math.log(0.61)}
    labels = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 1}

    def by_hand(w0, w1):
        weight = {k: w0 if labels[k] == 0 else w1 for k in labels}
        return sum(sum(weight[r, i] * nll[r, i] for i in (0, 1)) / sum(weight[r, i] for i in (0, 1)) for r in (0, 1)) / 2

    loss = CMNetLoss(trace_weight=0.0, class_weights="balanced")
    for balance, (w0, w1) in [(1.0, (2.0, 2.0 / 3.0)), (0.5, (2.0**0.5, (2.0 / 3.0) ** 0.5)), (0.0, (1.0, 1.0))]:
        loss.class_balance = balance
        assert loss(_outputs(), LABELS).item() == pytest.approx(by_hand(w0, w1), rel=1e-5), balance
    assert by_hand(2.0, 2.0 / 3.0) != pytest.approx(by_hand(1.0, 1.0), rel=1e-3)  # the cases differ
    loss.class_balance = 0.0
    plain = CMNetLoss(trace_weight=0.0)(_outputs(), LABELS)
    assert loss(_outputs(), LABELS).item() == pytest.approx(plain.item(), rel=1e-6)
    loss.class_balance = 1.5
    with pytest.raises(ValueError, match="class_balance"):
        loss(_outputs(), LABELS)


def test_loss_from_the_trace_equals_the_loss_from_the_matrices():
    torch.manual_seed(0)
    net = CMNet(2, 1, 3, 2, channels=(4, 8), strides=(2,), num_res_units=0, head_level=1, identity_init=0.0)
    x = torch.randn(2, 1, 8, 8)
    labels = torch.randint(0, 3, (2, 2, 8, 8))
    labels[1, 0] = -1
    loss = CMNetLoss(trace_weight=0.3, class_weights="balanced")
    full, lean = loss(net.forward_all(x), labels), loss(net.forward_train(x), labels)
    torch.testing.assert_close(lean, full)
    with pytest.raises(ValueError, match="cm_trace must be"):
        loss({"rater_probs": net.forward_train(x)["rater_probs"], "cm_trace": torch.zeros(2, 2, 4, 4)}, labels)
