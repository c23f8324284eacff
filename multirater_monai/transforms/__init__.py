"""Multi-rater dictionary transforms (data contract in ``docs/design.md``)."""

from .raters import (
    DEFAULT_RATERS,
    RATERS,
    TAX_RATERS,
    SimplifyRater,
    BlankRater,
    ComposeRaters,
    ContrastRater,
    FractureRater,
    MissRater,
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
from .rater_labels import AnnotatorIndexd, LoadRaterLabelsd, RaterMaskd, rater_mask_of
from .class_labels import ClassLabelsd, class_labels_from_raters
from .confusion import ImageConfusionMatrixd, SplitOutputsd, ToConfusionMatrixd
from .recurrence import RecurrenceOutputsd
