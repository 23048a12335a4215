"""The platform's documents and their rules, behind one lock.

Every public method takes the lock, so a request sees and makes one consistent change.
Documents leave the store as deep copies with plain JSON types (``out``). Requests carry
their user: reads need READ on the dataset's folder, writes WRITE (PLATFORM.md §4), and
every write is an entry of that user's undo history (`history`).
"""

from __future__ import annotations

import copy
import math
import threading
from typing import Any, Iterable

import numpy as np
import orjson

from nimbus_server import access
from nimbus_server.annotation_index import AnnotationIndex, AnnotationQuery, ListFilters
from nimbus_server.datasets import Datasets, load
from nimbus_server.errors import ApiError, validation_error
from nimbus_server.history import Change, History
from nimbus_server.paging import Paging, out, page, page_in_order
from nimbus_server.schema import (
    ANNOTATION_FIELDS,
    ObjectIdFactory,
    Oid,
    convert_object_id,
    is_object_id,
    validate_annotation,
    validate_connection,
)

AUTOMATIC_CONNECTION_LABEL = "A Connection -- automatic"
ANNOTATION, CONNECTION = "upenn_annotation", "annotation_connection"


def _same_id(a: Any, b: Any) -> bool:
    """Equality as MongoDB sees it: an ObjectId never equals a string."""
    return type(a) is type(b) and a == b


def _centroid(coordinates: list[dict]) -> dict[str, float]:
    """The mean of the vertices; z only when every vertex has one."""
    centre = {axis: sum(c[axis] for c in coordinates) / len(coordinates) for axis in ("x", "y")}
    if all("z" in c for c in coordinates):
        centre["z"] = sum(c["z"] for c in coordinates) / len(coordinates)
    return centre


def _reference_point(annotation: dict) -> dict[str, float]:
    """A point's own coordinate; the vertex centroid of any other shape."""
    coordinates = annotation["coordinates"]
    return coordinates[0] if annotation["shape"] == "point" else _centroid(coordinates)


def _distance(a: dict, b: dict) -> float:
    p, q = _reference_point(a), _reference_point(b)
    axes = ("x", "y", "z") if "z" in p and "z" in q else ("x", "y")
    return math.sqrt(sum((p[axis] - q[axis]) ** 2 for axis in axes))


class Store:
    """All documents of one server. `token` logs in its first user, who owns the datasets
    added through `add_dataset`."""

    def __init__(self, token: str, put_keeps_only_schema_fields: bool = False) -> None:
        self.lock = threading.RLock()
        # PUT stores only schema fields, dropping the document's other keys (as PLATFORM.md
        # §4 describes [N]); by default only the request's other keys are dropped.
        self.put_keeps_only_schema_fields = put_keeps_only_schema_fields
        self._ids = ObjectIdFactory()
        self.users = access.Users(self._ids)
        self.owner, _ = self.users.add("tester", token)
        self.datasets = Datasets(self._ids)
        self.private_folder_id = self.datasets.add_private_folder(self.owner)
        self.history = History()
        self.annotations = AnnotationIndex()
        self.connections: dict[str, dict] = {}
        self._connection_order: list[str] = []  # every connection id inserted, ascending
        self.interfaces: dict[str, dict] = {}

    # --- users, datasets, images --------------------------------------------------------

    def user_for(self, token: str) -> dict | None:
        with self.lock:
            return self.users.by_token(token)

    def add_user(self, login: str, token: str | None) -> str:
        with self.lock:
            user, token = self.users.add(login, token)
            self.datasets.add_private_folder(user)
            return token

    def share(self, dataset_id: str, login: str, level: int, view: bool) -> None:
        with self.lock:
            self.datasets.share(dataset_id, self.users.by_login(login), level, view)

    def add_dataset(self, frames: np.ndarray, name: str, channel_names: list[str] | None,
                    layers: list[dict] | None, mm_x: float | None) -> str:
        with self.lock:
            return self.datasets.add(frames, name, channel_names, layers, mm_x, self.owner, self.private_folder_id)

    def dataset_call(self, method: str, *args: Any) -> Any:
        """One of `Datasets`' reads (get_folder, list_items, image, ...), under the lock."""
        with self.lock:
            return getattr(self.datasets, method)(*args)

    # --- annotations: reads ---------------------------------------------------------------

    def annotation_page(self, query: AnnotationQuery, paging: Paging, user: dict) -> tuple[bytes, int]:
        """A page of the annotations matching `query`, as the response body (serialized
        once, not copied first: stored documents are replaced, never changed in place),
        and the count the platform sends as `Girder-Total-Count`."""
        with self.lock:
            self.datasets.require(query.dataset_id, user, access.READ)
            found = self.annotations.page(query, paging)
            # Seeded documents may hold numpy numbers, which json.dumps takes as floats.
            return orjson.dumps(found, option=orjson.OPT_SERIALIZE_NUMPY), self.annotations.count(
                query, paging.after_id)

    def count_annotations(self, query: AnnotationQuery, user: dict) -> int:
        with self.lock:
            self.datasets.require(query.dataset_id, user, access.READ)
            return self.annotations.count(query)

    def list_annotation_ids(self, dataset_id: str, filters: ListFilters, user: dict) -> list[str]:
        with self.lock:
            self.datasets.require(dataset_id, user, access.READ)
            return self.annotations.list_ids(dataset_id, filters)

    def _readable_annotation(self, annotation_id: str, user: dict) -> dict:
        doc = load(self.annotations.docs, ANNOTATION, annotation_id)
        self.datasets.require(str(doc["datasetId"]), user, access.READ)
        return doc

    def get_annotation(self, annotation_id: str, user: dict) -> dict:
        with self.lock:
            return out(self._readable_annotation(annotation_id, user))

    def hydrate(self, annotation_ids: list[str], user: dict) -> list[dict]:
        with self.lock:
            found = [self.annotations.docs[key] for key in sorted(set(annotation_ids)) if key in self.annotations]
            for dataset_id in {str(doc["datasetId"]) for doc in found}:
                self.datasets.require(dataset_id, user, access.READ)
            return out(found)

    # --- annotations: writes --------------------------------------------------------------

    def _record(self, action: str, user: dict, dataset_id: Any, changes: list[Change]) -> None:
        """One history entry of `user`: a write with a dataset id (recordable)."""
        if dataset_id is not None and changes:
            self.history.record(action, user["_id"], str(dataset_id), changes)

    def _insert_annotation(self, doc: dict) -> dict:
        fields = {key: value for key, value in doc.items() if key != "_id"}
        stored = {"_id": self._ids.new(), **fields, "datasetId": Oid(fields["datasetId"])}
        self.annotations.put(stored)
        return stored

    def _writable(self, dataset_ids: Iterable[str], user: dict) -> None:
        """requireDatasetsAccess: every dataset exists and `user` may write it."""
        for dataset_id in set(dataset_ids):
            if dataset_id not in self.datasets.folders:
                raise ApiError(403, f"Dataset(s) not found: {[dataset_id]}", "access")
            self.datasets.require(dataset_id, user, access.WRITE)

    def _check_annotation_datasets(self, docs: list[dict]) -> None:
        for dataset_id in {doc["datasetId"] for doc in docs}:
            if not self.datasets.is_dataset(dataset_id):
                raise validation_error("Annotation dataset ID is invalid")

    def create_annotation(self, doc: Any, user: dict) -> dict:
        """POST upenn_annotation: the dataset folder is loaded (exc=True) before the
        schema is checked."""
        with self.lock:
            if isinstance(doc, dict) and "datasetId" in doc:
                doc = {**doc, "datasetId": convert_object_id(doc["datasetId"])}
                self.datasets.require(doc["datasetId"], user, access.WRITE)
            validate_annotation(doc)
            self._check_annotation_datasets([doc])
            stored = self._insert_annotation(doc)
            self._record("Create an annotation", user, doc["datasetId"], [Change(ANNOTATION, stored["_id"], None, stored)])
            return out(stored)

    def create_annotations(self, docs: list[Any], user: dict) -> list[dict]:
        """POST upenn_annotation/multiple: all or nothing, in request order."""
        with self.lock:
            docs = [
                {**doc, "datasetId": convert_object_id(doc["datasetId"])}
                if isinstance(doc, dict) and "datasetId" in doc else doc
                for doc in docs
            ]
            self._writable((doc["datasetId"] for doc in docs if isinstance(doc, dict) and "datasetId" in doc), user)
            for doc in docs:
                validate_annotation(doc)
            self._check_annotation_datasets(docs)
            created = [self._insert_annotation(doc) for doc in docs]
            self._record("Create multiple annotations", user, docs[0]["datasetId"] if docs else None,
                         [Change(ANNOTATION, doc["_id"], None, doc) for doc in created])
            return out(created)

    def _updated(self, current: dict, changes: dict) -> dict:
        """The document after a PUT: only schema fields change. A given ``datasetId`` is
        stored as it came (a string), as the platform does."""
        kept = {key: value for key, value in changes.items() if key in ANNOTATION_FIELDS}
        merged = {**current, **kept}
        if self.put_keeps_only_schema_fields:
            merged = {key: value for key, value in merged.items() if key in ANNOTATION_FIELDS or key == "_id"}
        validate_annotation({**merged, "datasetId": str(merged["datasetId"])})
        if "datasetId" in kept:
            if not isinstance(kept["datasetId"], str):
                raise validation_error("data.datasetId must be objectId")
            if not self.datasets.is_dataset(kept["datasetId"].lower()):
                raise validation_error("Annotation dataset ID is invalid")
        return merged

    def update_annotation(self, annotation_id: str, changes: Any, user: dict) -> None:
        if not isinstance(changes, dict):
            raise validation_error("data must be object")
        with self.lock:
            current = load(self.annotations.docs, ANNOTATION, annotation_id)
            self.datasets.require(str(current["datasetId"]), user, access.WRITE)
            updated = self._updated(current, changes)
            self.annotations.put(updated)
            self._record("Update an annotation", user, current["datasetId"],
                         [Change(ANNOTATION, annotation_id, current, updated)])

    def update_annotations(self, entries: Any, user: dict) -> None:
        """PUT upenn_annotation/multiple: ids kept; ``datasetId`` converted."""
        with self.lock:
            updates: dict[str, tuple[dict, dict]] = {}
            for entry in entries:
                if not isinstance(entry, dict):
                    raise validation_error("data must be object")
                annotation_id = str(entry.get("id", entry.get("_id", ""))).lower()
                current = self.annotations.get(annotation_id) if is_object_id(annotation_id) else None
                if current is None or access.level_of(self.datasets.folders.get(str(current["datasetId"]), {}),
                                                      user) < access.WRITE:
                    raise ApiError(403, f"Annotation not found or not writable: {annotation_id}", "access")
                changes = {key: value for key, value in entry.items() if key not in ("id", "_id")}
                merged = self._updated(current, changes)
                merged["datasetId"] = Oid(str(merged["datasetId"]).lower())
                updates[annotation_id] = (current, merged)
            for _, merged in updates.values():
                self.annotations.put(merged)
            first = next(iter(updates.values()), None)
            self._record("Update an annotation", user, first[0]["datasetId"] if first else None,
                         [Change(ANNOTATION, key, before, after) for key, (before, after) in updates.items()])

    def delete_annotation(self, annotation_id: str, user: dict) -> None:
        """DELETE upenn_annotation/{id}: its connections go with it."""
        with self.lock:
            doc = load(self.annotations.docs, ANNOTATION, annotation_id)
            self.datasets.require(str(doc["datasetId"]), user, access.WRITE)
            self.annotations.remove(annotation_id)
            changes = [Change(ANNOTATION, annotation_id, doc, None)]
            for key, conn in list(self.connections.items()):
                if annotation_id in (conn.get("parentId"), conn.get("childId")):
                    changes.append(Change(CONNECTION, key, self.connections.pop(key), None))
            self._record("Delete an annotation", user, doc["datasetId"], changes)

    def delete_annotations(self, annotation_ids: Iterable[Any], user: dict | None) -> None:
        """DELETE upenn_annotation/multiple. Unknown ids are skipped. The platform's
        connection cleanup compares string ids with ObjectId fields and matches nothing,
        so connections are left as orphans. `user` None: a direct removal (seeding)."""
        ids = [convert_object_id(value) for value in annotation_ids]
        with self.lock:
            found = [self.annotations.docs[key] for key in ids if key in self.annotations]
            if user is not None:
                self._writable((str(doc["datasetId"]) for doc in found), user)
            changes = [Change(ANNOTATION, doc["_id"], self.annotations.remove(doc["_id"]), None) for doc in found]
            if user is not None:
                self._record("Delete multiple annotations", user, found[0]["datasetId"] if found else None, changes)

    def dataset_annotations(self, dataset_id: str) -> list[dict]:
        with self.lock:
            return out(self.annotations.page(AnnotationQuery(dataset_id), Paging(limit=0)))

    def insert_annotation(self, doc: dict) -> str:
        """A direct insert, without validation (for seeding tests)."""
        dataset_id = str(doc["datasetId"]).lower()
        with self.lock:
            if dataset_id not in self.datasets.folders:
                raise KeyError(f"No folder {dataset_id}")
            return self._insert_annotation({**doc, "datasetId": dataset_id})["_id"]

    # --- history ---------------------------------------------------------------------------

    def _restore(self, model: str, document_id: str, document: dict | None) -> None:
        if model == ANNOTATION:
            if document is None:
                self.annotations.remove(document_id)
            else:
                self.annotations.put(document)
        elif document is None:
            self.connections.pop(document_id, None)
        else:
            if document_id not in self.connections:
                self._connection_order.append(document_id)
                self._connection_order.sort()
            self.connections[document_id] = document

    def history_entries(self, dataset_id: str, user: dict) -> list[dict]:
        with self.lock:
            self.datasets.require(dataset_id, user, access.READ)
            return self.history.entries(user["_id"], dataset_id)

    def undo(self, dataset_id: str, user: dict, redo: bool = False) -> None:
        """PUT history/undo (or redo): the user's last write in the dataset reverted."""
        with self.lock:
            self.datasets.require(dataset_id, user, access.WRITE)
            (self.history.redo if redo else self.history.undo)(user["_id"], dataset_id, self._restore)

    # --- connections -------------------------------------------------------------------------

    def _insert_connection(self, doc: dict) -> dict:
        connection_id = self._ids.new()
        stored = {"_id": connection_id, **{k: v for k, v in doc.items() if k != "_id"}}
        self.connections[connection_id] = stored
        self._connection_order.append(connection_id)
        return stored

    def _check_connections(self, docs: list[Any], user: dict) -> None:
        for doc in docs:
            validate_connection(doc)
        for dataset_id in {doc["datasetId"] for doc in docs}:
            if not is_object_id(dataset_id):
                raise validation_error(f"Invalid ObjectId: {dataset_id}")
            if not self.datasets.is_dataset(dataset_id.lower()):
                raise validation_error("Connection dataset ID is invalid")
            self.datasets.require(dataset_id.lower(), user, access.WRITE)
        for key, name in (("childId", "child"), ("parentId", "parent")):
            ids = {convert_object_id(doc[key]) for doc in docs}
            if not ids <= self.annotations.docs.keys():
                raise validation_error(f"A {name} annotation does not exist")

    def create_connections(self, docs: list[Any], user: dict, single: bool = False) -> list[dict]:
        with self.lock:
            self._check_connections(docs, user)
            created = [self._insert_connection(doc) for doc in docs]
            self._record("Create a connection" if single else "Create multiple connections", user,
                         docs[0]["datasetId"] if docs else None,
                         [Change(CONNECTION, doc["_id"], None, doc) for doc in created])
            return out(created)

    def add_connection(self, doc: dict) -> str:
        """A direct insert, without validation (for seeding tests)."""
        with self.lock:
            return self._insert_connection(doc)["_id"]

    def _connections_where(self, predicate) -> list[dict]:
        return [conn for conn in self.connections.values() if predicate(conn)]

    def list_connections(self, filters: dict[str, str], paging: Paging, user: dict) -> tuple[list[dict], int]:
        """A page of connections and the count of all that match (`Girder-Total-Count`)."""
        def matches(conn: dict) -> bool:
            node = filters.get("nodeAnnotationId")
            return (
                all(str(conn.get(key)) == value for key, value in filters.items() if key != "nodeAnnotationId")
                and (node is None or node in (conn.get("parentId"), conn.get("childId")))
            )

        def counted(conn: dict) -> bool:
            return matches(conn) and (paging.after_id is None or conn["_id"] > paging.after_id)

        with self.lock:
            self.datasets.require(filters["datasetId"], user, access.READ)
            if paging.sort == "_id" and paging.sortdir >= 0:
                found = page_in_order(self._connection_order, self.connections, matches, paging)
            else:
                found = page(self._connections_where(matches), paging)
            return out(found), len(self._connections_where(counted))

    def _readable_connection(self, connection_id: str, user: dict, level: int) -> dict:
        conn = load(self.connections, CONNECTION, connection_id)
        self.datasets.require(str(conn.get("datasetId")).lower(), user, level)
        return conn

    def get_connection(self, connection_id: str, user: dict) -> dict:
        with self.lock:
            return out(self._readable_connection(connection_id, user, access.READ))

    def delete_connection(self, connection_id: str, user: dict) -> None:
        with self.lock:
            conn = self._readable_connection(connection_id, user, access.WRITE)
            del self.connections[connection_id]
            self._record("Delete a connection", user, conn.get("datasetId"), [Change(CONNECTION, connection_id, conn, None)])

    def delete_connections(self, connection_ids: Iterable[Any], user: dict) -> str:
        """DELETE annotation_connection/multiple; answers what the platform prints: its
        delete result, as a string."""
        ids = [convert_object_id(value) for value in connection_ids]
        with self.lock:
            found = [self.connections[key] for key in ids if key in self.connections]
            self._writable((str(conn.get("datasetId")).lower() for conn in found), user)
            changes = [Change(CONNECTION, conn["_id"], self.connections.pop(conn["_id"]), None) for conn in found]
            self._record("Delete multiple connections", user, found[0].get("datasetId") if found else None, changes)
            return f"DeleteResult({{'n': {len(changes)}, 'ok': 1.0}}, acknowledged=True)"

    def dataset_connections(self, dataset_id: str) -> list[dict]:
        with self.lock:
            return out(self._connections_where(lambda conn: str(conn.get("datasetId")) == dataset_id))

    def connect_to_nearest(self, body: dict, user: dict) -> list[dict]:
        """POST annotation_connection/connectTo, as the platform runs it: candidates
        exclude *every* id of the request, must have the same dataset and exactly the same
        ``location`` (key order included, as MongoDB compares embedded documents), any of
        the tags (none: no tag filter) and the channel (None: any). Unknown ids are skipped."""
        ids = [convert_object_id(value) for value in body["annotationsIds"]]
        tags, channel = body["tags"], body["channelId"]
        excluded = set(ids)
        with self.lock:
            created = []
            for annotation_id in ids:
                annotation = self.annotations.get(annotation_id)
                if annotation is None:
                    continue
                self.datasets.require(str(annotation["datasetId"]), user, access.WRITE)
                candidates = [
                    doc for doc in self.annotations.values()
                    if doc["_id"] not in excluded
                    and _same_id(doc.get("datasetId"), annotation["datasetId"])
                    and list(doc.get("location", {}).items()) == list(annotation["location"].items())
                    and (not tags or any(tag in doc.get("tags", []) for tag in tags))
                    and (channel is None or doc.get("channel") == int(channel))
                ]
                if not candidates:
                    continue
                parent = min(candidates, key=lambda doc: _distance(annotation, doc))
                created.append(self._insert_connection({
                    "tags": [], "label": AUTOMATIC_CONNECTION_LABEL,
                    "parentId": parent["_id"], "childId": annotation_id,
                    "datasetId": annotation["datasetId"],
                }))
            self._record("Create connections with nearest", user, created[0]["datasetId"] if created else None,
                         [Change(CONNECTION, doc["_id"], None, doc) for doc in created])
            return out(created)

    # --- worker interfaces ---------------------------------------------------------------

    def set_interface(self, image: str, interface: Any, user: dict) -> dict:
        """POST worker_interface: the saved document."""
        with self.lock:
            previous = self.interfaces.get(image)
            doc = {
                "_id": previous["_id"] if previous else self._ids.new(),
                "access": access.new_access(user["_id"]), "image": image, "interface": copy.deepcopy(interface),
            }
            self.interfaces[image] = doc
            return out(doc)

    def get_interface(self, image: str) -> Any:
        """GET worker_interface: the bare interface, or None."""
        with self.lock:
            doc = self.interfaces.get(image)
            return out(doc["interface"]) if doc else None

    def all_interfaces(self) -> dict[str, Any]:
        with self.lock:
            return {image: out(doc["interface"]) for image, doc in self.interfaces.items()}
