"""Ignite engines and handlers shared by the bundles."""

from .checkpoints import latest_checkpoint
from .model_saver import BestModelSaver
from .prepare_batch import PrepareBatchKeys
from .summary import print_run_summary

__all__ = ["BestModelSaver", "PrepareBatchKeys", "latest_checkpoint", "print_run_summary"]
