"""Write a prepared dataset: NIfTI files, ``datalist.json``, ``bundle_config.json`` and ``prepare.json``.

:func:`write_prepared` reads every case of a source (through the readers' :class:`SourceCase`),
checks it, and writes the good ones into a temporary sibling of the output folder, which is renamed
into place at the end: an interrupted or failed run leaves nothing at the output. Without
``skip_bad``, any problem stops the run before anything is written, with every problem reported.

Output layout (paths in the datalist are relative to it)::

    <dst>/images/<item>.nii.gz | <item>_<channel>.nii.gz   float32, one file per channel when C > 1
    <dst>/labels/<item>_<rater>.nii.gz                      uint8 class indices, one file per rater
    <dst>/gt/<item>.nii.gz                                  uint8 reference (datasets that have one)
    <dst>/datalist.json                                     the project's datalist format
    <dst>/bundle_config.json                                config overlay: any bundle trains on it
    <dst>/prepare.json                                      options and report of the run
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multirater_monai.constants import GT, IMAGE, LABEL
from multirater_monai.data.datalist import DatalistError, dump_datalist, load_multirater_datalist
from multirater_monai.data.real.arrays import fingerprint, write_nifti
from multirater_monai.data.real.core import (
    CaseError,
    CaseIssue,
    DatasetSpec,
    PreparedItem,
    PrepareError,
    PrepareReport,
    SourceCase,
)
from multirater_monai.data.real.split import DEFAULT_FRACTIONS, SPLITS, split_groups

__all__ = [
    "DATALIST_NAME",
    "BUNDLE_CONFIG_NAME",
    "MARKER_NAME",
    "PATCH_CAP",
    "write_prepared",
    "check_destination",
    "bundle_overlay",
    "safe_name",
]

DATALIST_NAME = "datalist.json"
BUNDLE_CONFIG_NAME = "bundle_config.json"
MARKER_NAME = "prepare.json"
MARKER_TOOL = "multirater_monai.data.prepare"
PATCH_CAP = {2: 128, 3: 96}
"""Largest training patch side written to the bundle config overlay, by ``spatial_dims``."""
_PATCH_MULTIPLE = 16
_SPLIT_ATTEMPTS = 100


def safe_name(name: str) -> str:
    """A file-name-safe version of a case / rater / channel name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "x"


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_destination(dst: str | os.PathLike, src: str | os.PathLike | None, dataset: str) -> Path:
    """Validate the output folder before any work; return it as an absolute path.

    Refuses a ``dst`` inside ``src`` (the source is never modified), a ``src`` inside ``dst`` (it would be
    replaced), a file, a non-empty folder that is not a previous output of ``prepare`` for the same
    dataset (``prepare.json`` naming it), and a previous output holding anything that ``prepare`` did not
    write (the files listed in its ``prepare.json``): a prepare run replaces only its own earlier output,
    never a file the user added.

    Raises:
        PrepareError: with the reason.
    """
    out = Path(dst).expanduser().absolute()
    if src is not None:
        source = Path(src).expanduser().absolute()
        if _is_within(out.resolve(), source.resolve()):
            raise PrepareError(
                f"the output folder {out} is inside the source {source}: choose one outside it "
                "(prepare never writes into the source)"
            )
        if _is_within(source.resolve(), out.resolve()):
            raise PrepareError(f"the source {source} is inside the output folder {out}: choose another output folder")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"the output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = _read_marker(out)
        if marker is None:
            raise PrepareError(
                f"the output folder {out} is not empty and is not a previous output of 'multirater prepare': "
                "refusing to overwrite it; choose a new or empty folder"
            )
        if marker.get("dataset") != dataset:
            raise PrepareError(
                f"the output folder {out} holds a prepared '{marker.get('dataset')}' dataset, not '{dataset}': "
                "refusing to overwrite it; choose another folder"
            )
        foreign = _foreign_entries(out, marker)
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise PrepareError(
                f"{foreign[0]}: not written by 'multirater prepare'{more}; a new prepare replaces {out}, so move "
                "it out first (nothing was changed), or choose another output folder"
            )
    return out


_LAYOUT = re.compile(r"^(images|labels|gt)/[^/]+\.nii\.gz$")
_OUTPUT_FOLDERS = ("images", "labels", "gt")


def _written_files(root: Path) -> list[str]:
    """Every file under ``root``, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _foreign_entries(out: Path, marker: dict) -> list[Path]:
    """Files (and empty folders) of a previous output that its prepare run did not write: the user's."""
    listed = marker.get("files")

    def written(rel: str) -> bool:
        if rel == MARKER_NAME:
            return True
        if listed is not None:
            return rel in listed
        # an output of the first version of the tool, which recorded no file list: its layout
        return rel in (DATALIST_NAME, BUNDLE_CONFIG_NAME) or bool(_LAYOUT.match(rel))

    entries = sorted(out.rglob("*"))
    files = [p for p in entries if p.is_file() and not written(p.relative_to(out).as_posix())]
    folders = [
        p
        for p in entries
        if p.is_dir() and p.relative_to(out).as_posix() not in _OUTPUT_FOLDERS and not any(x.is_file() for x in p.rglob("*"))
    ]
    return files + folders


def _read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("tool") == MARKER_TOOL else None


def _check_item(spec: DatasetSpec, item: PreparedItem) -> list[tuple[str, str]]:
    """Contract checks of a reader's item (shapes, classes, raters); ``(item name, reason)`` problems."""
    problems = []
    image = item.image
    if image.ndim != spec.spatial_dims + 1 or image.shape[0] != spec.in_channels:
        problems.append((item.name, f"image shape {image.shape}, expected ({spec.in_channels}, *{spec.spatial_dims}D)"))
        return problems
    spatial = image.shape[1:]
    if len(item.raters) != len(spec.raters):
        problems.append((item.name, f"{len(item.raters)} rater maps, the dataset has {len(spec.raters)} raters"))
    if all(r is None for r in item.raters):
        problems.append((item.name, "no rater annotated this item"))
    maps = [(n, r) for n, r in zip(spec.raters, item.raters) if r is not None]
    if item.gt is not None:
        maps.append(("gt", item.gt))
    for name, label in maps:
        if label.shape != spatial:
            problems.append((item.name, f"{name} label shape {label.shape} differs from the image's {spatial}"))
        elif label.size and (label.min() < 0 or label.max() >= spec.num_classes):
            problems.append((item.name, f"{name} label values outside 0..{spec.num_classes - 1}"))
    if np.asarray(item.affine).shape != (4, 4) or not np.isfinite(item.affine).all():
        problems.append((item.name, "invalid affine"))
    return problems


def _write_item(spec: DatasetSpec, item: PreparedItem, root: Path) -> dict[str, Any]:
    """Write one item's files under ``root``; return its datalist entry (paths relative to ``root``)."""
    name = safe_name(item.name)
    if spec.in_channels == 1:
        image_entry: str | list[str] = f"images/{name}.nii.gz"
        write_nifti(item.image[0], item.affine, root / image_entry, np.float32)
    else:
        image_entry = [f"images/{name}_{safe_name(c)}.nii.gz" for c in spec.channels]
        for channel, path in zip(item.image, image_entry):
            write_nifti(channel, item.affine, root / path, np.float32)
    labels: list[str | None] = []
    for rater, label in zip(spec.raters, item.raters):
        if label is None:
            labels.append(None)
            continue
        path = f"labels/{name}_{safe_name(rater)}.nii.gz"
        write_nifti(label, item.affine, root / path, np.uint8)
        labels.append(path)
    entry: dict[str, Any] = {IMAGE: image_entry, LABEL: labels}
    if item.gt is not None:
        entry[GT] = f"gt/{name}.nii.gz"
        write_nifti(item.gt, item.affine, root / entry[GT], np.uint8)
    return entry


def _patch_size(min_shape: np.ndarray, spatial_dims: int) -> list[int]:
    """Per axis: the largest multiple of 16 not above the smallest image side and the cap (at least 16)."""
    cap = PATCH_CAP[spatial_dims]
    return [int(max(_PATCH_MULTIPLE, min(cap, s) // _PATCH_MULTIPLE * _PATCH_MULTIPLE)) for s in min_shape]


def bundle_overlay(spec: DatasetSpec, dst: Path, patch_size: Sequence[int]) -> dict[str, Any]:
    """The config overlay merged over a bundle's ``train.json`` (ids every bundle of the project has).

    ``dataset_dir`` is the prepared folder (override it with ``--dataset_dir`` after moving the folder);
    ``val_target`` is ``"gt"`` where the dataset has a reference, else the fused rater label.
    """
    overlay: dict[str, Any] = {
        "dataset_dir": str(dst),
        "datalist": "$@dataset_dir + '/" + DATALIST_NAME + "'",
        "num_raters": len(spec.raters),
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "spatial_dims": spec.spatial_dims,
        "patch_size": [int(p) for p in patch_size],
        "val_target": "gt" if spec.has_gt else "fused_label",
    }
    if spec.spatial_dims == 3:
        overlay["batch_size"] = 2
    overlay.update(spec.bundle_overrides)
    return overlay


def _stop(tmp: Path, message: str, report: PrepareReport) -> PrepareError:
    shutil.rmtree(tmp, ignore_errors=True)
    report.written = False
    report.cases_used = 0
    report.datalist = report.bundle_config = None
    return PrepareError(message, report)


def write_prepared(
    spec: DatasetSpec,
    cases: Sequence[SourceCase],
    dst: str | os.PathLike,
    src: str | os.PathLike,
    source_format: str,
    discovery_problems: Sequence[CaseIssue] = (),
    skip_bad: bool = False,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    options: dict[str, Any] | None = None,
) -> PrepareReport:
    """Read, check and write every case; return the report.

    Cases are processed in the order of their ids. Each case's items pass the reader's checks
    (:class:`CaseError`) and the contract checks; a case whose image data equals an earlier case's is a
    duplicate. Splits: a case's fixed ``split`` if its source layout has one, else its group's split
    from :func:`split_groups` (``fractions``, ``seed``). The written datalist is then checked with
    :func:`~multirater_monai.data.datalist.load_multirater_datalist`.

    Args:
        spec: the dataset's facts.
        cases: the cases found in the source.
        dst: the output folder (see :func:`check_destination`).
        src: the source (for the report and the destination checks).
        source_format: the layout read, for the report.
        discovery_problems: problems found while listing the source (e.g. a case folder missing a file).
        skip_bad: write the good cases and report the bad ones; without it any problem stops the run
            before anything is written.
        seed: seed of the split.
        fractions: (training, validation, test) shares of the groups.
        options: the reader's options, recorded in ``prepare.json``.

    Raises:
        PrepareError: problems without ``skip_bad``, no usable case, or a split left empty; carries the report.
    """
    out = check_destination(dst, src, spec.dataset)
    report = PrepareReport(
        dataset=spec.dataset,
        name=spec.name,
        src=str(src),
        dst=str(out),
        source_format=source_format,
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        channels=list(spec.channels),
        raters=list(spec.raters),
        rater_note=spec.rater_note,
        labels=dict(spec.labels),
        cases_found=len(cases) + len({p.case for p in discovery_problems} - {c.case for c in cases}),
    )
    problems: list[CaseIssue] = list(discovery_problems)
    bad_cases = {p.case for p in problems}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    for folder in ("images", "labels", "gt"):
        (tmp / folder).mkdir(parents=True)
    try:
        entries, min_shape = _process_cases(spec, cases, src, tmp, problems, bad_cases, skip_bad)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.problems = problems
    report.skipped_cases = sorted(bad_cases)
    report.cases_used = len({e["case"] for e, _, _ in entries})
    if problems and not skip_bad:
        report.skipped_cases = []
        raise _stop(
            tmp,
            f"{len(problems)} problem(s) in {len(bad_cases)} case(s) of {src}; nothing was written. Fix them, or "
            f"rerun with --skip-bad (skip_bad=True) to prepare the {report.cases_found - len(bad_cases)} good case(s) "
            "only:\n  - "
            + "\n  - ".join(str(p) for p in problems[:40])
            + (f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""),
            report,
        )
    if not entries:
        raise _stop(
            tmp,
            f"no usable {spec.dataset} case in {src}"
            + (":\n  - " + "\n  - ".join(str(p) for p in problems[:40]) if problems else ""),
            report,
        )

    sections, groups, attempt = _assign_splits(entries, len(spec.raters), fractions, seed)
    for split in SPLITS:
        sections[split].sort(key=lambda e: e[IMAGE] if isinstance(e[IMAGE], str) else e[IMAGE][0])
    report.items = {s: len(sections[s]) for s in SPLITS}
    report.groups = {s: len(groups[s]) for s in SPLITS}
    uncovered = [
        f"{spec.raters[r]} annotates no item of the {split} split"
        for split, entries_ in sections.items()
        if entries_
        for r in range(len(spec.raters))
        if all(e[LABEL][r] is None for e in entries_)
    ]
    if uncovered:
        raise _stop(
            tmp,
            "no split gives every rater an item in every split (a bundle checks each split has "
            "annotations of every rater): " + "; ".join(uncovered) + ". Prepare more cases, change "
            "--seed or --fractions",
            report,
        )
    for split in SPLITS[:2]:
        if not sections[split]:
            raise _stop(
                tmp,
                f"the {split} split is empty ({report.groups} groups per split): a bundle needs "
                "training and validation items; prepare more cases or change the split fractions",
                report,
            )

    datalist: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "dataset": spec.dataset,
        "source_format": source_format,
        "spatial_dims": spec.spatial_dims,
        "num_classes": spec.num_classes,
        "labels": spec.labels,
        "channels": spec.channels,
        "raters": spec.raters,
        "rater_note": spec.rater_note,
        **spec.extra,
        "split": {"seed": int(seed), "attempt": attempt, "fractions": [float(f) for f in fractions], "unit": "group"},
        **{s: sections[s] for s in SPLITS},
    }
    (tmp / DATALIST_NAME).write_text(dump_datalist(datalist))
    for folder in ("images", "labels", "gt"):
        if not any((tmp / folder).iterdir()):
            (tmp / folder).rmdir()
    try:
        for split in SPLITS:
            if sections[split]:
                load_multirater_datalist(
                    tmp / DATALIST_NAME,
                    split,
                    num_raters=len(spec.raters),
                    num_classes=spec.num_classes,
                    in_channels=spec.in_channels,
                    spatial_dims=spec.spatial_dims,
                )
    except DatalistError as e:
        raise _stop(tmp, f"the prepared datalist does not pass the project's checks: {e}", report) from e

    overlay = bundle_overlay(spec, out, _patch_size(min_shape, spec.spatial_dims))
    (tmp / BUNDLE_CONFIG_NAME).write_text(json.dumps(overlay, indent=4) + "\n")
    report.written = True
    report.datalist = str(out / DATALIST_NAME)
    report.bundle_config = str(out / BUNDLE_CONFIG_NAME)
    marker = {
        "tool": MARKER_TOOL,
        "version": 2,
        "dataset": spec.dataset,
        "options": options or {},
        "report": report.to_dict(),
        "files": _written_files(tmp),  # what a later prepare into the same folder may replace
    }
    (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=1, default=str) + "\n")
    _move_into_place(tmp, out)
    return report


def _process_cases(
    spec: DatasetSpec,
    cases: Sequence[SourceCase],
    src: str | os.PathLike,
    tmp: Path,
    problems: list[CaseIssue],
    bad_cases: set[str],
    skip_bad: bool,
) -> tuple[list[tuple[dict, str, str | None]], np.ndarray]:
    """Load, check and (while useful) write every case; return (entry, group, fixed split) and the smallest shape."""
    entries: list[tuple[dict, str, str | None]] = []
    seen_ids: dict[str, SourceCase] = {}
    seen_data: dict[str, str] = {}
    seen_names: set[str] = set()
    min_shape = np.full(spec.spatial_dims, np.iinfo(np.int64).max)
    for case in sorted(cases, key=lambda c: c.case):
        if case.case in bad_cases:
            continue
        first_file = case.files[0] if case.files else case.case
        if case.case in seen_ids:
            other = seen_ids[case.case]
            where = other.files[0] if other.files else other.case
            tag = f"{case.case} [{first_file}]"
            problems.append(CaseIssue(tag, first_file, f"duplicated case (also at {where})"))
            bad_cases.add(tag)
            continue
        seen_ids[case.case] = case
        try:
            items = case.load()
            found = [p for item in items for p in _check_item(spec, item)]
            if found:
                raise CaseError(found)
            if not items:
                raise CaseError([(first_file, "nothing to use in this case (no annotated slice or crop)")])
        except CaseError as e:
            problems.extend(CaseIssue(case.case, f, r) for f, r in e.problems)
            bad_cases.add(case.case)
            continue
        except Exception as e:
            problems.append(CaseIssue(case.case, first_file, f"cannot read the case ({type(e).__name__}: {e})"))
            bad_cases.add(case.case)
            continue
        digest = "+".join(fingerprint(i.image) for i in items)  # the case's image data
        if digest in seen_data:
            problems.append(
                CaseIssue(case.case, first_file, f"duplicated case: same image data as case {seen_data[digest]}")
            )
            bad_cases.add(case.case)
            continue
        seen_data[digest] = case.case
        names = [safe_name(i.name) for i in items]
        clash = sorted(set(names) & seen_names) or sorted({n for n in names if names.count(n) > 1})
        if clash:
            problems.append(CaseIssue(case.case, first_file, f"item name(s) {clash[:3]} already used by another case"))
            bad_cases.add(case.case)
            continue
        seen_names.update(names)
        if problems and not skip_bad:
            continue  # the run will stop: keep checking, stop writing
        for item in items:
            entry = _write_item(spec, item, tmp)
            entry = {**entry, "case": case.case, "group": case.group, **_relative_info(item.info, src)}
            entries.append((entry, case.group, case.split))
            min_shape = np.minimum(min_shape, item.image.shape[1:])
    return entries, min_shape


def _assign_splits(
    entries: Sequence[tuple[dict, str, str | None]], num_raters: int, fractions: Sequence[float], seed: int
) -> tuple[dict[str, list[dict]], dict[str, set], int]:
    """Split the entries by group; among the seed's first permutations, the first in which every rater
    annotates some item of every non-empty split (the project's datalist check), else the first one."""
    free_groups = [group for _, group, split in entries if split is None]
    first = None
    for attempt in range(_SPLIT_ATTEMPTS):
        assignment = split_groups(free_groups, fractions, seed, attempt)
        sections: dict[str, list[dict]] = {s: [] for s in SPLITS}
        groups: dict[str, set] = {s: set() for s in SPLITS}
        for entry, group, split in entries:
            split = split or assignment[group]
            sections[split].append(entry)
            groups[split].add(group)
        first = first or (sections, groups, attempt)
        covered = all(
            any(e[LABEL][r] is not None for e in items)
            for items in sections.values()
            if items
            for r in range(num_raters)
        )
        if covered or not free_groups:
            return sections, groups, attempt
    return first


def _relative_info(info: dict[str, Any], src: str | os.PathLike) -> dict[str, Any]:
    """The item's extra fields, its ``source`` files relative to the source root (the datalist does not
    depend on where the user keeps the dataset)."""
    if "source" not in info:
        return info
    root = Path(src).absolute()
    base = root if root.is_dir() else root.parent
    sources = []
    for path in info["source"]:
        try:
            sources.append(Path(path).absolute().relative_to(base).as_posix())
        except ValueError:
            sources.append(str(path))
    return {**info, "source": sources}


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder to ``out``, replacing a previous output (or an empty folder)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
