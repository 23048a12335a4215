"""The refinement engine: rough polygons of one frame in, refined polygons out.

Each original becomes at most one refined polygon, or a reason why it has none. The
engine prompts SAM2 with each original's bounding box, decodes boxes in batches, and
resizes each object's low-resolution logits to image pixels only over its search area
(box plus margin), so memory does not grow with frame size times object count. The
outline is the sub-pixel zero crossing of those logits (geometry.py). A mask that
reaches the edge of its search area is followed further, up to the window's edge, never
cut there; one that reaches the window's edge (not the frame's) is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from scipy import ndimage
from shapely.geometry import Polygon

from . import geometry, tiling
from .geometry import clip_to_image, coordinates_to_points
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


def plan_windows(boxes: list[Box], width: int, height: int, resolution: str) -> list[tuple[Window, list[int]]]:
    if resolution == RESOLUTION_WHOLE_FRAME:
        return tiling.whole_frame(boxes, width, height)
    return tiling.auto_windows(boxes, width, height)


# A region (col0, row0, col1, row1), end-exclusive, in window pixels.
Region = tuple[int, int, int, int]


def _grown(region: Region, sides: tuple[bool, bool, bool, bool], step: int, window: Window) -> Region:
    """`region` with its (left, top, right, bottom) `sides` moved out by `step`, within the window."""
    col0, row0, col1, row1 = region
    left, top, right, bottom = sides
    return (
        max(0, col0 - step) if left else col0,
        max(0, row0 - step) if top else row0,
        min(window.width, col1 + step) if right else col1,
        min(window.height, row1 + step) if bottom else row1,
    )


def _open_sides(region: Region, window: Window) -> tuple[bool, bool, bool, bool]:
    """Which sides of `region` lie inside the window, so a mask may go on beyond them."""
    col0, row0, col1, row1 = region
    return col0 > 0, row0 > 0, col1 < window.width, row1 < window.height


def _refine_one(
    low_res: np.ndarray,
    box: Box,
    window: Window,
    frame_width: int,
    frame_height: int,
    settings: RefineSettings,
    whole_window_logits: Callable[[], np.ndarray] | None = None,
) -> Outcome:
    """One object's outline from its low-resolution logits over `window`.

    The logits are read over the object's search area (box plus margin). Where the mask
    reaches a side of that area that lies inside the window, the area grows (first to the
    mask's extent on the low-resolution grid, then on the sides still reached) until the
    mask no longer reaches it or the area reaches the window's edge; a mask that still
    reaches a window edge that is not the frame's gets `Reason.REACHES_VIEW_EDGE`.
    `low_res` need only be valid over the search area when `whole_window_logits` is
    given: it is called (once) for logits valid over the whole window before growing.
    """
    region = _window_region(box, window, frame_width, frame_height)
    field = resize_region(low_res, window.height, window.width, region)
    piece = geometry.largest_piece(field > 0)
    if piece is None:
        return Outcome(None, Reason.EMPTY_MASK)
    step = math.ceil(tiling.margin_for(box))
    jumped = False
    while any(reaching := _reaching_sides(piece, region, window)):
        # Follow the piece into the grown region through its strongest pixel (window frame).
        seed_row, seed_col = np.unravel_index(np.argmax(np.where(piece, field, -np.inf)), field.shape)
        seed = (int(seed_row) + region[1], int(seed_col) + region[0])
        if not jumped:
            # First straight to the extent of the piece on the low-resolution grid (cheap), so a
            # large mask costs one resize, not one per step; steps then settle what is left.
            if whole_window_logits is not None:
                low_res = whole_window_logits()
            region = _union(region, _grid_extent(low_res, seed, window))
            jumped = True
        else:
            region = _grown(region, reaching, step, window)
            step *= 2
        field = resize_region(low_res, window.height, window.width, region)
        piece = geometry.piece_at(field > 0, seed[0] - region[1], seed[1] - region[0])
        if piece is None:
            return Outcome(None, Reason.EMPTY_MASK)
    doubts = (Reason.REACHES_VIEW_EDGE,) if _reaches_view_edge(piece, region, window, frame_width, frame_height) else ()
    outline = geometry.piece_outline(field, piece, offset=(region[0] + window.left, region[1] + window.top))
    polygon = None if outline is None else geometry.finish_outline(outline, settings.smoothing, settings.padding)
    if polygon is not None:
        polygon = clip_to_image(polygon, frame_width, frame_height)
    if polygon is None:
        return Outcome(None, Reason.VANISHED)
    return Outcome(polygon, doubts=doubts)


def _reaching_sides(piece: np.ndarray, region: Region, window: Window) -> tuple[bool, bool, bool, bool]:
    """The sides of `region` that the piece reaches and beyond which the window goes on."""
    return tuple(t and o for t, o in zip(geometry.touched_sides(piece), _open_sides(region, window)))


def _union(a: Region, b: Region) -> Region:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _grid_extent(low_res: np.ndarray, seed: tuple[int, int], window: Window) -> Region:
    """Window pixels that the positive low-resolution cells around `seed` (row, col; window
    pixels) can make positive: their group, cells up to two apart counting as one, plus the
    one-cell reach of bilinear resizing. The seed's own cell if none is positive."""
    cells_high, cells_wide = low_res.shape
    row_scale, col_scale = window.height / cells_high, window.width / cells_wide  # window pixels per cell
    row = min(int((seed[0] + 0.5) / row_scale), cells_high - 1)
    col = min(int((seed[1] + 0.5) / col_scale), cells_wide - 1)
    positive = low_res > 0
    # Adjacent image pixels read cells up to two apart, so the group allows one-cell gaps.
    labels, _ = ndimage.label(ndimage.binary_dilation(positive, structure=np.ones((3, 3), bool)))
    group = labels[row, col]
    rows, cols = np.nonzero(positive & (labels == group)) if group else (np.array([row]), np.array([col]))
    return (
        max(0, math.floor((cols.min() - 0.5) * col_scale)),
        max(0, math.floor((rows.min() - 0.5) * row_scale)),
        min(window.width, math.ceil((cols.max() + 1.5) * col_scale)),
        min(window.height, math.ceil((rows.max() + 1.5) * row_scale)),
    )


def _reaches_view_edge(piece: np.ndarray, region: Region, window: Window, frame_width: int, frame_height: int) -> bool:
    """Whether the piece touches a window edge that is not also the frame's edge."""
    left, top, right, bottom = geometry.touched_sides(piece)
    col0, row0, col1, row1 = region
    return (
        (left and col0 == 0 and window.left > 0)
        or (top and row0 == 0 and window.top > 0)
        or (right and col1 == window.width and window.left + window.width < frame_width)
        or (bottom and row1 == window.height and window.top + window.height < frame_height)
    )


def _with_scores(outcome: Outcome, decoded: DecodedMasks, k: int) -> Outcome:
    def score(values: np.ndarray | None) -> float | None:
        return None if values is None else float(values[k])

    return replace(outcome, predicted_iou=score(decoded.predicted_iou), object_score=score(decoded.object_score))


def _window_region(box: Box, window: Window, frame_width: int, frame_height: int) -> Region:
    """The box's search area in window pixels: where `_refine_one` first reads its logits."""
    col0, row0, col1, row1 = tiling.search_area(box, frame_width, frame_height)
    return col0 - window.left, row0 - window.top, col1 - window.left, row1 - window.top


def _whole_window_decoder(predictor: MaskPredictor, window_box: np.ndarray) -> Callable[[], np.ndarray] | None:
    """For a predictor that may compute logits only over the areas asked for, a call that
    decodes one box (1, 4) again over the whole window; None when logits always cover it."""
    if not hasattr(predictor, "decode"):
        return None
    return lambda: decode_masks(predictor, window_box, None).logits[0]


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
        if isinstance(prompt, Reason):
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
            areas = np.array([_window_region(boxes[i], window, width, height) for i in batch], dtype=np.int64)
            decoded = decode_masks(predictor, window_boxes, areas)
            for k, member in enumerate(batch):
                outcome = _refine_one(
                    decoded.logits[k], boxes[member], window, width, height, settings,
                    _whole_window_decoder(predictor, window_boxes[k:k + 1]),
                )
                outcomes[box_owner[member]] = _with_scores(outcome, decoded, k)
            done += len(batch)
            on_progress(done)
    return [outcome if outcome is not None else Outcome(None, Reason.EMPTY_MASK) for outcome in outcomes]
