"""The platform's two requests: `interface` and `compute`.

`compute` streams the work by location: it refines a location's originals, checks each
refinement against its original, writes that location back (create, connect, replace)
and reports, then goes to the next; nothing is held across locations, and everything
finished before a crash or cancel is saved. A second run with the same settings
continues where the first stopped.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import interface as ui
from . import processes
from .creates import Refined
from .device import usable_cpu_count
from .drawn import original_outlines, outline_points
from .engine import RefineSettings, WindowImages, why_not_accepted
from .errors import WorkerError, unexpected
from .markers import run_key
from .messages import Reporter, plural
from .seam import MODEL_INPUT_SIDE, MaskPredictor
from .nimbus import FrameGeometry, Platform
from .nimbus_fetchers import Fetchers
from .originals import prompt_points
from .outcome import Outcome
from .parameters import Location, RefineParameters, parse_parameters, resolve_locations
from .pipeline import FETCH_THREADS, LocationWork, run_pipeline
from .resume import Counterpart, read_job
from .review import DEFAULT_THRESHOLDS, unpadded
from .seam import PredictorAdapter, adapt
from .summary import Tally, check_something_refined, report_end, report_nothing_to_refine, with_saved_work
from .writeback import Unfinished, WriteBack

# Shares of the progress bar.
LOADING_SHARE = 0.05
REFINING_SHARE = 0.95

# Jobs with fewer objects than this settle their outlines in the worker's own process:
# starting a process per CPU costs more than they would gain.
PROCESS_POOL_MIN_OBJECTS = 200


def run_interface(platform: Platform, image: str, reporter: Reporter) -> None:
    if not image:
        raise WorkerError("The request names no image", info="The platform sends the image as `image` in the parameters.")
    models = ui.available_checkpoints()
    platform.post_interface(image, ui.build_interface(models))
    reporter.log(f"posted the interface of {image} with {plural(len(models), 'model')}")


def model_fetch_size(width: int, height: int) -> int | None:
    """The longest side to fetch a width x height region at so that both sides still reach
    SAM2's input size (it would downsample the rest away); None for full resolution."""
    shorter = min(width, height)
    if shorter <= MODEL_INPUT_SIDE:
        return None
    return math.ceil(max(width, height) * MODEL_INPUT_SIDE / shorter)


def whole_frame_fetch_size(frame: FrameGeometry) -> int | None:
    return model_fetch_size(frame.width, frame.height)


def window_images(
    platform: Platform, location: Location, frame: FrameGeometry, resolution: str, reporter: Reporter,
    fetchers: Fetchers | None = None,
) -> WindowImages:
    """Where the engine gets its windows, fetched at no more than the resolution SAM2 uses:
    in Auto each window's own region, so memory follows the window and not the frame; in
    Whole frame the frame, downsampled. With `fetchers`, they are fetched and drawn in
    those processes, and only received here."""
    warned = False

    def checked(image: np.ndarray, black: bool) -> np.ndarray:
        nonlocal warned
        if not warned and black:
            warned = True
            reporter.warning(
                f"The image SAM2 sees at {_where(location)} is black as displayed",
                info="Make at least one layer visible with a contrast that shows the cells.",
            )
        return image

    whole = resolution == ui.RESOLUTION_WHOLE_FRAME
    if fetchers is not None:
        if whole:
            return lambda window: checked(*fetchers.frame(location, whole_frame_fetch_size(frame)))
        return lambda window: checked(*fetchers.window(location, window, model_fetch_size(window.width, window.height)))

    def black(image: np.ndarray) -> tuple[np.ndarray, bool]:
        return image, not warned and not image.any()

    if whole:
        return lambda window: checked(*black(platform.frame_image(location, whole_frame_fetch_size(frame))))
    return lambda window: checked(*black(
        platform.window_image(location, window, model_fetch_size(window.width, window.height))))


def _where(location: Location) -> str:
    return f"XY {location.xy + 1}, Z {location.z + 1}, Time {location.time + 1}"


def decide(
    originals: list[dict], outcomes: list[Outcome], policy: str, tally: Tally, reporter: Reporter | None = None
) -> list[Refined]:
    """What to save for each reviewed outcome under the user's doubtful-refinement policy;
    each skipped original is named in the job log, with its reason. An outline cut where
    SAM2's mask went on is kept next to its original, tagged for review, whatever the
    policy but Skip."""
    refined = []
    for original, outcome in zip(originals, outcomes):
        if outcome.recovered is not None:
            tally.recovered[outcome.recovered] += 1
        if outcome.polygon is None:
            tally.skipped[outcome.reason] += 1
            if reporter is not None:
                reporter.log(f"skipped {original['_id']}: {outcome.reason}")
            continue
        doubtful = bool(outcome.doubts)
        if doubtful:
            tally.doubtful[why_not_accepted(outcome)] += 1
            if policy == ui.DOUBTFUL_SKIP:
                continue
        tagged = doubtful and (policy == ui.DOUBTFUL_TAG or outcome.cut)
        tally.cut_kept += doubtful and policy == ui.DOUBTFUL_ACCEPT and outcome.cut
        refined.append(Refined(original, outcome.polygon, tagged, accepted_anyway=doubtful and not tagged))
    return refined


def _report_device(predictor: PredictorAdapter, model_name: str, reporter: Reporter) -> None:
    description = predictor.device_description
    reporter.progress(LOADING_SHARE, f"Loaded {model_name}" + (f" on {description}" if description else ""), force=True)
    if predictor.device_warning:
        reporter.warning(predictor.device_warning, info="The job runs on the CPU instead, much more slowly.")


def run_compute(
    platform: Platform,
    raw_parameters: dict,
    dataset_id: str | None,
    reporter: Reporter,
    load_predictor: Callable[[Path], MaskPredictor],
    prepare_predictor: Callable[[Path], None] | None = None,
) -> None:
    """Refine the job's originals. `prepare_predictor`, if given, is told the checkpoint as
    soon as the parameters are accepted, so the model can load while annotations are read;
    `load_predictor` then returns the predictor."""
    processes.fewer_collections()
    models = ui.available_checkpoints()
    params: RefineParameters = parse_parameters(raw_parameters, dataset_id, models, ui.checkpoint_dir())
    # What the platform lets this user do, asked once before the model loads or anything is read.
    platform.require_write_access()
    platform.require_visible_layer()
    frame = platform.frame_geometry()
    locations = resolve_locations(params, frame.sizes)
    if prepare_predictor is not None:
        prepare_predictor(params.checkpoint_path)
    key = run_key(params)
    reporter.progress(0.0, "Reading annotations", force=True)
    job = read_job(platform, params, key, locations)
    by_location = job.originals
    # Originals a run with the same settings already refined: never refined again.
    earlier = job.earlier.counterparts
    tally = Tally()
    for originals in by_location.values():
        done = sum(1 for original in originals if original["_id"] in earlier)
        tally.earlier += done
        tally.to_refine += len(originals) - done
    if tally.to_refine + tally.earlier == 0:
        if job.earlier.duplicates:  # late writes that landed after an earlier run ended: removed
            writer = WriteBack(platform, params, key, reporter)
            writer.prepare(job)
            writer.finish()
        report_nothing_to_refine(params, len(locations), job.earlier.refined_outlines(), reporter)
        return

    if tally.to_refine:
        reporter.progress(0.01, f"Loading {params.model_name}", force=True)
    writer = WriteBack(platform, params, key, reporter)
    writer.prepare(job)
    settings = RefineSettings(smoothing=params.smoothing, padding=params.padding, resolution=params.resolution,
                              thresholds=DEFAULT_THRESHOLDS,  # what every refinement is judged by
                              keep_apart=not params.allow_overlaps)

    def predictor() -> PredictorAdapter:
        loaded = adapt(load_predictor(params.checkpoint_path))
        _report_device(loaded, params.model_name, reporter)
        return loaded

    workers = usable_cpu_count() if tally.to_refine >= PROCESS_POOL_MIN_OBJECTS else 1
    # With processes for the outlines, the window images are drawn in processes too.
    fetchers = platform.fetchers(FETCH_THREADS) if workers > 1 else None

    def works():
        for location in list(by_location):
            yield _location_work(platform, location, by_location.pop(location), earlier,
                                 job.earlier.accepted_polygons(location), frame, params, reporter, fetchers)

    def finish(work: LocationWork, outcomes: list[Outcome]) -> None:
        _finish_location(work, outcomes, params, writer, tally, reporter)

    try:
        clock = run_pipeline(works(), predictor, settings, finish,
                             lambda work, done: _progress(work, done, tally, reporter), workers, log=reporter.log)
        where = f"in {workers} processes" if workers > 1 else "in line"
        reporter.log(f"stage seconds (outlines {where}): {clock.summary()}")
        reporter.log(f"main process CPU seconds: {clock.cpu_summary()}")
        writer.finish()
    except Exception as error:  # any failure (not a cancel): the summary, and what was saved before it
        report_end(tally, writer.result, params, reporter)
        if isinstance(error, Unfinished):
            raise
        failure = error if isinstance(error, WorkerError) else unexpected(error)
        failure.info = with_saved_work(failure.info, writer.result, writer.left_undone())
        if failure is error:
            raise
        raise failure from error
    finally:
        if fetchers is not None:
            fetchers.close(wait=sys.exc_info()[0] is None)
    report_end(tally, writer.result, params, reporter)
    check_something_refined(tally, writer.result)


@dataclass(frozen=True)
class _Place:
    """What the worker keeps of a location while the pipeline works on it."""

    location: Location
    todo: list[dict]
    done: list[tuple[dict, Counterpart]]


def _location_work(
    platform: Platform,
    location: Location,
    originals: list[dict],
    earlier: dict[str, Counterpart],
    accepted_earlier: list,
    frame: FrameGeometry,
    params: RefineParameters,
    reporter: Reporter,
    fetchers: Fetchers | None = None,
) -> LocationWork:
    """A location for the pipeline: the originals still to refine, and those an earlier run
    refined (only write-back may be left to do for them); `accepted_earlier` are the
    outlines an earlier run with the same settings accepted here, as written: the overlap
    check counts them as kept (one accepted outline per cell across runs), and new outlines
    yield to them."""
    done = [(original, earlier[original["_id"]]) for original in originals if original["_id"] in earlier]
    todo = [original for original in originals if original["_id"] not in earlier]
    points = [outline_points(original) for original in todo]
    return LocationWork(
        frame_size=(frame.width, frame.height),
        # A rectangle prompts with its box, a polygon with its own points.
        coordinates=[prompt_points(original) if original.get("shape") == "rectangle" else found
                     for original, found in zip(todo, points)],
        outlines=original_outlines(todo, points),
        fetch=window_images(platform, location, frame, params.resolution, reporter, fetchers),
        accepted_elsewhere=[unpadded(polygon, params.padding, (frame.width, frame.height))
                            for polygon in accepted_earlier],
        context=_Place(location, todo, done),
        written=list(accepted_earlier),
    )


def _progress(work: LocationWork, done: int, tally: Tally, reporter: Reporter) -> None:
    place: _Place = work.context
    if not place.todo:
        return
    total = max(tally.to_refine, 1)
    fraction = LOADING_SHARE + REFINING_SHARE * (tally.finished + done) / total
    reporter.progress(fraction, f"Refined {tally.finished + done} of {tally.to_refine} objects ({_where(place.location)})")


def _finish_location(
    work: LocationWork,
    outcomes: list[Outcome],
    params: RefineParameters,
    writer: WriteBack,
    tally: Tally,
    reporter: Reporter,
) -> None:
    """Decide, write back and report one location (the pipeline's finish stage)."""
    place: _Place = work.context
    refined = decide(place.todo, outcomes, params.doubtful, tally, reporter)
    writer.write_location(place.location, refined, place.done)
    tally.finished += len(place.todo)
    reporter.progress(
        LOADING_SHARE + REFINING_SHARE * tally.finished / max(tally.to_refine, 1),
        f"Saved {writer.result.created} refined polygons; {tally.finished} of {tally.to_refine} objects done "
        f"({_where(place.location)})",
        force=True,
    )
