"""Names and values of the project's data contract (``docs/design.md``, "Data contract")."""

# Value of every voxel of a rater channel whose rater did not annotate the image.
MISSING_LABEL = -1

# Dictionary keys of one sample.
IMAGE = "image"  # (C, *S) float
LABEL = "label"  # (R, *S) integer class indices, one channel per rater, -1 where a rater did not annotate
RATER_MASK = "rater_mask"  # (R,) bool, which raters annotated the sample
GT = "gt"  # (1, *S) truth, where known
FUSED_LABEL = "fused_label"  # (L, *S) float class probabilities from label fusion
TRUE_CM = "true_cm"  # (R, L, L) true per-image confusion matrices (synthetic data)
CLASS_LABEL = "class_label"  # (L,) float multi-hot image-level labels (background included)
ANNOTATOR = "annotator"  # int, the one rater of an image in one-annotator-per-image data
PIXEL_LABELLED = "pixel_labelled"  # bool, whether the sample carries pixel labels (semi-supervised data)
PRED = "pred"
