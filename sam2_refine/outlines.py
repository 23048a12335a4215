"""The outline stage's workers: each unit of work is a chunk of objects settled
(`engine.settle_all`: outline, review, SAM2's alternatives), in a process per CPU the job
may use, or in line when there is one.

The processes are started as the worker's other helper processes are (processes.py): forked
from a fresh server process, never from the worker, and ending when the worker does.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor

import numpy as np
import shapely

from . import coordinates_json, engine, lowres
from .engine import ObjectMask, ObjectTask, Prompt, RefineSettings, Settled
from .lowres import LowRes
from .outcome import Outcome
from .processes import start_context, watch_worker
from .seam import Window
from .tiling import Box


def settle_timed(chunk: "TaskChunk", settings: RefineSettings) -> tuple["SettledChunk", float]:
    """A chunk of tasks settled (`engine.settle_all`), with the seconds it took (in
    whichever process runs it)."""
    start = time.perf_counter()
    settled = SettledChunk(engine.settle_all(chunk.tasks, settings))
    return settled, time.perf_counter() - start


# --- between processes -----------------------------------------------------------------------
# Objects cross as plain fields, their outlines as one array of WKB and their logits as one
# array of floats per chunk: pickling a dataclass, a polygon or an array per object would
# cost the worker's own process more than the object's share of the chunk does.


def _packed(arrays: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    shapes = [array.shape for array in arrays]
    flat = np.concatenate(arrays, axis=None) if arrays else np.empty(0, np.float32)  # one copy, views flattened
    return flat.astype(np.float32, copy=False), shapes


def _unpacked(flat: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    arrays, offset = [], 0
    for rows, cols in shapes:
        arrays.append(flat[offset:offset + rows * cols].reshape(rows, cols))
        offset += rows * cols
    return arrays


def _first_read_spans(tasks: list[ObjectTask]) -> list[tuple[int, int, int, int]]:
    """The low-resolution cells (row start, row stop, col start, col stop) each task's first
    read needs (`engine.first_read`, `LowRes.cropped_to`), found for all at once."""
    areas = engine.first_reads([t.prompt for t in tasks], [t.window for t in tasks], [t.frame_size for t in tasks])
    sizes = np.array([(t.window.width, t.window.height) for t in tasks], dtype=np.float64)
    grids = np.array([t.mask.grid for t in tasks], dtype=np.int64)
    return [tuple(span) for span in lowres.low_res_spans(areas, sizes, grids).tolist()]


def _cropped(low: LowRes, span: tuple[int, int, int, int]) -> LowRes:
    """`low.cropped_to` the first read whose cells are `span` (a view)."""
    row_start, row_stop, col_start, col_stop = span
    row0, col0 = max(row_start, low.row0), max(col_start, low.col0)
    return LowRes(low.values[row0 - low.row0:row_stop - low.row0, col0 - low.col0:col_stop - low.col0],
                  row0, col0, low.grid)


class TaskChunk:
    """Tasks on their way to the outline stage. Crossing to another process, each task's
    logits go only as far as its first read needs (`engine.first_read`: a quarter of them
    or less; the task arrives `partial`), unless the chunk is `whole`: the few masks that
    go on beyond are settled again with all their logits (`again`)."""

    def __init__(self, tasks: list[ObjectTask], whole: bool = False):
        self.tasks = tasks
        self.whole = whole

    def __len__(self) -> int:
        return len(self.tasks)

    def again(self, positions: list[int]) -> "TaskChunk":
        """The tasks at `positions`, to cross with all their logits."""
        return TaskChunk([self.tasks[k] for k in positions], whole=True)

    def __reduce__(self):
        fields, arrays = [], []
        spans = None if self.whole or not self.tasks else _first_read_spans(self.tasks)
        for k, t in enumerate(self.tasks):
            p, b, w = t.prompt, t.prompt.box, t.window
            logits = (t.mask, *t.candidates)
            partial = t.partial
            if spans is not None:
                sent = tuple(_cropped(low, spans[k]) for low in logits)
                partial = partial or any(a.values.shape != low.values.shape for a, low in zip(sent, logits))
                logits = sent
            arrays += [low.values for low in logits]
            fields.append((p.owner, (b.x0, b.y0, b.x1, b.y1), p.zone_bounds, (w.left, w.top, w.width, w.height),
                           t.frame_size, t.decoded, t.predicted_iou, t.object_score, t.candidate_iou,
                           [(low.row0, low.col0, low.grid) for low in logits], partial))
        originals = shapely.to_wkb(np.array([t.prompt.original for t in self.tasks], dtype=object))
        return TaskChunk._rebuilt, (fields, originals, *_packed(arrays))

    @staticmethod
    def _rebuilt(fields, originals, flat, shapes) -> "TaskChunk":
        values = iter(_unpacked(flat, shapes))
        tasks = []
        for (owner, box, zone, window, frame_size, decoded, iou, score, candidate_iou, lows, partial), original in \
                zip(fields, shapely.from_wkb(originals)):
            logits = [LowRes(next(values), row0, col0, tuple(grid)) for row0, col0, grid in lows]
            tasks.append(ObjectTask(Prompt(owner, Box(*box), original, zone), Window(*window), tuple(frame_size),
                                    tuple(decoded), logits[0], iou, score, tuple(logits[1:]), tuple(candidate_iou),
                                    partial))
        return TaskChunk(tasks)


class SettledChunk:
    """Settled objects on their way back: their owners and outcomes, and the logits their
    outlines came from, made into ObjectMasks only when asked for (`mask`); `unsettled`,
    the positions in their TaskChunk of those to settle again with all their logits."""

    def __init__(self, items: list[Settled | None]):
        self.unsettled = [k for k, item in enumerate(items) if item is None]
        settled = [item for item in items if item is not None]
        self.owners = [item.owner for item in settled]
        self.outcomes = [item.outcome for item in settled]
        self._masks: list[ObjectMask | None] | None = [item.mask for item in settled]
        self._packed = None

    def __len__(self) -> int:
        return len(self.owners)

    def mask(self, k: int) -> ObjectMask | None:
        if self._masks is None:
            flat, shapes, where = self._packed
            values = _unpacked(flat, shapes)
            arrays = iter(values)
            self._masks = [None if place is None else ObjectMask(Window(*place[0]), LowRes(next(arrays), *place[1:]))
                           for place in where]
        return self._masks[k]

    def __reduce__(self):
        polygons = shapely.to_wkb(np.array([o.polygon for o in self.outcomes], dtype=object))
        found = shapely.to_wkb(np.array([o.found for o in self.outcomes], dtype=object))
        fields = [(o.reason, o.doubts, o.predicted_iou, o.object_score, o.cut, o.recovered, o.judged)
                  for o in self.outcomes]
        masks = [self.mask(k) for k in range(len(self))]
        where = [None if m is None else ((m.window.left, m.window.top, m.window.width, m.window.height),
                                         m.logits.row0, m.logits.col0, m.logits.grid) for m in masks]
        flat, shapes = _packed([m.logits.values for m in masks if m is not None])
        # The polygons' platform coordinates, encoded here for the worker to save as they are.
        encoded = [None if o.polygon is None else coordinates_json.encode(o.polygon) for o in self.outcomes]
        return SettledChunk._rebuilt, (self.owners, fields, polygons, found, flat, shapes, where, encoded,
                                       self.unsettled)

    @staticmethod
    def _rebuilt(owners, fields, polygons, found, flat, shapes, where, encoded, unsettled) -> "SettledChunk":
        chunk = SettledChunk([])
        chunk.owners, chunk.unsettled = owners, unsettled
        chunk.outcomes = [Outcome(polygon, reason, doubts, iou, score, outline, cut, recovered, judged)
                          for polygon, outline, (reason, doubts, iou, score, cut, recovered, judged)
                          in zip(shapely.from_wkb(polygons), shapely.from_wkb(found), fields)]
        for outcome, coordinates in zip(chunk.outcomes, encoded):
            if coordinates is not None:
                coordinates_json.remember(outcome.polygon, coordinates)
        chunk._masks, chunk._packed = None, (flat, shapes, where)
        return chunk


class _InLine(Executor):
    """Runs each task at once, in the calling thread (one CPU: nothing to gain elsewhere)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to whoever waits on the future
            future.set_exception(error)
        return future


def _ready() -> None:
    """A no-op for each outline process, so they start while the model loads."""


# How much lower than the worker's own process an outline process asks to be scheduled
# (Unix niceness): the worker's process feeds the model and is the one that cannot be
# spread over more cores, so where both want a core it gets it first.
OUTLINE_NICENESS = 5


def _start_outline_process(worker_pid: int) -> None:
    watch_worker(worker_pid)
    try:
        os.nice(OUTLINE_NICENESS)
    except (AttributeError, OSError):  # no nice here: scheduled as the worker
        pass


def outline_executor(workers: int) -> Executor:
    """`workers` processes for the outline stage (in line when 1), started as
    processes.py starts the worker's helper processes, each a little nicer than the
    worker's own (OUTLINE_NICENESS)."""
    if workers <= 1:
        return _InLine()
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=start_context(), initializer=_start_outline_process,
                                   initargs=(os.getpid(),))
    for _ in range(workers):
        executor.submit(_ready)
    return executor
