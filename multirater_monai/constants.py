"""Names and values of the project's data contract (see ``DESIGN.md``)."""

# Value of every voxel of a rater channel whose rater did not annotate the image.
MISSING_LABEL = -1

# Dictionary keys of one sample.
IMAGE = "image"
LABEL = "label"  # (R, *S) integer class indices, one channel per rater
RATER_MASK = "rater_mask"  # (R,) bool, which raters annotated the sample
GT = "gt"  # (1, *S) truth, where known
FUSED_LABEL = "fused_label"  # (L, *S) float class probabilities from label fusion
TRUE_CM = "true_cm"  # (R, L, L) true per-image confusion matrices (synthetic data)
PRED = "pred"
