"""The vocabulary of dataset preparation: what a reader hands over, what goes wrong, what is reported.

A dataset reader (``lidc``, ``brats``, ``qubiq``, ``mslsc``) turns the user's copy of a dataset into

- a :class:`DatasetSpec`: the facts of the prepared dataset (raters, classes, channels, 2D/3D);
- :class:`SourceCase` objects, one per case found in the source, each able to :meth:`~SourceCase.load`
  itself into :class:`PreparedItem` objects (one per volume in 3D, one per slice or crop in 2D), or to
  raise a :class:`CaseError` naming every bad file of the case and why.

:func:`multirater_monai.data.real.writer.write_prepared` checks and writes them; the outcome is a
:class:`PrepareReport`, or a :class:`PrepareError` carrying the report when nothing was written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from multirater_monai.errors import UserError

__all__ = [
    "CaseIssue",
    "CaseError",
    "PrepareError",
    "PreparedItem",
    "SourceCase",
    "DatasetSpec",
    "PrepareReport",
]

_MAX_SHOWN = 40


@dataclass(frozen=True)
class CaseIssue:
    """One problem found in the source: the case, the file at fault and the reason."""

    case: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.case}: {self.file}: {self.reason}"


class CaseError(Exception):
    """The problems of one case, each as ``(file, reason)``; raised by :meth:`SourceCase.load`."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = [(str(f), str(r)) for f, r in problems]
        super().__init__("; ".join(f"{f}: {r}" for f, r in self.problems))


class PrepareError(UserError, ValueError):
    """A prepare run stopped before writing anything; ``report`` says what was found (if it got that far)."""

    def __init__(self, message: str, report: PrepareReport | None = None):
        self.report = report
        super().__init__(message)


@dataclass
class PreparedItem:
    """One datalist item in memory, ready to be written as NIfTI.

    Attributes:
        name: unique file stem of the item within the dataset (e.g. ``BraTS2021_00000_z070``).
        image: (C, *S) float32 image, channels in the order of :attr:`DatasetSpec.channels`.
        raters: R entries in the order of :attr:`DatasetSpec.raters`: a (*S) integer label map of class
            indices ``0..L-1``, or None where that rater did not annotate the item.
        affine: (4, 4) voxel-to-world affine written with every file of the item (for a 2D item, the
            first two columns are its in-plane axes).
        gt: (*S) integer truth (a dataset's reference), or None.
        info: extra JSON fields of the datalist item (e.g. ``slice``, ``source``).
    """

    name: str
    image: np.ndarray
    raters: list[np.ndarray | None]
    affine: np.ndarray
    gt: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceCase:
    """One case of the source dataset, not read yet.

    Attributes:
        case: the case id, unique in the dataset (folder or key name of the source).
        group: the unit that splits keep together (patient, subject); every item of the case goes to
            the split of its group.
        loader: reads the case: ``() -> list[PreparedItem]``; raises :class:`CaseError`.
        files: the case's main source files (reported when a case is a duplicate).
        split: the split fixed by the source layout (``"training"``, ``"validation"``, ``"test"``), or
            None to let the seeded split decide.
    """

    case: str
    group: str
    loader: Callable[[], list[PreparedItem]]
    files: list[str] = field(default_factory=list)
    split: str | None = None

    def load(self) -> list[PreparedItem]:
        return self.loader()


@dataclass
class DatasetSpec:
    """The facts of a prepared dataset, written to the datalist and the bundle config overlay.

    Attributes:
        dataset: the reader's name (``"lidc"``, ``"brats"``, ``"qubiq"``, ``"mslsc"``).
        name: the datalist's ``name`` (e.g. ``"brats2021_2d"``).
        description: one line on what the datalist holds.
        raters: rater names in their fixed order (the label channels).
        rater_note: what the rater channels mean (e.g. simulated, or "not a fixed radiologist").
        num_classes: ``L`` including background.
        labels: class index (as str) -> class name.
        channels: image channel names (``in_channels = len(channels)``).
        spatial_dims: 2 or 3.
        has_gt: items carry a ``gt`` (truth / reference) used for validation.
        extra: further top-level datalist entries (label conventions, simulation parameters, ...).
        bundle_overrides: further ids of the bundle config overlay (e.g. QUBIQ's soft Dice thresholds).
    """

    dataset: str
    name: str
    description: str
    raters: list[str]
    rater_note: str
    num_classes: int
    labels: dict[str, str]
    channels: list[str]
    spatial_dims: int
    has_gt: bool
    extra: dict[str, Any] = field(default_factory=dict)
    bundle_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return len(self.channels)


@dataclass
class PrepareReport:
    """What a prepare run found and did; printed by the CLI, returned by the Python API.

    Attributes:
        dataset: the reader's name.
        name: the datalist's name.
        src: the source folder or file.
        dst: the output folder.
        source_format: the layout read (e.g. ``"BraTS 2021"``, ``"pickle"``).
        spatial_dims, in_channels, num_classes: of the prepared data.
        channels: image channel names.
        raters: rater names; ``rater_note``: what they mean.
        labels: class names.
        cases_found: cases seen in the source; ``cases_used``: those written.
        items: number of datalist items per split.
        groups: number of split units (patients, subjects) per split.
        problems: every problem found (:class:`CaseIssue`), per case with the file name.
        skipped_cases: the cases left out because of their problems (with ``--skip-bad``).
        written: False when the run stopped before writing anything.
        datalist, bundle_config: the written files (None when nothing was written).
    """

    dataset: str
    name: str
    src: str
    dst: str
    source_format: str = ""
    spatial_dims: int = 0
    in_channels: int = 0
    num_classes: int = 0
    channels: list[str] = field(default_factory=list)
    raters: list[str] = field(default_factory=list)
    rater_note: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    cases_found: int = 0
    cases_used: int = 0
    items: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    problems: list[CaseIssue] = field(default_factory=list)
    skipped_cases: list[str] = field(default_factory=list)
    written: bool = False
    datalist: str | None = None
    bundle_config: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        out = asdict(self)
        out["problems"] = [asdict(p) for p in self.problems]
        return out

    def summary(self) -> str:
        """A human-readable summary: cases, raters, classes, skipped files and why."""
        lines = [
            f"{self.dataset}: {self.source_format or 'dataset'} at {self.src}",
            f"  cases: {self.cases_found} found, {self.cases_used} used, {len(self.skipped_cases)} skipped",
        ]
        if self.items:
            split_text = ", ".join(f"{k} {v} ({self.groups.get(k, 0)} groups)" for k, v in self.items.items())
            lines.append(f"  items ({self.spatial_dims}D): {split_text}")
        if self.channels:
            lines.append(f"  image channels ({len(self.channels)}): {', '.join(self.channels)}")
        if self.raters:
            lines.append(f"  raters ({len(self.raters)}): {', '.join(self.raters)}")
            if self.rater_note:
                lines.append(f"    {self.rater_note}")
        if self.labels:
            lines.append(f"  classes ({self.num_classes}): " + ", ".join(f"{k} {v}" for k, v in self.labels.items()))
        if self.problems:
            verb = "skipped" if self.written else "problems (nothing written)"
            lines.append(f"  {verb}: {len(self.problems)} problem(s) in {len(self._problem_cases())} case(s)")
            for p in self.problems[:_MAX_SHOWN]:
                lines.append(f"    - {p}")
            if len(self.problems) > _MAX_SHOWN:
                lines.append(f"    ... and {len(self.problems) - _MAX_SHOWN} more (see prepare.json)")
        if self.written:
            lines.append(f"  datalist: {self.datalist}")
            lines.append(f"  bundle config overlay: {self.bundle_config}")
        return "\n".join(lines)

    def _problem_cases(self) -> list[str]:
        return sorted({p.case for p in self.problems})
