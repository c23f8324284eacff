"""Network adapters: call a network's other method as ``forward``, or stack its outputs into one tensor.

A network's ``forward(image)`` returns its consensus logits only (``docs/design.md``, "Networks");
what training and explanations need beyond that comes from an explicit method (``forward_all``)
returning a dict. :class:`AllOutputs` makes that method the ``forward`` of a module, which DDP needs
(it synchronises gradients only for calls of ``forward``). :class:`StackedOutputs` concatenates chosen
entries of the dict along the channel axis, so that a sliding-window inferer can stitch all of them
(e.g. every recurrence of a recurrent method, or the confusion matrices of CM-Net) from one forward;
its :meth:`~StackedOutputs.split` turns the stitched tensor back into the named entries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["AllOutputs", "StackedOutputs", "call_network", "unwrap_network"]


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside DDP / ``DataParallel`` and :class:`AllOutputs` / :class:`StackedOutputs` wrappers."""
    while True:
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            network = network.module
        elif isinstance(network, (AllOutputs, StackedOutputs)):
            network = network.network
        else:
            return network


def call_network(network: torch.nn.Module, method: str | None, *inputs: Any) -> Any:
    """``network.<method>(*inputs)`` (``network(*inputs)`` for None or ``"forward"``).

    A network that is an :class:`AllOutputs` adapter, possibly inside DDP, is called through its ``forward``
    with the method named, so that DDP sees the call whatever the method.
    """
    name = method or "forward"
    inner = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    if isinstance(inner, AllOutputs):
        return network(*inputs, method=name)
    if name == "forward":
        return network(*inputs)
    fn = getattr(network, name, None)
    if fn is None:
        raise TypeError(f"{type(network).__name__} has no method '{name}'.")
    return fn(*inputs)


class AllOutputs(torch.nn.Module):
    """Adapter whose ``forward`` calls one of the wrapped network's methods (``forward_all`` by default).

    ``adapter(x)`` is ``network.<method>(x)``; ``adapter(x, method="forward")`` calls another method. Wrap it
    in ``DistributedDataParallel`` for multi-GPU training: DDP synchronises gradients only for calls of
    ``forward``, and the training steps call every method through it (:func:`call_network`). Its state
    dict is the wrapped network's, prefixed ``network.``.

    Args:
        network: the network.
        method: the method called when none is named.
    """

    def __init__(self, network: torch.nn.Module, method: str = "forward_all") -> None:
        super().__init__()
        if method != "forward" and not callable(getattr(network, method, None)):
            raise TypeError(f"{type(network).__name__} has no method '{method}'.")
        self.network = network
        self.method = method

    def forward(self, *args: Any, method: str | None = None, **kwargs: Any) -> Any:
        name = method or self.method
        if name == "forward":
            return self.network(*args, **kwargs)
        fn = getattr(self.network, name, None)
        if fn is None:
            raise TypeError(f"{type(self.network).__name__} has no method '{name}'.")
        return fn(*args, **kwargs)


class StackedOutputs(torch.nn.Module):
    """Adapter whose ``forward`` concatenates chosen outputs of ``network.<method>`` along channels.

    Each entry ``keys[k]`` of the method's dict, of shape (B, *E_k, *S) with ``spatial_dims`` trailing
    spatial axes, is flattened to (B, prod(E_k), *S) and the results concatenated in the order of
    ``keys``: (B, sum_k prod(E_k), *S). A sliding-window inferer averages overlapping windows of this
    tensor, which keeps probabilities and column-stochastic matrices normalised (averages of normalised
    ones). :meth:`split` undoes the concatenation (views, no copy); ``SplitOutputsd`` applies it in a
    post-processing chain.

    Args:
        network: the network.
        keys: the entries to stack, in order; the first is usually the consensus logits.
        spatial_dims: 2 or 3.
        method: the method returning the dict.
    """

    def __init__(
        self, network: torch.nn.Module, keys: Sequence[str], spatial_dims: int, method: str = "forward_all"
    ) -> None:
        super().__init__()
        if not callable(getattr(network, method, None)):
            raise TypeError(f"{type(network).__name__} has no method '{method}'.")
        if not keys:
            raise ValueError("StackedOutputs needs at least one key.")
        self.network = network
        self.keys = list(keys)
        self.spatial_dims = int(spatial_dims)
        self.method = method
        self.entry_shapes: dict[str, tuple[int, ...]] = {}

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        outputs = getattr(self.network, self.method)(*args, **kwargs)
        if not isinstance(outputs, Mapping):
            raise TypeError(f"{type(self.network).__name__}.{self.method} must return a dict, got {type(outputs).__name__}.")
        missing = [k for k in self.keys if k not in outputs]
        if missing:
            raise KeyError(f"{type(self.network).__name__}.{self.method} has no outputs {missing} (has {sorted(outputs)}).")
        parts = []
        for key in self.keys:
            value = outputs[key]
            self.entry_shapes[key] = tuple(value.shape[1 : value.ndim - self.spatial_dims])
            parts.append(value.reshape(value.shape[0], -1, *value.shape[value.ndim - self.spatial_dims :]))
        return torch.cat(parts, dim=1)

    def split(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, *S) stacked maps -> ``{key: (B, *E_k, *S)}`` (shapes recorded by the last ``forward``)."""
        if not self.entry_shapes:
            raise RuntimeError("StackedOutputs.split needs one forward first (to know the entries' shapes).")
        sizes = [math.prod(self.entry_shapes[k]) for k in self.keys]
        if maps.shape[1] != sum(sizes):
            raise ValueError(f"maps have {maps.shape[1]} channels, the stacked outputs {self.keys} have {sum(sizes)}.")
        out, start = {}, 0
        for key, size in zip(self.keys, sizes):
            out[key] = maps[:, start : start + size].unflatten(1, self.entry_shapes[key] or (1,))
            if not self.entry_shapes[key]:
                out[key] = out[key][:, 0]
            start += size
        return out
