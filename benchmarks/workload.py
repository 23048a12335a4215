"""Synthetic cells: a deterministic uint16 frame, rough outlines, and the true masks.

Cells are ellipses placed one per slot of a grid, so they never overlap. Each rough
outline is a jittered polygon a little outside its cell, as a user would draw it.
`Cells.low_res_logits` plays a well-trained SAM2: for a box it returns a signed
distance to the cell nearest the box's centre, sampled on the 256 x 256 low-resolution
grid over the current window, so masks and outlines have realistic size and shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOW_RES = 256
BACKGROUND = 400.0
NOISE = 60.0


@dataclass(frozen=True)
class Cells:
    """Ellipses in platform coordinates (x = column, y = row, pixel centres at +0.5)."""

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray       # semi-axis along `angle`
    b: np.ndarray       # semi-axis across it
    angle: np.ndarray   # radians

    def __len__(self) -> int:
        return len(self.cx)

    def save(self, path: Path) -> None:
        np.savez(path, cx=self.cx, cy=self.cy, a=self.a, b=self.b, angle=self.angle)

    @classmethod
    def load(cls, path: str | Path) -> "Cells":
        with np.load(path) as data:
            return cls(data["cx"], data["cy"], data["a"], data["b"], data["angle"])

    def signed(self, index: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Approximately the signed distance (pixels) to cell `index`'s outline, > 0 inside."""
        cos, sin = math.cos(self.angle[index]), math.sin(self.angle[index])
        u = (x - self.cx[index]) * cos + (y - self.cy[index]) * sin
        v = (y - self.cy[index]) * cos - (x - self.cx[index]) * sin
        rho = np.sqrt((u / self.a[index]) ** 2 + (v / self.b[index]) ** 2)
        return ((1.0 - rho) * math.sqrt(self.a[index] * self.b[index])).astype(np.float32)

    def bounds(self, index: int) -> tuple[int, int, int, int]:
        """(col0, row0, col1, row1), end-exclusive, of the pixels the cell may cover."""
        r = float(max(self.a[index], self.b[index])) + 1.0
        return (int(self.cx[index] - r), int(self.cy[index] - r), int(self.cx[index] + r) + 1, int(self.cy[index] + r) + 1)

    def nearest(self, x: float, y: float) -> int:
        return int(np.argmin((self.cx - x) ** 2 + (self.cy - y) ** 2))

    def low_res_logits(self, box: np.ndarray, left: int, top: int, width: int, height: int) -> np.ndarray:
        """(256, 256) logits over the window for a box given in window pixels."""
        logits = np.full((LOW_RES, LOW_RES), -1.0e4, np.float32)
        self.write_logits(logits, box, left, top, width, height, None)
        return logits

    def batch_logits(self, boxes: np.ndarray, left: int, top: int, width: int, height: int,
                     areas: np.ndarray | None) -> np.ndarray:
        """`low_res_logits` for each box, filled only over its area (what is not asked for
        is left as it is in a fresh array: the engine never reads it)."""
        logits = np.empty((len(boxes), LOW_RES, LOW_RES), np.float32) if areas is not None else \
            np.full((len(boxes), LOW_RES, LOW_RES), -1.0e4, np.float32)
        for k, box in enumerate(boxes):
            self.write_logits(logits[k], box, left, top, width, height, None if areas is None else areas[k])
        return logits

    def write_logits(self, out: np.ndarray, box: np.ndarray, left: int, top: int, width: int, height: int,
                     area: np.ndarray | None) -> None:
        x0, y0, x1, y1 = (float(v) for v in box)
        index = self.nearest(left + (x0 + x1) / 2, top + (y0 + y1) / 2)
        col_span, row_span = slice(0, LOW_RES), slice(0, LOW_RES)
        if area is not None:
            col0, row0, col1, row1 = (int(v) for v in area)
            col_span = _cells_read(col0, col1, width)
            row_span = _cells_read(row0, row1, height)
        columns = left + (np.arange(col_span.start, col_span.stop) + 0.5) * (width / LOW_RES)
        rows = top + (np.arange(row_span.start, row_span.stop) + 0.5) * (height / LOW_RES)
        out[row_span, col_span] = self.signed(index, columns[None, :], rows[:, None])

    def true_mask(self, index: int, frame_width: int, frame_height: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The cell's pixels (centres inside), cropped: (mask, (col0, row0))."""
        col0, row0, col1, row1 = self.bounds(index)
        col0, row0 = max(col0, 0), max(row0, 0)
        col1, row1 = min(col1, frame_width), min(row1, frame_height)
        cols = np.arange(col0, col1) + 0.5
        rows = np.arange(row0, row1) + 0.5
        return self.signed(index, cols[None, :], rows[:, None]) > 0, (col0, row0)


def _cells_read(start: int, stop: int, window_side: int) -> slice:
    """Low-resolution cells that bilinear resizing to `window_side` reads for window pixels
    [start, stop), with one to spare on each side."""
    scale = LOW_RES / window_side
    first = max(0, int(max((start + 0.5) * scale - 0.5, 0.0)) - 1)
    last = min(LOW_RES, int(max((max(stop, start + 1) - 0.5) * scale - 0.5, 0.0)) + 3)
    return slice(first, last)


@dataclass(frozen=True)
class Workload:
    size: int
    count: int
    image: np.ndarray              # (size, size) uint16
    cells: Cells
    outlines: list[list[dict]]     # rough outlines, platform coordinates

    @property
    def name(self) -> str:
        return f"{self.size}² × {self.count}"


def place_cells(size: int, count: int, rng: np.random.Generator) -> Cells:
    per_side = math.ceil(math.sqrt(count * 1.3))
    slot = size / per_side
    slots = rng.choice(per_side * per_side, size=count, replace=False)
    largest = min(30.0, 0.3 * slot)
    a = rng.uniform(0.6, 1.0, count) * largest
    a = np.maximum(a, 5.0)
    b = np.maximum(a * rng.uniform(0.6, 1.0, count), 4.0)
    room = np.maximum(slot / 2 - 1.35 * a - 2, 0.0)
    cx = (slots % per_side + 0.5) * slot + rng.uniform(-1, 1, count) * room
    cy = (slots // per_side + 0.5) * slot + rng.uniform(-1, 1, count) * room
    angle = rng.uniform(0, math.pi, count)
    return Cells(cx, cy, a, b, angle)


def draw(cells: Cells, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noisy background with bright cells, drawn in strips of rows so that a 32768² frame
    needs its 2 GB of uint16 and little more."""
    image = np.empty((size, size), np.uint16)
    strip = max(1, 2**24 // size)
    for row in range(0, size, strip):
        rows = min(strip, size - row)
        image[row:row + rows] = np.clip(rng.normal(BACKGROUND, NOISE, (rows, size)), 0, 65535)
    for index in range(len(cells)):
        col0, row0, col1, row1 = cells.bounds(index)
        col0, row0, col1, row1 = max(col0 - 2, 0), max(row0 - 2, 0), min(col1 + 2, size), min(row1 + 2, size)
        cols = np.arange(col0, col1) + 0.5
        rows = np.arange(row0, row1) + 0.5
        edge = np.clip(cells.signed(index, cols[None, :], rows[:, None]) / 1.5 + 0.5, 0.0, 1.0)
        patch = image[row0:row1, col0:col1] + edge * rng.uniform(2000, 3500)
        image[row0:row1, col0:col1] = np.clip(patch, 0, 65535)
    return image


def rough_outline(cells: Cells, index: int, rng: np.random.Generator) -> list[dict]:
    """A jittered polygon around the cell: 10-16 vertices, 10-35 % outside it."""
    vertices = int(rng.integers(10, 17))
    angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
    a, b, angle = cells.a[index], cells.b[index], cells.angle[index]
    radius = a * b / np.sqrt((b * np.cos(angles)) ** 2 + (a * np.sin(angles)) ** 2)
    radius = radius * rng.uniform(1.1, 1.35, vertices)
    shift_x, shift_y = rng.uniform(-2, 2, 2)
    x = cells.cx[index] + shift_x + radius * np.cos(angles + angle)
    y = cells.cy[index] + shift_y + radius * np.sin(angles + angle)
    return [{"x": float(px), "y": float(py)} for px, py in zip(x, y)]


def make_workload(size: int, count: int) -> Workload:
    """The same workload for the same (size, count), always."""
    rng = np.random.default_rng([size, count])
    cells = place_cells(size, count, rng)
    image = draw(cells, size, rng)
    outlines = [rough_outline(cells, i, rng) for i in range(count)]
    return Workload(size, count, image, cells, outlines)
