"""The dataset's annotation connections: reads reduced to compact records, and writes."""

from __future__ import annotations

from collections.abc import Collection, Iterator

from .nimbus_records import ConnectionRecord
from .nimbus_transport import Rest


class Connections:
    """The annotation connections of one dataset."""

    def __init__(self, rest: Rest, dataset_id: str | None):
        self._rest = rest
        self._dataset_id = dataset_id

    def _listing(self, after: str | None = None) -> Iterator[ConnectionRecord]:
        query = {"datasetId": self._dataset_id}
        if after is not None:
            query["afterId"] = after
        for document in self._rest.listing("read annotation connections", "annotation_connection", query):
            yield ConnectionRecord.of(document)

    def touching(self, annotation_ids: Collection[str] | None = None) -> list[ConnectionRecord]:
        """The dataset's connections with an end in `annotation_ids` (all if None), paged
        with the `_id` cursor and reduced to compact records as they arrive."""
        return [
            connection for connection in self._listing()
            if annotation_ids is None or connection.parent_id in annotation_ids
            or connection.child_id in annotation_ids
        ]

    def since(self, cursor: str | None) -> Iterator[ConnectionRecord]:
        """The connections created after `cursor`."""
        return self._listing(after=cursor)

    def existing(self, connection_ids: list[str]) -> set[str]:
        """Which of `connection_ids` the dataset still holds."""
        return self._rest.existing("annotation_connection", connection_ids)

    def create(self, connections: list[dict]) -> list[dict]:
        return self._rest.created(list(self._rest.write("POST", "annotation_connection/multiple", connections)))

    def delete(self, connection_ids: list[str]) -> None:
        """DELETE one chunk; the platform answers with a JSON string (its delete result)."""
        self._rest.write("DELETE", "annotation_connection/multiple", connection_ids)
