"""The refinement engine: rough polygons of one frame in, judged refined polygons out.

Each original becomes at most one refined polygon, or a reason why it has none. The
engine prompts SAM2 with each original's bounding box and decodes the boxes of a window
in batches (`decode_window`); each object's low-resolution logits are then resized to
image pixels only over its search area (box plus margin), so memory does not grow with
frame size times object count, and its outline is the sub-pixel zero crossing of those
logits (geometry.py). Each refinement is checked against its original (review.py); a
doubtful or empty one is replaced by the first of SAM2's alternative masks for the same
box, best first by SAM2's own IoU estimate, that passes every check (`settle`).

Following a mask: one that reaches the edge of the area read is followed further, twice
(by the margin, then by twice that), within the area SAM2 decoded for it (`decode_area`:
the search area and the original's allowed zone, plus those steps). It stops early once
the part already read spills outside the original so far that the review would doubt it
whatever lies beyond. A mask stopped that way, or still reaching the decoded area's edge,
is cut there and flagged `SPILLS_OUTSIDE`; one reaching the edge of the window SAM2 saw
(not the frame's) is cut there and flagged `REACHES_VIEW_EDGE`. So a noise mask costs a
small multiple of a real one, and a cut outline never replaces its original.

`refine_frame` runs these steps one after another for one frame; `pipeline.py` runs the
same steps for a whole job side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
from shapely.geometry import Polygon

from . import contacts, geometry, review, tiling
from .geometry import clip_to_image, coordinates_to_points
from .interface import RESOLUTION_WHOLE_FRAME
from .model import DecodedMasks, MaskPredictor, Window, decode_batch_size, decode_masks, low_res_span
from .outcome import Outcome, Reason
from .tiling import Box

# Kept for callers of the first release.
DEGENERATE = Reason.DEGENERATE
OUTSIDE = Reason.OUTSIDE
EMPTY_MASK = Reason.EMPTY_MASK
VANISHED = Reason.VANISHED

# Below review.SIZE_BLUR_SPAN, these are put down to SAM2's resolution (TOO_COARSE).
SIZE_REASONS = (Reason.MUCH_SMALLER, Reason.EMPTY_MASK)
# Times a mask reaching the edge of the area read is followed further (by the margin,
# then by twice that) before it is cut.
GROWTH_STEPS = 2

# A region (col0, row0, col1, row1), end-exclusive, in window pixels unless named otherwise.
Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class RefineSettings:
    smoothing: float
    padding: float
    resolution: str
    keep_apart: bool = True  # refined outlines of touching cells never overlap (contacts.py)


def prompt_box(coordinates: list[dict], width: int, height: int) -> Box | Reason:
    """The original's bounding box clipped to the frame, or the reason it cannot prompt."""
    points = coordinates_to_points(coordinates)
    if len(points) < 3:
        return Reason.DEGENERATE
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    if x1 <= x0 or y1 <= y0:
        return Reason.DEGENERATE
    clipped = Box(max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if clipped.x1 <= clipped.x0 or clipped.y1 <= clipped.y0:
        return Reason.OUTSIDE
    return clipped


def outline_of_coordinates(coordinates: list[dict]) -> Polygon | None:
    """The area a polygon's coordinates outline (repaired if it crosses itself), for callers
    that give no outlines of their own."""
    return review.original_outline({"shape": "polygon", "coordinates": coordinates})


# --- low-resolution logits ---------------------------------------------------------


def _source_positions(start: int, stop: int, output_size: int, source_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling of output pixels [start, stop) from a grid of `source_size`, as
    torch's interpolate(align_corners=False) does when resizing source -> output."""
    position = (np.arange(start, stop) + 0.5) * (source_size / output_size) - 0.5
    position = np.clip(position, 0.0, None)
    lower = np.minimum(np.floor(position).astype(np.int64), source_size - 1)
    upper = np.minimum(lower + 1, source_size - 1)
    return lower, upper, (position - lower).astype(np.float32)


def resize_region(
    low_res: np.ndarray, window_height: int, window_width: int, region: Region
) -> np.ndarray:
    """The logits resized to the window, over `region` only.

    `region` is (col0, row0, col1, row1) in window pixels, end-exclusive. The values equal
    those of resizing the whole (h, w) logit grid to (window_height, window_width) with
    bilinear interpolation, which is how SAM2 makes its full-size masks.
    """
    return resize_crop(LowRes(low_res, 0, 0, low_res.shape), window_height, window_width, region)


@dataclass(frozen=True)
class LowRes:
    """Cells [row0, row0 + rows) x [col0, col0 + cols) of a low-resolution logit grid of
    `grid` (rows, cols) cells stretched over the window; `values` holds them."""

    values: np.ndarray
    row0: int
    col0: int
    grid: tuple[int, int]


def crop_low_res(logits: np.ndarray, area: Region, window: Window) -> LowRes:
    """The cells of `logits` (h, w) over the window that resizing reads for `area`."""
    rows, cols = logits.shape
    col_span = low_res_span(area[0], area[2], window.width, cols)
    row_span = low_res_span(area[1], area[3], window.height, rows)
    return LowRes(np.ascontiguousarray(logits[row_span.start:row_span.stop, col_span.start:col_span.stop],
                                       dtype=np.float32), row_span.start, col_span.start, (rows, cols))


def resize_crop(low_res: LowRes, window_height: int, window_width: int, region: Region) -> np.ndarray:
    """`resize_region` from the cells a crop holds (it must hold those `region` reads)."""
    col0, row0, col1, row1 = region
    grid_rows, grid_cols = low_res.grid
    row_lo, row_hi, row_weight = _source_positions(row0, row1, window_height, grid_rows)
    col_lo, col_hi, col_weight = _source_positions(col0, col1, window_width, grid_cols)
    # The crop holds every cell read (see `crop_low_res`), so these stay within it.
    row_lo, row_hi = row_lo - low_res.row0, row_hi - low_res.row0
    col_lo, col_hi = col_lo - low_res.col0, col_hi - low_res.col0
    values = low_res.values
    rows = values[row_lo] * (1 - row_weight)[:, None] + values[row_hi] * row_weight[:, None]
    return rows[:, col_lo] * (1 - col_weight) + rows[:, col_hi] * col_weight


@dataclass(frozen=True)
class MaskField:
    """An object's logits over its outline, for the split between touching cells
    (contacts.FieldReader): `covered` (window pixels) is where they are known."""

    mask: LowRes
    window: Window
    covered: Region

    def __call__(self, region: contacts.PixelRegion) -> np.ndarray | None:
        window = self.window
        col0, row0, col1, row1 = region[0] - window.left, region[1] - window.top, region[2] - window.left, \
            region[3] - window.top
        if col0 < self.covered[0] or row0 < self.covered[1] or col1 > self.covered[2] or row1 > self.covered[3]:
            return None
        return resize_crop(self.mask, window.height, window.width, (col0, row0, col1, row1))


def mask_field(logits: LowRes, task: "ObjectTask", outline: Polygon | None) -> MaskField | None:
    """The cells of `logits` (a crop over the area SAM2 decoded) that resizing reads over
    `outline` and a pixel or two around it."""
    if outline is None:
        return None
    window = task.window
    col0, row0, col1, row1 = contacts.pixel_region_of(outline)
    decoded = task.decoded
    covered = (max(col0 - window.left, decoded[0]), max(row0 - window.top, decoded[1]),
               min(col1 - window.left, decoded[2]), min(row1 - window.top, decoded[3]))
    rows, cols = logits.grid
    col_span = low_res_span(covered[0], covered[2], window.width, cols)
    row_span = low_res_span(covered[1], covered[3], window.height, rows)
    values = logits.values[row_span.start - logits.row0:row_span.stop - logits.row0,
                           col_span.start - logits.col0:col_span.stop - logits.col0]
    return MaskField(LowRes(np.ascontiguousarray(values), row_span.start, col_span.start, logits.grid), window, covered)


# --- where each object is read -------------------------------------------------------


def plan_windows(boxes: list[Box], width: int, height: int, resolution: str) -> Iterator[tuple[Window, list[int]]]:
    """The windows SAM2 sees, each with the boxes it holds, placed one by one."""
    if resolution == RESOLUTION_WHOLE_FRAME:
        return iter(tiling.whole_frame(boxes, width, height))
    return tiling.iter_auto_windows(boxes, width, height)


@dataclass(frozen=True)
class Prompt:
    """One original that can prompt SAM2: its position among the location's originals,
    its box (image frame) and outline, and the bounds (image frame: x0, y0, x1, y1) of the
    zone its refinement may lie in without spilling (None: no outline to judge by)."""

    owner: int
    box: Box
    original: Polygon | None
    zone_bounds: tuple[float, float, float, float] | None


def make_prompt(owner: int, box: Box, original: Polygon | None, frame_size: tuple[int, int]) -> Prompt:
    """`original` is judged as the review judges it: clipped to the image."""
    original = review.within_frame(original, frame_size)
    if original is None:
        return Prompt(owner, box, None, None)
    # A round buffer's bounds are the original's, grown by the buffer distance.
    growth = review.spill_growth(original)
    x0, y0, x1, y1 = original.bounds
    return Prompt(owner, box, original, (x0 - growth, y0 - growth, x1 + growth, y1 + growth))


def _to_window(area: tuple[float, float, float, float], window: Window) -> Region:
    """Image-frame bounds rounded out to whole pixels, in window pixels, clipped to the window."""
    x0, y0, x1, y1 = area
    return (
        max(0, math.floor(x0) - window.left),
        max(0, math.floor(y0) - window.top),
        min(window.width, math.ceil(x1) - window.left),
        min(window.height, math.ceil(y1) - window.top),
    )


def first_read(prompt: Prompt, window: Window, frame_size: tuple[int, int]) -> Region:
    """Where an object's logits are read first (window pixels): its search area (box plus
    margin) and the zone its original allows, within the frame and the window."""
    width, height = frame_size
    col0, row0, col1, row1 = tiling.search_area(prompt.box, width, height)
    if prompt.zone_bounds is not None:
        x0, y0, x1, y1 = prompt.zone_bounds
        col0, row0, col1, row1 = min(col0, x0), min(row0, y0), max(col1, x1), max(row1, y1)
    col0, row0, col1, row1 = max(col0, 0), max(row0, 0), min(col1, width), min(row1, height)
    return _to_window((col0, row0, col1, row1), window)


def growth_step(box: Box) -> int:
    return math.ceil(tiling.margin_for(box))


def decode_area(prompt: Prompt, window: Window, frame_size: tuple[int, int]) -> Region:
    """The area SAM2 decodes for an object (window pixels): the first read and the room the
    mask may be followed into (GROWTH_STEPS steps: the margin, then twice that)."""
    reach = growth_step(prompt.box) * (2 ** GROWTH_STEPS - 1)
    col0, row0, col1, row1 = first_read(prompt, window, frame_size)
    return max(0, col0 - reach), max(0, row0 - reach), min(window.width, col1 + reach), min(window.height, row1 + reach)


def coarseness(box: Box, window: Window, grid: tuple[int, int]) -> float:
    """How many low-resolution mask pixels the box spans along its shorter side."""
    rows, cols = grid
    return min((box.x1 - box.x0) * cols / window.width, (box.y1 - box.y0) * rows / window.height)


# --- one object ------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectTask:
    """What one object's outline and review need once SAM2 has decoded its box; no model,
    so it can be settled anywhere (another process). `decoded` (window pixels) is where the
    logits are SAM2's; `candidates` are SAM2's alternative masks for the same box, with its
    IoU estimate of each."""

    prompt: Prompt
    window: Window
    frame_size: tuple[int, int]
    decoded: Region
    mask: LowRes
    predicted_iou: float | None = None
    object_score: float | None = None
    candidates: tuple[LowRes, ...] = ()
    candidate_iou: tuple[float, ...] = ()


def _grown(region: Region, sides: tuple[bool, bool, bool, bool], step: int, limit: Region) -> Region:
    """`region` with its (left, top, right, bottom) `sides` moved out by `step`, within `limit`."""
    col0, row0, col1, row1 = region
    left, top, right, bottom = sides
    return (
        max(limit[0], col0 - step) if left else col0,
        max(limit[1], row0 - step) if top else row0,
        min(limit[2], col1 + step) if right else col1,
        min(limit[3], row1 + step) if bottom else row1,
    )


def _sides_within(region: Region, limit: Region) -> tuple[bool, bool, bool, bool]:
    """Which sides of `region` lie inside `limit`, so a mask may be followed beyond them."""
    col0, row0, col1, row1 = region
    return col0 > limit[0], row0 > limit[1], col1 < limit[2], row1 < limit[3]


def _reaching(piece: np.ndarray, region: Region, limit: Region) -> tuple[bool, bool, bool, bool]:
    return tuple(t and o for t, o in zip(geometry.touched_sides(piece), _sides_within(region, limit)))


def _holds(region: Region, area: Region) -> bool:
    return region[0] <= area[0] and region[1] <= area[1] and region[2] >= area[2] and region[3] >= area[3]


def _outline(field: np.ndarray, piece: np.ndarray, region: Region, window: Window) -> Polygon | None:
    return geometry.piece_outline(field, piece, offset=(region[0] + window.left, region[1] + window.top))


def trace(task: ObjectTask, logits: LowRes, settings: RefineSettings, zone: Polygon | None) -> Outcome:
    """One mask's outline (see the module for how a mask is followed and cut). `zone` is the
    original's allowed zone (image frame), None when there is no original to judge by."""
    window, prompt = task.window, task.prompt
    frame_width, frame_height = task.frame_size
    limit = task.decoded
    region = first_read(prompt, window, task.frame_size)
    zone_area = None if prompt.zone_bounds is None else _to_window(prompt.zone_bounds, window)
    field = resize_crop(logits, window.height, window.width, region)
    piece = geometry.largest_piece(field > 0)
    if piece is None:
        return Outcome(None, Reason.EMPTY_MASK)
    step = growth_step(prompt.box)
    spilled, outline = False, None
    while any(reaching := _reaching(piece, region, limit)):
        if zone is not None and _holds(region, zone_area):
            # What lies beyond adds only area outside the zone: if the part read already
            # spills, the whole mask does.
            outline = _outline(field, piece, region, window)
            if outline is not None and review.spills(outline, prompt.original, zone):
                spilled = True
                break
            outline = None
        seed_row, seed_col = np.unravel_index(np.argmax(np.where(piece, field, -np.inf)), field.shape)
        seed = (int(seed_row) + region[1], int(seed_col) + region[0])  # window frame (row, col)
        region = _grown(region, reaching, step, limit)
        step *= 2
        field = resize_crop(logits, window.height, window.width, region)
        piece = geometry.piece_at(field > 0, seed[0] - region[1], seed[1] - region[0])
    left, top, right, bottom = geometry.touched_sides(piece)
    col0, row0, col1, row1 = region
    at_view_edge = (
        (left and col0 == 0 and window.left > 0)
        or (top and row0 == 0 and window.top > 0)
        or (right and col1 == window.width and window.left + window.width < frame_width)
        or (bottom and row1 == window.height and window.top + window.height < frame_height)
    )
    at_limit = spilled or (
        (left and col0 == limit[0] and col0 > 0)
        or (top and row0 == limit[1] and row0 > 0)
        or (right and col1 == limit[2] and col1 < window.width)
        or (bottom and row1 == limit[3] and row1 < window.height)
    )
    doubts = tuple(reason for reason, cut in ((Reason.SPILLS_OUTSIDE, at_limit), (Reason.REACHES_VIEW_EDGE, at_view_edge)) if cut)
    if outline is None:
        outline = _outline(field, piece, region, window)
    found = None if outline is None else clip_to_image(outline, frame_width, frame_height)
    if found is None:  # a mask too small or too thin to enclose any area
        return Outcome(None, Reason.EMPTY_MASK)
    polygon = geometry.finish_outline(found, settings.smoothing, settings.padding)
    if polygon is not None:
        polygon = clip_to_image(polygon, frame_width, frame_height)
    if polygon is None:
        return Outcome(None, Reason.VANISHED)
    return Outcome(polygon, doubts=doubts, found=found, cut=bool(doubts))


def _judged(outcome: Outcome, task: ObjectTask, span: float, zone: Polygon | None) -> Outcome:
    """`outcome` with the review's doubts about it on its own. An object spanning `span`
    mask pixels is too coarse at this resolution below review.COARSE_SPAN, and its size
    doubts are put down to the resolution below review.SIZE_BLUR_SPAN: then TOO_COARSE
    comes first."""
    blurred = span < review.SIZE_BLUR_SPAN
    if outcome.polygon is None:
        return Outcome(None, Reason.TOO_COARSE) if span < review.COARSE_SPAN or (blurred and outcome.reason in SIZE_REASONS) \
            else outcome
    doubts = review.object_doubts(outcome, task.prompt.original, task.frame_size, zone)
    if span < review.COARSE_SPAN or (blurred and any(reason in SIZE_REASONS for reason in doubts)):
        doubts = [Reason.TOO_COARSE] + [reason for reason in doubts if reason not in SIZE_REASONS]
    return replace(outcome, doubts=tuple(doubts))


def settle(task: ObjectTask, settings: RefineSettings) -> Outcome:
    """One object's judged outcome: SAM2's mask, or, when that is doubtful or empty, the
    best-rated of its alternatives that passes every check on its own."""
    zone = None if task.prompt.original is None else review.allowed_zone(task.prompt.original)
    span = coarseness(task.prompt.box, task.window, task.mask.grid)
    coarse = span < review.COARSE_SPAN
    primary = _judged(
        replace(trace(task, task.mask, settings, zone), predicted_iou=task.predicted_iou, object_score=task.object_score),
        task, span, zone,
    )
    keep = settings.keep_apart
    if primary.accepted or coarse or not task.candidates:
        return replace(primary, logits=mask_field(task.mask, task, primary.found)) if keep else primary
    for k in sorted(range(len(task.candidates)), key=lambda k: -task.candidate_iou[k]):
        alternative = replace(trace(task, task.candidates[k], settings, zone),
                              predicted_iou=task.candidate_iou[k], object_score=task.object_score)
        alternative = _judged(alternative, task, span, zone)
        if alternative.accepted:
            field = mask_field(task.candidates[k], task, alternative.found) if keep else None
            return replace(alternative, recovered=why_not_accepted(primary), logits=field)
    return replace(primary, logits=mask_field(task.mask, task, primary.found)) if keep else primary


def why_not_accepted(outcome: Outcome) -> Reason:
    """The one reason an outcome counts under: its skip reason, or its first doubt."""
    return outcome.reason if outcome.polygon is None else review.primary_reason(outcome.doubts)


def settle_all(tasks: list[ObjectTask], settings: RefineSettings) -> list[tuple[int, Outcome]]:
    """(owner, outcome) for each task: one unit of work for a pool."""
    return [(task.prompt.owner, settle(task, settings)) for task in tasks]


# --- one window ------------------------------------------------------------------------


def _scores(values: np.ndarray | None, k: int) -> float | None:
    return None if values is None else float(values[k])


def decode_window(
    predictor: MaskPredictor, window: Window, prompts: list[Prompt], frame_size: tuple[int, int]
) -> Iterator[list[ObjectTask]]:
    """The tasks of the window's `prompts`, one decode batch at a time; the predictor must
    have encoded `window`."""
    batch_size = decode_batch_size(predictor)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        boxes = np.array([[p.box.x0 - window.left, p.box.y0 - window.top, p.box.x1 - window.left,
                           p.box.y1 - window.top] for p in batch], dtype=np.float32)
        areas = [decode_area(p, window, frame_size) for p in batch]
        decoded: DecodedMasks = decode_masks(predictor, boxes, np.array(areas, dtype=np.int64))
        tasks = []
        for k, (prompt, area) in enumerate(zip(batch, areas)):
            # `settle` never tries the alternatives of an object too coarse at this resolution.
            alternatives = decoded.candidates is not None and \
                coarseness(prompt.box, window, decoded.logits.shape[1:]) >= review.COARSE_SPAN
            candidates = () if not alternatives else tuple(
                crop_low_res(candidate, area, window) for candidate in decoded.candidates[k])
            candidate_iou = () if not alternatives or decoded.candidate_iou is None else tuple(
                float(v) for v in decoded.candidate_iou[k])
            tasks.append(ObjectTask(
                prompt, window, frame_size, area, crop_low_res(decoded.logits[k], area, window),
                _scores(decoded.predicted_iou, k), _scores(decoded.object_score, k), candidates, candidate_iou,
            ))
        yield tasks


# --- one location ------------------------------------------------------------------------


@dataclass
class LocationPlan:
    """One frame's originals as the engine works on them: the outcome of each original
    that cannot prompt (None where it can), and its prompts. `windows()` places the windows
    SAM2 sees, each with the prompts it holds, one at a time."""

    frame_size: tuple[int, int]
    outcomes: list[Outcome | None]
    originals: list[Polygon | None]
    prompts: list[Prompt]
    resolution: str

    @property
    def prompt_count(self) -> int:
        return len(self.prompts)

    def windows(self) -> Iterator[tuple[Window, list[Prompt]]]:
        width, height = self.frame_size
        for window, members in plan_windows([p.box for p in self.prompts], width, height, self.resolution):
            yield window, [self.prompts[i] for i in members]


def plan_location(
    frame_size: tuple[int, int], coordinates: list[list[dict]], originals: list[Polygon | None], resolution: str
) -> LocationPlan:
    width, height = frame_size
    outcomes: list[Outcome | None] = [None] * len(coordinates)
    prompts: list[Prompt] = []
    for owner, (points, original) in enumerate(zip(coordinates, originals)):
        box = prompt_box(points, width, height)
        if isinstance(box, Reason):
            outcomes[owner] = Outcome(None, box)
        else:
            prompts.append(make_prompt(owner, box, original, frame_size))
    return LocationPlan(frame_size, outcomes, [review.within_frame(o, frame_size) for o in originals], prompts,
                        resolution)


def finish_location(plan: LocationPlan, accepted_elsewhere: list[Polygon] = (),
                    settings: RefineSettings | None = None) -> list[Outcome]:
    """The location's settled outcomes with the overlap check across them (and against
    outlines an earlier run accepted here, before padding); then, unless `settings` allow
    overlaps, touching outlines split and kept apart (contacts.py) and judged again."""
    outcomes = [outcome if outcome is not None else Outcome(None, Reason.EMPTY_MASK) for outcome in plan.outcomes]
    refined = [outcome.outline_found for outcome in outcomes]
    doubts = [list(outcome.doubts) for outcome in outcomes]
    outcomes = review.with_overlap_doubts(outcomes, refined, doubts, plan.originals, accepted_elsewhere)
    if settings is None or not settings.keep_apart:
        return outcomes
    # What earlier runs wrote here: their outlines as padded and smoothed (prototype: regrown).
    reach = max(settings.padding, 0.0) + settings.smoothing / 2
    written = [outline.buffer(reach) if reach > 0 else outline for outline in accepted_elsewhere]
    finish = contacts.finisher(settings.smoothing, settings.padding, plan.frame_size)
    return contacts.keep_outcomes_apart(outcomes, plan.originals, written, finish, plan.frame_size)


# The image of a window as the user sees it: (rows, cols, 3) float32 in [0, 1], at the
# window's resolution or lower (SAM2 resizes its input anyway).
WindowImages = Callable[[Window], np.ndarray]


def crops_of(image: np.ndarray) -> WindowImages:
    """Window images cut from a full-resolution frame."""
    return lambda window: np.ascontiguousarray(
        image[window.top:window.top + window.height, window.left:window.left + window.width]
    )


def refine_frame(
    predictor: MaskPredictor,
    window_images: WindowImages,
    frame_size: tuple[int, int],
    originals: list[list[dict]],
    settings: RefineSettings,
    on_progress: Callable[[int], None] = lambda done: None,
    outlines: list[Polygon | None] | None = None,
    accepted_elsewhere: list[Polygon] = (),
) -> list[Outcome]:
    """Refine and judge the originals (each a list of platform coordinates) of one frame,
    one step after another.

    `frame_size` is (width, height) in image pixels. `outlines` are the areas the originals
    outline, which the review compares refinements with (default: the polygons of their
    coordinates); `accepted_elsewhere` are outlines an earlier run accepted in this frame.
    `on_progress` receives how many originals are finished so far.
    """
    if outlines is None:
        outlines = [outline_of_coordinates(points) for points in originals]
    plan = plan_location(frame_size, originals, outlines, settings.resolution)
    done = len(originals) - plan.prompt_count
    on_progress(done)
    for window, prompts in plan.windows():
        predictor.encode(window_images(window), window)
        for tasks in decode_window(predictor, window, prompts, frame_size):
            for owner, outcome in settle_all(tasks, settings):
                plan.outcomes[owner] = outcome
            done += len(tasks)
            on_progress(done)
    return finish_location(plan, accepted_elsewhere, settings)
