"""``multirater quickstart``: the project's main job, train then evaluate one bundle on the synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["find_repository_bundle", "run_quickstart"]


def find_repository_bundle(bundle: str) -> Path:
    """Folder of ``bundles/<bundle>`` in the current folder or in the checkout this package is installed from."""
    import multirater_monai

    for root in (Path.cwd(), Path(multirater_monai.__file__).resolve().parents[1]):
        candidate = root / "bundles" / bundle
        if (candidate / "configs" / "metadata.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"bundle '{bundle}' not found under ./bundles or next to the installed package; run from a clone of "
        "the repository (pip install -e .)."
    )


def run_quickstart(bundle: str = "cmnet", max_epochs: int | None = None) -> None:
    """Train ``bundle`` on its default synthetic data, evaluate it on the test split, print where results are.

    Equivalent to, from the repository root::

        python -m monai.bundle run --config_file bundles/<bundle>/configs/train.json
        python -m monai.bundle run --config_file "['bundles/<bundle>/configs/train.json','bundles/<bundle>/configs/evaluate.json']"
    """
    from monai.bundle import run

    folder = find_repository_bundle(bundle)
    configs = folder / "configs"
    overrides: dict = {"bundle_root": str(folder)}
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    print(f"[quickstart] training {folder} ...")
    run(config_file=str(configs / "train.json"), **overrides)
    print(f"[quickstart] evaluating {folder} on the test split ...")
    run(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")], **overrides)
    print(
        f"[quickstart] done. Model: {os.path.join(folder, 'models', 'model.pt')}; "
        f"evaluation: {os.path.join(folder, 'eval')}; MLflow store: {os.path.join(folder, 'runs', 'mlflow.db')} "
        f"(mlflow ui --backend-store-uri sqlite:///{os.path.join(folder, 'runs', 'mlflow.db')})"
    )
