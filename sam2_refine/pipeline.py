"""A job's locations as a pipeline: every stage busy at once, each location in order.

Stages, from the image to the platform:
- fetch (threads): each window's image, up to `prefetch` windows ahead of the model, so
  waiting for the server overlaps everything else;
- model (the calling thread): SAM2 encodes each window (several at once where the
  predictor can batch them) and decodes its boxes, batch by batch; each batch becomes
  the objects' `engine.ObjectTask`s;
- outline (processes, one per CPU the job may use; in line when there is one): each task
  settled (`engine.settle_all`: outline, review, SAM2's alternatives);
- finish (one thread): once a location's objects are all settled, the overlap check of the
  location, then the caller's `finish` (decide and write back), one location at a time
  and in order, while the stages above work on the locations after it.

Memory is bounded by the stages' queues: `prefetch` window images, MAX_OBJECTS_IN_FLIGHT
objects' logits between the model and the outlines, FINISH_QUEUE locations waiting for
their turn to be written. A failure in any stage stops the others: locations whose every
object was settled before it are still finished in order, the rest is left for a rerun
to pick up, and the failure is raised to the caller. A cancel (SIGTERM, raised in the
calling thread) stops everything at once, after the location being written is done or
FINISH_GRACE seconds have passed.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon

from . import engine
from .engine import LocationPlan, Prompt, RefineSettings
from .model import MaskPredictor, Window
from .outcome import Outcome

PREFETCH = 4               # window images fetched ahead of the model
FETCH_THREADS = 3          # requests for window images at once
MAX_OBJECTS_IN_FLIGHT = 512
FINISH_QUEUE = 2           # locations settled or being settled, waiting to be finished
FINISH_GRACE = 5.0         # seconds a cancel waits for the location being written
POLL = 0.2                 # seconds between checks for a stop while waiting on a stage
WATCH_SECONDS = 0.5        # how often an outline process checks that the worker is still there


@dataclass
class LocationWork:
    """One location to refine: its originals' prompt coordinates and outlines (the areas
    the review compares with), outlines an earlier run accepted there, where its window
    images come from, and the caller's own `context` (handed back to `finish`)."""

    frame_size: tuple[int, int]
    coordinates: list[list[dict]]
    outlines: list[Polygon | None]
    fetch: Callable[[Window], np.ndarray]
    accepted_elsewhere: list[Polygon] = field(default_factory=list)
    context: object = None


class Stopped(Exception):
    """Another stage failed; this one gives up waiting."""


class StageClock:
    """Seconds spent per stage, summed over the threads or processes doing it: "fetch",
    "encode", "decode", "outline" (settling tasks), "review" (the location's overlap
    check), "write" (the caller's finish), and the waits "model waited for images" and
    "finish waited for outlines"."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def timed(self, stage: str, call: Callable, *args):
        start = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.add(stage, time.perf_counter() - start)

    def summary(self) -> str:
        return ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in self.seconds.items())


def settle_timed(tasks: list, settings: RefineSettings) -> tuple[list[tuple[int, Outcome]], float]:
    """`engine.settle_all` with the seconds it took (in whichever process runs it)."""
    start = time.perf_counter()
    settled = engine.settle_all(tasks, settings)
    return settled, time.perf_counter() - start


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


def _start_outline_process(worker_pid: int) -> None:
    """An outline process ends when the worker does, even when the worker is killed
    outright (its pool's queues would wait for it forever: the processes hold each other's
    ends of them); ^C is the worker's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while not _gone(worker_pid):
            time.sleep(WATCH_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="watch-worker", daemon=True).start()


def _gone(pid: int) -> bool:
    """Whether process `pid` has ended: no longer there, or (Linux) dead but not yet
    reaped by its parent."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def outline_executor(workers: int) -> Executor:
    """`workers` processes for the outline stage (in line when 1). They are forked from a
    fresh server process that has imported the engine (never from this process, whose
    threads and model must not be copied)."""
    if workers <= 1:
        return _InLine()
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["sam2_refine.engine"])
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_outline_process,
                                   initargs=(os.getpid(),))
    for _ in range(workers):
        executor.submit(_ready)
    return executor


# What follows a location's last batch: all its windows are decoded, or the model stage
# gave up on it (the location is not finished).
_COMPLETE, _ABANDONED = object(), object()


@dataclass(eq=False)  # one location is one object: compared by identity
class _Location:
    """A location on its way through the stages. `batches` carries (future of the settled
    tasks, object count) from the model stage to the finish stage, then _COMPLETE."""

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


class Pipeline:
    """One run over a job's locations (see the module)."""

    def __init__(
        self,
        predictor: Callable[[], MaskPredictor],
        settings: RefineSettings,
        finish: Callable[[LocationWork, list[Outcome]], None],
        on_progress: Callable[[LocationWork, int], None] = lambda work, done: None,
        workers: int = 1,
        prefetch: int = PREFETCH,
    ):
        self._predictor_source = predictor
        self._predictor: MaskPredictor | None = None
        self._settings = settings
        self._finish = finish
        self._on_progress = on_progress
        self._workers = workers
        self._prefetch = max(1, prefetch)
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self.clock = StageClock()

    # --- failures ------------------------------------------------------------------

    def _record(self, error: BaseException) -> None:
        with self._failure_lock:
            if self._failure is None:
                self._failure = error

    def _fail(self, error: BaseException) -> None:
        """A failure that stops every stage at once."""
        self._record(error)
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
        finisher = threading.Thread(target=self._finish_stage, args=(finishing, budget), name="finish", daemon=True)
        finisher.start()
        fetcher = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
        cancelled = False
        try:
            self._model_stage(works, fetcher, outlines, budget, finishing)
        except Stopped:
            pass
        except Exception as error:
            # The locations already handed on are finished; the one in the making is left.
            self._record(error)
        except BaseException as error:  # SIGTERM or ^C: everything stops
            cancelled = True
            self._fail(error)
        finally:
            fetcher.shutdown(wait=False, cancel_futures=True)
            if not cancelled:
                self._end(finishing, finisher)
            finisher.join(timeout=FINISH_GRACE if cancelled else None)
            outlines.shutdown(wait=not cancelled, cancel_futures=True)
        if self._failure is not None:
            raise self._failure

    @staticmethod
    def _end(finishing: queue.Queue, finisher: threading.Thread) -> None:
        """Tell the finish stage that no more locations come after those it has."""
        while finisher.is_alive():
            try:
                finishing.put(None, timeout=POLL)
                return
            except queue.Full:
                continue

    # --- model stage (the calling thread) ---------------------------------------------

    def _windows(self, works: Iterable[LocationWork]) -> Iterator[_Window]:
        """Each location's windows, in order (a location with none as one empty item: it
        may still have write-back to do)."""
        for work in works:
            plan = engine.plan_location(work.frame_size, work.coordinates, work.outlines, self._settings.resolution)
            location = _Location(work, plan)
            windows = plan.windows()
            placed = next(windows, None)
            if placed is None:
                yield _Window(location, None, [])
            while placed is not None:
                upcoming = next(windows, None)
                yield _Window(location, *placed, last_of_location=upcoming is None)
                placed = upcoming

    def _model_stage(
        self, works: Iterable[LocationWork], fetcher: Executor, outlines: Executor, budget: _Budget,
        finishing: queue.Queue,
    ) -> None:
        windows = self._windows(works)
        ahead: deque[_Window] = deque()

        def top_up() -> None:
            while len(ahead) < self._prefetch:
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

        try:
            top_up()
            while ahead:
                if self._stop.is_set():
                    raise Stopped()
                group = [ahead.popleft()]
                if group[0].window is not None:
                    predictor = self._model()
                    while ahead and ahead[0].window is not None and len(group) < _encode_batch_size(predictor):
                        group.append(ahead.popleft())
                top_up()
                if group[0].window is None:
                    hand_on(group[0].location)
                    complete(group[0].location)
                    continue
                images, failed_fetch = self.clock.timed("model waited for images", self._images, group)
                group = group[:len(images)]  # the windows before a failed fetch are still refined
                batched = _batches(predictor)
                if batched:
                    encoded = self.clock.timed("encode", predictor.encode_batch, images, [item.window for item in group])
                else:
                    encoded = images
                for item, image_or_encoding in zip(group, encoded):
                    # Handed on as the model reaches it, when every location before it is
                    # complete: the finish stage never waits on one the model cannot reach.
                    hand_on(item.location)
                    if batched:
                        predictor.use(image_or_encoding)
                    else:
                        self.clock.timed("encode", predictor.encode, image_or_encoding, item.window)
                    batches = engine.decode_window(predictor, item.window, item.prompts, item.location.plan.frame_size)
                    while (tasks := self.clock.timed("decode", next, batches, None)) is not None:
                        budget.take(len(tasks))
                        item.location.batches.put((outlines.submit(settle_timed, tasks, self._settings), len(tasks)))
                    if item.last_of_location:
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

    def _model(self) -> MaskPredictor:
        if self._predictor is None:
            self._predictor = self._predictor_source()
        return self._predictor

    def _wait(self, future: Future):
        while True:
            if self._stop.is_set():
                raise Stopped()
            try:
                return future.result(timeout=POLL)
            except TimeoutError:
                continue

    # --- finish stage (its own thread) ---------------------------------------------

    def _finish_stage(self, finishing: queue.Queue, budget: _Budget) -> None:
        try:
            while True:
                location = finishing.get()
                if location is None or self._stop.is_set() or not self._finish_location(location, budget):
                    return
        except Stopped:
            return
        except BaseException as error:  # raised in the calling thread by `run`
            self._fail(error)

    def _next_batch(self, location: _Location):
        while True:
            if self._stop.is_set():
                raise Stopped()
            try:
                return location.batches.get(timeout=POLL)
            except queue.Empty:
                continue

    def _finish_location(self, location: _Location, budget: _Budget) -> bool:
        """Settle, judge and finish one location as its batches come; False when the model
        stage gave up on it (then it is not finished, and nothing after it is)."""
        plan, work = location.plan, location.work
        done = len(work.coordinates) - plan.prompt_count
        self._on_progress(work, done)
        while (batch := self._next_batch(location)) is not _COMPLETE:
            if batch is _ABANDONED:
                return False
            future, count = batch
            settled, seconds = self.clock.timed("finish waited for outlines", self._wait, future)
            self.clock.add("outline", seconds)
            budget.give(count)
            for owner, outcome in settled:
                plan.outcomes[owner] = outcome
            done += count
            self._on_progress(work, done)
        outcomes = self.clock.timed("review", engine.finish_location, plan, work.accepted_elsewhere, self._settings)
        self.clock.timed("write", self._finish, work, outcomes)
        return True


def _batches(predictor: MaskPredictor) -> bool:
    """Whether the predictor encodes several windows at once (model.BatchEncoder)."""
    return hasattr(predictor, "encode_batch") and hasattr(predictor, "use")


def _encode_batch_size(predictor: MaskPredictor) -> int:
    return max(1, int(getattr(predictor, "encode_batch_size", 1))) if _batches(predictor) else 1


def run_pipeline(works: Iterable[LocationWork], *arguments, **options) -> StageClock:
    """Refine, judge and finish every location of `works`, in order (see the module), with
    `Pipeline`'s arguments; `predictor` is called once, when the first window is ready for
    it. Returns the seconds each stage took."""
    pipeline = Pipeline(*arguments, **options)
    pipeline.run(works)
    return pipeline.clock
