"""The per-object checks, on outlines whose answer is known; each threshold just inside
and just outside its boundary."""

from __future__ import annotations

import math

import pytest
from shapely import affinity
from shapely.geometry import Point, Polygon, box

from sam2_refine.engine import Outcome, Reason
from sam2_refine.review import (
    DEFAULT_THRESHOLDS as T, mean_gap, original_outline, outline_size, outside_share, review_location, shape_doubts,
)
from sam2_refine.originals import prompt_coordinates

CELL = Point(100, 100).buffer(10, quad_segs=32)  # a round cell 20 px across
NEIGHBOUR = Point(121, 100).buffer(10, quad_segs=32)
# Just inside / just outside a boundary: this share of the threshold below / above it.
NEAR = 0.02


def doubts(original: Polygon, refined: Polygon | None, frame_size=None, **scores) -> tuple[Reason, ...]:
    (outcome,) = review_location([original], [Outcome(refined, **scores)], frame_size=frame_size)
    return outcome.doubts


def disc(radius: float, cx: float = 500.0, cy: float = 500.0) -> Polygon:
    return Point(cx, cy).buffer(radius, quad_segs=256)


def loose_box(shape: Polygon, left: float, top: float, right: float, bottom: float) -> Polygon:
    x0, y0, x1, y1 = shape.bounds
    return box(x0 - left, y0 - top, x1 + right, y1 + bottom)


def test_rough_originals_of_a_good_refinement_are_not_doubtful():
    assert doubts(loose_box(CELL, 1, 3, 2, 1), CELL) == ()
    assert doubts(CELL.buffer(2), CELL) == ()  # drawn a little outside
    assert doubts(CELL.buffer(-2), CELL) == ()  # drawn a little inside
    small = Point(50, 50).buffer(4)  # a cell 8 px across in a box 3 px loose
    assert doubts(loose_box(small, 3, 3, 3, 3), small) == ()


def test_sam2s_typical_errors_are_doubtful():
    original = loose_box(CELL, 2, 2, 2, 2)
    assert Reason.SPILLS_OUTSIDE in doubts(original, CELL.union(NEIGHBOUR).convex_hull)  # took the neighbour in
    assert Reason.SPILLS_OUTSIDE in doubts(original, NEIGHBOUR)  # the neighbour instead
    assert Reason.MUCH_SMALLER in doubts(original, Point(100, 100).buffer(4))  # the nucleus only


def test_scores_count_only_when_given():
    original = loose_box(CELL, 2, 2, 2, 2)
    assert doubts(original, CELL, predicted_iou=None, object_score=None) == ()
    assert doubts(original, CELL, predicted_iou=0.95, object_score=3.0) == ()
    assert doubts(original, CELL, predicted_iou=0.2, object_score=3.0) == (Reason.LOW_PREDICTED_IOU,)
    assert doubts(original, CELL, predicted_iou=0.9, object_score=-1.0) == (Reason.NO_OBJECT,)


def test_two_prompts_on_one_cell_leave_the_one_closer_to_its_original_accepted():
    drawn, boxed = CELL.buffer(1), loose_box(CELL, 3, 3, 3, 3)
    outcomes = review_location([boxed, drawn, NEIGHBOUR.buffer(1)], [Outcome(CELL), Outcome(CELL), Outcome(NEIGHBOUR)])
    assert [o.doubts for o in outcomes] == [(Reason.OVERLAPS_ANOTHER,), (), ()]


def test_a_doubtful_refinement_does_not_push_out_the_good_one_it_overlaps():
    grabbing = CELL.union(NEIGHBOUR).convex_hull
    outcomes = review_location(
        [loose_box(CELL, 2, 2, 2, 2), loose_box(NEIGHBOUR, 2, 2, 2, 2)], [Outcome(grabbing), Outcome(NEIGHBOUR)]
    )
    assert Reason.SPILLS_OUTSIDE in outcomes[0].doubts and outcomes[1].doubts == ()


def test_skips_and_engine_doubts_are_kept():
    outcomes = review_location(
        [CELL, CELL.buffer(1)], [Outcome(None, Reason.EMPTY_MASK), Outcome(CELL, doubts=(Reason.REACHES_VIEW_EDGE,))]
    )
    assert outcomes[0] == Outcome(None, Reason.EMPTY_MASK)
    assert outcomes[1].doubts == (Reason.REACHES_VIEW_EDGE,)


def test_original_outlines_of_rectangles_and_crossed_polygons():
    rectangle = original_outline({"shape": "rectangle", "coordinates": [{"x": 10, "y": 20}, {"x": 30, "y": 5}]})
    assert rectangle.bounds == (10, 5, 30, 20)
    bow_tie = original_outline({"shape": "polygon", "coordinates": [
        {"x": 0, "y": 0}, {"x": 10, "y": 10}, {"x": 10, "y": 0}, {"x": 0, "y": 10}]})
    assert bow_tie.is_valid and bow_tie.area > 0
    assert original_outline({"shape": "polygon", "coordinates": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]}) is None


def test_a_rectangle_stored_as_two_corners_prompts_with_its_four():
    corners = prompt_coordinates({"shape": "rectangle", "coordinates": [{"x": 30, "y": 5}, {"x": 10, "y": 20}]})
    assert corners == [{"x": 10, "y": 5}, {"x": 30, "y": 5}, {"x": 30, "y": 20}, {"x": 10, "y": 20}]


def test_the_users_padding_is_not_taken_for_an_error():
    original = CELL.buffer(1)
    for padding in (-6.0, 12.0):
        (outcome,) = review_location([original], [Outcome(CELL.buffer(padding))], padding)
        assert outcome.doubts == ()
    (unpadded,) = review_location([original], [Outcome(CELL.buffer(12.0))])
    assert unpadded.doubts == (Reason.SPILLS_OUTSIDE,)


# --- rough originals as people draw them are not doubtful; SAM2's errors are -------------

@pytest.mark.parametrize("diameter", [8, 20, 60, 150])
def test_boxes_up_to_30_percent_loose_on_every_side_are_not_doubtful(diameter):
    cell = disc(diameter / 2)
    assert doubts(loose_box(cell, *[0.3 * diameter] * 4), cell) == ()
    assert doubts(loose_box(cell, 0.3 * diameter, 0, 0, 0), cell) == ()  # loose on one side only


@pytest.mark.parametrize("diameter", [8, 20, 60, 150])
@pytest.mark.parametrize("offset", [-0.15, 0.30])  # share of the radius: drawn inside, drawn outside
def test_outlines_drawn_from_15_percent_inside_to_30_percent_outside_are_not_doubtful(diameter, offset):
    cell = disc(diameter / 2)
    assert doubts(cell.buffer(offset * diameter / 2), cell) == ()


@pytest.mark.parametrize("diameter, area_share", [(20, 0.2), (40, 0.25), (150, 0.25)])
def test_an_inner_part_is_doubtful_even_in_a_tight_box_or_an_outline_drawn_inside(diameter, area_share):
    """In a tight box an inner part leaves (1 - s) / 2 of the cell's diameter on each side
    (s its linear share), which must exceed the margin allowed around a cell its size:
    a fifth of the cell from 20 px, a quarter from 40 px (the pixel allowance)."""
    cell, nucleus = disc(diameter / 2), disc(math.sqrt(area_share) * diameter / 2)
    assert doubts(loose_box(cell, 0, 0, 0, 0), nucleus) == (Reason.MUCH_SMALLER,)
    assert doubts(cell.buffer(-0.15 * diameter / 2), nucleus) == (Reason.MUCH_SMALLER,)


# --- each threshold at its boundary --------------------------------------------------------

def test_box_margin_boundary():
    """A side of the box box_margin_px + box_margin_share x the refinement's size away."""
    refined = disc(30)
    limit = T.box_margin_px + T.box_margin_share * outline_size(refined)
    for factor, expected in ((1 - NEAR, ()), (1 + NEAR, (Reason.MUCH_SMALLER,))):
        assert doubts(loose_box(refined, 0, 0, factor * limit, 0), refined) == expected


def test_drawn_gap_boundary():
    """A drawn disc around a refined disc: mean gap (R^2 - r^2) / 2r against
    drawn_gap_px + drawn_gap_share x the refinement's size."""
    r = 30.0
    refined = disc(r)
    limit = T.drawn_gap_px + T.drawn_gap_share * outline_size(refined)
    for factor, expected in ((1 - NEAR, ()), (1 + NEAR, (Reason.MUCH_SMALLER,))):
        drawn = disc(math.sqrt(r * r + 2 * r * factor * limit))
        assert mean_gap(refined, drawn) == pytest.approx(factor * limit, rel=1e-3)
        assert doubts(drawn, refined) == expected


def test_box_spill_boundary():
    """A refinement reaching past the box's bottom so that box_outside_share of it lies
    beyond the box grown by box_growth_px + box_growth_share x the box's size."""
    original = box(0, 0, 100, 100)
    growth = T.box_growth_px + T.box_growth_share * outline_size(original)
    for factor, expected in ((1 - NEAR, ()), (1 + NEAR, (Reason.SPILLS_OUTSIDE,))):
        share = factor * T.box_outside_share
        bottom = (100 + growth - 10 * share) / (1 - share)  # outside / all = (bottom - 100 - g) / (bottom - 10)
        refined = box(10, 10, 90, bottom)
        assert outside_share(refined, original, growth) == pytest.approx(share, rel=1e-6)
        assert doubts(original, refined) == expected


def test_drawn_spill_boundary():
    """A refined disc around a drawn one: 1 - (r + g)^2 / R^2 of it lies outside the drawn
    disc grown by drawn_growth_px + drawn_growth_share x its size."""
    r = 30.0
    drawn = disc(r)
    growth = T.drawn_growth_px + T.drawn_growth_share * outline_size(drawn)
    for factor, expected in ((1 - NEAR, ()), (1 + NEAR, (Reason.SPILLS_OUTSIDE,))):
        share = factor * T.drawn_outside_share
        refined = disc((r + growth) / math.sqrt(1 - share))
        assert outside_share(refined, drawn, growth) == pytest.approx(share, rel=1e-2)
        assert doubts(drawn, refined) == expected


def test_overlap_boundary():
    """The second of two refinements that share max_overlap_share of the smaller."""
    first = box(0, 0, 20, 20)
    for factor, expected in ((1 - NEAR, ()), (1 + NEAR, (Reason.OVERLAPS_ANOTHER,))):
        shift = 20 * (1 - factor * T.max_overlap_share)
        second = box(shift, 0, shift + 20, 20)
        outcomes = review_location([first, second.buffer(0.5)], [Outcome(first), Outcome(second)])
        assert [o.doubts for o in outcomes] == [(), expected]


def test_score_boundaries():
    original = loose_box(CELL, 2, 2, 2, 2)
    assert doubts(original, CELL, predicted_iou=T.min_predicted_iou) == ()
    assert doubts(original, CELL, predicted_iou=T.min_predicted_iou - 0.01) == (Reason.LOW_PREDICTED_IOU,)
    assert doubts(original, CELL, object_score=T.min_object_score + 0.01) == ()
    assert doubts(original, CELL, object_score=T.min_object_score) == (Reason.NO_OBJECT,)


# --- the image's edge ------------------------------------------------------------------------

FRAME = (200, 200)


def test_a_cell_cut_by_the_right_edge_is_judged_against_its_original_clipped_to_the_image():
    cell = Point(200, 100).buffer(30, quad_segs=64)  # half of it beyond the right edge
    refined = cell.intersection(box(0, 0, *FRAME))  # as the engine clips it
    original = loose_box(cell, 2, 2, 2, 2)  # reaches 32 px past the edge
    assert doubts(original, refined, FRAME) == ()
    assert doubts(cell.buffer(3), refined, FRAME) == ()  # drawn past the edge
    # Without the image's size the box's right side seems 32 px from the refinement.
    assert doubts(original, refined) == (Reason.MUCH_SMALLER,)


def test_a_loose_box_about_a_cell_cut_by_the_edge_says_nothing_of_its_size():
    """Most of an elongated cell lies beyond the top edge; the box is 30 % of its long
    axis loose on the left: by what is visible, far too loose, but the cell is not all visible."""
    cell = affinity.scale(Point(100, 0).buffer(10, quad_segs=64), 1.0, 4.0)  # 20 x 80 px, half above y = 0
    refined = cell.intersection(box(0, 0, *FRAME))
    assert doubts(loose_box(cell, 24, 0, 2, 2), refined, FRAME) == ()


def test_an_inner_part_of_a_cell_at_the_edge_is_still_doubtful():
    cell = Point(195, 100).buffer(20, quad_segs=64)
    nucleus = Point(190, 100).buffer(6, quad_segs=64)  # does not reach the edge
    assert doubts(loose_box(cell, 2, 2, 2, 2), nucleus, FRAME) == (Reason.MUCH_SMALLER,)


def test_padding_at_the_edge_is_taken_off_only_where_the_outline_is_inside_the_image():
    cell = Point(195, 100).buffer(10, quad_segs=64)
    frame = box(0, 0, *FRAME)
    original = loose_box(cell, 1, 1, 1, 1)
    for padding in (3.0, 12.0):
        padded = cell.buffer(padding).intersection(frame)
        (outcome,) = review_location([original], [Outcome(padded)], padding, frame_size=FRAME)
        assert outcome.doubts == ()


def test_shape_doubts_is_one_refinement_against_its_original():
    cell = Point(195, 100).buffer(10, quad_segs=64)
    refined = cell.intersection(box(0, 0, *FRAME))
    assert shape_doubts(refined, loose_box(cell, 2, 2, 2, 2), T, FRAME) == []
    assert shape_doubts(refined, None, T, FRAME) == []
    assert shape_doubts(Point(100, 100).buffer(3), loose_box(CELL, 1, 1, 1, 1)) == [Reason.MUCH_SMALLER]


def test_the_refinements_edge_along_the_image_edge_counts_for_nothing():
    """A strip along the right edge inside a drawn half disc leaves most of the outline
    empty: measured along the strip's free edge (120 px), not its whole outline (220 px)."""
    drawn = Point(200, 100).buffer(50, quad_segs=64)  # drawn past the edge
    visible = drawn.intersection(box(0, 0, *FRAME))
    strip = box(190, 50, 200, 150)
    assert mean_gap(strip, visible, FRAME) == pytest.approx(visible.difference(strip).area / 120)
    assert doubts(drawn, strip, FRAME) == (Reason.MUCH_SMALLER,)


def test_an_allowed_zone_made_only_when_needed_tells_spills_as_the_zone_itself():
    """Refinements inside their original, across its edge and far outside: `spills` with
    the zone made when needed answers as with the zone made beforehand."""
    from dataclasses import replace

    import numpy as np

    from sam2_refine.review import AllowedZone, allowed_zone, spills

    rng = np.random.default_rng(21)
    inside = 0
    for _ in range(400):
        cx, cy, r = rng.uniform(20, 80), rng.uniform(20, 80), rng.uniform(3, 15)
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(4, 14))))
        original = Polygon(np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)]))
        if rng.random() < 0.3:
            original = box(cx - r, cy - r, cx + r, cy + 0.6 * r)
        if not original.is_valid or original.area <= 0:
            continue
        refined = Point(cx + rng.normal(0, r / 3), cy + rng.normal(0, r / 3)).buffer(r * rng.uniform(0.2, 1.4))
        inside += original.contains(refined)
        for thresholds in (T, replace(T, drawn_growth_px=0.0, drawn_growth_share=0.0, box_growth_share=0.0)):
            lazy = AllowedZone(original, thresholds)
            assert spills(refined, original, lazy, thresholds) == spills(
                refined, original, allowed_zone(original, thresholds), thresholds)
            assert lazy.contains(refined) == allowed_zone(original, thresholds).contains(refined)
    assert inside > 20
