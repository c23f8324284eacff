"""ScaleProtoSeg's regularisers: the per-scale diversity loss (stage 1, eq. 3-6) and the grouping's entropy and
off-class L1 terms (stage 2, eq. 8-9). Each is called ``loss(outputs, batch)`` and combines with a
cross-entropy through :class:`~multirater_monai.losses.CombinedLoss`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


__all__ = ["PrototypeDiversityLoss", "GroupEntropyLoss", "OffClassWeightL1"]


def pixel_classes(target: torch.Tensor) -> torch.Tensor:
    """(B, L, *S) one-hot or soft labels -> (B, *S) class indices, -1 where the target is all zeros (unlabelled)."""
    target = target.float()
    classes = target.argmax(dim=1)
    return torch.where(target.sum(dim=1) > 0, classes, torch.full_like(classes, -1))


def _unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside its DDP / adapter wrappers.

    Imported here, not at module level: the engines import this module (``pixel_classes``), so a module-level
    import of ``multirater_monai.engines`` would make importing ``multirater_monai.losses`` first a cycle.
    """
    from multirater_monai.engines.adapters import unwrap_network

    return unwrap_network(network)


class PrototypeDiversityLoss(torch.nn.Module):
    """Eq. 3-6: the mean Jeffrey similarity of a class's prototypes at one scale, over the pixels of that class.

    For each image, each class ``c`` present in it (its target's arg-max) and each scale ``s``, every prototype
    of ``P_{s,c}`` gives a distribution over the pixels of class ``c``: the softmax of its squared distances to
    them (eq. 3, the distances as the paper writes, not negated). Each pair of them scores
    ``exp(-D_J)``, ``D_J(U, V) = (KL(U||V) + KL(V||U)) / 2`` (ProtoSeg's definition); the loss is the mean
    over all pairs of all images, classes and scales. Pixels of class ``c`` count for class ``c``'s prototypes
    (ProtoSeg's code paired label ``k`` with class ``k + 1``'s prototypes: the fixed index, ``METHODS.md``).

    Args:
        num_classes: ``L``.
        num_scales: ``S``.
        prototypes_per_class: ``M``.
        distances_key: the network output (B, S·L·M, *S), prototype ``(s, c, m)`` at ``(s·L + c)·M + m``.
        target_key: the batch's (B, L, *S) one-hot or soft labels (the fused label).
    """

    def __init__(
        self,
        num_classes: int,
        num_scales: int,
        prototypes_per_class: int,
        distances_key: str = "distances",
        target_key: str = "fused_label",
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.num_scales = int(num_scales)
        self.prototypes_per_class = int(prototypes_per_class)
        self.distances_key = distances_key
        self.target_key = target_key
        m = self.prototypes_per_class
        pairs = torch.triu_indices(m, m, offset=1)
        self.register_buffer("first", pairs[0], persistent=False)
        self.register_buffer("second", pairs[1], persistent=False)

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        dist = outputs[self.distances_key].float()
        b = dist.shape[0]
        dist = dist.reshape(b, self.num_scales, self.num_classes, self.prototypes_per_class, -1)  # (B, S, L, M, N)
        classes = pixel_classes(batch[self.target_key]).reshape(b, -1)
        if self.first.numel() == 0:  # one prototype per class and scale: no pair
            return dist.sum() * 0.0
        total, count = dist.new_zeros(()), 0
        for i in range(b):
            for c in torch.unique(classes[i]).tolist():
                if c < 0:
                    continue
                where = classes[i] == c
                if int(where.sum()) < 2:
                    continue
                log_p = torch.log_softmax(dist[i, :, c][..., where], dim=-1)  # (S, M, n)
                u, v = log_p[:, self.first], log_p[:, self.second]  # (S, pairs, n)
                jeffrey = 0.5 * ((u.exp() - v.exp()) * (u - v)).sum(dim=-1)  # KL(u||v) + KL(v||u), halved
                total = total + torch.exp(-jeffrey).sum()
                count += jeffrey.numel()
        if count == 0:
            return dist.sum() * 0.0
        return total / count


class GroupEntropyLoss(torch.nn.Module):
    """Eq. 8: the mean entropy of the groups' weight rows (on the simplex), normalised by ``log(S·M)`` so that it
    lies in [0, 1] whatever the number of prototypes (the authors' code; the paper's sum differs by that constant).

    Called ``loss(outputs, batch)``; reads ``network.group_weights`` (L, G, S·M).
    """

    def __init__(self, network: torch.nn.Module, eps: float = 1e-5) -> None:
        super().__init__()
        self._network = [network]  # not a submodule: the loss holds no parameters of its own
        self.eps = float(eps)

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        w = _unwrapped(self._network[0]).group_weights
        entropy = -(w * torch.log(w + self.eps)).sum(dim=-1) / torch.log(torch.tensor(float(w.shape[-1])))
        return entropy.mean()


class OffClassWeightL1(torch.nn.Module):
    """Eq. 9's last term: the L1 norm of a head's weights from an input (a group, or a prototype) to the classes it
    does not belong to.

    Called ``loss(outputs, batch)``; reads ``network.<head>``: ``group_last_layer`` (L, L·G, stage 2, the paper's) or
    ``last_layer`` (L, P, the authors' optional fine-tuning of ``h_proto`` after the projection).
    """

    def __init__(self, network: torch.nn.Module, head: str = "group_last_layer") -> None:
        super().__init__()
        self._network = [network]
        self.head = head

    def forward(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        net = _unwrapped(self._network[0])
        weight = getattr(net, self.head)
        owner = net.input_classes(self.head).to(weight.device)
        off = owner[None] != torch.arange(weight.shape[0], device=weight.device)[:, None]
        return weight[off].abs().sum()
