"""Resuming: what earlier runs with the same settings left at the job's locations.

A refined polygon of this job's run key (`markers`) stands for its original when it was
made from the original's current outline (`SOURCE_KEY`); one made from an outline the
user has since changed is *stale*, a second one of the same original a *duplicate* (a
late write). `read_job` reads the job's originals and sorts what earlier runs left;
write-back completes, replaces or removes it.
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
    current outline (compact: only what completing its location and review need).
    `recognised`: one whose marker was lost (edited in the app), recognised by its shape;
    it keeps its original from being refined again, and never replaces it."""

    refined_id: str
    doubtful: bool
    point: tuple[float, float, float | None] | None  # where connect-to-nearest measures from
    outline: np.ndarray | None = None  # (n, 2) float32 x, y
    recognised: bool = False

    @classmethod
    def of(cls, document: Mapping, policy: str, recognised: bool = False) -> "Counterpart":
        """`policy`: this run's doubtful-refinement choice; a refinement an earlier run
        accepted anyway replaces its original only when this run accepts doubtful ones too."""
        record = record_of(document)
        doubtful = ui.REVIEW_TAG in record.tags or (record.doubted and policy != ui.DOUBTFUL_ACCEPT)
        return cls(record.id, doubtful, record.reference_point(), record.points.astype(np.float32), recognised)

    @property
    def replaces_original(self) -> bool:
        return not self.doubtful and not self.recognised


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
        those edited in the app), never stale ones, duplicates or doubtful ones."""
        return self.accepted.get(location, [])

    def accepted_polygons(self, location: Location) -> list[Polygon]:
        return [Polygon(outline) for outline in self.accepted_outlines(location) if len(outline) >= 3]


@dataclass
class JobRecords:
    """What the job starts from: its originals by location and what earlier runs left."""

    originals: dict[Location, list[AnnotationRecord]]
    earlier: EarlierWork


def _recognise_edited(originals: list[AnnotationRecord], candidates: list[AnnotationRecord]
                      ) -> dict[str, AnnotationRecord]:
    """original id -> an unmarked polygon with the output tags that looks like its
    accepted refinement (mostly inside it, not much smaller): a refined polygon whose
    marker was lost when it was edited in the app. Each is matched at most once, best
    overlap first."""
    from .review import original_outline, shape_doubts

    if not originals or not candidates:
        return {}
    shapes = [Polygon(c.points) if len(c.points) >= 3 else None for c in candidates]
    boxes = np.array([c.points.min(axis=0).tolist() + c.points.max(axis=0).tolist() if len(c.points) else [0] * 4
                      for c in candidates], dtype=np.float64)
    pairs = []
    for original in originals:
        outline = original_outline(original)
        if outline is None:
            continue
        x0, y0, x1, y1 = outline.bounds
        near = np.nonzero((boxes[:, 0] <= x1) & (boxes[:, 2] >= x0) & (boxes[:, 1] <= y1) & (boxes[:, 3] >= y0))[0]
        for index in near:
            shape = shapes[index]
            if shape is None or not shape.is_valid or shape.area <= 0 or shape_doubts(shape, outline):
                continue
            union = shape.union(outline).area
            pairs.append((shape.intersection(outline).area / union if union else 0.0, original.id, int(index)))
    matched: dict[str, AnnotationRecord] = {}
    used: set[int] = set()
    for _, original_id, index in sorted(pairs, reverse=True):
        if original_id not in matched and index not in used:
            matched[original_id] = candidates[index]
            used.add(index)
    return matched


def earlier_work(outputs: Iterable[AnnotationRecord], by_location: Mapping[Location, list[AnnotationRecord]],
                 key: str, policy: str, recognise: bool = True) -> EarlierWork:
    """Sort the polygons carrying the output tags at the job's locations: refinements of
    this run key that stand for their original's current outline, stale ones (made
    from an outline the user has since changed), duplicates (a late write), and, with
    `recognise`, unmarked ones that look like an edited refinement of an original.
    `policy`: this run's doubtful-refinement choice (see `Counterpart.of`)."""
    originals = {o.id: o for found in by_location.values() for o in found}
    work = EarlierWork()
    by_source: dict[str, list[AnnotationRecord]] = defaultdict(list)
    candidates: dict[Location, list[AnnotationRecord]] = defaultdict(list)
    for record in outputs:
        if (source := marked_source(record.marker, key)) is not None:
            by_source[source].append(record)
            work.refined_ids.add(record.id)
        elif record.marker is None and record.id not in originals:
            candidates[record.location].append(record)
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
    if recognise:
        for location, found in by_location.items():
            waiting = [o for o in found if o.id not in work.counterparts and o.id not in work.stale]
            for original_id, record in _recognise_edited(waiting, candidates.get(location, [])).items():
                counterpart = Counterpart.of(record, policy, recognised=True)
                work.counterparts[original_id] = counterpart
                if not counterpart.doubtful:
                    work.accepted.setdefault(location, []).append(counterpart.outline)
    return work


def read_job(platform: Platform, params: RefineParameters, key: str, locations: list[Location]) -> JobRecords:
    """The job's originals at `locations` (compact records, grouped by location in the
    order of `locations`) and what earlier runs with the same settings left there."""
    originals = select_originals(platform.polygons(params.refine_tags, locations), params.refine_tags, locations, key)
    stable = stable_output_tags(params)
    outputs = platform.output_polygons(stable, locations)
    # With no output tags of their own, refined polygons carry their originals' tags: an
    # edited one is then an original itself, and nothing else can be taken for one.
    return JobRecords(originals, earlier_work(outputs, originals, key, params.doubtful, recognise=bool(stable)))
