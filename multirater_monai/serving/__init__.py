"""Serving the bundles: MONAI Label's view of a bundle (:class:`BundleInference`) and the label views that show a
multi-rater bundle's extra outputs as label maps."""

from multirater_monai.serving.bundle_inference import (
    BundleInference,
    SetAsided,
    ToLabelMapd,
    consensus_labels,
    model_spatial_dims,
    served_bundles,
    write_label_nifti,
)
from multirater_monai.serving.label_views import (
    ChannelIndexView,
    DisagreementView,
    LabelView,
    LevelsView,
    RaterSegmentationViews,
    expand_views,
    level_names,
)

__all__ = [
    "BundleInference",
    "ChannelIndexView",
    "DisagreementView",
    "LabelView",
    "LevelsView",
    "RaterSegmentationViews",
    "SetAsided",
    "ToLabelMapd",
    "consensus_labels",
    "expand_views",
    "level_names",
    "model_spatial_dims",
    "served_bundles",
    "write_label_nifti",
]
