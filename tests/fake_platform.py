"""An in-memory platform for write-back unit tests: what `writeback.Platform` asks for,
with the server's rules that matter to write-back (create in request order, all or
nothing; unknown ids skipped on delete; connections need both ends) and scripted faults.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from sam2_refine.nimbus import MARKER_KEY, OutcomeUnknown


class HttpError(Exception):
    def __init__(self, status: int, message: str = "refused"):
        super().__init__(message)
        self.status = status
        self.responseText = f'{{"message": "{message}"}}'


class FakePlatform:
    def __init__(self, dataset_id: str = "d" * 24):
        self.dataset_id = dataset_id
        self.annotations: dict[str, dict] = {}
        self.connections: dict[str, dict] = {}
        self.calls: list[str] = []
        self._ids = (f"{n:024x}" for n in itertools.count(1))
        # method name -> callables run before the call; each may raise (a fault) or
        # return "after" to apply the call and then raise OutcomeUnknown.
        self._faults: dict[str, list[Callable[[], str | None]]] = {}

    # --- seeding and inspection ------------------------------------------------

    def add(self, coordinates, tags=(), shape="polygon", location=None, channel=0, **extra) -> str:
        annotation_id = next(self._ids)
        self.annotations[annotation_id] = {
            "_id": annotation_id, "shape": shape, "tags": list(tags), "channel": channel,
            "location": location or {"XY": 0, "Z": 0, "Time": 0},
            "coordinates": [{"x": float(x), "y": float(y)} for x, y in coordinates],
            "datasetId": self.dataset_id, **extra,
        }
        return annotation_id

    def connect(self, parent: str, child: str, tags=(), label=None) -> str:
        connection_id = next(self._ids)
        self.connections[connection_id] = {"_id": connection_id, "parentId": parent, "childId": child,
                                           "datasetId": self.dataset_id, "tags": list(tags), "label": label}
        return connection_id

    def links(self) -> list[tuple[str, str]]:
        return sorted((c["parentId"], c["childId"]) for c in self.connections.values())

    def refined_of(self, original_id: str) -> list[dict]:
        return [a for a in self.annotations.values() if str(a.get(MARKER_KEY, "")).endswith(f"/{original_id}")]

    def fail(self, method: str, error: Exception | None = None, times: int = 1, after_apply: bool = False) -> None:
        def fault() -> str | None:
            if after_apply:
                return "after"
            raise error

        self._faults.setdefault(method, []).extend([fault] * times)

    def _enter(self, method: str) -> bool:
        """Record the call; True when the call must be applied and then reported unknown."""
        self.calls.append(method)
        queue = self._faults.get(method)
        if queue:
            return queue.pop(0)() == "after"
        return False

    # --- the protocol ------------------------------------------------------------

    def create_annotations(self, documents: list[dict]) -> list[dict]:
        lose_answer = self._enter("create_annotations")
        for document in documents:
            assert {"coordinates", "tags", "channel", "location", "shape", "datasetId"} <= set(document)
            assert document["shape"] in ("point", "line", "polygon", "rectangle")
            assert all(isinstance(tag, str) for tag in document["tags"])
        created = []
        for document in documents:
            annotation_id = next(self._ids)
            self.annotations[annotation_id] = {**document, "_id": annotation_id}
            created.append(dict(self.annotations[annotation_id]))
        if lose_answer:
            raise OutcomeUnknown("answer lost")
        return created

    def marked_annotations(self, run_key: str, tags: list[str]) -> dict[str, dict]:
        self._enter("marked_annotations")
        prefix = f"{run_key}/"
        return {
            a[MARKER_KEY][len(prefix):]: dict(a) for a in self.annotations.values()
            if str(a.get(MARKER_KEY, "")).startswith(prefix) and all(t in a["tags"] for t in tags)
            and a["shape"] == "polygon"
        }

    def tagged_annotations(self, any_of_tags: tuple[str, ...]) -> list[dict]:
        self._enter("tagged_annotations")
        return [dict(a) for a in self.annotations.values() if not any_of_tags or set(any_of_tags) & set(a["tags"])]

    def polygons(self, any_of_tags: tuple[str, ...]) -> list[dict]:
        return [a for a in self.tagged_annotations(any_of_tags) if a["shape"] in ("polygon", "rectangle")]

    def dataset_connections(self) -> list[dict]:
        self._enter("dataset_connections")
        return [dict(c) for c in self.connections.values()]

    def create_connections(self, connections: list[dict]) -> list[dict]:
        self._enter("create_connections")
        for connection in connections:
            if connection["parentId"] not in self.annotations or connection["childId"] not in self.annotations:
                raise HttpError(400, "A parent or child annotation does not exist")
        created = []
        for connection in connections:
            connection_id = next(self._ids)
            self.connections[connection_id] = {**connection, "_id": connection_id}
            created.append(dict(self.connections[connection_id]))
        return created

    def delete_connections(self, connection_ids: list[str]) -> None:
        self._enter("delete_connections")
        for connection_id in connection_ids:
            self.connections.pop(connection_id, None)

    def delete_annotations(self, annotation_ids: list[str]) -> None:
        self._enter("delete_annotations")
        for annotation_id in annotation_ids:
            self.annotations.pop(annotation_id, None)
