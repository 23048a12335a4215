"""Stage timing inside a benchmarked process, and realistic masks for random-init weights.

Our worker loads this through its existing predictor seam:
`SAM2_REFINE_PREDICTOR=benchmarks.probe:predictor`. The factory builds the real
`Sam2Predictor` (or the proposed one in `benchmarks/proposed.py`) and wraps it, and it
wraps the worker's own stage functions with timers. Nothing else in the worker changes.

Environment:
  BENCH_TIMINGS    JSON file written at exit: seconds and calls per stage, wall-clock marks.
  BENCH_CELLS      .npz of the workload's cells: after the real decoder has run, its
                   logits are replaced by those of the true cell (see workload.Cells), so
                   geometry works on realistic masks instead of random-weight noise.
  BENCH_DECODE_BATCH  boxes per decoder call instead of the predictor's own.
  BENCH_AUTOCAST   "bf16": run encode and decode under CPU bfloat16 autocast.
  BENCH_PREDICTOR  "proposed": use benchmarks.proposed.FastSam2Predictor.
Simulations of changes outside model.py (PROPOSALS.md, "Outside model.py"):
  BENCH_FAST_EXIT=1        the worker ends with os._exit after flushing, skipping the
                           ~1 s of library teardown that follows `import torch`.
  BENCH_FULL_RES_FETCH=1   Whole frame fetches the frame at full resolution (no max_size).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.workload import Cells


class Clock:
    """Seconds and calls per stage, plus wall-clock marks (time.time())."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self.marks: dict[str, float] = {}

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start
            self.calls[stage] += 1

    def wrap(self, stage: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            with self.timed(stage):
                return function(*args, **kwargs)

        return timed_call

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def as_dict(self) -> dict:
        return {"seconds": dict(self.seconds), "calls": dict(self.calls), "marks": self.marks}


CLOCK = Clock()


def _write_at_exit() -> None:
    path = os.environ.get("BENCH_TIMINGS")
    if path:
        CLOCK.mark("exit")
        Path(path).write_text(json.dumps(CLOCK.as_dict()))


atexit.register(_write_at_exit)


def cells_from_environment() -> Cells | None:
    path = os.environ.get("BENCH_CELLS")
    return Cells.load(path) if path else None


def autocast_from_environment():
    if os.environ.get("BENCH_AUTOCAST") == "bf16":
        import torch

        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext


class TimedPredictor:
    """The engine's MaskPredictor protocol around a real predictor, with timers."""

    def __init__(self, inner: Any, cells: Cells | None, batch_size: int | None, autocast: Callable) -> None:
        self._inner = inner
        self._cells = cells
        self._autocast = autocast
        self._window = None
        self._encoded_at: float | None = None
        self.decode_batch_size = batch_size or inner.decode_batch_size

    def close_window(self) -> None:
        """Count the time since the last encode as spent on that window's objects."""
        if self._encoded_at is not None:
            CLOCK.seconds["after_encode"] += time.perf_counter() - self._encoded_at
            self._encoded_at = None

    def encode(self, window_image: np.ndarray, window: Any) -> None:
        self.close_window()
        self._window = window
        with CLOCK.timed("encode"), self._autocast():
            self._inner.encode(window_image, window)
        self._encoded_at = time.perf_counter()

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        with CLOCK.timed("decode"), self._autocast():
            logits = self._inner.decode_low_res(boxes)
        if self._cells is None:
            return logits
        with CLOCK.timed("substitute"):
            w = self._window
            return np.stack([self._cells.low_res_logits(box, w.left, w.top, w.width, w.height) for box in boxes])


def _instrument_worker(predictor: TimedPredictor) -> None:
    """Timers around the worker's stage functions (looked up by name at call time)."""
    from sam2_refine import engine, nimbus, worker

    targets = [
        (engine, "_refine_one", "geometry"),
        (worker, "write_back", "upload"),
        (nimbus.Platform, "frame_image", "fetch_image"),
    ]
    for owner, name, stage in targets:
        if hasattr(owner, name):
            setattr(owner, name, CLOCK.wrap(stage, getattr(owner, name)))
        else:
            CLOCK.calls[f"missing:{name}"] += 1
    refine_frame = worker.refine_frame

    @functools.wraps(refine_frame)
    def timed_refine_frame(*args: Any, **kwargs: Any) -> Any:
        with CLOCK.timed("refine"):
            try:
                return refine_frame(*args, **kwargs)
            finally:
                predictor.close_window()

    worker.refine_frame = timed_refine_frame


_ERRORS_REPORTED: list[str] = []


def _fast_exit() -> None:
    """Runs first at exit: flush, write the timings, leave without interpreter teardown.
    The exit status is 1 if the worker reported an error line, else 0 (a simulation)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    _write_at_exit()
    os._exit(1 if _ERRORS_REPORTED else 0)


def _simulate_outside_changes() -> None:
    if os.environ.get("BENCH_FAST_EXIT") == "1":
        from sam2_refine.messages import Reporter

        error = Reporter.error

        def noted_error(self, message, *args, **kwargs):
            _ERRORS_REPORTED.append(message)
            return error(self, message, *args, **kwargs)

        Reporter.error = noted_error
        atexit.register(_fast_exit)  # registered last, so it runs first
    if os.environ.get("BENCH_FULL_RES_FETCH") == "1":
        from sam2_refine import worker

        worker.whole_frame_fetch_size = lambda frame: None


def predictor(checkpoint: Path) -> TimedPredictor:
    """Factory for SAM2_REFINE_PREDICTOR."""
    CLOCK.mark("model_start")
    with CLOCK.timed("model"):
        if os.environ.get("BENCH_PREDICTOR") == "proposed":
            from benchmarks.proposed import FastSam2Predictor as Predictor
        else:
            from sam2_refine.model import Sam2Predictor as Predictor
        inner = Predictor(Path(checkpoint))
    CLOCK.mark("model_ready")
    batch = os.environ.get("BENCH_DECODE_BATCH")
    timed = TimedPredictor(inner, cells_from_environment(), int(batch) if batch else None, autocast_from_environment())
    _instrument_worker(timed)
    _simulate_outside_changes()
    return timed
