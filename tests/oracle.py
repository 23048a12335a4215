"""A predictor with known answers, for testing windows, offsets and scaling exactly.

It knows the true objects (disks, rectangles and cell-like stars in image coordinates) and answers each
box prompt with the signed distance to the object nearest the box's centre, sampled at
the centres of the low-resolution grid over the current window, exactly where SAM2's
logits live. Bilinear upsampling of a signed distance reproduces the outline to well
under a pixel, so any error in placing, scaling or offsetting windows shows up.

Used in-process (`OraclePredictor(shapes)`) and by the worker subprocess through
SAM2_REFINE_PREDICTOR=tests.oracle:from_environment with ORACLE_SHAPES=<json file>;
`ScoredOraclePredictor` (tests.oracle:scored_from_environment) adds the optional scored
`decode(boxes, areas)` and leaves logits outside the areas uncomputed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from sam2_refine.seam import DecodedMasks, Window

LOW_RES = 256


@dataclass(frozen=True)
class Disk:
    cx: float
    cy: float
    radius: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.cx, self.cy

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.radius - np.hypot(x - self.cx, y - self.cy)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Pixels whose centres lie inside."""
        rows, cols = np.mgrid[:height, :width]
        return self.signed_distance(cols + 0.5, rows + 0.5) > 0

    def rough_outline(self, grow: float = 3.0) -> list[dict]:
        r = self.radius + grow
        return [{"x": self.cx + r * np.cos(a), "y": self.cy + r * np.sin(a)} for a in np.linspace(0, 2 * np.pi, 9)[:-1]]


@dataclass(frozen=True)
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx = np.maximum(self.x0 - x, x - self.x1)
        dy = np.maximum(self.y0 - y, y - self.y1)
        outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
        inside = np.minimum(np.maximum(dx, dy), 0)
        return -(outside + inside)

    def mask(self, height: int, width: int) -> np.ndarray:
        rows, cols = np.mgrid[:height, :width]
        return self.signed_distance(cols + 0.5, rows + 0.5) > 0

    def rough_outline(self, grow: float = 3.0) -> list[dict]:
        return [{"x": self.x0 - grow, "y": self.y0 - grow}, {"x": self.x1 + grow, "y": self.y0 - grow},
                {"x": self.x1 + grow, "y": self.y1 + grow}, {"x": self.x0 - grow, "y": self.y1 + grow}]


@dataclass(frozen=True)
class Star:
    """A cell-like outline in polar form about (cx, cy): r(t) = radius (1 + sum_k a_k cos(k t + phi_k)),
    k = 2, 3, ... (a lumpy, possibly concave nucleus). Its field is the radial signed
    distance r(t) - rho, whose zero set is exactly the outline."""

    cx: float
    cy: float
    radius: float
    amplitudes: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    @property
    def centre(self) -> tuple[float, float]:
        return self.cx, self.cy

    def radius_at(self, angle: np.ndarray) -> np.ndarray:
        radius = np.ones_like(angle)
        for k, (a, phi) in enumerate(zip(self.amplitudes, self.phases), start=2):
            radius = radius + a * np.cos(k * angle + phi)
        return self.radius * radius

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = np.broadcast_arrays(x - self.cx, y - self.cy)
        return self.radius_at(np.arctan2(dy, dx)) - np.hypot(dx, dy)

    def outline(self, points: int = 4096) -> np.ndarray:
        """(points, 2) (x, y) along the true outline."""
        angle = np.linspace(0, 2 * np.pi, points, endpoint=False)
        radius = self.radius_at(angle)
        return np.column_stack([self.cx + radius * np.cos(angle), self.cy + radius * np.sin(angle)])

    def mask(self, height: int, width: int) -> np.ndarray:
        rows, cols = np.mgrid[:height, :width]
        return self.signed_distance(cols + 0.5, rows + 0.5) > 0

    def rough_outline(self, grow: float = 3.0, scale: float = 1.0) -> list[dict]:
        """12 points on the outline scaled by `scale` about the centre, pushed out by `grow`."""
        angle = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        radius = self.radius_at(angle) * scale + grow
        return [{"x": float(self.cx + r * np.cos(a)), "y": float(self.cy + r * np.sin(a))} for r, a in zip(radius, angle)]


@dataclass(frozen=True)
class Composite:
    """Shapes taken as one mask (the union of their fields); prompts find it by its first part."""

    parts: tuple

    @property
    def centre(self) -> tuple[float, float]:
        return self.parts[0].centre

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.maximum.reduce([part.signed_distance(x, y) for part in self.parts])

    def mask(self, height: int, width: int) -> np.ndarray:
        rows, cols = np.mgrid[:height, :width]
        return self.signed_distance(cols + 0.5, rows + 0.5) > 0


Shape = Disk | Rect | Star | Composite


class OraclePredictor:
    decode_batch_size = 3  # deliberately not a divisor of typical counts

    def __init__(self, shapes: list[Shape]):
        self.shapes = shapes
        self.windows: list[Window] = []
        self._window: Window | None = None

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        rows, cols = window_image.shape[:2]
        assert rows <= window.height and cols <= window.width, "window image larger than its window"
        assert window_image.dtype == np.float32 and window_image.ndim == 3 and window_image.shape[2] == 3
        self._window = window
        self.windows.append(window)

    def _nearest(self, x: float, y: float) -> Shape:
        return min(self.shapes, key=lambda s: (s.centre[0] - x) ** 2 + (s.centre[1] - y) ** 2)

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        window = self._window
        columns = window.left + (np.arange(LOW_RES) + 0.5) * window.width / LOW_RES
        rows = window.top + (np.arange(LOW_RES) + 0.5) * window.height / LOW_RES
        x, y = np.meshgrid(columns, rows)
        logits = []
        for x0, y0, x1, y1 in boxes:
            shape = self._nearest(window.left + (x0 + x1) / 2, window.top + (y0 + y1) / 2)
            logits.append(shape.signed_distance(x, y).astype(np.float32))
        return np.stack(logits)


def _low_res_span(start: int, stop: int, window_side: int) -> tuple[int, int]:
    """The low-resolution cells [first, last] that bilinear resizing (align_corners=False)
    reads for window pixels [start, stop)."""
    scale = LOW_RES / window_side  # low-resolution cells per window pixel
    first = int(np.floor(max((start + 0.5) * scale - 0.5, 0.0)))
    last = int(np.floor(max((stop - 0.5) * scale - 0.5, 0.0))) + 1
    return min(first, LOW_RES - 1), min(last, LOW_RES - 1)


UNCOMPUTED = -1.0e4  # what the scored oracle leaves outside the areas it was asked for


class ScoredOraclePredictor(OraclePredictor):
    """The oracle with the optional `decode(boxes, areas)`: like SAM2 with region-only
    upscaling, it computes logits only where each box's area needs them and leaves the
    rest at UNCOMPUTED, so an engine that reads beyond the area it asked for sees it."""

    def __init__(self, shapes: list[Shape]):
        super().__init__(shapes)
        self.decoded_areas: list[np.ndarray | None] = []

    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        logits = self.decode_low_res(boxes)
        self.decoded_areas.append(None if areas is None else np.array(areas))
        if areas is not None:
            window = self._window
            for k, (col0, row0, col1, row1) in enumerate(np.asarray(areas, dtype=np.int64)):
                first_col, last_col = _low_res_span(col0, col1, window.width)
                first_row, last_row = _low_res_span(row0, row1, window.height)
                kept = logits[k, first_row:last_row + 1, first_col:last_col + 1].copy()
                logits[k] = UNCOMPUTED
                logits[k, first_row:last_row + 1, first_col:last_col + 1] = kept
        count = len(boxes)
        return DecodedMasks(logits, predicted_iou=np.full(count, 0.95, np.float32), object_score=np.full(count, 5.0, np.float32))


def shapes_to_json(shapes: list[Shape]) -> str:
    return json.dumps([{"kind": type(s).__name__, **s.__dict__} for s in shapes])


def shapes_from_json(text: str) -> list[Shape]:
    kinds = {"Disk": Disk, "Rect": Rect, "Star": Star}
    shapes = []
    for item in json.loads(text):
        kind = kinds[item.pop("kind")]
        shapes.append(kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in item.items()}))
    return shapes


def from_environment(checkpoint) -> OraclePredictor:
    """Predictor factory for the worker subprocess (the two-method protocol only)."""
    with open(os.environ["ORACLE_SHAPES"]) as handle:
        return OraclePredictor(shapes_from_json(handle.read()))


def scored_from_environment(checkpoint) -> ScoredOraclePredictor:
    """Predictor factory for the worker subprocess, with the optional scored `decode`."""
    with open(os.environ["ORACLE_SHAPES"]) as handle:
        return ScoredOraclePredictor(shapes_from_json(handle.read()))


class TwoMethodsOnly:
    """A predictor with nothing but the protocol's two methods (no batch size, no scores)."""

    def __init__(self, shapes: list[Shape]):
        self._oracle = OraclePredictor(shapes)

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        self._oracle.encode(window_image, window)

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        return self._oracle.decode_low_res(boxes)


class PlainDecoded:
    """What `decode` returned before SAM2's alternatives were added: logits and the two scores."""

    def __init__(self, logits: np.ndarray, predicted_iou: np.ndarray, object_score: np.ndarray):
        self.logits, self.predicted_iou, self.object_score = logits, predicted_iou, object_score


class PlainScoredOracle(OraclePredictor):
    """A scored predictor written to the protocol before alternatives: its `decode` returns
    a plain object with only `logits`, `predicted_iou` and `object_score`."""

    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> PlainDecoded:
        count = len(boxes)
        return PlainDecoded(self.decode_low_res(boxes), np.full(count, 0.95, np.float32), np.full(count, 5.0, np.float32))


def two_methods_from_environment(checkpoint) -> TwoMethodsOnly:
    with open(os.environ["ORACLE_SHAPES"]) as handle:
        return TwoMethodsOnly(shapes_from_json(handle.read()))


def plain_scored_from_environment(checkpoint) -> PlainScoredOracle:
    with open(os.environ["ORACLE_SHAPES"]) as handle:
        return PlainScoredOracle(shapes_from_json(handle.read()))
