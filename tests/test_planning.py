"""A location's originals read and planned all at once (the worker's way) are planned exactly as
one by one: the same outlines, boxes, clipped originals and allowed zones, and the same
reasons for those that cannot prompt."""

from __future__ import annotations

import numpy as np

from sam2_refine.engine import RefineSettings, make_prompt, plan_location, prompt_box
from sam2_refine.interface import RESOLUTION_AUTO
from sam2_refine.nimbus import record_of
from sam2_refine.originals import prompt_coordinates, prompt_points
from sam2_refine.outcome import Reason
from sam2_refine.review import Thresholds, original_outline, original_outlines, within_frame

WIDTH, HEIGHT = 300, 200


def random_documents(seed: int, count: int = 400) -> list[dict]:
    """Polygons and rectangles of every kind the platform may hold: ordinary outlines, ones
    across or beyond the image's edge, bow ties, slivers, too few points, non-numbers."""
    rng = np.random.default_rng(seed)
    documents = []
    for index in range(count):
        kind = rng.integers(10)
        cx, cy = rng.uniform(-40, WIDTH + 40), rng.uniform(-40, HEIGHT + 40)
        radius = rng.uniform(0.5, 30)
        n = int(rng.integers(3, 25))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        points = np.column_stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)])
        if kind == 0:  # a bow tie (crosses itself)
            points = np.array([[cx, cy], [cx + radius, cy + radius], [cx + radius, cy], [cx, cy + radius]])
        elif kind == 1:  # too few points
            points = points[:int(rng.integers(0, 3))]
        elif kind == 2:  # a sliver: all on one line
            points = np.column_stack([points[:, 0], np.full(len(points), cy)])
        elif kind == 7:
            points = np.column_stack([np.full(len(points), cx), points[:, 1]])
        elif kind == 3:  # a point that is not a number
            points = points.astype(object)
            points[int(rng.integers(len(points))), 0] = rng.choice([None, "nan", float("inf")])
        elif kind == 6:  # a box drawn as a polygon, one corner a little in (just box-like, or just not)
            x0, y0, side = cx - radius, cy - radius, 2 * radius
            nudge = side * rng.uniform(0.0, 0.03)
            points = np.array([[x0, y0], [x0 + side, y0], [x0 + side - nudge, y0 + side - nudge], [x0, y0 + side]])
        shape = "rectangle" if kind in (4, 5) else "polygon"
        coordinates = [{"x": x, "y": y} for x, y in points.tolist()]
        documents.append({"_id": f"{index:024x}", "shape": shape, "coordinates": coordinates, "tags": ["rough"]})
    return documents


def same_polygon(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.equals_exact(b, 0))


def test_outlines_made_at_once_are_those_made_one_by_one():
    for seed in range(3):
        documents = random_documents(seed)
        for document in (documents, [record_of(d) for d in documents]):  # documents, and the job's records
            one_by_one = [original_outline(d) for d in document]
            at_once = original_outlines(document)
            assert all(same_polygon(a, b) for a, b in zip(one_by_one, at_once))
        assert sum(outline is not None for outline in one_by_one) > 200


def test_a_location_planned_at_once_is_planned_as_one_by_one():
    thresholds = Thresholds(box_growth_px=0.5, drawn_growth_share=0.2)
    settings = RefineSettings(0.7, 1.0, RESOLUTION_AUTO, thresholds)
    for seed in range(3):
        records = [record_of(d) for d in random_documents(seed)]
        originals = original_outlines(records)
        plan = plan_location((WIDTH, HEIGHT), [prompt_points(r) for r in records], originals, settings)
        # one by one, as the engine planned before
        prompts, reasons = [], {}
        for owner, (record, original) in enumerate(zip(records, originals)):
            box = prompt_box(prompt_coordinates(record), WIDTH, HEIGHT)
            if isinstance(box, Reason):
                reasons[owner] = box
            else:
                prompts.append(make_prompt(owner, box, original, (WIDTH, HEIGHT), thresholds))
        assert {owner: outcome.reason for owner, outcome in enumerate(plan.outcomes) if outcome is not None} == reasons
        assert set(reasons.values()) == {Reason.DEGENERATE, Reason.OUTSIDE}
        assert len(plan.prompts) == len(prompts) > 150
        for mine, theirs in zip(plan.prompts, prompts):
            assert mine.owner == theirs.owner and mine.box == theirs.box
            assert same_polygon(mine.original, theirs.original)
            assert mine.zone_bounds == theirs.zone_bounds  # exactly: the same arithmetic
        assert all(same_polygon(a, within_frame(b, (WIDTH, HEIGHT))) for a, b in zip(plan.originals, originals))


def test_search_areas_at_once_are_those_one_by_one():
    from sam2_refine import tiling

    rng = np.random.default_rng(4)
    boxes = []
    for _ in range(2000):
        x, y = rng.uniform(-50, WIDTH + 50, size=2)
        boxes.append(tiling.Box(x, y, x + rng.uniform(0, 80), y + rng.uniform(0, 60)))
    assert tiling.search_areas(boxes, WIDTH, HEIGHT) == [tiling.search_area(b, WIDTH, HEIGHT) for b in boxes]
