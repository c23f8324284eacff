"""One entry point for every dataset reader, and recognising which dataset a folder holds."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multirater_monai.data.real.core import PrepareError, PrepareReport

__all__ = ["DATASETS", "prepare_dataset", "detect_datasets", "detection_hint"]


def _readers() -> dict[str, Callable[..., PrepareReport]]:
    from multirater_monai.data.real.brats import prepare_brats
    from multirater_monai.data.real.lidc import prepare_lidc
    from multirater_monai.data.real.mslsc import prepare_mslsc
    from multirater_monai.data.real.qubiq import prepare_qubiq

    return {"lidc": prepare_lidc, "brats": prepare_brats, "qubiq": prepare_qubiq, "mslsc": prepare_mslsc}


DATASETS = ("lidc", "brats", "qubiq", "mslsc")
"""The dataset names of :func:`prepare_dataset` and ``multirater prepare``."""

_TITLES = {"lidc": "LIDC-IDRI", "brats": "BraTS", "qubiq": "QUBIQ", "mslsc": "ISBI 2015 MS lesion"}


def prepare_dataset(dataset: str, src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> PrepareReport:
    """Prepare ``dataset`` from the user's copy at ``src`` into ``dst``; the reader's ``options`` as keywords.

    Equivalent to ``multirater prepare <dataset> --src <src> --dst <dst> ...``; see
    :func:`~multirater_monai.data.real.lidc.prepare_lidc`, :func:`~multirater_monai.data.real.brats.prepare_brats`,
    :func:`~multirater_monai.data.real.qubiq.prepare_qubiq` and :func:`~multirater_monai.data.real.mslsc.prepare_mslsc`.

    Returns:
        the :class:`PrepareReport` (also written to ``<dst>/prepare.json``).

    Raises:
        PrepareError: bad input (every problem with its file), nothing usable, or a refused ``dst``.
    """
    readers = _readers()
    if dataset not in readers:
        raise PrepareError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return readers[dataset](src, dst, **options)


def detect_datasets(src: str | os.PathLike) -> list[str]:
    """The datasets whose layout ``src`` looks like (cheap checks of folder and file names)."""
    from multirater_monai.data.real.brats import looks_like_brats
    from multirater_monai.data.real.lidc import looks_like_lidc
    from multirater_monai.data.real.mslsc import looks_like_mslsc
    from multirater_monai.data.real.qubiq import looks_like_qubiq

    checks = {"lidc": looks_like_lidc, "brats": looks_like_brats, "qubiq": looks_like_qubiq, "mslsc": looks_like_mslsc}
    if not Path(src).exists():
        return []
    return [name for name, check in checks.items() if check(src)]


def detection_hint(src: str | os.PathLike, claimed: str) -> str:
    """A sentence to append to a "not found" error when ``src`` looks like another dataset."""
    others = [d for d in detect_datasets(src) if d != claimed]
    if not others:
        return ""
    names = " or ".join(f"{_TITLES[d]} ('multirater prepare {d}')" for d in others)
    return f"; this folder looks like {names}, not {_TITLES[claimed]}"
