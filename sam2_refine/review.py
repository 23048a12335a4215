"""Checking every refinement against the outline it came from.

SAM2 errs on cells in known ways: a box prompt grabs the neighbouring cells too, keeps
only an inner part (the nucleus), segments the neighbour, or finds nothing. Each of
these leaves a trace that needs no trust in the model: the refined outline lies far
outside its original, leaves much of the original empty, or covers another object's
refined outline. A refinement with any such trace is *doubtful*, and a doubtful
refinement never replaces its original.

A rough original is normal, not a trace: people draw boxes loose (up to ~30 % of the
cell's diameter on a side) and outlines a little inside or well outside the cell. So each
allowance grows with the object, and a box (which says only where the cell's extremes
lie, within its sides) is judged differently from a drawn outline (which says where its
edge runs):

- a box: the refinement may not spill far past the box's sides, and no side of the box
  may lie farther from the refinement than people leave around a cell of its size;
- a drawn outline: the refinement may not spill far past it, and the outline may not lie,
  on average along the refinement's edge, farther outside it than people draw.

An original is judged clipped to the image, as the refinement is; the refinement's edge
along the image's edge counts for nothing (the cell goes on beyond it), and a refinement
that reaches the image's edge is not judged by its box's margins (how large the cell is,
so how loose its box may be, is unknown there).

The thresholds are passed in (`Thresholds`; the engine takes the job's from its settings),
to the review's two entry points: `judge_object`, one refinement on its own (the engine judges
each of SAM2's masks for an object with it, to choose among them), and `review_location`, a
location's outcomes together (those not judged yet are judged, then the overlap check,
overlap.py, runs across them).

All geometry is in image pixels (x = column, y = row). The thresholds are fitted by
`python -m tests.calibration` on synthetic cells 8-150 px across outlined as people
outline them, and reported on a held-out half; README "Guarantees" quotes the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from .drawn import (  # noqa: F401 (the review's names for them, as before)
    FrameSize, _as_array, _largest_polygon, original_outline, original_outlines, outline_points, within_frame,
    within_frame_all,
)
from .outcome import Outcome, Reason
from .overlap import with_overlap_doubts
_ON_EDGE = 1e-6  # pixels: a coordinate this close to the image's edge lies on it


@dataclass(frozen=True)
class Thresholds:
    """Where a refinement becomes doubtful. `*_px` are pixels; `*_share` are shares of a
    size: an original's or a refinement's `outline_size`."""

    # Spills outside: more than `*_outside_share` of the refined area lies outside the
    # original grown by `*_growth_px` + `*_growth_share` x the original's size.
    box_growth_px: float = 0.0
    box_growth_share: float = 0.07
    box_outside_share: float = 0.05
    drawn_growth_px: float = 1.0
    drawn_growth_share: float = 0.17
    drawn_outside_share: float = 0.05
    # Much smaller (a box): a side of the box lies farther from the refinement than
    # `box_margin_px` + `box_margin_share` x the refinement's size.
    box_margin_px: float = 1.5
    box_margin_share: float = 0.42
    # Much smaller (a drawn outline): the outline lies farther outside the refinement, on
    # average along the refinement's edge, than `drawn_gap_px` + `drawn_gap_share` x its size.
    drawn_gap_px: float = 1.5
    drawn_gap_share: float = 0.17
    # Two refined outlines overlap when their intersection exceeds this share of the smaller.
    max_overlap_share: float = 0.5
    # SAM2's own scores, when the predictor gives them. SAM2 itself treats an object
    # score <= 0 as "no object"; an IoU estimate below 0.5 means it expects to be wrong
    # more than right (not measured here: no official weights were available).
    min_predicted_iou: float = 0.5
    min_object_score: float = 0.0


DEFAULT_THRESHOLDS = Thresholds()

# One reason per doubtful object in messages: the first of its reasons in this order.
REASON_ORDER = (
    Reason.TOO_COARSE,
    Reason.NO_OBJECT,
    Reason.SPILLS_OUTSIDE,
    Reason.MUCH_SMALLER,
    Reason.OVERLAPS_ANOTHER,
    Reason.LOW_PREDICTED_IOU,
    Reason.REACHES_VIEW_EDGE,
)

ADVICE = {
    Reason.DEGENERATE: "Their outlines have fewer than 3 points or no area; redraw them.",
    Reason.OUTSIDE: "Their outlines lie outside the image.",
    Reason.EMPTY_MASK: "SAM2 found nothing in their boxes; try another model or a looser outline.",
    Reason.VANISHED: "Their refined outlines disappeared after negative padding; reduce it.",
    Reason.TOO_COARSE: (
        "They span only a few of SAM2's mask pixels at this resolution (its masks are 256 x 256 "
        "pixels over what it sees); use Resolution 'Auto', which looks closer at small objects."
    ),
    Reason.SPILLS_OUTSIDE: "SAM2 probably took in neighbouring cells, or outlined a neighbour instead.",
    Reason.MUCH_SMALLER: (
        "SAM2 probably kept only an inner part of the cell (or a smaller object inside the outline): "
        "the original leaves more room around it than people leave around a cell."
    ),
    Reason.OVERLAPS_ANOTHER: "Two originals probably outline the same cell, or one lies within its neighbours' outlines.",
    Reason.LOW_PREDICTED_IOU: "SAM2 itself rated its mask as poor.",
    Reason.NO_OBJECT: "SAM2 itself saw no object in the box.",
    Reason.REACHES_VIEW_EDGE: "The refined outline reaches the edge of what SAM2 saw; it may be cut.",
}


# An object whose box spans fewer of SAM2's low-resolution mask pixels than this, along
# its shorter side, cannot be outlined at that resolution: TOO_COARSE. Below
# SIZE_BLUR_SPAN, an outline much smaller than its original, or none, is put down to the
# resolution too. (A perfect mask sampled at SAM2's resolution has a median IoU with the
# true outline of 0.80 at a span of 2.6, 0.92 at 3.8, 0.94 at 4.5 and 0.98 at 7.7:
# `.venv/bin/python -m tests.measure_coarseness`.)
COARSE_SPAN = 4.0
SIZE_BLUR_SPAN = 8.0
# Below SIZE_BLUR_SPAN, these are put down to SAM2's resolution (TOO_COARSE).
SIZE_REASONS = (Reason.MUCH_SMALLER, Reason.EMPTY_MASK)


def _percent(share: float) -> str:
    return f"{100 * share:g} %"


_T = DEFAULT_THRESHOLDS
# What each reason in the job's messages means: the rule behind it, for the worker page.
MEANINGS = {
    Reason.DEGENERATE: "Skipped: the original has fewer than 3 points, or no width or height, so it gives no box to prompt with.",
    Reason.OUTSIDE: "Skipped: the original's box lies entirely outside the image.",
    Reason.EMPTY_MASK: "Skipped: SAM2's mask for the box, and each of its alternative masks, is empty or fails the checks below.",
    Reason.VANISHED: "Skipped: the refined outline disappeared when shrunk by a negative Padding.",
    Reason.TOO_COARSE: (
        f"Doubtful, or skipped when there is no outline: the original's box spans fewer than {COARSE_SPAN:g} of "
        f"SAM2's mask pixels across (its masks are 256 x 256 over what it sees), or fewer than {SIZE_BLUR_SPAN:g} "
        "and the outline came out much smaller than the original or empty, which at that resolution is the "
        "resolution's doing. SAM2's alternative masks are not tried: they share the resolution."
    ),
    Reason.SPILLS_OUTSIDE: (
        f"Doubtful: more than {_percent(_T.box_outside_share)} (box) or {_percent(_T.drawn_outside_share)} "
        "(drawn outline) of the refined area lies outside the original grown by a margin that grows with its "
        f"size ({_T.box_growth_px:g} px + {_percent(_T.box_growth_share)} of a box's size; {_T.drawn_growth_px:g} "
        f"px + {_percent(_T.drawn_growth_share)} of a drawn outline's). A mask still going on where that is "
        "certain is not followed further: it is cut there and never replaces its original."
    ),
    Reason.MUCH_SMALLER: (
        "Doubtful: a side of the original box lies farther from the refined outline than people leave around "
        f"a cell of its size ({_T.box_margin_px:g} px + {_percent(_T.box_margin_share)} of the outline's size), "
        "or a drawn original lies on average farther outside it than people draw "
        f"({_T.drawn_gap_px:g} px + {_percent(_T.drawn_gap_share)})."
    ),
    Reason.OVERLAPS_ANOTHER: (
        "Doubtful: it and another refined outline at its location (in this run, or accepted by an earlier "
        "run with the same settings) share more than half of the smaller of the two, and the other one is "
        "better: free of other doubts, or agreeing better with its own original. Or, with outlines kept "
        "apart (the default), nothing of it is left once it is split from its neighbours' outlines: it is "
        "kept as SAM2 found it."
    ),
    Reason.LOW_PREDICTED_IOU: f"Doubtful: SAM2's own estimate of the mask's IoU is below {_T.min_predicted_iou:g}.",
    Reason.NO_OBJECT: "Doubtful: SAM2's object score says there is no object in the box.",
    Reason.REACHES_VIEW_EDGE: (
        "Doubtful: the mask goes on past the edge of the window SAM2 saw (not the image's edge); the "
        "outline is cut there and never replaces its original."
    ),
}


def primary_reason(doubts: tuple[Reason, ...]) -> Reason:
    return min(doubts, key=lambda reason: REASON_ORDER.index(reason) if reason in REASON_ORDER else len(REASON_ORDER))


def zone_bounds(originals: list[Polygon | None], thresholds: Thresholds = DEFAULT_THRESHOLDS
                ) -> list[tuple[float, float, float, float] | None]:
    """The bounds (x0, y0, x1, y1) of each original's `allowed_zone` (None for None): a
    round buffer's bounds are the original's grown by the buffer distance (`spill_growth`,
    computed for all of them at once, with the same arithmetic)."""
    present = [k for k, original in enumerate(originals) if original is not None]
    found: list[tuple[float, float, float, float] | None] = [None] * len(originals)
    if not present:
        return found
    array = _as_array([originals[k] for k in present])
    x0, y0, x1, y1 = shapely.bounds(array).T
    area = shapely.area(array)
    width, height = x1 - x0, y1 - y0
    box_like = area >= 0.99 * width * height  # is_box
    size = np.maximum(np.maximum(width, height), 2.0 * np.sqrt(area / math.pi))  # outline_size
    growth = np.where(box_like, thresholds.box_growth_px + thresholds.box_growth_share * size,
                      thresholds.drawn_growth_px + thresholds.drawn_growth_share * size)
    for k, bounds in zip(present, np.column_stack([x0 - growth, y0 - growth, x1 + growth, y1 + growth]).tolist()):
        found[k] = tuple(bounds)
    return found


def equivalent_diameter(outline: Polygon) -> float:
    return 2.0 * math.sqrt(outline.area / math.pi)


def outline_size(outline: Polygon) -> float:
    """An outline's size (pixels): the largest of its width, height and equivalent
    diameter. The extent keeps an elongated cell, or one cut by the image's edge, at the
    size of its long axis."""
    x0, y0, x1, y1 = outline.bounds
    return max(x1 - x0, y1 - y0, equivalent_diameter(outline))


def is_box(original: Polygon) -> bool:
    """An axis-aligned rectangle (a rectangle annotation, or a polygon drawn as a box)."""
    x0, y0, x1, y1 = original.bounds
    return original.area >= 0.99 * (x1 - x0) * (y1 - y0)


def outside_share(refined: Polygon, original: Polygon, growth: float) -> float:
    """The share of the refined area outside the original grown by `growth` pixels."""
    return _share_outside(refined, original.buffer(growth))


def _share_outside(refined: Polygon, zone: Polygon) -> float:
    return refined.difference(zone).area / refined.area if refined.area > 0 else 0.0


def spill_growth(original: Polygon, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """How far (pixels) past its original a refinement may reach without spilling."""
    if is_box(original):
        return thresholds.box_growth_px + thresholds.box_growth_share * outline_size(original)
    return thresholds.drawn_growth_px + thresholds.drawn_growth_share * outline_size(original)


def allowed_zone(original: Polygon, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Polygon:
    """Where a refinement may lie without spilling: the original grown by `spill_growth`."""
    return original.buffer(spill_growth(original, thresholds))


class AllowedZone:
    """An original's `allowed_zone`, made only when it is needed: the zone is the original
    grown, so a refinement inside the original itself (about half of them) lies inside it,
    which is told without making it."""

    def __init__(self, original: Polygon, thresholds: Thresholds = DEFAULT_THRESHOLDS):
        self.original = original
        self._thresholds = thresholds
        self._polygon: Polygon | None = None

    @property
    def polygon(self) -> Polygon:
        if self._polygon is None:
            self._polygon = allowed_zone(self.original, self._thresholds)
        return self._polygon

    def contains(self, refined: Polygon) -> bool:
        """`self.polygon.contains(refined)`."""
        if self._polygon is None and _within_bounds(refined, self.original) \
                and spill_growth(self.original, self._thresholds) > 0 and self.original.contains(refined):
            return True
        return self.polygon.contains(refined)


def _within_bounds(inner: Polygon, outer: Polygon) -> bool:
    x0, y0, x1, y1 = inner.bounds
    ox0, oy0, ox1, oy1 = outer.bounds
    return ox0 <= x0 and oy0 <= y0 and x1 <= ox1 and y1 <= oy1


def spills(
    refined: Polygon, original: Polygon, zone: Polygon | AllowedZone | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> bool:
    """Whether more of `refined` lies outside the original's `allowed_zone` (given, made
    when needed, or made here) than the original's kind allows."""
    if refined.area <= 0:
        return False
    limit = thresholds.box_outside_share if is_box(original) else thresholds.drawn_outside_share
    zone = AllowedZone(original, thresholds) if zone is None else zone
    if zone.contains(refined):  # nothing outside (most refinements: a few times cheaper to tell)
        return False
    return _share_outside(refined, zone.polygon if isinstance(zone, AllowedZone) else zone) > limit


def cut_by_frame(refined: Polygon, frame_size: FrameSize | None) -> bool:
    """Whether the refinement reaches the image's edge (the cell may go on beyond it)."""
    if frame_size is None:
        return False
    width, height = frame_size
    x0, y0, x1, y1 = refined.bounds
    return x0 <= _ON_EDGE or y0 <= _ON_EDGE or x1 >= width - _ON_EDGE or y1 >= height - _ON_EDGE


def widest_margin(refined: Polygon, original: Polygon) -> float:
    """The largest distance (pixels) from a side of the original's box in to the
    refinement's extreme on that side; negative where the refinement reaches past it."""
    rx0, ry0, rx1, ry1 = refined.bounds
    ox0, oy0, ox1, oy1 = original.bounds
    return max(rx0 - ox0, ry0 - oy0, ox1 - rx1, oy1 - ry1)


def free_edge_length(refined: Polygon, frame_size: FrameSize | None) -> float:
    """The length of the refinement's outline that does not run along the image's edge."""
    if not cut_by_frame(refined, frame_size):  # no edge runs along the image's edge
        return refined.exterior.length
    width, height = frame_size
    points = np.asarray(refined.exterior.coords)
    start, stop = points[:-1], points[1:]
    on_edge = np.zeros(len(start), dtype=bool)
    for axis, limit in ((0, 0.0), (0, float(width)), (1, 0.0), (1, float(height))):
        on_edge |= (np.abs(start[:, axis] - limit) < _ON_EDGE) & (np.abs(stop[:, axis] - limit) < _ON_EDGE)
    lengths = np.hypot(*(stop - start).T)
    return float(lengths[~on_edge].sum())


def mean_gap(refined: Polygon, original: Polygon, frame_size: FrameSize | None = None) -> float:
    """How far (pixels) a drawn original lies outside the refinement on average along the
    refinement's edge: the original's area outside the refinement per unit of the
    refinement's free edge (`free_edge_length`). A disc drawn d px too wide: d + d^2 / 2r."""
    length = free_edge_length(refined, frame_size)
    empty = original.difference(refined).area
    return empty / length if length > 0 else math.inf


def score_doubts(outcome: Outcome, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Reason]:
    doubts = []
    if outcome.object_score is not None and outcome.object_score <= thresholds.min_object_score:
        doubts.append(Reason.NO_OBJECT)
    if outcome.predicted_iou is not None and outcome.predicted_iou < thresholds.min_predicted_iou:
        doubts.append(Reason.LOW_PREDICTED_IOU)
    return doubts


def shape_doubts(
    refined: Polygon,
    original: Polygon | None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    frame_size: FrameSize | None = None,
    zone: Polygon | AllowedZone | None = None,
) -> list[Reason]:
    """The shape signals of one refinement (unpadded, clipped to the image) against its
    original (as `original_outline` gives it; clipped here to the image when `frame_size`,
    (width, height), is given). `zone`: the clipped original's `allowed_zone`, if made."""
    original = within_frame(original, frame_size)
    if original is None:
        return []
    doubts = []
    box_like = is_box(original)
    if spills(refined, original, zone, thresholds):
        doubts.append(Reason.SPILLS_OUTSIDE)
    size = outline_size(refined)
    if box_like:
        # A box is drawn about the whole cell; where the image's edge cuts the cell, how
        # large it is (so how loose the box may be) is unknown.
        smaller = not cut_by_frame(refined, frame_size) and (
            widest_margin(refined, original) > thresholds.box_margin_px + thresholds.box_margin_share * size)
    else:
        smaller = mean_gap(refined, original, frame_size) > thresholds.drawn_gap_px + thresholds.drawn_gap_share * size
    if smaller:
        doubts.append(Reason.MUCH_SMALLER)
    return doubts


def object_doubts(
    outcome: Outcome,
    original: Polygon | None,
    frame_size: FrameSize | None = None,
    zone: Polygon | AllowedZone | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> list[Reason]:
    """Every doubt about one refinement on its own (the engine's, SAM2's scores, the shape
    checks against its original), in the order found; none added to a skip. Pure: the
    engine applies it to each of SAM2's masks for an object to choose among them. The
    refinement judged is SAM2's outline before padding (`Outcome.outline_found`)."""
    found = list(outcome.doubts)
    polygon = outcome.outline_found
    if polygon is None:
        return found
    for reason in score_doubts(outcome, thresholds) + shape_doubts(polygon, original, thresholds, frame_size, zone):
        if reason not in found:
            found.append(reason)
    return found


def unpadded(polygon: Polygon | None, padding: float, frame_size: FrameSize | None = None) -> Polygon | None:
    """The refined outline before the user's padding (pixels): the checks compare what
    SAM2 found, not the growth the user asked for. Where the padded outline was clipped
    at the image's edge, that edge stays where it is (the cell went on beyond it)."""
    if polygon is None or padding == 0:
        return polygon
    shape = polygon
    if frame_size is not None and padding > 0:
        width, height = frame_size
        # Outside the image counts as inside the outline, so erosion starts only from
        # the outline's edges within the image.
        beyond = box(-padding - 1, -padding - 1, width + padding + 1, height + padding + 1).difference(
            box(0, 0, width, height))
        shape = polygon.union(beyond)
    shape = shape.buffer(-padding)
    if frame_size is not None:
        shape = shape.intersection(box(0, 0, *frame_size))
    return _largest_polygon(shape) or polygon


def judge_object(
    outcome: Outcome,
    original: Polygon | None,
    frame_size: FrameSize | None,
    span: float,
    thresholds: Thresholds,
    zone: Polygon | AllowedZone | None = None,
) -> Outcome:
    """One refinement judged on its own (`object_doubts`), marked `judged`. An object whose
    box spans `span` of SAM2's mask pixels is too coarse at that resolution below
    COARSE_SPAN, and its size doubts are put down to the resolution below SIZE_BLUR_SPAN:
    then TOO_COARSE comes first (and is the skip reason of a mask with no outline)."""
    blurred = span < SIZE_BLUR_SPAN
    if outcome.polygon is None:
        coarse = span < COARSE_SPAN or (blurred and outcome.reason in SIZE_REASONS)
        return Outcome(None, Reason.TOO_COARSE, judged=True) if coarse else replace(outcome, judged=True)
    doubts = object_doubts(outcome, original, frame_size, zone, thresholds)
    if span < COARSE_SPAN or (blurred and any(reason in SIZE_REASONS for reason in doubts)):
        doubts = [Reason.TOO_COARSE] + [reason for reason in doubts if reason not in SIZE_REASONS]
    return replace(outcome, doubts=tuple(doubts), judged=True)


def review_location(
    originals: list[Polygon | None],
    outcomes: list[Outcome],
    padding: float = 0.0,
    accepted_elsewhere: list[Polygon] = (),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    frame_size: FrameSize | None = None,
) -> list[Outcome]:
    """The outcomes of one location with every doubt added (skips are left as they are):
    each outcome not yet `judged` on its own is judged here (`object_doubts`), then the
    location's overlap check runs across all of them. `padding` is the user's Padding,
    which the outcomes' polygons include (an outcome carrying SAM2's outline before
    padding, `found`, is judged on that); `frame_size` is the image's (width, height), to
    which originals are clipped as refinements are."""
    originals = [within_frame(original, frame_size) for original in originals]
    refined = [outcome.outline_found if outcome.judged or outcome.found is not None
               else unpadded(outcome.polygon, padding, frame_size) for outcome in outcomes]
    doubts = [list(outcome.doubts) if outcome.judged or polygon is None
              else object_doubts(replace(outcome, found=polygon), original, frame_size, thresholds=thresholds)
              for original, outcome, polygon in zip(originals, outcomes, refined)]
    return with_overlap_doubts(outcomes, refined, doubts, originals, list(accepted_elsewhere),
                               thresholds.max_overlap_share)
