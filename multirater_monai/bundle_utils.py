"""Helpers that bundle configs call to find their folders, data and tracking store."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["find_bundle_root", "default_dataset_dir", "sqlite_tracking_uri", "parse_bundle_spec"]


def find_bundle_root(name: str) -> str:
    """The folder of bundle ``name`` for a run that did not pass ``--bundle_root``.

    ``python -m monai.bundle run --config_file bundles/<name>/configs/train.json`` from the repository
    root and the same from inside ``bundles/<name>`` must both work, so: the current folder if it is
    the bundle (holds ``configs/metadata.json``), else ``bundles/<name>`` below the current folder if
    it exists, else the current folder.
    """
    cwd = Path.cwd()
    if (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    candidate = cwd / "bundles" / name
    if (candidate / "configs" / "metadata.json").is_file():
        return str(candidate)
    return str(cwd)


def default_dataset_dir(bundle_root: str | os.PathLike, dataset: str) -> str:
    """Where a bundle keeps a generated dataset: the repository's ``datasets/<dataset>`` when the bundle sits
    in this repository (``bundles/<name>``, so all bundles share the same synthetic data), else
    ``<bundle_root>/datasets/<dataset>``."""
    root = Path(bundle_root).resolve()
    repo_datasets = root.parent.parent / "datasets"
    if root.parent.name == "bundles" and repo_datasets.is_dir():
        return str(repo_datasets / dataset)
    return str(root / "datasets" / dataset)


def sqlite_tracking_uri(output_dir: str | os.PathLike, filename: str = "mlflow.db") -> str:
    """MLflow tracking URI of a local SQLite store ``<output_dir>/<filename>`` (the folder is created)."""
    folder = Path(output_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return "sqlite:///" + (folder / filename).as_posix()


def parse_bundle_spec(spec: str) -> tuple[str, dict]:
    """A bundle variant written ``"bundle:key=value,key=value"`` -> ``(bundle, overrides)``.

    Values are read as JSON where they parse, else kept as strings; a comma inside a value stays
    (``"cmnet:network_def#channels=[32,64,128,256],trace_weight=0.1"`` -> ``("cmnet",
    {"network_def#channels": [32, 64, 128, 256], "trace_weight": 0.1})``). The keys are config ids,
    as ``--key value`` on the ``monai.bundle`` command line takes them.
    """
    bundle, _, rest = spec.partition(":")
    overrides = {}
    for pair in filter(None, re.split(r",(?=[\w#]+=)", rest)):
        key, _, value = pair.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return bundle, overrides
