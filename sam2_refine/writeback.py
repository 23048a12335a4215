"""Writing refined polygons back without ever losing an original.

Order: create every refined polygon (in chunks, ids read from the server's answer);
connect them to their nearest parents if the tool asks; then, only for originals whose
refined counterpart is confirmed, move their connections to the counterpart and delete
them. A process killed at any moment leaves at worst both versions, never neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shapely.geometry import Polygon

from .errors import WorkerError
from .geometry import polygon_to_coordinates
from .messages import Reporter
from .nimbus import MARKER_KEY, OutcomeUnknown, Platform, iter_chunks
from .parameters import RefineParameters

CREATE_CHUNK = 1000
DELETE_CHUNK = 1000
MAX_VERIFIED_RESENDS = 3


@dataclass
class WriteResult:
    created: dict[str, str] = field(default_factory=dict)  # original id -> refined id
    not_saved: int = 0
    deleted: int = 0
    kept_originals: int = 0
    create_error: WorkerError | None = None


def refined_document(original: dict, polygon: Polygon, params: RefineParameters, job_id: str) -> dict:
    location = original.get("location") or {}
    return {
        "shape": "polygon",
        "tags": list(params.output_tags),
        "channel": int(params.output_channel),
        # Key order XY, Z, Time: the platform's connect-to-nearest compares it.
        "location": {"XY": int(location.get("XY", 0)), "Z": int(location.get("Z", 0)),
                     "Time": int(location.get("Time", 0))},
        "coordinates": polygon_to_coordinates(polygon),
        "datasetId": params.dataset_id,
        MARKER_KEY: f"{job_id}/{original['_id']}",
    }


def _source_of(document: dict) -> str:
    return document[MARKER_KEY].split("/", 1)[1]


def _create_chunk(platform: Platform, documents: list[dict], params: RefineParameters, job_id: str) -> dict[str, str]:
    """original id -> created id for one chunk, repeating only what the server lacks."""
    confirmed: dict[str, str] = {}
    pending = documents
    for _ in range(MAX_VERIFIED_RESENDS + 1):
        try:
            created = platform.create_annotations(pending)
        except OutcomeUnknown:
            existing = platform.marked_annotations(job_id, list(params.output_tags))
            for document in pending:
                if _source_of(document) in existing:
                    confirmed[_source_of(document)] = existing[_source_of(document)]
            pending = [d for d in pending if _source_of(d) not in confirmed]
            if not pending:
                return confirmed
            continue
        for document, answer in zip(pending, created):
            confirmed[_source_of(document)] = answer["_id"]
        return confirmed
    raise WorkerError(
        f"The platform did not confirm {len(pending)} refined polygons after {MAX_VERIFIED_RESENDS} tries",
        info="Nothing was deleted for them; run the tool again later.",
        title="Could not save",
    )


def _create_all(platform, refined, params, job_id, result: WriteResult, reporter: Reporter) -> None:
    documents = [refined_document(original, polygon, params, job_id) for original, polygon in refined]
    for chunk in iter_chunks(documents, CREATE_CHUNK):
        try:
            result.created.update(_create_chunk(platform, chunk, params, job_id))
        except Exception as error:
            result.not_saved = len(documents) - len(result.created)
            result.create_error = error if isinstance(error, WorkerError) else WorkerError(
                f"The platform refused the refined polygons: {_server_message(error)}",
                info="Nothing was deleted for them. Check the tool's output tags and your access, then run again.",
                title="Could not save",
            )
            return
        reporter.log(f"saved {len(result.created)} of {len(documents)} refined polygons")


def _server_message(error: Exception) -> str:
    import json

    text = getattr(error, "responseText", None)
    status = getattr(error, "status", None)
    try:
        message = json.loads(text)["message"] if text else str(error)
    except (ValueError, KeyError, TypeError):
        message = text or str(error)
    return f"HTTP {status}: {message}" if status else message


def _connect_to_parents(platform: Platform, params: RefineParameters, result: WriteResult, reporter: Reporter) -> None:
    if params.connect_to is None or not result.created:
        return
    ids = list(result.created.values())
    try:
        for chunk in iter_chunks(ids, CREATE_CHUNK):
            platform.connect_to_nearest(chunk, list(params.connect_to.tags), params.connect_to.channel)
    except Exception as error:
        reporter.warning(
            "Refined polygons were saved, but connecting them to their nearest parents failed",
            info=f"{_server_message(error)}. Use the app's connection tools to connect them.",
        )


def _moved_connections(connections: list[dict], replaced: dict[str, str]) -> list[dict]:
    """Copies of the connections touching replaced annotations, pointing at their counterparts."""
    moved: dict[tuple[str, str], dict] = {}
    for connection in connections:
        parent = replaced.get(connection["parentId"], connection["parentId"])
        child = replaced.get(connection["childId"], connection["childId"])
        copy = {
            "parentId": parent,
            "childId": child,
            "datasetId": connection.get("datasetId"),
            "tags": list(connection.get("tags") or []),
        }
        if connection.get("label") is not None:
            copy["label"] = connection["label"]
        moved.setdefault((parent, child), copy)
    return list(moved.values())


def _replace_originals(platform: Platform, params: RefineParameters, result: WriteResult, reporter: Reporter) -> None:
    replaced = dict(result.created)
    for chunk in iter_chunks(list(replaced), DELETE_CHUNK):
        chunk_map = {original: replaced[original] for original in chunk}
        try:
            touching = [c for c in platform.dataset_connections() if c["parentId"] in chunk_map or c["childId"] in chunk_map]
            moved = _moved_connections(touching, replaced)
            if moved:
                platform.create_connections(moved)
            if touching:
                platform.delete_connections([c["_id"] for c in touching])
            platform.delete_annotations(chunk)
        except Exception as error:
            result.kept_originals += len(chunk)
            reporter.warning(
                f"{len(chunk)} originals were kept next to their refined versions: deleting them failed",
                info=(
                    f"{_server_message(error)}. The refined polygons carry the tags "
                    f"{', '.join(params.output_tags) or '(none)'}; the originals still carry "
                    f"{', '.join(params.refine_tags)}. Delete the originals by tag in the app."
                ),
            )
            continue
        result.deleted += len(chunk)


def write_back(
    platform: Platform,
    refined: list[tuple[dict, Polygon]],
    params: RefineParameters,
    job_id: str,
    reporter: Reporter,
) -> WriteResult:
    """Save `refined` (original document, refined polygon) pairs, then replace originals if asked."""
    result = WriteResult()
    _create_all(platform, refined, params, job_id, result, reporter)
    _connect_to_parents(platform, params, result, reporter)
    if params.delete_originals:
        _replace_originals(platform, params, result, reporter)
    return result
