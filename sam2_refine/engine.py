"""The refinement engine: rough polygons of one frame in, refined polygons out.

Each original becomes at most one refined polygon, or a reason why it has none. The
engine prompts SAM2 with each original's bounding box, decodes boxes in batches, and
upsamples each object's low-resolution logits only over its box plus margin, so memory
does not grow with frame size times object count, and a mask cannot spill onto
neighbours outside that area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from shapely.geometry import Polygon

from . import tiling
from .geometry import clip_to_image, coordinates_to_points, mask_to_polygon
from .interface import RESOLUTION_WHOLE_FRAME
from .model import DecodedMasks, MaskPredictor, Window, decode_batch_size, decode_masks
from .tiling import Box

class Reason(StrEnum):
    """Why an original has no refined polygon (skips), or why its refined polygon is
    doubtful (doubts). The values are what messages count."""

    # Skips: no refined polygon.
    DEGENERATE = "degenerate prompt"
    OUTSIDE = "outside the image"
    EMPTY_MASK = "empty mask"
    VANISHED = "vanished after padding"
    # Doubts: a refined polygon exists, but it may not replace its original.
    REACHES_VIEW_EDGE = "reaches the edge of SAM2's view"
    SPILLS_OUTSIDE = "spills outside the original"
    MUCH_SMALLER = "much smaller than the original"
    OVERLAPS_ANOTHER = "overlaps another refined outline"
    LOW_PREDICTED_IOU = "low SAM2 confidence"
    NO_OBJECT = "SAM2 sees no object"

    @property
    def is_skip(self) -> bool:
        return self in SKIP_REASONS


SKIP_REASONS = frozenset({Reason.DEGENERATE, Reason.OUTSIDE, Reason.EMPTY_MASK, Reason.VANISHED})

# Kept for callers of the first release.
DEGENERATE = Reason.DEGENERATE
OUTSIDE = Reason.OUTSIDE
EMPTY_MASK = Reason.EMPTY_MASK
VANISHED = Reason.VANISHED


@dataclass(frozen=True)
class RefineSettings:
    smoothing: float
    padding: float
    resolution: str


@dataclass(frozen=True)
class Outcome:
    """The result for one original: a polygon in image coordinates, or the reason for none.

    `doubts` lists why a polygon may not replace its original (empty: accepted so far);
    the scores are SAM2's own, None when the predictor gives none.
    """

    polygon: Polygon | None
    reason: Reason | None = None
    doubts: tuple[Reason, ...] = ()
    predicted_iou: float | None = None
    object_score: float | None = None


def prompt_box(coordinates: list[dict], width: int, height: int) -> Box | str:
    """The original's bounding box clipped to the frame, or the reason it cannot prompt."""
    points = coordinates_to_points(coordinates)
    if len(points) < 3:
        return DEGENERATE
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    if x1 <= x0 or y1 <= y0:
        return DEGENERATE
    clipped = Box(max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if clipped.x1 <= clipped.x0 or clipped.y1 <= clipped.y0:
        return OUTSIDE
    return clipped


def _source_positions(start: int, stop: int, output_size: int, source_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear sampling of output pixels [start, stop) from a grid of `source_size`, as
    torch's interpolate(align_corners=False) does when resizing source -> output."""
    position = (np.arange(start, stop) + 0.5) * (source_size / output_size) - 0.5
    position = np.clip(position, 0.0, None)
    lower = np.minimum(np.floor(position).astype(np.int64), source_size - 1)
    upper = np.minimum(lower + 1, source_size - 1)
    return lower, upper, (position - lower).astype(np.float32)


def resize_region(
    low_res: np.ndarray, window_height: int, window_width: int, region: tuple[int, int, int, int]
) -> np.ndarray:
    """The logits resized to the window, over `region` only.

    `region` is (col0, row0, col1, row1) in window pixels, end-exclusive. The values equal
    those of resizing the whole (h, w) logit grid to (window_height, window_width) with
    bilinear interpolation, which is how SAM2 makes its full-size masks.
    """
    col0, row0, col1, row1 = region
    source_rows, source_cols = low_res.shape
    row_lo, row_hi, row_weight = _source_positions(row0, row1, window_height, source_rows)
    col_lo, col_hi, col_weight = _source_positions(col0, col1, window_width, source_cols)
    rows = low_res[row_lo] * (1 - row_weight)[:, None] + low_res[row_hi] * row_weight[:, None]
    return rows[:, col_lo] * (1 - col_weight) + rows[:, col_hi] * col_weight


def upsample_region(
    low_res: np.ndarray, window_height: int, window_width: int, region: tuple[int, int, int, int]
) -> np.ndarray:
    """The object's mask over `region`: resized logits above SAM2's threshold, 0."""
    return resize_region(low_res, window_height, window_width, region) > 0.0


def plan_windows(boxes: list[Box], width: int, height: int, resolution: str) -> list[tuple[Window, list[int]]]:
    if resolution == RESOLUTION_WHOLE_FRAME:
        return tiling.whole_frame(boxes, width, height)
    return tiling.auto_windows(boxes, width, height)


def _refine_one(
    low_res: np.ndarray, box: Box, window: Window, frame_width: int, frame_height: int, settings: RefineSettings
) -> Outcome:
    col0, row0, col1, row1 = tiling.search_area(box, frame_width, frame_height)
    region = (col0 - window.left, row0 - window.top, col1 - window.left, row1 - window.top)
    mask = upsample_region(low_res, window.height, window.width, region)
    if not mask.any():
        return Outcome(None, EMPTY_MASK)
    polygon = mask_to_polygon(mask, settings.smoothing, settings.padding, offset=(col0, row0))
    if polygon is not None:
        polygon = clip_to_image(polygon, frame_width, frame_height)
    if polygon is None:
        return Outcome(None, VANISHED)
    return Outcome(polygon)


def _with_scores(outcome: Outcome, decoded: DecodedMasks, k: int) -> Outcome:
    def score(values: np.ndarray | None) -> float | None:
        return None if values is None else float(values[k])

    return replace(outcome, predicted_iou=score(decoded.predicted_iou), object_score=score(decoded.object_score))


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
) -> list[Outcome]:
    """Refine the originals (each a list of platform coordinates) of one frame.

    `frame_size` is (width, height) in image pixels. `on_progress` receives how many
    originals are finished so far.
    """
    width, height = frame_size
    outcomes: list[Outcome | None] = [None] * len(originals)
    boxes: list[Box] = []
    box_owner: list[int] = []
    for index, coordinates in enumerate(originals):
        prompt = prompt_box(coordinates, width, height)
        if isinstance(prompt, str):
            outcomes[index] = Outcome(None, prompt)
        else:
            boxes.append(prompt)
            box_owner.append(index)
    done = len(originals) - len(boxes)
    on_progress(done)
    for window, members in plan_windows(boxes, width, height, settings.resolution):
        predictor.encode(window_images(window), window)
        batch_size = decode_batch_size(predictor)
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            window_boxes = np.array(
                [[boxes[i].x0 - window.left, boxes[i].y0 - window.top,
                  boxes[i].x1 - window.left, boxes[i].y1 - window.top] for i in batch],
                dtype=np.float32,
            )
            decoded = decode_masks(predictor, window_boxes)
            for k, member in enumerate(batch):
                outcome = _refine_one(decoded.logits[k], boxes[member], window, width, height, settings)
                outcomes[box_owner[member]] = _with_scores(outcome, decoded, k)
            done += len(batch)
            on_progress(done)
    return [outcome if outcome is not None else Outcome(None, EMPTY_MASK) for outcome in outcomes]
