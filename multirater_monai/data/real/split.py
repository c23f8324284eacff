"""Deterministic, seeded training / validation / test splits of groups (patients, subjects)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from multirater_monai.data.datalist import SPLITS

__all__ = ["SPLITS", "DEFAULT_FRACTIONS", "split_groups"]

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
"""Default (training, validation, test) shares of the groups."""

# Stream tag of the split's seed sequence (rater streams use tag 2, see ``rater_rng``).
_SPLIT_STREAM = 7


def _counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) group counts: rounded shares; a non-zero share gets at least one group while
    training keeps at least one."""
    total = float(sum(fractions))
    shares = [f / total for f in fractions]
    val = int(round(shares[1] * n))
    test = int(round(shares[2] * n))
    if shares[1] > 0 and val == 0 and n - test >= 2:
        val = 1
    if shares[2] > 0 and test == 0 and n - val >= 2:
        test = 1
    while val + test >= n and (val > 0 or test > 0):  # keep a training group
        if test >= val and test > 0:
            test -= 1
        else:
            val -= 1
    return n - val - test, val, test


def split_groups(
    groups: Iterable[str], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0, attempt: int = 0
) -> dict[str, str]:
    """Assign every group to a split, deterministically from ``seed``.

    The unique groups are sorted, permuted by a generator seeded with ``seed``, and cut into
    training / validation / test by ``fractions`` (rounded; a non-zero share gets at least one group
    when there are enough groups, training always keeps one). The result depends only on the set of
    groups, the fractions and the seed.

    Args:
        groups: group ids (duplicates allowed).
        fractions: (training, validation, test) shares, not all zero; normalised to sum to 1.
        seed: non-negative seed.
        attempt: another permutation of the same seed (0: the first); used to find a split meeting
            constraints (every rater in every split) deterministically.

    Returns:
        group -> ``"training"`` | ``"validation"`` | ``"test"``.
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative shares (training, validation, test), got {fractions}.")
    if fractions[0] <= 0:
        raise ValueError(f"the training share must be positive, got {fractions}.")
    unique = sorted(set(groups))
    if not unique:
        return {}
    key = [int(seed), _SPLIT_STREAM] + ([int(attempt)] if attempt else [])
    order = np.random.default_rng(key).permutation(len(unique))
    n_train, n_val, _ = _counts(len(unique), fractions)
    out = {}
    for rank, index in enumerate(order):
        split = SPLITS[0] if rank < n_train else SPLITS[1] if rank < n_train + n_val else SPLITS[2]
        out[unique[int(index)]] = split
    return out
