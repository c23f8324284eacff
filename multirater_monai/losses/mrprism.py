"""MrPrism losses (paper ``004_…``, eq. 8-13, Algorithm 1): recurrence loss, shuffle loss, multi-head loss.

Notation: rater labels ``z^m`` one-hot (B, R, L, *S), DivP's rater probabilities ``z̃^m = softmax(rater
logits)`` and confidences ``w^m = log z̃^m``, ConP's calibrated mask ``ỹ_i`` at recurrence ``i``.

**Fusion** ``z̃ ⊙ z`` (eq. 4, 5, 11, 12). Proposition 1 makes the confidence of rater ``m`` at a pixel the
log-probability of its label under DivP, ``w^m = log P(z^m | y)``. Read literally, eq. 4 puts these
non-positive numbers into a softmax over classes, ``softmax_k(Σ_m w^m_k z^m_k + p_u)``: every vote then
*lowers* its class, and a unanimous, perfectly predicted vote gives a uniform mask. We take the softmax over
the raters instead: the fused mask is the labels' average weighted by ``softmax_m(w^m) ∝ P(z^m | y)``,

    y_k = Σ_m q^m z^m_k / Σ_m q^m,    q^m = Σ_k z̃^m_k z^m_k   (= exp w^m at rater m's label),

a probability map, the rater mean when all confidences are equal, and what the authors' code computes
(a confidence-weighted average of the rater masks, ``bundles/mrprism/docs/README.md``). Only the raters who
labelled a pixel take part (missing raters and -1 pixels are masked, never read as a class).

- ``y^fuse_i`` fuses the real labels with DivP's confidences; ``y^fuse_0`` uses ``w_0`` (eq. 15).
- **Recurrence loss** (Algorithm 1, line 16, which the authors' code follows; eq. 8 writes ``y^self``):
  ``L_rec^i = (1 - SSIM(ỹ_i, y^fuse_{i-1})) + (1 - SSIM(y^fuse_i, ỹ_i))``, MONAI's ``SSIMLoss`` on
  probabilities (its value, computed with a separable window: :class:`~multirater_monai.losses.ssim.SeparableSSIMLoss`); each term's target is detached, so ConP learns from the first and DivP from the second.
- **Shuffle loss** (eq. 10-12): confidences permuted between raters (``z̃^{π(m)}``) fuse both the real
  labels (``y^fuse↔``, the detached target) and DivP's own thresholded predictions ``T(z̃^m)`` (``y^self↔``);
  cross-entropy between them, ``shuffles`` permutations per recurrence. ``T`` is the arg-max (the 0.5
  threshold of two classes) with a straight-through gradient, so the loss reaches each head's prediction.
- **Multi-head loss** (eq. 9, the paper's ablation): cross-entropy of each head against its rater's label.

Total (eq. 13): ``Σ_i L_rec^i + ζ L_sff^i + μ L_MH^i`` over the recurrences.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

from multirater_monai.constants import LABEL
from multirater_monai.losses.ssim import SeparableSSIMLoss

__all__ = ["MrPrismLoss", "confidence_fusion", "label_fusion", "rater_one_hot", "shuffle_cross_entropy"]


def rater_one_hot(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R, *S) labels with -1 for missing -> one-hot (B, R, L, *S) float (zero where missing), valid (B, R, *S)."""
    labels = convert_to_tensor(labels, track_meta=False).long()
    valid = labels >= 0
    one_hot = F.one_hot(labels.clamp(min=0), num_classes).movedim(-1, 2).to(torch.float32)
    return one_hot * valid.unsqueeze(2), valid


def label_fusion(probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """:func:`confidence_fusion` of hard labels, each weighted by the probability its rater's map gives it.

    Equal to ``confidence_fusion((probs * z).sum(2), z, valid)`` with ``z`` the one-hot labels, by a gather
    and a scatter instead of products over the class axis (the fusion of real labels runs ``1 + shuffles``
    times per step).

    Args:
        probs: (B, R, L, *S) per-rater probabilities (or confidences ``exp w``).
        labels: (B, R, *S) integer labels, -1 where missing.
        valid: (B, R, *S) bool, ``labels >= 0``.

    Returns:
        (B, L, *S), zero where no rater is valid.
    """
    index = labels.clamp_min(0)
    q = probs.gather(2, index.unsqueeze(2)).squeeze(2) * valid.to(probs.dtype)
    fused = q.new_zeros(probs.shape[0], probs.shape[2], *probs.shape[3:]).scatter_add(1, index, q)
    return fused / q.sum(1, keepdim=True).clamp_min(eps)


def confidence_fusion(weights: torch.Tensor, votes: torch.Tensor, valid: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Confidence-weighted average of rater votes over the raters valid at each pixel.

    Args:
        weights: (B, R, *S) non-negative confidences ``q^m``.
        votes: (B, R, L, *S) one-hot or probability votes.
        valid: (B, R, *S) bool, the raters who labelled each pixel.

    Returns:
        (B, L, *S): ``Σ_m q^m v^m / Σ_m q^m`` over valid raters (zero where no rater is valid).
    """
    w = weights * valid.to(weights.dtype)
    return (w.unsqueeze(2) * votes).sum(1) / w.sum(1, keepdim=True).clamp_min(eps)


_FUSION_EPS = 1e-6  # confidence_fusion's floor of the summed weights
_LOG_FLOOR = 1e-6  # the floor of the fused probability inside the cross-entropy's log


def _reorder_raters(x: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``x[:, order]`` by concatenating slices (twice as fast on CPU as advanced indexing of a large tensor)."""
    return torch.cat([x[:, i : i + 1] for i in order], dim=1)


class _ShuffleCrossEntropy(torch.autograd.Function):
    """Shuffle loss (eq. 10-12) with its gradient written out: one autograd node instead of some forty.

    Forward: ``z`` (N, R, L, *S) rater probabilities, ``labels`` (N, R, *S) (-1 where missing), ``valid``
    (N, R, *S) bool, ``perms`` (P, R) rater permutations -> the scalar mean over permutations of the
    cross-entropy ``-Σ_k y^fuse↔_k log y^self↔_k`` averaged over pixels some rater labelled.

    The value and gradient are those of the autograd graph of the literal form, ``T(z̃)`` an arg-max with a
    straight-through gradient (``tests/test_mrprism.py`` compares them): per pixel, with ``s^m = z̃^{π(m)}``,
    ``a_m`` rater ``m``'s arg-max class, ``q_m = v_m s^m_{a_m}``, ``Q = Σ_m q_m``,
    ``y_k = Σ_{m: a_m = k} q_m / Q`` (``y^self↔``) and ``g = ∂ℓ/∂y``,

        ∂ℓ/∂z̃^j_k = q_j g_k / Q + c_j s^j_k + c_{π⁻¹(j)} [k = a_{π⁻¹(j)}],   c_m = v_m (g_{a_m} - Σ_k g_k y_k) / Q.

    The target ``y^fuse↔`` (the real labels fused with the permuted confidences) takes no gradient. Every
    permutation works on (N, R, *S) gathers of ``z̃`` rather than permuted copies of it.
    """

    @staticmethod
    def forward(ctx, z, labels, valid, perms):
        index = z.max(2).indices  # each rater's arg-max class (the first of ties): the threshold T
        weight = valid.to(z.dtype)
        labelled = valid.any(1).to(z.dtype)
        count = labelled.sum().clamp_min(1.0)
        label_index = labels.clamp_min(0)
        orders = [[int(i) for i in perm] for perm in perms]
        saved, total = [], z.new_zeros(())
        for order in orders:
            inverse = sorted(range(len(order)), key=order.__getitem__)
            # z̃^{π(m)} at rater m's label and at rater m's arg-max: gather for rater π⁻¹(j), then reorder j = π(m)
            with torch.no_grad():
                at_own = _reorder_raters(z.gather(2, _reorder_raters(label_index, inverse).unsqueeze(2)).squeeze(2), order)
                qf = at_own * weight
                target = qf.new_zeros(z.shape[0], *z.shape[2:]).scatter_add(1, label_index, qf)
                target = target / qf.sum(1, keepdim=True).clamp_min(_FUSION_EPS)  # y^fuse↔
            q = _reorder_raters(z.gather(2, _reorder_raters(index, inverse).unsqueeze(2)).squeeze(2), order) * weight
            mass = q.sum(1)
            fused = q.new_zeros(target.shape).scatter_add(1, index, q) / mass.clamp_min(_FUSION_EPS).unsqueeze(1)
            ce = -(target * torch.log(fused.clamp_min(_LOG_FLOOR))).sum(1)
            total = total + (ce * labelled).sum() / count
            saved += [target, q, mass, fused]
        ctx.orders = orders
        ctx.save_for_backward(z, index, weight, labelled, count, *saved)
        return total / len(orders)

    @staticmethod
    def backward(ctx, grad_output):
        z, index, weight, labelled, count, *saved = ctx.saved_tensors
        orders = ctx.orders
        scale = (grad_output * labelled / (count * len(orders))).unsqueeze(1)  # (N, 1, *S)
        grad = torch.zeros_like(z)
        for p, order in enumerate(orders):
            target, q, mass, fused = saved[4 * p : 4 * p + 4]
            inverse = sorted(range(len(order)), key=order.__getitem__)
            g = -target / fused.clamp_min(_LOG_FLOOR) * (fused >= _LOG_FLOOR).to(z.dtype) * scale  # ∂ℓ/∂y
            denominator = mass.clamp_min(_FUSION_EPS).unsqueeze(1)
            through_mass = (g * fused).sum(1, keepdim=True) * (mass >= _FUSION_EPS).unsqueeze(1).to(z.dtype)
            c = (g.gather(1, index) - through_mass) / denominator * weight  # ∂ℓ/∂q_m, (N, R, *S)
            grad += (q / denominator).unsqueeze(2) * g.unsqueeze(1)  # through the thresholded votes
            grad += c.unsqueeze(2) * _reorder_raters(z, order)  # through the thresholded predictions inside q
            grad.scatter_add_(2, _reorder_raters(index, inverse).unsqueeze(2), _reorder_raters(c, inverse).unsqueeze(2))
        return grad, None, None, None


def shuffle_cross_entropy(z: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """The shuffle loss (eq. 10-12) for rater permutations ``perms``; see :class:`_ShuffleCrossEntropy`.

    Shapes: z (N, R, L, *S) probabilities, labels (N, R, *S) (-1 where missing), valid (N, R, *S) bool,
    perms (P, R) -> scalar.
    """
    return _ShuffleCrossEntropy.apply(z, labels.long(), valid, perms)


class MrPrismLoss(torch.nn.Module):
    """The MrPrism training loss on the outputs of :meth:`multirater_monai.networks.MrPrism.forward_all`.

    Called ``loss(outputs, batch)`` with ``outputs["recurrence_logits"]`` (B, T, L, *S),
    ``outputs["rater_logits"]`` (B, T, R, L, *S), ``outputs["initial_confidence"]`` (B, R, L, *S) and
    ``batch["label"]`` (B, R, *S) rater labels (-1 where missing). Returns the scalar total, the sum over the
    ``T`` passes; ``last_terms`` holds the mean of each term over the passes (``ssim_conp``, ``ssim_divp``,
    ``shuffle``, ``multi_head``), for logging. The passes are computed together (they join the batch axis).

    Args:
        spatial_dims: 2 or 3 (SSIM's window).
        num_classes: ``L``.
        shuffle_weight: ``ζ`` (paper: 0.3).
        shuffles: permutations per recurrence (paper: 3).
        multi_head_weight: ``μ`` of the multi-head loss (eq. 9); 0, the paper's final choice, leaves it out.
        ssim_window: SSIM window size (MONAI's default 11); must not exceed the patch.
        label_key: the batch entry holding the rater labels.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_classes: int,
        shuffle_weight: float = 0.3,
        shuffles: int = 3,
        multi_head_weight: float = 0.0,
        ssim_window: int = 11,
        label_key: str = LABEL,
    ) -> None:
        super().__init__()
        if shuffles < 0 or shuffle_weight < 0 or multi_head_weight < 0:
            raise ValueError("shuffles, shuffle_weight and multi_head_weight must be non-negative.")
        self.num_classes = int(num_classes)
        self.shuffle_weight = float(shuffle_weight)
        self.shuffles = int(shuffles)
        self.multi_head_weight = float(multi_head_weight)
        self.label_key = label_key
        self.ssim = SeparableSSIMLoss(spatial_dims, data_range=1.0, win_size=ssim_window)
        self.ssim_window = int(ssim_window)
        self.last_terms: dict[str, float] = {}

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        seg_logits = outputs["recurrence_logits"]  # (B, T, L, *S)
        rater_logits = outputs["rater_logits"]  # (B, T, R, L, *S)
        b, t = seg_logits.shape[:2]
        labels = convert_to_tensor(batch[self.label_key], track_meta=False).long()
        if min(labels.shape[2:]) < self.ssim_window:
            raise ValueError(f"MrPrism's SSIM window {self.ssim_window} exceeds the patch {tuple(labels.shape[2:])}.")
        valid = labels >= 0
        # every pass at once: passes join the batch axis, the labels repeat for each pass
        lt = labels.unsqueeze(1).expand(-1, t, *labels.shape[1:]).flatten(0, 1)  # (B·T, R, *S)
        vt = valid.unsqueeze(1).expand(-1, t, *valid.shape[1:]).flatten(0, 1)
        p = torch.softmax(seg_logits, dim=2)
        zt = torch.softmax(rater_logits, dim=3).flatten(0, 1)
        fuse = label_fusion(zt, lt, vt).unflatten(0, (b, t))  # y^fuse_i, (B, T, L, *S)
        first = label_fusion(outputs["initial_confidence"].exp(), labels, valid)  # y^fuse_{-1}, from w_0
        previous = torch.cat([first.unsqueeze(1), fuse[:, :-1]], dim=1).detach()
        # where no rater labelled a pixel (padding, ignore regions) there is nothing to fuse: the targets there are
        # ConP's own mask, so that those pixels pull neither ConP nor DivP
        unlabelled = ~valid.any(1)[:, None, None]  # (B, 1, 1, *S)
        if bool(unlabelled.any()):
            fuse = torch.where(unlabelled, p.detach(), fuse)
            previous = torch.where(unlabelled, p.detach(), previous)
        conp = self.ssim(p.flatten(0, 1), previous.flatten(0, 1))  # ConP follows the last fusion
        divp = self.ssim(fuse.flatten(0, 1), p.detach().flatten(0, 1))  # DivP's fusion follows ConP
        total = t * (conp + divp)  # eq. 13 sums the passes
        terms = {"ssim_conp": conp, "ssim_divp": divp}
        if self.shuffle_weight > 0 and self.shuffles > 0:
            shuffle = self.shuffle_loss(zt, lt, vt)
            total = total + t * self.shuffle_weight * shuffle
            terms["shuffle"] = shuffle
        if self.multi_head_weight > 0:
            mh = F.cross_entropy(rater_logits.flatten(0, 2), lt.flatten(0, 1), ignore_index=-1)
            total = total + t * self.multi_head_weight * mh
            terms["multi_head"] = mh
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return total

    def shuffle_loss(self, zt: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Eq. 10-12 averaged over ``shuffles`` random permutations of the raters (:func:`shuffle_cross_entropy`).

        Shapes: zt (B, R, L, *S) DivP probabilities, labels (B, R, *S) (-1 where missing), valid (B, R, *S).
        """
        perms = torch.stack([torch.randperm(zt.shape[1], device=zt.device) for _ in range(self.shuffles)])
        return shuffle_cross_entropy(zt, labels, valid, perms)
