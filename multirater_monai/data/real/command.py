"""``multirater prepare``: the command line of the dataset readers (registered by ``multirater_monai.cli``).

::

    multirater prepare brats --src ~/data/BraTS2021 --dst datasets/brats2021_2d --spatial-dims 2
    multirater prepare lidc --src ~/data/data_lidc.pickle --dst datasets/lidc
    multirater prepare qubiq --src ~/data/qubiq --dst datasets/qubiq_prostate_t1 --subset prostate --task 1
    multirater prepare mslsc --src ~/data/isbi2015/training --dst datasets/ms_3d
    multirater prepare replica brats /tmp/brats_replica      # a tiny replica of a layout, to try the commands
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_prepare_parser", "run_prepare"]

_TRAIN_HINT = (
    "train any bundle on it:\n"
    "  python -m monai.bundle run --config_file \"['bundles/<bundle>/configs/train.json','{cfg}']\"\n"
    "evaluate:\n"
    "  python -m monai.bundle run --config_file "
    "\"['bundles/<bundle>/configs/train.json','bundles/<bundle>/configs/evaluate.json','{cfg}']\""
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, help="where your copy of the dataset is (never modified)")
    p.add_argument("--dst", required=True, help="output folder, e.g. datasets/<name> (new, empty or a previous output)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="prepare the good cases and report the bad ones (default: any problem stops before writing anything)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of simulated raters)")
    p.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=None,
        metavar=("TRAIN", "VAL", "TEST"),
        help="shares of the patients / subjects per split",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _slices(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--slices",
        choices=("foreground", "nonempty", "all"),
        default="foreground",
        help="2D from 3D: slices with foreground (default), with image content, or all",
    )


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prepare`` (with one sub-command per dataset and ``replica``) to ``multirater``'s sub-commands."""
    prep = subparsers.add_parser(
        "prepare",
        help="read a real dataset in its own layout, check it, write a datalist",
        description=__doc__.splitlines()[0],
    )
    datasets = prep.add_subparsers(dest="dataset", required=True)

    lidc = datasets.add_parser("lidc", help="LIDC-IDRI crops: Prob. U-Net pickle, PHiSeg HDF5, HPU-Net PNG, or pylidc")
    _common(lidc)
    lidc.add_argument("--format", dest="fmt", choices=("auto", "pickle", "hdf5", "png", "pylidc"), default="auto")
    lidc.add_argument(
        "--resplit",
        dest="keep_splits",
        action="store_false",
        help="split by patient with --seed instead of keeping the source's splits (HDF5, PNG)",
    )
    lidc.add_argument("--crop-size", type=int, default=128, help="pylidc converter: crop side")

    brats = datasets.add_parser("brats", help="BraTS 2019 / 2020 / 2021 / 2023+, simulated raters")
    _common(brats)
    brats.add_argument("--release", choices=("2019", "2020", "2021", "2023"), default=None, help="default: detected")
    brats.add_argument("--spatial-dims", type=int, choices=(2, 3), default=3)
    brats.add_argument(
        "--label-scheme",
        choices=("regions", "wt", "tc", "et"),
        default="regions",
        help="regions: 4 nested classes (edema, core, enhancing); wt / tc / et: one binary region",
    )
    brats.add_argument(
        "--raters",
        nargs="+",
        default=["good", "over", "under", "wrong"],
        help="simulated raters (registry names, 'a+b' composes)",
    )
    brats.add_argument("--rater-class", type=int, default=None, help="raters alter only this class (default: all)")
    crop = brats.add_mutually_exclusive_group()
    crop.add_argument(
        "--crop-size",
        type=int,
        nargs="+",
        default=None,
        help="centre crop: 2 values in 2D (default 192 192), 3 in 3D (default none)",
    )
    crop.add_argument("--no-crop", action="store_true", help="no crop")
    _slices(brats)

    qubiq = datasets.add_parser("qubiq", help="QUBIQ 2020 / 2021, one dataset and task")
    _common(qubiq)
    qubiq.add_argument(
        "--subset",
        default=None,
        help="brain-growth, brain-tumor, kidney, prostate, pancreas, pancreatic-lesion (default: the only one found)",
    )
    qubiq.add_argument("--task", type=int, default=1)
    qubiq.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None, help="default: the data's own")
    _slices(qubiq)

    ms = datasets.add_parser("mslsc", help="ISBI 2015 longitudinal MS lesions, two raters")
    _common(ms)
    ms.add_argument("--spatial-dims", type=int, choices=(2, 3), default=3)
    _slices(ms)

    replica = datasets.add_parser("replica", help="write a tiny replica of a dataset's layout (to try the commands)")
    replica.add_argument("name", choices=("lidc_pickle", "lidc_hdf5", "lidc_png", "brats", "qubiq", "mslsc"))
    replica.add_argument("root", help="folder to write it into")
    replica.add_argument("--release", default="2021", help="brats: 2019, 2020, 2021 or 2023")
    prep.set_defaults(func=run_prepare)
    return prep


def _options(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"func", "command", "dataset", "src", "dst", "json", "no_crop", "fractions"}
    options = {k: v for k, v in vars(args).items() if k not in skip}
    if args.fractions is not None:
        options["fractions"] = tuple(args.fractions)
    if args.dataset == "brats":
        options["crop_size"] = (
            None if args.no_crop else ("default" if args.crop_size is None else tuple(args.crop_size))
        )
    return options


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``multirater prepare``: print the report (or the problems) and return the exit status."""
    from multirater_monai.data.real.core import PrepareError
    from multirater_monai.data.real.registry import prepare_dataset

    if args.dataset == "replica":
        from multirater_monai.data.real.replicas import make_replica

        kwargs = {"release": args.release} if args.name == "brats" else {}
        print(f"replica written; use --src {make_replica(args.name, args.root, **kwargs)}")
        return 0
    try:
        report = prepare_dataset(args.dataset, args.src, args.dst, **_options(args))
    except PrepareError as e:
        if args.json and e.report is not None:
            print(json.dumps(e.report.to_dict(), indent=1))
        print(f"multirater prepare {args.dataset}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.summary())
        print(_TRAIN_HINT.format(cfg=report.bundle_config))
    return 0
