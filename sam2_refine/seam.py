"""The model seam: what the engine asks of a predictor, and what a predictor can do, read once.

The engine asks a predictor to encode one window of the image, then to decode batches of
box prompts into SAM2's low-resolution mask logits over that window. Upsampling and
thresholding happen in the engine, only around each object, so the predictor never builds
a full-size mask. A predictor is any object with the two methods of `MaskPredictor`
(SAM2_REFINE_PREDICTOR=module:factory names one; tests substitute oracles); the optional
parts below add what SAM2 gives besides. `adapt` reads which of them a predictor has, once,
from these protocols, and gives the engine and the pipeline one interface to all of them:
a predictor written to an earlier version of the protocol runs unchanged.

Frames: `boxes` are in window pixels (x0, y0, x1, y1), x = window column; `areas` are window
pixels (col0, row0, col1, row1), end-exclusive; logits cover the whole window, resized
(without keeping aspect) to the model's low-resolution grid of LOW_RES_SIDE² cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# SAM2 resizes every input to this square side, in pixels, and predicts masks on a grid of
# LOW_RES_SIDE x LOW_RES_SIDE cells over it.
MODEL_INPUT_SIDE = 1024
LOW_RES_SIDE = 256
# Boxes per decode call for a predictor that does not say (`SizedDecoder`).
DEFAULT_DECODE_BATCH = 16


@dataclass(frozen=True)
class Window:
    """A rectangle of the image, in image pixels: columns [left, left+width), rows [top, top+height)."""

    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class Span:
    """Rows or columns [start, stop) of a grid."""

    start: int
    stop: int


def low_res_span(start: int, stop: int, window_size: int, cells: int = LOW_RES_SIDE) -> Span:
    """The cells of a `cells`-wide low-resolution grid that resizing the logits to
    `window_size` pixels reads for window pixels [start, stop) (bilinear, as torch's
    interpolate with align_corners=False), with one cell to spare on each side against
    rounding."""
    scale = cells / window_size
    first = max(0.0, (start + 0.5) * scale - 0.5)
    last = max(0.0, (max(stop, start + 1) - 0.5) * scale - 0.5)
    return Span(max(0, int(first) - 1), min(cells, int(last) + 3))


@dataclass(frozen=True)
class DecodedMasks:
    """What one decode call gives for N boxes of the encoded window.

    `logits` (N, h, w) float32, window frame, > 0 is inside: with `origins` None they cover
    the whole low-resolution grid (the window resized without keeping aspect); outside the
    `areas` the engine asked for they may hold anything. With `origins` (N, 2) they are
    crops: `logits[k]` starts at low-resolution cell (row, col) `origins[k]` of a grid of
    `grid` (rows, cols) cells and holds at least the cells its area reads (`low_res_span`).
    The scores are None when the predictor does not give them: `predicted_iou` is SAM2's
    own IoU estimate (0-1) and `object_score` its object-presence logit (> 0: an object is
    present). `candidates` (N, K, h, w) are K more masks for each box on the same cells
    (SAM2's multi-mask outputs), with SAM2's IoU estimate of each, `candidate_iou` (N, K).
    """

    logits: np.ndarray
    predicted_iou: np.ndarray | None = None
    object_score: np.ndarray | None = None
    candidates: np.ndarray | None = None
    candidate_iou: np.ndarray | None = None
    origins: np.ndarray | None = None
    grid: tuple[int, int] | None = None

    @property
    def grid_shape(self) -> tuple[int, int]:
        """The whole low-resolution grid (rows, cols) the logits lie on."""
        return self.grid if self.grid is not None else tuple(self.logits.shape[1:])

    @classmethod
    def of(cls, decoded) -> "DecodedMasks":
        """A predictor's decode result as DecodedMasks: itself, or any object with `logits`
        and, optionally, the other fields (a predictor written before a field was added
        returns a plain object without it)."""
        if isinstance(decoded, DecodedMasks):
            return decoded
        if isinstance(decoded, np.ndarray):
            return cls(np.asarray(decoded, dtype=np.float32))

        def optional(name: str):
            value = getattr(decoded, name, None)
            return None if value is None else np.asarray(value)

        grid = getattr(decoded, "grid", None)
        return cls(np.asarray(decoded.logits, dtype=np.float32), optional("predicted_iou"), optional("object_score"),
                   optional("candidates"), optional("candidate_iou"), optional("origins"),
                   None if grid is None else tuple(grid))


# --- the protocol ---------------------------------------------------------------------


class MaskPredictor(Protocol):
    """What the engine needs of a promptable segmenter: these two methods, nothing more.
    A predictor may also have any of the optional parts below."""

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        """Encode `window_image` (rows, cols, 3) float32 in [0, 1], which shows `window`
        at its own resolution or lower."""

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) boxes in window pixels -> (N, h, w) float32 mask logits over the window; > 0 is inside."""


@runtime_checkable
class SizedDecoder(Protocol):
    """Boxes per decode call (default DEFAULT_DECODE_BATCH)."""

    decode_batch_size: int


@runtime_checkable
class ScoredDecoder(Protocol):
    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        """Like `decode_low_res`, with SAM2's scores and, optionally, its alternative masks
        (any object with those fields of DecodedMasks will do). The engine reads each
        object's logits only within its area (`areas` (N, 4), None: everywhere), so a
        predictor may leave the rest uncomputed."""


@runtime_checkable
class CropDecoder(Protocol):
    def decode_crops(self, boxes: np.ndarray, areas: np.ndarray) -> DecodedMasks:
        """Like `decode`, with each box's logits cropped to its area (`origins` set), so
        that no whole grid is made, moved or copied per box."""


@runtime_checkable
class BatchEncoder(Protocol):
    """Several windows through the image encoder at once. `encode_batch_size` (windows
    per call) may change while the predictor runs (e.g. once GPU memory is measured)."""

    encode_batch_size: int

    def encode_batch(self, window_images: list[np.ndarray], windows: list[Window]) -> list[object]:
        """Encode several windows at once (as `encode` would each); returns one opaque
        encoding per window, in order."""

    def use(self, encoded: object) -> None:
        """Make an encoding from `encode_batch` the current window, as `encode` would."""


@runtime_checkable
class DescribesDevice(Protocol):
    """Where the predictor runs, for the job's messages ("CPU, 2 threads, fp32")."""

    device_description: str | None


@runtime_checkable
class WarnsAboutDevice(Protocol):
    """Why the predictor does not run where it should (a GPU image without its GPU); None: it does."""

    device_warning: str | None


# --- what a predictor can do, read once -----------------------------------------------------


class PredictorAdapter:
    """A predictor as the engine and the pipeline use it: which optional parts it has is
    read once, here, from the protocols above; every call goes through the richest one."""

    def __init__(self, predictor: MaskPredictor):
        self.predictor = predictor
        self.decode_batch_size = max(1, int(predictor.decode_batch_size)) if isinstance(predictor, SizedDecoder) \
            else DEFAULT_DECODE_BATCH
        self.crops = isinstance(predictor, CropDecoder)
        self.scored = isinstance(predictor, ScoredDecoder)
        self.batches = isinstance(predictor, BatchEncoder)
        description = predictor.device_description if isinstance(predictor, DescribesDevice) else None
        warning = predictor.device_warning if isinstance(predictor, WarnsAboutDevice) else None
        self.device_description = str(description) if description else None
        self.device_warning = str(warning) if warning else None

    @property
    def encode_batch_size(self) -> int:
        """Windows to encode at once now (1 unless the predictor encodes in batches)."""
        return max(1, int(self.predictor.encode_batch_size)) if self.batches else 1

    def encode_group(self, window_images: list[np.ndarray], windows: list[Window]) -> list[object]:
        """One encoding per window, each to be made current with `use`: encoded here in one
        batch when the predictor can, else encoded by `use` one at a time."""
        if self.batches:
            return self.predictor.encode_batch(window_images, windows)
        return list(zip(window_images, windows))

    def use(self, encoding: object) -> None:
        if self.batches:
            self.predictor.use(encoding)
        else:
            self.predictor.encode(*encoding)

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        self.predictor.encode(window_image, window)

    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        """The boxes decoded through the richest method the predictor has."""
        if self.crops and areas is not None:
            return DecodedMasks.of(self.predictor.decode_crops(boxes, areas))
        if self.scored:
            return DecodedMasks.of(self.predictor.decode(boxes, areas))
        return DecodedMasks(np.asarray(self.predictor.decode_low_res(boxes), dtype=np.float32))


def adapt(predictor: MaskPredictor | PredictorAdapter) -> PredictorAdapter:
    """The predictor's adapter (made once: an adapter is returned as it is)."""
    return predictor if isinstance(predictor, PredictorAdapter) else PredictorAdapter(predictor)


def decode_masks(predictor: MaskPredictor, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
    """Decode through the richest method the predictor has (for callers of one decode;
    the engine keeps one `adapt`-ed predictor)."""
    return adapt(predictor).decode(boxes, areas)
