"""Dataset readers, datalist builders and the synthetic multi-rater data generator."""

from .synthetic import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SPLIT_SIZES,
    GENERATOR_VERSION,
    LAYOUTS,
    LESION_RATERS,
    assign_raters,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    make_synthetic_image,
    synthetic_parameters,
)
from .datalist import (
    DatalistError,
    ImageGeometry,
    check_datalist,
    list_images,
    load_multirater_datalist,
    read_datalist,
    read_geometry,
)
from .rater_subsets import keep_raters
from .real import PrepareError, PrepareReport, prepare_dataset
from .semi_supervised import MixedSampler, keep_pixel_labels, mixed_sampler, semi_supervised_datalist, set_labelled_share
