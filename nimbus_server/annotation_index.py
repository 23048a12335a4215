"""The annotation collection and the indexes the platform's queries run on.

MongoDB answers the platform's listing from its (datasetId, _id) index, counts the matches
for the `Girder-Total-Count` header of every page, and matches `POST
upenn_annotation/list/ids` location filters. Here: every id in `_id` order, the ids of
each location, and the ids matching a listing's query kept until the next write, so a
page, its count and a location's ids each cost what they return, not the dataset.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

from nimbus_server.paging import Paging, page, page_in_order
from nimbus_server.schema import Oid

LOCATION_KEYS = ("XY", "Z", "Time")
_CACHED_QUERIES = 8

LocationKey = tuple[str, object, object, object]  # (dataset id, XY, Z, Time) as stored


@dataclass(frozen=True)
class AnnotationQuery:
    """GET upenn_annotation's filter: the dataset, a shape, all of some tags."""

    dataset_id: str
    shape: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListFilters:
    """POST upenn_annotation/list/ids' filters (models/annotation.py
    _buildListMatchStages): a shape; any of `tags` (`exclusive`: exactly those); the
    location axes given (None: any)."""

    shape: str | None = None
    tags: tuple[str, ...] = ()
    exclusive: bool = False
    location: tuple[object, object, object] = (None, None, None)  # XY, Z, Time


def matches(doc: dict, query: AnnotationQuery) -> bool:
    """As MongoDB matches the query: the stored datasetId is an ObjectId (`Oid`)."""
    return (
        isinstance(doc.get("datasetId"), Oid) and doc["datasetId"] == query.dataset_id
        and (query.shape is None or doc.get("shape") == query.shape)
        and all(tag in (doc.get("tags") or []) for tag in query.tags)
    )


def matches_list_filters(doc: dict, dataset_id: str, filters: ListFilters) -> bool:
    tags = doc.get("tags") or []
    location = doc.get("location") if isinstance(doc.get("location"), dict) else {}
    if filters.tags and filters.exclusive:
        tags_ok = set(tags) == set(filters.tags) and len(tags) == len(filters.tags)
    else:
        tags_ok = not filters.tags or any(tag in tags for tag in filters.tags)
    return (
        isinstance(doc.get("datasetId"), Oid) and doc["datasetId"] == dataset_id
        and (filters.shape is None or doc.get("shape") == filters.shape) and tags_ok
        and all(wanted is None or (key in location and _same_value(location[key], wanted))
                for key, wanted in zip(LOCATION_KEYS, filters.location))
    )


def _same_value(stored: object, wanted: object) -> bool:
    """MongoDB's equality: numbers by value, never a number and a string."""
    numbers = (int, float)
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return type(stored) is type(wanted) and stored == wanted
    if isinstance(stored, numbers) and isinstance(wanted, numbers):
        return stored == wanted
    return type(stored) is type(wanted) and stored == wanted


def _location_key(doc: dict) -> LocationKey:
    location = doc.get("location") if isinstance(doc.get("location"), dict) else {}
    return (str(doc.get("datasetId")), *(location.get(key) for key in LOCATION_KEYS))


class AnnotationIndex:
    """Annotations by id, with the indexes above. The caller (`Store`) holds the lock;
    stored documents are replaced, never changed in place."""

    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}
        self._order: list[str] = []  # every id ever stored, ascending
        self._by_location: dict[LocationKey, list[str]] = {}  # ascending; may hold stale ids
        self._version = 0
        self._matching: OrderedDict[tuple[AnnotationQuery, int], list[str]] = OrderedDict()

    def __contains__(self, annotation_id: object) -> bool:
        return annotation_id in self.docs

    def get(self, annotation_id: str) -> dict | None:
        return self.docs.get(annotation_id)

    def values(self) -> Iterator[dict]:
        return iter(self.docs.values())

    # --- changes -------------------------------------------------------------------------

    def put(self, doc: dict) -> None:
        """Store `doc` (new, restored or replaced) under its `_id`."""
        annotation_id = doc["_id"]
        if annotation_id not in self.docs:
            _insert_sorted(self._order, annotation_id)
        previous = self.docs.get(annotation_id)
        key = _location_key(doc)
        if previous is None or _location_key(previous) != key:
            _insert_sorted(self._by_location.setdefault(key, []), annotation_id)
        self.docs[annotation_id] = doc
        self._version += 1

    def remove(self, annotation_id: str) -> dict | None:
        removed = self.docs.pop(annotation_id, None)
        if removed is not None:
            self._version += 1
        return removed

    # --- GET upenn_annotation ------------------------------------------------------------

    def _matching_ids(self, query: AnnotationQuery) -> list[str]:
        """The ids matching `query`, ascending, built once per write."""
        key = (query, self._version)
        if key not in self._matching:
            self._matching[key] = [i for i in self._order if i in self.docs and matches(self.docs[i], query)]
            while len(self._matching) > _CACHED_QUERIES:
                self._matching.popitem(last=False)
        self._matching.move_to_end(key)
        return self._matching[key]

    def page(self, query: AnnotationQuery, paging: Paging) -> list[dict]:
        if paging.sort != "_id" or paging.sortdir < 0:
            return page([doc for doc in self.docs.values() if matches(doc, query)], paging)
        ids = self._matching_ids(query)
        return page_in_order(ids, self.docs, lambda doc: True, paging)

    def count(self, query: AnnotationQuery, after_id: str | None = None) -> int:
        """How many match `query` (after `after_id`): what MongoDB's count of the
        listing's query (its afterId condition included) answers."""
        ids = self._matching_ids(query)
        return len(ids) - (bisect.bisect_right(ids, after_id) if after_id is not None else 0)

    # --- POST upenn_annotation/list/ids -------------------------------------------------

    def list_ids(self, dataset_id: str, filters: ListFilters) -> list[str]:
        """The ids matching `filters`, ascending (the plugin's aggregation walks the
        (datasetId, _id) index)."""
        lists = [
            ids for (dataset, *location), ids in self._by_location.items()
            if dataset == dataset_id and all(
                wanted is None or _same_value(stored, wanted) for stored, wanted in zip(location, filters.location))
        ]
        found = []
        for annotation_id in heapq.merge(*lists):
            doc = self.docs.get(annotation_id)
            if doc is not None and (not found or found[-1] != annotation_id) and matches_list_filters(
                    doc, dataset_id, filters):
                found.append(annotation_id)
        return found


def _insert_sorted(ids: list[str], annotation_id: str) -> None:
    if not ids or ids[-1] < annotation_id:
        ids.append(annotation_id)
    else:
        index = bisect.bisect_left(ids, annotation_id)
        if index == len(ids) or ids[index] != annotation_id:
            ids.insert(index, annotation_id)
