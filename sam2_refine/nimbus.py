"""Everything the worker asks of the NimbusImage platform, through the `nimbusimage` SDK.

Requests (this module owns how they are sent; `writeback` owns what a write means):
- Every request has a client timeout of `HTTP_TIMEOUT` seconds (girder_client sets none):
  the longest wait for the connection, and for each part of the answer.
- Reads (GET, and the read-only POST upenn_annotation/hydrate) are retried on
  connection errors, timeouts, 429 and 5xx answers, with exponential backoff, request
  by request: a new attempt starts only within `RETRY_SECONDS` of the first, so one
  request, retries included, waits at most `RETRY_SECONDS` plus one timeout.
- Writes (creating annotations and connections, deleting either) are sent once. The only
  repeat here is of a request that never reached the server (the connection was refused
  or could not be opened). When a write's outcome is unknown (a timeout or broken
  connection after sending, a 429 or 5xx answer: the server may have applied it, may
  still be applying it, or may not) it raises `OutcomeUnknown`, and `writeback` verifies
  on the server what the write did before anything is sent again. A 413 raises
  `PayloadTooLarge` (nothing was applied); any other error answer is final.
- These are the only retries. The SDK's session retries on its own (through urllib3, up
  to five times with growing backoff), which would multiply ours and repeat writes
  blindly; `JobTransport`, mounted on that session in its place, applies the rules above.

Reading (issue 17 item 7: memory follows the location, not the dataset): listings are
paged along the `_id` cursor and each page is reduced, as it arrives, to compact records
(`AnnotationRecord`, `ConnectionRecord`) of only the locations or annotations the job
needs; no page and no whole document outlives its own processing.

Created annotations carry `MARKER_KEY` ("<run key>/<original id>") and `SOURCE_KEY` (a
digest of the original outline they were made from); the platform stores extra keys as
given. Ids are ObjectIds, whose first 4 bytes are their creation time on the server:
`cursor()` names a point shortly before the next write, and `annotations_since` /
`connections_since` list only what was created after it, which is how a write's outcome
is verified without listing the dataset again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from urllib3.util.retry import Retry

from .errors import WorkerError
from .model import Window
from .parameters import DatasetSizes, Location

MARKER_KEY = "sam2Refine"
SOURCE_KEY = "sam2RefineSource"  # the digest of the original outline a refined polygon was made from
DOUBTED_KEY = "sam2RefineDoubted"  # true on a doubtful refinement saved untagged by "Accept anyway"
DEFAULT_HTTP_TIMEOUT = 120.0
DEFAULT_RETRY_SECONDS = 60.0
HTTP_TIMEOUT = DEFAULT_HTTP_TIMEOUT
RETRY_SECONDS = DEFAULT_RETRY_SECONDS
FIRST_BACKOFF = 0.25
PAGE_SIZE = 1000
HYDRATE_CHUNK = 1000
# How far before the newest id seen a cursor starts: ids made by several server
# processes within the same second, or by hosts whose clocks differ slightly, need not
# sort in creation order.
CURSOR_SLACK_SECONDS = 10
READ_ONLY_POSTS = ("upenn_annotation/hydrate",)

T = TypeVar("T")


def _seconds_setting(environment: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = environment.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise WorkerError(
            f"The environment variable {name} is {raw!r}, not a number of seconds"
            + (f" of at least {minimum:g}" if minimum > 0 else ""),
            info=f"Set {name} to a number of seconds such as {default:g}, or leave it unset for {default:g}.",
            title="Invalid setting",
        )
    return value


def configure(environment: Mapping[str, str]) -> None:
    """Read SAM2_REFINE_HTTP_TIMEOUT and SAM2_REFINE_RETRY_SECONDS from `environment`;
    a WorkerError names a value that is not a usable number of seconds."""
    global HTTP_TIMEOUT, RETRY_SECONDS
    timeout = _seconds_setting(environment, "SAM2_REFINE_HTTP_TIMEOUT", DEFAULT_HTTP_TIMEOUT, 0.001)
    retry = _seconds_setting(environment, "SAM2_REFINE_RETRY_SECONDS", DEFAULT_RETRY_SECONDS, 0.0)
    HTTP_TIMEOUT, RETRY_SECONDS = timeout, retry


@dataclass(frozen=True)
class FrameGeometry:
    sizes: DatasetSizes
    width: int   # columns
    height: int  # rows


class OutcomeUnknown(Exception):
    """A write was sent but whether the server applied it is unknown. `may_apply_later`:
    nobody waited for the server to finish (the client's timeout, a gateway's 504, a
    connection broken while waiting), so it may still be applying it; an error answer
    (500, 502, 503, 429) came from something that did wait."""

    def __init__(self, description: str, may_apply_later: bool = True):
        super().__init__(description)
        self.may_apply_later = may_apply_later


def _may_apply_later(error: Exception) -> bool:
    if _was_not_sent(error):
        return False
    return isinstance(error, (requests.ConnectionError, requests.Timeout)) or _status(error) == 504


class PayloadTooLarge(Exception):
    """The server refused a request body as too large (413); nothing was applied."""


def _status(error: Exception) -> int | None:
    return getattr(error, "status", None)


def _is_transient_status(status: int | None) -> bool:
    return status is not None and (status == 429 or status >= 500)


def _is_transient(error: Exception) -> bool:
    return isinstance(error, (requests.ConnectionError, requests.Timeout)) or _is_transient_status(_status(error))


def _was_not_sent(error: Exception) -> bool:
    """True when the request never reached the server (so repeating it is safe):
    the connection was refused or could not be opened in time."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    if isinstance(error, requests.ConnectionError) and error.args:
        reason = getattr(error.args[0], "reason", error.args[0])
        return isinstance(reason, NewConnectionError)
    return False


def _access_error(error: Exception) -> WorkerError | None:
    status = _status(error)
    if status == 401:
        return WorkerError(
            "The platform did not accept this job's token (HTTP 401)",
            info="Run the tool again from the app; your session may have expired.",
            title="Not authorized",
        )
    if status == 403:
        return WorkerError(
            "The platform refused access to this dataset (HTTP 403)",
            info="You need write access to the dataset to refine its annotations.",
            title="Access denied",
        )
    return None


def _is_read(request: requests.PreparedRequest) -> bool:
    if request.method in ("GET", "HEAD"):
        return True
    path = urllib.parse.urlsplit(request.url or "").path.rstrip("/")
    return request.method == "POST" and path.endswith(READ_ONLY_POSTS)


class JobTransport(HTTPAdapter):
    """The session's transport: the timeout for every request, reads retried on transient
    failures within RETRY_SECONDS, writes sent once (again only if never sent)."""

    def __init__(self) -> None:
        # urllib3's Retry with nothing to retry: the same as requests' own default adapter.
        super().__init__(max_retries=Retry(total=0, read=False, redirect=False, raise_on_status=False))

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        timeout = HTTP_TIMEOUT if timeout is None else timeout
        read = _is_read(request)
        deadline = time.monotonic() + RETRY_SECONDS
        backoff = FIRST_BACKOFF
        while True:
            may_retry = time.monotonic() + backoff <= deadline
            try:
                response = super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                                        proxies=proxies)
                if read and not stream:
                    response.content  # noqa: B018 (a body cut off mid-way is a failed attempt too)
            except (requests.ConnectionError, requests.Timeout) as error:
                if not may_retry or not (read or _was_not_sent(error)):
                    raise
            else:
                if not (read and may_retry and _is_transient_status(response.status_code)):
                    return response
                response.close()
            time.sleep(backoff)
            backoff *= 2


@dataclass(frozen=True, eq=False, slots=True)
class AnnotationRecord(Mapping):
    """An annotation as the job keeps it: what refining, review and write-back use, with
    the outline as one numpy array. Reads like the platform's document (`record["tags"]`,
    `record.get("coordinates")`), which it was made from."""

    id: str
    shape: str
    tags: tuple[str, ...]
    location: Location
    channel: int | None
    points: np.ndarray         # (n, 2) float64 x, y
    z: np.ndarray | None       # (n,) when every vertex has z
    marker: str | None         # MARKER_KEY
    source: str | None         # SOURCE_KEY
    outline_digest: str        # of this annotation's own shape and coordinates
    doubted: bool = False      # DOUBTED_KEY

    _KEYS = ("_id", "shape", "tags", "location", "channel", "coordinates", MARKER_KEY, SOURCE_KEY, DOUBTED_KEY)

    def __getitem__(self, key: str) -> Any:
        if key == "_id":
            return self.id
        if key == "shape":
            return self.shape
        if key == "tags":
            return list(self.tags)
        if key == "location":
            return self.location.as_dict()
        if key == "channel":
            return self.channel
        if key == "coordinates":
            return self.coordinates()
        if key == MARKER_KEY and self.marker is not None:
            return self.marker
        if key == SOURCE_KEY and self.source is not None:
            return self.source
        if key == DOUBTED_KEY and self.doubted:
            return True
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (key for key in self._KEYS if key in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        if key == MARKER_KEY:
            return self.marker is not None
        if key == SOURCE_KEY:
            return self.source is not None
        if key == DOUBTED_KEY:
            return self.doubted
        return key in self._KEYS

    def coordinates(self) -> list[dict]:
        """The platform's form of the outline."""
        if self.z is None:
            return [{"x": float(x), "y": float(y)} for x, y in self.points]
        return [{"x": float(x), "y": float(y), "z": float(z)} for (x, y), z in zip(self.points, self.z)]

    def reference_point(self) -> tuple[float, float, float | None] | None:
        """As the platform measures connection distances: a point's own coordinate, the
        vertex centroid of any other shape; z only when every vertex has one."""
        if len(self.points) == 0:
            return None
        points, z = (self.points[:1], None if self.z is None else self.z[:1]) if self.shape == "point" else (
            self.points, self.z)
        x, y = points.mean(axis=0)
        return float(x), float(y), (float(z.mean()) if z is not None else None)


def outline_digest(shape: str, coordinates: Iterable[Any]) -> str:
    """A digest of an outline: the same for the same shape and vertices (to 1e-4 px)."""
    parts = [str(shape)]
    for point in coordinates:
        if isinstance(point, dict):
            parts.append(f"{_number(point.get('x')):.4f},{_number(point.get('y')):.4f}")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def record_of(document: Mapping) -> AnnotationRecord:
    """The compact record of one platform annotation document."""
    if isinstance(document, AnnotationRecord):
        return document
    coordinates = [c for c in (document.get("coordinates") or []) if isinstance(c, dict)]
    points = np.array([(_number(c.get("x")), _number(c.get("y"))) for c in coordinates], dtype=np.float64)
    points = points.reshape(-1, 2)
    z = None
    if coordinates and all("z" in c for c in coordinates):
        z = np.array([_number(c["z"]) for c in coordinates], dtype=np.float64)
    channel = document.get("channel")
    marker, source = document.get(MARKER_KEY), document.get(SOURCE_KEY)
    return AnnotationRecord(
        id=str(document["_id"]),
        shape=str(document.get("shape") or ""),
        tags=tuple(tag for tag in (document.get("tags") or []) if isinstance(tag, str)),
        location=Location.from_dict(document.get("location") if isinstance(document.get("location"), dict) else None),
        channel=channel if isinstance(channel, int) and not isinstance(channel, bool) else None,
        points=points,
        z=z,
        marker=str(marker) if marker is not None else None,
        source=str(source) if source is not None else None,
        outline_digest=outline_digest(str(document.get("shape") or ""), coordinates),
        doubted=document.get(DOUBTED_KEY) is True,
    )


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """A connection as the job keeps it."""

    id: str
    parent_id: str
    child_id: str
    tags: tuple[str, ...]
    label: str | None

    @classmethod
    def of(cls, document: Mapping) -> "ConnectionRecord":
        if isinstance(document, ConnectionRecord):
            return document
        label = document.get("label")
        return cls(str(document["_id"]), str(document.get("parentId")), str(document.get("childId")),
                   tuple(t for t in (document.get("tags") or []) if isinstance(t, str)),
                   str(label) if label is not None else None)

    @property
    def ends(self) -> tuple[str, str, tuple[str, ...], str | None]:
        """What makes two connections the same link."""
        return self.parent_id, self.child_id, self.tags, self.label


def object_id_time(object_id: str) -> int | None:
    """The creation second an ObjectId holds; None if it is not one."""
    if len(object_id) != 24:
        return None
    try:
        return int(object_id[:8], 16)
    except ValueError:
        return None


class Platform:
    """One job's connection to the platform: the dataset, its annotations and connections."""

    def __init__(self, api_url: str, token: str, dataset_id: str | None, parameters: dict):
        from nimbusimage.worker import WorkerContext

        # The SDK's worker context: its client, its dataset accessors and its message lines.
        # The client's session (girder_client sends every request through it) gets our
        # transport in place of the SDK's retrying one.
        self.context = WorkerContext(dataset_id=dataset_id, api_url=api_url, token=token, params=parameters)
        self._girder = self.context._gc
        transport = JobTransport()
        for scheme in ("http://", "https://"):
            self._girder._session.mount(scheme, transport)
        self.dataset_id = dataset_id
        self._newest_id_time: int | None = None

    @property
    def dataset(self):
        return self.context.dataset

    @property
    def _images(self):
        """The SDK's image accessor, asking for each frame's contrast histogram once: it
        is the same for every window of a frame and channel (the SDK asks per composite)."""
        images = self.dataset.images
        if not getattr(images, "_contrast_memo", None):
            images._contrast_memo = _memoized_contrast(images._contrast_range)
            images._contrast_range = images._contrast_memo
        return images

    # --- errors ------------------------------------------------------------------

    def _reading(self, what: str, call: Callable[[], T]) -> T:
        """`call` (its requests retried by the transport), its failure as the user's error."""
        try:
            return call()
        except WorkerError:
            raise
        except Exception as error:
            access = _access_error(error)
            if access is not None:
                raise access from error
            if _is_transient(error):
                raise WorkerError(
                    f"Could not {what}: {_describe(error)}",
                    info="The platform did not answer in time; try again later.",
                    title="Platform unavailable",
                ) from error
            raise WorkerError(
                f"Could not {what}: {_describe(error)}",
                info="Check that the dataset still exists and opens in the app, then run the tool again.",
                title="Platform error",
            ) from error

    def _write(self, method: str, path: str, body: Any) -> Any:
        """One write: its answer, or OutcomeUnknown / PayloadTooLarge / the final refusal."""
        try:
            return self._girder.sendRestRequest(method, path, json=body)
        except Exception as error:
            access = _access_error(error)
            if access is not None:
                raise access from error
            if _status(error) == 413:
                raise PayloadTooLarge(_describe(error)) from error
            if _is_transient(error):
                raise OutcomeUnknown(_describe(error), _may_apply_later(error)) from error
            raise

    # --- ids and cursors -------------------------------------------------------------

    def _saw(self, object_id: str) -> None:
        seconds = object_id_time(object_id)
        if seconds is not None and (self._newest_id_time is None or seconds > self._newest_id_time):
            self._newest_id_time = seconds

    def cursor(self) -> str | None:
        """An id before any the server creates from now on (None before the job saw one)."""
        if self._newest_id_time is None:
            return None
        return f"{max(self._newest_id_time - CURSOR_SLACK_SECONDS, 0):08x}" + "0" * 16

    # --- interface ---------------------------------------------------------------

    def post_interface(self, image: str, interface: dict) -> None:
        try:
            self.context.set_interface(image, interface)
        except Exception as error:
            raise _access_error(error) or WorkerError(
                f"Could not save the tool's interface: {_describe(error)}",
                info="Try refreshing the tool list in the app.",
            ) from error

    # --- reads -------------------------------------------------------------------

    def frame_geometry(self) -> FrameGeometry:
        def read() -> FrameGeometry:
            dataset = self.dataset
            height, width = dataset.shape
            return FrameGeometry(
                DatasetSizes(xy=dataset.num_xy, z=dataset.num_z, time=dataset.num_time), int(width), int(height)
            )

        return self._reading("read the dataset", read)

    def _listing(self, what: str, path: str, query: dict) -> Iterator[dict]:
        """Every document `path` lists for `query`, in `_id` order, page by page along the
        `afterId` cursor; each page is released once its documents are consumed."""
        query = {**query, "limit": PAGE_SIZE, "sort": "_id", "sortdir": 1}
        while True:
            page = self._reading(what, lambda: self._get_json(path, dict(query)))
            if page:
                self._saw(str(page[-1]["_id"]))
            yield from page
            if len(page) < PAGE_SIZE:
                return
            cursor = page[-1]["_id"]
            if "afterId" in query and cursor <= query["afterId"]:
                # ObjectId strings sort as their creation order; a cursor that does not
                # advance would page forever.
                raise WorkerError(
                    f"Could not {what}: the server sent the page after {query['afterId']} again, "
                    f"ending at {cursor}, so paging would never end",
                    info="The platform's listing ignored its afterId cursor; report this to its administrators.",
                    title="Platform error",
                )
            query["afterId"] = cursor
            del page

    def _get_json(self, path: str, parameters: dict) -> Any:
        """A GET's JSON answer, parsed with orjson: a dataset's listing is mostly coordinates."""
        return orjson.loads(self._girder.get(path, parameters=parameters, jsonResp=False).content)

    def _annotation_listing(self, tags: Iterable[str] | None, shape: str | None, after: str | None = None
                            ) -> Iterator[dict]:
        """Annotations of `shape` (any shape if None) carrying all of `tags`, created after `after`."""
        query: dict[str, Any] = {"datasetId": self.dataset_id}
        if shape is not None:
            query["shape"] = shape
        if tags:
            query["tags"] = json.dumps(list(tags))  # the platform reads tags as a JSON array
        if after is not None:
            query["afterId"] = after
        return self._listing("list the annotations", "upenn_annotation", query)

    def _tagged(self, any_of_tags: tuple[str, ...], shapes: tuple[str | None, ...],
                locations: Collection[Location] | None) -> list[AnnotationRecord]:
        """Compact records of the annotations of any of `shapes` carrying any of
        `any_of_tags` (no tag filter if none) at `locations` (all if None), each once."""
        queries = [[tag] for tag in any_of_tags] or [None]
        wanted = None if locations is None else set(locations)
        found: dict[str, AnnotationRecord] = {}
        for shape in shapes:
            for tags in queries:
                for document in self._annotation_listing(tags, shape):
                    if document["_id"] in found:
                        continue
                    if wanted is not None and Location.from_dict(document.get("location")) not in wanted:
                        continue
                    found[document["_id"]] = record_of(document)
        return list(found.values())

    def polygons(self, any_of_tags: tuple[str, ...], locations: Collection[Location] | None = None
                 ) -> list[AnnotationRecord]:
        """Every polygon and rectangle (both outline an object) carrying any of
        `any_of_tags` (all of them if none), at `locations` (all if None)."""
        return self._tagged(any_of_tags, ("polygon", "rectangle"), locations)

    def tagged_annotations(self, any_of_tags: tuple[str, ...], locations: Collection[Location] | None = None
                           ) -> list[AnnotationRecord]:
        """Every annotation of any shape carrying any of `any_of_tags`, at `locations` (all if None)."""
        return self._tagged(any_of_tags, (None,), locations)

    def output_polygons(self, tags: tuple[str, ...], locations: Collection[Location] | None = None
                        ) -> list[AnnotationRecord]:
        """The polygons carrying all of `tags` (every polygon if none) at `locations`: where
        refined polygons of earlier runs are, marked or (edited in the app) not."""
        wanted = None if locations is None else set(locations)
        return [
            record_of(document) for document in self._annotation_listing(tags, "polygon")
            if wanted is None or Location.from_dict(document.get("location")) in wanted
        ]

    def annotations_since(self, cursor: str | None, tags: tuple[str, ...]) -> Iterator[AnnotationRecord]:
        """The polygons carrying all of `tags` created after `cursor`."""
        for document in self._annotation_listing(tags, "polygon", after=cursor):
            yield record_of(document)

    def existing_annotations(self, annotation_ids: list[str]) -> set[str]:
        """Which of `annotation_ids` the dataset still holds (hydrate; a server without it,
        as [K], is asked id by id)."""
        present: set[str] = set()
        for start in range(0, len(annotation_ids), HYDRATE_CHUNK):
            chunk = annotation_ids[start:start + HYDRATE_CHUNK]
            try:
                documents = self._reading(
                    "check which annotations exist",
                    lambda chunk=chunk: self._girder.post("upenn_annotation/hydrate", json=chunk),
                )
            except WorkerError as error:
                if _status(error.__cause__) not in (404, 405):
                    raise
                return present | self._existing_one_by_one("upenn_annotation", annotation_ids[start:])
            present.update(str(document["_id"]) for document in documents)
        return present

    def _existing_one_by_one(self, path: str, ids: list[str]) -> set[str]:
        present = set()
        for document_id in ids:
            try:
                self._reading("check what exists", lambda: self._girder.get(f"{path}/{document_id}"))
            except WorkerError as error:
                if _status(error.__cause__) in (400, 404):  # Girder answers an unknown id with either
                    continue
                raise
            present.add(document_id)
        return present

    def connections(self, touching: Collection[str] | None = None) -> list[ConnectionRecord]:
        """The dataset's connections with an end in `touching` (all if None), paged with the
        `_id` cursor and reduced to compact records as they arrive."""
        return [
            ConnectionRecord.of(document)
            for document in self._listing("read annotation connections", "annotation_connection",
                                          {"datasetId": self.dataset_id})
            if touching is None or document.get("parentId") in touching or document.get("childId") in touching
        ]

    def dataset_connections(self) -> list[ConnectionRecord]:
        """Every annotation connection of the dataset."""
        return self.connections()

    def connections_since(self, cursor: str | None) -> Iterator[ConnectionRecord]:
        """The connections created after `cursor`."""
        query = {"datasetId": self.dataset_id}
        if cursor is not None:
            query["afterId"] = cursor
        for document in self._listing("read annotation connections", "annotation_connection", query):
            yield ConnectionRecord.of(document)

    def existing_connections(self, connection_ids: list[str]) -> set[str]:
        """Which of `connection_ids` the dataset still holds."""
        return self._existing_one_by_one("annotation_connection", connection_ids)

    def frame_image(self, location: Location, max_size: int | None = None) -> np.ndarray:
        """The frame as the user sees it: visible layers composited, (rows, cols, 3) float32
        in [0, 1]; with `max_size`, downsampled by the server so its longer side is at most that."""
        return self._reading(
            f"read the image at XY {location.xy + 1}, Z {location.z + 1}, Time {location.time + 1}",
            lambda: self._images.get_composite(
                xy=location.xy, z=location.z, time=location.time, dtype="float32", max_size=max_size
            ),
        )

    def window_image(self, location: Location, window: Window, max_size: int | None = None) -> np.ndarray:
        """The part of the frame `window` covers, as `frame_image` draws it; with
        `max_size`, downsampled by the server so its longer side is at most that."""
        crop = (window.left, window.top, window.left + window.width, window.top + window.height)
        return self._reading(
            f"read the image at XY {location.xy + 1}, Z {location.z + 1}, Time {location.time + 1}",
            lambda: self._images.get_composite(
                xy=location.xy, z=location.z, time=location.time, dtype="float32", max_size=max_size, crop=crop
            ),
        )

    # --- writes (each sent once; see the module's docstring) -----------------------------

    def create_annotations(self, documents: list[dict]) -> list[dict]:
        """POST one chunk; returns the created documents in request order."""
        created = list(self._write("POST", "upenn_annotation/multiple", documents))
        for document in created:
            self._saw(str(document["_id"]))
        return created

    def create_connections(self, connections: list[dict]) -> list[dict]:
        created = list(self._write("POST", "annotation_connection/multiple", connections))
        for document in created:
            self._saw(str(document["_id"]))
        return created

    def delete_annotations(self, annotation_ids: list[str]) -> None:
        self._write("DELETE", "upenn_annotation/multiple", annotation_ids)

    def delete_connections(self, connection_ids: list[str]) -> None:
        self._write("DELETE", "annotation_connection/multiple", connection_ids)


def _memoized_contrast(contrast_range: Callable) -> Callable:
    """The SDK's `_contrast_range(contrast, frames)`, each answer kept for the job (one
    histogram request per frame and contrast setting, whichever thread asks first)."""
    answers: dict = {}
    lock = threading.Lock()

    def memoized(contrast: dict, frames: list[int]):
        key = (json.dumps(contrast, sort_keys=True, default=str), tuple(frames))
        with lock:
            if key in answers:
                return answers[key]
        answer = contrast_range(contrast, frames)
        with lock:
            answers.setdefault(key, answer)
        return answer

    return memoized


def _describe(error: Exception) -> str:
    status = _status(error)
    if status is not None:
        return f"HTTP {status} from {getattr(error, 'method', '')} {_path_of(getattr(error, 'url', ''))}".strip()
    if isinstance(error, requests.Timeout):
        return "no answer within the time limit"
    if isinstance(error, requests.ConnectionError):
        return "the connection failed"
    return f"{type(error).__name__}: {error}"


def _path_of(url: str) -> str:
    """The URL's path only: never echo query strings, which may carry credentials."""
    return urllib.parse.urlsplit(url).path


def iter_chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def json_size(value: Any) -> int:
    """Bytes of `value` as a request body."""
    return len(json.dumps(value).encode())


def chunks_by_size(items: list[T], max_count: int, max_bytes: int) -> Iterator[list[T]]:
    """`items` in order, in chunks of at most `max_count` items and, as JSON, about
    `max_bytes` (a single larger item is a chunk of its own)."""
    chunk: list[T] = []
    size = 2  # the list's brackets
    for item in items:
        item_size = json_size(item) + 1
        if chunk and (len(chunk) >= max_count or size + item_size > max_bytes):
            yield chunk
            chunk, size = [], 2
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk
