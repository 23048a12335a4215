"""Ids and document validation, as the platform does them (PLATFORM.md §5).

Validation messages follow fastjsonschema's wording, which the platform
passes through in its ValidationException (e.g.
``data.coordinates must contain at least 1 items``).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Any

from nimbus_server.errors import internal_error, validation_error

ANNOTATION_SHAPES = ["point", "line", "polygon", "rectangle"]
ANNOTATION_REQUIRED = ["coordinates", "tags", "channel", "location", "shape", "datasetId"]
# The keys a PUT keeps (the schema's properties).
ANNOTATION_FIELDS = frozenset(ANNOTATION_REQUIRED) | {"name", "color", "geometryHash"}
CONNECTION_REQUIRED = ["parentId", "childId", "datasetId", "tags"]

_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")


class Oid(str):
    """A stored value that MongoDB would hold as an ObjectId.

    Dataset queries compare against ObjectIds, so a plain ``str`` stored in
    the same field (what ``PUT upenn_annotation/{id}`` does with a
    ``datasetId``) no longer matches them.
    """


class ObjectIdFactory:
    """24-hex ids shaped like ObjectIds (time, random, counter) that
    strictly increase, so ``_id`` order is creation order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._random = secrets.randbits(40)
        self._seconds = 0
        self._counter = 0

    def new(self) -> str:
        with self._lock:
            self._seconds = max(self._seconds, int(time.time()))
            self._counter += 1
            if self._counter > 0xFFFFFF:
                self._seconds += 1
                self._counter = 0
            return f"{self._seconds:08x}{self._random:010x}{self._counter:06x}"


def is_object_id(value: Any) -> bool:
    return isinstance(value, str) and _OBJECT_ID.fullmatch(value) is not None


def parse_object_id(value: Any) -> str:
    """An id from a URL or parameter; Girder answers a bad one with 400."""
    if not is_object_id(value):
        raise validation_error(f"Invalid ObjectId: {value}")
    return value.lower()


def convert_object_id(value: Any) -> str:
    """``bson.ObjectId(value)`` where the platform does not catch its error,
    so a malformed id becomes a 500."""
    if not is_object_id(value):
        raise internal_error(
            f"{value!r} is not a valid ObjectId, it must be a 12-byte input "
            "or a 24-character hex string"
        )
    return value.lower()


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(doc: Any, required: list[str], where: str) -> None:
    if not isinstance(doc, dict):
        raise validation_error(f"{where} must be object")
    if not all(key in doc for key in required):
        raise validation_error(f"{where} must contain {required} properties")


def _check_string_list(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise validation_error(f"{where} must be array")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise validation_error(f"{where}[{index}] must be string")


def _check_coordinates(coordinates: Any) -> None:
    if not isinstance(coordinates, list):
        raise validation_error("data.coordinates must be array")
    if len(coordinates) < 1:
        raise validation_error("data.coordinates must contain at least 1 items")
    for index, point in enumerate(coordinates):
        where = f"data.coordinates[{index}]"
        _require(point, ["x", "y"], where)
        for axis in ("x", "y", "z"):
            if axis in point and not _is_number(point[axis]):
                raise validation_error(f"{where}.{axis} must be number")


def _check_location(location: Any) -> None:
    if not isinstance(location, dict):
        raise validation_error("data.location must be object")
    for key in ("XY", "Z", "Time"):
        if key in location and not _is_integer(location[key]):
            raise validation_error(f"data.location.{key} must be integer")


def validate_annotation(doc: Any) -> None:
    """The annotation schema (draft-04). Raises a 400 validation error."""
    _require(doc, ANNOTATION_REQUIRED, "data")
    if "name" in doc and not isinstance(doc["name"], str):
        raise validation_error("data.name must be string")
    _check_coordinates(doc["coordinates"])
    _check_string_list(doc["tags"], "data.tags")
    if not _is_integer(doc["channel"]):
        raise validation_error("data.channel must be integer")
    _check_location(doc["location"])
    if not isinstance(doc["shape"], str):
        raise validation_error("data.shape must be string")
    if doc["shape"] not in ANNOTATION_SHAPES:
        raise validation_error(f"data.shape must be one of {ANNOTATION_SHAPES}")
    if "color" in doc and doc["color"] is not None and not isinstance(doc["color"], str):
        raise validation_error("data.color must be string or null")


def validate_connection(doc: Any) -> None:
    """The connection schema (draft-04). Raises a 400 validation error."""
    _require(doc, CONNECTION_REQUIRED, "data")
    for key in ("label", "parentId", "childId", "datasetId"):
        if key in doc and not isinstance(doc[key], str):
            raise validation_error(f"data.{key} must be string")
    _check_string_list(doc["tags"], "data.tags")
