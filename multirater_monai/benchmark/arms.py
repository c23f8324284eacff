"""Arms of the benchmark: what each bundle declares it contributes, read from its ``metadata.json``.

A bundle lists its arms under the key ``benchmark_arms`` of ``configs/metadata.json``::

    "benchmark_arms": {
        "cmnet_pixel": {"overrides": {"cm_type": "pixel"}, "description": "pixel-wise matrices (the default)"},
        "cmnet_global": {"overrides": {"cm_type": "global"}, "description": "one matrix per rater and image"},
        "cmnet_pixel_notrace": {"overrides": {"trace_weight": 0.0}, "protocol": "ablation"}
    }

Fields of an arm (all optional but ``overrides``):
    ``overrides``: config ids and values, as ``--key value`` on MONAI's command line.
    ``description``: one line for the leaderboard.
    ``protocol``: ``"default"`` (run by ``multirater benchmark`` with no options and by ``--full``), ``"full"``
        (by ``--full`` only) or ``"ablation"`` (only when named with ``--arms``).
    ``role``: ``"method"`` (default), ``"baseline"`` or ``"oracle"`` (trained on the truth: needs a suite with
        one, is the ceiling and is not ranked).
    ``reference``: true for the arm that cost ratios are taken against (the U-Net; one in the repository).
    ``settings``: the suite settings the arm fits (default ``["multi_rater"]``); on a suite offering none of
        them it is reported "n/a" (a method for one annotator per image, or for few pixel labels).

Any bundle variant is also an arm by its spec ``bundle:key=value,...`` (``cmnet:trace_weight=0.4``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from multirater_monai.bundle_utils import check_override_ids, parse_bundle_spec
from multirater_monai.errors import UserError

__all__ = ["Arm", "ARM_PROTOCOLS", "ARM_ROLES", "discover_arms", "resolve_arms", "reference_arm"]

ARM_PROTOCOLS = ("default", "full", "ablation")
ARM_ROLES = ("method", "baseline", "oracle")
METADATA_KEY = "benchmark_arms"


@dataclass(frozen=True)
class Arm:
    """One contender: a bundle, its config overrides and what it fits."""

    name: str
    bundle: str
    overrides: dict = field(default_factory=dict)
    description: str = ""
    protocol: str = "default"
    role: str = "method"
    reference: bool = False
    settings: tuple[str, ...] = ("multi_rater",)

    @property
    def oracle(self) -> bool:
        return self.role == "oracle"

    def fits(self, suite_settings: tuple[str, ...] | set[str]) -> bool:
        """Whether the arm's setting is one the suite offers (``suite_settings``)."""
        return bool(set(self.settings) & set(suite_settings))

    def runs_on(self, suite_settings: tuple[str, ...] | set[str], has_truth: bool) -> bool:
        """Whether the arm runs on a suite: its setting fits, and an oracle needs the truth."""
        return self.fits(suite_settings) and (has_truth or not self.oracle)


def _arm_from_entry(name: str, bundle: str, entry: object, source: Path) -> Arm:
    if not isinstance(entry, dict) or not isinstance(entry.get("overrides", {}), dict):
        raise UserError(f"{source}: {METADATA_KEY}.{name} must be an object with an 'overrides' object.")
    unknown = set(entry) - {"overrides", "description", "protocol", "role", "reference", "settings"}
    if unknown:
        raise UserError(f"{source}: {METADATA_KEY}.{name} has unknown field(s) {sorted(unknown)}.")
    protocol, role = entry.get("protocol", "default"), entry.get("role", "method")
    if protocol not in ARM_PROTOCOLS:
        raise UserError(f"{source}: {METADATA_KEY}.{name}.protocol must be one of {ARM_PROTOCOLS}, got {protocol!r}.")
    if role not in ARM_ROLES:
        raise UserError(f"{source}: {METADATA_KEY}.{name}.role must be one of {ARM_ROLES}, got {role!r}.")
    settings = entry.get("settings", ["multi_rater"])
    if not isinstance(settings, list) or not settings or not all(isinstance(s, str) for s in settings):
        raise UserError(f"{source}: {METADATA_KEY}.{name}.settings must be a non-empty list of names.")
    return Arm(
        name=name,
        bundle=bundle,
        overrides=dict(entry.get("overrides", {})),
        description=str(entry.get("description", "")),
        protocol=protocol,
        role=role,
        reference=bool(entry.get("reference", False)),
        settings=tuple(settings),
    )


def discover_arms(root: str | Path) -> dict[str, Arm]:
    """Every arm declared by the bundles under ``root/bundles`` (in bundle order, then declaration order).

    Raises:
        UserError: a malformed declaration or an arm name declared twice, naming the file.
    """
    arms: dict[str, Arm] = {}
    for metadata in sorted(Path(root).glob("bundles/*/configs/metadata.json")):
        bundle = metadata.parent.parent.name
        try:
            declared = json.loads(metadata.read_text()).get(METADATA_KEY, {})
        except json.JSONDecodeError as e:
            raise UserError(f"{metadata}: not valid JSON ({e}).") from None
        if not isinstance(declared, dict):
            raise UserError(f"{metadata}: {METADATA_KEY} must be an object of arm name -> arm.")
        for name, entry in declared.items():
            if name in arms:
                raise UserError(f"{metadata}: arm '{name}' is also declared by bundle '{arms[name].bundle}'.")
            if ":" in name or "/" in name:
                raise UserError(f"{metadata}: arm name '{name}' must not contain ':' or '/'.")
            arms[name] = _arm_from_entry(name, bundle, entry, metadata)
    return arms


def reference_arm(arms: dict[str, Arm]) -> Arm | None:
    """The arm cost ratios are taken against (``"reference": true``), if one is declared."""
    return next((a for a in arms.values() if a.reference), None)


def resolve_arms(root: str | Path, names: list[str] | None, protocol: str, declared: dict[str, Arm] | None = None) -> list[Arm]:
    """The arms to run: those named (a declared name or a ``bundle:key=value`` spec), or every declared arm of
    ``protocol`` (``"default"``: the ``default`` arms; ``"full"``: ``default`` and ``full``).

    Raises:
        UserError: an unknown arm name or a spec of a bundle that is not there.
    """
    declared = discover_arms(root) if declared is None else declared
    if not names:
        wanted = ("default",) if protocol == "default" else ("default", "full")
        return _checked(root, [a for a in declared.values() if a.protocol in wanted])
    arms = []
    for name in names:
        if name in declared:
            arms.append(declared[name])
            continue
        bundle = name.partition(":")[0]
        if ":" not in name or not (Path(root) / "bundles" / bundle / "configs" / "train.json").is_file():
            raise UserError(f"unknown arm '{name}': not one of {sorted(declared)} and not 'bundle:key=value,...'.")
        base = next((a for a in declared.values() if a.bundle == bundle and a.role == "method"), None)
        _, overrides = parse_bundle_spec(name)
        arms.append(Arm(name=name, bundle=bundle, overrides=overrides, protocol="ablation",
                        settings=base.settings if base else ("multi_rater",)))
    return _checked(root, arms)


def _checked(root: str | Path, arms: list[Arm]) -> list[Arm]:
    """``arms``, once every override of each names a config id of its bundle's ``train.json`` (else a variant would
    train the default network under its own name)."""
    for arm in arms:
        check_override_ids(Path(root) / "bundles" / arm.bundle / "configs" / "train.json", arm.overrides, f"arm '{arm.name}'")
    return arms
