"""Which annotations a job refines, and the outline each one prompts SAM2 with."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from .drawn import original_outline, outline_points
from .geometry import coordinates_to_points
from .markers import is_output_of, marked_source
from .nimbus_records import AnnotationRecord, location_of
from .parameters import Location

# The shapes that outline an object, so can be refined.
OUTLINE_SHAPES = ("polygon", "rectangle")


def has_any_tag(document: Mapping, tags: tuple[str, ...]) -> bool:
    found = document.tags if isinstance(document, AnnotationRecord) else document.get("tags") or []
    return not tags or any(tag in found for tag in tags)


def select_originals(
    documents: list[dict], tags: tuple[str, ...], locations: list[Location], key: str = ""
) -> dict[Location, list[dict]]:
    """The polygons and rectangles to refine, grouped by location in the order of
    `locations`; never a refined polygon made with the settings of `key`."""
    wanted = set(locations)
    grouped: dict[Location, list[dict]] = defaultdict(list)
    for document in documents:
        record = isinstance(document, AnnotationRecord)  # its own fields, read as they are
        if (document.shape if record else document.get("shape")) not in OUTLINE_SHAPES \
                or not has_any_tag(document, tags):
            continue
        if key and (marked_source(document.marker, key) is not None if record else is_output_of(document, key)):
            continue
        location = location_of(document)
        if location in wanted:
            grouped[location].append(document)
    return {location: grouped[location] for location in locations if grouped.get(location)}


def prompt_points(document: Mapping) -> np.ndarray:
    """`prompt_coordinates` as (n, 2) x, y points (a compact record's own, as read)."""
    if document.get("shape") != "rectangle":
        return outline_points(document)
    return coordinates_to_points(prompt_coordinates(document))


def prompt_coordinates(document: Mapping) -> list[dict]:
    """The outline that prompts SAM2: a polygon's vertices, a rectangle's four corners
    (the box of however many points it is stored with)."""
    coordinates = document.get("coordinates") or []
    if document.get("shape") != "rectangle":
        return coordinates
    outline = original_outline(document)
    if outline is None:
        return coordinates
    x0, y0, x1, y1 = outline.bounds
    return [{"x": x0, "y": y0}, {"x": x1, "y": y0}, {"x": x1, "y": y1}, {"x": x0, "y": y1}]
