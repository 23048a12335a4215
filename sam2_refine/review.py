"""Checking every refinement against the outline it came from.

SAM2 errs on cells in known ways: a box prompt grabs the neighbouring cells too, keeps
only an inner part (the nucleus), segments the neighbour, or finds nothing. Each of
these leaves a trace that needs no trust in the model: the refined outline lies far
outside its original, is much smaller than it, or covers another object's refined
outline. A refinement with any such trace is *doubtful*, and a doubtful refinement
never replaces its original.

All geometry is in image pixels (x = column, y = row). The thresholds come from
`python -m tests.measure_review` (synthetic irregular cells 8-60 px across, rough
originals as users draw them, and SAM2's typical errors); README "Guarantees" quotes
the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import shapely
from shapely.geometry import Polygon, box
from shapely.strtree import STRtree

from .outcome import Outcome, Reason
from .geometry import coordinates_to_points


# Rough originals are this loose, in pixels, without being wrong: a box 1-3 px loose
# around the cell, or a hand-drawn outline a little inside or outside it.
LOOSENESS_PX = 3.0


@dataclass(frozen=True)
class Thresholds:
    # How far a refined outline may reach past its original: LOOSENESS_PX plus this share
    # of the original's equivalent diameter (hand-drawn outlines of big cells wander more).
    looseness_share: float = 0.1
    # Doubtful when more than this share of the refined area lies outside the original
    # grown by the allowed looseness.
    max_outside_share: float = 0.2
    # Doubtful when the refined area is less than this share of the smallest cell the
    # original can mean (`smallest_cell_area`).
    min_area_share: float = 0.7
    drawn_slop_px: float = 1.5
    drawn_slop_share: float = 0.05
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
    Reason.SPILLS_OUTSIDE: "SAM2 probably took in neighbouring cells.",
    Reason.MUCH_SMALLER: "SAM2 probably kept only an inner part of the cell.",
    Reason.OVERLAPS_ANOTHER: "Two originals probably outline the same cell.",
    Reason.LOW_PREDICTED_IOU: "SAM2 itself rated its mask as poor.",
    Reason.NO_OBJECT: "SAM2 itself saw no object in the box.",
    Reason.REACHES_VIEW_EDGE: "The refined outline reaches the edge of what SAM2 saw; it may be cut.",
}


def primary_reason(doubts: tuple[Reason, ...]) -> Reason:
    return min(doubts, key=lambda reason: REASON_ORDER.index(reason) if reason in REASON_ORDER else len(REASON_ORDER))


def original_outline(document: dict) -> Polygon | None:
    """The area an original outlines: a rectangle's box, a polygon's interior (repaired
    if it crosses itself); None when it outlines no area."""
    points = coordinates_to_points(document.get("coordinates") or [])
    if len(points) == 0:
        return None
    if document.get("shape") == "rectangle":
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        return box(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
    if len(points) < 3:
        return None
    outline = Polygon(points)
    if not outline.is_valid:
        outline = shapely.make_valid(outline)
        polygons = [g for g in getattr(outline, "geoms", [outline]) if isinstance(g, Polygon)]
        outline = max(polygons, key=lambda p: p.area) if polygons else None
    return outline if outline is not None and outline.area > 0 else None


def equivalent_diameter(outline: Polygon) -> float:
    return 2.0 * math.sqrt(outline.area / math.pi)


def allowed_looseness(original: Polygon, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """How far (pixels) a refined outline may reach past its rough original."""
    return LOOSENESS_PX + thresholds.looseness_share * equivalent_diameter(original)


def allowed_zone(original: Polygon, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Polygon:
    """Where a refined outline may lie without spilling: the original grown by its looseness."""
    return original.buffer(allowed_looseness(original, thresholds))


def spills(refined: Polygon, zone: Polygon, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """Whether more than the allowed share of `refined` lies outside `zone` (`allowed_zone`)."""
    return refined.area > 0 and refined.difference(zone).area > thresholds.max_outside_share * refined.area


def outside_share(refined: Polygon, original: Polygon, looseness: float) -> float:
    """The share of the refined area outside the original grown by `looseness`."""
    if refined.area <= 0:
        return 0.0
    return refined.difference(original.buffer(looseness)).area / refined.area


def is_box(original: Polygon) -> bool:
    """An axis-aligned rectangle (a rectangle annotation, or a polygon drawn as a box)."""
    x0, y0, x1, y1 = original.bounds
    return len(original.exterior.coords) <= 5 and original.area >= 0.99 * (x1 - x0) * (y1 - y0)


def smallest_cell_area(original: Polygon, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """The area of the smallest cell a rough original can mean (pixels²).

    A box may be LOOSENESS_PX loose on every side, and a cell fills about pi/4 of its
    box; a drawn outline may lie a little outside the cell (`drawn_slop_px` plus
    `drawn_slop_share` of its equivalent diameter). Never below a tenth of the original.
    """
    if is_box(original):
        x0, y0, x1, y1 = original.bounds
        area = max(x1 - x0 - 2 * LOOSENESS_PX, 0.0) * max(y1 - y0 - 2 * LOOSENESS_PX, 0.0) * math.pi / 4
    else:
        slop = thresholds.drawn_slop_px + thresholds.drawn_slop_share * equivalent_diameter(original)
        area = original.buffer(-slop).area
    return max(area, 0.1 * original.area)


def area_share(refined: Polygon, original: Polygon, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> float:
    """The refined area over the smallest cell the original can mean."""
    return refined.area / smallest_cell_area(original, thresholds)


def score_doubts(outcome: Outcome, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Reason]:
    doubts = []
    if outcome.object_score is not None and outcome.object_score <= thresholds.min_object_score:
        doubts.append(Reason.NO_OBJECT)
    if outcome.predicted_iou is not None and outcome.predicted_iou < thresholds.min_predicted_iou:
        doubts.append(Reason.LOW_PREDICTED_IOU)
    return doubts


def shape_doubts(refined: Polygon, original: Polygon | None, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Reason]:
    if original is None:
        return []
    looseness = allowed_looseness(original, thresholds)
    doubts = []
    if outside_share(refined, original, looseness) > thresholds.max_outside_share:
        doubts.append(Reason.SPILLS_OUTSIDE)
    if area_share(refined, original, thresholds) < thresholds.min_area_share:
        doubts.append(Reason.MUCH_SMALLER)
    return doubts


def object_doubts(outcome: Outcome, original: Polygon | None, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Reason]:
    """Every doubt about one refinement on its own (the engine's, SAM2's scores, the shape
    checks against its original), in the order found; none for a skip. Pure: this is what
    the engine applies to each of SAM2's masks for an object to choose among them."""
    found = list(outcome.doubts)
    polygon = outcome.outline_found
    if polygon is None:
        return found
    for reason in score_doubts(outcome, thresholds) + shape_doubts(polygon, original, thresholds):
        if reason not in found:
            found.append(reason)
    return found


def _agreement(refined: Polygon, original: Polygon | None) -> float:
    """IoU of a refined outline with its original; how well it matches what the user drew."""
    if original is None:
        return 0.0
    union = refined.union(original).area
    return refined.intersection(original).area / union if union > 0 else 0.0


def overlap_doubts(
    refined: list[Polygon | None],
    ranking: list[tuple],
    accepted_elsewhere: list[Polygon] = (),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> set[int]:
    """Indices of refined outlines that overlap a better one.

    Objects are taken best first (`ranking`, smaller is better); one that overlaps an
    outline already kept is doubtful, so two prompts on one cell leave one accepted
    outline. `accepted_elsewhere` holds outlines accepted earlier (another run) that
    count as kept from the start.
    """
    present = [i for i, polygon in enumerate(refined) if polygon is not None]
    everything = [refined[i] for i in present] + list(accepted_elsewhere)
    if len(everything) < 2:
        return set()
    tree = STRtree(everything)
    kept = set(range(len(present), len(everything)))
    position_of = {index: position for position, index in enumerate(present)}
    doubtful: set[int] = set()
    for index in sorted(present, key=lambda i: ranking[i]):
        polygon = refined[index]
        clash = False
        for other in tree.query(polygon):
            other = int(other)
            if other == position_of[index] or other not in kept:
                continue
            smaller = min(polygon.area, everything[other].area)
            if smaller > 0 and polygon.intersection(everything[other]).area > thresholds.max_overlap_share * smaller:
                clash = True
                break
        if clash:
            doubtful.add(index)
        else:
            kept.add(position_of[index])
    return doubtful


def unpadded(polygon: Polygon | None, padding: float) -> Polygon | None:
    """The refined outline before the user's padding (pixels): the checks compare what
    SAM2 found, not the growth the user asked for."""
    if polygon is None or padding == 0:
        return polygon
    shape = polygon.buffer(-padding)
    if shape.is_empty:
        return polygon
    parts = [shape] if isinstance(shape, Polygon) else [g for g in shape.geoms if isinstance(g, Polygon)]
    return max(parts, key=lambda part: part.area) if parts else polygon


def review_location(
    originals: list[Polygon | None],
    outcomes: list[Outcome],
    padding: float = 0.0,
    accepted_elsewhere: list[Polygon] = (),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> list[Outcome]:
    """The outcomes of one location with every doubt added (skips are left as they are).
    `padding` is the user's Padding, which the outcomes' polygons include; an outcome that
    carries SAM2's outline before padding (`found`) is judged on that."""
    refined = [outcome.found if outcome.found is not None else unpadded(outcome.polygon, padding)
               for outcome in outcomes]
    doubts = [object_doubts(replace(outcome, found=polygon), original, thresholds) if polygon is not None
              else list(outcome.doubts) for original, outcome, polygon in zip(originals, outcomes, refined)]
    return with_overlap_doubts(outcomes, refined, doubts, originals, accepted_elsewhere, thresholds)


def with_overlap_doubts(
    outcomes: list[Outcome],
    refined: list[Polygon | None],
    doubts: list[list[Reason]],
    originals: list[Polygon | None],
    accepted_elsewhere: list[Polygon] = (),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> list[Outcome]:
    """`outcomes` with their per-object `doubts` and the overlap check of the location:
    `refined` are the outlines judged (before padding), `accepted_elsewhere` outlines an
    earlier run accepted at this location."""
    ranking = [
        (bool(doubts[i]), -_agreement(polygon, originals[i]) if polygon is not None else 0.0, i)
        for i, polygon in enumerate(refined)
    ]
    for index in overlap_doubts(refined, ranking, accepted_elsewhere, thresholds):
        if Reason.OVERLAPS_ANOTHER not in doubts[index]:
            doubts[index].append(Reason.OVERLAPS_ANOTHER)
    return [
        replace(outcome, doubts=tuple(found)) if outcome.polygon is not None else outcome
        for outcome, found in zip(outcomes, doubts)
    ]
