"""Real multi-rater datasets: read each in its own layout, check it, write a datalist any bundle trains on.

``multirater prepare <dataset> --src <copy> --dst datasets/<name>`` or :func:`prepare_dataset`; datasets:
``lidc`` (LIDC-IDRI crops: pickle, HDF5, PNG, pylidc), ``brats`` (2019-2023+), ``qubiq`` (2020/2021),
``mslsc`` (ISBI 2015 MS lesions). :mod:`~multirater_monai.data.real.replicas` writes tiny replicas of
their layouts. Layouts, assumptions and licences: ``datasets/README.md``.
"""

from .brats import BRATS_RELEASES, LABEL_SCHEMES, prepare_brats
from .core import CaseError, CaseIssue, DatasetSpec, PreparedItem, PrepareError, PrepareReport, SourceCase
from .lidc import LIDC_FORMATS, LIDC_RATERS, prepare_lidc
from .mslsc import prepare_mslsc
from .qubiq import QUBIQ_DATASETS, QUBIQ_THRESHOLDS, prepare_qubiq
from .registry import DATASETS, detect_datasets, prepare_dataset
from .replicas import REPLICAS, make_replica
from .split import DEFAULT_FRACTIONS, SPLITS, split_groups
from .writer import BUNDLE_CONFIG_NAME, DATALIST_NAME, MARKER_NAME, write_prepared

__all__ = [
    "BRATS_RELEASES",
    "BUNDLE_CONFIG_NAME",
    "DATALIST_NAME",
    "DATASETS",
    "DEFAULT_FRACTIONS",
    "LABEL_SCHEMES",
    "LIDC_FORMATS",
    "LIDC_RATERS",
    "MARKER_NAME",
    "QUBIQ_DATASETS",
    "QUBIQ_THRESHOLDS",
    "REPLICAS",
    "SPLITS",
    "CaseError",
    "CaseIssue",
    "DatasetSpec",
    "PrepareError",
    "PrepareReport",
    "PreparedItem",
    "SourceCase",
    "detect_datasets",
    "make_replica",
    "prepare_brats",
    "prepare_dataset",
    "prepare_lidc",
    "prepare_mslsc",
    "prepare_qubiq",
    "split_groups",
    "write_prepared",
]
