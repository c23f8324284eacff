"""Multi-rater dictionary transforms (data contract in ``DESIGN.md``)."""

from .raters import (
    DEFAULT_RATERS,
    RATERS,
    BlankRater,
    ComposeRaters,
    ContrastRater,
    FractureRater,
    GoodRater,
    MaskRater,
    OverRater,
    PerfectRater,
    Rater,
    RaterFn,
    SimulateRatersd,
    SimulateRatersD,
    SimulateRatersDict,
    UnderRater,
    WrongRater,
    make_rater,
    rater_rng,
)
from .fusion import FuseRatersd
from .rater_labels import LoadRaterLabelsd, RaterMaskd, rater_mask_of
from .confusion import ImageConfusionMatrixd, SplitOutputsd, ToConfusionMatrixd
