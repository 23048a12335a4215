"""The per-object checks, on outlines whose answer is known."""

from __future__ import annotations

from shapely.geometry import Point, Polygon, box

from sam2_refine.engine import Outcome, Reason
from sam2_refine.review import original_outline, review_location
from sam2_refine.worker import prompt_coordinates

CELL = Point(100, 100).buffer(10, quad_segs=32)  # a round cell 20 px across
NEIGHBOUR = Point(121, 100).buffer(10, quad_segs=32)


def doubts(original: Polygon, refined: Polygon | None, **scores) -> tuple[Reason, ...]:
    (outcome,) = review_location([original], [Outcome(refined, **scores)])
    return outcome.doubts


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
