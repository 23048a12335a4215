"""Late twins: what a create sent again after an unknown outcome made twice, because the
first send was applied after all. Every location that re-sent something is swept before
it is reported done, the job once more at its end; a later run finds any that landed
after that (as duplicates, `resume`)."""

from __future__ import annotations

from .connections import Connections
from .creates import Creates
from .ledger import Ledger, Resent
from .replace import Replacer
from .writes import Platform


class LateTwins:
    """Removes the refined polygons and connections late writes made twice."""

    def __init__(self, platform: Platform, ledger: Ledger, index: Connections, creates: Creates, replacer: Replacer):
        self.platform = platform
        self.ledger = ledger
        self.index = index
        self.creates = creates
        self.replacer = replacer

    def sweep(self, entries: list[Resent]) -> None:
        """Delete what the re-sent creates of `entries` made twice, and every extra
        refined polygon still waiting to be removed."""
        ledger = self.ledger
        for resent in entries:
            if resent.kept:
                ledger.deletes.update(
                    refined_id
                    for source, ids in self.creates.find(resent.cursor, set(resent.kept)).items()
                    for refined_id in ids if refined_id != resent.kept[source]
                )
            if resent.connections:
                extra = [record.id for record in self.platform.connections_since(resent.cursor)
                         if record.ends in resent.connections and record.id != resent.connections[record.ends]]
                ledger.result.duplicates_removed += len(extra) - len(self.replacer.delete_connections(extra))
        if ledger.deletes:
            wanted = sorted(ledger.deletes)
            # Connections made to them (none, normally) go first, as for any annotation.
            touching = [c.id for c in self.index.touching(wanted)]
            if not touching or not self.replacer.delete_connections(touching):
                left = set(self.replacer.delete_annotations(wanted))
                ledger.result.duplicates_removed += len(set(wanted) - left)
                ledger.deletes = left
