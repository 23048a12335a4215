"""Stage timing inside a benchmarked process, and realistic masks for random-init weights.

Our worker loads this through its existing predictor seam:
`SAM2_REFINE_PREDICTOR=benchmarks.probe:predictor`. The factory builds the real
`Sam2Predictor` and wraps it in a predictor with the same protocol and timers: `encode`,
`decode`, and `encode_batch` / `use` where the real one has them (so batched encoding is
measured as the worker runs it). Nothing else in the worker changes. The worker builds its
predictor in a background thread from the start of the job (entrypoint.py), so the factory
runs there too. On CUDA, whose launches are asynchronous, each model timer waits for the
GPU (torch.cuda.synchronize) before it starts and before it is read, so encoder time is
counted as encoding, not in the decode that first reads a result. At exit, the timings
also hold the process's peak GPU memory (torch's allocator) when CUDA was used.

Environment:
  BENCH_TIMINGS    JSON file written at exit: seconds and calls per stage, wall-clock
                   marks, and per decoded object the image pixels per mask pixel.
  BENCH_CELLS      .npz of the workload's cells: after the real decoder has run, its
                   logits are replaced by those of the true cell (see workload.Cells), so
                   geometry works on realistic masks instead of random-weight noise.
  BENCH_PRECISION  "fp32" or "bf16": override the predictor's own choice.
  BENCH_MODEL      "none": no SAM2 at all, only the true cells' logits (the time-lapse
                   workload, which measures the worker's per-frame cost and memory).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.workload import LOW_RES, Cells


def synchronize() -> None:
    """Wait for the work queued on the GPU, if this process has used CUDA."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Clock:
    """Seconds and calls per stage, wall-clock marks (time.time()) and sampled values."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self.marks: dict[str, float] = {}
        self.values: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def timed(self, stage: str, synchronized: bool = False) -> Iterator[None]:
        """Time the block; `synchronized`: wait for the GPU's queued work before starting
        (so earlier work is not counted) and before reading the clock (so the block's is)."""
        if synchronized:
            synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if synchronized:
                synchronize()
            self.seconds[stage] += time.perf_counter() - start
            self.calls[stage] += 1

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def as_dict(self) -> dict:
        return {"seconds": dict(self.seconds), "calls": dict(self.calls), "marks": self.marks,
                "values": dict(self.values)}


CLOCK = Clock()


def gpu_peak_mb() -> dict[str, float]:
    """The peak GPU memory torch's allocator held in this process (empty without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {}
    try:
        return {"gpu_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                "gpu_peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
    except RuntimeError:
        return {}


def write_timings() -> None:
    path = os.environ.get("BENCH_TIMINGS")
    if path:
        CLOCK.mark("exit")
        for name, value in gpu_peak_mb().items():
            CLOCK.values[name] = [value]
        Path(path).write_text(json.dumps(CLOCK.as_dict()))


atexit.register(write_timings)


def _write_before_fast_exit() -> None:
    """entrypoint.py ends compute with os._exit, which skips atexit: write first."""
    fast_exit = os._exit

    def exit_after_writing(status: int) -> None:
        write_timings()
        fast_exit(status)

    os._exit = exit_after_writing


def cells_from_environment() -> Cells | None:
    path = os.environ.get("BENCH_CELLS")
    return Cells.load(path) if path else None


class CellsOnly:
    """No model: each box's logits are its true cell's (BENCH_MODEL=none)."""

    decode_batch_size = 16
    device_description = "no model (the true cells' logits)"

    def encode(self, window_image: np.ndarray, window: Any) -> None:
        pass

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        return np.full((len(boxes), LOW_RES, LOW_RES), -1.0, np.float32)


class TimedPredictor:
    """The engine's MaskPredictor protocol around a real predictor, with timers.

    The optional attributes (`decode_batch_size`, `encode_batch_size`, `device_description`,
    `device_warning`) are read from the real predictor whenever asked, so a size it changes
    while running (the encoder batch it sizes from its first window) is what the engine sees,
    and one it lacks is lacking here too."""

    FORWARDED = ("decode_batch_size", "encode_batch_size", "device_description", "device_warning")

    def __init__(self, inner: Any, cells: Cells | None) -> None:
        self._inner = inner
        self._cells = cells
        self._window = None
        self._encoded_at: float | None = None

    def __getattr__(self, name: str) -> Any:
        if name in TimedPredictor.FORWARDED:
            return getattr(self._inner, name)
        raise AttributeError(name)

    def close_window(self) -> None:
        """Count the time since the last encode as spent on that window's objects."""
        if self._encoded_at is not None:
            CLOCK.seconds["after_encode"] += time.perf_counter() - self._encoded_at
            self._encoded_at = None

    def encode(self, window_image: np.ndarray, window: Any) -> None:
        self.close_window()
        CLOCK.mark("first_encode")
        self._window = window
        with CLOCK.timed("encode", synchronized=True):
            self._inner.encode(window_image, window)
        CLOCK.values["encode_windows"].append(1)
        self._encoded_at = time.perf_counter()

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        return self.decode(boxes).logits

    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None):
        from sam2_refine.seam import DecodedMasks, decode_masks

        w = self._window
        CLOCK.values["image_px_per_mask_px"] += [max(w.width, w.height) / LOW_RES] * len(boxes)
        no_model = isinstance(self._inner, CellsOnly)
        with CLOCK.timed("decode", synchronized=True):
            decoded = None if no_model else decode_masks(self._inner, boxes, areas)
        if self._cells is None:
            return decoded if decoded is not None else decode_masks(self._inner, boxes, areas)
        with CLOCK.timed("substitute"):  # like the real predictor, only over the areas the engine reads
            logits = self._cells.batch_logits(boxes, w.left, w.top, w.width, w.height, areas)
        if decoded is None:
            return DecodedMasks(logits)
        return DecodedMasks(logits, decoded.predicted_iou, decoded.object_score)


@dataclass(frozen=True)
class _Encoding:
    """One window of a batch the real predictor encoded, with the window it shows."""

    window: Any
    inner: Any


class TimedBatchPredictor(TimedPredictor):
    """TimedPredictor for a real predictor with `encode_batch` and `use` (model.BatchEncoder):
    each batch is one timed encoder call (its window count in the values `encode_windows`),
    and `use` makes one of its windows the current one."""

    def encode_batch(self, window_images: list[np.ndarray], windows: list[Any]) -> list[_Encoding]:
        self.close_window()
        CLOCK.mark("first_encode")
        with CLOCK.timed("encode", synchronized=True):
            encoded = self._inner.encode_batch(window_images, windows)
        CLOCK.values["encode_windows"].append(len(windows))
        return [_Encoding(window, inner) for window, inner in zip(windows, encoded, strict=True)]

    def use(self, encoded: _Encoding) -> None:
        self.close_window()
        self._inner.use(encoded.inner)
        self._window = encoded.window
        self._encoded_at = time.perf_counter()


def wrap(inner: Any, cells: Cells | None) -> TimedPredictor:
    """The timed predictor for `inner`: with `encode_batch` and `use` exactly when it has them."""
    batched = hasattr(inner, "encode_batch") and hasattr(inner, "use")
    return (TimedBatchPredictor if batched else TimedPredictor)(inner, cells)


def _instrument_worker(predictor: TimedPredictor) -> None:
    """Count the time after the last window as spent on its objects when the job ends.
    (The worker's own stage clock, summed over the pipeline's threads and processes, is in
    its job log: run.py reads it from there.)"""
    atexit.register(predictor.close_window)
    fast_exit = os._exit

    def exit_after_closing(status: int) -> None:
        predictor.close_window()
        fast_exit(status)

    os._exit = exit_after_closing


def predictor(checkpoint: Path) -> TimedPredictor:
    """Factory for SAM2_REFINE_PREDICTOR."""
    CLOCK.mark("model_start")
    with CLOCK.timed("model"):
        if os.environ.get("BENCH_MODEL") == "none":
            inner = CellsOnly()
        else:
            from sam2_refine.model import Sam2Predictor

            inner = Sam2Predictor(Path(checkpoint), precision=os.environ.get("BENCH_PRECISION") or None)
        synchronize()
    CLOCK.mark("model_ready")
    timed = wrap(inner, cells_from_environment())
    _instrument_worker(timed)
    _write_before_fast_exit()
    print(f"benchmark predictor: {timed.device_description}", file=sys.stderr, flush=True)
    return timed
