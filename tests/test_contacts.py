"""Touching cells share one boundary (sam2_refine/contacts.py), on inputs with known answers.

Two discs whose outlines overlap: each one's field is its signed distance (as SAM2's
logits resized to image pixels are, near the outline), so the logit split lies where the
two distances are equal; without fields the split is the line through the middle of the
overlap; a lower-standing outline and a new one beside a written one yield; padding and
smoothing stay within each object's territory.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon

from sam2_refine.contacts import (
    Member, keep_apart, positive_region, settle_group, split_outlines, split_pair, touching_groups,
)
from sam2_refine.geometry import finish_outline


def disk_field(cx: float, cy: float, radius: float, slope: float = 1.0):
    """A field reader: `slope` times the signed distance to a circle, at the pixel centres of a region."""
    def read(region):
        col0, row0, col1, row1 = region
        x, y = np.meshgrid(np.arange(col0, col1) + 0.5, np.arange(row0, row1) + 0.5)
        return slope * (radius - np.hypot(x - cx, y - cy))
    return read


def disk(cx, cy, radius) -> Polygon:
    return Point(cx, cy).buffer(radius, quad_segs=64)


def member(cx, cy, radius, with_field=True, rank=0, smoothing=0.0, padding=0.0, slope=1.0) -> Member:
    found = disk(cx, cy, radius)
    return Member(found, finish_outline(found, smoothing, padding),
                  disk_field(cx, cy, radius, slope) if with_field else None, rank)


def finisher(smoothing=0.0, padding=0.0):
    return lambda polygon: finish_outline(polygon, smoothing, padding)


def test_positive_region_is_the_sub_pixel_zero_crossing():
    x, y = np.meshgrid(np.arange(20) + 0.5, np.arange(10) + 0.5)
    region = positive_region(7.3 - x, (0.5, 0.5), 1.0)  # > 0 left of x = 7.3
    assert region.bounds[2] == pytest.approx(7.3, abs=1e-9)
    hull = shapely.box(0.5, 0.5, 19.5, 9.5)  # the samples' hull; beyond it the region closes within a step
    assert region.intersection(hull).area == pytest.approx((7.3 - 0.5) * 9, abs=1e-9)
    assert hull.buffer(1.0, join_style="mitre").contains(region)


def test_the_overlap_goes_to_the_higher_logit_and_both_meet_on_one_curve():
    # Radii 20 and 14, centres 30 apart: on the axis (y = 40) the overlap spans x 46..50.
    # b's mask is twice as certain (its logits twice as steep): 20 - (x - 30) = 2 (14 - (60 - x))
    # at x = 142 / 3, a third of the way into the overlap, not at its middle (48).
    a, b = member(30, 40, 20), member(60, 40, 14, slope=2.0)
    split = split_outlines({0: a, 1: b})
    assert split[0].intersection(split[1]).area < 1e-6
    axis = LineString([(0, 40.5), (100, 40.5)])  # along pixel centres: the crossing is exact there
    right_of_a = max(x for x, _ in shapely.get_coordinates(split[0].intersection(axis)))
    left_of_b = min(x for x, _ in shapely.get_coordinates(split[1].intersection(axis)))
    assert right_of_a == pytest.approx(142 / 3, abs=0.02)
    assert left_of_b == pytest.approx(142 / 3, abs=0.02)
    # Nothing is lost or added: away from the overlap each outline is what was found.
    assert split[0].union(split[1]).symmetric_difference(a.found.union(b.found)).area < 1e-6


def test_without_a_field_the_overlap_is_split_through_its_middle():
    a, b = member(30, 40, 20, with_field=False), member(60, 40, 14)
    lost_a, lost_b = split_pair(a, b)
    lost_a, lost_b = a.found.intersection(lost_a), b.found.intersection(lost_b)  # what each gives up
    overlap = a.found.intersection(b.found)
    assert lost_a.union(lost_b).symmetric_difference(overlap).area < 1e-6
    assert lost_a.intersection(lost_b).area < 1e-6
    # The overlap spans x 46..50 on the axis; the middle of its exclusive parts' gap is 48.
    cut = [x for x, _ in shapely.get_coordinates(lost_a.boundary.intersection(LineString([(0, 40), (100, 40)])))]
    assert min(cut) == pytest.approx(48.0, abs=0.1)


def test_a_doubtful_outline_yields_to_an_accepted_one():
    accepted, doubtful = member(30, 40, 20, rank=0), member(60, 40, 14, rank=1)
    split = split_outlines({0: accepted, 1: doubtful})
    assert split[0].equals_exact(accepted.found, 0.0)  # the accepted one loses nothing
    assert split[1].intersection(accepted.found).area < 1e-6
    assert split[1].area == pytest.approx(doubtful.found.difference(accepted.found).area, rel=1e-9)


def test_a_new_outline_yields_to_one_written_before():
    new = member(60, 40, 14)
    written = disk(30, 40, 20)
    settled = keep_apart([new], [written], finisher())
    assert settled[0].found.intersection(written).area < 1e-6
    assert settled[0].polygon.intersection(written).area < 1e-6


@pytest.mark.parametrize("smoothing, padding", [(0.7, 0.0), (0.0, 2.0), (0.7, 2.0), (1.5, 3.0)])
def test_finished_polygons_stay_within_their_territories(smoothing, padding):
    a = member(30, 40, 20, smoothing=smoothing, padding=padding)
    b = member(60, 40, 14, smoothing=smoothing, padding=padding)
    settled = keep_apart([a, b], [], finisher(smoothing, padding))
    pa, pb = settled[0].polygon, settled[1].polygon
    assert pa.intersection(pb).area < 1e-6
    assert pa.intersection(settled[1].found).area < 1e-6  # never into the neighbour's outline
    assert pb.intersection(settled[0].found).area < 1e-6
    # Padding fills the free space: far from the contact each is the split outline grown by `padding`.
    far_a = Point(30 - 20 - padding, 40)
    assert pa.exterior.distance(far_a) < 0.2 + smoothing / 2
    # Near the contact both end on it (x = 48 on the axis), not `padding` beyond.
    axis = LineString([(0, 40.2), (100, 40.2)])
    assert max(x for x, _ in shapely.get_coordinates(pa.intersection(axis))) == pytest.approx(48.0, abs=0.3)
    assert min(x for x, _ in shapely.get_coordinates(pb.intersection(axis))) == pytest.approx(48.0, abs=0.3)


def test_padded_neighbours_with_a_gap_split_the_free_space_between_them():
    # 3 px apart, Padding 2: each grows into the gap up to its middle.
    a = member(30, 40, 10, padding=2.0)
    b = member(53, 40, 10, padding=2.0)
    settled = keep_apart([a, b], [], finisher(0.0, 2.0))
    assert settled[0].found.equals_exact(a.found, 0.0) and settled[1].found.equals_exact(b.found, 0.0)
    assert settled[0].polygon.intersection(settled[1].polygon).area < 1e-6
    assert settled[0].polygon.bounds[2] == pytest.approx(41.5, abs=0.1)
    assert settled[1].polygon.bounds[0] == pytest.approx(41.5, abs=0.1)


def test_isolated_objects_take_no_part():
    members = [member(30, 40, 10), member(80, 40, 10), member(97, 40, 9)]  # the last two overlap
    assert touching_groups(members) == [([1, 2], [])]
    settled = keep_apart(members, [], finisher())
    assert set(settled) == {1, 2}
    assert touching_groups([member(30, 40, 10), None]) == []


def test_three_cells_meeting_at_a_point_leave_no_overlap():
    centres = [(30, 30), (52, 30), (41, 49)]
    members = [member(x, y, 13, smoothing=0.7, padding=1.0) for x, y in centres]
    settled = settle_group(dict(enumerate(members)), [], finisher(0.7, 1.0))
    polygons = [settled[i].polygon for i in range(3)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert polygons[i].intersection(polygons[j]).area < 1e-6
            assert settled[i].found.intersection(settled[j].found).area < 1e-6
    assert all(p.is_valid for p in polygons)


def test_a_field_that_does_not_cover_the_overlap_falls_back_to_the_geometric_split():
    a, b = member(30, 40, 20), member(60, 40, 14)
    short = Member(a.found, a.polygon, lambda region: None, 0)
    lost_geometric, _ = split_pair(short, b)
    lost_none, _ = split_pair(Member(a.found, a.polygon, None, 0), b)
    assert lost_geometric.symmetric_difference(lost_none).area < 1e-9
    assert math.isfinite(lost_geometric.area) and lost_geometric.area > 0


# --- a location's outcomes (apart.py) ------------------------------------------------------

from sam2_refine import apart  # noqa: E402
from sam2_refine.lowres import LowRes  # noqa: E402
from sam2_refine.outcome import Outcome, Reason  # noqa: E402
from sam2_refine.review import DEFAULT_THRESHOLDS  # noqa: E402
from sam2_refine.seam import Window  # noqa: E402

SIDE = 200
OPTIONS = apart.Options(0.7, 0.0, (SIDE, SIDE), DEFAULT_THRESHOLDS)


def disk_logits(cx, cy, radius, slope=1.0, span=math.inf) -> apart.ObjectLogits:
    """A disc's field as SAM2's logits on a grid of one cell per pixel over a window of the
    frame (resized, they are the field at the pixel centres)."""
    values = disk_field(cx, cy, radius, slope)((0, 0, SIDE, SIDE)).astype(np.float32)
    return apart.ObjectLogits(Window(0, 0, SIDE, SIDE), LowRes(values, 0, 0, (SIDE, SIDE)), span)


def outcome(cx, cy, radius, doubts=(), slope=1.0) -> tuple[Outcome, apart.ObjectLogits]:
    found = disk(cx, cy, radius)
    outcome = Outcome(finish_outline(found, 0.7, 0.0), doubts=tuple(doubts), found=found)
    return outcome, disk_logits(cx, cy, radius, slope)


def keep_outcomes_apart(objects, originals, written=(), options=OPTIONS, submit=None) -> list[Outcome]:
    outcomes = [o for o, _ in objects]
    return apart.keep_apart(outcomes, originals, list(written), options, lambda k: objects[k][1], submit)


def square_around(cx, cy, radius, slack=2.0) -> Polygon:
    return Polygon([(cx - radius - slack, cy - radius - slack), (cx + radius + slack, cy - radius - slack),
                    (cx + radius + slack, cy + radius + slack), (cx - radius - slack, cy + radius + slack)])


def test_the_field_read_from_kept_logits_is_the_field_and_none_beyond_them():
    read = apart.field_reader(Window(0, 0, SIDE, SIDE), disk_logits(50, 50, 15).logits)
    assert np.allclose(read((40, 45, 60, 52)), disk_field(50, 50, 15)((40, 45, 60, 52)), atol=1e-5)
    # Cells rows 20-29, columns 30-39: pixel c reads cells c and c + 1 (one cell per pixel).
    crop = LowRes(np.zeros((10, 10), np.float32), 20, 30, (SIDE, SIDE))
    read = apart.field_reader(Window(0, 0, SIDE, SIDE), crop)
    assert read((30, 20, 39, 29)).shape == (9, 9)
    assert read((29, 20, 39, 29)) is None and read((30, 20, 40, 29)) is None and read((30, 19, 39, 29)) is None
    assert apart.field_reader(Window(100, 100, 50, 50), crop)((90, 100, 110, 110)) is None  # outside the window


def test_two_prompts_on_one_cell_are_not_split_against_each_other():
    """The duplicate rule decides first: the outline it doubted takes no part, so the kept
    one stays the whole cell (and its neighbour is split against it as usual)."""
    kept, duplicate, neighbour = outcome(50, 50, 15), outcome(50.5, 50, 15, [Reason.OVERLAPS_ANOTHER]), \
        outcome(78, 50, 14)
    originals = [square_around(50, 50, 15), square_around(50, 50, 15), square_around(78, 50, 14)]
    result = keep_outcomes_apart([kept, duplicate, neighbour], originals)
    assert result[1] is duplicate[0]  # left as it was, doubtful
    assert result[0].accepted and result[0].found.area > 0.98 * kept[0].found.area
    assert result[0].polygon.intersection(result[2].polygon).area < 1e-6


def test_a_doubtful_outline_never_takes_area_from_an_accepted_one():
    accepted = outcome(50, 50, 15, slope=1.0)
    doubtful = outcome(78, 50, 14, [Reason.LOW_PREDICTED_IOU], slope=5.0)  # far more certain logits, still doubtful
    originals = [square_around(50, 50, 15), square_around(78, 50, 14)]
    result = keep_outcomes_apart([accepted, doubtful], originals)
    assert result[0].found.equals_exact(accepted[0].found, 0.0)
    assert result[1].found.intersection(accepted[0].found).area < 1e-6
    assert result[1].doubts == (Reason.LOW_PREDICTED_IOU,)


def test_the_review_judges_the_split_outline_and_never_takes_a_doubt_away():
    """A cell whose neighbour's logits win most of it is judged on what it keeps: much
    smaller than its box; it then stands second, so it takes nothing from the neighbour."""
    small = outcome(60, 50, 10, slope=0.2)
    big = outcome(50, 50, 18, slope=3.0)
    originals = [square_around(60, 50, 10, slack=1.0), square_around(50, 50, 18)]
    result = keep_outcomes_apart([small, big], originals)
    assert Reason.MUCH_SMALLER in result[0].doubts
    assert result[1].accepted and result[1].found.equals_exact(big[0].found, 0.0)
    spilling = outcome(50, 50, 15, [Reason.SPILLS_OUTSIDE])
    result = keep_outcomes_apart([spilling, outcome(78, 50, 14)], [square_around(50, 50, 15)] * 2)
    assert Reason.SPILLS_OUTSIDE in result[0].doubts  # kept, though the split took the spill away


def test_size_doubts_after_the_split_are_put_down_to_the_resolution_for_coarse_objects():
    """As in the first judgement (review.judge_object): an object spanning fewer than
    SIZE_BLUR_SPAN of SAM2's mask pixels that comes out much smaller is too coarse."""
    from sam2_refine.review import SIZE_BLUR_SPAN

    small, big = outcome(60, 50, 10, slope=0.2), outcome(50, 50, 18, slope=3.0)
    small = (small[0], replace_span(small[1], SIZE_BLUR_SPAN - 1))
    originals = [square_around(60, 50, 10, slack=1.0), square_around(50, 50, 18)]
    result = keep_outcomes_apart([small, big], originals)
    assert Reason.TOO_COARSE in result[0].doubts and Reason.MUCH_SMALLER not in result[0].doubts


def replace_span(logits: apart.ObjectLogits, span: float) -> apart.ObjectLogits:
    return apart.ObjectLogits(logits.window, logits.logits, span)


def test_outlines_without_logits_are_split_geometrically():
    a, b = outcome(50, 50, 15), outcome(78, 50, 14)
    a = (a[0], None)  # no logits kept
    result = keep_outcomes_apart([a, b], [square_around(50, 50, 15), square_around(78, 50, 14)])
    assert result[0].polygon.intersection(result[1].polygon).area < 1e-6
    assert result[0].found.intersection(result[1].found).area < 1e-6


def test_an_outline_left_with_nothing_stays_as_found_and_is_doubtful():
    """A cell that lies within an accepted outline written before keeps nothing after the
    split: it is kept as SAM2 found it, doubtful as overlapping another."""
    inner = outcome(50, 50, 8)
    written = disk(50, 50, 20)
    result = keep_outcomes_apart([inner], [square_around(50, 50, 8)], [written])
    assert result[0].found.equals_exact(inner[0].found, 0.0) and result[0].polygon.equals_exact(inner[0].polygon, 0.0)
    assert result[0].doubts == (Reason.OVERLAPS_ANOTHER,)


def test_groups_settled_by_the_outline_processes_are_what_they_are_in_line():
    """Groups cross to another process and back as plain arrays: the same outcomes."""
    from concurrent.futures import ProcessPoolExecutor

    objects = [outcome(50, 50, 15), outcome(78, 50, 14, [Reason.LOW_PREDICTED_IOU]), outcome(64, 74, 12),
               (outcome(120, 120, 10)[0], None), outcome(139, 120, 10), outcome(170, 30, 9)]
    originals = [square_around(50, 50, 15), square_around(78, 50, 14), square_around(64, 74, 12),
                 square_around(120, 120, 10), square_around(139, 120, 10), square_around(170, 30, 9)]
    written = [disk(150, 150, 12)]
    in_line = keep_outcomes_apart(objects, originals, written)
    with ProcessPoolExecutor(1) as pool:
        shipped = keep_outcomes_apart(objects, originals, written, submit=pool.submit)
    assert in_line[5] is objects[5][0] and shipped[5] is objects[5][0]  # isolated: untouched
    for mine, theirs in zip(in_line, shipped):
        assert mine.doubts == theirs.doubts
        assert mine.polygon.equals_exact(theirs.polygon, 0.0) and mine.found.equals_exact(theirs.found, 0.0)
    for i in range(5):
        for j in range(i + 1, 5):
            assert in_line[i].polygon.intersection(in_line[j].polygon).area < 1e-6


def test_a_group_whose_overlay_fails_on_round_off_is_snapped_then_left_as_it_was(monkeypatch):
    """GEOS can refuse an overlay of nearly coincident edges (a non-noded intersection):
    the group is settled again with its outlines snapped to a fine grid, and if that fails
    too it is left as it was; the job never fails for it."""
    import shapely.errors

    from sam2_refine import contacts

    calls = []
    settle = contacts.settle_group

    def failing(members, written, finish, fail_times):
        calls.append(len(calls))
        if len(calls) <= fail_times:
            raise shapely.errors.GEOSException("TopologyException: found non-noded intersection")
        return settle(members, written, finish)

    members = [member(30, 40, 20), member(60, 40, 14)]
    monkeypatch.setattr(contacts, "settle_group", lambda m, w, f: failing(m, w, f, 1))
    settled = keep_apart(members, [], finisher())
    assert len(calls) == 2 and settled[0].polygon.intersection(settled[1].polygon).area < 1e-6
    calls.clear()
    monkeypatch.setattr(contacts, "settle_group", lambda m, w, f: failing(m, w, f, 2))
    assert keep_apart(members, [], finisher()) == {}


def test_cells_touching_at_the_image_edge_are_split_by_their_logits():
    """Two cells cut by the image's left edge, touching each other, both with their logits
    kept: the overlap goes to the more certain mask, as it does away from the edge (review
    of issue 25: the field region read around an overlap reaches one pixel beyond the image,
    which no window holds, so such pairs were split geometrically, through the middle)."""
    from shapely.geometry import box as square

    def split(cx):
        frame = square(0, 0, SIDE, SIDE)
        found_a, found_b = disk(cx, 50, 15).intersection(frame), disk(cx, 76, 14).intersection(frame)
        logits_a, logits_b = disk_logits(cx, 50, 15, slope=3.0), disk_logits(cx, 76, 14, slope=0.3)
        a = Member(found_a, found_a, apart.field_reader(logits_a.window, logits_a.logits))
        b = Member(found_b, found_b, apart.field_reader(logits_b.window, logits_b.logits))
        return split_pair(a, b)

    lost_a, lost_b = split(60)
    assert lost_b.area > 1.5 * lost_a.area  # away from the edge: the steeper mask keeps most of the overlap
    lost_a, lost_b = split(5)  # the overlap reaches the image's edge
    assert lost_b.area > 1.5 * lost_a.area
