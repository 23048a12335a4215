"""The user's undo history, as the plugin keeps it (models/history.py, helpers/proxiedModel.py).

Every recordable write with a dataset id (creates, deletes and updates of annotations and
connections) is one entry of the calling user, holding each changed document before and
after. A new entry first drops the user's undone entries and any entry older than an hour,
then the user's oldest beyond 10. Undo takes the user's newest entry in the dataset not yet
undone and puts every document back as it was before: a deleted annotation comes back with
its id; a created one is removed. Redo does the opposite with the oldest undone entry.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Callable

MAX_ENTRIES_PER_USER = 10
MAX_AGE_SECONDS = 3600.0


@dataclass
class Change:
    model: str            # "upenn_annotation" or "annotation_connection"
    document_id: str
    before: dict | None   # None: the write created it
    after: dict | None    # None: the write deleted it


@dataclass
class Entry:
    action: str
    user_id: str
    dataset_id: str
    changes: list[Change]
    date: float = field(default_factory=time.time)
    undone: bool = False


# Puts a document back: (model, document id, the document or None to remove it).
Restore = Callable[[str, str, "dict | None"], None]


def _girder_date(seconds: float) -> str:
    """A date as Girder answers one the database stored (UTC, to the millisecond)."""
    date = datetime.fromtimestamp(seconds, timezone.utc)
    return date.replace(microsecond=date.microsecond // 1000 * 1000).isoformat()


class History:
    """Every user's entries, oldest first. The caller (`Store`) holds the lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._entries: list[Entry] = []
        self._clock = clock

    def record(self, action: str, user_id: str, dataset_id: str, changes: list[Change]) -> None:
        now = self._clock()
        self._entries = [
            entry for entry in self._entries
            if entry.date >= now - MAX_AGE_SECONDS and not (entry.user_id == user_id and entry.undone)
        ]
        mine = [entry for entry in self._entries if entry.user_id == user_id]
        for stale in mine[:max(0, len(mine) - (MAX_ENTRIES_PER_USER - 1))]:
            self._entries.remove(stale)
        self._entries.append(Entry(action, user_id, dataset_id, copy.deepcopy(changes), now))

    def entries(self, user_id: str, dataset_id: str) -> list[dict]:
        """GET history?datasetId=: the user's entries in the dataset, newest first."""
        return [
            {"actionName": entry.action, "actionDate": _girder_date(entry.date), "isUndone": entry.undone}
            for entry in reversed(self._entries) if entry.user_id == user_id and entry.dataset_id == dataset_id
        ]

    def undo(self, user_id: str, dataset_id: str, restore: Restore) -> None:
        candidates = [entry for entry in self._entries
                      if entry.user_id == user_id and entry.dataset_id == dataset_id and not entry.undone]
        if candidates:
            self._apply(candidates[-1], restore, undo=True)

    def redo(self, user_id: str, dataset_id: str, restore: Restore) -> None:
        candidates = [entry for entry in self._entries
                      if entry.user_id == user_id and entry.dataset_id == dataset_id and entry.undone]
        if candidates:
            self._apply(candidates[0], restore, undo=False)

    @staticmethod
    def _apply(entry: Entry, restore: Restore, undo: bool) -> None:
        for change in sorted(entry.changes, key=lambda change: change.model):
            replacement = change.before if undo else change.after
            restore(change.model, change.document_id, copy.deepcopy(replacement))
        entry.undone = undo
