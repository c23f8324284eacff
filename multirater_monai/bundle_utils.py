"""Helpers that bundle configs call: folders, data, tracking store, command-line flags, output checks."""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from multirater_monai.errors import UserError

__all__ = [
    "find_bundle_root",
    "bundle_config_files",
    "default_dataset_dir",
    "sqlite_tracking_uri",
    "parse_bundle_spec",
    "flag",
    "tracking_enabled",
    "check_outputs_free",
]

logger = logging.getLogger(__name__)

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


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


def bundle_config_files(
    configs: str | os.PathLike, spatial_dims: int, names: Sequence[str] = ("train.json",)
) -> list[Path]:
    """The config files a bundle runs with in ``spatial_dims``: ``configs/<name>`` for each of ``names``, then, in
    3D, the bundle's ``configs/3d.json`` merged over them (as ``monai.bundle run --config_file
    "['configs/train.json','configs/3d.json']"`` merges them)."""
    configs = Path(configs)
    return [configs / name for name in names] + ([configs / "3d.json"] if spatial_dims == 3 else [])


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
    return bundle, parse_overrides(filter(None, re.split(r",(?=[\w#]+=)", rest)))


def parse_overrides(pairs: Iterable[str]) -> dict:
    """``["key=value", ...]`` (config ids, e.g. a script's ``--set``) -> ``{key: value}``, the values read as
    JSON where they parse, else kept as strings."""
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def unknown_override_ids(config: Any, overrides: Iterable[str]) -> list[str]:
    """The override ids (``"key"`` or ``"section#key"``, as MONAI's config parser reads them) that name nothing in
    ``config`` (a bundle's raw configuration), so that setting them would change nothing: a top-level id and every
    section on the way must exist; the last key of a section may be new (a component's other constructor argument,
    ``network_def#head_channels``, or a new entry of a dict); a list takes its indices."""
    unknown = []
    for key in overrides:
        node, parts = config, str(key).split("#")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif last and i > 0 and isinstance(node, dict):
                break  # a new key of a section: a component's other argument, a dict's new entry
            else:
                unknown.append(str(key))
                break
    return unknown


def _components_taking(config: dict, argument: str) -> list[str]:
    """The top-level components of ``config`` whose class (``_target_``, a dotted path) takes ``argument``."""
    import inspect
    import pydoc

    found = []
    for name, value in config.items():
        if not (isinstance(value, dict) and isinstance(value.get("_target_"), str)):
            continue
        target = pydoc.locate(value["_target_"])
        try:
            if target is not None and argument in inspect.signature(target).parameters:
                found.append(name)
        except (TypeError, ValueError):
            continue
    return found


def check_override_ids(config_file: str | os.PathLike, overrides: Iterable[str], what: str) -> None:
    """Raise a one-line :class:`UserError` naming ``what`` and ``config_file`` if an override id names nothing there.

    ``python -m monai.bundle run --head_channels 32`` adds an unused top-level id and trains the default network;
    the benchmark and the cost scripts refuse such a variant instead of measuring the default under its name."""
    config = json.loads(Path(config_file).read_text())
    unknown = unknown_override_ids(config, overrides)
    if unknown:
        hints = [f"{section}#{key}" for key in unknown for section in _components_taking(config, key)[:1]]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise UserError(f"{what}: {', '.join(repr(k) for k in unknown)} is not a config id of {config_file}, so it "
                        f"would change nothing{hint}.")


def flag(value: Any, name: str) -> bool:
    """A boolean option as given in a config or on the command line.

    ``python -m monai.bundle run ... --resume false`` passes the *string* ``"false"``, which Python reads as
    true. Every boolean option of a bundle goes through this function (the ``flags`` section of its
    configs), which accepts ``true`` / ``false`` in any case, ``1`` / ``0`` and real booleans.

    Raises:
        UserError: any other value, naming the option.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UserError(f"option --{name}: expected true or false (or 1 / 0), got {value!r}")


def tracking_enabled(enabled: Any, tracking_uri: str, fallback: Any = False, timeout: float = 5.0) -> bool:
    """Whether the run logs to MLflow: the ``mlflow_enabled`` option, after checking that ``tracking_uri`` answers.

    An ``http(s)://`` tracking server is asked once (``<uri>/health``, ``timeout`` seconds); any HTTP answer
    counts as reachable. Local stores (``sqlite:///``, ``file:``, a path) are not checked here.

    Args:
        enabled: the ``mlflow_enabled`` option.
        tracking_uri: the ``tracking_uri`` option.
        fallback: the ``tracking_fallback`` option: train without tracking (with a warning) when the server
            does not answer, instead of stopping.

    Raises:
        UserError: the server does not answer and ``fallback`` is false, naming the URI.
    """
    if not flag(enabled, "mlflow_enabled"):
        return False
    uri = str(tracking_uri)
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the server answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if flag(fallback, "tracking_fallback"):
            logger.warning(f"MLflow tracking server {uri} does not answer ({reason}): training without tracking")
            return False
        raise UserError(
            f"MLflow tracking server {uri} does not answer ({reason}): start it, give another --tracking_uri, "
            "--mlflow_enabled false to train without tracking, or --tracking_fallback true to go on without it "
            "when the server is down"
        ) from None
    return True


def check_outputs_free(input_files: Sequence[str], output_dir: str | os.PathLike, overwrite: Any = False) -> None:
    """Refuse to run an inference whose outputs would replace files already in ``output_dir``.

    An input ``<dir>/<case>.nii.gz`` writes ``<output_dir>/<case>_<what>.<ext>`` files (segmentation,
    per-rater maps, figures): any existing file of that form belongs to an earlier run.

    Args:
        input_files: the images to segment.
        output_dir: where the outputs go.
        overwrite: the ``overwrite`` option: replace them.

    Raises:
        UserError: naming the first file that would be replaced, before anything is written.
    """
    if flag(overwrite, "overwrite"):
        return
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    existing = sorted(p.name for p in folder.iterdir() if p.is_file())
    for path in input_files:
        name = Path(path).name
        stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
        taken = [f for f in existing if f.startswith(stem + "_")]
        if taken:
            more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
            raise UserError(
                f"{folder / taken[0]}: exists from an earlier inference of {path}{more}; give another "
                "--output_dir, or --overwrite true to replace the outputs"
            )
