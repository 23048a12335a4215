"""Writing refined polygons back, one location at a time, without ever losing an original.

Order at each location: create the refined polygons (in chunks bounded by count and
bytes, ids read from the server's answer); connect them to their nearest parents if the
tool asks; then, only for originals whose accepted counterpart is confirmed, move their
connections to the counterpart and delete them. A doubtful refinement never replaces its
original. A process killed at any moment leaves at worst both versions, never neither,
and a later run with the same settings completes what was left (see `run_key`).

One policy for every write (`WriteBack._complete`): a write is sent once; when its
outcome is unknown (`nimbus.OutcomeUnknown`) the server is asked what it holds, again
and again until the write shows or the server has had `settle_seconds()` to apply it,
and only what is still missing is sent again, within `MAX_SENDS` sends and
`write_budget()` seconds. A create the server applied after all (a late write) leaves a
second polygon with the same marker: every location that re-sent something is swept for
those before it is reported done, the job once more at its end, and a later run finds
any that landed after that. Work the policy could not finish is retried once at the end
of the job (`finish`); what is still left then ends the job with `Unfinished`.

Connections: never from an object to itself or to its own original, never two with the
same parent and child; a nearest parent is never an original of this job (it may be
about to be replaced) nor a refined outline of it. A connection whose other end no
longer exists (an orphan the platform's bulk delete left) cannot be moved: it is
counted and dropped with its original.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
import shapely
from shapely.geometry import Polygon

from . import interface as ui
from . import nimbus
from .errors import WorkerError
from .geometry import polygon_to_coordinates
from .messages import Reporter, plural
from .nimbus import (
    DOUBTED_KEY, MARKER_KEY, SOURCE_KEY, AnnotationRecord, ConnectionRecord, OutcomeUnknown, PayloadTooLarge,
    chunks_by_size, iter_chunks, record_of,
)
from .parameters import Location, RefineParameters

CREATE_CHUNK = 1000
CHUNK_BYTES = 1_000_000  # under the common 1 MiB proxy body limit; a 413 halves it
DELETE_CHUNK = 1000
MAX_SENDS = 4  # of one write, before it is left for the end of the job
FIRST_POLL = 0.25  # seconds before the first re-check of an unknown outcome; doubles
# The label the platform's own connect-to-nearest gives its connections.
AUTOMATIC_LABEL = "A Connection -- automatic"
# The tag the platform's "job date tag" option adds (PLATFORM.md §1a):
# "<image> job Y-M-D h:m:s UTC±N", fields not zero-padded.
JOB_DATE_TAG = re.compile(r"^.+ job \d{1,4}-\d{1,2}-\d{1,2} \d{1,2}:\d{1,2}:\d{1,2} UTC[+-]{0,2}\d+(?:\.\d+)?$")

T = TypeVar("T")


def settle_seconds() -> float:
    """How long the server gets to apply a write whose outcome is unknown before what it
    lacks is sent again: as long as the client waited for it, within the retry budget."""
    return min(nimbus.HTTP_TIMEOUT, nimbus.RETRY_SECONDS)


def write_budget() -> float:
    """Seconds from a write's first send after which it is left for the end of the job."""
    return nimbus.RETRY_SECONDS + settle_seconds()


class Platform(Protocol):
    """What write-back needs of the platform (`nimbus.Platform`; tests use an in-memory fake)."""

    def cursor(self) -> str | None:
        """An id before any the server creates from now on."""

    def create_annotations(self, documents: list[dict]) -> list[dict]:
        """Create in one request; the created documents in request order. Raises
        `OutcomeUnknown` when the request may or may not have been applied."""

    def annotations_since(self, cursor: str | None, tags: tuple[str, ...]) -> Iterable[AnnotationRecord]:
        """The polygons carrying all of `tags` created after `cursor`."""

    def existing_annotations(self, annotation_ids: list[str]) -> set[str]: ...

    def delete_annotations(self, annotation_ids: list[str]) -> None: ...

    def connections(self, touching: Iterable[str] | None = None) -> list[ConnectionRecord]: ...

    def connections_since(self, cursor: str | None) -> Iterable[ConnectionRecord]: ...

    def existing_connections(self, connection_ids: list[str]) -> set[str]: ...

    def create_connections(self, connections: list[dict]) -> list[dict]: ...

    def delete_connections(self, connection_ids: list[str]) -> None: ...

    def tagged_annotations(self, any_of_tags: tuple[str, ...], locations=None) -> list[AnnotationRecord]:
        """Every annotation (any shape) carrying any of the tags, at `locations`."""

    def polygons(self, any_of_tags: tuple[str, ...], locations=None) -> list[AnnotationRecord]: ...

    def output_polygons(self, tags: tuple[str, ...], locations=None) -> list[AnnotationRecord]: ...


@dataclass
class Clock:
    """Time as write-back waits on it (tests substitute one that does not sleep)."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


# --- the run key and the marker ------------------------------------------------------


def is_job_date_tag(tag: str) -> bool:
    return JOB_DATE_TAG.match(tag) is not None


def stable_output_tags(params: RefineParameters) -> tuple[str, ...]:
    """The output tags that are the same in every run: without the per-run job date tag."""
    return tuple(tag for tag in params.output_tags if not is_job_date_tag(tag))


def run_key(params: RefineParameters) -> str:
    """A digest of the settings that shape the output: runs with the same key make the
    same refined polygons, so a later run recognises what an earlier one saved. Allowing
    overlaps counts only when ticked: the default keeps the key runs had before it existed."""
    settings = {
        "model": params.model_name,
        "resolution": params.resolution,
        "padding": params.padding,
        "smoothing": params.smoothing,
        "tags": sorted(stable_output_tags(params)),
        "channel": params.output_channel,
    }
    if params.allow_overlaps:  # absent by default, so runs made before the field existed keep their key
        settings["overlaps"] = True
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def marker(key: str, original_id: str) -> str:
    return f"{key}/{original_id}"


def is_output_of(document: Mapping, key: str) -> bool:
    return marked_source(str(document.get(MARKER_KEY, "")), key) is not None


def marked_source(marker: str | None, key: str) -> str | None:
    """The original id a marker of run `key` names; None for no marker or another run's."""
    prefix = f"{key}/"
    return marker[len(prefix):] if marker is not None and marker.startswith(prefix) else None


def _source_of(document: Mapping) -> str:
    return str(document[MARKER_KEY]).split("/", 1)[1]


# A write's answer that does not account for everything sent (the platform answers a
# create with the created documents in request order): what it holds is checked instead.
MISMATCHED_ANSWER = "the platform's answer does not list everything that was sent"


def _answers_match(documents: list[dict], answers: list[dict]) -> bool:
    """Whether the answer to a create lists one created document per document sent, in order."""
    return len(answers) == len(documents) and all(
        "_id" in answer and answer.get(MARKER_KEY, document[MARKER_KEY]) == document[MARKER_KEY]
        for document, answer in zip(documents, answers))


# --- what is written -----------------------------------------------------------------


@dataclass(frozen=True)
class Refined:
    """A refined outline to save for `original`; `doubtful` ones never replace it.
    `accepted_anyway`: doubtful, but saved and used as any other ("Accept anyway")."""

    original: Mapping
    polygon: Polygon
    doubtful: bool = False
    accepted_anyway: bool = False


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


def refined_tags(original: Mapping, params: RefineParameters, doubtful: bool) -> list[str]:
    """The output tags, or the original's own tags (plus a job date tag) when the tool has
    no others; plus the review tag, once, on a doubtful refinement."""
    tags = list(params.output_tags)
    if not stable_output_tags(params):
        tags = [t for t in (original.get("tags") or []) if isinstance(t, str) and t not in tags] + tags
    if doubtful and ui.REVIEW_TAG not in tags:
        tags.append(ui.REVIEW_TAG)
    return tags


def _location_of(document: Mapping) -> dict[str, int]:
    # Key order XY, Z, Time: the platform's connect-to-nearest compares it.
    return Location.from_dict(document.get("location")).as_dict()


def refined_document(original: Mapping, polygon: Polygon, params: RefineParameters, key: str,
                     doubtful: bool = False, accepted_anyway: bool = False) -> dict:
    document = {
        "shape": "polygon",
        "tags": refined_tags(original, params, doubtful),
        "channel": int(params.output_channel),
        "location": _location_of(original),
        "coordinates": polygon_to_coordinates(polygon),
        "datasetId": params.dataset_id,
        MARKER_KEY: marker(key, original["_id"]),
        SOURCE_KEY: record_of(original).outline_digest,
    }
    if accepted_anyway:
        document[DOUBTED_KEY] = True
    return document


def server_message(error: BaseException) -> str:
    if isinstance(error, WorkerError):
        return error.message
    text = getattr(error, "responseText", None)
    status = getattr(error, "status", None)
    try:
        message = json.loads(text)["message"] if text else str(error)
    except (ValueError, KeyError, TypeError):
        message = text or str(error)
    return f"HTTP {status}: {message}" if status else message


# --- what earlier runs left ----------------------------------------------------------


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
    from .worker import select_originals

    originals = select_originals(platform.polygons(params.refine_tags, locations), params.refine_tags, locations, key)
    stable = stable_output_tags(params)
    outputs = platform.output_polygons(stable, locations)
    # With no output tags of their own, refined polygons carry their originals' tags: an
    # edited one is then an original itself, and nothing else can be taken for one.
    return JobRecords(originals, earlier_work(outputs, originals, key, params.doubtful, recognise=bool(stable)))


# --- connections ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Parent:
    annotation_id: str
    x: float
    y: float
    z: float | None
    channel: int | None


def _vertex_centroid(polygon: Polygon) -> tuple[float, float, None] | None:
    """Where the platform measures a refined polygon's connection distances from (as
    `AnnotationRecord.reference_point` of its saved document: no z)."""
    vertices = shapely.get_coordinates(polygon.exterior)[:-1]
    if len(vertices) == 0:
        return None
    x, y = vertices.mean(axis=0)
    return float(x), float(y), None


def _distance(point: tuple[float, float, float | None], parent: _Parent) -> float:
    x, y, z = point
    dz = (z - parent.z) if z is not None and parent.z is not None else 0.0
    return math.sqrt((x - parent.x) ** 2 + (y - parent.y) ** 2 + dz ** 2)


class Connections:
    """The connections that touch the job's annotations, indexed by the annotations they
    join, kept current as this job moves and deletes them."""

    def __init__(self, connections: Iterable[Mapping | ConnectionRecord] = ()):
        self._by_id: dict[str, ConnectionRecord] = {}
        self._by_node: dict[str, set[str]] = defaultdict(set)
        for connection in connections:
            self.add(connection)

    def add(self, connection: Mapping | ConnectionRecord) -> None:
        record = ConnectionRecord.of(connection)
        self._by_id[record.id] = record
        self._by_node[record.parent_id].add(record.id)
        self._by_node[record.child_id].add(record.id)

    def remove(self, connection_id: str) -> None:
        record = self._by_id.pop(connection_id, None)
        if record is not None:
            self._by_node[record.parent_id].discard(connection_id)
            self._by_node[record.child_id].discard(connection_id)

    def touching(self, annotation_ids: Iterable[str]) -> list[ConnectionRecord]:
        ids = {cid for annotation_id in annotation_ids for cid in self._by_node.get(annotation_id, ())}
        return [self._by_id[cid] for cid in sorted(ids)]

    def exists(self, parent_id: str, child_id: str) -> bool:
        return any(
            self._by_id[cid].parent_id == parent_id and self._by_id[cid].child_id == child_id
            for cid in self._by_node.get(child_id, ())
        )

    def has_automatic_parent(self, child_id: str) -> bool:
        return any(
            self._by_id[cid].child_id == child_id and self._by_id[cid].label == AUTOMATIC_LABEL
            for cid in self._by_node.get(child_id, ())
        )


def moved_connections(touching: list[ConnectionRecord], replaced: Mapping[str, str], connections: Connections,
                      dataset_id: str | None) -> list[dict]:
    """New connections for `touching` with replaced annotations swapped for their
    counterparts: none from an object to itself, none that exists already, each once."""
    moved: dict[tuple[str, str], dict] = {}
    for connection in touching:
        parent = replaced.get(connection.parent_id, connection.parent_id)
        child = replaced.get(connection.child_id, connection.child_id)
        if parent == child or connections.exists(parent, child) or (parent, child) in moved:
            continue
        copy = {"parentId": parent, "childId": child, "datasetId": dataset_id, "tags": list(connection.tags)}
        if connection.label is not None:
            copy["label"] = connection.label
        moved[(parent, child)] = copy
    return list(moved.values())


def _ends(connection: Mapping) -> tuple[str, str, tuple[str, ...], str | None]:
    """The link a connection document to be created makes (`ConnectionRecord.ends` of it)."""
    return ConnectionRecord.of({"_id": "", **connection}).ends


# --- results -------------------------------------------------------------------------


@dataclass
class WriteResult:
    created: int = 0
    created_doubtful: int = 0
    not_saved: int = 0
    deleted: int = 0
    kept_originals: int = 0  # originals whose replacement is left undone
    completed: int = 0  # originals an earlier run refined, replaced now
    connected: int = 0
    connections_skipped: int = 0  # could not be moved: their other end no longer exists
    duplicates_removed: int = 0  # refined polygons and connections a late write made twice
    stale_removed: int = 0  # refinements of an outline the user has since changed
    delete_failures: list[str] = field(default_factory=list)
    connect_failures: list[str] = field(default_factory=list)


class Unfinished(WorkerError):
    """The job could not do everything asked; running it again completes it."""


@dataclass
class _PendingCreate:
    """A location whose refined polygons are not all confirmed yet: the rest of its
    write-back (connect, replace) waits for them."""

    location: Location
    refined: list[Refined]
    earlier: list[tuple[Mapping, Counterpart]]
    documents: list[dict]  # not yet confirmed
    cursor: str | None  # before their first send
    created: dict[str, str]  # original id -> refined id, confirmed so far


class _NotConfirmed(Exception):
    def __init__(self, pending: _PendingCreate):
        super().__init__("not confirmed")
        self.pending = pending


@dataclass
class _Resent:
    """Creates re-sent after an unknown outcome: where their late twins may appear."""

    cursor: str | None
    kept: dict[str, str]  # original id -> the refined id this job confirmed
    connections: dict[tuple, str] = field(default_factory=dict)  # ends -> the connection id kept


class WriteBack:
    """One job's write-back: `prepare` once, `write_location` for each location (one at a
    time, in order, from any one thread), then `finish`."""

    def __init__(self, platform: Platform, params: RefineParameters, key: str, reporter: Reporter,
                 clock: Clock | None = None):
        self.platform = platform
        self.params = params
        self.key = key
        self.reporter = reporter
        self.clock = clock or Clock()
        self.result = WriteResult()
        self.connections = Connections()
        self.earlier = EarlierWork()
        self._parents: dict[tuple[int, int, int], list[_Parent]] = defaultdict(list)
        self._chunk_bytes = CHUNK_BYTES
        self._present: set[str] = set()  # annotations known to exist
        self._gone: set[str] = set()  # annotations this job deleted
        self._unfinished_replacements: dict[str, str] = {}  # old id -> the id that takes its place
        self._unfinished_connections: list[dict] = []
        self._unfinished_deletes: set[str] = set()  # extra refined polygons still to remove
        self._pending_creates: list[_PendingCreate] = []
        self._resent: list[_Resent] = []
        self._last_resend: float | None = None
        self._visited: set[Location] = set()
        self._skipped_links: set[tuple[str, str]] = set()  # moved connections whose other end is gone
        self._last_problem = ""  # the last unknown outcome, in words

    # --- reading ---------------------------------------------------------------

    def prepare(self, job: JobRecords | None = None) -> None:
        """Read what write-back must know beforehand: the connections that touch the job's
        annotations (to move them and to never make one twice) and, with connect-to-nearest,
        the candidate parents at the job's locations. Without `job`: every connection and
        parent of the dataset."""
        locations = None
        touching = None
        if job is not None:
            self.earlier = job.earlier
            locations = list(job.originals)
            originals = [o.id for found in job.originals.values() for o in found]
            touching = set(originals) | job.earlier.refined_ids
            self._present.update(touching)
        if self.params.delete_originals or self.params.connect_to is not None or self.earlier.duplicates \
                or self.earlier.stale:
            self.connections = Connections(self.platform.connections(touching))
        if self.params.connect_to is not None:
            for record in self.platform.tagged_annotations(self.params.connect_to.tags, locations):
                point = record.reference_point()
                if point is None or is_output_of(record, self.key):
                    continue
                location = record.location
                self._parents[(location.xy, location.z, location.time)].append(
                    _Parent(record.id, *point, record.channel)
                )

    # --- the one policy for writes ---------------------------------------------

    def _settled(self, pending: list[T], missing: Callable[[list[T]], list[T]], may_apply_later: bool = True
                 ) -> list[T]:
        """What of `pending` the server still lacks. When it may still be applying the
        write, it is asked again and again until all of it shows or the server has had
        `settle_seconds()` since the write failed; otherwise once."""
        failed_at = self.clock.now()
        wait = FIRST_POLL
        while True:
            try:
                pending = missing(pending)
            except WorkerError:  # the check itself failed: the outcome is still unknown
                pass
            left = settle_seconds() - (self.clock.now() - failed_at)
            if not pending or not may_apply_later or left <= 0:
                return pending
            self.clock.sleep(min(wait, left))
            wait *= 2

    def _complete(self, items: list[T], send: Callable[[list[T]], None], missing: Callable[[list[T]], list[T]],
                  verify_first: bool = False) -> list[T]:
        """Do the write `send` for `items`; return those it left undone. An unknown outcome
        is verified (`missing` says which items the server lacks) and only what is missing
        is sent again; a 413 halves the request. Final refusals are raised."""
        started = self.clock.now()
        pending = list(items)
        if verify_first:  # `finish` has waited for late writes: one check is enough
            pending = self._settled(pending, missing, may_apply_later=False)
        sends = 0
        backoff = nimbus.FIRST_BACKOFF
        while pending:
            sends += 1
            try:
                send(pending)
                return []
            except PayloadTooLarge:
                if len(pending) == 1:
                    raise WorkerError(
                        f"The platform refuses a single request of {nimbus.json_size(pending)} bytes as too large",
                        info="Raise the request body limit of the platform's web server, or raise Smoothing: "
                             "smoother outlines have fewer vertices.",
                        title="Request too large",
                    ) from None
                self._chunk_bytes = max(self._chunk_bytes // 2, 1)
                half = len(pending) // 2
                return self._complete(pending[:half], send, missing) + self._complete(pending[half:], send, missing)
            except OutcomeUnknown as unknown:
                self._last_problem = str(unknown)
                pending = self._settled(pending, missing, unknown.may_apply_later)
                if unknown.may_apply_later:
                    self._last_resend = self.clock.now()
                if pending and (sends >= MAX_SENDS or self.clock.now() - started > write_budget()):
                    return pending
                if pending and not unknown.may_apply_later:
                    self.clock.sleep(backoff)  # an error answer: the server is struggling, not slow
                    backoff *= 2
        return []

    # --- create ----------------------------------------------------------------

    def _find_created(self, cursor: str | None, sources: set[str]) -> dict[str, list[str]]:
        """original id -> ids of the refined polygons of this run key created after `cursor`."""
        found: dict[str, list[str]] = defaultdict(list)
        for record in self.platform.annotations_since(cursor, stable_output_tags(self.params)):
            source = marked_source(record.marker, self.key)
            if source is not None and source in sources:
                found[source].append(record.id)
        return found

    def _create_documents(self, pending: _PendingCreate, verify_first: bool) -> None:
        """Confirm `pending.documents` on the server (sending what it lacks), chunk by chunk."""
        resent = False

        def send(documents: list[dict]) -> None:
            nonlocal resent
            resent = resent or any(_source_of(d) in attempted for d in documents)
            attempted.update(_source_of(d) for d in documents)
            answers = self.platform.create_annotations(documents)
            if not _answers_match(documents, answers):
                raise OutcomeUnknown(MISMATCHED_ANSWER, may_apply_later=False)
            for document, answer in zip(documents, answers):
                confirm(_source_of(document), str(answer["_id"]))

        def confirm(source: str, refined_id: str) -> None:
            pending.created[source] = refined_id
            self._present.add(refined_id)
            self.result.created += 1

        def missing(documents: list[dict]) -> list[dict]:
            found = self._find_created(pending.cursor, {_source_of(d) for d in documents})
            for document in documents:
                ids = sorted(found.get(_source_of(document), ()))
                if ids and _source_of(document) not in pending.created:
                    confirm(_source_of(document), ids[0])
            return [d for d in documents if _source_of(d) not in pending.created]

        attempted: set[str] = set() if not verify_first else {_source_of(d) for d in pending.documents}
        left: list[dict] = []
        for chunk in chunks_by_size(pending.documents, CREATE_CHUNK, self._chunk_bytes):
            left += self._complete(chunk, send, missing, verify_first=verify_first)
        pending.documents = left
        if resent:
            self._resent.append(_Resent(pending.cursor, dict(pending.created)))
        if left:
            raise _NotConfirmed(pending)

    def _create(self, location: Location, refined: list[Refined], earlier) -> dict[str, str]:
        documents = [refined_document(r.original, r.polygon, self.params, self.key, r.doubtful, r.accepted_anyway)
                     for r in refined]
        pending = _PendingCreate(location, refined, list(earlier), documents, self.platform.cursor(), {})
        try:
            self._create_documents(pending, verify_first=False)
        except _NotConfirmed:
            raise
        except Exception as error:  # a final refusal: the same would meet every location
            self.result.not_saved += len(documents) - len(pending.created)
            raise WorkerError(
                f"The platform refused the refined polygons: {server_message(error)}",
                info="Nothing was deleted for them. Check the tool's output tags and your access, then run again.",
                title="Could not save",
            ) from error
        return pending.created

    # --- connect ---------------------------------------------------------------

    def _create_connections(self, connections: list[dict]) -> list[dict]:
        """Create `connections` (verified, never made twice); returns those left undone."""
        cursor = self.platform.cursor()
        attempted: set[tuple] = set()
        resent = False

        def send(part: list[dict]) -> None:
            nonlocal resent
            resent = resent or any(_ends(c) in attempted for c in part)
            attempted.update(_ends(c) for c in part)
            for created in self.platform.create_connections(part):
                self.connections.add(created)

        def missing(part: list[dict]) -> list[dict]:
            wanted = {_ends(c) for c in part}
            for record in self.platform.connections_since(cursor):
                if record.ends in wanted and not self.connections.exists(record.parent_id, record.child_id):
                    self.connections.add(record)
            return [c for c in part if not self.connections.exists(c["parentId"], c["childId"])]

        left: list[dict] = []
        for chunk in iter_chunks(connections, CREATE_CHUNK):
            left += self._complete(chunk, send, missing)
        if resent:
            kept = {record.ends: record.id for record in self.connections.touching({c["childId"] for c in connections})}
            self._resent.append(_Resent(cursor, {}, kept))
        return left

    def _nearest_parent(self, child_id: str, point: tuple | None, location: tuple, excluded: set[str]) -> str | None:
        channel = self.params.connect_to.channel
        candidates = [
            parent for parent in self._parents.get(location, ())
            if parent.annotation_id not in excluded and parent.annotation_id != child_id
            and (channel is None or parent.channel == channel)
        ]
        if point is None or not candidates:
            return None
        return min(candidates, key=lambda parent: _distance(point, parent)).annotation_id

    def _connect(
        self, children: dict[str, tuple | None], location: tuple, excluded: set[str], replacing: dict[str, str]
    ) -> None:
        """Connect each refined polygon (id -> reference point) without an automatic
        parent yet to its nearest parent, as the platform's connect-to-nearest would.
        `replacing` maps a refined id to the original it will replace: that original's
        connections move to it afterwards, so one to the same parent is not made twice."""
        if self.params.connect_to is None or not children:
            return
        new = []
        for child_id, point in children.items():
            origin = replacing.get(child_id)
            if self.connections.has_automatic_parent(child_id) or (
                origin is not None and self.connections.has_automatic_parent(origin)
            ):
                continue
            parent = self._nearest_parent(child_id, point, location, excluded)
            if parent is None or self.connections.exists(parent, child_id):
                continue
            if origin is not None and self.connections.exists(parent, origin):
                continue
            new.append({"parentId": parent, "childId": child_id, "datasetId": self.params.dataset_id,
                        "tags": [], "label": AUTOMATIC_LABEL})
        self._make_connections(new)

    def _make_connections(self, new: list[dict]) -> None:
        before = len(new)
        try:
            left = self._create_connections(new)
        except Exception as error:  # a final refusal
            left = new
            self.result.connect_failures.append(server_message(error))
        self.result.connected += before - len(left)
        self._unfinished_connections += left

    # --- replace ---------------------------------------------------------------

    def _existing(self, annotation_ids: set[str], ask_again: bool = False) -> set[str]:
        """Which of `annotation_ids` exist, asking the server only about those this job
        has not seen (about all of them with `ask_again`)."""
        if ask_again:
            self._present -= annotation_ids
        unknown = [a for a in annotation_ids if a not in self._present and a not in self._gone]
        present = {a for a in annotation_ids if a in self._present}
        if unknown:
            found = self.platform.existing_annotations(sorted(unknown))
            self._present.update(found)
            present |= found
        return present

    def _with_both_ends(self, moved: list[dict], ask_again: bool = False) -> list[dict]:
        """The moved connections whose both ends exist; the others are noted as skipped."""
        present = self._existing({end for c in moved for end in (c["parentId"], c["childId"])}, ask_again)
        movable = []
        for connection in moved:
            if connection["parentId"] in present and connection["childId"] in present:
                movable.append(connection)
            else:
                self._skipped_links.add((connection["parentId"], connection["childId"]))
        self.result.connections_skipped = len(self._skipped_links)
        return movable

    def _delete_annotations(self, annotation_ids: list[str]) -> list[str]:
        def forget(annotation_id: str) -> None:
            self._present.discard(annotation_id)
            self._gone.add(annotation_id)

        return self._delete_in_chunks(annotation_ids, self.platform.delete_annotations,
                                      self.platform.existing_annotations, forget)

    def _delete_connections(self, connection_ids: list[str]) -> list[str]:
        return self._delete_in_chunks(connection_ids, self.platform.delete_connections,
                                      self.platform.existing_connections, self.connections.remove)

    def _delete_in_chunks(self, ids: list[str], delete: Callable[[list[str]], None],
                          existing: Callable[[list[str]], set[str]], forget: Callable[[str], None]) -> list[str]:
        """Delete `ids` chunk by chunk, `forget` each one deleted; return those still present
        after the write policy."""
        def still_present(chunk: list[str]) -> list[str]:
            present = existing(chunk)
            return [i for i in chunk if i in present]

        left: list[str] = []
        for chunk in iter_chunks(ids, DELETE_CHUNK):
            left += self._complete(chunk, delete, still_present)
        for deleted in set(ids) - set(left):
            forget(deleted)
        return left

    def _replace_chunk(self, chunk: dict[str, str]) -> str | None:
        """Move the connections of the annotations in `chunk` (old id -> the id that takes
        its place) to their successors, then delete them; None when done, else why not."""
        touching = self.connections.touching(chunk)
        moved = moved_connections(touching, chunk, self.connections, self.params.dataset_id)
        for ask_again in (False, True):
            try:
                if self._create_connections(self._with_both_ends(moved, ask_again)):
                    return self._unconfirmed("creating the moved connections was not confirmed")
                break
            except Exception as error:  # refused: an end may have vanished since it was checked
                if ask_again or isinstance(error, WorkerError):
                    return server_message(error)
        if touching and self._delete_connections([c.id for c in touching]):
            return self._unconfirmed("deleting the moved connections was not confirmed")
        if self._delete_annotations(list(chunk)):
            return self._unconfirmed("deleting them was not confirmed")
        return None

    def _unconfirmed(self, what: str) -> str:
        return f"{what} (the platform's last answer: {self._last_problem})" if self._last_problem else what

    def _replace(self, replaced: dict[str, str]) -> int:
        """Replace the annotations of `replaced` (old id -> new id) by their successors;
        returns how many were deleted. What could not be done is left for `finish`."""
        deleted = 0
        for chunk_ids in iter_chunks(list(replaced), DELETE_CHUNK):
            chunk = {old: replaced[old] for old in chunk_ids}
            try:
                failure = self._replace_chunk(chunk)
            except Exception as error:  # a final refusal (or the access it needs)
                failure = server_message(error)
            if failure is None:
                deleted += len(chunk)
                for old in chunk:
                    self._unfinished_replacements.pop(old, None)
            else:
                self.result.delete_failures.append(failure)
                self._unfinished_replacements.update(chunk)
        return deleted

    # --- duplicates of late writes -----------------------------------------------

    def _remove_late_twins(self, entries: list[_Resent]) -> None:
        """Delete the refined polygons and connections that a create re-sent after an
        unknown outcome made twice (the first send was applied after all)."""
        for resent in entries:
            if resent.kept:
                self._unfinished_deletes.update(
                    refined_id
                    for source, ids in self._find_created(resent.cursor, set(resent.kept)).items()
                    for refined_id in ids if refined_id != resent.kept[source]
                )
            if resent.connections:
                extra = [record.id for record in self.platform.connections_since(resent.cursor)
                         if record.ends in resent.connections and record.id != resent.connections[record.ends]]
                self.result.duplicates_removed += len(extra) - len(self._delete_connections(extra))
        if self._unfinished_deletes:
            wanted = sorted(self._unfinished_deletes)
            # Connections made to them (none, normally) go first, as for any annotation.
            touching = [c.id for c in self.connections.touching(wanted)]
            if not touching or not self._delete_connections(touching):
                left = set(self._delete_annotations(wanted))
                self.result.duplicates_removed += len(set(wanted) - left)
                self._unfinished_deletes = left

    # --- one location ----------------------------------------------------------

    def write_location(
        self, location: Location, refined: list[Refined], earlier: Iterable[tuple[Mapping, Counterpart]] = ()
    ) -> None:
        """Save the location's refined polygons, connect them, then replace the originals
        whose accepted counterpart is confirmed. `earlier` holds originals that a run with
        the same settings already refined: they are connected and replaced if that was
        left undone, never refined or created again. Raises WorkerError when the server
        refuses the refined polygons (nothing is deleted for this location then); what
        the server did not confirm in time is left for `finish`."""
        self._visited.add(location)
        earlier = list(earlier)
        resent_before = len(self._resent)
        try:
            created = self._create(location, refined, earlier)
        except _NotConfirmed as unconfirmed:
            self._pending_creates.append(unconfirmed.pending)
            return
        self._after_create(location, refined, earlier, created)
        if len(self._resent) > resent_before:
            self._remove_late_twins(self._resent[resent_before:])

    def _after_create(self, location: Location, refined: list[Refined], earlier: list[tuple[Mapping, Counterpart]],
                      created: dict[str, str]) -> None:
        self.result.created_doubtful += sum(1 for r in refined if r.doubtful and r.original["_id"] in created)
        children = {
            created[r.original["_id"]]: _vertex_centroid(r.polygon)
            for r in refined if r.original["_id"] in created
        }
        children.update({c.refined_id: c.point for _, c in earlier if not c.recognised})
        originals = {r.original["_id"] for r in refined} | {original["_id"] for original, _ in earlier}
        replaced: dict[str, str] = {}
        completing: dict[str, str] = {}
        if self.params.delete_originals:
            replaced = {r.original["_id"]: created[r.original["_id"]]
                        for r in refined if not r.doubtful and r.original["_id"] in created}
            completing = {o["_id"]: c.refined_id for o, c in earlier if c.replaces_original}
        replacing = {refined_id: original_id for original_id, refined_id in {**replaced, **completing}.items()}
        self._connect(children, (location.xy, location.z, location.time), originals | set(children), replacing)
        # Refinements of an outline the user has since changed, and duplicates: replaced by
        # the refinement of the current outline, and the one kept.
        stale = {old: created[r.original["_id"]] for r in refined if r.original["_id"] in created
                 for old in self.earlier.stale.get(r.original["_id"], ())}
        if stale:
            self.result.stale_removed += self._replace(stale)
        duplicates = self.earlier.duplicates.get(location)
        if duplicates:
            self.result.duplicates_removed += self._replace(dict(duplicates))
        if not self.params.delete_originals:
            return
        self.result.deleted += self._replace(replaced)
        completed = self._replace(completing)
        self.result.deleted += completed
        self.result.completed += completed

    # --- the end of the job ----------------------------------------------------

    def finish(self) -> None:
        """After the last location: complete what the server did not confirm in time, remove
        what late writes made twice, and warn of connections that could not be moved.
        Raises `Unfinished` naming what is still left."""
        self._wait_for_late_writes()
        for location, duplicates in self.earlier.duplicates.items():
            if location not in self._visited:
                self.result.duplicates_removed += self._replace(dict(duplicates))
        for pending in list(self._pending_creates):
            self._pending_creates.remove(pending)
            try:
                self._create_documents(pending, verify_first=True)
            except _NotConfirmed:
                self._pending_creates.append(pending)
                continue
            self._after_create(pending.location, pending.refined, pending.earlier, pending.created)
        if self._unfinished_connections:
            connections, self._unfinished_connections = self._unfinished_connections, []
            self._make_connections([c for c in connections if not self.connections.exists(c["parentId"], c["childId"])])
        if self._unfinished_replacements:
            self.result.deleted += self._replace(dict(self._unfinished_replacements))
        if self._resent or self._unfinished_deletes:
            self._wait_for_late_writes()
            self._remove_late_twins(self._resent)
        self.result.kept_originals = self._kept_originals()
        if self.result.connections_skipped:
            self.reporter.warning(
                f"{plural(self.result.connections_skipped, 'connection')} could not be moved to a refined polygon: "
                "the annotation at its other end no longer exists",
                info="Such connections point at nothing (deleting annotations in bulk leaves them behind); they "
                     "were removed with their originals.",
            )
        left = self.left_undone()
        if left:
            raise Unfinished(
                f"The platform did not complete every change: {left}",
                info=self._unfinished_info(),
                title="Not finished",
            )

    def _wait_for_late_writes(self) -> None:
        """Until the server has had its settle time for the last write it may still apply."""
        if self._last_resend is not None:
            self.clock.sleep(max(0.0, settle_seconds() - (self.clock.now() - self._last_resend)))

    def _kept_originals(self) -> int:
        """Originals still waiting to be replaced (not refinements of an earlier outline)."""
        return sum(1 for old in self._unfinished_replacements if old not in self.earlier.refined_ids)

    def left_undone(self) -> str:
        """What the job could not do, in words ('' when nothing)."""
        parts = []
        unsaved = sum(len(p.documents) for p in self._pending_creates)
        if unsaved:
            parts.append(f"{plural(unsaved, 'refined polygon')} could not be saved (their originals are untouched)")
        kept = self._kept_originals()
        if kept:
            parts.append(f"{plural(kept, 'original')} {'is' if kept == 1 else 'are'} still there next to "
                         "the refined version")
        if self._unfinished_connections:
            parts.append(f"{plural(len(self._unfinished_connections), 'connection')} to nearest parents "
                         f"{'was' if len(self._unfinished_connections) == 1 else 'were'} not made")
        leftovers = len(self._unfinished_deletes) + sum(
            1 for old in self._unfinished_replacements if old in self.earlier.refined_ids)
        if leftovers:
            parts.append(f"{plural(leftovers, 'extra refined polygon')} (duplicates or refinements of an "
                         "earlier outline) could not be removed")
        return "; ".join(parts)

    def _unfinished_info(self) -> str:
        reasons = self.result.delete_failures + self.result.connect_failures
        refined_tags_text = ", ".join(self.params.output_tags) or "of their originals"
        originals_text = ", ".join(self.params.refine_tags) or "their own tags"
        unsaved = "Nothing was deleted for the refined polygons that could not be saved. " \
            if any(p.documents for p in self._pending_creates) else ""
        return (
            (f"{reasons[-1]}. " if reasons else "") + unsaved
            + "Run the tool again with the same settings: it completes what is left without refining anything "
            f"twice. The refined polygons carry the tags {refined_tags_text}; the originals carry {originals_text}."
        )
