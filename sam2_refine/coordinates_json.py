"""Refined polygons' platform coordinates as JSON, made where the polygons are made.

The outline processes make the refined polygons; encoding each one's vertices as the
platform's coordinates there (`encode`) spares the worker's own process that work per
vertex when it saves them: a settled chunk brings the encodings back with its polygons
(`remember`), and the document made for that very polygon object carries its encoding as
it is (`coordinates`: an orjson fragment, which the request body takes in whole). A polygon
made or changed in the worker's own process (another object) gets the coordinates list
`geometry.polygon_to_coordinates` makes, as before; both are the same JSON.
"""

from __future__ import annotations

import weakref

import orjson
from shapely.geometry import Polygon

from .geometry import polygon_to_coordinates

# id(polygon) -> (a weak reference to it, its encoding); an entry goes with its polygon.
_remembered: dict[int, tuple[weakref.ref, bytes]] = {}


def encode(polygon: Polygon) -> bytes:
    """The polygon's platform coordinates, as JSON."""
    return orjson.dumps(polygon_to_coordinates(polygon))


def remember(polygon: Polygon, encoded: bytes) -> None:
    """Keep `encoded` (`encode` of `polygon`, made elsewhere) for as long as `polygon` lives."""
    key = id(polygon)
    _remembered[key] = (weakref.ref(polygon, lambda _, key=key: _remembered.pop(key, None)), encoded)


def coordinates(polygon: Polygon) -> list[dict[str, float]] | orjson.Fragment:
    """The polygon's platform coordinates for a request body: its remembered encoding, or
    the coordinates list."""
    entry = _remembered.get(id(polygon))
    if entry is not None and entry[0]() is polygon:
        return orjson.Fragment(entry[1])
    return polygon_to_coordinates(polygon)
