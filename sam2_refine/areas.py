"""Where each object is read: its box prompt, the zone its original allows, the area its
logits are read in first and the area SAM2 decodes for it, one by one and for many at once
(the same arithmetic).

Frames: boxes, originals and zones are in image pixels (x = column, y = row); a `Region`
(col0, row0, col1, row1), end-exclusive, is in the pixels of the window SAM2 saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry import Polygon

from . import review, tiling
from .geometry import coordinates_to_points
from .lowres import Region
from .outcome import Reason
from .review import DEFAULT_THRESHOLDS, Thresholds
from .seam import Window
from .tiling import Box

# Times a mask reaching the edge of the area read is followed further (by the margin,
# then by twice that) before it is cut.
GROWTH_STEPS = 2


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


def prompt_boxes(coordinates: list, width: int, height: int) -> list[Box | Reason]:
    """`prompt_box` of each original (platform coordinates or points), all at once."""
    points = [coordinates_to_points(c) for c in coordinates]
    boxes: list[Box | Reason] = [Reason.DEGENERATE] * len(points)
    enough = [k for k, found in enumerate(points) if len(found) >= 3]
    if not enough:
        return boxes
    counts = np.array([len(points[k]) for k in enough])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = np.concatenate([points[k] for k in enough])
    (x0, y0), (x1, y1) = np.minimum.reduceat(flat, starts, axis=0).T, np.maximum.reduceat(flat, starts, axis=0).T
    degenerate = (x1 <= x0) | (y1 <= y0)
    # max(v, 0.0) and min(v, limit) as Python takes them (the first argument unless the other is beyond it)
    clipped = np.column_stack([np.where(0.0 > x0, 0.0, x0), np.where(0.0 > y0, 0.0, y0),
                               np.where(float(width) < x1, float(width), x1), np.where(float(height) < y1, float(height), y1)])
    outside = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    for k, bounds, bad, out in zip(enough, clipped.tolist(), degenerate.tolist(), outside.tolist()):
        boxes[k] = Reason.DEGENERATE if bad else Reason.OUTSIDE if out else Box(*bounds)
    return boxes


@dataclass(frozen=True)
class Prompt:
    """One original that can prompt SAM2: its position among the location's originals,
    its box (image frame) and outline, and the bounds (image frame: x0, y0, x1, y1) of the
    zone its refinement may lie in without spilling (None: no outline to judge by)."""

    owner: int
    box: Box
    original: Polygon | None
    zone_bounds: tuple[float, float, float, float] | None


def make_prompt(owner: int, box: Box, original: Polygon | None, frame_size: tuple[int, int],
                thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Prompt:
    """`original` is judged as the review judges it: clipped to the image."""
    original = review.within_frame(original, frame_size)
    if original is None:
        return Prompt(owner, box, None, None)
    # A round buffer's bounds are the original's, grown by the buffer distance.
    growth = review.spill_growth(original, thresholds)
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


def _read_bounds(prompts: list[Prompt], origins: np.ndarray, sizes: np.ndarray, frames: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`first_read` of each prompt at once, as (lower, upper) window pixels (N, 2) each, and
    its margin: `origins`, `sizes` and `frames` are (N, 2) or (2,), (left, top), (width,
    height) of each window and (width, height) of each frame."""
    boxes = np.array([(p.box.x0, p.box.y0, p.box.x1, p.box.y1) for p in prompts], dtype=np.float64).reshape(-1, 4)
    zones = np.array([p.zone_bounds if p.zone_bounds is not None else (np.nan,) * 4 for p in prompts],
                     dtype=np.float64).reshape(-1, 4)
    margin = np.maximum(tiling.MIN_MARGIN, tiling.MARGIN_FRACTION * np.maximum(boxes[:, 2] - boxes[:, 0],
                                                                                boxes[:, 3] - boxes[:, 1]))
    lower = np.maximum(np.floor(boxes[:, :2] - margin[:, None]), 0.0)  # tiling.search_area
    upper = np.minimum(np.ceil(boxes[:, 2:] + margin[:, None]), frames)
    lower = np.maximum(np.fmin(lower, zones[:, :2]), 0.0)              # first_read
    upper = np.minimum(np.fmax(upper, zones[:, 2:]), frames)
    lower = np.maximum(np.floor(lower) - origins, 0.0)                  # _to_window
    upper = np.minimum(np.ceil(upper) - origins, sizes)
    return lower, upper, margin


def first_reads(prompts: list[Prompt], windows: list[Window], frame_sizes: list[tuple[int, int]]) -> np.ndarray:
    """`first_read` of each prompt in its window and frame, (N, 4) int64, all at once."""
    origins = np.array([(w.left, w.top) for w in windows], dtype=np.float64).reshape(-1, 2)
    sizes = np.array([(w.width, w.height) for w in windows], dtype=np.float64).reshape(-1, 2)
    lower, upper, _ = _read_bounds(prompts, origins, sizes, np.array(frame_sizes, dtype=np.float64).reshape(-1, 2))
    return np.concatenate([lower, upper], axis=1).astype(np.int64)


def decode_areas(prompts: list[Prompt], window: Window, frame_size: tuple[int, int]) -> np.ndarray:
    """`decode_area` of each prompt, (N, 4) int64, computed for the batch at once."""
    origin = np.array([window.left, window.top], dtype=np.float64)
    size = np.array([window.width, window.height], dtype=np.float64)
    lower, upper, margin = _read_bounds(prompts, origin, size, np.array(frame_size, dtype=np.float64))
    reach = (np.ceil(margin) * (2 ** GROWTH_STEPS - 1))[:, None]
    return np.concatenate([np.maximum(lower - reach, 0.0), np.minimum(upper + reach, size)], axis=1).astype(np.int64)


def coarseness(box: Box, window: Window, grid: tuple[int, int]) -> float:
    """How many low-resolution mask pixels the box spans along its shorter side."""
    rows, cols = grid
    return min((box.x1 - box.x0) * cols / window.width, (box.y1 - box.y0) * rows / window.height)
