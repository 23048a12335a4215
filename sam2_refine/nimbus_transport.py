"""How every request reaches the platform, and what its failure means to the job.

This module owns how requests are sent (`nimbus` composes the accessors that say what to
ask; `writeback` owns what a write means):
- Every request has a client timeout (`TransportSettings.timeout`; girder_client sets
  none): the longest wait for the connection, and for each part of the answer.
- Reads (GET, and the read-only POSTs in READ_ONLY_POSTS) are retried on connection
  errors, timeouts, 429 and 5xx answers, with exponential backoff, request by request: a
  new attempt starts only within `retry_seconds` of the first, so one request, retries
  included, waits at most `retry_seconds` plus one timeout.
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

`Rest` is one job's session over the SDK's girder client: reads whose failures become the
user's `WorkerError`, writes whose failures become `OutcomeUnknown` / `PayloadTooLarge`,
listings paged along the `_id` cursor, and the clock of ids the job has seen. Ids are
ObjectIds, whose first 4 bytes are their creation time on the server: `cursor()` names a
point shortly before the next write, so what a write created can be listed after it.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from urllib3.util.retry import Retry

from .errors import WorkerError

PAGE_SIZE = 1000
# How far before the newest id seen a cursor starts: ids made by several server
# processes within the same second, or by hosts whose clocks differ slightly, need not
# sort in creation order.
CURSOR_SLACK_SECONDS = 10
# POSTs that only read, so are retried like GETs.
READ_ONLY_POSTS = ("upenn_annotation/hydrate", "upenn_annotation/list/ids")

T = TypeVar("T")


@dataclass(frozen=True)
class TransportSettings:
    timeout: float        # seconds, per request
    retry_seconds: float  # a read's retries start within this long of its first attempt
    first_backoff: float  # seconds before the first retry; doubles


class OutcomeUnknown(Exception):
    """A write was sent but whether the server applied it is unknown. `may_apply_later`:
    nobody waited for the server to finish (the client's timeout, a gateway's 504, a
    connection broken while waiting), so it may still be applying it; an error answer
    (500, 502, 503, 429) came from something that did wait."""

    def __init__(self, description: str, may_apply_later: bool = True):
        super().__init__(description)
        self.may_apply_later = may_apply_later


class PayloadTooLarge(Exception):
    """The server refused a request body as too large (413); nothing was applied."""


# --- what an error is ------------------------------------------------------------------


def status_of(error: BaseException | None) -> int | None:
    """The HTTP status of an error answer (girder_client's HttpError), else None."""
    return getattr(error, "status", None)


def answer_of(error: BaseException | None) -> dict:
    """The JSON body of an error answer ({"message", "type"} from Girder), else {}."""
    try:
        answer = json.loads(getattr(error, "responseText", "") or "")
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def route_missing(error: BaseException | None) -> bool:
    """The server has no such route: Girder answers 400 "No matching route for ..." under a
    resource it has (a plugin older than the route), 404 for a resource it has not."""
    status = status_of(error)
    return status in (404, 405) or (status == 400 and str(answer_of(error).get("message", "")).startswith(
        "No matching route"))


def _is_transient_status(status: int | None) -> bool:
    return status is not None and (status == 429 or status >= 500)


def is_transient(error: Exception) -> bool:
    return isinstance(error, (requests.ConnectionError, requests.Timeout)) or _is_transient_status(status_of(error))


def was_not_sent(error: Exception) -> bool:
    """True when the request never reached the server (so repeating it is safe):
    the connection was refused or could not be opened in time."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    if isinstance(error, requests.ConnectionError) and error.args:
        reason = getattr(error.args[0], "reason", error.args[0])
        return isinstance(reason, NewConnectionError)
    return False


def may_apply_later(error: Exception) -> bool:
    if was_not_sent(error):
        return False
    return isinstance(error, (requests.ConnectionError, requests.Timeout)) or status_of(error) == 504


def access_error(error: Exception) -> WorkerError | None:
    """The user's error for a refused token (401) or a refused dataset (403)."""
    status = status_of(error)
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


def describe(error: Exception) -> str:
    status = status_of(error)
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


def _is_read(request: requests.PreparedRequest) -> bool:
    if request.method in ("GET", "HEAD"):
        return True
    path = urllib.parse.urlsplit(request.url or "").path.rstrip("/")
    return request.method == "POST" and path.endswith(READ_ONLY_POSTS)


# --- the session's transport -----------------------------------------------------------


class JobTransport(HTTPAdapter):
    """The session's transport: the timeout for every request, reads retried on transient
    failures within the retry budget, writes sent once (again only if never sent).
    `settings` is asked at each request, so the job's settings apply as they are then."""

    def __init__(self, settings: Callable[[], TransportSettings]) -> None:
        # urllib3's Retry with nothing to retry: the same as requests' own default adapter.
        super().__init__(max_retries=Retry(total=0, read=False, redirect=False, raise_on_status=False))
        self._settings = settings

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        settings = self._settings()
        timeout = settings.timeout if timeout is None else timeout
        read = _is_read(request)
        deadline = time.monotonic() + settings.retry_seconds
        backoff = settings.first_backoff
        while True:
            may_retry = time.monotonic() + backoff <= deadline
            try:
                response = super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                                        proxies=proxies)
                if read and not stream:
                    response.content  # noqa: B018 (a body cut off mid-way is a failed attempt too)
            except (requests.ConnectionError, requests.Timeout) as error:
                if not may_retry or not (read or was_not_sent(error)):
                    raise
            else:
                if not (read and may_retry and _is_transient_status(response.status_code)):
                    return response
                response.close()
            time.sleep(backoff)
            backoff *= 2


# --- one job's session -----------------------------------------------------------------


def object_id_time(object_id: str) -> int | None:
    """The creation second an ObjectId holds; None if it is not one."""
    if len(object_id) != 24:
        return None
    try:
        return int(object_id[:8], 16)
    except ValueError:
        return None


class Rest:
    """One job's requests through the SDK's girder client (`girder`), whose session gets
    `JobTransport` in place of the SDK's retrying one."""

    def __init__(self, girder, settings: Callable[[], TransportSettings]):
        self._girder = girder
        transport = JobTransport(settings)
        for scheme in ("http://", "https://"):
            girder._session.mount(scheme, transport)
        self._newest_id_time: int | None = None

    # --- reads: failures become the user's error -----------------------------------------

    def read(self, what: str, call: Callable[[], T]) -> T:
        """`call` (its requests retried by the transport), its failure as the user's error;
        the error's `__cause__` is the original failure."""
        try:
            return call()
        except WorkerError:
            raise
        except Exception as error:
            access = access_error(error)
            if access is not None:
                raise access from error
            if is_transient(error):
                raise WorkerError(
                    f"Could not {what}: {describe(error)}",
                    info="The platform did not answer in time; try again later.",
                    title="Platform unavailable",
                ) from error
            raise WorkerError(
                f"Could not {what}: {describe(error)}",
                info="Check that the dataset still exists and opens in the app, then run the tool again.",
                title="Platform error",
            ) from error

    def get_json(self, path: str, parameters: dict) -> Any:
        """A GET's JSON answer, parsed with orjson: a dataset's listing is mostly coordinates."""
        return orjson.loads(self._girder.get(path, parameters=parameters, jsonResp=False).content)

    def post_json(self, path: str, body: Any) -> Any:
        """A read-only POST's JSON answer (READ_ONLY_POSTS), parsed with orjson."""
        return orjson.loads(self._girder.post(path, json=body, jsonResp=False).content)

    def listing(self, what: str, path: str, query: dict) -> Iterator[dict]:
        """Every document `path` lists for `query`, in `_id` order, page by page along the
        `afterId` cursor; each page is released once its documents are consumed."""
        query = {**query, "limit": PAGE_SIZE, "sort": "_id", "sortdir": 1}
        while True:
            page = self.read(what, lambda: self.get_json(path, dict(query)))
            if page:
                self.saw(str(page[-1]["_id"]))
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

    def existing(self, path: str, ids: list[str]) -> set[str]:
        """Which of `ids` `path/{id}` still answers, asked id by id; Girder answers an
        unknown id with 400 "Invalid <model> id (...)" (an older server or a proxy: 404)."""
        present = set()
        for document_id in ids:
            try:
                self.read("check what exists", lambda: self._girder.get(f"{path}/{document_id}"))
            except WorkerError as error:
                if status_of(error.__cause__) in (400, 404):
                    continue
                raise
            present.add(document_id)
        return present

    # --- writes: sent once ----------------------------------------------------------------

    def write(self, method: str, path: str, body: Any) -> Any:
        """One write: its answer, or OutcomeUnknown / PayloadTooLarge / the final refusal.
        The body is sent as `json_body` makes it, the answer parsed with orjson (a create's
        body and answer are mostly coordinates)."""
        try:
            answer = self._girder.sendRestRequest(method, path, data=json_body(body), headers=_JSON_BODY,
                                                  jsonResp=False)
            return orjson.loads(answer.content)
        except Exception as error:
            access = access_error(error)
            if access is not None:
                raise access from error
            if status_of(error) == 413:
                raise PayloadTooLarge(describe(error)) from error
            if is_transient(error):
                raise OutcomeUnknown(describe(error), may_apply_later(error)) from error
            raise

    def created(self, documents: list[dict]) -> list[dict]:
        """A create's answer, its ids seen."""
        for document in documents:
            self.saw(str(document["_id"]))
        return documents

    # --- ids and cursors ------------------------------------------------------------------

    def saw(self, object_id: str) -> None:
        seconds = object_id_time(object_id)
        if seconds is not None and (self._newest_id_time is None or seconds > self._newest_id_time):
            self._newest_id_time = seconds

    def cursor(self) -> str | None:
        """An id before any the server creates from now on (None before the job saw one)."""
        if self._newest_id_time is None:
            return None
        return f"{max(self._newest_id_time - CURSOR_SLACK_SECONDS, 0):08x}" + "0" * 16


# --- request bodies --------------------------------------------------------------------


def iter_chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


_JSON_BODY = {"Content-Type": "application/json"}


def json_body(value: Any) -> bytes:
    """`value` as a request body: compact JSON (orjson; floats written as Python writes them;
    numpy numbers as numbers)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def json_size(value: Any) -> int:
    """Bytes of `value` as a request body."""
    return len(json_body(value))


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
