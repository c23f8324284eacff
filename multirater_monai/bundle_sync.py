"""Keep the bundles' configuration in sync with the shared blocks in ``multirater_monai/bundle_templates``.

Every bundle folder is self-contained (its ``configs/*.json`` are complete MONAI bundle configs, so a
bundle copied alone next to the installed package still runs), but most of a bundle's configuration is
not its own: data loading and checks, the trainer, validation, checkpoints, MLflow, the evaluation
protocol, the inference plumbing, the 3D and multi-GPU overlays, logging. Those come from one source,
the templates, and :func:`sync_bundle` writes them into each bundle:

- a template is ``{"defaults": [ids], "config": {...}}``; every id of ``config`` is *shared* (the bundle's
  file always holds the template's value) except the ids listed in ``defaults``, which a bundle may set
  to its own value (the template's value is written only where the bundle has none);
- ids that are not in the template are the bundle's own (its method's parameters, network, losses,
  stages, training pre-processing, evaluation post-processing) and are kept as they are;
- nested sections (``train``, ``validate``) are merged id by id (``train#preprocessing`` is a bundle's own
  while ``train#trainer`` is shared); a component (a dict with ``_target_``) or a list is one value.

``multirater sync-bundles`` rewrites the bundles; ``multirater sync-bundles --check`` (and the test suite)
fails when a bundle's file differs from what syncing would write, naming the file: edit the template, not
a bundle's copy of a shared block. A new bundle writes its own ids only and runs the command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILES", "COPIED_FILES", "format_config", "load_template", "sync_bundle", "sync_config"]

CONFIG_FILES = ("train.json", "evaluate.json", "inference.json", "3d.json", "multi_gpu_train.json")
"""The bundle configs merged with a template of the same name."""

COPIED_FILES = ("logging.conf",)
"""Files every bundle holds as an exact copy of the template."""

_LINE = 120


def _template_dir() -> Path:
    return Path(str(resources.files("multirater_monai") / "bundle_templates"))


def load_template(name: str) -> dict[str, Any]:
    """The template of config file ``name`` (``{"defaults": [...], "config": {...}}``)."""
    return json.loads((_template_dir() / name).read_text())


def _is_section(value: Any) -> bool:
    """A plain nested section merged id by id (not a component, which is one value)."""
    return isinstance(value, Mapping) and "_target_" not in value


def _ordered_keys(own: Mapping, template: Mapping) -> list[str]:
    """The bundle's keys in its order; each template key it lacks goes just before the next template key it has
    (in the template's order), else just after the previous one, else at the end."""
    keys = list(own)
    template_keys = list(template)
    for i, key in enumerate(template_keys):
        if key in keys:
            continue
        following = next((k for k in template_keys[i + 1 :] if k in keys), None)
        if following is not None:
            keys.insert(keys.index(following), key)
            continue
        previous = next((k for k in reversed(template_keys[:i]) if k in keys), None)
        keys.insert(len(keys) if previous is None else keys.index(previous) + 1, key)
    return keys


def sync_config(own: Mapping[str, Any] | None, template: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle config ``own`` with the template's shared ids written in and its defaults filled in."""
    defaults = set(template.get("defaults", []))
    unknown = defaults - _ids(template["config"])
    if unknown:
        raise ValueError(f"template defaults {sorted(unknown)} are not ids of the template's config.")
    return _merge(dict(own or {}), template["config"], defaults, "")


def _ids(config: Mapping[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in config.items():
        out.add(prefix + key)
        if _is_section(value):
            out |= _ids(value, prefix + key + "#")
    return out


def _merge(own: Mapping[str, Any], template: Mapping[str, Any], defaults: set[str], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _ordered_keys(own, template):
        ident = prefix + key
        if key not in template:
            out[key] = own[key]
        elif key not in own:
            out[key] = template[key]
        elif ident in defaults:
            out[key] = own[key]
        elif _is_section(template[key]) and _is_section(own[key]):
            out[key] = _merge(own[key], template[key], defaults, ident + "#")
        else:
            out[key] = template[key]
    return out


def format_config(config: Any, indent: int = 0) -> str:
    """JSON text in the bundles' style: a value on one line when it fits in 120 characters, else expanded."""
    flat = json.dumps(config, ensure_ascii=False)
    pad = " " * indent
    if len(pad) + len(flat) <= _LINE or not isinstance(config, (Mapping, list)) or not config:
        return flat
    inner = " " * (indent + 4)
    if isinstance(config, Mapping):
        items = [f"{inner}{json.dumps(k)}: {format_config(v, indent + 4).lstrip()}" for k, v in config.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{format_config(v, indent + 4).lstrip()}" for v in config]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def sync_bundle(bundle: str | os.PathLike, check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) the shared blocks of the bundle folder ``bundle``.

    Returns:
        the files that differ from the synced version (with ``check``) or that were rewritten.
    """
    configs = Path(bundle) / "configs"
    if not (configs / "metadata.json").is_file():
        raise FileNotFoundError(f"{bundle}: not a bundle folder (no configs/metadata.json).")
    changed = []
    for name in CONFIG_FILES:
        path = configs / name
        own = json.loads(path.read_text()) if path.is_file() else None
        text = format_config(sync_config(own, load_template(name))) + "\n"
        if not path.is_file() or path.read_text() != text:
            changed.append(str(path))
            if not check:
                path.write_text(text)
    for name in COPIED_FILES:
        path = configs / name
        text = (_template_dir() / name).read_text()
        if not path.is_file() or path.read_text() != text:
            changed.append(str(path))
            if not check:
                path.write_text(text)
    return changed


def bundle_folders(root: str | os.PathLike, names: Sequence[str] | None = None) -> list[Path]:
    """The bundle folders under ``root/bundles`` (all, or those named)."""
    base = Path(root) / "bundles"
    found = sorted(p for p in base.iterdir() if (p / "configs" / "metadata.json").is_file()) if base.is_dir() else []
    if names:
        missing = sorted(set(names) - {p.name for p in found})
        if missing:
            raise FileNotFoundError(f"no bundle {missing} under {base}.")
        found = [p for p in found if p.name in names]
    return found
