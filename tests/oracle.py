"""A predictor with known answers, for testing windows, offsets and scaling exactly.

It knows the true objects (disks and rectangles in image coordinates) and answers each
box prompt with the signed distance to the object nearest the box's centre, sampled at
the centres of the low-resolution grid over the current window, exactly where SAM2's
logits live. Bilinear upsampling of a signed distance reproduces the outline to well
under a pixel, so any error in placing, scaling or offsetting windows shows up.

Used in-process (`OraclePredictor(shapes)`) and by the worker subprocess through
SAM2_REFINE_PREDICTOR=tests.oracle:from_environment with ORACLE_SHAPES=<json file>.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from sam2_refine.model import Window

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


Shape = Disk | Rect


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


def shapes_to_json(shapes: list[Shape]) -> str:
    return json.dumps([{"kind": type(s).__name__, **s.__dict__} for s in shapes])


def shapes_from_json(text: str) -> list[Shape]:
    kinds = {"Disk": Disk, "Rect": Rect}
    return [kinds[item.pop("kind")](**item) for item in json.loads(text)]


def from_environment(checkpoint) -> OraclePredictor:
    """Predictor factory for the worker subprocess."""
    with open(os.environ["ORACLE_SHAPES"]) as handle:
        return OraclePredictor(shapes_from_json(handle.read()))
