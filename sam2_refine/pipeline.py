"""A job's locations as a pipeline: every stage busy at once, each location in order.

This is the one composition of the engine's steps: a job runs it over its locations, and
`refine_frame` over one frame (the calibration and the tests refine through it).

Stages, from the image to the platform:
- fetch (threads): each window's image, up to `prefetch` windows ahead of the model, so
  waiting for the server overlaps everything else (the worker's `fetch` may hand the work
  on to processes of its own: nimbus_fetchers.py);
- model (the calling thread): SAM2 encodes each window (several at once where the
  predictor can batch them) and decodes its boxes, batch by batch; each batch becomes
  the objects' `engine.ObjectTask`s;
- outline (processes, one per CPU the job may use; in line when there is one): the tasks,
  CHUNK objects at a time, settled (outlines.py: outline, review, SAM2's alternatives); a
  chunk's objects whose masks go on beyond the logits that crossed are settled once more,
  with all of them, before the location is finished;
- finish (one thread): once a location's objects are all settled, the overlap check of the
  location, then the caller's `finish` (decide and write back), one location at a time
  and in order, while the stages above work on the locations after it.

Memory is bounded by the stages' queues: `prefetch` window images (or as many as the
predictor encodes at once, if more), MAX_OBJECTS_IN_FLIGHT objects' logits between the
model and the outlines, FINISH_QUEUE locations waiting for their turn to be written. A
failure in any stage stops the others: locations whose every object was settled before
it are still finished in order, the rest is left for a rerun to pick up. Every failure is
written to the job log as it happens; the first is raised to the caller. A cancel (SIGTERM, raised in the
calling thread) stops everything at once, after the location being written is done or
FINISH_GRACE seconds have passed.
"""

from __future__ import annotations

import queue
import resource
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon

from . import engine
from .engine import LocationPlan, ObjectTask, Prompt, RefineSettings
from .outcome import Outcome
from .outlines import TaskChunk, outline_executor, settle_timed
from .seam import MaskPredictor, PredictorAdapter, Window, adapt

PREFETCH = 4               # window images fetched ahead of the model
FETCH_THREADS = 3          # requests for window images at once
MAX_OBJECTS_IN_FLIGHT = 512
CHUNK = 64                 # objects per unit of outline work (fewer, larger messages between processes)
FINISH_QUEUE = 2           # locations settled or being settled, waiting to be finished
FINISH_GRACE = 5.0         # seconds a cancel waits for the location being written
POLL = 0.2                 # seconds between checks for a stop while waiting on a stage


@dataclass
class LocationWork:
    """One location to refine: its originals' prompt coordinates (or their (n, 2) points)
    and outlines (the areas the review compares with), outlines an earlier run accepted
    there (before padding, as the review compares them), where its window images come
    from, the caller's own `context` (handed back to `finish`), and those accepted outlines
    as written (new outlines yield to them: engine.finish_location)."""

    frame_size: tuple[int, int]
    coordinates: list[list[dict] | np.ndarray]
    outlines: list[Polygon | None]
    fetch: Callable[[Window], np.ndarray]
    accepted_elsewhere: list[Polygon] = field(default_factory=list)
    context: object = None
    written: list[Polygon] = field(default_factory=list)


class Stopped(Exception):
    """Another stage failed; this one gives up waiting."""


class StageClock:
    """Seconds spent per stage, summed over the threads or processes doing it: "fetch",
    "encode", "decode", "outline" (settling tasks), "review" (the location's overlap
    check), "write" (the caller's finish), and the waits "model waited for images" and
    "finish waited for outlines"; and the CPU seconds of each stage this process ran
    (`cpu`: threads' CPU time, so the job's own process can be told from the rest)."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()
        self.cpu: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float, cpu: float = 0.0) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.cpu[stage] += cpu

    def timed(self, stage: str, call: Callable, *args):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return call(*args)
        finally:
            self.add(stage, time.perf_counter() - start, time.thread_time() - cpu)

    def summary(self) -> str:
        return ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in self.seconds.items())

    def cpu_summary(self) -> str:
        """This process's CPU seconds so far (all its threads; other processes not counted),
        then those of each stage it ran; the rest went to reading, planning, start-up."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stages = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in self.cpu.items() if seconds >= 0.005)
        return f"{usage.ru_utime + usage.ru_stime:.2f}" + (f" ({stages})" if stages else "")


class _Budget:
    """How many objects may be between the model and the finish stage at once."""

    def __init__(self, limit: int, stop: threading.Event):
        self._limit = limit
        self._used = 0
        self._stop = stop
        self._changed = threading.Condition()

    def take(self, count: int) -> None:
        with self._changed:
            while self._used and self._used + count > self._limit:
                if self._stop.is_set():
                    raise Stopped()
                self._changed.wait(POLL)
            self._used += count

    def give(self, count: int) -> None:
        with self._changed:
            self._used -= count
            self._changed.notify_all()


# What follows a location's last batch: all its windows are decoded, or the model stage
# gave up on it (the location is not finished).
_COMPLETE, _ABANDONED = object(), object()


@dataclass(eq=False)  # one location is one object: compared by identity
class _Location:
    """A location on its way through the stages. `batches` carries (future of the settled
    tasks, object count, the TaskChunk) from the model stage to the finish stage, then
    _COMPLETE."""

    work: LocationWork
    plan: LocationPlan
    batches: queue.Queue = field(default_factory=queue.Queue)


@dataclass
class _Window:
    """One window of a location for the model (`window` None: a location without any)."""

    location: _Location
    window: Window | None
    prompts: list[Prompt]
    image: Future | None = None
    last_of_location: bool = True


def _windows(works: Iterable[LocationWork], settings: RefineSettings) -> Iterator[_Window]:
    """Each location's windows, in order (a location with none as one empty item: it may
    still have write-back to do)."""
    for work in works:
        plan = engine.plan_location(work.frame_size, work.coordinates, work.outlines, settings)
        location = _Location(work, plan)
        windows = plan.windows()
        placed = next(windows, None)
        if placed is None:
            yield _Window(location, None, [])
        while placed is not None:
            upcoming = next(windows, None)
            yield _Window(location, *placed, last_of_location=upcoming is None)
            placed = upcoming


class Pipeline:
    """One run over a job's locations (see the module)."""

    def __init__(
        self,
        predictor: Callable[[], MaskPredictor | PredictorAdapter],
        settings: RefineSettings,
        finish: Callable[[LocationWork, list[Outcome]], None],
        on_progress: Callable[[LocationWork, int], None] = lambda work, done: None,
        workers: int = 1,
        prefetch: int = PREFETCH,
        log: Callable[[str], None] | None = None,
    ):
        self._predictor_source = predictor
        self._predictor: PredictorAdapter | None = None
        self._settings = settings
        self._finish = finish
        self._on_progress = on_progress
        self._workers = workers
        self._prefetch = max(1, prefetch)
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._log = log or _to_stderr
        self.clock = StageClock()

    # --- failures ------------------------------------------------------------------

    def _record(self, error: BaseException, stage: str) -> None:
        """Keep the first failure (the one raised); write every one to the job log."""
        with self._failure_lock:
            first = self._failure is None
            if first:
                self._failure = error
            what = "this ends the job" if first else "after an earlier failure, which ends the job"
            self._log(f"the {stage} stage failed ({what}): {type(error).__name__}: {error}\n"
                      + "".join(traceback.format_exception(error)).rstrip())

    def _fail(self, error: BaseException, stage: str) -> None:
        """A failure that stops every stage at once."""
        self._record(error, stage)
        self._stop.set()

    def _put(self, channel: queue.Queue, item) -> None:
        while True:
            if self._stop.is_set():
                raise Stopped()
            try:
                channel.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    # --- the run -------------------------------------------------------------------

    def run(self, works: Iterable[LocationWork]) -> None:
        finishing: queue.Queue = queue.Queue(maxsize=FINISH_QUEUE)
        outlines = outline_executor(self._workers)
        budget = _Budget(MAX_OBJECTS_IN_FLIGHT, self._stop)
        finisher = threading.Thread(target=self._finish_stage, args=(finishing, budget, outlines), name="finish",
                                    daemon=True)
        finisher.start()
        fetcher = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
        cancelled = False
        try:
            self._model_stage(works, fetcher, outlines, budget, finishing)
        except Stopped:
            pass
        except Exception as error:
            # The locations already handed on are finished; the one in the making is left.
            self._record(error, "model")
        except BaseException as error:  # SIGTERM or ^C: everything stops
            cancelled = True
            self._fail(error, "model")
        finally:
            fetcher.shutdown(wait=False, cancel_futures=True)
            if not cancelled:
                _no_more_locations(finishing, finisher)
            finisher.join(timeout=FINISH_GRACE if cancelled else None)
            outlines.shutdown(wait=not cancelled, cancel_futures=True)
        if self._failure is not None:
            raise self._failure

    # --- model stage (the calling thread) ---------------------------------------------

    def _model_stage(
        self, works: Iterable[LocationWork], fetcher: Executor, outlines: Executor, budget: _Budget,
        finishing: queue.Queue,
    ) -> None:
        windows = _windows(works, self._settings)
        ahead: deque[_Window] = deque()

        def top_up() -> None:
            # As many windows ahead as the encoder takes at once, once the model is there.
            depth = self._prefetch if self._predictor is None else max(self._prefetch, self._predictor.encode_batch_size)
            while len(ahead) < depth:
                upcoming = next(windows, None)
                if upcoming is None:
                    return
                if upcoming.window is not None:
                    upcoming.image = fetcher.submit(self.clock.timed, "fetch", upcoming.location.work.fetch,
                                                    upcoming.window)
                ahead.append(upcoming)

        # Locations handed to the finish stage whose last batch is still to come: one at a
        # time in a run, more only while a failure is being handled.
        open_locations: list[_Location] = []

        def hand_on(location: _Location) -> None:
            if location not in open_locations:  # its first window: the rest follow before it completes
                self._put(finishing, location)
                open_locations.append(location)

        def complete(location: _Location) -> None:
            location.batches.put(_COMPLETE)
            open_locations.remove(location)

        # Tasks of the location being decoded, sent to the outline stage CHUNK at a time.
        pending: list[ObjectTask] = []

        def send(location: _Location) -> None:
            if pending:
                budget.take(len(pending))
                chunk = TaskChunk(list(pending))
                location.batches.put((outlines.submit(settle_timed, chunk, self._settings), len(pending), chunk))
                pending.clear()

        try:
            top_up()
            while ahead:
                if self._stop.is_set():
                    raise Stopped()
                group = [ahead.popleft()]
                if group[0].window is not None:
                    predictor = self._model()
                    while ahead and ahead[0].window is not None and len(group) < predictor.encode_batch_size:
                        group.append(ahead.popleft())
                top_up()
                if group[0].window is None:
                    hand_on(group[0].location)
                    complete(group[0].location)
                    continue
                images, failed_fetch = self.clock.timed("model waited for images", self._images, group)
                group = group[:len(images)]  # the windows before a failed fetch are still refined
                encoded = self.clock.timed("encode", predictor.encode_group, images, [item.window for item in group])
                for item, encoding in zip(group, encoded):
                    # Handed on as the model reaches it, when every location before it is
                    # complete: the finish stage never waits on one the model cannot reach.
                    hand_on(item.location)
                    self.clock.timed("encode", predictor.use, encoding)
                    batches = engine.decode_window(predictor, item.window, item.prompts, item.location.plan.frame_size)
                    while (tasks := self.clock.timed("decode", next, batches, None)) is not None:
                        pending.extend(tasks)
                        if len(pending) >= CHUNK:
                            send(item.location)
                    if item.last_of_location:
                        send(item.location)
                        complete(item.location)
                del images, encoded, group
                if failed_fetch is not None:
                    raise failed_fetch
        except BaseException:
            for location in open_locations:
                location.batches.put(_ABANDONED)
            raise

    def _images(self, group: list[_Window]) -> tuple[list, Exception | None]:
        """The group's images in order, up to the first whose fetch failed, and that failure."""
        images = []
        for item in group:
            try:
                images.append(self._wait(item.image))
            except Stopped:
                raise
            except Exception as error:
                if not images:
                    raise
                return images, error
        return images, None

    def _model(self) -> PredictorAdapter:
        if self._predictor is None:
            self._predictor = adapt(self._predictor_source())
        return self._predictor

    def _wait(self, future: Future):
        """The future's result, or its exception; Stopped when another stage fails first.
        (Its own exception may be a TimeoutError: that is not "not done yet".)"""
        while not wait([future], timeout=POLL, return_when=FIRST_EXCEPTION).done:
            if self._stop.is_set():
                raise Stopped()
        return future.result()

    # --- finish stage (its own thread) ---------------------------------------------

    def _finish_stage(self, finishing: queue.Queue, budget: _Budget, outlines: Executor) -> None:
        try:
            while True:
                location = finishing.get()
                if location is None or self._stop.is_set() or not self._finish_location(location, budget, outlines):
                    return
        except Stopped:
            return
        except BaseException as error:  # raised in the calling thread by `run`
            self._fail(error, "finish")

    def _next_batch(self, location: _Location):
        while True:
            if self._stop.is_set():
                raise Stopped()
            try:
                return location.batches.get(timeout=POLL)
            except queue.Empty:
                continue

    def _finish_location(self, location: _Location, budget: _Budget, outlines: Executor) -> bool:
        """Settle, judge and finish one location as its batches come (touching outlines kept
        apart by the outline processes); False when the model stage gave up on it (then it
        is not finished, and nothing after it is)."""
        plan, work = location.plan, location.work
        done = len(work.coordinates) - plan.prompt_count
        self._on_progress(work, done)
        while (batch := self._next_batch(location)) is not _COMPLETE:
            if batch is _ABANDONED:
                return False
            future, count, chunk = batch
            settled, seconds = self.clock.timed("finish waited for outlines", self._wait, future)
            self.clock.add("outline", seconds)
            if settled.unsettled:  # masks (or split margins) beyond what crossed: again, with all their logits
                again = outlines.submit(settle_timed, chunk.again(settled.unsettled), self._settings)
                rest, seconds = self.clock.timed("finish waited for outlines", self._wait, again)
                self.clock.add("outline", seconds)
                plan.settle(rest)
            budget.give(count)
            plan.settle(settled)
            done += count
            self._on_progress(work, done)
        outcomes = self.clock.timed("review", engine.finish_location, plan, work.accepted_elsewhere, self._settings,
                                    work.written, outlines.submit)
        self.clock.timed("write", self._finish, work, outcomes)
        return True


def _no_more_locations(finishing: queue.Queue, finisher: threading.Thread) -> None:
    """Tell the finish stage that no more locations come after those it has."""
    while finisher.is_alive():
        try:
            finishing.put(None, timeout=POLL)
            return
        except queue.Full:
            continue


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_pipeline(works: Iterable[LocationWork], *arguments, **options) -> StageClock:
    """Refine, judge and finish every location of `works`, in order (see the module), with
    `Pipeline`'s arguments; `predictor` is called once, when the first window is ready for
    it. Returns the seconds each stage took."""
    pipeline = Pipeline(*arguments, **options)
    pipeline.run(works)
    return pipeline.clock


def refine_frame(
    predictor: MaskPredictor | PredictorAdapter,
    window_images: Callable[[Window], np.ndarray],
    frame_size: tuple[int, int],
    originals: list[list[dict]],
    settings: RefineSettings,
    on_progress: Callable[[int], None] = lambda done: None,
    outlines: list[Polygon | None] | None = None,
    accepted_elsewhere: list[Polygon] = (),
    written: list[Polygon] = (),
) -> list[Outcome]:
    """Refine and judge the originals (each a list of platform coordinates) of one frame:
    the pipeline over this one location, its outlines settled in line.

    `frame_size` is (width, height) in image pixels; `window_images` gives the image of a
    window (engine.crops_of cuts them from a frame). `outlines` are the areas the originals
    outline, which the review compares refinements with (default: the polygons of their
    coordinates); `accepted_elsewhere` are outlines an earlier run accepted in this frame
    (before padding), `written` the same as written.
    `on_progress` receives how many originals are finished so far.
    """
    if outlines is None:
        outlines = [engine.outline_of_coordinates(points) for points in originals]
    work = LocationWork(frame_size, originals, outlines, window_images, list(accepted_elsewhere), written=list(written))
    finished: list[Outcome] = []
    run_pipeline([work], lambda: predictor, settings, lambda location, outcomes: finished.extend(outcomes),
                 lambda location, done: on_progress(done))
    return finished
