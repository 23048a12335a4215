"""Where SAM2 looks: the windows of a frame that the encoder sees.

SAM2 resizes every input to 1024 x 1024 and predicts 256 x 256 low-resolution masks, so
an object's outline is only as fine as the low-resolution pixels that cover it.

`Whole frame`: one window, the frame (one encoder run per frame).
`Auto`: windows only where there are objects. An object whose box has longer side L
(image pixels) may sit in a window of side at most 16·L, so that its box spans at least
16 low-resolution pixels (256·L / side >= 16); sides come from a ladder 64·√2^k so that
similar objects share a size, and never drop below 64 pixels. Windows are placed
greedily from the top-left object down: a new window starts at the row of the top-most
unplaced object's box (less its margin), slides sideways to the position that holds that
object and the most other unplaced objects, and takes in every unplaced object whose box
plus margin fits inside it and whose own limit allows that side. An object too large for that limit
gets a window just big enough for it, which SAM2 then downscales. A frame narrower than
a window's side limits the window to the frame along that axis; SAM2 stretches such a
non-square window to its square input, which only adds detail along the short side.

Each window is then shrunk to the smallest square that still holds its members' boxes
with their margins and gives SAM2 context around them: a side of at least 4 x the largest
member's box side and at least 256 pixels (one low-resolution pixel per image pixel),
never more than the side chosen above; it is centred on its members. Shrinking changes
no membership, so the number of windows is that of the greedy placement, while each
object is seen at the finest resolution its window allows.

Cost: one encoder run per window. Dense small objects in a large frame need many
windows (e.g. 24-pixel cells: 362-pixel windows, up to about 45 for a 2048² frame
covered edge to edge).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .seam import Window

MIN_LOW_RES_SPAN = 16  # low-resolution mask pixels an object's box should span
LOW_RES_SIZE = 256     # SAM2's low-resolution mask side
MIN_WINDOW_SIDE = 64
MIN_MARGIN = 8.0       # image pixels
MARGIN_FRACTION = 0.25 # of the box's longer side
CONTEXT_FACTOR = 4     # a window's side is at least this many times its largest member's box side
MIN_CONTEXT_SIDE = 256 # and at least this (one low-resolution pixel per image pixel)


@dataclass(frozen=True)
class Box:
    """A box in image pixels (continuous platform coordinates)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def longer_side(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)


def margin_for(box: Box) -> float:
    """How far beyond its box an object's refined mask may reach, in image pixels."""
    return max(MIN_MARGIN, MARGIN_FRACTION * box.longer_side)


def search_area(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The box plus its margin, rounded out to whole pixels and clipped to the frame:
    (col0, row0, col1, row1), end-exclusive, image frame."""
    margin = margin_for(box)
    return (
        max(0, math.floor(box.x0 - margin)),
        max(0, math.floor(box.y0 - margin)),
        min(width, math.ceil(box.x1 + margin)),
        min(height, math.ceil(box.y1 + margin)),
    )


def search_areas(boxes: list[Box], width: int, height: int) -> list[tuple[int, int, int, int]]:
    """`search_area` of each box, computed for all at once (the same arithmetic)."""
    if not boxes:
        return []
    bounds = np.array([(b.x0, b.y0, b.x1, b.y1) for b in boxes], dtype=np.float64)
    margin = np.maximum(MIN_MARGIN, MARGIN_FRACTION * np.maximum(bounds[:, 2] - bounds[:, 0],
                                                                 bounds[:, 3] - bounds[:, 1]))[:, None]
    low = np.maximum(np.floor(bounds[:, :2] - margin), 0)
    high = np.minimum(np.ceil(bounds[:, 2:] + margin), (width, height))
    return [tuple(area) for area in np.concatenate([low, high], axis=1).astype(np.int64).tolist()]


def side_limit(box: Box) -> int:
    """The largest window side at which `box` spans MIN_LOW_RES_SPAN low-res pixels, on the ladder."""
    largest = LOW_RES_SIZE * box.longer_side / MIN_LOW_RES_SPAN
    if largest <= MIN_WINDOW_SIDE:
        return MIN_WINDOW_SIDE
    steps = math.floor(2 * math.log2(largest / MIN_WINDOW_SIDE) + 1e-9)
    return int(MIN_WINDOW_SIDE * 2 ** (steps / 2))


def _place(start: int, side: int, extent: int) -> tuple[int, int]:
    """A span of `side` pixels starting at `start`, moved back inside [0, extent)."""
    side = min(side, extent)
    start = min(max(0, start), extent - side)
    return start, side


def whole_frame(boxes: list[Box], width: int, height: int) -> list[tuple[Window, list[int]]]:
    return [(Window(0, 0, width, height), list(range(len(boxes))))] if boxes else []


def _best_left(first: int, band: np.ndarray, areas: np.ndarray, limits: np.ndarray, side: int, top: int,
               bottom: int, width: int) -> int:
    """The left edge (image column) of a window of `side` over rows [top, bottom) that holds
    `first`'s area and as many other unplaced areas of `band` (whose limits allow `side`)
    as possible; among equals, the one nearest `first`'s own left edge. `areas` (N, 4) and
    `limits` (N,) are every object's, `band` the unplaced objects' indices."""
    col0, _, col1, _ = (int(v) for v in areas[first])
    lowest, highest = max(0, col1 - side), min(col0, max(0, width - side))
    if highest <= lowest:
        return col0
    found = areas[band]
    eligible = found[(band != first) & (limits[band] >= side) & (top <= found[:, 1]) & (found[:, 3] <= bottom)
                     & (found[:, 2] - found[:, 0] <= side)]
    starts, ends = eligible[:, 0], eligible[:, 2]
    lefts = np.unique(np.concatenate([[min(col0, highest)], starts, ends - side]))
    lefts = lefts[(lowest <= lefts) & (lefts <= highest)]
    held = ((lefts[:, None] <= starts) & (ends <= lefts[:, None] + side)).sum(axis=1)
    # Most held, then nearest `first`'s left edge, then the leftmost (the first of equals).
    return int(lefts[np.lexsort((np.abs(lefts - col0), -held))[0]])


def greedy_windows(boxes: list[Box], width: int, height: int) -> list[tuple[Window, list[int]]]:
    """Windows of the largest allowed side covering every box with its margin, each
    listed with the boxes it holds (the placement rule in the module's docstring)."""
    return list(iter_greedy_windows(boxes, width, height))


def iter_greedy_windows(boxes: list[Box], width: int, height: int) -> Iterator[tuple[Window, list[int]]]:
    """`greedy_windows` one window at a time, as each is placed. The objects are kept in
    order of their areas' top rows: a window starts at or above the first unplaced one's,
    so only those whose areas start above its bottom row can be in it (a band of the
    frame, not every object left)."""
    return _greedy(search_areas(boxes, width, height), [side_limit(b) for b in boxes], width, height)


def _greedy(areas: list[tuple[int, int, int, int]], limits: list[int], width: int, height: int
            ) -> Iterator[tuple[Window, list[int]]]:
    if not areas:
        return
    order = sorted(range(len(areas)), key=lambda i: (areas[i][1], areas[i][0]))
    tops = [areas[i][1] for i in order]
    order_array, area_array, limit_array = np.array(order), np.array(areas, dtype=np.int64), np.array(limits)
    placed = np.zeros(len(areas), dtype=bool)
    head = 0
    while True:
        while head < len(order) and placed[order[head]]:
            head += 1
        if head == len(order):
            return
        first = order[head]
        col0, row0, col1, row1 = areas[first]
        side = max(limits[first], col1 - col0, row1 - row0)
        top, window_height = _place(row0, side, height)
        band = order_array[head:bisect_left(tops, top + window_height, lo=head)]
        band = band[~placed[band]]
        left = _best_left(first, band, area_array, limit_array, side, top, top + window_height, width)
        left, window_width = _place(left, side, width)
        window = Window(left, top, window_width, window_height)
        found = area_array[band]
        members = band[(band == first) | ((limit_array[band] >= side) & (left <= found[:, 0])
                                          & (found[:, 2] <= left + window_width) & (top <= found[:, 1])
                                          & (found[:, 3] <= top + window_height))]
        placed[members] = True
        yield window, members.tolist()


def _centred(start: int, stop: int, side: int, extent: int) -> tuple[int, int]:
    """A span of `side` pixels holding [start, stop) about its middle, moved inside [0, extent)."""
    return _place(start - (side - (stop - start)) // 2, side, extent)


def _shrunk(window: Window, member_boxes: list[Box], areas: list[tuple[int, int, int, int]], width: int,
            height: int) -> Window:
    """The smallest square window (within `window`'s side) that holds every member's search
    area (`areas`, from search_areas) and gives SAM2 context: a side of at least
    CONTEXT_FACTOR x the largest member's box side and at least MIN_CONTEXT_SIDE, centred
    on the members."""
    col0, row0 = min(a[0] for a in areas), min(a[1] for a in areas)
    col1, row1 = max(a[2] for a in areas), max(a[3] for a in areas)
    context = CONTEXT_FACTOR * max(b.longer_side for b in member_boxes)
    side = max(col1 - col0, row1 - row0, math.ceil(context), MIN_CONTEXT_SIDE)
    side = min(side, max(window.width, window.height))
    left, window_width = _centred(col0, col1, max(side, col1 - col0), width)
    top, window_height = _centred(row0, row1, max(side, row1 - row0), height)
    return Window(left, top, window_width, window_height)


def auto_windows(boxes: list[Box], width: int, height: int) -> list[tuple[Window, list[int]]]:
    """Windows covering every box with its margin, each listed with the boxes it holds:
    the greedy placement, then each window shrunk to what its members need."""
    return list(iter_auto_windows(boxes, width, height))


def iter_auto_windows(boxes: list[Box], width: int, height: int) -> Iterator[tuple[Window, list[int]]]:
    """`auto_windows` one window at a time, as each is placed (the first can be encoded
    while the rest are being placed)."""
    areas = search_areas(boxes, width, height)
    for window, members in _greedy(areas, [side_limit(b) for b in boxes], width, height):
        yield _shrunk(window, [boxes[i] for i in members], [areas[i] for i in members], width, height), members
