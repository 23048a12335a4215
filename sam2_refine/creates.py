"""Creating a location's refined polygons: each confirmed on the server, never made twice.

The documents go in chunks bounded by count and bytes; the ids are read from the
platform's answer (the created documents in request order) when it accounts for every
document sent, and looked up by marker among what was created since the first send
otherwise. What the write policy could not confirm is handed back as `NotConfirmed`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shapely.geometry import Polygon

from . import coordinates_json
from . import interface as ui
from .errors import WorkerError
from .ledger import Ledger, PendingCreate, Resent
from .markers import marked_source, marker, source_of, stable_output_tags
from .nimbus import DOUBTED_KEY, MARKER_KEY, SOURCE_KEY, OutcomeUnknown, chunks_by_size, record_of
from .nimbus_records import location_of
from .parameters import Location, RefineParameters
from .resume import Counterpart
from .writes import Platform, WritePolicy, server_message

CREATE_CHUNK = 1000
# A write's answer that does not account for everything sent (the platform answers a
# create with the created documents in request order): what it holds is checked instead.
MISMATCHED_ANSWER = "the platform's answer does not list everything that was sent"


@dataclass(frozen=True)
class Refined:
    """A refined outline to save for `original`; `doubtful` ones never replace it.
    `accepted_anyway`: doubtful, but saved and used as any other ("Accept anyway")."""

    original: Mapping
    polygon: Polygon
    doubtful: bool = False
    accepted_anyway: bool = False


def refined_tags(original: Mapping, params: RefineParameters, doubtful: bool) -> list[str]:
    """The output tags, or the original's own tags (plus a job date tag) when the tool has
    no others; plus the review tag, once, on a doubtful refinement."""
    tags = list(params.output_tags)
    if not stable_output_tags(params):
        tags = [t for t in (original.get("tags") or []) if isinstance(t, str) and t not in tags] + tags
    if doubtful and ui.REVIEW_TAG not in tags:
        tags.append(ui.REVIEW_TAG)
    return tags


def _location_of(document: Mapping) -> dict[str, int]:
    # Key order XY, Z, Time: the platform's connect-to-nearest compares it.
    return location_of(document).as_dict()


def refined_document(original: Mapping, polygon: Polygon, params: RefineParameters, key: str,
                     doubtful: bool = False, accepted_anyway: bool = False) -> dict:
    document = {
        "shape": "polygon",
        "tags": refined_tags(original, params, doubtful),
        "channel": int(params.output_channel),
        "location": _location_of(original),
        "coordinates": coordinates_json.coordinates(polygon),
        "datasetId": params.dataset_id,
        MARKER_KEY: marker(key, original["_id"]),
        SOURCE_KEY: record_of(original).outline_digest,
    }
    if accepted_anyway:
        document[DOUBTED_KEY] = True
    return document


def answers_match(documents: list[dict], answers: list[dict]) -> bool:
    """Whether the answer to a create lists one created document per document sent, in order."""
    return len(answers) == len(documents) and all(
        "_id" in answer and answer.get(MARKER_KEY, document[MARKER_KEY]) == document[MARKER_KEY]
        for document, answer in zip(documents, answers))


class NotConfirmed(Exception):
    """Some of a location's refined polygons were not confirmed within the write policy."""

    def __init__(self, pending: PendingCreate):
        super().__init__("not confirmed")
        self.pending = pending


class Creates:
    """The job's refined polygons, created and confirmed."""

    def __init__(self, platform: Platform, params: RefineParameters, key: str, policy: WritePolicy, ledger: Ledger):
        self.platform = platform
        self.params = params
        self.key = key
        self.policy = policy
        self.ledger = ledger

    def find(self, cursor: str | None, sources: set[str]) -> dict[str, list[str]]:
        """original id -> ids of the refined polygons of this run key created after `cursor`."""
        found: dict[str, list[str]] = defaultdict(list)
        for record in self.platform.annotations_since(cursor, stable_output_tags(self.params)):
            source = marked_source(record.marker, self.key)
            if source is not None and source in sources:
                found[source].append(record.id)
        return found

    def create(self, location: Location, refined: list[Refined], earlier: Iterable[tuple[Mapping, Counterpart]]
               ) -> dict[str, str]:
        """Create the location's refined polygons: original id -> refined id. Raises
        `NotConfirmed` when some are not confirmed yet, WorkerError on a final refusal
        (the same would meet every location)."""
        documents = [refined_document(r.original, r.polygon, self.params, self.key, r.doubtful, r.accepted_anyway)
                     for r in refined]
        pending = PendingCreate(location, refined, list(earlier), documents, self.platform.cursor(), {})
        try:
            self.confirm(pending, verify_first=False)
        except NotConfirmed:
            raise
        except Exception as error:  # a final refusal
            self.ledger.result.not_saved += len(documents) - len(pending.created)
            raise WorkerError(
                f"The platform refused the refined polygons: {server_message(error)}",
                info="Nothing was deleted for them. Check the tool's output tags and your access, then run again.",
                title="Could not save",
            ) from error
        return pending.created

    def confirm(self, pending: PendingCreate, verify_first: bool) -> None:
        """Confirm `pending.documents` on the server (sending what it lacks), chunk by chunk;
        `verify_first`: they may have been sent before, so the server is asked first."""
        resent = False
        ledger = self.ledger

        def send(documents: list[dict]) -> None:
            nonlocal resent
            resent = resent or any(source_of(d) in attempted for d in documents)
            attempted.update(source_of(d) for d in documents)
            answers = self.platform.create_annotations(documents)
            if not answers_match(documents, answers):
                raise OutcomeUnknown(MISMATCHED_ANSWER, may_apply_later=False)
            for document, answer in zip(documents, answers):
                confirm(source_of(document), str(answer["_id"]))

        def confirm(source: str, refined_id: str) -> None:
            pending.created[source] = refined_id
            ledger.present.add(refined_id)
            ledger.result.created += 1

        def missing(documents: list[dict]) -> list[dict]:
            found = self.find(pending.cursor, {source_of(d) for d in documents})
            for document in documents:
                ids = sorted(found.get(source_of(document), ()))
                if ids and source_of(document) not in pending.created:
                    confirm(source_of(document), ids[0])
            return [d for d in documents if source_of(d) not in pending.created]

        attempted: set[str] = set() if not verify_first else {source_of(d) for d in pending.documents}
        try:
            for chunk in chunks_by_size(pending.documents, CREATE_CHUNK, self.policy.chunk_bytes):
                self.policy.complete(chunk, send, missing, verify_first=verify_first)
        finally:  # also on a final refusal: what is confirmed is never counted as unsaved
            pending.documents = [d for d in pending.documents if source_of(d) not in pending.created]
            if resent:
                ledger.resent.append(Resent(pending.cursor, dict(pending.created)))
        if pending.documents:
            raise NotConfirmed(pending)
