"""The platform's documents and their rules, behind one lock.

Every public method takes the lock, so a request sees and makes one
consistent change. Documents leave the store as deep copies with plain
JSON types (``_out``).
"""

from __future__ import annotations

import bisect
import copy
import json
import math
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import numpy as np
import orjson

from nimbus_server.errors import ApiError, validation_error
from nimbus_server.images import ImageData
from nimbus_server.schema import (
    ANNOTATION_FIELDS,
    ObjectIdFactory,
    Oid,
    convert_object_id,
    is_object_id,
    validate_annotation,
    validate_connection,
)

LAYER_COLORS = ("#FF0000", "#00FF00", "#0000FF", "#FFFFFF")
AUTOMATIC_CONNECTION_LABEL = "A Connection -- automatic"
ADMIN_ACCESS = 2
# The app's placeholder when a file has no calibration (1 m per pixel).
_PLACEHOLDER_SCALES = {
    "pixelSize": {"value": 1, "unit": "m"},
    "zStep": {"value": 1, "unit": "m"},
    "tStep": {"value": 1, "unit": "s"},
}


@dataclass
class Paging:
    """Girder's paging parameters, plus NimbusImage's ``afterId`` cursor."""

    limit: int = 50
    offset: int = 0
    sort: str = "_id"
    sortdir: int = 1
    after_id: str | None = None


@dataclass
class AnnotationQuery:
    dataset_id: str
    shape: str | None = None
    tags: list[str] | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _out(doc: Any) -> Any:
    """A deep copy with plain JSON types (ids as ``str``)."""
    return json.loads(json.dumps(doc))


def _field(doc: dict, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _mongo_order(value: Any) -> tuple:
    """MongoDB's cross-type sort order: null < numbers < strings < objects
    < arrays < booleans."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (5, value)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3 if isinstance(value, dict) else 4, json.dumps(value))


def _page(docs: list[dict], paging: Paging) -> list[dict]:
    """Sort (stable, ties in ``_id`` order), then afterId or offset, then limit."""
    docs = sorted(docs, key=lambda d: d["_id"])
    if paging.sort != "_id":
        docs.sort(key=lambda d: _mongo_order(_field(d, paging.sort)), reverse=paging.sortdir < 0)
    elif paging.sortdir < 0:
        docs.reverse()
    if paging.after_id is not None:
        docs = [d for d in docs if d["_id"] > paging.after_id]
    else:
        docs = docs[paging.offset:]
    return docs[:paging.limit] if paging.limit else docs


def _page_in_order(order: list[str], table: dict[str, dict], keep: Callable[[dict], bool], paging: Paging
                   ) -> list[dict]:
    """`_page` sorted by ascending `_id`, walking `order` (every id inserted, ascending)
    from the cursor instead of sorting the whole table."""
    start = bisect.bisect_right(order, paging.after_id) if paging.after_id is not None else 0
    skip = paging.offset if paging.after_id is None else 0
    page: list[dict] = []
    for index in range(start, len(order)):
        doc = table.get(order[index])
        if doc is None or not keep(doc):
            continue
        if skip:
            skip -= 1
            continue
        page.append(doc)
        if paging.limit and len(page) >= paging.limit:
            break
    return page


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


def configuration_layers(layers: list[dict] | None, channel_names: list[str]) -> list[dict]:
    """The given layers completed, or one visible layer per channel."""
    if layers is None:
        layers = [{"channel": channel} for channel in range(len(channel_names))]
    return [complete_layer(layer, index, channel_names) for index, layer in enumerate(layers)]


def complete_layer(layer: dict, index: int, channel_names: list[str]) -> dict:
    """A layer with every key the app's configuration has, given ones kept."""
    channel = layer.get("channel", index)
    defaults = {
        "id": str(uuid.uuid4()),
        "name": channel_names[channel] if 0 <= channel < len(channel_names) else f"Channel {channel}",
        "color": LAYER_COLORS[index % len(LAYER_COLORS)],
        "channel": channel,
        "visible": True,
        "contrast": {"mode": "percentile", "blackPoint": 0, "whitePoint": 100},
        "xy": {"type": "current", "value": None},
        "z": {"type": "current", "value": None},
        "time": {"type": "current", "value": None},
        "layerGroup": None,
    }
    return {**defaults, **copy.deepcopy(layer)}


class Store:
    """All documents of one server."""

    def __init__(self, missing_id_status: int = 404, put_keeps_only_schema_fields: bool = False) -> None:
        self.lock = threading.RLock()
        self.missing_id_status = missing_id_status
        # PUT stores only schema fields, dropping the document's other keys (as PLATFORM.md
        # §4 describes [N]); by default only the request's other keys are dropped.
        self.put_keeps_only_schema_fields = put_keeps_only_schema_fields
        self._ids = ObjectIdFactory()
        self.user = self._new_user()
        self.private_folder_id = self._ids.new()
        self.folders: dict[str, dict] = {self.private_folder_id: self._new_private_folder()}
        self.items: dict[str, dict] = {}
        self.images: dict[str, ImageData] = {}
        self.configurations: dict[str, dict] = {}
        self.views: dict[str, dict] = {}
        self.annotations: dict[str, dict] = {}
        # Every annotation id ever inserted, in `_id` order (ids strictly increase): the
        # platform's (datasetId, _id) index, so a page after a cursor costs the page.
        self._annotation_order: list[str] = []
        self.connections: dict[str, dict] = {}
        self._connection_order: list[str] = []
        self.interfaces: dict[str, dict] = {}

    def _new_user(self) -> dict:
        return {
            "_id": self._ids.new(), "login": "tester", "email": "tester@example.com",
            "firstName": "Test", "lastName": "User", "admin": False, "groups": [],
            "status": "enabled", "public": False, "created": _now(),
            "_accessLevel": ADMIN_ACCESS, "_modelType": "user",
        }

    def _new_private_folder(self) -> dict:
        return self._folder_doc(self.private_folder_id, "Private", "user", self.user["_id"], {})

    def _folder_doc(self, folder_id: str, name: str, parent_type: str, parent_id: str, meta: dict) -> dict:
        return {
            "_id": folder_id, "name": name, "description": "", "parentCollection": parent_type,
            "parentId": parent_id, "creatorId": self.user["_id"], "baseParentType": "user",
            "baseParentId": self.user["_id"], "public": False, "created": _now(),
            "updated": _now(), "size": 0, "meta": meta,
        }

    def missing(self, model: str, doc_id: str) -> ApiError:
        return ApiError(self.missing_id_status, f"Invalid {model} id ({doc_id}).")

    def _load(self, table: dict[str, dict], model: str, doc_id: str) -> dict:
        if doc_id not in table:
            raise self.missing(model, doc_id)
        return table[doc_id]

    # --- datasets -----------------------------------------------------------

    def add_dataset(
        self,
        frames: np.ndarray,
        name: str,
        channel_names: list[str] | None,
        layers: list[dict] | None,
        mm_x: float | None,
    ) -> str:
        num_c = frames.shape[3] if frames.ndim == 6 else 0
        names = list(channel_names) if channel_names is not None else [f"Channel {c}" for c in range(num_c)]
        image = ImageData(frames, names, mm_x)
        with self.lock:
            folder_id, item_id = self._ids.new(), self._ids.new()
            meta = {"subtype": "contrastDataset", "selectedLargeImageId": item_id}
            self.folders[folder_id] = self._folder_doc(folder_id, name, "folder", self.private_folder_id, meta)
            self.items[item_id] = self._item_doc(item_id, folder_id, f"{name}.tiff")
            self.images[item_id] = image
            configuration_id = self._add_configuration(name, names, layers, mm_x)
            self._add_view(folder_id, configuration_id)
            return folder_id

    def _item_doc(self, item_id: str, folder_id: str, name: str) -> dict:
        return {
            "_id": item_id, "name": name, "description": "", "folderId": folder_id,
            "baseParentType": "user", "baseParentId": self.user["_id"],
            "creatorId": self.user["_id"], "created": _now(), "updated": _now(),
            "size": 0, "meta": {},
            "largeImage": {"fileId": self._ids.new(), "sourceName": "multi"},
        }

    def _add_configuration(
        self, name: str, channel_names: list[str], layers: list[dict] | None, mm_x: float | None
    ) -> str:
        configuration_id = self._ids.new()
        scales = copy.deepcopy(_PLACEHOLDER_SCALES)
        if mm_x:
            scales["pixelSize"] = {"value": mm_x, "unit": "mm"}
        self.configurations[configuration_id] = {
            "_id": configuration_id, "name": f"{name} configuration", "description": "",
            "folderId": self.private_folder_id, "creatorId": self.user["_id"],
            "created": _now(), "updated": _now(),
            "meta": {
                "subtype": "contrastConfiguration",
                "layers": configuration_layers(layers, channel_names),
                "tools": [], "propertyIds": [], "snapshots": [], "scales": scales,
            },
        }
        return configuration_id

    def _add_view(self, dataset_id: str, configuration_id: str) -> None:
        view_id = self._ids.new()
        self.views[view_id] = {
            "_id": view_id, "datasetId": dataset_id, "configurationId": configuration_id,
            "creatorId": self.user["_id"], "lastLocation": {"xy": 0, "z": 0, "time": 0},
            "layerContrasts": {}, "lastViewed": _now(),
        }

    def get_folder(self, folder_id: str) -> dict:
        with self.lock:
            folder = self._load(self.folders, "folder", folder_id)
            return _out({**folder, "_accessLevel": ADMIN_ACCESS, "_modelType": "folder"})

    def get_item(self, item_id: str) -> dict:
        with self.lock:
            return _out({**self._load(self.items, "item", item_id), "_modelType": "item"})

    def list_items(self, folder_id: str, paging: Paging) -> list[dict]:
        with self.lock:
            self._load(self.folders, "folder", folder_id)
            items = [
                {**item, "lowerName": item["name"].lower(), "_modelType": "item"}
                for item in self.items.values() if item["folderId"] == folder_id
            ]
            page = _page(items, paging)
            for item in page:
                del item["lowerName"]
            return _out(page)

    def image(self, item_id: str) -> ImageData:
        with self.lock:
            self._load(self.items, "item", item_id)
            return self.images[item_id]

    def list_views(self, dataset_id: str | None, current_user_only: bool, paging: Paging) -> list[dict]:
        with self.lock:
            views = [
                view for view in self.views.values()
                if (dataset_id is None or view["datasetId"] == dataset_id)
                and (not current_user_only or view["creatorId"] == self.user["_id"])
            ]
            return _out(_page(views, paging))

    def get_configuration(self, configuration_id: str) -> dict:
        with self.lock:
            return _out(self._load(self.configurations, "upenn_collection", configuration_id))

    def _is_dataset(self, dataset_id: str) -> bool:
        folder = self.folders.get(dataset_id)
        return folder is not None and folder.get("meta", {}).get("subtype") == "contrastDataset"

    # --- annotations --------------------------------------------------------

    @staticmethod
    def _matches(doc: dict, query: AnnotationQuery) -> bool:
        return (
            isinstance(doc.get("datasetId"), Oid) and doc["datasetId"] == query.dataset_id
            and (query.shape is None or doc.get("shape") == query.shape)
            and all(tag in (doc.get("tags") or []) for tag in query.tags or [])
        )

    def _matching(self, query: AnnotationQuery) -> list[dict]:
        return [doc for doc in self.annotations.values() if self._matches(doc, query)]

    def annotation_page_json(self, query: AnnotationQuery, paging: Paging) -> bytes:
        """A page of the annotations matching `query`, as the response body: serialized
        once, not copied first (stored documents are replaced, never changed in place)."""
        with self.lock:
            if paging.sort == "_id" and paging.sortdir >= 0:
                page = _page_in_order(self._annotation_order, self.annotations,
                                      lambda doc: self._matches(doc, query), paging)
            else:
                page = _page(self._matching(query), paging)
            # Seeded documents may hold numpy numbers, which json.dumps takes as floats.
            return orjson.dumps(page, option=orjson.OPT_SERIALIZE_NUMPY)

    def count_annotations(self, query: AnnotationQuery) -> int:
        with self.lock:
            return len(self._matching(query))

    def get_annotation(self, annotation_id: str) -> dict:
        with self.lock:
            return _out(self._load(self.annotations, "upenn_annotation", annotation_id))

    def hydrate(self, annotation_ids: list[str]) -> list[dict]:
        with self.lock:
            return _out([self.annotations[key] for key in sorted(set(annotation_ids)) if key in self.annotations])

    def _insert_annotation(self, doc: dict) -> dict:
        annotation_id = self._ids.new()
        fields = {key: value for key, value in doc.items() if key != "_id"}
        stored = {"_id": annotation_id, **fields, "datasetId": Oid(fields["datasetId"])}
        self.annotations[annotation_id] = stored
        self._annotation_order.append(annotation_id)
        return stored

    def _check_annotation_datasets(self, docs: list[dict]) -> None:
        for dataset_id in {doc["datasetId"] for doc in docs}:
            if not self._is_dataset(dataset_id):
                raise validation_error("Annotation dataset ID is invalid")

    def create_annotation(self, doc: Any) -> dict:
        """POST upenn_annotation: the dataset folder is loaded (exc=True)
        before the schema is checked."""
        with self.lock:
            if isinstance(doc, dict) and "datasetId" in doc:
                doc = {**doc, "datasetId": convert_object_id(doc["datasetId"])}
                if doc["datasetId"] not in self.folders:
                    raise validation_error(f"No such folder: {doc['datasetId']}")
            validate_annotation(doc)
            self._check_annotation_datasets([doc])
            return _out(self._insert_annotation(doc))

    def create_annotations(self, docs: list[Any]) -> list[dict]:
        """POST upenn_annotation/multiple: all or nothing, in request order."""
        with self.lock:
            docs = [
                {**doc, "datasetId": convert_object_id(doc["datasetId"])}
                if isinstance(doc, dict) and "datasetId" in doc else doc
                for doc in docs
            ]
            dataset_ids = {doc["datasetId"] for doc in docs if isinstance(doc, dict) and "datasetId" in doc}
            if any(dataset_id not in self.folders for dataset_id in dataset_ids):
                raise ApiError(403, "Dataset(s) not found", "access")
            for doc in docs:
                validate_annotation(doc)
            self._check_annotation_datasets(docs)
            return _out([self._insert_annotation(doc) for doc in docs])

    def _updated(self, current: dict, changes: dict) -> dict:
        """The document after a PUT: only schema fields change. A given
        ``datasetId`` is stored as it came (a string), as the platform does."""
        kept = {key: value for key, value in changes.items() if key in ANNOTATION_FIELDS}
        merged = {**current, **kept}
        if self.put_keeps_only_schema_fields:
            merged = {key: value for key, value in merged.items() if key in ANNOTATION_FIELDS or key == "_id"}
        validate_annotation({**merged, "datasetId": str(merged["datasetId"])})
        if "datasetId" in kept:
            if not isinstance(kept["datasetId"], str):
                raise validation_error("data.datasetId must be objectId")
            if not self._is_dataset(kept["datasetId"].lower()):
                raise validation_error("Annotation dataset ID is invalid")
        return merged

    def update_annotation(self, annotation_id: str, changes: Any) -> None:
        if not isinstance(changes, dict):
            raise validation_error("data must be object")
        with self.lock:
            current = self._load(self.annotations, "upenn_annotation", annotation_id)
            self.annotations[annotation_id] = self._updated(current, changes)

    def update_annotations(self, entries: Any) -> None:
        """PUT upenn_annotation/multiple: ids kept; ``datasetId`` converted."""
        with self.lock:
            updates: dict[str, dict] = {}
            for entry in entries:
                if not isinstance(entry, dict):
                    raise validation_error("data must be object")
                annotation_id = str(entry.get("id", entry.get("_id", ""))).lower()
                if not is_object_id(annotation_id) or annotation_id not in self.annotations:
                    raise ApiError(403, f"Annotation not found or not writable: {annotation_id}", "access")
                changes = {key: value for key, value in entry.items() if key not in ("id", "_id")}
                merged = self._updated(self.annotations[annotation_id], changes)
                merged["datasetId"] = Oid(str(merged["datasetId"]).lower())
                updates[annotation_id] = merged
            self.annotations.update(updates)

    def delete_annotation(self, annotation_id: str) -> None:
        with self.lock:
            self._load(self.annotations, "upenn_annotation", annotation_id)
            del self.annotations[annotation_id]
            self.connections = {
                key: conn for key, conn in self.connections.items()
                if annotation_id not in (conn.get("parentId"), conn.get("childId"))
            }

    def delete_annotations(self, annotation_ids: Iterable[Any]) -> None:
        """DELETE upenn_annotation/multiple. Unknown ids are skipped. The
        platform's connection cleanup compares string ids with ObjectId
        fields and matches nothing, so connections are left as orphans."""
        ids = [convert_object_id(value) for value in annotation_ids]
        with self.lock:
            for annotation_id in ids:
                self.annotations.pop(annotation_id, None)

    def dataset_annotations(self, dataset_id: str) -> list[dict]:
        with self.lock:
            return _out(self._matching(AnnotationQuery(dataset_id)))

    def insert_annotation(self, doc: dict) -> str:
        """A direct insert, without validation (for seeding tests)."""
        dataset_id = str(doc["datasetId"]).lower()
        with self.lock:
            if dataset_id not in self.folders:
                raise KeyError(f"No folder {dataset_id}")
            return self._insert_annotation({**doc, "datasetId": dataset_id})["_id"]

    # --- connections --------------------------------------------------------

    def _insert_connection(self, doc: dict) -> dict:
        connection_id = self._ids.new()
        stored = {"_id": connection_id, **{k: v for k, v in doc.items() if k != "_id"}}
        self.connections[connection_id] = stored
        self._connection_order.append(connection_id)
        return stored

    def _check_connections(self, docs: list[Any]) -> None:
        for doc in docs:
            validate_connection(doc)
        for dataset_id in {doc["datasetId"] for doc in docs}:
            if not is_object_id(dataset_id):
                raise validation_error(f"Invalid ObjectId: {dataset_id}")
            if not self._is_dataset(dataset_id.lower()):
                raise validation_error("Connection dataset ID is invalid")
        for key, name in (("childId", "child"), ("parentId", "parent")):
            ids = {convert_object_id(doc[key]) for doc in docs}
            if not ids <= self.annotations.keys():
                raise validation_error(f"A {name} annotation does not exist")

    def create_connection(self, doc: Any) -> dict:
        with self.lock:
            self._check_connections([doc])
            return _out(self._insert_connection(doc))

    def create_connections(self, docs: list[Any]) -> list[dict]:
        with self.lock:
            self._check_connections(docs)
            return _out([self._insert_connection(doc) for doc in docs])

    def add_connection(self, doc: dict) -> str:
        """A direct insert, without validation (for seeding tests)."""
        with self.lock:
            return self._insert_connection(doc)["_id"]

    def _connections_where(self, predicate: Callable[[dict], bool]) -> list[dict]:
        return [conn for conn in self.connections.values() if predicate(conn)]

    def list_connections(self, filters: dict[str, str], paging: Paging) -> list[dict]:
        def matches(conn: dict) -> bool:
            node = filters.get("nodeAnnotationId")
            return (
                all(str(conn.get(key)) == value for key, value in filters.items() if key != "nodeAnnotationId")
                and (node is None or node in (conn.get("parentId"), conn.get("childId")))
            )

        with self.lock:
            if paging.sort == "_id" and paging.sortdir >= 0:
                return _out(_page_in_order(self._connection_order, self.connections, matches, paging))
            return _out(_page(self._connections_where(matches), paging))

    def get_connection(self, connection_id: str) -> dict:
        with self.lock:
            return _out(self._load(self.connections, "annotation_connection", connection_id))

    def delete_connection(self, connection_id: str) -> None:
        with self.lock:
            self._load(self.connections, "annotation_connection", connection_id)
            del self.connections[connection_id]

    def delete_connections(self, connection_ids: Iterable[Any]) -> None:
        ids = [convert_object_id(value) for value in connection_ids]
        with self.lock:
            for connection_id in ids:
                self.connections.pop(connection_id, None)

    def dataset_connections(self, dataset_id: str) -> list[dict]:
        with self.lock:
            return _out(self._connections_where(lambda conn: str(conn.get("datasetId")) == dataset_id))

    def connect_to_nearest(self, body: dict) -> list[dict]:
        """POST annotation_connection/connectTo, as the platform runs it:
        candidates exclude *every* id of the request, must have the same
        dataset and exactly the same ``location`` (key order included, as
        MongoDB compares embedded documents), any of the tags (none: no tag
        filter) and the channel (None: any). Unknown ids are skipped."""
        ids = [convert_object_id(value) for value in body["annotationsIds"]]
        tags, channel = body["tags"], body["channelId"]
        excluded = set(ids)
        with self.lock:
            created = []
            for annotation_id in ids:
                annotation = self.annotations.get(annotation_id)
                if annotation is None:
                    continue
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
            return _out(created)

    # --- worker interfaces --------------------------------------------------

    def set_interface(self, image: str, interface: Any) -> dict:
        with self.lock:
            previous = self.interfaces.get(image)
            doc = {
                "_id": previous["_id"] if previous else self._ids.new(),
                "image": image, "interface": copy.deepcopy(interface),
            }
            self.interfaces[image] = doc
            return _out(doc)

    def get_interface(self, image: str) -> dict | None:
        with self.lock:
            doc = self.interfaces.get(image)
            return _out(doc) if doc else None

    def all_interfaces(self) -> dict[str, Any]:
        with self.lock:
            return {image: _out(doc["interface"]) for image, doc in self.interfaces.items()}

