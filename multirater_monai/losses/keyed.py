"""Losses that read the network's outputs and the batch's targets by name.

A training step calls ``loss_function(outputs, batch)`` with the network's output dict and the batch dict
(``docs/design.md``, "Training engine"). :class:`KeyedLoss` adapts any ``loss(input, target)`` (e.g. MONAI's
``DiceCELoss``) to that call; with ``mask_key`` it is computed on the samples that carry its target only
(semi-supervised batches). :class:`CombinedLoss` is a weighted sum of such terms that remembers each term's
value for logging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["KeyedLoss", "CombinedLoss", "sample_mask"]


def _plain(x: Any) -> Any:
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def sample_mask(mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B,) bool from a (B,) or (B, ...) mask: a sample counts when any of its entries is true (e.g. the
    (B, R) ``rater_mask``: a sample has pixel labels when any rater annotated it)."""
    mask = torch.as_tensor(_plain(mask))
    if mask.ndim == 0 or mask.shape[0] != batch_size:
        raise ValueError(f"a sample mask must be (B, ...) with B = {batch_size}, got {tuple(mask.shape)}.")
    return mask.reshape(batch_size, -1).bool().any(1)


class KeyedLoss(torch.nn.Module):
    """``loss(outputs[pred_key], batch[target_key])`` on the samples whose ``batch[mask_key]`` holds.

    Args:
        loss: any ``loss(input, target)`` returning a scalar (or per-sample values, averaged).
        pred_key: the network output entry (e.g. ``"logits"``).
        target_key: the batch entry (e.g. ``"fused_label"``, ``"class_label"``).
        mask_key: a batch entry (B,) or (B, ...) bool selecting the samples that carry the target (any
            true entry counts, see :func:`sample_mask`); None uses every sample. A batch with no such
            sample gives a zero loss that keeps the graph (its gradients are zero).
    """

    def __init__(
        self, loss: Callable[..., torch.Tensor], pred_key: str = "logits", target_key: str = "label", mask_key: str | None = None
    ) -> None:
        super().__init__()
        self.loss = loss
        self.pred_key = pred_key
        self.target_key = target_key
        self.mask_key = mask_key

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        if self.pred_key not in outputs:
            raise KeyError(f"the network's outputs have no '{self.pred_key}' (has {sorted(outputs)}).")
        if self.target_key not in batch:
            raise KeyError(f"the batch has no '{self.target_key}' (has {sorted(batch)}); check the pre-processing.")
        pred, target = outputs[self.pred_key], _plain(batch[self.target_key])
        if self.mask_key is not None:
            keep = sample_mask(batch[self.mask_key], pred.shape[0]).to(pred.device)
            if not bool(keep.any()):
                return pred.sum() * 0.0
            if not bool(keep.all()):
                pred, target = pred[keep], target[keep]
        value = self.loss(pred, target)
        return value.mean() if value.ndim > 0 else value


class CombinedLoss(torch.nn.Module):
    """Weighted sum of named loss terms, each ``term(outputs, batch)``.

    After each call ``last_terms`` holds every term's value (detached), for logging.

    Args:
        terms: ``{name: loss}``.
        weights: ``{name: weight}``; a term without a weight has weight 1.
    """

    def __init__(self, terms: Mapping[str, Callable[..., torch.Tensor]], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one term.")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"weights given for unknown terms {unknown} (terms: {sorted(terms)}).")
        self.terms = dict(terms)
        for name, term in self.terms.items():
            if isinstance(term, torch.nn.Module):
                self.add_module(f"term_{name}", term)
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        total = None
        self.last_terms = {}
        for name, term in self.terms.items():
            value = term(outputs, batch)
            value = value.mean() if value.ndim > 0 else value
            self.last_terms[name] = value.detach()
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        return total
