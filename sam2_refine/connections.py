"""Connections: the index of those that touch the job's annotations, new ones to nearest
parents, and the copies that move an original's connections to its refinement.

Never a connection from an object to itself or to its own original, never two with the
same parent and child; a nearest parent is never an original of this job (it may be
about to be replaced) nor a refined outline of it. Creating them goes through the write
policy like every write: verified, never made twice.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import shapely
from shapely.geometry import Polygon

from .ledger import Ledger, Resent
from .markers import is_output_of
from .nimbus import ConnectionRecord, iter_chunks
from .parameters import Location, RefineParameters
from .writes import Platform, WritePolicy, server_message

CONNECTION_CHUNK = 1000
# The label the platform's own connect-to-nearest gives its connections.
AUTOMATIC_LABEL = "A Connection -- automatic"


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


def ends(connection: Mapping) -> tuple[str, str, tuple[str, ...], str | None]:
    """The link a connection document to be created makes (`ConnectionRecord.ends` of it)."""
    return ConnectionRecord.of({"_id": "", **connection}).ends


@dataclass(frozen=True)
class _Parent:
    annotation_id: str
    x: float
    y: float
    z: float | None
    channel: int | None


def vertex_centroid(polygon: Polygon) -> tuple[float, float, None] | None:
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


class Linker:
    """Creates connections: moved ones (for replace) and those to nearest parents, as the
    platform's connect-to-nearest would make them."""

    def __init__(self, platform: Platform, params: RefineParameters, policy: WritePolicy, ledger: Ledger,
                 index: Connections):
        self.platform = platform
        self.params = params
        self.policy = policy
        self.ledger = ledger
        self.index = index
        self._parents: dict[tuple[int, int, int], list[_Parent]] = defaultdict(list)

    def read_parents(self, locations: list[Location] | None, key: str) -> None:
        """The candidate parents of connect-to-nearest at `locations` (all if None); never
        a refined outline of this run key."""
        for record in self.platform.tagged_annotations(self.params.connect_to.tags, locations):
            point = record.reference_point()
            if point is None or is_output_of(record, key):
                continue
            location = record.location
            self._parents[(location.xy, location.z, location.time)].append(_Parent(record.id, *point, record.channel))

    def create(self, connections: list[dict]) -> list[dict]:
        """Create `connections` (verified, never made twice); returns those left undone.
        A final refusal is raised."""
        cursor = self.platform.cursor()
        attempted: set[tuple] = set()
        resent = False

        def send(part: list[dict]) -> None:
            nonlocal resent
            resent = resent or any(ends(c) in attempted for c in part)
            attempted.update(ends(c) for c in part)
            for created in self.platform.create_connections(part):
                self.index.add(created)

        def missing(part: list[dict]) -> list[dict]:
            wanted = {ends(c) for c in part}
            for record in self.platform.connections_since(cursor):
                if record.ends in wanted and not self.index.exists(record.parent_id, record.child_id):
                    self.index.add(record)
            return [c for c in part if not self.index.exists(c["parentId"], c["childId"])]

        left: list[dict] = []
        for chunk in iter_chunks(connections, CONNECTION_CHUNK):
            left += self.policy.complete(chunk, send, missing)
        if resent:
            kept = {record.ends: record.id for record in self.index.touching({c["childId"] for c in connections})}
            self.ledger.resent.append(Resent(cursor, {}, kept))
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

    def connect(
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
            if self.index.has_automatic_parent(child_id) or (
                origin is not None and self.index.has_automatic_parent(origin)
            ):
                continue
            parent = self._nearest_parent(child_id, point, location, excluded)
            if parent is None or self.index.exists(parent, child_id):
                continue
            if origin is not None and self.index.exists(parent, origin):
                continue
            new.append({"parentId": parent, "childId": child_id, "datasetId": self.params.dataset_id,
                        "tags": [], "label": AUTOMATIC_LABEL})
        self.make(new)

    def make(self, new: list[dict]) -> None:
        """Create connections to nearest parents; what is not made waits for the end of the job."""
        before = len(new)
        try:
            left = self.create(new)
        except Exception as error:  # a final refusal
            left = new
            self.ledger.result.connect_failures.append(server_message(error))
        self.ledger.result.connected += before - len(left)
        self.ledger.connections += left
