"""One record of a job's writes: what is confirmed, what waits, and what is left undone.

Every part of write-back (creates, connections, replace, the late-twin sweep) notes here
what the platform confirmed and what it still owes; the end of the job retries what
waits, and `left` counts what is still undone for the job's last message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from .parameters import Location
from .resume import Counterpart


# What a replacement removes: an original, a refinement of an outline the user has since
# changed, a second refinement of the same original.
ORIGINAL, STALE, DUPLICATE = "original", "stale", "duplicate"


@dataclass
class WriteResult:
    """The counts the job reports."""

    created: int = 0
    created_doubtful: int = 0
    not_saved: int = 0
    deleted: int = 0  # originals replaced by their refinement
    kept_originals: int = 0  # originals whose replacement is left undone
    completed: int = 0  # originals an earlier run refined, replaced now
    connected: int = 0
    connections_skipped: int = 0  # could not be moved: their other end no longer exists
    duplicates_removed: int = 0  # refined polygons and connections a late write made twice
    stale_removed: int = 0  # refinements of an outline the user has since changed
    counterparts_gone: int = 0  # originals kept: their refinement was deleted while the job ran
    delete_failures: list[str] = field(default_factory=list)
    connect_failures: list[str] = field(default_factory=list)


@dataclass
class PendingCreate:
    """A location whose refined polygons are not all confirmed yet: the rest of its
    write-back (connect, replace) waits for them."""

    location: Location
    refined: list  # the location's `creates.Refined`
    earlier: list[tuple[Mapping, Counterpart]]
    documents: list[dict]  # not yet confirmed
    cursor: str | None  # before their first send
    created: dict[str, str]  # original id -> refined id, confirmed so far


@dataclass
class Resent:
    """Creates re-sent after an unknown outcome: where their late twins may appear."""

    cursor: str | None
    kept: dict[str, str]  # original id -> the refined id this job confirmed
    connections: dict[tuple, str] = field(default_factory=dict)  # ends -> the connection id kept


@dataclass(frozen=True)
class Left:
    """What the job could not do, counted."""

    unsaved: int = 0  # refined polygons not confirmed saved (their originals untouched)
    kept_originals: int = 0  # originals still next to their refined version
    connections: int = 0  # connections to nearest parents not made
    leftovers: int = 0  # extra refined polygons (duplicates, stale ones) not removed
    unswept: bool = False  # what late writes may have made twice was not looked for

    def __bool__(self) -> bool:
        return bool(self.unsaved or self.kept_originals or self.connections or self.leftovers or self.unswept)


class Ledger:
    """The job-wide record write-back keeps (one per job)."""

    def __init__(self) -> None:
        self.result = WriteResult()
        self.present: set[str] = set()  # annotations known to exist
        self.gone: set[str] = set()  # annotations this job deleted
        self.replacements: dict[str, tuple[str, str]] = {}  # waiting: old id -> (its successor, what it is)
        self.connections: list[dict] = []  # connections to nearest parents not made yet
        self.deletes: set[str] = set()  # extra refined polygons still to remove
        self.pending: list[PendingCreate] = []  # creates not confirmed yet
        self.resent: list[Resent] = []  # where late twins may appear
        self.visited: set[Location] = set()
        self.skipped_links: set[tuple[str, str]] = set()  # moved connections whose other end is gone
        self.swept = False  # the end of the job looked for late twins
        self.failures: list[str] = []  # final refusals at the end of the job

    def deleted(self, annotation_id: str) -> None:
        self.present.discard(annotation_id)
        self.gone.add(annotation_id)

    def skip_link(self, parent_id: str, child_id: str) -> None:
        self.skipped_links.add((parent_id, child_id))
        self.result.connections_skipped = len(self.skipped_links)

    def waiting(self, replaced: Mapping[str, str], kind: str) -> None:
        """`replaced` (old id -> successor), of `kind`, waits for the end of the job."""
        for old, new in replaced.items():
            self.replacements[old] = (new, kind)

    def replaced(self, old_ids) -> None:
        for old in old_ids:
            self.replacements.pop(old, None)

    def successor_gone(self, old_id: str, kind: str) -> None:
        """`old_id` stays: what was to take its place no longer exists (never neither version)."""
        self.replacements.pop(old_id, None)
        if kind == ORIGINAL:
            self.result.counterparts_gone += 1

    def waiting_of(self, kind: str) -> dict[str, str]:
        """The replacements of `kind` still waiting: old id -> successor."""
        return {old: new for old, (new, of_kind) in self.replacements.items() if of_kind == kind}

    def kept_originals(self) -> int:
        """Originals still waiting to be replaced."""
        return sum(1 for _, kind in self.replacements.values() if kind == ORIGINAL)

    def left(self) -> Left:
        """What is undone."""
        return Left(
            unsaved=sum(len(p.documents) for p in self.pending),
            kept_originals=self.kept_originals(),
            connections=len(self.connections),
            leftovers=len(self.deletes) + sum(1 for _, kind in self.replacements.values() if kind != ORIGINAL),
            unswept=bool(self.resent) and not self.swept,
        )

    def reasons(self) -> list[str]:
        """Why writes were refused or not confirmed, oldest first."""
        return self.result.delete_failures + self.result.connect_failures + self.failures
