"""The dataset's annotations: what the job reads of them, and its writes.

Reading (issue 17 item 7: memory follows the location, not the dataset): listings are
paged along the `_id` cursor and each page is reduced, as it arrives, to compact records
(`AnnotationRecord`) of only the locations the job needs; no page and no whole document
outlives its own processing.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from .errors import WorkerError
from .nimbus_records import AnnotationRecord, record_of
from .nimbus_transport import Rest, route_missing
from .parameters import Location

HYDRATE_CHUNK = 1000
OUTLINE_SHAPES = ("polygon", "rectangle")  # both outline an object


class Annotations:
    """The annotations of one dataset."""

    def __init__(self, rest: Rest, dataset_id: str | None):
        self._rest = rest
        self._dataset_id = dataset_id

    # --- reads -------------------------------------------------------------------------

    def _listing(self, tags: Iterable[str] | None, shape: str | None, after: str | None = None) -> Iterator[dict]:
        """Annotations of `shape` (any shape if None) carrying all of `tags`, created after `after`."""
        query: dict[str, Any] = {"datasetId": self._dataset_id}
        if shape is not None:
            query["shape"] = shape
        if tags:
            query["tags"] = json.dumps(list(tags))  # the platform reads tags as a JSON array
        if after is not None:
            query["afterId"] = after
        return self._rest.listing("list the annotations", "upenn_annotation", query)

    def _tagged(self, any_of_tags: tuple[str, ...], shapes: tuple[str | None, ...],
                locations: Collection[Location] | None) -> list[AnnotationRecord]:
        """Compact records of the annotations of any of `shapes` carrying any of
        `any_of_tags` (no tag filter if none) at `locations` (all if None), each once."""
        queries = [[tag] for tag in any_of_tags] or [None]
        wanted = None if locations is None else set(locations)
        found: dict[str, AnnotationRecord] = {}
        for shape in shapes:
            for tags in queries:
                for document in self._listing(tags, shape):
                    if document["_id"] in found:
                        continue
                    if wanted is not None and Location.from_dict(document.get("location")) not in wanted:
                        continue
                    found[document["_id"]] = record_of(document)
        return list(found.values())

    def outlines(self, any_of_tags: tuple[str, ...], locations: Collection[Location] | None = None
                 ) -> list[AnnotationRecord]:
        """Every polygon and rectangle carrying any of `any_of_tags` (all of them if none),
        at `locations` (all if None)."""
        return self._tagged(any_of_tags, OUTLINE_SHAPES, locations)

    def tagged(self, any_of_tags: tuple[str, ...], locations: Collection[Location] | None = None
               ) -> list[AnnotationRecord]:
        """Every annotation of any shape carrying any of `any_of_tags`, at `locations` (all if None)."""
        return self._tagged(any_of_tags, (None,), locations)

    def polygons_with_all(self, tags: tuple[str, ...], locations: Collection[Location] | None = None
                          ) -> list[AnnotationRecord]:
        """The polygons carrying all of `tags` (every polygon if none) at `locations` (all if None)."""
        wanted = None if locations is None else set(locations)
        return [
            record_of(document) for document in self._listing(tags, "polygon")
            if wanted is None or Location.from_dict(document.get("location")) in wanted
        ]

    def since(self, cursor: str | None, tags: tuple[str, ...]) -> Iterator[AnnotationRecord]:
        """The polygons carrying all of `tags` created after `cursor`."""
        for document in self._listing(tags, "polygon", after=cursor):
            yield record_of(document)

    def existing(self, annotation_ids: list[str]) -> set[str]:
        """Which of `annotation_ids` the dataset still holds (hydrate; a server without that
        route, as [K], is asked id by id)."""
        present: set[str] = set()
        for start in range(0, len(annotation_ids), HYDRATE_CHUNK):
            chunk = annotation_ids[start:start + HYDRATE_CHUNK]
            try:
                documents = self._rest.read("check which annotations exist",
                                            lambda chunk=chunk: self._rest.post_json("upenn_annotation/hydrate", chunk))
            except WorkerError as error:
                if not route_missing(error.__cause__):
                    raise
                return present | self._rest.existing("upenn_annotation", annotation_ids[start:])
            present.update(str(document["_id"]) for document in documents)
        return present

    # --- writes (each sent once; see nimbus_transport) ------------------------------------

    def create(self, documents: list[dict]) -> list[dict]:
        """POST one chunk; returns the created documents in request order."""
        return self._rest.created(list(self._rest.write("POST", "upenn_annotation/multiple", documents)))

    def delete(self, annotation_ids: list[str]) -> None:
        self._rest.write("DELETE", "upenn_annotation/multiple", annotation_ids)
