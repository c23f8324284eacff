"""Review in 3D Slicer: a package of the image, the consensus, the per-rater predictions and labels as one
multi-layer segmentation, and the reliability / disagreement maps as volumes."""

from multirater_monai.slicer.package import Case, export_slicer_package, find_cases

__all__ = ["Case", "export_slicer_package", "find_cases"]
