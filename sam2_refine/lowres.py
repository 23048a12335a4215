"""One object's low-resolution logits: the cells of SAM2's grid the engine keeps for it,
and their bilinear resizing to window pixels over a region, as SAM2 resizes its masks.

Frames: a low-resolution grid of (rows, cols) cells is stretched over the window; a region
is (col0, row0, col1, row1) in window pixels, end-exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .seam import Window, low_res_span

# A region (col0, row0, col1, row1), end-exclusive, in window pixels.
Region = tuple[int, int, int, int]


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

    def cropped_to(self, area: Region, window: Window) -> "LowRes":
        """The cells of this crop that resizing reads for `area` (window pixels), as far as
        it holds them (a view)."""
        rows, cols = self.grid
        col_span = low_res_span(area[0], area[2], window.width, cols)
        row_span = low_res_span(area[1], area[3], window.height, rows)
        row0, col0 = max(row_span.start, self.row0), max(col_span.start, self.col0)
        return LowRes(self.values[row0 - self.row0:row_span.stop - self.row0, col0 - self.col0:col_span.stop - self.col0],
                      row0, col0, self.grid)

    def holds(self, region: Region, window: Window) -> bool:
        """Whether this crop holds every cell `resize_crop` reads for `region` (window pixels,
        within the window)."""
        col0, row0, col1, row1 = region
        if col0 < 0 or row0 < 0 or col1 > window.width or row1 > window.height or col1 <= col0 or row1 <= row0:
            return False
        rows, cols = self.grid
        first_row, _, _ = _source_positions(row0, row0 + 1, window.height, rows)
        _, last_row, _ = _source_positions(row1 - 1, row1, window.height, rows)
        first_col, _, _ = _source_positions(col0, col0 + 1, window.width, cols)
        _, last_col, _ = _source_positions(col1 - 1, col1, window.width, cols)
        held_rows, held_cols = self.values.shape
        return (first_row[0] >= self.row0 and last_row[0] < self.row0 + held_rows
                and first_col[0] >= self.col0 and last_col[0] < self.col0 + held_cols)


def low_res_spans(areas: np.ndarray, window_sizes: np.ndarray, grids: np.ndarray) -> np.ndarray:
    """`low_res_span` of each area's columns and rows at once: `areas` (N, 4) window pixels
    (col0, row0, col1, row1), `window_sizes` (N, 2) (width, height), `grids` (N, 2) (rows,
    cols); (N, 4) int64 (row start, row stop, col start, col stop), the same cells."""
    areas = np.asarray(areas, dtype=np.int64)
    spans = []
    for start, stop, size, cells in ((areas[:, 1], areas[:, 3], window_sizes[:, 1], grids[:, 0]),
                                     (areas[:, 0], areas[:, 2], window_sizes[:, 0], grids[:, 1])):
        scale = cells / size
        first = np.maximum(0.0, (start + 0.5) * scale - 0.5)
        last = np.maximum(0.0, (np.maximum(stop, start + 1) - 0.5) * scale - 0.5)
        spans += [np.maximum(0, first.astype(np.int64) - 1), np.minimum(cells, last.astype(np.int64) + 3)]
    return np.column_stack(spans)


def crop_low_res(logits: np.ndarray, area: Region, window: Window, origin: tuple[int, int] = (0, 0),
                 grid: tuple[int, int] | None = None) -> LowRes:
    """The cells over the window that resizing reads for `area`, from `logits` (h, w): the
    whole low-resolution grid, or a crop of a grid of `grid` cells starting at cell `origin`
    (row, col) that holds them (DecodedMasks.origins)."""
    rows, cols = grid or logits.shape
    col_span = low_res_span(area[0], area[2], window.width, cols)
    row_span = low_res_span(area[1], area[3], window.height, rows)
    row0, col0 = origin
    return LowRes(np.ascontiguousarray(logits[row_span.start - row0:row_span.stop - row0,
                                              col_span.start - col0:col_span.stop - col0], dtype=np.float32),
                  row_span.start, col_span.start, (rows, cols))


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
