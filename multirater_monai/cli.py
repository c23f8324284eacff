"""The ``multirater`` command line.

Subcommands:
    ``multirater synthesize``  write a synthetic multi-rater dataset (NIfTI + datalist JSON).
    ``multirater quickstart``  train and evaluate a bundle on the synthetic data, print where results are.
    ``multirater prepare``     read a real dataset (LIDC-IDRI, BraTS, QUBIQ, MS lesions), check it, write a datalist.
    ``multirater sync-bundles`` write the shared configuration blocks into the bundles (``--check``: only compare).
    ``multirater benchmark``   train and evaluate every method and baseline on the same data: the leaderboard.
    ``multirater export-slicer`` a 3D Slicer review package from a bundle's inference output folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _synthesize(args: argparse.Namespace) -> int:
    from multirater_monai.data.synthetic import generate_synthetic_dataset

    datalist = generate_synthetic_dataset(
        output_dir=args.output_dir,
        spatial_dims=args.spatial_dims,
        num_classes=args.num_classes,
        image_size=args.image_size,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        raters=args.raters,
        labels_per_image=args.labels_per_image,
        seed=args.seed,
        layout=args.layout,
    )
    print(f"datalist: {datalist}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from multirater_monai.engines.quickstart import run_quickstart

    run_quickstart(bundle=args.bundle, max_epochs=args.max_epochs)
    return 0


def _sync_bundles(args: argparse.Namespace) -> int:
    from multirater_monai.bundle_sync import bundle_folders, sync_bundle

    folders = bundle_folders(args.root, args.bundles)
    if not folders:
        print(f"no bundle under {args.root}/bundles", file=sys.stderr)
        return 2
    changed = [f for folder in folders for f in sync_bundle(folder, check=args.check)]
    for path in changed:
        print(f"{path}: {'differs from the shared blocks (run multirater sync-bundles)' if args.check else 'rewritten'}")
    if args.check and changed:
        return 1
    print(f"{len(folders)} bundle(s) {'in sync' if args.check else 'synced'}: {', '.join(f.name for f in folders)}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multirater", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    syn = sub.add_parser("synthesize", help="write a synthetic multi-rater dataset")
    syn.add_argument("output_dir", help="folder to create; must not exist or be empty")
    syn.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2)
    syn.add_argument("--num-classes", type=int, default=2, help="2 = binary; more = multi-class")
    syn.add_argument("--image-size", type=int, default=None, help="side length (default 64 in 2D, 32 in 3D)")
    syn.add_argument("--num-train", type=int, default=None)
    syn.add_argument("--num-val", type=int, default=None)
    syn.add_argument("--num-test", type=int, default=None)
    syn.add_argument(
        "--raters", nargs="+", default=None, help="rater names in order (default: good over under wrong blank)"
    )
    syn.add_argument(
        "--labels-per-image", type=int, default=None, help="k raters per image (default: every rater on every image)"
    )
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument(
        "--layout",
        choices=("nested", "scene", "lesion"),
        default="nested",
        help="nested: objects with nested classes (default); scene: kinds of objects present or absent per image, "
        "at several scales; lesion: one small lesion per image (0.2-1%% of the pixels), binary",
    )
    syn.set_defaults(func=_synthesize)

    quick = sub.add_parser("quickstart", help="train + evaluate a bundle on the synthetic data")
    quick.add_argument("--bundle", default="cmnet", help="bundle folder name under bundles/")
    quick.add_argument("--max-epochs", type=int, default=None, help="override the bundle's max_epochs")
    quick.set_defaults(func=_quickstart)

    sync = sub.add_parser(
        "sync-bundles",
        help="write the shared configuration blocks (multirater_monai/bundle_templates) into every bundle",
        description="Every bundle's configs hold the shared blocks of multirater_monai/bundle_templates (data "
        "checks, trainer, validation, checkpoints, MLflow, evaluation protocol, inference plumbing, 3D and "
        "multi-GPU overlays, logging) next to its own ids. This command writes them in; edit the templates, "
        "not a bundle's copy.",
    )
    sync.add_argument("bundles", nargs="*", help="bundle folder names (default: all under ROOT/bundles)")
    sync.add_argument("--root", default=".", help="repository root holding bundles/ (default: .)")
    sync.add_argument("--check", action="store_true", help="only report the files that differ (exit 1 if any)")
    sync.set_defaults(func=_sync_bundles)

    from multirater_monai.data.real.command import add_prepare_parser

    add_prepare_parser(sub)

    from multirater_monai.benchmark.command import add_benchmark_parser

    add_benchmark_parser(sub)

    from multirater_monai.slicer.command import add_export_slicer_parser

    add_export_slicer_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from multirater_monai.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    if hasattr(args, "argv"):  # a command that records how it was called (benchmark)
        args.argv = argv
    try:
        return args.func(args)
    except UserError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
