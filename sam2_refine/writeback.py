"""Writing refined polygons back, one location at a time, without ever losing an original.

Order at each location: create the refined polygons (`creates`); connect them to their
nearest parents if the tool asks (`connections`); then, only for originals whose accepted
counterpart is confirmed, move their connections to the counterpart and delete them
(`replace`). A doubtful refinement never replaces its original. A process killed at any
moment leaves at worst both versions, never neither, and a later run with the same
settings completes what was left (`resume`).

Every write goes through one policy (`writes.WritePolicy`: sent once, an unknown outcome
verified, only what is missing sent again); what it confirms and what it leaves is kept
in one record (`ledger.Ledger`). A create the server applied after all (a late write)
leaves a second polygon with the same marker: every location that re-sent something is
swept for those before it is reported done, the job once more at its end (`late_twins`).
Work the policy could not finish is retried once at the end of the job (`finish`); what
is still left then ends the job with `Unfinished`, worded by `summary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from . import summary
from .connections import Connections, Linker, vertex_centroid
from .creates import Creates, NotConfirmed, Refined
from .errors import WorkerError
from .late_twins import LateTwins
from .ledger import DUPLICATE, ORIGINAL, STALE, Ledger, WriteResult
from .messages import Reporter
from .parameters import Location, RefineParameters
from .replace import Replacer
from .resume import Counterpart, EarlierWork, JobRecords
from .writes import Clock, Platform, WritePolicy, server_message


class Unfinished(WorkerError):
    """The job could not do everything asked; running it again completes it."""


class WriteBack:
    """One job's write-back: `prepare` once, `write_location` for each location (one at a
    time, in order, from any one thread), then `finish`."""

    def __init__(self, platform: Platform, params: RefineParameters, key: str, reporter: Reporter,
                 clock: Clock | None = None):
        self.platform = platform
        self.params = params
        self.key = key
        self.reporter = reporter
        self.earlier = EarlierWork()
        self.policy = WritePolicy(clock or Clock())
        self.ledger = Ledger()
        self.connections = Connections()
        self.creates = Creates(platform, params, key, self.policy, self.ledger)
        self.linker = Linker(platform, params, self.policy, self.ledger, self.connections)
        self.replacer = Replacer(platform, params, self.policy, self.ledger, self.connections, self.linker)
        self.late_twins = LateTwins(platform, self.ledger, self.connections, self.creates, self.replacer)

    @property
    def result(self) -> WriteResult:
        return self.ledger.result

    def prepare(self, job: JobRecords | None = None) -> None:
        """Read what write-back must know beforehand: the connections that touch the job's
        annotations (to move them and to never make one twice) and, with connect-to-nearest,
        the candidate parents at the job's locations. Without `job`: every connection and
        parent of the dataset."""
        locations = None
        touching = None
        if job is not None:
            self.earlier = job.earlier
            locations = list(job.originals)
            originals = [o.id for found in job.originals.values() for o in found]
            touching = set(originals) | job.earlier.refined_ids
            self.ledger.present.update(touching)
        if self.params.delete_originals or self.params.connect_to is not None or self.earlier.duplicates \
                or self.earlier.stale:
            for record in self.platform.connections(touching):
                self.connections.add(record)
        if self.params.connect_to is not None:
            self.linker.read_parents(locations, self.key)

    # --- one location ----------------------------------------------------------

    def write_location(
        self, location: Location, refined: list[Refined], earlier: Iterable[tuple[Mapping, Counterpart]] = ()
    ) -> None:
        """Save the location's refined polygons, connect them, then replace the originals
        whose accepted counterpart is confirmed. `earlier` holds originals that a run with
        the same settings already refined: they are connected and replaced if that was
        left undone, never refined or created again. Raises WorkerError when the server
        refuses the refined polygons (nothing is deleted for this location then); what
        the server did not confirm in time is left for `finish`."""
        self.ledger.visited.add(location)
        earlier = list(earlier)
        resent_before = len(self.ledger.resent)
        try:
            created = self.creates.create(location, refined, earlier)
        except NotConfirmed as unconfirmed:
            self.ledger.pending.append(unconfirmed.pending)
            return
        self._after_create(location, refined, earlier, created)
        if len(self.ledger.resent) > resent_before:
            try:
                self.late_twins.sweep(self.ledger.resent[resent_before:])
            except Exception as error:  # refused or unreadable now: the end of the job sweeps again
                self.ledger.result.delete_failures.append(server_message(error))

    def _after_create(self, location: Location, refined: list[Refined], earlier: list[tuple[Mapping, Counterpart]],
                      created: dict[str, str]) -> None:
        result = self.ledger.result
        result.created_doubtful += sum(1 for r in refined if r.doubtful and r.original["_id"] in created)
        children = {}
        if self.params.connect_to is not None:  # where each is measured from, only to connect it
            children = {created[r.original["_id"]]: vertex_centroid(r.polygon)
                        for r in refined if r.original["_id"] in created}
            children.update({c.refined_id: c.point for _, c in earlier})
        originals = {r.original["_id"] for r in refined} | {original["_id"] for original, _ in earlier}
        replaced: dict[str, str] = {}
        completing: dict[str, str] = {}
        if self.params.delete_originals:
            replaced = {r.original["_id"]: created[r.original["_id"]]
                        for r in refined if not r.doubtful and r.original["_id"] in created}
            completing = {o["_id"]: c.refined_id for o, c in earlier if c.replaces_original}
        replacing = {refined_id: original_id for original_id, refined_id in {**replaced, **completing}.items()}
        self.linker.connect(children, (location.xy, location.z, location.time), originals | set(children), replacing)
        # Refinements of an outline the user has since changed, and duplicates: replaced by
        # the refinement of the current outline, and the one kept.
        stale = {old: created[r.original["_id"]] for r in refined if r.original["_id"] in created
                 for old in self.earlier.stale.get(r.original["_id"], ())}
        fresh = set(created.values())  # confirmed moments ago: not asked about again
        if stale:
            result.stale_removed += self.replacer.replace(stale, STALE, fresh)
        duplicates = self.earlier.duplicates.get(location)
        if duplicates:
            result.duplicates_removed += self.replacer.replace(dict(duplicates), DUPLICATE)
        if not self.params.delete_originals:
            return
        result.deleted += self.replacer.replace(replaced, ORIGINAL, fresh)
        completed = self.replacer.replace(completing, ORIGINAL)
        result.deleted += completed
        result.completed += completed

    # --- the end of the job ----------------------------------------------------

    def finish(self) -> None:
        """After the last location: complete what the server did not confirm in time, remove
        what late writes made twice, and warn of connections that could not be moved.
        Raises `Unfinished` naming what is still left, also when the platform refuses a
        write here for good (or stops accepting the job's token)."""
        ledger, result = self.ledger, self.ledger.result
        self.policy.wait_for_late_writes()
        for step in (self._unvisited_duplicates, self._waiting_creates, self._waiting_connections,
                     self._waiting_replacements, self._last_sweep):
            try:
                step()
            except Exception as error:  # a final refusal, or the access the job needs: the rest still counts
                ledger.failures.append(server_message(error))
        result.kept_originals = ledger.kept_originals()
        summary.report_skipped_connections(result.connections_skipped, self.reporter)
        summary.report_counterparts_gone(result.counterparts_gone, self.reporter)
        left = ledger.left()
        if left:  # a step that failed left what it did not do counted
            raise Unfinished(
                f"The platform did not complete every change: {summary.left_undone(left)}",
                info=summary.unfinished_info(left, ledger.reasons(), self.params),
                title="Not finished",
            )

    def _unvisited_duplicates(self) -> None:
        for location, duplicates in self.earlier.duplicates.items():
            if location not in self.ledger.visited:
                self.ledger.result.duplicates_removed += self.replacer.replace(dict(duplicates), DUPLICATE)

    def _waiting_creates(self) -> None:
        """Confirm the creates left unconfirmed; each stays on the list until it is."""
        for pending in list(self.ledger.pending):
            try:
                self.creates.confirm(pending, verify_first=True)
            except NotConfirmed:
                continue
            self.ledger.pending.remove(pending)
            self._after_create(pending.location, pending.refined, pending.earlier, pending.created)

    def _waiting_connections(self) -> None:
        """Make the connections to nearest parents still waiting, of those whose both ends
        still exist (a refinement deleted meanwhile has nothing to connect)."""
        if self.ledger.connections:
            waiting = [c for c in self.ledger.connections if not self.connections.exists(c["parentId"], c["childId"])]
            present = self.platform.existing_annotations(sorted({e for c in waiting for e in (c["parentId"],
                                                                                                 c["childId"])}))
            self.ledger.connections = []
            self.linker.make([c for c in waiting if c["parentId"] in present and c["childId"] in present])

    def _waiting_replacements(self) -> None:
        # Each kind counted as what it is: "replaced N originals" counts originals only.
        ledger, result = self.ledger, self.ledger.result
        result.deleted += self.replacer.replace(ledger.waiting_of(ORIGINAL), ORIGINAL)
        result.stale_removed += self.replacer.replace(ledger.waiting_of(STALE), STALE)
        result.duplicates_removed += self.replacer.replace(ledger.waiting_of(DUPLICATE), DUPLICATE)

    def _last_sweep(self) -> None:
        if self.ledger.resent or self.ledger.deletes:
            self.policy.wait_for_late_writes()
            self.late_twins.sweep(self.ledger.resent)
            self.ledger.swept = True

    def left_undone(self) -> str:
        """What the job could not do, in words ('' when nothing)."""
        return summary.left_undone(self.ledger.left())
