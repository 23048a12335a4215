"""The pipeline's stages side by side: order, failures, cancels, batched encoding.

In process, with the oracle as the model and plain functions as the platform: what
`finish` receives is what the worker writes back. Every location is the same frame
(a time-lapse of still cells), so one oracle answers for all of them."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sam2_refine.engine import RefineSettings, outline_of_coordinates, plan_location
from sam2_refine.interface import RESOLUTION_AUTO
from sam2_refine.pipeline import FETCH_THREADS, PREFETCH, LocationWork, run_pipeline
from tests.oracle import Composite, Disk, OraclePredictor, Rect

WIDTH, HEIGHT = 1200, 900
SETTINGS = RefineSettings(0.7, 0, RESOLUTION_AUTO)
SHAPES = [Disk(80 + 130 * (i % 8), 80 + 120 * (i // 8), 9 + i % 5) for i in range(48)]  # 48 apart, many windows


IMAGE = np.zeros((HEIGHT, WIDTH, 3), np.float32)  # every location's frame


def crop(window):
    return IMAGE[window.top:window.top + window.height, window.left:window.left + window.width]


def work(name: str, fetch=None) -> LocationWork:
    coordinates = [shape.rough_outline(2) for shape in SHAPES]
    return LocationWork((WIDTH, HEIGHT), coordinates, [outline_of_coordinates(c) for c in coordinates],
                        fetch or crop, context=name)


def watched(target, *args, timeout: float = 120) -> threading.Thread:
    """Run `target` in a thread and wait for it; a thread still alive is a hang."""
    runner = threading.Thread(target=target, args=args, daemon=True)
    runner.start()
    runner.join(timeout=timeout)
    return runner


class Recorder:
    """The finish stage: what each call received, in order; fails at `fail_at`."""

    def __init__(self, fail_at: str | None = None):
        self.finished: list[str] = []
        self.outcomes: dict[str, list] = {}
        self.fail_at = fail_at

    def __call__(self, location: LocationWork, outcomes) -> None:
        if location.context == self.fail_at:
            raise RuntimeError(f"write-back failed at {location.context}")
        self.finished.append(location.context)
        self.outcomes[location.context] = outcomes


NAMES = [f"T{t}" for t in range(6)]


def failing_fetch(name: str, failing: str | None):
    """Location `name`'s window reads, failing as a lost server would when it is `failing`."""

    def fetch(window):
        if name == failing:
            raise ConnectionError("the server went away")
        return crop(window)

    return fetch


@pytest.mark.parametrize("workers", [1, 2])
def test_every_location_is_finished_once_in_order_with_every_object(workers):
    finished = Recorder()
    progress: list[tuple[str, int]] = []
    clock = run_pipeline([work(name) for name in NAMES], lambda: OraclePredictor(SHAPES), SETTINGS, finished,
                         lambda location, done: progress.append((location.context, done)), workers=workers)
    assert finished.finished == NAMES
    for name in NAMES:
        outcomes = finished.outcomes[name]
        assert len(outcomes) == len(SHAPES)
        assert all(o.polygon is not None and not o.doubts for o in outcomes)
        for shape, outcome in zip(SHAPES, outcomes):  # each original gets its own cell
            assert outcome.polygon.centroid.distance(outcome.polygon.centroid.__class__(shape.centre)) < 0.5
        counts = [done for location, done in progress if location == name]
        assert counts == sorted(counts) and counts[-1] == len(SHAPES)
    assert clock.seconds["outline"] > 0 and clock.seconds["write"] >= 0


def test_the_next_location_is_refined_while_one_is_written():
    """Write-back of a location overlaps the model's work on the next one."""
    writing, moved_on = threading.Event(), threading.Event()
    decoded_while_writing = []

    class Watching(OraclePredictor):
        def decode_low_res(self, boxes):
            if writing.is_set():
                decoded_while_writing.append(len(boxes))
                moved_on.set()
            return super().decode_low_res(boxes)

    def finish(location, outcomes):
        # Hold the write of T0 until the model has decoded boxes of a later location.
        if location.context != "T0":
            return
        writing.set()
        moved_on.wait(timeout=60)
        writing.clear()

    run_pipeline([work(name) for name in NAMES], lambda: Watching(SHAPES), SETTINGS, finish)
    assert decoded_while_writing


def windows_per_location() -> int:
    location = work("T0")
    return len(list(plan_location((WIDTH, HEIGHT), location.coordinates, location.outlines, SETTINGS).windows()))


@pytest.mark.parametrize("stage", ["fetch", "model", "write"])
def test_a_failure_in_any_stage_ends_the_run_after_the_locations_before_it(stage):
    """T3 fails: T0-T2 are finished (written) in order, nothing after them, and the run
    raises the failure."""
    failing = "T3"

    first_window_of_failing = 3 * windows_per_location()
    encoded = []

    class Model(OraclePredictor):
        def encode(self, window_image, window):
            encoded.append(window)
            if stage == "model" and len(encoded) > first_window_of_failing:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            super().encode(window_image, window)

    locations = [work(name, failing_fetch(name, failing) if stage == "fetch" else None) for name in NAMES]
    finished = Recorder(fail_at=failing if stage == "write" else None)
    with pytest.raises((ConnectionError, RuntimeError)):
        run_pipeline(locations, lambda: Model(SHAPES), SETTINGS, finished)
    assert finished.finished == NAMES[:3]


def test_a_cancel_stops_at_once_and_finishes_nothing_after_the_location_being_written():
    class Cancelled(BaseException):
        pass

    encoded = []

    class CancelledModel(OraclePredictor):
        def encode(self, window_image, window):
            encoded.append(window)
            if len(encoded) == 30:  # somewhere in T1 or T2, windows of later locations in flight
                raise Cancelled()
            super().encode(window_image, window)

    fetched = []

    def counting(name):
        def fetch(window):
            fetched.append(name)
            return crop(window)

        return fetch

    finished = Recorder()
    with pytest.raises(Cancelled):
        run_pipeline([work(name, counting(name)) for name in NAMES], lambda: CancelledModel(SHAPES), SETTINGS,
                     finished)
    location_cancelled = NAMES[(30 - 1) // windows_per_location()]
    assert location_cancelled not in finished.finished
    assert finished.finished == NAMES[:len(finished.finished)]
    # Fetching ran ahead of the model, but no further than its bound.
    assert len(fetched) <= 30 + PREFETCH + FETCH_THREADS


def test_a_location_with_more_objects_than_may_be_in_flight_is_settled_as_it_goes(monkeypatch):
    """Whole frame puts all of a location's objects in one window: the finish stage must
    take them batch by batch while the model still decodes, or the bound on objects in
    flight would stop both (the run is watched from another thread, so a hang fails)."""
    from sam2_refine import pipeline
    from sam2_refine.interface import RESOLUTION_WHOLE_FRAME

    monkeypatch.setattr(pipeline, "MAX_OBJECTS_IN_FLIGHT", 5)
    finished = Recorder()
    runner = watched(run_pipeline, [work(name) for name in NAMES[:2]], lambda: OraclePredictor(SHAPES),
                     RefineSettings(0.7, 0, RESOLUTION_WHOLE_FRAME), finished)
    assert not runner.is_alive(), "the pipeline stopped with objects in flight"
    assert finished.finished == NAMES[:2]
    assert all(len(outcomes) == len(SHAPES) for outcomes in finished.outcomes.values())


class BatchedOracle(OraclePredictor):
    """The oracle encoding several windows at once, as `Sam2Predictor` does on a GPU."""

    encode_batch_size = 4

    def encode_batch(self, window_images, windows):
        return list(zip(window_images, windows))

    def use(self, encoded):
        self.encode(*encoded)


@pytest.mark.parametrize("failing", [None, "T3"])
def test_batched_encoding_of_one_window_locations_finishes_them_all_or_ends_at_a_failed_fetch(failing):
    """Whole frame: one window per location, four locations per encoder batch, more than
    the finish stage can hold waiting. Every location is finished in order; a fetch that
    fails ends the run with the failure, after the locations before it."""
    from sam2_refine.interface import RESOLUTION_WHOLE_FRAME

    finished, raised = Recorder(), []

    def run() -> None:
        try:
            run_pipeline([work(name, failing_fetch(name, failing)) for name in NAMES], lambda: BatchedOracle(SHAPES),
                         RefineSettings(0.7, 0, RESOLUTION_WHOLE_FRAME), finished)
        except ConnectionError as error:
            raised.append(error)

    assert not watched(run).is_alive(), "the pipeline stopped with locations in flight"
    if failing is None:
        assert finished.finished == NAMES and not raised
        assert all(len(outcomes) == len(SHAPES) for outcomes in finished.outcomes.values())
    else:
        assert finished.finished == NAMES[:3] and raised


def test_when_two_stages_fail_each_failure_is_logged_and_the_first_ends_the_run():
    """The finish stage fails writing T0 while the model fails on a window of T2: both
    failures reach the job log, in the order they happened, and the run raises the first."""
    encoding, write_failed = threading.Event(), threading.Event()

    class FailingModel(OraclePredictor):
        def encode(self, window_image, window):
            if len(self.windows) == 2 * windows_per_location():  # T2's first window
                encoding.set()
                write_failed.wait(timeout=60)
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            super().encode(window_image, window)

    def finish(location, outcomes):
        if location.context == "T0":  # fails while the model is busy with T2
            encoding.wait(timeout=60)
            write_failed.set()
            raise ConnectionError("write-back failed at T0")

    logged: list[str] = []
    with pytest.raises((ConnectionError, RuntimeError)) as raised:
        run_pipeline([work(name) for name in NAMES], lambda: FailingModel(SHAPES), SETTINGS, finish,
                     log=logged.append)
    failures = [line for line in logged if "failed" in line or "CUDA error" in line]
    assert len(failures) == 2, logged
    assert any("write-back failed at T0" in line for line in failures)
    assert any("illegal memory access" in line for line in failures)
    assert str(raised.value) in failures[0]


def test_a_fetch_that_times_out_ends_the_run_with_its_error():
    """A fetch raising Python's TimeoutError (what a socket timeout is) is a failed fetch,
    not a fetch still running (concurrent.futures.TimeoutError is the same class)."""

    def timing_out(window):
        raise TimeoutError("the server did not answer within 30 s")

    raised = []

    def run() -> None:
        try:
            run_pipeline([work("T0", timing_out)], lambda: OraclePredictor(SHAPES), SETTINGS, Recorder())
        except TimeoutError as error:
            raised.append(error)

    assert not watched(run, timeout=30).is_alive(), "the pipeline waited on a failed fetch forever"
    assert raised and "did not answer" in str(raised[0])


def test_the_encoder_gets_as_many_windows_at_once_as_the_predictor_takes():
    """A predictor that encodes 8 windows at once gets batches of 8 (not the fetch depth)."""
    from sam2_refine.interface import RESOLUTION_WHOLE_FRAME

    batches: list[int] = []

    class EightAtOnce(BatchedOracle):
        encode_batch_size = 8

        def encode_batch(self, window_images, windows):
            batches.append(len(windows))
            return super().encode_batch(window_images, windows)

    names = [f"T{t}" for t in range(16)]
    finished = Recorder()
    run_pipeline([work(name) for name in names], lambda: EightAtOnce(SHAPES),
                 RefineSettings(0.7, 0, RESOLUTION_WHOLE_FRAME), finished)
    assert finished.finished == names
    assert max(batches) == 8 and sum(batches) == 16


def test_settled_objects_cross_processes_whole_and_their_logits_stay_reachable(monkeypatch):
    """With outline processes: every outcome comes back as settled in line, and the finish
    step can read, for each object, the logits its outline came from, over its outline."""
    from sam2_refine import engine, pipeline

    seen: dict[str, list] = {}
    real_finish = engine.finish_location

    def finish_location(plan, accepted_elsewhere, settings, *more):
        seen.setdefault("masks", []).extend(plan.mask(owner) for owner in range(len(plan.outcomes)))
        return real_finish(plan, accepted_elsewhere, settings, *more)

    monkeypatch.setattr(pipeline.engine, "finish_location", finish_location)
    in_line, in_processes = Recorder(), Recorder()
    run_pipeline([work("T0")], lambda: OraclePredictor(SHAPES), SETTINGS, in_line, workers=1)
    run_pipeline([work("T0")], lambda: OraclePredictor(SHAPES), SETTINGS, in_processes, workers=2)
    for a, b in zip(in_line.outcomes["T0"], in_processes.outcomes["T0"]):
        assert a.polygon.equals_exact(b.polygon, 0) and a.found.equals_exact(b.found, 0)
        assert (a.doubts, a.predicted_iou, a.cut, a.judged) == (b.doubts, b.predicted_iou, b.cut, b.judged)
    masks = seen["masks"][len(SHAPES):]  # the run in processes
    for outcome, mask in zip(in_processes.outcomes["T0"], masks):
        x0, y0, x1, y1 = outcome.found.bounds
        logits = mask.logits
        window = mask.window
        rows, cols = logits.grid
        # the cells cover the outline's bounds (window frame)
        assert logits.col0 * window.width / cols <= x0 - window.left + 1
        assert logits.row0 * window.height / rows <= y0 - window.top + 1
        assert (logits.col0 + logits.values.shape[1]) * window.width / cols >= x1 - window.left - 1
        assert (logits.row0 + logits.values.shape[0]) * window.height / rows >= y1 - window.top - 1
        assert (logits.values > 0).any()


def test_masks_that_go_on_beyond_what_crossed_are_settled_again_with_all_their_logits(monkeypatch):
    """Every other cell has a thin tail running out past where its mask is read first (its
    outline's box and margin): only the logits read first cross to an outline process at
    first, so those objects are settled again with all their logits; every outcome is the
    one settled in line."""
    from sam2_refine import outlines

    cells = [Disk(60 + 80 * (i % 6), 60 + 80 * (i // 6), 14 + i % 5) for i in range(24)]
    shapes = [Composite((cell, Rect(cell.cx, cell.cy - 1.2, cell.cx + cell.radius + 22, cell.cy + 1.2))) if i % 2
              else cell for i, cell in enumerate(cells)]
    coordinates = [cell.rough_outline(2) for cell in cells]

    def inside(name: str) -> LocationWork:
        return LocationWork((WIDTH, HEIGHT), coordinates, [outline_of_coordinates(c) for c in coordinates], crop,
                            context=name)

    again = []
    real_again = outlines.TaskChunk.again
    monkeypatch.setattr(outlines.TaskChunk, "again", lambda chunk, positions: again.append(len(positions)) or
                        real_again(chunk, positions))
    in_line, in_processes = Recorder(), Recorder()
    run_pipeline([inside("T0")], lambda: OraclePredictor(shapes), SETTINGS, in_line, workers=1)
    assert not again  # in line, every task has all its logits
    run_pipeline([inside("T0")], lambda: OraclePredictor(shapes), SETTINGS, in_processes, workers=2)
    assert 0 < sum(again) <= len(shapes) // 2
    for a, b in zip(in_line.outcomes["T0"], in_processes.outcomes["T0"]):
        assert (a.polygon is None) == (b.polygon is None) and (a.reason, a.doubts, a.cut) == (b.reason, b.doubts, b.cut)
        if a.polygon is not None:
            assert a.polygon.equals_exact(b.polygon, 0) and a.found.equals_exact(b.found, 0)
    tails = [o for i, o in enumerate(in_line.outcomes["T0"]) if i % 2]
    assert all(o.polygon.bounds[2] > cell.cx + cell.radius + 10 for o, cell in zip(tails, cells[1::2]))  # followed


def test_outline_processes_yield_the_cpu_to_the_worker():
    """Where both want a core, the worker's own process (which feeds the model) goes first."""
    import os

    from sam2_refine.outlines import OUTLINE_NICENESS, outline_executor

    executor = outline_executor(2)
    try:
        assert executor.submit(os.nice, 0).result(timeout=60) == min(os.nice(0) + OUTLINE_NICENESS, 19)
    finally:
        executor.shutdown()


def test_outline_processes_collect_garbage_less_often():
    """The cyclic collector's passes over a job's many short-lived objects are spared in
    the outline processes, as in the worker's own process."""
    import gc

    from sam2_refine.outlines import outline_executor
    from sam2_refine.processes import GC_ALLOCATIONS

    executor = outline_executor(2)
    try:
        assert executor.submit(gc.get_threshold).result(timeout=60)[0] == GC_ALLOCATIONS
    finally:
        executor.shutdown()


def test_touching_doubtful_cells_are_split_the_same_in_outline_processes_as_in_line():
    """Pairs of overlapping cells each drawn 8 px inside (so their refinements spill and are
    doubtful, their outlines stopping where the first read ends): kept apart by SAM2's
    logits in the outline processes exactly as in line. Found in review: the logits kept
    for the split were cut from the part that crossed, so the split there was geometric."""
    width, height = 400, 300
    shapes = [disk for i in range(6) for j in range(5) if 14 + 30 * i + 20 < width
              for disk in (Disk(14 + 30 * i, 14 + 28 * j, 14), Disk(14 + 30 * i + 22.4, 14 + 28 * j + 1, 14))]
    image = np.zeros((height, width, 3), np.float32)
    coordinates = [shape.rough_outline(-8.0) for shape in shapes]
    results = {}
    for workers in (1, 2):
        location = LocationWork((width, height), coordinates, [outline_of_coordinates(c) for c in coordinates],
                                lambda w: image[w.top:w.top + w.height, w.left:w.left + w.width], context="T0")
        run_pipeline([location], lambda: OraclePredictor(shapes), SETTINGS,
                     lambda _, outcomes: results.setdefault(workers, outcomes), workers=workers)
    assert sum(bool(o.doubts) for o in results[1]) > 10
    differ = [k for k, (a, b) in enumerate(zip(results[1], results[2]))
              if (a.polygon is None) != (b.polygon is None) or a.doubts != b.doubts
              or (a.polygon is not None and not a.polygon.equals_exact(b.polygon, 1e-9))]
    assert not differ, [(k, results[1][k].polygon.symmetric_difference(results[2][k].polygon).area) for k in differ]
