"""``multirater export-slicer``: a 3D Slicer review package from a bundle's inference output folder."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_export_slicer_parser"]


def _export(args: argparse.Namespace) -> int:
    from multirater_monai.slicer.package import export_slicer_package

    package = export_slicer_package(
        args.pred_dir,
        args.out,
        image_dir=args.images,
        datalist=args.datalist,
        class_names=args.class_names,
        overwrite=args.overwrite,
    )
    cases = package["cases"]
    segments = sum(len(c["segments"]) for c in cases.values())
    volumes = sum(len(c["volumes"]) for c in cases.values())
    print(f"{len(cases)} case(s), {segments} segments, {volumes} volumes written to {args.out}")
    print(f"open in 3D Slicer: Slicer --python-script {Path(args.out) / 'load_in_slicer.py'}")
    return 0


def add_export_slicer_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export-slicer",
        help="write a 3D Slicer review package from a bundle's inference output folder",
        description="From the folder a bundle's inference.json wrote (<case>_seg.nii.gz and the method's maps), write "
        "for every case the image, one .seg.nrrd segmentation with a named, coloured segment per class of the "
        "consensus, of every rater's predicted segmentation and (with --datalist) of every rater's own label and "
        "the reference, overlapping segments in separate layers; every other map (reliability, agreement, "
        "probabilities, disagreement, explanations) as a scalar volume; and load_in_slicer.py, which opens it all "
        "in 3D Slicer. Geometry is the input image's. Nothing is written if any case is incomplete or off-grid; "
        "an existing package is replaced only with --overwrite.",
    )
    parser.add_argument("pred_dir", help="a bundle's inference output folder (its output_dir)")
    parser.add_argument("--out", required=True, help="the package folder to write")
    parser.add_argument("--images", default=None, help="the folder of the input images (the inference's input_dir)")
    parser.add_argument(
        "--datalist", default=None, help="a datalist JSON: the images, plus the raters' labels and reference to show"
    )
    parser.add_argument(
        "--class-names", nargs="+", default=None, help="names of label values 0, 1, ... (background first)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the package's files where they exist")
    parser.set_defaults(func=_export)
