"""The job's parameters, parsed and validated into one typed object.

Everything the user can get wrong is checked here, before any model is loaded or
anything is written. Batch fields are 1-based in the interface; every position held
by this module's results is 0-based, as the platform's `location` is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import interface as ui
from .errors import ParameterError

AXES = ("XY", "Z", "Time")
BATCH_FIELDS = {"XY": ui.BATCH_XY, "Z": ui.BATCH_Z, "Time": ui.BATCH_TIME}


@dataclass(frozen=True)
class Location:
    """A 0-based position in the dataset; `as_dict` keeps the platform's key order."""

    xy: int
    z: int
    time: int

    def as_dict(self) -> dict[str, int]:
        return {"XY": int(self.xy), "Z": int(self.z), "Time": int(self.time)}

    @classmethod
    def from_dict(cls, raw: dict | None) -> "Location":
        raw = raw or {}
        return cls(xy=_int_or_zero(raw.get("XY")), z=_int_or_zero(raw.get("Z")), time=_int_or_zero(raw.get("Time")))


@dataclass(frozen=True)
class ConnectTo:
    """The tool's "Connect to nearest" setting: parents carry any of `tags`."""

    tags: tuple[str, ...]
    channel: int | None


@dataclass(frozen=True)
class RefineParameters:
    image: str
    dataset_id: str
    refine_tags: tuple[str, ...]
    output_tags: tuple[str, ...]
    output_channel: int
    model_name: str
    checkpoint_path: Path
    resolution: str
    delete_originals: bool
    padding: float
    smoothing: float
    tile: Location
    batch_text: dict[str, str]
    connect_to: ConnectTo | None
    doubtful: str = ui.DOUBTFUL_TAG
    allow_overlaps: bool = False


@dataclass(frozen=True)
class DatasetSizes:
    """How many positions the dataset has along each axis."""

    xy: int
    z: int
    time: int

    def of(self, axis: str) -> int:
        return {"XY": self.xy, "Z": self.z, "Time": self.time}[axis]


def _int_or_zero(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def parse_number(field: str, raw: Any, default: float, bounds: tuple[float, float]) -> float:
    """A number field: a JSON number, a numeric string, or empty/missing for the default."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if isinstance(raw, bool):
        raise ParameterError(field, f"{raw!r} is not a number", f"Enter a number from {bounds[0]:g} to {bounds[1]:g}.")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ParameterError(
            field, f"{raw!r} is not a number", f"Enter a number from {bounds[0]:g} to {bounds[1]:g}."
        ) from None
    low, high = bounds
    if not math.isfinite(value) or not low <= value <= high:
        raise ParameterError(field, f"{value:g} is out of range", f"Enter a number from {low:g} to {high:g}.")
    return value


def parse_tags(field: str, raw: Any) -> tuple[str, ...]:
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(tag, str) for tag in raw):
        raise ParameterError(field, f"expected a list of tags, got {raw!r}", "Choose the tags again in the tool.")
    return tuple(dict.fromkeys(tag for tag in raw if tag.strip()))


def parse_checkbox(raw: Any) -> bool:
    if isinstance(raw, str):
        return raw.strip().lower() in ("true", "1", "yes")
    return bool(raw)


def parse_model(raw: Any, available: list[str]) -> str:
    choices = ", ".join(available)
    if raw is None or raw == "":
        raise ParameterError(ui.MODEL, "no model is selected", f"Select one of: {choices}.")
    if raw not in available:
        raise ParameterError(
            ui.MODEL, f"{raw!r} is not an installed model", f"Select one of: {choices}."
        )
    return str(raw)


def parse_choice(field: str, raw: Any, choices: tuple[str, ...], default: str) -> str:
    """A select field with a fixed list. Configurations saved before the field existed, or
    with it cleared, send nothing: that means `default`."""
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise ParameterError(field, f"{raw!r} is not a choice", f"Select one of: {', '.join(choices)}.")
    return str(raw)


def parse_resolution(raw: Any) -> str:
    return parse_choice(ui.RESOLUTION, raw, ui.RESOLUTION_CHOICES, ui.RESOLUTION_AUTO)


def parse_doubtful(raw: Any) -> str:
    return parse_choice(ui.DOUBTFUL, raw, ui.DOUBTFUL_CHOICES, ui.DOUBTFUL_TAG)


# At most 18 digits: no dataset comes near that, and int() refuses texts of 4300+ digits.
_RANGE_PART = re.compile(r"^(\d{1,18})(?:\s*-\s*(\d{1,18}))?$")


def parse_batch_text(field: str, text: str) -> list[tuple[int, int]] | None:
    """1-based Batch text -> sorted, disjoint 0-based spans (first, last), both included;
    None means "all".

    Accepts `3`, `1-3`, `1, 4-6` and `all` (any case). Empty text is handled by the caller
    (it means the current tile). Spans are never expanded here, so a range such as
    `1-30000000` costs nothing until it is checked against the dataset's size.
    """
    fix = "Use 1-based positions such as 1-3, 5-8, or all."
    if text.strip().lower() == "all":
        return None
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        match = _RANGE_PART.match(part)
        if not match:
            raise ParameterError(field, f"cannot read {part!r}" if part else "an empty entry", fix)
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if first < 1 or last < first:
            raise ParameterError(field, f"{part!r} is not a valid range", fix)
        spans.append((first - 1, last - 1))
    return _merged(spans)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or adjacent spans joined, in order."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def batch_text_of(raw: Any, field: str) -> str:
    if raw is None:
        return ""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return str(int(raw))
    if not isinstance(raw, str):
        raise ParameterError(field, f"expected text, got {raw!r}", "Use 1-based positions such as 1-3, 5-8, or all.")
    return raw


def parse_connect_to(raw: Any) -> ConnectTo | None:
    if not isinstance(raw, dict):
        return None
    tags = tuple(tag for tag in (raw.get("tags") or []) if isinstance(tag, str))
    if not tags:
        return None
    channel = raw.get("channel")
    return ConnectTo(tags=tags, channel=int(channel) if isinstance(channel, int) and not isinstance(channel, bool) else None)


def parse_parameters(
    raw: dict, dataset_id: str | None, available_models: list[str], checkpoint_dir: Path
) -> RefineParameters:
    """Validate the compute request's `--parameters` against what this worker offers."""
    if not dataset_id:
        dataset_id = raw.get("datasetId")
    if not dataset_id:
        raise ParameterError("datasetId", "the job names no dataset", "Run the tool from a dataset.")
    values = raw.get("workerInterface") or {}
    if not isinstance(values, dict):
        raise ParameterError("workerInterface", "expected an object", "Re-open the tool and run it again.")
    model_name = parse_model(values.get(ui.MODEL), available_models)
    channel = raw.get("channel", 0)
    if isinstance(channel, bool) or not isinstance(channel, (int, float)) or channel != int(channel):
        raise ParameterError("channel", f"{channel!r} is not a channel index", "Assign the tool to a layer.")
    refine_tags = parse_tags(ui.REFINE_TAGS, values.get(ui.REFINE_TAGS))
    delete_originals = parse_checkbox(values.get(ui.DELETE_ORIGINALS))
    if delete_originals and not refine_tags:
        raise ParameterError(
            ui.REFINE_TAGS,
            "no tag chosen while 'Delete original annotations' is on, which would replace every polygon in range",
            "Choose the tag of the objects to refine, or untick 'Delete original annotations'.",
        )
    return RefineParameters(
        image=str(raw.get("image") or ""),
        dataset_id=str(dataset_id),
        refine_tags=refine_tags,
        output_tags=parse_tags("tags", raw.get("tags")),
        output_channel=int(channel),
        model_name=model_name,
        checkpoint_path=checkpoint_dir / model_name,
        resolution=parse_resolution(values.get(ui.RESOLUTION)),
        delete_originals=delete_originals,
        padding=parse_number(ui.PADDING, values.get(ui.PADDING), ui.PADDING_DEFAULT, ui.PADDING_RANGE),
        smoothing=parse_number(ui.SMOOTHING, values.get(ui.SMOOTHING), ui.SMOOTHING_DEFAULT, ui.SMOOTHING_RANGE),
        tile=Location.from_dict(raw.get("tile")),
        batch_text={axis: batch_text_of(values.get(field), field) for axis, field in BATCH_FIELDS.items()},
        connect_to=parse_connect_to(raw.get("connectTo")),
        doubtful=parse_doubtful(values.get(ui.DOUBTFUL)),
        allow_overlaps=parse_checkbox(values.get(ui.OVERLAPS)),
    )


def _positions_on_axis(params: RefineParameters, axis: str, size: int) -> list[int]:
    field = BATCH_FIELDS[axis]
    text = params.batch_text[axis]
    if not text.strip():
        current = {"XY": params.tile.xy, "Z": params.tile.z, "Time": params.tile.time}[axis]
        if not 0 <= current < size:
            raise ParameterError(
                field,
                f"the current position {current + 1} does not exist in this dataset ({size} {axis} positions)",
                f"Enter positions from 1 to {size}, or all.",
            )
        return [current]
    spans = parse_batch_text(field, text)
    if spans is None:
        return list(range(size))
    # Checked before expanding: the spans' end is the largest position asked for.
    largest = spans[-1][1] + 1
    if largest > size:
        raise ParameterError(
            field,
            f"position {largest} is beyond this dataset's {size} {axis} position{'s' if size != 1 else ''}",
            f"Enter positions from 1 to {size}, or all.",
        )
    return [position for first, last in spans for position in range(first, last + 1)]


def resolve_locations(params: RefineParameters, sizes: DatasetSizes) -> list[Location]:
    """Every location the Batch fields select, in XY, Z, Time order."""
    per_axis = {axis: _positions_on_axis(params, axis, sizes.of(axis)) for axis in AXES}
    return [
        Location(xy=xy, z=z, time=time)
        for xy in per_axis["XY"]
        for z in per_axis["Z"]
        for time in per_axis["Time"]
    ]
