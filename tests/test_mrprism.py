"""MrPrism: network shapes and recurrence, gradient separation, fusion, losses, bad input, explanation outputs."""

from __future__ import annotations

import math

import pytest
import torch

from multirater_monai.errors import UserError
from multirater_monai.explain import RaterAgreementd, SaveRecurrenceFigured
from multirater_monai.losses import (
    MrPrismLoss,
    SeparableSSIMLoss,
    confidence_fusion,
    label_fusion,
    rater_one_hot,
    shuffle_cross_entropy,
)
from multirater_monai.networks import MrPrism
from multirater_monai.transforms import RecurrenceOutputsd

SMALL = dict(channels=(8, 16), strides=(2,), num_res_units=1, conp_hidden_size=16, conp_heads=2,
             divp_hidden_size=16, divp_heads=2, divp_blocks=2, divp_head_dim=4)


def _net(dims=2, raters=3, classes=2, **kw):
    args = dict(SMALL, conp_patch_sizes=(2,), divp_patch_size=4)
    args.update(kw)
    return MrPrism(dims, 1, classes, raters, **args)


@pytest.mark.parametrize("dims", [2, 3])
def test_outputs_have_every_recurrence(dims):
    torch.manual_seed(0)
    net = _net(dims, raters=3, classes=3, recurrences=2)
    x = torch.rand(2, 1, *([16] * dims))
    out = net.forward_all(x)
    s = (16,) * dims
    assert out["logits"].shape == (2, 3, *s)
    assert out["recurrence_logits"].shape == (2, 2, 3, *s)
    assert out["rater_logits"].shape == (2, 2, 3, 3, *s)
    assert out["rater_probs"].shape == (2, 3, 3, *s)
    assert torch.allclose(out["rater_probs"].sum(2), torch.ones(1))
    assert torch.equal(out["logits"], out["recurrence_logits"][:, -1])
    assert net.forward_all(x, recurrences=4)["recurrence_logits"].shape[1] == 4


def test_eval_is_deterministic_and_scripts():
    torch.manual_seed(0)
    net = _net().eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        a, b = net(x), net(x)
        scripted = torch.jit.script(net)
        c = scripted(x)
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-5)
    w0 = net.initial_confidence(x)
    assert torch.allclose(w0, torch.full_like(w0, math.log(0.5)))  # equal confidence (a + b) / 2


def test_training_initial_confidence_follows_eq_14():
    torch.manual_seed(0)
    net = _net(raters=4, confidence_noise=0.0).train()
    w0 = net.initial_confidence(torch.zeros(3, 1, 8, 8))
    q = w0.exp()
    assert q.shape == (3, 4, 2, 8, 8)
    per_rater = q[0, :, 0, 0, 0]
    assert torch.all((per_rater >= 0.1) & (per_rater <= 0.9))
    assert torch.allclose(q, per_rater[None, :, None, None, None].expand_as(q))  # one psi per rater, same for the batch
    noisy = _net(raters=4).train().initial_confidence(torch.zeros(3, 1, 8, 8)).exp()
    assert noisy.min() >= 1e-3 - 1e-7 and noisy.max() <= 1.0 and noisy.std() > 0.1


def test_no_recurrence_back_propagates_into_the_one_before_and_divp_not_into_conp():
    torch.manual_seed(0)
    net = _net(recurrences=2).train()
    x = torch.rand(2, 1, 16, 16)
    out = net.forward_all(x)
    out["recurrence_logits"][:, 1].sum().backward()  # ConP of recurrence 1 reads DivP of recurrence 0
    assert all(p.grad is None or not p.grad.any() for p in net.divp.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.encoder.parameters())
    net.zero_grad(set_to_none=True)
    out = net.forward_all(x)
    out["rater_logits"].sum().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is None for p in net.conp.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.divp.parameters())


def test_fusion_is_the_rater_mean_at_equal_confidence_and_skips_missing_raters():
    labels = torch.tensor([[[[1, 1]], [[1, 0]], [[-1, -1]]]])  # (B=1, R=3, 1, 2); rater 2 missing
    z, valid = rater_one_hot(labels, 2)
    assert z.shape == (1, 3, 2, 1, 2) and not z[0, 2].any() and not valid[0, 2].any()
    fused = confidence_fusion(torch.ones(1, 3, 1, 2), z, valid)
    assert torch.allclose(fused[0, 1], torch.tensor([[1.0, 0.5]]))  # mean of raters 0 and 1, rater 2 ignored
    weighted = confidence_fusion(torch.tensor([[[[0.9, 0.9]], [[0.1, 0.1]], [[5.0, 5.0]]]]), z, valid)
    assert torch.allclose(weighted[0, 1], torch.tensor([[1.0, 0.9]]))


def test_fusion_of_a_unanimous_vote_is_certain_unlike_the_literal_eq_4():
    z, valid = rater_one_hot(torch.ones(1, 5, 1, 1, dtype=torch.long), 2)
    q = torch.full((1, 5, 1, 1), 0.9)
    assert torch.allclose(confidence_fusion(q, z, valid)[0, 1], torch.ones(1))
    literal = torch.softmax((torch.log(q).unsqueeze(2) * z).sum(1), dim=1)  # softmax over classes of Σ w z
    assert literal[0, 1] < 0.5  # every vote lowers its class: the reading the bundle does not use


def test_shuffle_loss_is_lowest_when_each_head_predicts_its_rater():
    torch.manual_seed(0)
    labels = (torch.rand(2, 4, 12, 12) > 0.5).long()
    z, valid = rater_one_hot(labels, 2)
    loss = MrPrismLoss(2, 2, ssim_window=5)
    exact = z * 0.98 + 0.01
    wrong = (1 - z) * 0.98 + 0.01
    assert loss.shuffle_loss(exact, labels, valid) < 0.8 * loss.shuffle_loss(wrong, labels, valid)
    zt = torch.softmax(torch.randn(2, 4, 2, 12, 12), 2).requires_grad_(True)
    loss.shuffle_loss(zt, labels, valid).backward()
    assert zt.grad is not None and zt.grad.abs().sum() > 0  # the threshold passes gradients straight through


def test_loss_terms_weights_and_a_missing_rater():
    torch.manual_seed(0)
    net = _net(raters=3, recurrences=2).train()
    x = torch.rand(2, 1, 16, 16)
    labels = (torch.rand(2, 3, 16, 16) > 0.5).long()
    labels[1, 2] = -1
    out = net.forward_all(x)
    full = MrPrismLoss(2, 2, multi_head_weight=1.0, ssim_window=7)
    value = full(out, {"label": labels})
    assert torch.isfinite(value) and set(full.last_terms) == {"ssim_conp", "ssim_divp", "shuffle", "multi_head"}
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    plain = MrPrismLoss(2, 2, shuffle_weight=0.0, ssim_window=7)
    plain(net.forward_all(x), {"label": labels})
    assert set(plain.last_terms) == {"ssim_conp", "ssim_divp"}
    with pytest.raises(ValueError, match="SSIM window"):
        MrPrismLoss(2, 2, ssim_window=21)(out, {"label": labels})


def test_bad_configurations_fail_with_a_clear_error():
    with pytest.raises(UserError, match="at least two raters"):
        _net(raters=1)
    with pytest.raises(UserError, match=r"patch size \[18, 18, 18\] must be divisible by 4"):
        _net(3, spatial_size=(18, 18, 18))
    with pytest.raises(UserError, match="one patch size per decoder level"):
        _net(conp_patch_sizes=(1, 1))
    _net(3, spatial_size=(16, 16, 16))


def test_recurrence_outputs_agreement_and_figure(tmp_path):
    logits = torch.zeros(3, 2, 8, 8)
    logits[2, 1] = 5.0
    d = RecurrenceOutputsd("r", prefix="rec")({"r": logits})
    assert d["rec0_prob"].shape == (1, 8, 8) and torch.allclose(d["rec0_prob"], torch.full((1, 8, 8), 0.5))
    assert torch.equal(d["rec2_pred"][1], torch.ones(8, 8))
    probs = torch.stack([torch.stack([torch.full((8, 8), 0.2), torch.full((8, 8), 0.8)])] * 2)  # (R=2, L=2, 8, 8)
    pred = torch.ones(1, 8, 8)
    agree = RaterAgreementd("p", label_key="y")({"p": probs, "y": pred})["agreement"]
    assert agree.shape == (2, 8, 8) and torch.allclose(agree, torch.full((2, 8, 8), 0.8))
    SaveRecurrenceFigured("r", tmp_path)({"r": logits, "image": torch.rand(1, 8, 8)})
    assert (tmp_path / "case_recurrence.png").stat().st_size > 0


def test_recurrence_loss_follows_algorithm_1():
    """Pass i: 1 - SSIM(ỹ_i, y^fuse_{i-1}) + 1 - SSIM(y^fuse_i, ỹ_i), y^fuse_{-1} from w_0; summed over passes."""
    from monai.losses import SSIMLoss

    torch.manual_seed(0)
    b, t, r, s = 2, 3, 3, 12
    outputs = {
        "recurrence_logits": torch.randn(b, t, 2, s, s),
        "rater_logits": torch.randn(b, t, r, 2, s, s),
        "initial_confidence": torch.log(torch.rand(b, r, 2, s, s).clamp_min(0.1)),
    }
    labels = (torch.rand(b, r, s, s) > 0.5).long()
    labels[0, 1] = -1
    value = MrPrismLoss(2, 2, shuffle_weight=0.0, ssim_window=5)(outputs, {"label": labels})
    ssim = SSIMLoss(2, data_range=1.0, win_size=5)
    z, valid = rater_one_hot(labels, 2)
    target = confidence_fusion((outputs["initial_confidence"].exp() * z).sum(2), z, valid)
    expected = 0.0
    for i in range(t):
        p = torch.softmax(outputs["recurrence_logits"][:, i], 1)
        zt = torch.softmax(outputs["rater_logits"][:, i], 2)
        fuse = confidence_fusion((zt * z).sum(2), z, valid)
        expected = expected + ssim(p, target) + ssim(fuse, p)
        target = fuse
    assert torch.allclose(value, expected, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_separable_ssim_equals_monai_ssim_loss(dims):
    from monai.losses import SSIMLoss

    torch.manual_seed(0)
    size = [13, 15, 17][:dims]  # unequal axes: a pass along the wrong axis changes the value
    x = torch.rand(3, 2, *size, requires_grad=True)
    y = torch.rand(3, 2, *size)
    ours, theirs = SeparableSSIMLoss(dims, win_size=7)(x, y), SSIMLoss(dims, data_range=1.0, win_size=7)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(torch.autograd.grad(ours, x)[0], torch.autograd.grad(theirs, x)[0], atol=1e-7)


def test_pixels_no_rater_labelled_pull_nothing():
    """Padding (-1 for every rater) is not a class: far from labelled pixels the loss gives no gradient."""
    torch.manual_seed(0)
    b, t, r, s = 1, 2, 3, 24
    seg = torch.randn(b, t, 2, s, s, requires_grad=True)
    raters = torch.randn(b, t, r, 2, s, s, requires_grad=True)
    outputs = {"recurrence_logits": seg, "rater_logits": raters, "initial_confidence": torch.full((b, r, 2, s, s), -0.7)}
    labels = (torch.rand(b, r, s, s) > 0.5).long()
    labels[..., 12:] = -1  # the right half is padding
    MrPrismLoss(2, 2, ssim_window=3)(outputs, {"label": labels}).backward()
    assert seg.grad[..., :10].abs().sum() > 0 and raters.grad[..., :10].abs().sum() > 0
    assert seg.grad[..., 16:].abs().max() < 1e-6 and raters.grad[..., 16:].abs().max() < 1e-6


def _literal_shuffle_loss(zt, labels, valid, perms):
    """Eq. 10-12 as an autograd graph: arg-max threshold with a straight-through gradient (the reference)."""
    hard = torch.nn.functional.one_hot(zt.detach().argmax(2), zt.shape[2]).movedim(-1, 2).to(zt.dtype)
    thresholded = hard + zt - zt.detach()
    labelled = valid.any(1).to(zt.dtype)
    z, _ = rater_one_hot(labels, zt.shape[2])
    losses = []
    for perm in perms:
        shuffled = zt[:, perm]
        with torch.no_grad():
            y_fuse = confidence_fusion((shuffled * z).sum(2), z, valid)
        y_self = confidence_fusion((shuffled * thresholded).sum(2), thresholded, valid)
        ce = -(y_fuse * torch.log(y_self.clamp_min(1e-6))).sum(1)
        losses.append((ce * labelled).sum() / labelled.sum().clamp_min(1.0))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("dims,classes", [(2, 2), (3, 2), (2, 3)])
def test_shuffle_cross_entropy_equals_the_literal_graph_value_and_gradient(dims, classes):
    torch.manual_seed(dims + classes)
    size = [6, 5, 4][:dims]
    logits = torch.randn(3, 4, classes, *size)
    logits[:, :, :, 1] = 0.0  # ties: the threshold takes the first class, as argmax does
    logits.requires_grad_(True)
    zt = torch.softmax(logits, 2)
    labels = torch.randint(0, classes, (3, 4, *size))
    labels[0, 1] = -1  # a missing rater
    labels[1, :, 0] = -1  # pixels nobody labelled
    labels[2, :3] = -1  # one rater left on an image
    valid = labels >= 0
    perms = torch.stack([torch.randperm(4) for _ in range(3)])
    ours = shuffle_cross_entropy(zt, labels, valid, perms)
    reference = _literal_shuffle_loss(zt, labels, valid, perms)
    assert torch.allclose(ours, reference, atol=1e-6)
    g_ours = torch.autograd.grad(ours, logits, retain_graph=True)[0]
    g_ref = torch.autograd.grad(reference, logits)[0]
    assert g_ref.abs().max() > 1e-3 and torch.allclose(g_ours, g_ref, atol=1e-6)
    assert torch.equal(g_ours[1, :, :, 0], torch.zeros_like(g_ours[1, :, :, 0]))  # unlabelled pixels: no pull


def test_label_fusion_is_the_confidence_fusion_of_one_hot_labels():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 4, 3, 6, 5, requires_grad=True), 2)
    labels = torch.randint(0, 3, (2, 4, 6, 5))
    labels[0, 1] = -1
    labels[1, :, 0, 0] = -1  # no rater: zero
    z, valid = rater_one_hot(labels, 3)
    expected = confidence_fusion((probs * z).sum(2), z, valid)
    fused = label_fusion(probs, labels, valid)
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.equal(fused[1, :, 0, 0], torch.zeros(3))
    g1 = torch.autograd.grad(fused.square().sum(), probs, retain_graph=True)[0]
    g2 = torch.autograd.grad(expected.square().sum(), probs)[0]
    assert torch.allclose(g1, g2, atol=1e-6)
