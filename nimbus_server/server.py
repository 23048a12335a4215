"""NimbusServer: the platform double on a local port, with fault injection."""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np

from nimbus_server.access import ANONYMOUS, READ
from nimbus_server.api import Api, Request, Response
from nimbus_server.errors import ApiError
from nimbus_server.store import Store

API_ROOT = "/api/v1"
LogEntry = tuple[str, str, dict[str, str], int]


@dataclass
class Fault:
    """An injected failure; ``hits`` counts the requests it affected.

    Without ``after_apply`` the fault comes first: ``delay`` seconds, then ``status``
    (not applied), or, with no status, the request is applied after the delay (a write
    applied late, after the client gave up). With ``after_apply`` the request is applied,
    then the delay, then ``status`` (or the real answer, late). ``drop`` closes the
    connection instead of answering. ``apply_only`` applies only the first that many
    documents of a JSON list body (a partial insert).
    """

    method: str
    pattern: re.Pattern[str]
    status: int | None
    delay: float
    times: int | None
    after_apply: bool
    body: str | None
    drop: bool = False
    apply_only: int | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        exhausted = self.times is not None and self.hits >= self.times
        method_ok = self.method == "*" or self.method.upper() == method
        return not exhausted and method_ok and self.pattern.search(path) is not None

    def response(self) -> Response:
        assert self.status is not None
        return Response.of_error(ApiError(self.status, self.body or "Injected fault", "rest"))


FAULT_KINDS = ("error", "hang", "applied then 502", "late answer", "dropped", "applied then dropped",
               "applied late")


class RandomFaults:
    """A share of all requests failing, each in one of `kinds` (FAULT_KINDS) chosen by a
    seeded generator. `hang` is how long a hang or a late answer lasts (past the client's
    timeout); a late write is applied `late` seconds (a range) after it arrived."""

    def __init__(self, rate: float, seed: int, kinds: Sequence[str] = FAULT_KINDS, hang: float = 1.5,
                 late: tuple[float, float] = (1.2, 3.0)) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.rate, self.kinds, self.hang, self.late = rate, tuple(kinds), hang, late
        self._random = random.Random(seed)
        self.counts: dict[str, int] = {kind: 0 for kind in kinds}
        self.write_counts: dict[str, int] = {kind: 0 for kind in kinds}  # of those, on writes (not GET)

    def draw(self, method: str, path: str) -> Fault | None:
        if self._random.random() >= self.rate:
            return None
        kind = self._random.choice(self.kinds)
        self.counts[kind] += 1
        if method != "GET" and not path.endswith("hydrate"):
            self.write_counts[kind] += 1
        any_path = re.compile("")
        if kind == "error":
            return Fault(method, any_path, self._random.choice((500, 503)), 0.0, 1, False, "Injected error")
        if kind == "hang":
            return Fault(method, any_path, 504, self.hang, 1, False, "Gateway timeout")
        if kind == "applied then 502":
            return Fault(method, any_path, 502, 0.0, 1, True, "Bad gateway")
        if kind == "late answer":
            return Fault(method, any_path, None, self.hang, 1, True, None)
        if kind == "dropped":
            return Fault(method, any_path, None, 0.0, 1, False, None, drop=True)
        if kind == "applied then dropped":
            return Fault(method, any_path, None, 0.0, 1, True, None, drop=True)
        return Fault(method, any_path, None, self._random.uniform(*self.late), 1, False, None)


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    status: int  # 0: the connection was dropped without an answer
    body: bytes  # of writes (not GET) only


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: "NimbusServer"


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def _serve(self) -> None:
        self.server.app._serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass


class NimbusServer:
    """An in-process NimbusImage/Girder REST server for tests.

    ``with NimbusServer() as server: ...`` starts and stops it. ``token`` logs in the
    user who owns every dataset added; `add_user` and `share` make others.
    ``missing_routes`` ("METHOD pattern", e.g. ``api.NEWER_ROUTES``) are left out, as a
    server with an older annotation plugin lacks them (Girder answers 400 "No matching
    route").
    """

    def __init__(self, token: str | None = None, max_body_bytes: int | None = None,
                 put_keeps_only_schema_fields: bool = False, missing_routes: Sequence[str] = ()) -> None:
        self.token = token if token is not None else secrets.token_hex(24)
        self._store = Store(self.token, put_keeps_only_schema_fields=put_keeps_only_schema_fields)
        self._api = Api(self._store, frozenset(missing_routes))
        self._faults: list[Fault] = []
        self._random_faults: RandomFaults | None = None
        self._log: list[LogEntry] = []
        self._requests: list[LoggedRequest] = []
        self.max_body_bytes = max_body_bytes  # a larger request body gets a 413, as a proxy would answer
        self._meta_lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition(self._meta_lock)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> "NimbusServer":
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.app = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="nimbus-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> "NimbusServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("The server is not started.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{API_ROOT}"

    # --- seeding and inspection ---------------------------------------------

    def add_dataset(
        self,
        frames: np.ndarray,
        name: str = "demo",
        channel_names: Sequence[str] | None = None,
        layers: Sequence[dict] | None = None,
        mm_x: float | None = None,
    ) -> str:
        """A dataset from frames shaped (XY, Z, T, C, H, W); returns its folder id."""
        return self._store.add_dataset(
            np.asarray(frames),
            name,
            list(channel_names) if channel_names is not None else None,
            list(layers) if layers is not None else None,
            mm_x,
        )

    def add_dataset_from_files(
        self,
        paths: Sequence[str | Path],
        name: str = "demo",
        channel_names: Sequence[str] | None = None,
        layers: Sequence[dict] | None = None,
        mm_x: float | None = None,
    ) -> str:
        """A one-frame dataset whose channels are 2-D image files (PNG, TIFF)."""
        from PIL import Image

        planes = []
        for path in paths:
            with Image.open(path) as image:
                plane = np.asarray(image)
            if plane.ndim != 2:
                raise ValueError(f"{path} is not a single-band image (shape {plane.shape})")
            planes.append(plane)
        if not planes:
            raise ValueError("No image files given")
        if len({(p.shape, p.dtype) for p in planes}) != 1:
            raise ValueError("The image files differ in size or pixel type")
        names = list(channel_names) if channel_names is not None else [Path(p).stem for p in paths]
        frames = np.stack(planes)[np.newaxis, np.newaxis, np.newaxis]
        return self.add_dataset(frames, name, names, layers, mm_x)

    def add_user(self, login: str, token: str | None = None) -> str:
        """A new user (with a Private folder, no access to anything else); returns their token."""
        return self._store.add_user(login, token)

    def share(self, dataset_id: str, login: str, level: int = READ, view: bool = True) -> None:
        """Give the user `login` `level` (access.READ, WRITE, ADMIN; NONE takes it away)
        on the dataset's folder; with `view`, on its view and configuration too, as the
        app's Share does (without: as Girder's own folder sharing, which the view's
        access list does not follow)."""
        self._store.share(dataset_id, login, level, view)

    def history(self, dataset_id: str) -> list[dict]:
        """The dataset owner's undo entries in the dataset, newest first."""
        return self._store.history_entries(dataset_id, self._store.owner)

    def add_annotation(
        self,
        dataset_id: str,
        coordinates: Sequence[dict] | Sequence[Sequence[float]],
        tags: Sequence[str] | None = None,
        shape: str = "polygon",
        channel: int = 0,
        location: dict | None = None,
        **extra: Any,
    ) -> str:
        """Insert an annotation directly (no validation); returns its id.
        ``coordinates`` are ``{"x", "y"[, "z"]}`` dicts or ``(x, y)`` pairs."""
        doc = {
            "coordinates": [
                dict(point) if isinstance(point, dict) else {"x": float(point[0]), "y": float(point[1])}
                for point in coordinates
            ],
            "tags": list(tags or []),
            "channel": channel,
            "location": dict(location) if location is not None else {"XY": 0, "Z": 0, "Time": 0},
            "shape": shape,
            "datasetId": dataset_id,
            **extra,
        }
        return self._store.insert_annotation(doc)

    def add_connection(
        self,
        dataset_id: str,
        parent_id: str,
        child_id: str,
        tags: Sequence[str] | None = None,
        label: str | None = None,
    ) -> str:
        """Insert a connection directly (no validation); returns its id."""
        doc: dict[str, Any] = {
            "parentId": parent_id, "childId": child_id, "datasetId": dataset_id, "tags": list(tags or []),
        }
        if label is not None:
            doc["label"] = label
        return self._store.add_connection(doc)

    def annotations(self, dataset_id: str) -> list[dict]:
        """The annotations a dataset query finds, in ``_id`` order."""
        return self._store.dataset_annotations(dataset_id)

    def connections(self, dataset_id: str) -> list[dict]:
        return self._store.dataset_connections(dataset_id)

    def delete_annotations(self, annotation_ids: Sequence[str]) -> None:
        """Remove annotations directly (for tests and benchmarks, not in any undo history);
        connections are kept."""
        self._store.delete_annotations(list(annotation_ids), None)

    @property
    def interfaces(self) -> dict[str, Any]:
        """Image name -> the interface posted for it."""
        return self._store.all_interfaces()

    @property
    def request_log(self) -> list[LogEntry]:
        """(method, path, query, status) of every request so far, in order."""
        with self._meta_lock:
            return list(self._log)

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every request so far, in order, with the bodies of writes."""
        with self._meta_lock:
            return list(self._requests)

    # --- faults -------------------------------------------------------------

    def inject_fault(
        self,
        method: str,
        path_regex: str,
        status: int | None = None,
        delay: float = 0.0,
        times: int | None = None,
        after_apply: bool = False,
        body: str | None = None,
        drop: bool = False,
        apply_only: int | None = None,
    ) -> Fault:
        """Fail (or delay) requests whose method matches (``"*"``: any) and
        whose path below /api/v1/ matches ``re.search(path_regex)``; see `Fault`."""
        fault = Fault(method, re.compile(path_regex), status, delay, times, after_apply, body, drop, apply_only)
        with self._meta_lock:
            self._faults.append(fault)
        return fault

    def inject_random_faults(self, rate: float, seed: int, **options: Any) -> RandomFaults:
        """Make a share `rate` of all later requests fail at random (see `RandomFaults`)."""
        faults = RandomFaults(rate, seed, **options)
        with self._meta_lock:
            self._random_faults = faults
        return faults

    def clear_faults(self) -> None:
        with self._meta_lock:
            self._faults.clear()
            self._random_faults = None

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._meta_lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
            if self._random_faults is not None:
                return self._random_faults.draw(method, path)
        return None

    # --- HTTP ---------------------------------------------------------------

    def wait_until_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no request is being handled (a late write still sleeping, say);
        False if `timeout` seconds passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def _serve(self, handler: _Handler) -> None:
        with self._idle:
            self._in_flight += 1
        try:
            self._serve_one(handler)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _serve_one(self, handler: _Handler) -> None:
        method = handler.command
        parts = urlsplit(handler.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = unquote(parts.path)
        if path == API_ROOT or path.startswith(API_ROOT + "/"):
            path = path[len(API_ROOT):].strip("/")
            if self.max_body_bytes is not None and length > self.max_body_bytes:
                response = Response.of_error(ApiError(413, "Request Entity Too Large"))
            else:
                response = self._respond(handler, method, path, query, body)
        else:
            response = Response.of_error(ApiError(404, f'No matching route for "{method} {path}"'))
        # Logged before answering, so the log follows the order clients see.
        status = 0 if response is None else response.status
        with self._meta_lock:
            self._log.append((method, path, query, status))
            self._requests.append(LoggedRequest(method, path, query, status, body if method != "GET" else b""))
        if response is None:
            handler.close_connection = True  # dropped: the client gets no answer at all
            return
        self._send(handler, response)

    def _respond(self, handler: _Handler, method: str, path: str, query: dict[str, str], body: bytes
                 ) -> Response | None:
        fault = self._take_fault(method, path)
        if fault is not None and not fault.after_apply:
            time.sleep(fault.delay)
            if fault.drop:
                return None
            if fault.status is not None:
                return fault.response()
        if fault is not None and fault.apply_only is not None:
            body = _first_of_list(body, fault.apply_only)
        response = self._answer(handler, Request(method, path, query, body))
        if fault is not None and fault.after_apply:
            time.sleep(fault.delay)
            if fault.drop:
                return None
            if fault.status is not None:
                return fault.response()
        return response

    def _answer(self, handler: _Handler, request: Request) -> Response:
        user = self._store.user_for(handler.headers.get("Girder-Token", ""))
        if user is None:
            if not self._api.is_public(request):
                return Response.of_error(ApiError(401, "You must be logged in.", "access"))
            user = ANONYMOUS
        request.user = user
        try:
            return self._api.handle(request)
        except ApiError as error:
            return Response.of_error(error)
        except Exception as error:  # an uncaught server error, as Girder reports it
            return Response.of_error(ApiError(500, f"{type(error).__name__}: {error}", "internal"))

    @staticmethod
    def _send(handler: _Handler, response: Response) -> None:
        try:
            handler.send_response(response.status)
            handler.send_header("Content-Type", response.content_type)
            handler.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out or was killed); what it asked for stands


def _first_of_list(body: bytes, count: int) -> bytes:
    """A JSON list body cut to its first `count` items (other bodies unchanged)."""
    try:
        items = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return body
    return json.dumps(items[:count]).encode("utf-8") if isinstance(items, list) else body
