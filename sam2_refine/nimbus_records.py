"""The platform's annotations and connections as the job keeps them: compact records.

Created annotations carry `MARKER_KEY` ("<run key>/<original id>") and `SOURCE_KEY` (a
digest of the original outline they were made from); the platform stores extra keys as
given, and keeps them through the app's edits (PUT upenn_annotation/multiple merges the
sent fields into the stored document).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .parameters import Location

MARKER_KEY = "sam2Refine"
SOURCE_KEY = "sam2RefineSource"  # the digest of the original outline a refined polygon was made from
DOUBTED_KEY = "sam2RefineDoubted"  # true on a doubtful refinement saved untagged by "Accept anyway"


@dataclass(frozen=True, eq=False, slots=True)
class AnnotationRecord(Mapping):
    """An annotation as the job keeps it: what refining, review and write-back use, with
    the outline as one numpy array. Reads like the platform's document (`record["tags"]`,
    `record.get("coordinates")`), which it was made from."""

    id: str
    shape: str
    tags: tuple[str, ...]
    location: Location
    channel: int | None
    points: np.ndarray         # (n, 2) float64 x, y
    z: np.ndarray | None       # (n,) when every vertex has z
    marker: str | None         # MARKER_KEY
    source: str | None         # SOURCE_KEY
    outline_digest: str        # of this annotation's own shape and coordinates
    doubted: bool = False      # DOUBTED_KEY

    _KEYS = ("_id", "shape", "tags", "location", "channel", "coordinates", MARKER_KEY, SOURCE_KEY, DOUBTED_KEY)

    def __getitem__(self, key: str) -> Any:
        if key == "_id":
            return self.id
        if key == "shape":
            return self.shape
        if key == "tags":
            return list(self.tags)
        if key == "location":
            return self.location.as_dict()
        if key == "channel":
            return self.channel
        if key == "coordinates":
            return self.coordinates()
        if key == MARKER_KEY and self.marker is not None:
            return self.marker
        if key == SOURCE_KEY and self.source is not None:
            return self.source
        if key == DOUBTED_KEY and self.doubted:
            return True
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (key for key in self._KEYS if key in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        if key == MARKER_KEY:
            return self.marker is not None
        if key == SOURCE_KEY:
            return self.source is not None
        if key == DOUBTED_KEY:
            return self.doubted
        return key in self._KEYS

    def coordinates(self) -> list[dict]:
        """The platform's form of the outline."""
        if self.z is None:
            return [{"x": float(x), "y": float(y)} for x, y in self.points]
        return [{"x": float(x), "y": float(y), "z": float(z)} for (x, y), z in zip(self.points, self.z)]

    def reference_point(self) -> tuple[float, float, float | None] | None:
        """As the platform measures connection distances: a point's own coordinate, the
        vertex centroid of any other shape; z only when every vertex has one."""
        if len(self.points) == 0:
            return None
        points, z = (self.points[:1], None if self.z is None else self.z[:1]) if self.shape == "point" else (
            self.points, self.z)
        x, y = points.mean(axis=0)
        return float(x), float(y), (float(z.mean()) if z is not None else None)


def location_of(document: Mapping) -> Location:
    """Where an annotation is: a compact record's own, or read from a document."""
    if isinstance(document, AnnotationRecord):
        return document.location
    return Location.from_dict(document.get("location"))


def outline_digest(shape: str, coordinates: Iterable[Any]) -> str:
    """A digest of an outline: the same for the same shape and vertices (to 1e-4 px)."""
    return _digest(str(shape), _points([point for point in coordinates if isinstance(point, dict)]))


def _digest(shape: str, points: np.ndarray) -> str:
    """`outline_digest` of vertices already read (`_points`): "shape;x,y;x,y..." with 4
    decimals, hashed; one formatting of all the numbers at once."""
    text = shape + ";%.4f,%.4f" * len(points) % tuple(points.ravel().tolist())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _points(coordinates: list[dict]) -> np.ndarray:
    """(n, 2) float64 x, y of the vertices; a value that is not a number is NaN."""
    try:  # well-formed coordinates (the platform's): one conversion
        points = np.array([(c["x"], c["y"]) for c in coordinates], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        points = np.array([(_number(c.get("x")), _number(c.get("y"))) for c in coordinates], dtype=np.float64)
    return points.reshape(-1, 2)


def record_of(document: Mapping, location: Location | None = None) -> AnnotationRecord:
    """The compact record of one platform annotation document (`location`: its location,
    if the caller has read it already)."""
    if isinstance(document, AnnotationRecord):
        return document
    raw = document.get("coordinates") or []
    try:  # the platform's: every vertex a dict with x and y, converted at once
        points = np.array([(c["x"], c["y"]) for c in raw], dtype=np.float64).reshape(-1, 2)
        coordinates = raw
    except (KeyError, TypeError, ValueError, IndexError):
        coordinates = [c for c in raw if isinstance(c, dict)]
        points = _points(coordinates)
    z = None
    if coordinates and all("z" in c for c in coordinates):
        z = np.array([_number(c["z"]) for c in coordinates], dtype=np.float64)
    channel = document.get("channel")
    marker, source = document.get(MARKER_KEY), document.get(SOURCE_KEY)
    shape = str(document.get("shape") or "")
    return AnnotationRecord(
        id=str(document["_id"]),
        shape=shape,
        tags=tuple(tag for tag in (document.get("tags") or []) if isinstance(tag, str)),
        location=location if location is not None else Location.from_dict(
            document.get("location") if isinstance(document.get("location"), dict) else None),
        channel=channel if isinstance(channel, int) and not isinstance(channel, bool) else None,
        points=points,
        z=z,
        marker=str(marker) if marker is not None else None,
        source=str(source) if source is not None else None,
        outline_digest=_digest(shape, points),
        doubted=document.get(DOUBTED_KEY) is True,
    )


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """A connection as the job keeps it."""

    id: str
    parent_id: str
    child_id: str
    tags: tuple[str, ...]
    label: str | None

    @classmethod
    def of(cls, document: Mapping) -> "ConnectionRecord":
        if isinstance(document, ConnectionRecord):
            return document
        label = document.get("label")
        return cls(str(document["_id"]), str(document.get("parentId")), str(document.get("childId")),
                   tuple(t for t in (document.get("tags") or []) if isinstance(t, str)),
                   str(label) if label is not None else None)

    @property
    def ends(self) -> tuple[str, str, tuple[str, ...], str | None]:
        """What makes two connections the same link."""
        return self.parent_id, self.child_id, self.tags, self.label
