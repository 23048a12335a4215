"""What became of one original: its refined polygon, or the reason it has none, and the
doubts that keep a refined polygon from replacing it.

Shared by the engine (which makes outcomes), the review (which adds doubts) and the
worker (which decides what to save); it depends on none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from shapely.geometry import Polygon


class Reason(StrEnum):
    """Why an original has no refined polygon (skips), or why its refined polygon is
    doubtful (doubts). The values are what messages count."""

    # Skips: no refined polygon.
    DEGENERATE = "degenerate prompt"
    OUTSIDE = "outside the image"
    EMPTY_MASK = "empty mask"
    VANISHED = "vanished after padding"
    # A skip without a polygon, a doubt with one: the object spans too few of SAM2's
    # mask pixels at the chosen resolution to be outlined.
    TOO_COARSE = "too coarse at this resolution"
    # Doubts: a refined polygon exists, but it may not replace its original.
    REACHES_VIEW_EDGE = "reaches the edge of SAM2's view"
    SPILLS_OUTSIDE = "spills outside the original"
    MUCH_SMALLER = "much smaller than the original"
    OVERLAPS_ANOTHER = "overlaps another refined outline"
    LOW_PREDICTED_IOU = "low SAM2 confidence"
    NO_OBJECT = "SAM2 sees no object"


@dataclass(frozen=True)
class Outcome:
    """The result for one original: a polygon in image coordinates, or the reason for none.

    `polygon` is what is saved (padded and smoothed as the user asked); `found` is SAM2's
    outline before the user's padding and smoothing, what the review compares with the
    original (None: the same as `polygon`). `doubts` lists why the polygon may not replace
    its original (empty: accepted so far). `cut` is set when the outline stops where SAM2's
    mask goes on (at the edge of its view, or where the engine stopped following a mask that
    spills far outside its original): such an outline never replaces its original.
    `recovered` names the primary mask's reason when one of SAM2's alternative masks was
    taken instead. The scores are SAM2's own for the mask used, None when not given.
    `logits` reads SAM2's logits for the mask used over the outline (contacts.FieldReader:
    image pixels in, values at their centres out), for the split between touching cells;
    None where not kept.
    """

    polygon: Polygon | None
    reason: Reason | None = None
    doubts: tuple[Reason, ...] = ()
    predicted_iou: float | None = None
    object_score: float | None = None
    found: Polygon | None = None
    cut: bool = False
    recovered: Reason | None = None
    logits: Callable[[tuple[int, int, int, int]], np.ndarray | None] | None = field(
        default=None, compare=False, repr=False)

    @property
    def outline_found(self) -> Polygon | None:
        return self.found if self.found is not None else self.polygon

    @property
    def accepted(self) -> bool:
        return self.polygon is not None and not self.doubts
