"""``multirater benchmark``: one leaderboard, every method against every baseline, on the same data.

Modules: :mod:`~multirater_monai.benchmark.arms` (what the bundles declare), :mod:`~multirater_monai.benchmark.suites`
(the data), :mod:`~multirater_monai.benchmark.runner` (training and evaluation runs, the results store),
:mod:`~multirater_monai.benchmark.cost` (train-step time and memory), :mod:`~multirater_monai.benchmark.report`
(tables, plots, MLflow) and :mod:`~multirater_monai.benchmark.command` (the command line).
"""

from multirater_monai.benchmark.arms import Arm, discover_arms, resolve_arms
from multirater_monai.benchmark.runner import ResultStore, RunSpec
from multirater_monai.benchmark.suites import SYNTHETIC_SUITES, Suite, dataset_suite

__all__ = ["Arm", "ResultStore", "RunSpec", "SYNTHETIC_SUITES", "Suite", "dataset_suite", "discover_arms", "resolve_arms"]
