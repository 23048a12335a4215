"""An in-memory platform for write-back unit tests: what `writes.Platform` asks for,
with the server's rules that matter to write-back (create in request order, all or
nothing; unknown ids skipped on delete; connections need both ends; ids in creation
order) and scripted faults, on a clock that only moves when write-back waits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from sam2_refine.nimbus import MARKER_KEY, OutcomeUnknown, PayloadTooLarge, record_of, ConnectionRecord
from sam2_refine.parameters import Location
from sam2_refine.writes import Clock


class HttpError(Exception):
    def __init__(self, status: int, message: str = "refused"):
        super().__init__(message)
        self.status = status
        self.responseText = f'{{"message": "{message}"}}'


class FakeClock(Clock):
    """Seconds that pass only when write-back sleeps."""

    def __init__(self) -> None:
        self.seconds = 0.0
        super().__init__(now=lambda: self.seconds, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.seconds += seconds


class FakePlatform:
    def __init__(self, dataset_id: str = "d" * 24):
        self.dataset_id = dataset_id
        self.clock = FakeClock()
        self.annotations: dict[str, dict] = {}
        self.connections_by_id: dict[str, dict] = {}
        self.calls: list[str] = []
        self.bodies: list[tuple[str, list]] = []  # (method, request body) of every write
        self.max_body_items: int | None = None  # larger write bodies get a 413
        self._ids = (f"{n:024x}" for n in itertools.count(1))
        self._newest = "0" * 24
        # method name -> callables run before the call; each may raise (a fault) or
        # return how the call goes wrong: "after" (applied, then a 502), ("late",
        # seconds) (no answer in time, applied that much later), "lost" (no answer in
        # time, never applied), "error" (a 503, not applied), ("drop", k) (applied, the
        # answer without its k-th element).
        self._faults: dict[str, list[Callable[[], object]]] = {}
        self._late: list[tuple[float, Callable[[], None]]] = []

    # --- seeding and inspection ------------------------------------------------

    def _new_id(self) -> str:
        self._newest = next(self._ids)
        return self._newest

    def add(self, coordinates, tags=(), shape="polygon", location=None, channel=0, **extra) -> str:
        annotation_id = self._new_id()
        self.annotations[annotation_id] = {
            "_id": annotation_id, "shape": shape, "tags": list(tags), "channel": channel,
            "location": location or {"XY": 0, "Z": 0, "Time": 0},
            "coordinates": [{"x": float(x), "y": float(y)} for x, y in coordinates],
            "datasetId": self.dataset_id, **extra,
        }
        return annotation_id

    def connect(self, parent: str, child: str, tags=(), label=None) -> str:
        connection_id = self._new_id()
        self.connections_by_id[connection_id] = {"_id": connection_id, "parentId": parent, "childId": child,
                                                 "datasetId": self.dataset_id, "tags": list(tags), "label": label}
        return connection_id

    def links(self) -> list[tuple[str, str]]:
        return sorted((c["parentId"], c["childId"]) for c in self.connections_by_id.values())

    def refined_of(self, original_id: str) -> list[dict]:
        return [a for a in self.annotations.values() if str(a.get(MARKER_KEY, "")).endswith(f"/{original_id}")]

    def fail(self, method: str, error: Exception | None = None, times: int = 1, after_apply: bool = False,
             late: float | None = None, lost: bool = False, unavailable: bool = False,
             after_calls: int = 0, answer_without: int | None = None) -> None:
        """The next `times` calls of `method` (after the next `after_calls`) go wrong."""
        def fault() -> object:
            if after_apply:
                return "after"
            if late is not None:
                return ("late", late)
            if lost:
                return "lost"
            if unavailable:
                return "error"
            if answer_without is not None:
                return ("drop", answer_without)
            raise error

        self._faults.setdefault(method, []).extend([lambda: None] * after_calls + [fault] * times)

    def clear_faults(self, method: str) -> None:
        """The calls of `method` from now on go right (until `fail` says otherwise)."""
        self._faults.pop(method, None)

    def _apply_due(self) -> None:
        due = [(at, apply) for at, apply in self._late if at <= self.clock.seconds]
        self._late = [(at, apply) for at, apply in self._late if at > self.clock.seconds]
        for _, apply in due:
            apply()

    def finish_late_writes(self) -> None:
        """Apply every write still held back (the server finishing what it was doing)."""
        self._late, pending = [], self._late
        for _, apply in pending:
            apply()

    def _enter(self, method: str) -> object:
        """Record the call; how it goes wrong, if it does."""
        self._apply_due()
        self.calls.append(method)
        queue = self._faults.get(method)
        if queue:
            return queue.pop(0)()
        return None

    def _write(self, method: str, body: list, apply: Callable[[], list]) -> list:
        fault = self._enter(method)
        self.bodies.append((method, list(body)))
        if self.max_body_items is not None and len(body) > self.max_body_items:
            raise PayloadTooLarge("HTTP 413")
        if fault == "lost":
            raise OutcomeUnknown("no answer within the time limit")
        if fault == "error":
            raise OutcomeUnknown("HTTP 503", may_apply_later=False)
        if isinstance(fault, tuple) and fault[0] == "drop":
            result = apply()
            del result[fault[1]]
            return result
        if isinstance(fault, tuple):
            self._late.append((self.clock.seconds + fault[1], apply))
            raise OutcomeUnknown("no answer in time")
        result = apply()
        if fault == "after":
            raise OutcomeUnknown("HTTP 502", may_apply_later=False)
        return result

    # --- the protocol: reads ------------------------------------------------------

    def cursor(self) -> str | None:
        return self._newest

    def _records(self, keep: Callable[[dict], bool], locations) -> list:
        wanted = None if locations is None else set(locations)
        return [record_of(a) for a in list(self.annotations.values())
                if keep(a) and (wanted is None or Location.from_dict(a.get("location")) in wanted)]

    def tagged_annotations(self, any_of_tags: tuple[str, ...], locations=None) -> list:
        self._enter("tagged_annotations")
        return self._records(lambda a: not any_of_tags or bool(set(any_of_tags) & set(a["tags"])), locations)

    def polygons(self, any_of_tags: tuple[str, ...], locations=None) -> list:
        self._enter("polygons")
        return self._records(lambda a: a["shape"] in ("polygon", "rectangle")
                             and (not any_of_tags or bool(set(any_of_tags) & set(a["tags"]))), locations)

    def output_polygons(self, tags: tuple[str, ...], locations=None) -> list:
        self._enter("output_polygons")
        return self._records(lambda a: a["shape"] == "polygon" and all(t in a["tags"] for t in tags), locations)

    def annotations_since(self, cursor: str | None, tags: tuple[str, ...]):
        self._enter("annotations_since")
        return self._records(lambda a: a["_id"] > (cursor or "") and a["shape"] == "polygon"
                             and all(t in a["tags"] for t in tags), None)

    def existing_annotations(self, annotation_ids: list[str]) -> set[str]:
        self._enter("existing_annotations")
        return {a for a in annotation_ids if a in self.annotations}

    def connections(self, touching=None) -> list:
        self._enter("connections")
        return [ConnectionRecord.of(c) for c in list(self.connections_by_id.values())
                if touching is None or c["parentId"] in touching or c["childId"] in touching]

    def connections_since(self, cursor: str | None):
        self._enter("connections_since")
        return [ConnectionRecord.of(c) for c in list(self.connections_by_id.values()) if c["_id"] > (cursor or "")]

    def existing_connections(self, connection_ids: list[str]) -> set[str]:
        self._enter("existing_connections")
        return {c for c in connection_ids if c in self.connections_by_id}

    # --- the protocol: writes ------------------------------------------------------

    def create_annotations(self, documents: list[dict]) -> list[dict]:
        for document in documents:
            assert {"coordinates", "tags", "channel", "location", "shape", "datasetId"} <= set(document)
            assert document["shape"] in ("point", "line", "polygon", "rectangle")
            assert all(isinstance(tag, str) for tag in document["tags"])

        return self._write("create_annotations", documents, lambda: self._insert(self.annotations, documents))

    def create_connections(self, connections: list[dict]) -> list[dict]:
        def apply() -> list[dict]:
            for connection in connections:
                if connection["parentId"] not in self.annotations or connection["childId"] not in self.annotations:
                    raise HttpError(400, "A parent or child annotation does not exist")
            return self._insert(self.connections_by_id, connections)

        return self._write("create_connections", connections, apply)

    def _insert(self, table: dict[str, dict], documents: list[dict]) -> list[dict]:
        """Store each document under a new id; the stored copies, in order."""
        created = []
        for document in documents:
            new_id = self._new_id()
            table[new_id] = {**document, "_id": new_id}
            created.append(dict(table[new_id]))
        return created

    @staticmethod
    def _remove(table: dict[str, dict], ids: list[str]) -> list:
        for removed in ids:
            table.pop(removed, None)
        return []

    def delete_connections(self, connection_ids: list[str]) -> None:
        self._write("delete_connections", connection_ids, lambda: self._remove(self.connections_by_id, connection_ids))

    def delete_annotations(self, annotation_ids: list[str]) -> None:
        # Connections stay: the platform's bulk delete leaves them as orphans.
        self._write("delete_annotations", annotation_ids, lambda: self._remove(self.annotations, annotation_ids))
