"""multirater_monai: learning segmentation from several disagreeing annotators, on MONAI.

The package holds everything the bundles in ``bundles/`` configure: dataset readers and the
synthetic multi-rater generator (:mod:`~multirater_monai.data`), dictionary transforms for the data
contract (:mod:`~multirater_monai.transforms`), label fusion (:mod:`~multirater_monai.fusion`),
metrics (:mod:`~multirater_monai.metrics`) and Ignite engines (:mod:`~multirater_monai.engines`).
"""

__version__ = "0.1.0"
