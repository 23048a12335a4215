"""Writing refined polygons back, one location at a time, without ever losing an original.

Order at each location: create the refined polygons (in chunks, ids read from the
server's answer); connect them to their nearest parents if the tool asks; then, only
for originals whose accepted counterpart is confirmed, move their connections to the
counterpart and delete them. A doubtful refinement never replaces its original. A
process killed at any moment leaves at worst both versions, never neither, and a later
run with the same settings completes what was left (see `run_key`).

Connections: never from an object to itself or to its own original, never two with the
same parent and child; a nearest parent is never an original of this job (it may be
about to be replaced) nor a refined outline of it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from shapely.geometry import Polygon

from . import interface as ui
from .errors import WorkerError
from .geometry import polygon_to_coordinates
from .messages import Reporter
from .nimbus import MARKER_KEY, OutcomeUnknown, iter_chunks
from .parameters import Location, RefineParameters

CREATE_CHUNK = 1000
DELETE_CHUNK = 1000
MAX_VERIFIED_RESENDS = 3
# The label the platform's own connect-to-nearest gives its connections.
AUTOMATIC_LABEL = "A Connection -- automatic"


class Platform(Protocol):
    """What write-back needs of the platform (`nimbus.Platform`; tests use an in-memory fake)."""

    def create_annotations(self, documents: list[dict]) -> list[dict]:
        """Create in one request; the created documents in request order. Raises
        `OutcomeUnknown` when the request may or may not have been applied."""

    def marked_annotations(self, run_key: str, tags: list[str]) -> dict[str, dict]:
        """original id -> refined document with marker "<run_key>/<original id>"."""

    def tagged_annotations(self, any_of_tags: tuple[str, ...]) -> list[dict]:
        """Every annotation (any shape) carrying any of the tags."""

    def dataset_connections(self) -> list[dict]: ...

    def create_connections(self, connections: list[dict]) -> list[dict]: ...

    def delete_connections(self, connection_ids: list[str]) -> None: ...

    def delete_annotations(self, annotation_ids: list[str]) -> None: ...


def run_key(params: RefineParameters) -> str:
    """A digest of the settings that shape the output: runs with the same key make the
    same refined polygons, so a later run recognises what an earlier one saved."""
    settings = {
        "model": params.model_name,
        "resolution": params.resolution,
        "padding": params.padding,
        "smoothing": params.smoothing,
        "tags": sorted(params.output_tags),
        "channel": params.output_channel,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def marker(key: str, original_id: str) -> str:
    return f"{key}/{original_id}"


def is_output_of(document: dict, key: str) -> bool:
    return str(document.get(MARKER_KEY, "")).startswith(f"{key}/")


@dataclass(frozen=True)
class Refined:
    """A refined outline to save for `original`; `doubtful` ones never replace it."""

    original: dict
    polygon: Polygon
    doubtful: bool = False


@dataclass(frozen=True)
class Counterpart:
    """A refined polygon saved by an earlier run with the same settings (compact: only
    what completing its location needs)."""

    refined_id: str
    doubtful: bool
    point: tuple[float, float, float | None] | None  # where connect-to-nearest measures from

    @classmethod
    def of(cls, document: dict) -> "Counterpart":
        return cls(document["_id"], ui.REVIEW_TAG in (document.get("tags") or []), _reference_point(document))


@dataclass
class WriteResult:
    created: int = 0
    created_doubtful: int = 0
    not_saved: int = 0
    deleted: int = 0
    kept_originals: int = 0
    completed: int = 0  # originals an earlier run refined, replaced now
    connected: int = 0
    delete_failures: list[str] = field(default_factory=list)
    connect_failures: list[str] = field(default_factory=list)


def _location_of(document: dict) -> dict[str, int]:
    # Key order XY, Z, Time: the platform's connect-to-nearest compares it.
    return Location.from_dict(document.get("location")).as_dict()


def refined_tags(original: dict, params: RefineParameters, doubtful: bool) -> list[str]:
    """The output tags, or the original's own tags when the tool has none; plus the
    review tag, once, on a doubtful refinement."""
    tags = list(params.output_tags) or [t for t in (original.get("tags") or []) if isinstance(t, str)]
    if doubtful and ui.REVIEW_TAG not in tags:
        tags.append(ui.REVIEW_TAG)
    return tags


def refined_document(original: dict, polygon: Polygon, params: RefineParameters, key: str, doubtful: bool = False) -> dict:
    return {
        "shape": "polygon",
        "tags": refined_tags(original, params, doubtful),
        "channel": int(params.output_channel),
        "location": _location_of(original),
        "coordinates": polygon_to_coordinates(polygon),
        "datasetId": params.dataset_id,
        MARKER_KEY: marker(key, original["_id"]),
    }


def _source_of(document: dict) -> str:
    return document[MARKER_KEY].split("/", 1)[1]


def server_message(error: Exception) -> str:
    text = getattr(error, "responseText", None)
    status = getattr(error, "status", None)
    try:
        message = json.loads(text)["message"] if text else str(error)
    except (ValueError, KeyError, TypeError):
        message = text or str(error)
    return f"HTTP {status}: {message}" if status else message


@dataclass(frozen=True)
class _Parent:
    annotation_id: str
    x: float
    y: float
    z: float | None
    channel: int | None


def _reference_point(document: dict) -> tuple[float, float, float | None] | None:
    """As the platform measures connection distances: a point's own coordinate, the
    vertex centroid of any other shape; z only when every vertex has one."""
    coordinates = [c for c in (document.get("coordinates") or []) if isinstance(c, dict) and "x" in c and "y" in c]
    if not coordinates:
        return None
    if document.get("shape") == "point":
        coordinates = coordinates[:1]
    x = sum(float(c["x"]) for c in coordinates) / len(coordinates)
    y = sum(float(c["y"]) for c in coordinates) / len(coordinates)
    z = sum(float(c["z"]) for c in coordinates) / len(coordinates) if all("z" in c for c in coordinates) else None
    return x, y, z


def _distance(point: tuple[float, float, float | None], parent: _Parent) -> float:
    x, y, z = point
    dz = (z - parent.z) if z is not None and parent.z is not None else 0.0
    return math.sqrt((x - parent.x) ** 2 + (y - parent.y) ** 2 + dz ** 2)


class Connections:
    """The dataset's connections, indexed by the annotations they join, kept current as
    this job moves and deletes them."""

    def __init__(self, connections: Iterable[dict] = ()):
        self._by_id: dict[str, dict] = {}
        self._by_node: dict[str, set[str]] = defaultdict(set)
        for connection in connections:
            self.add(connection)

    def add(self, connection: dict) -> None:
        self._by_id[connection["_id"]] = connection
        self._by_node[connection["parentId"]].add(connection["_id"])
        self._by_node[connection["childId"]].add(connection["_id"])

    def remove(self, connection_id: str) -> None:
        connection = self._by_id.pop(connection_id, None)
        if connection is not None:
            self._by_node[connection["parentId"]].discard(connection_id)
            self._by_node[connection["childId"]].discard(connection_id)

    def touching(self, annotation_ids: Iterable[str]) -> list[dict]:
        ids = {cid for annotation_id in annotation_ids for cid in self._by_node.get(annotation_id, ())}
        return [self._by_id[cid] for cid in sorted(ids)]

    def exists(self, parent_id: str, child_id: str) -> bool:
        return any(
            self._by_id[cid]["parentId"] == parent_id and self._by_id[cid]["childId"] == child_id
            for cid in self._by_node.get(child_id, ())
        )

    def has_automatic_parent(self, child_id: str) -> bool:
        return any(
            self._by_id[cid]["childId"] == child_id and self._by_id[cid].get("label") == AUTOMATIC_LABEL
            for cid in self._by_node.get(child_id, ())
        )


def moved_connections(touching: list[dict], replaced: dict[str, str], connections: Connections) -> list[dict]:
    """New connections for `touching` with replaced originals swapped for their
    counterparts: none from an object to itself, none that exists already, each once."""
    moved: dict[tuple[str, str], dict] = {}
    for connection in touching:
        parent = replaced.get(connection["parentId"], connection["parentId"])
        child = replaced.get(connection["childId"], connection["childId"])
        if parent == child or connections.exists(parent, child) or (parent, child) in moved:
            continue
        copy = {"parentId": parent, "childId": child, "datasetId": connection.get("datasetId"),
                "tags": list(connection.get("tags") or [])}
        if connection.get("label") is not None:
            copy["label"] = connection["label"]
        moved[(parent, child)] = copy
    return list(moved.values())


class WriteBack:
    """One job's write-back: `prepare` once, then `write_location` for each location."""

    def __init__(self, platform: Platform, params: RefineParameters, key: str, reporter: Reporter):
        self.platform = platform
        self.params = params
        self.key = key
        self.reporter = reporter
        self.result = WriteResult()
        self.connections = Connections()
        self._parents: dict[tuple[int, int, int], list[_Parent]] = defaultdict(list)

    def prepare(self) -> None:
        """Read what write-back must know beforehand: the connections (to move them and to
        never make one twice) and, with connect-to-nearest, the candidate parents."""
        if self.params.delete_originals or self.params.connect_to is not None:
            self.connections = Connections(self.platform.dataset_connections())
        if self.params.connect_to is not None:
            for document in self.platform.tagged_annotations(self.params.connect_to.tags):
                point = _reference_point(document)
                if point is None or is_output_of(document, self.key):
                    continue
                location = Location.from_dict(document.get("location"))
                channel = document.get("channel")
                self._parents[(location.xy, location.z, location.time)].append(
                    _Parent(document["_id"], *point, channel if isinstance(channel, int) else None)
                )

    # --- create ----------------------------------------------------------------

    def _create_chunk(self, documents: list[dict]) -> dict[str, str]:
        """original id -> created id for one chunk, repeating only what the server lacks."""
        confirmed: dict[str, str] = {}
        pending = documents
        for _ in range(MAX_VERIFIED_RESENDS + 1):
            try:
                created = self.platform.create_annotations(pending)
            except OutcomeUnknown:
                existing = self.platform.marked_annotations(self.key, list(self.params.output_tags))
                for document in pending:
                    if _source_of(document) in existing:
                        confirmed[_source_of(document)] = existing[_source_of(document)]["_id"]
                pending = [d for d in pending if _source_of(d) not in confirmed]
                if not pending:
                    return confirmed
                continue
            for document, answer in zip(pending, created):
                confirmed[_source_of(document)] = answer["_id"]
            return confirmed
        raise WorkerError(
            f"The platform did not confirm {len(pending)} refined polygons after {MAX_VERIFIED_RESENDS} tries",
            info="Nothing was deleted for them; run the tool again later to continue.",
            title="Could not save",
        )

    def _create(self, refined: list[Refined]) -> dict[str, str]:
        documents = [refined_document(r.original, r.polygon, self.params, self.key, r.doubtful) for r in refined]
        created: dict[str, str] = {}
        for chunk in iter_chunks(documents, CREATE_CHUNK):
            try:
                created.update(self._create_chunk(chunk))
            except Exception as error:
                self.result.not_saved += len(documents) - len(created)
                if isinstance(error, WorkerError):
                    raise
                raise WorkerError(
                    f"The platform refused the refined polygons: {server_message(error)}",
                    info="Nothing was deleted for them. Check the tool's output tags and your access, then run again.",
                    title="Could not save",
                ) from error
        return created

    # --- connect ---------------------------------------------------------------

    def _nearest_parent(self, child_id: str, point: tuple, location: tuple, excluded: set[str]) -> str | None:
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
        try:
            for chunk in iter_chunks(new, CREATE_CHUNK):
                for connection in self.platform.create_connections(chunk):
                    self.connections.add(connection)
                    self.result.connected += 1
        except Exception as error:
            self.result.connect_failures.append(server_message(error))

    # --- replace ---------------------------------------------------------------

    def _replace(self, replaced: dict[str, str]) -> int:
        """Move the connections of `replaced` originals (id -> counterpart id) to their
        counterparts, then delete the originals; returns how many were deleted."""
        deleted = 0
        for chunk in iter_chunks(list(replaced), DELETE_CHUNK):
            try:
                touching = self.connections.touching(chunk)
                moved = moved_connections(touching, replaced, self.connections)
                for part in iter_chunks(moved, CREATE_CHUNK):
                    for connection in self.platform.create_connections(part):
                        self.connections.add(connection)
                if touching:
                    self.platform.delete_connections([c["_id"] for c in touching])
                    for connection in touching:
                        self.connections.remove(connection["_id"])
                self.platform.delete_annotations(chunk)
            except Exception as error:
                self.result.kept_originals += len(chunk)
                self.result.delete_failures.append(server_message(error))
                continue
            deleted += len(chunk)
        return deleted

    # --- one location ----------------------------------------------------------

    def write_location(
        self, location: Location, refined: list[Refined], earlier: list[tuple[dict, Counterpart]] = ()
    ) -> None:
        """Save the location's refined polygons, connect them, then replace the originals
        whose accepted counterpart is confirmed. `earlier` holds originals that a run with
        the same settings already refined: they are connected and replaced if that was
        left undone, never refined or created again. Raises WorkerError when saving fails
        (nothing is deleted for this location then)."""
        created = self._create(refined)
        self.result.created += len(created)
        self.result.created_doubtful += sum(1 for r in refined if r.doubtful and r.original["_id"] in created)
        children = {
            created[r.original["_id"]]: _reference_point({"coordinates": polygon_to_coordinates(r.polygon)})
            for r in refined if r.original["_id"] in created
        }
        children.update({counterpart.refined_id: counterpart.point for _, counterpart in earlier})
        originals = {r.original["_id"] for r in refined} | {original["_id"] for original, _ in earlier}
        replaced: dict[str, str] = {}
        completing: dict[str, str] = {}
        if self.params.delete_originals:
            replaced = {r.original["_id"]: created[r.original["_id"]]
                        for r in refined if not r.doubtful and r.original["_id"] in created}
            completing = {o["_id"]: counterpart.refined_id for o, counterpart in earlier if not counterpart.doubtful}
        replacing = {refined_id: original_id for original_id, refined_id in {**replaced, **completing}.items()}
        self._connect(children, (location.xy, location.z, location.time), originals | set(children), replacing)
        if not self.params.delete_originals:
            return
        self.result.deleted += self._replace(replaced)
        completed = self._replace(completing)
        self.result.deleted += completed
        self.result.completed += completed
