"""The platform's two requests: `interface` and `compute`."""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from . import interface as ui
from .engine import RefineSettings, WindowImages, refine_frame
from .errors import WorkerError
from .messages import Reporter, make_progress, plural, skipped_summary
from .model import MODEL_INPUT_SIDE, MaskPredictor
from .nimbus import FrameGeometry, Platform
from .parameters import Location, RefineParameters, parse_parameters, resolve_locations
from .writeback import write_back

# Shares of the progress bar.
LOADING_SHARE = 0.05
REFINING_SHARE = 0.85


def run_interface(platform: Platform, image: str, reporter: Reporter) -> None:
    if not image:
        raise WorkerError("The request names no image", info="The platform sends the image as `image` in the parameters.")
    models = ui.available_checkpoints()
    platform.post_interface(image, ui.build_interface(models))
    reporter.log(f"posted the interface of {image} with {plural(len(models), 'model')}")


def has_any_tag(document: dict, tags: tuple[str, ...]) -> bool:
    return not tags or any(tag in (document.get("tags") or []) for tag in tags)


def select_originals(
    documents: list[dict], tags: tuple[str, ...], locations: list[Location]
) -> dict[Location, list[dict]]:
    """The polygons to refine, grouped by location in the order of `locations`."""
    wanted = set(locations)
    grouped: dict[Location, list[dict]] = defaultdict(list)
    for document in documents:
        if document.get("shape") != "polygon" or not has_any_tag(document, tags):
            continue
        location = Location.from_dict(document.get("location"))
        if location in wanted:
            grouped[location].append(document)
    return {location: grouped[location] for location in locations if grouped.get(location)}


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
    platform: Platform, location: Location, frame: FrameGeometry, resolution: str, reporter: Reporter
) -> WindowImages:
    """Where the engine gets its windows, fetched at no more than the resolution SAM2 uses:
    in Auto each window's own region, so memory follows the window and not the frame; in
    Whole frame the frame, downsampled."""
    warned = False

    def checked(image: np.ndarray) -> np.ndarray:
        nonlocal warned
        if not warned and not image.any():
            warned = True
            reporter.warning(
                f"The image SAM2 sees at {_where(location)} is black as displayed",
                info="Make at least one layer visible with a contrast that shows the cells.",
            )
        return image

    if resolution == ui.RESOLUTION_WHOLE_FRAME:
        return lambda window: checked(platform.frame_image(location, whole_frame_fetch_size(frame)))
    return lambda window: checked(
        platform.window_image(location, window, model_fetch_size(window.width, window.height))
    )


def _where(location: Location) -> str:
    return f"XY {location.xy + 1}, Z {location.z + 1}, Time {location.time + 1}"


def _report_skipped(reasons: Counter, reporter: Reporter) -> None:
    advice = {
        "degenerate prompt": "Their outlines have fewer than 3 points or no area; redraw them.",
        "outside the image": "Their outlines lie outside the image.",
        "empty mask": "SAM2 found nothing in their boxes; try another model or a looser outline.",
        "vanished after padding": "Their refined outlines disappeared after negative padding; reduce it.",
    }
    for reason, count in reasons.most_common():
        reporter.warning(f"{plural(count, 'object')} skipped: {reason}", info=advice.get(reason))


def run_compute(
    platform: Platform,
    raw_parameters: dict,
    dataset_id: str | None,
    reporter: Reporter,
    load_predictor: Callable[[Path], MaskPredictor],
) -> None:
    models = ui.available_checkpoints()
    params: RefineParameters = parse_parameters(raw_parameters, dataset_id, models, ui.checkpoint_dir())
    frame = platform.frame_geometry()
    locations = resolve_locations(params, frame.sizes)
    reporter.progress(0.0, "Reading annotations", force=True)
    by_location = select_originals(platform.polygons(params.refine_tags), params.refine_tags, locations)
    total = sum(len(originals) for originals in by_location.values())
    if total == 0:
        tags = ", ".join(params.refine_tags) or "any tag"
        reporter.warning(
            f"Nothing to refine: no polygons tagged {tags} at the {plural(len(locations), 'selected position')}",
            info="Check 'Tag of objects to refine' and the Batch fields.",
        )
        reporter.progress(1.0, "Nothing to refine", force=True)
        return

    reporter.progress(0.01, f"Loading {params.model_name}", force=True)
    predictor = load_predictor(params.checkpoint_path)
    settings = RefineSettings(smoothing=params.smoothing, padding=params.padding, resolution=params.resolution)
    refined: list[tuple[dict, Polygon]] = []
    skipped: Counter = Counter()
    finished = 0
    for location, originals in by_location.items():
        images = window_images(platform, location, frame, params.resolution, reporter)
        progress = make_progress(
            reporter, LOADING_SHARE + REFINING_SHARE * finished / total, REFINING_SHARE * len(originals) / total,
            len(originals),
            lambda done, before=finished, where=_where(location): f"Refined {before + done} of {total} objects ({where})",
        )
        outcomes = refine_frame(
            predictor, images, (frame.width, frame.height), [o.get("coordinates") or [] for o in originals],
            settings, progress,
        )
        del images
        for original, outcome in zip(originals, outcomes):
            if outcome.polygon is None:
                skipped[outcome.reason] += 1
            else:
                refined.append((original, outcome.polygon))
        finished += len(originals)

    reporter.progress(LOADING_SHARE + REFINING_SHARE, f"Saving {plural(len(refined), 'refined polygon')}", force=True)
    result = write_back(platform, refined, params, uuid.uuid4().hex, reporter)
    _report_skipped(skipped, reporter)
    if result.create_error is not None:
        raise result.create_error
    summary = f"Refined {len(result.created)} of {total}"
    if skipped:
        summary += f"; {sum(skipped.values())} skipped: {skipped_summary(skipped)}"
    if params.delete_originals:
        summary += f"; replaced {result.deleted} originals"
        if result.kept_originals:
            summary += f", kept {result.kept_originals}"
    reporter.progress(1.0, summary, force=True)
    if not result.created:
        raise WorkerError(
            f"No object could be refined ({skipped_summary(skipped)})",
            info="See the warnings above for what to change.",
            title="Nothing refined",
        )
