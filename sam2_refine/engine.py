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

Where each object is read (its prompt, the area read first, the area decoded) is areas.py's.

Every judgement uses the thresholds of the job's settings (`RefineSettings.thresholds`),
through review.py's two entry points: `review.judge_object` for each mask on its own, and
`review.review_location` for a location's outcomes together (`finish_location`).
`pipeline.py` composes these steps, for a whole job or for one frame (`pipeline.refine_frame`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
from shapely.geometry import Polygon

from . import apart, geometry, review, tiling
from .areas import (  # noqa: F401 (the engine's names for them, as before)
    GROWTH_STEPS, Prompt, _to_window, coarseness, decode_area, decode_areas, first_read, first_reads, growth_step,
    make_prompt, prompt_box, prompt_boxes,
)
from .geometry import clip_to_image
from .interface import RESOLUTION_WHOLE_FRAME
from .lowres import LowRes, Region, crop_low_res, resize_crop, resize_region  # noqa: F401 (resize_region: earlier callers)
from .seam import DecodedMasks, MaskPredictor, PredictorAdapter, Window, adapt
from .outcome import Outcome, Reason
from .review import DEFAULT_THRESHOLDS, Thresholds
from .tiling import Box

# Kept for callers of the first release.
DEGENERATE = Reason.DEGENERATE
OUTSIDE = Reason.OUTSIDE
EMPTY_MASK = Reason.EMPTY_MASK
VANISHED = Reason.VANISHED

@dataclass(frozen=True)
class RefineSettings:
    """A job's settings for the engine: Smoothing and Padding (pixels), Resolution, the
    thresholds every refinement is judged by, and whether touching outlines are kept apart
    (apart.py; False: 'Allow overlapping outlines')."""

    smoothing: float
    padding: float
    resolution: str
    thresholds: Thresholds = DEFAULT_THRESHOLDS
    keep_apart: bool = True


def outline_of_coordinates(coordinates: list[dict]) -> Polygon | None:
    """The area a polygon's coordinates outline (repaired if it crosses itself), for callers
    that give no outlines of their own."""
    return review.original_outline({"shape": "polygon", "coordinates": coordinates})


# --- where each object is read (areas.py) ------------------------------------------------


def plan_windows(boxes: list[Box], width: int, height: int, resolution: str) -> Iterator[tuple[Window, list[int]]]:
    """The windows SAM2 sees, each with the boxes it holds, placed one by one."""
    if resolution == RESOLUTION_WHOLE_FRAME:
        return iter(tiling.whole_frame(boxes, width, height))
    return tiling.iter_auto_windows(boxes, width, height)


# --- one object ------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectTask:
    """What one object's outline and review need once SAM2 has decoded its box; no model,
    so it can be settled anywhere (another process). `decoded` (window pixels) is where the
    logits are SAM2's; `candidates` are SAM2's alternative masks for the same box, with its
    IoU estimate of each. `partial`: the logits hold only the cells the first read needs
    (`first_read`); a mask followed beyond them raises `NeedsAllLogits`, and the task is
    settled again with all of them."""

    prompt: Prompt
    window: Window
    frame_size: tuple[int, int]
    decoded: Region
    mask: LowRes
    predicted_iou: float | None = None
    object_score: float | None = None
    candidates: tuple[LowRes, ...] = ()
    candidate_iou: tuple[float, ...] = ()
    partial: bool = False


class NeedsAllLogits(Exception):
    """A partial task's mask goes on beyond the cells it holds."""


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


def trace(task: ObjectTask, logits: LowRes, settings: RefineSettings,
          zone: Polygon | review.AllowedZone | None) -> Outcome:
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
            if outline is not None and review.spills(outline, prompt.original, zone, settings.thresholds):
                spilled = True
                break
            outline = None
        seed_row, seed_col = np.unravel_index(np.argmax(np.where(piece, field, -np.inf)), field.shape)
        seed = (int(seed_row) + region[1], int(seed_col) + region[0])  # window frame (row, col)
        region = _grown(region, reaching, step, limit)
        step *= 2
        if task.partial and not logits.holds(region, window):
            raise NeedsAllLogits()
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


def settle(task: ObjectTask, settings: RefineSettings) -> Outcome:
    """One object's judged outcome: SAM2's mask, or, when that is doubtful or empty, the
    best-rated of its alternatives that passes every check on its own."""
    return _settled(task, settings)[0]


def _settled(task: ObjectTask, settings: RefineSettings) -> tuple[Outcome, LowRes]:
    """`settle`'s outcome and the logits of the mask it came from."""
    thresholds = settings.thresholds
    original = task.prompt.original
    zone = None if original is None else review.AllowedZone(original, thresholds)  # made if needed
    span = coarseness(task.prompt.box, task.window, task.mask.grid)
    coarse = span < review.COARSE_SPAN

    def judged(outcome: Outcome) -> Outcome:
        return review.judge_object(outcome, original, task.frame_size, span, thresholds, zone)

    primary = judged(replace(trace(task, task.mask, settings, zone), predicted_iou=task.predicted_iou,
                             object_score=task.object_score))
    if primary.accepted or coarse or not task.candidates:
        return primary, task.mask
    for k in sorted(range(len(task.candidates)), key=lambda k: -task.candidate_iou[k]):
        alternative = judged(replace(trace(task, task.candidates[k], settings, zone),
                                     predicted_iou=task.candidate_iou[k], object_score=task.object_score))
        if alternative.accepted:
            return replace(alternative, recovered=why_not_accepted(primary)), task.candidates[k]
    return primary, task.mask


def why_not_accepted(outcome: Outcome) -> Reason:
    """The one reason an outcome counts under: its skip reason, or its first doubt."""
    return outcome.reason if outcome.polygon is None else review.primary_reason(outcome.doubts)


SPLIT_MARGIN = 2  # pixels around an outline's bounds whose logits are kept (a split reads beyond an overlap)


@dataclass(frozen=True)
class ObjectMask:
    """The logits of the mask an object's outcome came from (image frame: the window they
    lie on), over the cells its outline covers and SPLIT_MARGIN pixels around (as far as
    SAM2 decoded them)."""

    window: Window
    logits: LowRes


@dataclass(frozen=True)
class Settled:
    """One object settled: its original's position in the location, its outcome, and the
    logits its outline came from (None when it has none)."""

    owner: int
    outcome: Outcome
    mask: ObjectMask | None


def settle_all(tasks: list[ObjectTask], settings: RefineSettings) -> list[Settled | None]:
    """Each task settled: one unit of work for a pool. A partial task whose mask goes on
    beyond the cells it holds, or whose cells do not reach SPLIT_MARGIN around its outline
    where touching outlines are kept apart, is None: it is to be settled again with all its
    logits."""
    settled: list[Settled | None] = []
    for task in tasks:
        try:
            outcome, logits = _settled(task, settings)
        except NeedsAllLogits:
            settled.append(None)
            continue
        found = outcome.outline_found
        mask = None
        if found is not None:
            x0, y0, x1, y1 = found.bounds
            area = _to_window((x0 - SPLIT_MARGIN, y0 - SPLIT_MARGIN, x1 + SPLIT_MARGIN, y1 + SPLIT_MARGIN), task.window)
            if task.partial and settings.keep_apart and not logits.holds(area, task.window):
                # The cells a split may read around the outline did not all cross: settled
                # again with all of them, so it is split as it would be in line.
                settled.append(None)
                continue
            mask = ObjectMask(task.window, logits.cropped_to(area, task.window))
        settled.append(Settled(task.prompt.owner, outcome, mask))
    return settled


# --- one window ------------------------------------------------------------------------


def _scores(values: np.ndarray | None, k: int) -> float | None:
    return None if values is None else float(values[k])


def decode_window(
    predictor: MaskPredictor | PredictorAdapter, window: Window, prompts: list[Prompt], frame_size: tuple[int, int]
) -> Iterator[list[ObjectTask]]:
    """The tasks of the window's `prompts`, one decode batch at a time; the predictor must
    have encoded `window`."""
    predictor = adapt(predictor)
    batch_size = predictor.decode_batch_size
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        boxes = np.array([[p.box.x0 - window.left, p.box.y0 - window.top, p.box.x1 - window.left,
                           p.box.y1 - window.top] for p in batch], dtype=np.float32)
        area_array = decode_areas(batch, window, frame_size)
        areas = [tuple(area) for area in area_array.tolist()]
        decoded: DecodedMasks = predictor.decode(boxes, area_array)
        grid = decoded.grid_shape
        tasks = []
        for k, (prompt, area) in enumerate(zip(batch, areas)):
            origin = (0, 0) if decoded.origins is None else (int(decoded.origins[k][0]), int(decoded.origins[k][1]))
            # `settle` never tries the alternatives of an object too coarse at this resolution.
            alternatives = decoded.candidates is not None and coarseness(prompt.box, window, grid) >= review.COARSE_SPAN
            candidates = () if not alternatives else tuple(
                crop_low_res(candidate, area, window, origin, grid) for candidate in decoded.candidates[k])
            candidate_iou = () if not alternatives or decoded.candidate_iou is None else tuple(
                float(v) for v in decoded.candidate_iou[k])
            tasks.append(ObjectTask(
                prompt, window, frame_size, area, crop_low_res(decoded.logits[k], area, window, origin, grid),
                _scores(decoded.predicted_iou, k), _scores(decoded.object_score, k), candidates, candidate_iou,
            ))
        yield tasks


# --- one location ------------------------------------------------------------------------


@dataclass
class LocationPlan:
    """One frame's originals as the engine works on them: the outcome of each original
    (None until settled; set at once for one that cannot prompt), and its prompts.
    `windows()` places the windows SAM2 sees, each with the prompts it holds, one at a time.
    For each settled original, `mask` gives the logits its outline came from until the
    location is finished (`finish_location` may read them)."""

    frame_size: tuple[int, int]
    outcomes: list[Outcome | None]
    originals: list[Polygon | None]
    prompts: list[Prompt]
    resolution: str
    _settled: list = field(default_factory=list, repr=False)
    _boxes: dict | None = field(default=None, repr=False)

    def settle(self, settled) -> None:
        """Record settled objects (`owners`, `outcomes`, and `mask(k)`, the logits the k-th
        one's outline came from, read only when asked for: `mask`)."""
        if not self._settled:
            self._settled = [None] * len(self.outcomes)
        for k, (owner, outcome) in enumerate(zip(settled.owners, settled.outcomes)):
            self.outcomes[owner] = outcome
            self._settled[owner] = (settled, k)

    def mask(self, owner: int) -> ObjectMask | None:
        """The logits the original's outline came from (None: it has none, or is not settled)."""
        found = self._settled[owner] if self._settled else None
        return None if found is None else found[0].mask(found[1])

    def logits_of(self, owner: int) -> apart.ObjectLogits | None:
        """`mask(owner)` with the span of the original's box in SAM2's mask pixels."""
        if (mask := self.mask(owner)) is None:
            return None
        if self._boxes is None:
            self._boxes = {prompt.owner: prompt.box for prompt in self.prompts}
        span = coarseness(self._boxes[owner], mask.window, mask.logits.grid)
        return apart.ObjectLogits(mask.window, mask.logits, span)

    @property
    def prompt_count(self) -> int:
        return len(self.prompts)

    def windows(self) -> Iterator[tuple[Window, list[Prompt]]]:
        width, height = self.frame_size
        for window, members in plan_windows([p.box for p in self.prompts], width, height, self.resolution):
            yield window, [self.prompts[i] for i in members]


def plan_location(
    frame_size: tuple[int, int], coordinates: list, originals: list[Polygon | None], settings: RefineSettings,
) -> LocationPlan:
    """The plan of one frame's originals (each a list of platform coordinates, or their
    (n, 2) points; `originals` the areas they outline, which the review compares
    refinements with): `prompt_box` and `make_prompt` of each, computed for all at once."""
    width, height = frame_size
    outcomes: list[Outcome | None] = [None] * len(coordinates)
    boxes = prompt_boxes(coordinates, width, height)
    clipped = review.within_frame_all(originals, frame_size)
    owners = [owner for owner, box in enumerate(boxes) if not isinstance(box, Reason)]
    zones = review.zone_bounds([clipped[owner] for owner in owners], settings.thresholds)
    prompts = [Prompt(owner, boxes[owner], clipped[owner], zone) for owner, zone in zip(owners, zones)]
    for owner, box in enumerate(boxes):
        if isinstance(box, Reason):
            outcomes[owner] = Outcome(None, box)
    return LocationPlan(frame_size, outcomes, clipped, prompts, settings.resolution)


def finish_location(plan: LocationPlan, accepted_elsewhere: list[Polygon], settings: RefineSettings,
                    written: list[Polygon] = (), submit: apart.Submit | None = None) -> list[Outcome]:
    """The location's settled outcomes reviewed together (`review.review_location`; an
    original the model never reached has an empty mask), then, unless the settings allow
    overlaps, touching outlines kept apart (apart.py: yielding to `written`, the outlines
    earlier runs accepted here; by the outline processes where `submit` is given)."""
    outcomes = [outcome if outcome is not None else Outcome(None, Reason.EMPTY_MASK) for outcome in plan.outcomes]
    outcomes = review.review_location(plan.originals, outcomes, settings.padding, accepted_elsewhere,
                                      settings.thresholds, plan.frame_size)
    if not settings.keep_apart:
        return outcomes
    options = apart.Options(settings.smoothing, settings.padding, plan.frame_size, settings.thresholds)
    return apart.keep_apart(outcomes, plan.originals, written, options, plan.logits_of, submit)


# The image of a window as the user sees it: (rows, cols, 3) float32 in [0, 1], at the
# window's resolution or lower (SAM2 resizes its input anyway).
WindowImages = Callable[[Window], np.ndarray]


def crops_of(image: np.ndarray) -> WindowImages:
    """Window images cut from a full-resolution frame."""
    return lambda window: np.ascontiguousarray(
        image[window.top:window.top + window.height, window.left:window.left + window.width]
    )
