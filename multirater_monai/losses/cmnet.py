"""CM-Net loss (paper ``001_…``, eq. 4): rater negative log-likelihood + trace of the confusion matrices.

For each image ``b`` and each rater ``r`` who annotated it::

    nll[b, r]   = mean over the rater's labelled pixels of  -log(max((A_r · p)[y_r], eps))
    trace[b, r] = mean over the same pixels of  tr(A_r)          (in [0, L])
    loss[b, r]  = nll_weight * nll[b, r] + trace_weight * trace[b, r]

and ``reduction="mean"`` averages ``loss[b, r]`` over all annotating (image, rater) pairs of the batch.
Eq. (4) sums ``CE + λ·tr`` over the annotating raters of each image and over images, so this is eq. (4)
divided by the number of annotating pairs (and with pixel means instead of pixel sums): ``λ`` (the
``trace_weight``) keeps the paper's meaning, the weight of one rater's mean trace against that rater's
cross-entropy, and the loss scale does not depend on the number of raters. Two deviations from the
authors' code (see ``bundles/cmnet/docs/README.md``): the NLL is taken on the log of the clamped probability ``A_r · p``
(their ``CrossEntropyLoss`` on a probability applies a second softmax), and the trace is averaged
over raters with the NLL, not summed over raters on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.utils import LossReduction

from multirater_monai.constants import LABEL, MISSING_LABEL

__all__ = ["CMNetLoss"]


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` without MONAI metadata."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class CMNetLoss(torch.nn.modules.loss._Loss):
    """Loss of CM-Net on the outputs of :meth:`multirater_monai.networks.CMNet.forward_all`.

    A rater whose label map is entirely ``MISSING_LABEL`` (-1) did not annotate the image and is left
    out of both terms; isolated -1 pixels (ignore regions) are left out of both pixel means.

    The trace term: a positive ``trace_weight`` minimises the trace (the paper's regulariser, which
    makes the matrices explain as much of the disagreement as possible); a negative one maximises it,
    which is the paper's warm-up driving the matrices towards identity, see :meth:`warmup`.

    After each call, ``last_nll`` and ``last_trace`` hold the unweighted mean NLL and mean trace over the
    annotating (image, rater) pairs, detached, for logging.

    Args:
        trace_weight: ``λ``, weight of the mean trace (the paper explores 0.001 to 0.9).
        nll_weight: weight of the rater NLL.
        eps: lower clamp of ``A_r · p`` before the log.
        reduction: ``"mean"`` over annotating (image, rater) pairs, ``"sum"`` over them, or ``"none"``:
            the (B, R) per-pair losses, 0 for raters who did not annotate.
        class_weights: ``None`` (every labelled pixel counts the same, the paper's likelihood), ``"balanced"``
            (each pixel weighted by the inverse frequency of its rater label among the batch's labelled pixels,
            so that each class weighs the same in the NLL: a class-balanced likelihood for rare foregrounds),
            or one weight per class. The NLL of a pair is then the weighted mean over its pixels.
        class_balance: exponent applied to the class weights, in [0, 1]: 1 uses them as given, 0 weighs every
            pixel the same (the paper's likelihood). An attribute that a schedule may change during training
            (:class:`multirater_monai.engines.LinearAttributeSchedule` anneals it from 1 to 0), because any fixed
            weighting shifts the likelihood's optimum: the consensus of a class-balanced NLL over-segments a
            rare class by about the weight ratio.
    """

    def __init__(
        self,
        trace_weight: float = 0.01,
        nll_weight: float = 1.0,
        eps: float = 1e-7,
        reduction: LossReduction | str = LossReduction.MEAN,
        class_weights: str | Sequence[float] | None = None,
        class_balance: float = 1.0,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}.")
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ValueError(f"class_weights must be None, 'balanced' or one weight per class, got {class_weights!r}.")
        self.trace_weight = float(trace_weight)
        self.nll_weight = float(nll_weight)
        self.eps = float(eps)
        self.class_weights = class_weights
        self.class_balance = float(class_balance)
        self.last_nll: torch.Tensor = torch.tensor(float("nan"))
        self.last_trace: torch.Tensor = torch.tensor(float("nan"))

    @classmethod
    def warmup(
        cls,
        trace_weight: float = 1.0,
        nll_weight: float = 0.0,
        eps: float = 1e-7,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> CMNetLoss:
        """The paper's warm-up loss: maximise the trace (weight ``-|trace_weight|``) to make the matrices near identity.

        With the default ``nll_weight=0`` only the annotator network receives gradients (train that
        stage with ``trainable: ["annotator"]``); ``nll_weight=1`` also fits the segmentation network
        to the raters through near-identity matrices during the warm-up.
        """
        return cls(trace_weight=-abs(trace_weight), nll_weight=nll_weight, eps=eps, reduction=reduction)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], rater_labels: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Loss of a batch.

        Args:
            outputs: at least ``"rater_probs"`` (B, R, L, *S) and either ``"cm"`` (B, R, L, L, *S),
                column-stochastic (``CMNet.forward_all``), or ``"cm_trace"`` (B, R, *S), the trace of each
                pixel's matrix (``CMNet.forward_train``, which does not form the matrices at full resolution).
            rater_labels: (B, R, *S) class indices in ``0..L-1``, or -1 (not annotated); integer, or
                float holding integers. Or the batch dict of a training step, whose ``"label"`` they are.

        Returns:
            scalar, or (B, R) for ``reduction="none"``.
        """
        if "rater_probs" not in outputs or ("cm" not in outputs and "cm_trace" not in outputs):
            raise ValueError(f"outputs must contain 'rater_probs' and 'cm' or 'cm_trace', got keys {sorted(outputs)}.")
        if isinstance(rater_labels, Mapping):
            if LABEL not in rater_labels:
                raise KeyError(f"the batch has no '{LABEL}' (rater labels); has {sorted(rater_labels)}.")
            rater_labels = rater_labels[LABEL]
        rater_probs = _plain(outputs["rater_probs"])
        labels = _plain(torch.as_tensor(rater_labels)).to(rater_probs.device)
        if rater_probs.ndim < 4:
            raise ValueError(f"rater_probs must be (B, R, L, *S), got {tuple(rater_probs.shape)}.")
        batch, num_raters, num_classes = rater_probs.shape[:3]
        spatial = tuple(rater_probs.shape[3:])
        if "cm_trace" in outputs:
            trace = _plain(outputs["cm_trace"])
            if tuple(trace.shape) != (batch, num_raters) + spatial:
                raise ValueError(f"cm_trace must be (B, R, *S) = {(batch, num_raters) + spatial}, got {tuple(trace.shape)}.")
        else:
            cm = _plain(outputs["cm"])
            if tuple(cm.shape) != (batch, num_raters, num_classes, num_classes) + spatial:
                raise ValueError(
                    f"cm must be (B, R, L, L, *S) = {(batch, num_raters, num_classes, num_classes) + spatial}, "
                    f"got {tuple(cm.shape)}."
                )
            trace = torch.diagonal(cm, dim1=2, dim2=3).sum(-1)  # (B, R, *S)
        if tuple(labels.shape) != (batch, num_raters) + spatial:
            raise ValueError(
                f"rater_labels must be (B, R, *S) = {(batch, num_raters) + spatial} (R = {num_raters} raters "
                f"of the network), got {tuple(labels.shape)}."
            )
        if labels.is_floating_point():
            if not torch.equal(labels, labels.round()):
                raise ValueError("rater_labels must hold integer class indices.")
        labels = labels.long()
        if labels.numel() and (labels.min() < MISSING_LABEL or labels.max() >= num_classes):
            raise ValueError(
                f"rater_labels must be in 0..{num_classes - 1} or {MISSING_LABEL} (not annotated), "
                f"got values in {int(labels.min())}..{int(labels.max())}."
            )

        valid = labels != MISSING_LABEL  # (B, R, *S)
        picked = rater_probs.gather(2, labels.clamp_min(0).unsqueeze(2)).squeeze(2)  # (B, R, *S)
        nll = -torch.log(picked.clamp_min(self.eps))

        count = valid.flatten(2).sum(-1)  # (B, R)
        annotated = count > 0
        denominator = count.clamp_min(1).to(nll.dtype)
        zero = torch.zeros((), dtype=nll.dtype, device=nll.device)
        if not 0.0 <= self.class_balance <= 1.0:
            raise ValueError(f"class_balance must be in [0, 1], got {self.class_balance}.")
        if self.class_weights is None or self.class_balance == 0.0:
            nll_pair = torch.where(valid, nll, zero).flatten(2).sum(-1) / denominator
        else:
            weight = torch.where(valid, self.pixel_weights(labels, valid, num_classes).to(nll.dtype), zero)
            nll_pair = (weight * nll).flatten(2).sum(-1) / weight.flatten(2).sum(-1).clamp_min(self.eps)
        trace_pair = torch.where(valid, trace, zero).flatten(2).sum(-1) / denominator
        loss_pair = torch.where(annotated, self.nll_weight * nll_pair + self.trace_weight * trace_pair, zero)

        pairs = annotated.sum()
        with torch.no_grad():
            self.last_nll = (nll_pair[annotated].mean() if pairs > 0 else zero).detach()
            self.last_trace = (trace_pair[annotated].mean() if pairs > 0 else zero).detach()

        if self.reduction == LossReduction.NONE.value:
            return loss_pair
        if self.reduction == LossReduction.SUM.value:
            return loss_pair.sum()
        return loss_pair.sum() / pairs.clamp_min(1).to(loss_pair.dtype)

    def pixel_weights(self, labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(B, R, *S) weight of each pixel's rater label: the class weights, or the batch's inverse class frequencies,
        to the power ``class_balance``."""
        if self.class_weights == "balanced":
            counts = torch.bincount(labels[valid], minlength=num_classes).to(torch.float32)
            present = counts > 0
            weights = torch.where(present, counts.sum() / (present.sum() * counts.clamp_min(1)), torch.zeros_like(counts))
        else:
            weights = torch.as_tensor(self.class_weights, dtype=torch.float32)
            if weights.numel() != num_classes:
                raise ValueError(f"class_weights has {weights.numel()} entries, the network has {num_classes} classes.")
        return (weights**self.class_balance).to(labels.device)[labels.clamp_min(0)]
