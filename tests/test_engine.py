"""The engine through both resolution modes, with oracles that know the true masks."""

import numpy as np
import pytest
from shapely.geometry import box

from sam2_refine import engine, review, tiling
from sam2_refine.outcome import Reason
from sam2_refine.engine import RefineSettings, crops_of, resize_region
from sam2_refine.pipeline import refine_frame
from sam2_refine.interface import RESOLUTION_AUTO, RESOLUTION_WHOLE_FRAME
from tests.oracle import Composite, Disk, OraclePredictor, Rect, ScoredOraclePredictor

WIDTH, HEIGHT = 3000, 1800  # non-square, larger than one native window


def iou(polygon, truth_mask):
    """IoU between a polygon and a pixel mask, counting pixels by their centres."""
    from shapely import contains_xy

    rows, cols = np.nonzero(truth_mask)
    x0, y0, x1, y1 = polygon.bounds
    r0, r1 = int(min(rows.min(), y0)), int(max(rows.max() + 1, y1)) + 1
    c0, c1 = int(min(cols.min(), x0)), int(max(cols.max() + 1, x1)) + 1
    rr, cc = np.mgrid[r0:r1, c0:c1]
    inside = contains_xy(polygon, cc + 0.5, rr + 0.5)
    truth = truth_mask[r0:r1, c0:c1] if truth_mask.shape[0] >= r1 and truth_mask.shape[1] >= c1 else np.pad(
        truth_mask, ((0, max(0, r1 - truth_mask.shape[0])), (0, max(0, c1 - truth_mask.shape[1]))))[r0:r1, c0:c1]
    return (inside & truth).sum() / (inside | truth).sum()


def scene():
    """Cells of several sizes, some on the frame's edges and at native-window borders."""
    shapes = [
        Disk(40, 40, 12), Disk(1020, 500, 14), Disk(1030, 530, 11),  # neighbours sharing a window
        Disk(2990, 900, 15),                                       # cut by the right edge
        Rect(1500, 1780, 1540, 1800),                               # on the bottom edge
        Disk(700, 1200, 60), Rect(2000, 200, 2300, 420),            # large objects
        Disk(1024, 1024, 20), Disk(2047, 1023, 18),                 # across 1024-px boundaries
    ]
    rng = np.random.default_rng(1)
    for _ in range(30):
        shapes.append(Disk(float(rng.uniform(50, WIDTH - 50)), float(rng.uniform(50, HEIGHT - 50)), float(rng.uniform(10, 30))))
    return shapes


def check_refined(shapes, outcomes, minimum_iou):
    for shape, outcome in zip(shapes, outcomes):
        assert outcome.polygon is not None, (shape, outcome.reason)
        assert outcome.polygon.is_valid
        truth = shape.mask(HEIGHT, WIDTH)
        assert iou(outcome.polygon, truth) >= minimum_iou, shape


def refine(predictor, frame, outlines, settings):
    height, width = frame.shape[:2]
    return refine_frame(predictor, crops_of(frame), (width, height), outlines, settings)


@pytest.fixture(scope="module")
def frame():
    return np.zeros((HEIGHT, WIDTH, 3), np.float32)


def test_auto_windows_reproduce_the_true_outlines(frame):
    shapes = scene()
    oracle = OraclePredictor(shapes)
    # Two of the random disks really overlap (by 18 px): overlaps allowed, as for a projection of a thick sample.
    outcomes = refine(oracle, frame, [s.rough_outline() for s in shapes],
                      RefineSettings(0, 0, RESOLUTION_AUTO, keep_apart=False))
    check_refined(shapes, outcomes, 0.98)
    assert 1 < len(oracle.windows) < len(shapes)  # neighbours share windows
    assert all(outcome.doubts == () for outcome in outcomes)


def test_whole_frame_uses_one_window_and_keeps_large_objects_exact(frame):
    shapes = [Disk(700, 1200, 60), Rect(2000, 200, 2300, 420), Disk(2950, 900, 80)]
    oracle = OraclePredictor(shapes)
    outcomes = refine(oracle, frame, [s.rough_outline() for s in shapes], RefineSettings(0, 0, RESOLUTION_WHOLE_FRAME))
    assert oracle.windows == [engine.Window(0, 0, WIDTH, HEIGHT)]
    check_refined(shapes, outcomes, 0.98)


def test_auto_resolves_small_cells_that_whole_frame_blurs(frame):
    shapes = [Disk(500 + 60 * i, 700, 9) for i in range(5)]
    rough = [s.rough_outline() for s in shapes]
    auto = refine(OraclePredictor(shapes), frame, rough, RefineSettings(0, 0, RESOLUTION_AUTO))
    whole = refine(OraclePredictor(shapes), frame, rough, RefineSettings(0, 0, RESOLUTION_WHOLE_FRAME))
    truths = [s.mask(HEIGHT, WIDTH) for s in shapes]
    assert min(iou(o.polygon, t) for o, t in zip(auto, truths)) >= 0.95
    assert np.mean([iou(o.polygon, t) if o.polygon else 0 for o, t in zip(whole, truths)]) < 0.9


def test_every_object_lies_inside_its_window_with_margin():
    rng = np.random.default_rng(3)
    boxes = []
    for _ in range(200):
        x, y, size = rng.uniform(0, 4000), rng.uniform(0, 2500), rng.uniform(4, 400)
        boxes.append(tiling.Box(x, y, min(x + size, 4096), min(y + size * 0.7, 2600)))
    placed = tiling.auto_windows(boxes, 4096, 2600)
    members = sorted(i for _, group in placed for i in group)
    assert members == list(range(len(boxes)))
    for window, group in placed:
        assert 0 <= window.left and window.left + window.width <= 4096
        assert 0 <= window.top and window.top + window.height <= 2600
        for i in group:
            col0, row0, col1, row1 = tiling.search_area(boxes[i], 4096, 2600)
            assert window.left <= col0 and col1 <= window.left + window.width
            assert window.top <= row0 and row1 <= window.top + window.height
            span = boxes[i].longer_side * 256 / max(window.width, window.height)
            too_large = max(col1 - col0, row1 - row0) > tiling.side_limit(boxes[i])
            assert span >= 16 or too_large or max(window.width, window.height) == tiling.MIN_WINDOW_SIDE


@pytest.mark.parametrize("predictor", [OraclePredictor, ScoredOraclePredictor])
def test_a_mask_reaching_past_its_first_read_is_followed_within_what_was_decoded(frame, predictor):
    # A cell with a thin tail: the tail leaves the area first read, the rest of the mask
    # lies well inside the original's allowed zone, so the mask is followed to its end.
    cell = Composite((Disk(500, 500, 20), Rect(518, 499, 560, 501)))
    rough = Disk(500, 500, 20).rough_outline(2)
    oracle = predictor([cell])
    outcome = refine(oracle, frame, [rough], RefineSettings(0, 0, RESOLUTION_AUTO))[0]
    assert outcome.polygon is not None, outcome.reason
    assert outcome.polygon.bounds[2] == pytest.approx(560, abs=0.6)
    assert iou(outcome.polygon, cell.mask(HEIGHT, WIDTH)) >= 0.95
    assert outcome.doubts == () and not outcome.cut
    if predictor is ScoredOraclePredictor:  # decoded once, over the room it may be followed into
        (areas,) = oracle.decoded_areas
        window = oracle.windows[0]
        prompt = engine.make_prompt(0, engine.prompt_box(rough, WIDTH, HEIGHT), engine.outline_of_coordinates(rough),
                                    (WIDTH, HEIGHT))
        np.testing.assert_array_equal(areas, [engine.decode_area(prompt, window, (WIDTH, HEIGHT))])


@pytest.mark.parametrize("predictor", [OraclePredictor, ScoredOraclePredictor])
def test_a_mask_spilling_far_outside_its_original_is_cut_and_flagged(frame, predictor):
    slab = Rect(100, 100, 1400, 1400)  # what a noise mask looks like: everything the window shows
    rough = Rect(700, 700, 740, 740).rough_outline(0)
    oracle = predictor([slab])
    outcome = refine(oracle, frame, [rough], RefineSettings(0, 0, RESOLUTION_AUTO))[0]
    assert outcome.doubts[0] == engine.Reason.SPILLS_OUTSIDE and outcome.cut
    # Stopped as soon as the review would doubt it whatever lies beyond: at the area first
    # read, or at the latest one growth step past it.
    prompt = engine.make_prompt(0, engine.prompt_box(rough, WIDTH, HEIGHT), engine.outline_of_coordinates(rough),
                                (WIDTH, HEIGHT))
    window = oracle.windows[0]
    col0, row0, col1, row1 = engine.first_read(prompt, window, (WIDTH, HEIGHT))
    step = engine.growth_step(prompt.box)
    followed = box(col0 + window.left - step, row0 + window.top - step, col1 + window.left + step,
                   row1 + window.top + step)
    first = box(col0 + window.left, row0 + window.top, col1 + window.left, row1 + window.top)
    assert outcome.polygon.within(followed.buffer(0.5)) and outcome.polygon.area >= 0.98 * first.area


def test_a_mask_reaching_the_edge_of_the_window_is_cut_and_flagged():
    # A window that ends where the object's decoded area would go on (a window shared
    # with other objects ends there); the mask goes on beyond it.
    window = engine.Window(400, 400, 200, 200)
    rough = Disk(580, 500, 10).rough_outline(1)
    prompt = engine.make_prompt(0, engine.prompt_box(rough, WIDTH, HEIGHT), engine.outline_of_coordinates(rough),
                                (WIDTH, HEIGHT))
    cell = Composite((Disk(580, 500, 10), Rect(585, 499, 640, 501)))
    oracle = OraclePredictor([cell])
    oracle.encode(np.zeros((200, 200, 3), np.float32), window)
    (tasks,) = engine.decode_window(oracle, window, [prompt], (WIDTH, HEIGHT))
    area = tasks[0].decoded
    assert area[2] == window.width  # the decoded area is cut by the window's right edge
    outcome = engine.settle(tasks[0], RefineSettings(0, 0, RESOLUTION_AUTO))
    assert engine.Reason.REACHES_VIEW_EDGE in outcome.doubts and outcome.cut
    assert outcome.polygon.bounds[2] == pytest.approx(600)


def test_a_mask_cut_by_the_frame_edge_is_not_flagged(frame):
    cell = Disk(2990, 900, 15)
    outcome = refine(OraclePredictor([cell]), frame, [cell.rough_outline()], RefineSettings(0, 0, RESOLUTION_AUTO))[0]
    assert outcome.polygon.bounds[2] == WIDTH
    assert outcome.doubts == ()
    assert iou(outcome.polygon, cell.mask(HEIGHT, WIDTH)) >= 0.98


def test_scored_predictor_with_area_only_logits_gives_the_same_outlines(frame):
    shapes = scene()
    rough = [s.rough_outline() for s in shapes]
    settings = RefineSettings(0.7, 0, RESOLUTION_AUTO)
    plain = refine(OraclePredictor(shapes), frame, rough, settings)
    scored = refine(ScoredOraclePredictor(shapes), frame, rough, settings)
    for a, b in zip(plain, scored):
        assert a.polygon.equals_exact(b.polygon, 1e-6)
        assert b.predicted_iou == pytest.approx(0.95) and b.object_score == pytest.approx(5.0)


def test_auto_windows_are_no_larger_than_their_objects_need():
    def window_of(size):
        boxes = [tiling.Box(1000, 1000, 1000 + size, 1000 + size)]
        (window, _), = tiling.auto_windows(boxes, 4096, 4096)
        (greedy, _), = tiling.greedy_windows(boxes, 4096, 4096)
        return window, greedy

    window, greedy = window_of(40)   # one image pixel per low-resolution pixel is enough
    assert (window.width, window.height, greedy.width) == (256, 256, 512)
    window, greedy = window_of(100)  # 4 x its box side
    assert (window.width, greedy.width) == (400, 1448)
    assert window.left == 1050 - 200 and window.top == 1050 - 200  # centred on the object
    window, greedy = window_of(6)    # small cells keep their finer limit
    assert window.width == greedy.width == tiling.side_limit(tiling.Box(0, 0, 6, 6)) == 90


def test_shrinking_windows_never_adds_encoder_runs():
    rng = np.random.default_rng(5)
    boxes = []
    for _ in range(300):
        x, y, size = rng.uniform(0, 2000), rng.uniform(0, 2000), rng.uniform(6, 120)
        boxes.append(tiling.Box(x, y, x + size, y + size * rng.uniform(0.6, 1)))
    shrunk, greedy = tiling.auto_windows(boxes, 2048, 2048), tiling.greedy_windows(boxes, 2048, 2048)
    assert [m for _, m in shrunk] == [m for _, m in greedy]
    for (small, _), (large, _) in zip(shrunk, greedy):
        assert small.width <= large.width and small.height <= large.height


def test_a_window_slides_left_to_take_in_the_neighbours_of_its_first_object():
    # The top-most cell is the right-most of a row: a window anchored at its left edge
    # would hold it alone and need a second encoder run for the others.
    row = [tiling.Box(900, 100, 920, 120)] + [tiling.Box(x, 104, x + 20, 124) for x in (700, 780, 840)]
    windows = tiling.auto_windows(row, 2048, 2048)
    assert len(windows) == 1 and sorted(windows[0][1]) == [0, 1, 2, 3]
    window = windows[0][0]
    for b in row:  # every member with its search area inside, and spanning >= 16 mask pixels
        col0, row0, col1, row1 = tiling.search_area(b, 2048, 2048)
        assert window.left <= col0 and col1 <= window.left + window.width
        assert b.longer_side * 256 / max(window.width, window.height) >= tiling.MIN_LOW_RES_SPAN


@pytest.mark.parametrize(
    ("coordinates", "reason"),
    [
        ([{"x": 1, "y": 1}, {"x": 5, "y": 5}], engine.DEGENERATE),
        ([{"x": 1, "y": 1}, {"x": 5, "y": 1}, {"x": 9, "y": 1}], engine.DEGENERATE),
        ([{"x": -50, "y": -50}, {"x": -10, "y": -50}, {"x": -10, "y": -10}], engine.OUTSIDE),
    ],
)
def test_originals_that_cannot_prompt_get_a_reason(frame, coordinates, reason):
    outcome = refine(OraclePredictor([Disk(10, 10, 5)]), frame, [coordinates], RefineSettings(0, 0, RESOLUTION_AUTO))
    assert outcome == [engine.Outcome(None, reason)]


def test_self_intersecting_original_is_refined_from_its_box(frame):
    bowtie = [{"x": 200, "y": 200}, {"x": 260, "y": 260}, {"x": 260, "y": 200}, {"x": 200, "y": 260}]
    shape = Disk(230, 230, 25)
    outcome = refine(OraclePredictor([shape]), frame, [bowtie], RefineSettings(0, 0, RESOLUTION_AUTO))[0]
    assert iou(outcome.polygon, shape.mask(HEIGHT, WIDTH)) >= 0.98


def test_empty_mask_and_vanishing_padding_are_reported(frame):
    far = Disk(2900, 1700, 10)  # the oracle's only object, far from the prompt
    outcome = refine(OraclePredictor([far]), frame, [Rect(100, 100, 130, 130).rough_outline(0)],
                           RefineSettings(0, 0, RESOLUTION_AUTO))[0]
    assert outcome.reason == engine.EMPTY_MASK
    tiny = Rect(100, 100, 104, 104)
    outcome = refine(OraclePredictor([tiny]), frame, [tiny.rough_outline(1)], RefineSettings(0, -5, RESOLUTION_AUTO))[0]
    assert outcome.reason == engine.VANISHED


def test_region_upsampling_matches_torch_interpolate_on_the_whole_window():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    low_res = rng.normal(size=(256, 256)).astype(np.float32)
    full = torch.nn.functional.interpolate(
        torch.from_numpy(low_res)[None, None], (700, 1300), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    region = (37, 5, 1300, 411)  # col0, row0, col1, row1
    np.testing.assert_allclose(resize_region(low_res, 700, 1300, region), full[5:411, 37:1300], atol=1e-4)


def _settled(shape, original: Rect, window_side: int):
    """One object settled in a window of `window_side` (the frame as large), its original
    the box `original`, the oracle answering with `shape`."""
    frame = (window_side, window_side)
    window = engine.Window(0, 0, window_side, window_side)
    rough = original.rough_outline(0)
    prompt = engine.make_prompt(0, engine.prompt_box(rough, *frame), engine.outline_of_coordinates(rough), frame)
    oracle = ScoredOraclePredictor([shape])
    oracle.encode(np.zeros((8, 8, 3), np.float32), window)
    (tasks,) = engine.decode_window(oracle, window, [prompt], frame)
    return engine.settle(tasks[0], RefineSettings(0, 0, RESOLUTION_AUTO)), engine.coarseness(prompt.box, window, (256, 256))


@pytest.mark.parametrize("span", [review.COARSE_SPAN - 0.1, review.COARSE_SPAN + 0.1])
def test_too_coarse_just_below_its_span_and_not_just_above(span):
    cell = Disk(1000, 1000, 18)
    original = Rect(980, 980, 1020, 1020)  # a 40-px box 2 px loose
    outcome, measured = _settled(cell, original, round(40 * 256 / span))
    assert measured == pytest.approx(span, abs=0.01)
    assert (Reason.TOO_COARSE in outcome.doubts) == (span < review.COARSE_SPAN)


@pytest.mark.parametrize("span", [review.SIZE_BLUR_SPAN - 0.1, review.SIZE_BLUR_SPAN + 0.1])
def test_a_much_smaller_outline_is_put_down_to_resolution_only_below_its_span(span):
    inner = Disk(1000, 1000, 7)  # a third of the cell the 40-px box outlines
    outcome, _ = _settled(inner, Rect(980, 980, 1020, 1020), round(40 * 256 / span))
    if span < review.SIZE_BLUR_SPAN:
        assert outcome.doubts[0] == Reason.TOO_COARSE and Reason.MUCH_SMALLER not in outcome.doubts
    else:
        assert Reason.MUCH_SMALLER in outcome.doubts and Reason.TOO_COARSE not in outcome.doubts


def test_the_thresholds_in_the_settings_decide(frame):
    """The same answers judged by the job's thresholds, not the module's: a cell in a box
    2 px loose is accepted by review.py's and much smaller than its box when a box may leave
    no margin; two prompts on one cell leave one of them doubtful, and neither when no
    share of an outline's area counts as overlapping."""
    cell = Disk(500, 500, 20)
    boxed = Rect(478, 478, 522, 522).rough_outline(0)
    strict = review.Thresholds(box_margin_px=0.0, box_margin_share=0.0)
    (accepted,) = refine(OraclePredictor([cell]), frame, [boxed], RefineSettings(0, 0, RESOLUTION_AUTO))
    (doubted,) = refine(OraclePredictor([cell]), frame, [boxed], RefineSettings(0, 0, RESOLUTION_AUTO, strict))
    assert accepted.doubts == () and doubted.doubts == (Reason.MUCH_SMALLER,)
    twice = [boxed, cell.rough_outline(2)]
    default = refine(OraclePredictor([cell]), frame, twice, RefineSettings(0, 0, RESOLUTION_AUTO))
    # (Overlaps allowed: kept apart, two outlines of one cell the duplicate rule lets by are split.)
    sharing = refine(OraclePredictor([cell]), frame, twice,
                     RefineSettings(0, 0, RESOLUTION_AUTO, review.Thresholds(max_overlap_share=1.5), keep_apart=False))
    assert sorted(o.doubts for o in default) == [(), (Reason.OVERLAPS_ANOTHER,)]
    assert [o.doubts for o in sharing] == [(), ()]


def test_a_batch_of_decode_areas_is_each_objects_decode_area():
    """decode_window computes its batch's areas at once: the same as one by one."""
    rng = np.random.default_rng(8)
    frame = (3000, 1800)
    for _ in range(50):
        window = engine.Window(int(rng.integers(0, 2000)), int(rng.integers(0, 1000)), int(rng.integers(64, 1000)),
                               int(rng.integers(64, 800)))
        prompts = []
        for owner in range(16):
            x, y = rng.uniform(window.left - 50, window.left + window.width), rng.uniform(window.top - 50, window.top + window.height)
            size = rng.uniform(2, 200)
            shape = Disk(x, y, size / 2)
            rough = shape.rough_outline(rng.uniform(-2, 10))
            box = engine.prompt_box(rough, *frame)
            if isinstance(box, Reason):
                continue
            original = engine.outline_of_coordinates(rough) if owner % 3 else None
            prompts.append(engine.make_prompt(owner, box, original, frame))
        if prompts:
            expected = [engine.decode_area(p, window, frame) for p in prompts]
            assert [tuple(a) for a in engine.decode_areas(prompts, window, frame).tolist()] == expected


def test_first_reads_at_once_are_each_objects_first_read_and_its_cells():
    from sam2_refine.lowres import low_res_spans
    from sam2_refine.seam import Window, low_res_span

    rng = np.random.default_rng(12)
    prompts, windows, frames = [], [], []
    for _ in range(500):
        frame = (int(rng.integers(300, 5000)), int(rng.integers(300, 5000)))
        x, y = rng.uniform(-20, frame[0]), rng.uniform(-20, frame[1])
        box = tiling.Box(max(x, 0.0), max(y, 0.0), min(x + rng.uniform(2, 200), frame[0]), min(y + rng.uniform(2, 150), frame[1]))
        zone = None if rng.random() < 0.2 else tuple(v + d for v, d in zip((box.x0, box.y0, box.x1, box.y1),
                                                                         rng.uniform(-30, 30, 4)))
        left, top = int(rng.integers(0, frame[0] - 64)), int(rng.integers(0, frame[1] - 64))
        windows.append(Window(left, top, int(rng.integers(64, frame[0] - left + 1)), int(rng.integers(64, frame[1] - top + 1))))
        prompts.append(engine.Prompt(0, box, None, zone))
        frames.append(frame)
    areas = engine.first_reads(prompts, windows, frames)
    assert [tuple(a) for a in areas.tolist()] == [engine.first_read(p, w, f) for p, w, f in zip(prompts, windows, frames)]
    grids = np.array([(256, int(rng.integers(100, 257))) for _ in prompts])
    sizes = np.array([(w.width, w.height) for w in windows], dtype=np.float64)
    spans = low_res_spans(areas, sizes, grids).tolist()
    for (col0, row0, col1, row1), w, (rows, cols), span in zip(areas.tolist(), windows, grids.tolist(), spans):
        r, c = low_res_span(row0, row1, w.height, rows), low_res_span(col0, col1, w.width, cols)
        assert span == [r.start, r.stop, c.start, c.stop]
