"""Ignite engines and handlers shared by the bundles."""

from .checkpoints import latest_checkpoint
from .iteration import AllOutputs, AllOutputsIteration
from .model_saver import BestModelSaver
from .prepare_batch import PrepareBatchKeys
from .stages import MultiStageSchedule, Stage, total_epochs
from .summary import print_run_summary

__all__ = [
    "AllOutputs",
    "AllOutputsIteration",
    "BestModelSaver",
    "MultiStageSchedule",
    "PrepareBatchKeys",
    "Stage",
    "latest_checkpoint",
    "print_run_summary",
    "total_epochs",
]
