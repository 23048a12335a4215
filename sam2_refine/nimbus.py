"""Everything the worker asks of the NimbusImage platform, through the `nimbusimage` SDK.

Retry policy (this module owns it):
- Reads (GET) and deletes (DELETE is idempotent on the platform: unknown ids are
  skipped) are retried on connection errors, timeouts, 429 and 5xx answers, with
  exponential backoff; a new attempt starts only within `RETRY_SECONDS` of the first,
  so one request, retries included, waits at most `RETRY_SECONDS` plus one timeout.
  Listings are retried page by page.
- Creating (POST) is never repeated blindly. A POST is repeated at once only when the
  connection failed before the request was sent. When its outcome is unknown (a
  timeout or broken connection after sending, or a 502/503/504 gateway answer), the
  server is asked first which of the documents exist, and only the missing ones are
  sent again. Created annotations carry `MARKER_KEY` ("<run key>/<original id>", the
  run key a digest of the settings that shape the output) so they can be found, also by
  a later run; the platform stores extra keys as given.
- Any other error answer (400, 401, 403, 404, ...) is final.
- Every request has a client timeout of `HTTP_TIMEOUT` seconds (girder_client sets none):
  the longest wait for the connection, and for each part of the answer.
- These are the only retries. The SDK's session retries on its own (through urllib3, up
  to five times with growing backoff: 502/503/504 answers, and timeouts and broken
  connections of idempotent requests), which would multiply ours; `JobTransport`,
  mounted on that session in its place, makes one attempt per request and sets the timeout.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from urllib3.util.retry import Retry

from .errors import WorkerError
from .model import Window
from .parameters import DatasetSizes, Location

MARKER_KEY = "sam2Refine"
HTTP_TIMEOUT = float(os.environ.get("SAM2_REFINE_HTTP_TIMEOUT", "120"))
RETRY_SECONDS = float(os.environ.get("SAM2_REFINE_RETRY_SECONDS", "60"))
FIRST_BACKOFF = 0.25
PAGE_SIZE = 1000
GATEWAY_STATUSES = (502, 503, 504)

T = TypeVar("T")


@dataclass(frozen=True)
class FrameGeometry:
    sizes: DatasetSizes
    width: int   # columns
    height: int  # rows


class OutcomeUnknown(Exception):
    """A write was sent but its answer was lost."""


def _status(error: Exception) -> int | None:
    return getattr(error, "status", None)


def _is_transient(error: Exception) -> bool:
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return True
    status = _status(error)
    return status is not None and (status == 429 or status >= 500)


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


class JobTransport(HTTPAdapter):
    """The session's transport: one attempt per request (`Platform` holds the retry
    policy), and `timeout` seconds for any request that names none."""

    def __init__(self, timeout: float):
        # urllib3's Retry with nothing to retry: the same as requests' own default adapter.
        super().__init__(max_retries=Retry(total=0, read=False, redirect=False, raise_on_status=False))
        self.timeout = timeout

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        return super().send(
            request, stream=stream, timeout=self.timeout if timeout is None else timeout,
            verify=verify, cert=cert, proxies=proxies,
        )


class Platform:
    """One job's connection to the platform: the dataset, its annotations and connections."""

    def __init__(self, api_url: str, token: str, dataset_id: str | None, parameters: dict):
        from nimbusimage.worker import WorkerContext

        # The SDK's worker context: its client, its dataset accessors and its message lines.
        # The client's session (girder_client sends every request through it) gets our
        # transport in place of the SDK's retrying one.
        self.context = WorkerContext(dataset_id=dataset_id, api_url=api_url, token=token, params=parameters)
        self._girder = self.context._gc
        transport = JobTransport(HTTP_TIMEOUT)
        for scheme in ("http://", "https://"):
            self._girder._session.mount(scheme, transport)
        self.dataset_id = dataset_id

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

    # --- retries -----------------------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """`call` repeated on transient failures, within RETRY_SECONDS; for idempotent requests."""
        deadline = time.monotonic() + RETRY_SECONDS
        backoff = FIRST_BACKOFF
        while True:
            try:
                return call()
            except WorkerError:
                raise
            except Exception as error:
                access = _access_error(error)
                if access is not None:
                    raise access from error
                transient = _is_transient(error)
                if transient and time.monotonic() + backoff <= deadline:
                    time.sleep(backoff)
                    backoff *= 2
                    continue
                if transient:
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

    def _post_once(self, path: str, body) -> object:
        """One POST; raises OutcomeUnknown when the server may or may not have applied it."""
        deadline = time.monotonic() + RETRY_SECONDS
        backoff = FIRST_BACKOFF
        while True:
            try:
                return self._girder.post(path, json=body)
            except Exception as error:
                access = _access_error(error)
                if access is not None:
                    raise access from error
                if _was_not_sent(error) and time.monotonic() + backoff <= deadline:
                    time.sleep(backoff)
                    backoff *= 2
                    continue
                if isinstance(error, (requests.ConnectionError, requests.Timeout)) or _status(error) in GATEWAY_STATUSES:
                    raise OutcomeUnknown(_describe(error)) from error
                raise

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

        return self._retrying("read the dataset", read)

    def _polygon_pages(self, tags: list[str] | None, shape: str | None = "polygon") -> list[dict]:
        """Annotations of `shape` (any shape if None) carrying all of `tags`."""
        query = {"datasetId": self.dataset_id, "limit": PAGE_SIZE, "sort": "_id", "sortdir": 1}
        if shape is not None:
            query["shape"] = shape
        if tags:
            query["tags"] = json.dumps(list(tags))  # the platform reads tags as a JSON array
        return self._pages("list the annotations", "upenn_annotation", query)

    def _pages(self, what: str, path: str, query: dict) -> list[dict]:
        """Every document `path` lists for `query`, in `_id` order, page by page along the
        `afterId` cursor, each page retried on its own."""
        query = {**query, "limit": PAGE_SIZE, "sort": "_id", "sortdir": 1}
        documents: list[dict] = []
        while True:
            page = self._retrying(what, lambda: self._girder.get(path, parameters=dict(query)))
            documents.extend(page)
            if len(page) < PAGE_SIZE:
                return documents
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

    def _tagged(self, any_of_tags: tuple[str, ...], shapes: tuple[str | None, ...]) -> list[dict]:
        """Annotations of any of `shapes` carrying any of `any_of_tags` (no tag filter if
        none), paged with the stable `_id` cursor, each once."""
        queries = [[tag] for tag in any_of_tags] or [None]
        found: dict[str, dict] = {}
        for shape in shapes:
            for tags in queries:
                for document in self._polygon_pages(tags, shape):
                    found.setdefault(document["_id"], document)
        return list(found.values())

    def polygons(self, any_of_tags: tuple[str, ...]) -> list[dict]:
        """Every polygon and rectangle (both outline an object) of the dataset carrying any of
        `any_of_tags` (all of them if none)."""
        return self._tagged(any_of_tags, ("polygon", "rectangle"))

    def tagged_annotations(self, any_of_tags: tuple[str, ...]) -> list[dict]:
        """Every annotation of any shape carrying any of `any_of_tags`."""
        return self._tagged(any_of_tags, (None,))

    def frame_image(self, location: Location, max_size: int | None = None) -> np.ndarray:
        """The frame as the user sees it: visible layers composited, (rows, cols, 3) float32
        in [0, 1]; with `max_size`, downsampled by the server so its longer side is at most that."""
        return self._retrying(
            f"read the image at XY {location.xy + 1}, Z {location.z + 1}, Time {location.time + 1}",
            lambda: self._images.get_composite(
                xy=location.xy, z=location.z, time=location.time, dtype="float32", max_size=max_size
            ),
        )

    def window_image(self, location: Location, window: Window, max_size: int | None = None) -> np.ndarray:
        """The part of the frame `window` covers, as `frame_image` draws it; with
        `max_size`, downsampled by the server so its longer side is at most that."""
        crop = (window.left, window.top, window.left + window.width, window.top + window.height)
        return self._retrying(
            f"read the image at XY {location.xy + 1}, Z {location.z + 1}, Time {location.time + 1}",
            lambda: self._images.get_composite(
                xy=location.xy, z=location.z, time=location.time, dtype="float32", max_size=max_size, crop=crop
            ),
        )

    def marked_annotations(self, run_key: str, tags: list[str]) -> dict[str, dict]:
        """original id -> refined document, for the polygons carrying all of `tags` whose
        marker is "<run_key>/<original id>" (created by a run with the same settings)."""
        prefix = f"{run_key}/"
        documents = self._polygon_pages(tags or None)
        return {
            str(doc[MARKER_KEY])[len(prefix):]: doc
            for doc in documents
            if str(doc.get(MARKER_KEY, "")).startswith(prefix)
        }

    def dataset_connections(self) -> list[dict]:
        """Every annotation connection of the dataset, paged with the `_id` cursor."""
        return self._pages("read annotation connections", "annotation_connection", {"datasetId": self.dataset_id})

    # --- writes ------------------------------------------------------------------

    def create_annotations(self, documents: list[dict]) -> list[dict]:
        """POST one chunk; returns the created documents in request order."""
        return list(self._post_once("upenn_annotation/multiple", documents))

    def create_connections(self, connections: list[dict]) -> list[dict]:
        return list(self._post_once("annotation_connection/multiple", connections))

    def connect_to_nearest(self, annotation_ids: list[str], tags: list[str], channel: int | None) -> None:
        self._post_once(
            "annotation_connection/connectTo",
            {"annotationsIds": annotation_ids, "tags": tags, "channelId": channel, "datasetId": self.dataset_id},
        )

    def delete_annotations(self, annotation_ids: list[str]) -> None:
        self._retrying(
            "delete the original annotations",
            lambda: self._girder.sendRestRequest("DELETE", "upenn_annotation/multiple", json=annotation_ids),
        )

    def delete_connections(self, connection_ids: list[str]) -> None:
        self._retrying(
            "delete connections",
            lambda: self._girder.sendRestRequest("DELETE", "annotation_connection/multiple", json=connection_ids),
        )


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
