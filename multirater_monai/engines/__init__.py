"""Ignite engines and handlers shared by the bundles: trainer, training steps, stage schedule, teachers."""

from .adapters import AllOutputs, StackedOutputs, call_network, unwrap_network
from .attribute_schedule import LinearAttributeSchedule
from .distributed import end_process_group
from .checkpoints import (
    CheckpointError,
    CheckpointResumer,
    RandomStates,
    StateDictLoader,
    TrainingCheckpointer,
    checkpoint_files,
    latest_checkpoint,
)
from .model_saver import BestModelSaver, ModelExistsError
from .prepare_batch import PrepareBatchDict, PrepareBatchKeys
from .report import EpochReport
from .stages import MultiStageSchedule, Stage, epochs_for_iterations, frozen_modules, total_epochs
from .steps import NonFiniteError, RecurrentStep, TrainStep
from .scaleprotoseg import GroupThreshold, PrototypeProjection, scaleprotoseg_epochs, with_simplex_projection
from .tax import TRAIN_MASKS, UNCERTAINTIES, PseudoAnnotatorMasks, tax_step_inputs, tax_vanilla_epochs, uncertain_region
from .summary import print_run_summary
from .teacher import Teacher
from .trainer import MultiRaterTrainer

__all__ = [
    "GroupThreshold",
    "PrototypeProjection",
    "scaleprotoseg_epochs",
    "with_simplex_projection",
    "AllOutputs",
    "BestModelSaver",
    "CheckpointError",
    "CheckpointResumer",
    "ModelExistsError",
    "NonFiniteError",
    "RandomStates",
    "StateDictLoader",
    "TrainingCheckpointer",
    "checkpoint_files",
    "EpochReport",
    "LinearAttributeSchedule",
    "MultiRaterTrainer",
    "MultiStageSchedule",
    "PrepareBatchDict",
    "PseudoAnnotatorMasks",
    "TRAIN_MASKS",
    "UNCERTAINTIES",
    "tax_step_inputs",
    "tax_vanilla_epochs",
    "uncertain_region",
    "PrepareBatchKeys",
    "RecurrentStep",
    "StackedOutputs",
    "Stage",
    "Teacher",
    "TrainStep",
    "call_network",
    "end_process_group",
    "epochs_for_iterations",
    "frozen_modules",
    "latest_checkpoint",
    "print_run_summary",
    "total_epochs",
    "unwrap_network",
]
