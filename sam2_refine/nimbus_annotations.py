"""The dataset's annotations: what the job reads of them, and its writes.

Reading costs what the job's own locations hold (issue 17 item 7, issue 23):
- Where the platform selects by location (`POST upenn_annotation/list/ids`, plugin
  818835a), the ids at the job's locations are asked for, as few filters as select exactly
  those locations (`location_filters`), and the documents are fetched 1000 at a time
  (`POST upenn_annotation/hydrate`).
- Otherwise (an older server has no such route: Girder answers 400 "No matching route",
  asked once), and for a job over most of the dataset, the dataset's listing is paged
  along the `_id` cursor and each page reduced, as it arrives, to the records of the
  job's locations.
Either way each document becomes a compact record (`AnnotationRecord`) as it arrives, and
the records come in the listing's order. An annotation whose location lacks a key is
taken to be at index 0 of that axis by the listing, and at no index by the filter.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from .errors import WorkerError
from .nimbus_records import AnnotationRecord, record_of
from .nimbus_transport import Rest, route_missing
from .parameters import DatasetSizes, Location

HYDRATE_CHUNK = 1000
OUTLINE_SHAPES = ("polygon", "rectangle")  # both outline an object
LOCATION_AXES = ("XY", "Z", "Time")
# The location filter is used for a job over at most this share of the dataset's
# locations, needing at most this many filters per shape: each filter is a request the
# server answers by scanning the dataset's annotations (its index is on the dataset).
FILTER_AT_MOST_SHARE = 0.5
MAX_FILTERS = 32


def location_filters(locations: Collection[Location], sizes: DatasetSizes) -> list[dict[str, int]]:
    """The fewest partial locations whose union is exactly `locations`: a filter leaves
    out the axes along which it takes every index (`{"Time": 1}` is every XY and Z of Time
    2; `{}` the whole dataset). Sorted; `locations` lie within `sizes`."""
    wanted = {(location.xy, location.z, location.time) for location in locations}
    lengths = (sizes.xy, sizes.z, sizes.time)
    best: tuple[list[int], set[tuple[int, ...]]] | None = None
    for left_out in itertools.product((False, True), repeat=3):
        kept = [axis for axis in range(3) if not left_out[axis]]
        groups = {tuple(position[axis] for axis in kept) for position in wanted}
        # Each group stands for every index of the left-out axes: exact when all are wanted.
        if len(groups) * math.prod(lengths[axis] for axis in range(3) if left_out[axis]) != len(wanted):
            continue
        if best is None or len(groups) < len(best[1]):
            best = (kept, groups)
    assert best is not None  # leaving nothing out is always exact
    kept, groups = best
    return [{LOCATION_AXES[axis]: index for axis, index in zip(kept, group)} for group in sorted(groups)]


class Annotations:
    """The annotations of one dataset; `sizes()` is the dataset's number of locations
    along each axis."""

    def __init__(self, rest: Rest, dataset_id: str | None, sizes: Callable[[], DatasetSizes]):
        self._rest = rest
        self._dataset_id = dataset_id
        self._sizes = sizes
        self._server_filters: bool | None = None  # whether list/ids exists; None: not asked yet

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

    def _filters_for(self, locations: Collection[Location] | None) -> list[dict[str, int]] | None:
        """The location filters to read `locations` with, or None to use the listing."""
        if locations is None or self._server_filters is False:
            return None
        sizes = self._sizes()
        if len(set(locations)) > FILTER_AT_MOST_SHARE * sizes.xy * sizes.z * sizes.time:
            return None
        filters = location_filters(locations, sizes)
        return filters if len(filters) <= MAX_FILTERS else None

    def _ids_at(self, where: dict[str, int], shape: str | None, any_of_tags: Iterable[str]) -> list[str] | None:
        """The ids of `shape` carrying any of `any_of_tags` (no tag filter if none) at the
        partial location `where`; None if the server has no location filter."""
        filters: dict[str, Any] = {"location": where}
        if shape is not None:
            filters["shape"] = shape
        if any_of_tags:
            filters["tags"] = {"values": list(any_of_tags), "exclusive": False}
        body = {"datasetId": self._dataset_id, "filters": filters}
        try:
            answer = self._rest.read("list the annotations",
                                     lambda: self._rest.post_json("upenn_annotation/list/ids", body))
        except WorkerError as error:
            if self._server_filters is None and route_missing(error.__cause__):
                self._server_filters = False
                return None
            raise
        self._server_filters = True
        return [str(annotation_id) for annotation_id in answer["ids"]]

    def _hydrated(self, ids: list[str]) -> Iterator[dict]:
        for start in range(0, len(ids), HYDRATE_CHUNK):
            chunk = ids[start:start + HYDRATE_CHUNK]
            documents = self._rest.read("read the annotations",
                                        lambda chunk=chunk: self._rest.post_json("upenn_annotation/hydrate", chunk))
            for document in documents:
                self._rest.saw(str(document["_id"]))
            yield from documents

    def _filtered(self, filters: list[dict[str, int]], shapes: tuple[str | None, ...], any_of_tags: tuple[str, ...],
                  keep: Callable[[dict], bool]) -> dict[str, AnnotationRecord] | None:
        """Records of the documents at `filters` that `keep` keeps; None if the server has
        no location filter."""
        found: dict[str, AnnotationRecord] = {}
        for shape in shapes:
            for where in filters:
                ids = self._ids_at(where, shape, any_of_tags)
                if ids is None:
                    return None
                for document in self._hydrated([i for i in ids if i not in found]):
                    if keep(document):
                        found[str(document["_id"])] = record_of(document)
        return found

    def _tagged(self, any_of_tags: tuple[str, ...], shapes: tuple[str | None, ...],
                locations: Collection[Location] | None) -> list[AnnotationRecord]:
        """Compact records of the annotations of any of `shapes` carrying any of
        `any_of_tags` (no tag filter if none) at `locations` (all if None), each once, in
        the listing's order: by shape, then by the first of `any_of_tags` each carries,
        then by id."""
        wanted = None if locations is None else set(locations)
        filters = self._filters_for(locations)
        if filters is not None:
            found = self._filtered(filters, shapes, any_of_tags,
                                   lambda document: Location.from_dict(document.get("location")) in wanted)
            if found is not None:
                rank = {tag: index for index, tag in reversed(list(enumerate(any_of_tags)))}
                shape_rank = {shape: index for index, shape in enumerate(shapes)}

                def listing_order(record: AnnotationRecord) -> tuple:
                    tag_rank = min((rank[tag] for tag in record.tags if tag in rank), default=0)
                    return shape_rank.get(record.shape, 0), tag_rank, record.id

                return sorted(found.values(), key=listing_order)
        queries = [[tag] for tag in any_of_tags] or [None]
        found = {}
        for shape in shapes:
            for tags in queries:
                for document in self._listing(tags, shape):
                    if document["_id"] in found:
                        continue
                    raw = document.get("location")
                    location = Location.from_dict(raw) if wanted is not None or isinstance(raw, dict) else None
                    if wanted is not None and location not in wanted:
                        continue
                    found[document["_id"]] = record_of(document, location if isinstance(raw, dict) else None)
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
        """The polygons carrying all of `tags` (every polygon if none) at `locations` (all
        if None), in id order."""
        wanted = None if locations is None else set(locations)
        filters = self._filters_for(locations)
        if filters is not None:
            # The filter matches any of its tags: ask for those with the first, keep those with all.
            found = self._filtered(filters, ("polygon",), tags[:1], lambda document: set(tags) <= set(
                document.get("tags") or []) and Location.from_dict(document.get("location")) in wanted)
            if found is not None:
                return sorted(found.values(), key=lambda record: record.id)
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
