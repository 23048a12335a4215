"""Resuming: what earlier runs with the same settings left at the job's locations.

A refined polygon of this job's run key (`markers`) stands for its original when it was
made from the original's current outline (`SOURCE_KEY`); one made from an outline the
user has since changed is *stale*, a second one of the same original a *duplicate* (a
late write). `read_job` reads the job's originals and sorts what earlier runs left;
write-back completes, replaces or removes it.

Only the marker makes a polygon this job's: a polygon without one carries no evidence of
which tool made it (another tool's output may carry the same tags and lie inside an
original), so it is never taken for a refinement. Nothing needs more: the app edits an
annotation only with `PUT upenn_annotation/multiple`, which keeps the marker keys
(PLATFORM.md §10), so a refinement edited in the app is still recognised by its marker.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import Polygon

from . import interface as ui
from .markers import marked_source, stable_output_tags
from .nimbus import AnnotationRecord, record_of
from .originals import select_originals
from .parameters import Location, RefineParameters
from .writes import Platform


@dataclass(frozen=True, eq=False)
class Counterpart:
    """A refined polygon an earlier run with the same settings made of the original's
    current outline (compact: only what completing its location and review need)."""

    refined_id: str
    doubtful: bool
    point: tuple[float, float, float | None] | None  # where connect-to-nearest measures from
    outline: np.ndarray | None = None  # (n, 2) float32 x, y

    @classmethod
    def of(cls, document: Mapping, policy: str) -> "Counterpart":
        """`policy`: this run's doubtful-refinement choice; a refinement an earlier run
        accepted anyway replaces its original only when this run accepts doubtful ones too."""
        record = record_of(document)
        doubtful = ui.REVIEW_TAG in record.tags or (record.doubted and policy != ui.DOUBTFUL_ACCEPT)
        return cls(record.id, doubtful, record.reference_point(), record.points.astype(np.float32))

    @property
    def replaces_original(self) -> bool:
        return not self.doubtful


@dataclass
class EarlierWork:
    """What earlier runs with the same settings left at the job's locations."""

    counterparts: dict[str, Counterpart] = field(default_factory=dict)  # original id -> its refinement
    stale: dict[str, list[str]] = field(default_factory=dict)  # original id -> refined ids of its older outlines
    duplicates: dict[Location, dict[str, str]] = field(default_factory=dict)  # extra refined id -> the one kept
    accepted: dict[Location, list[np.ndarray]] = field(default_factory=dict)
    refined_ids: set[str] = field(default_factory=set)  # every refined polygon of this run key found

    def accepted_outlines(self, location: Location) -> list[np.ndarray]:
        """The (n, 2) float32 outlines earlier runs accepted at `location`: the refinements
        that stand for their originals (including those whose original was replaced, and
        those edited in the app, which keep their marker), never stale ones, duplicates or
        doubtful ones."""
        return self.accepted.get(location, [])

    def refined_outlines(self) -> int:
        """How many originals earlier runs refined here (one outline each, whether or not
        the original is still there; a late write's duplicate not counted)."""
        return len(self.refined_ids) - sum(len(extra) for extra in self.duplicates.values())

    def accepted_polygons(self, location: Location) -> list[Polygon]:
        return [Polygon(outline) for outline in self.accepted_outlines(location) if len(outline) >= 3]


@dataclass
class JobRecords:
    """What the job starts from: its originals by location and what earlier runs left."""

    originals: dict[Location, list[AnnotationRecord]]
    earlier: EarlierWork


def earlier_work(outputs: Iterable[AnnotationRecord], by_location: Mapping[Location, list[AnnotationRecord]],
                 key: str, policy: str) -> EarlierWork:
    """Sort the refined polygons of run `key` at the job's locations: those that stand for
    their original's current outline, stale ones (made from an outline the user has since
    changed) and duplicates (a late write); polygons of other runs or without a marker are
    left alone. `policy`: this run's doubtful-refinement choice (see `Counterpart.of`)."""
    originals = {o.id: o for found in by_location.values() for o in found}
    work = EarlierWork()
    by_source: dict[str, list[AnnotationRecord]] = defaultdict(list)
    for record in outputs:
        if (source := marked_source(record.marker, key)) is not None:
            by_source[source].append(record)
            work.refined_ids.add(record.id)
    for original_id, records in by_source.items():
        original = originals.get(original_id)
        current = [r for r in records if original is None or r.source in (None, original.outline_digest)]
        if original is not None and len(current) < len(records):
            work.stale[original_id] = [r.id for r in records if r not in current]
        if not current:
            continue
        keeper = min(current, key=lambda r: r.id)
        for extra in current:
            if extra is not keeper:
                work.duplicates.setdefault(keeper.location, {})[extra.id] = keeper.id
        counterpart = Counterpart.of(keeper, policy)
        if original is not None:
            work.counterparts[original_id] = counterpart
        if not counterpart.doubtful:
            work.accepted.setdefault(keeper.location, []).append(counterpart.outline)
    return work


def read_job(platform: Platform, params: RefineParameters, key: str, locations: list[Location]) -> JobRecords:
    """The job's originals at `locations` (compact records, grouped by location in the
    order of `locations`) and what earlier runs with the same settings left there."""
    originals = select_originals(platform.polygons(params.refine_tags, locations), params.refine_tags, locations, key)
    outputs = platform.output_polygons(stable_output_tags(params), locations)
    return JobRecords(originals, earlier_work(outputs, originals, key, params.doubtful))
