"""Replacing annotations by their successors: an original by its refinement, a stale or
duplicate refinement by the one kept.

An annotation is deleted only when its successor is confirmed to exist at that moment:
each chunk first asks the platform about the successors this job did not itself just
create (a user may delete a refinement in the app while the job works elsewhere); one
that is gone keeps its annotation. Then, for each chunk: the connections that touch the annotations are copied onto their
successors (only those whose both ends exist; a connection whose other end is gone, an
orphan the platform's bulk delete left, cannot be moved and is counted), then deleted,
then the annotations themselves. What the write policy could not finish waits in the
ledger for the end of the job.
"""

from __future__ import annotations

from .connections import Connections, Linker, moved_connections
from .errors import WorkerError
from .ledger import Ledger
from .nimbus import iter_chunks
from .parameters import RefineParameters
from .writes import Platform, WritePolicy, server_message

DELETE_CHUNK = 1000


class Replacer:
    """Moves connections and deletes what was replaced."""

    def __init__(self, platform: Platform, params: RefineParameters, policy: WritePolicy, ledger: Ledger,
                 index: Connections, linker: Linker):
        self.platform = platform
        self.params = params
        self.policy = policy
        self.ledger = ledger
        self.index = index
        self.linker = linker

    def _existing(self, annotation_ids: set[str], ask_again: bool = False) -> set[str]:
        """Which of `annotation_ids` exist, asking the server only about those this job
        has not seen (about all of them with `ask_again`)."""
        ledger = self.ledger
        if ask_again:
            ledger.present -= annotation_ids
        unknown = [a for a in annotation_ids if a not in ledger.present and a not in ledger.gone]
        present = {a for a in annotation_ids if a in ledger.present}
        if unknown:
            found = self.platform.existing_annotations(sorted(unknown))
            ledger.present.update(found)
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
                self.ledger.skip_link(connection["parentId"], connection["childId"])
        return movable

    def delete_annotations(self, annotation_ids: list[str]) -> list[str]:
        """Delete them; those still present after the write policy."""
        left = self.policy.delete(annotation_ids, DELETE_CHUNK, self.platform.delete_annotations,
                                  self.platform.existing_annotations)
        for deleted in set(annotation_ids) - set(left):
            self.ledger.deleted(deleted)
        return left

    def delete_connections(self, connection_ids: list[str]) -> list[str]:
        left = self.policy.delete(connection_ids, DELETE_CHUNK, self.platform.delete_connections,
                                  self.platform.existing_connections)
        for deleted in set(connection_ids) - set(left):
            self.index.remove(deleted)
        return left

    def _successors_exist(self, chunk: dict[str, str], kind: str, fresh: frozenset[str] | set[str]) -> dict[str, str]:
        """The part of `chunk` whose successors exist now (one request for those not
        `fresh`); the rest stays, noted in the ledger."""
        asked = sorted({new for new in chunk.values() if new not in fresh})
        if not asked:
            return chunk
        found = self.platform.existing_annotations(asked)
        self.ledger.present.update(found)
        self.ledger.present.difference_update(set(asked) - found)
        kept = {old: new for old, new in chunk.items() if new in fresh or new in found}
        for old in chunk.keys() - kept.keys():
            self.ledger.successor_gone(old, kind)
        return kept

    def _replace_chunk(self, chunk: dict[str, str]) -> str | None:
        """Move the connections of the annotations in `chunk` (old id -> the id that takes
        its place) to their successors, then delete them; None when done, else why not."""
        touching = self.index.touching(chunk)
        for ask_again in (False, True):
            # Asked again, only what the first try did not make: the index holds what it made.
            moved = moved_connections(touching, chunk, self.index, self.params.dataset_id)
            try:
                if self.linker.create(self._with_both_ends(moved, ask_again)):
                    return self.policy.unconfirmed("creating the moved connections was not confirmed")
                break
            except Exception as error:  # refused: an end may have vanished since it was checked
                if ask_again or isinstance(error, WorkerError):
                    return server_message(error)
        if touching and self.delete_connections([c.id for c in touching]):
            return self.policy.unconfirmed("deleting the moved connections was not confirmed")
        if self.delete_annotations(list(chunk)):
            return self.policy.unconfirmed("deleting them was not confirmed")
        return None

    def replace(self, replaced: dict[str, str], kind: str, fresh: frozenset[str] | set[str] = frozenset()) -> int:
        """Replace the annotations of `replaced` (old id -> new id; each a `ledger` ORIGINAL,
        STALE or DUPLICATE: `kind`) by their successors; returns how many were deleted.
        `fresh`: successors this job has just created (not asked about again). What could
        not be done waits for the end of the job."""
        deleted = 0
        for chunk_ids in iter_chunks(list(replaced), DELETE_CHUNK):
            chunk = {old: replaced[old] for old in chunk_ids}
            try:
                chunk = self._successors_exist(chunk, kind, fresh)
                failure = self._replace_chunk(chunk) if chunk else None
            except Exception as error:  # a final refusal (or the access it needs)
                failure = server_message(error)
            if failure is None:
                deleted += len(chunk)
                self.ledger.replaced(chunk)
            else:
                self.ledger.result.delete_failures.append(failure)
                self.ledger.waiting(chunk, kind)
        return deleted

