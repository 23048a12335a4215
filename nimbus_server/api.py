"""The REST routes (PLATFORM.md §4): parameter parsing in front of the store."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from nimbus_server.annotation_index import AnnotationQuery, ListFilters
from nimbus_server.errors import ApiError, NotFoundPage
from nimbus_server.paging import Paging
from nimbus_server.schema import convert_object_id, is_object_id, parse_object_id
from nimbus_server.store import Store


@dataclass
class Request:
    method: str
    path: str  # relative to /api/v1, without surrounding slashes
    query: dict[str, str]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern
    user: dict = field(default_factory=dict)  # who the token logs in

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8") or "null")
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "Invalid JSON passed in request body.") from None

    def json_list(self) -> list:
        body = self.json()
        if not isinstance(body, list):
            raise ApiError(400, "The request body must be a JSON list.")
        return body

    def json_object(self) -> dict:
        body = self.json()
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        return cls(status, json.dumps(payload).encode("utf-8"), headers=headers or {})

    @classmethod
    def of_error(cls, error: ApiError) -> "Response":
        if isinstance(error, NotFoundPage):
            return cls(error.status, error.PAGE.encode("utf-8"), "text/html")
        return cls.of_json(error.payload(), error.status)


def _required(query: dict[str, str], name: str) -> str:
    if name not in query:
        raise ApiError(400, f'Parameter "{name}" is required.')
    return query[name]


def _integer(query: dict[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        return int(query[name])
    except ValueError:
        raise ApiError(400, f"Invalid value for integer parameter {name}: {query[name]}.") from None


def _boolean(query: dict[str, str], name: str) -> bool:
    return query.get(name, "false").lower() in ("true", "1", "yes", "on")


def _json_array(query: dict[str, str], name: str) -> list | None:
    if name not in query:
        return None
    try:
        value = json.loads(query[name])
    except ValueError:
        raise ApiError(400, f"Parameter {name} must be valid JSON.") from None
    if not isinstance(value, list):
        raise ApiError(400, f"Parameter {name} must be a JSON array.")
    return value


def _paging(query: dict[str, str], default_sort: str = "_id") -> Paging:
    offset = _integer(query, "offset", 0)
    if offset < 0:
        raise ApiError(400, "Parameter offset must not be negative.")
    after_id = query.get("afterId")
    return Paging(
        limit=abs(_integer(query, "limit", 50)),
        offset=offset,
        sort=query.get("sort") or default_sort,
        sortdir=_integer(query, "sortdir", 1),
        after_id=convert_object_id(after_id) if after_id else None,  # the plugin: ObjectId(afterId)
    )


def _annotation_query(query: dict[str, str]) -> AnnotationQuery:
    return AnnotationQuery(
        dataset_id=convert_object_id(_required(query, "datasetId")),  # the plugin: ObjectId(datasetId)
        shape=query.get("shape") or None,
        tags=tuple(_json_array(query, "tags") or ()),
    )


def _list_filters(body: dict) -> ListFilters:
    """POST upenn_annotation/list/ids' filters, checked as helpers/validation.py checks
    them (400 for a malformed one). Filters on property values, id constraints and id
    substrings are not modelled here: they are refused."""
    filters = body.get("filters") or {}
    if not isinstance(filters, dict):
        raise ApiError(400, "filters must be an object")
    unmodelled = sorted(set(filters) - {"shape", "tags", "location"})
    if unmodelled:
        raise ApiError(400, f"The embedded server does not model the filters {unmodelled}")
    tags = filters.get("tags")
    if tags is not None and not isinstance(tags, dict):
        raise ApiError(400, "filters.tags must be an object")
    values = (tags or {}).get("values")
    if values is not None and not isinstance(values, list):
        raise ApiError(400, "filters.tags.values must be a list")
    location = filters.get("location")
    if location is not None and not isinstance(location, dict):
        raise ApiError(400, "filters.location must be an object")
    location = location or {}
    return ListFilters(shape=filters.get("shape") or None, tags=tuple(values or ()),
                       exclusive=bool((tags or {}).get("exclusive")),
                       location=(location.get("XY"), location.get("Z"), location.get("Time")))


def _total_count(count: int) -> dict[str, str]:
    """Girder's `Girder-Total-Count` header: every page of a listing counts its query's
    matches (Girder 5 gives cursors `count` back, girder/models/__init__.py)."""
    return {"Girder-Total-Count": str(count)}


_ID = r"(?P<id>[^/]+)"
# (method, path pattern, Api method name); the first match wins.
ROUTES: list[tuple[str, str, str]] = [
    ("GET", "user/me", "user_me"),
    ("GET", f"folder/{_ID}", "get_folder"),
    ("GET", "item", "list_items"),
    ("GET", f"item/{_ID}", "get_item"),
    ("GET", f"item/{_ID}/tiles", "tiles"),
    ("GET", f"item/{_ID}/tiles/region", "region"),
    ("GET", f"item/{_ID}/tiles/histogram", "histogram"),
    ("GET", "dataset_view", "list_views"),
    ("GET", f"upenn_collection/{_ID}", "get_configuration"),
    ("GET", "upenn_annotation", "list_annotations"),
    ("GET", "upenn_annotation/count", "count_annotations"),
    ("POST", "upenn_annotation", "create_annotation"),
    ("POST", "upenn_annotation/multiple", "create_annotations"),
    ("PUT", "upenn_annotation/multiple", "update_annotations"),
    ("DELETE", "upenn_annotation/multiple", "delete_annotations"),
    ("POST", "upenn_annotation/hydrate", "hydrate"),
    ("POST", "upenn_annotation/list/ids", "list_annotation_ids"),
    ("GET", f"upenn_annotation/{_ID}", "get_annotation"),
    ("PUT", f"upenn_annotation/{_ID}", "update_annotation"),
    ("DELETE", f"upenn_annotation/{_ID}", "delete_annotation"),
    ("GET", "annotation_connection", "list_connections"),
    ("POST", "annotation_connection", "create_connection"),
    ("POST", "annotation_connection/multiple", "create_connections"),
    ("DELETE", "annotation_connection/multiple", "delete_connections"),
    ("POST", "annotation_connection/connectTo", "connect_to"),
    ("GET", f"annotation_connection/{_ID}", "get_connection"),
    ("DELETE", f"annotation_connection/{_ID}", "delete_connection"),
    ("GET", "history", "list_history"),
    ("PUT", "history/undo", "undo"),
    ("PUT", "history/redo", "redo"),
    ("POST", "worker_interface", "set_interface"),
    ("GET", "worker_interface", "get_interface"),
]
_COMPILED = [(method, re.compile(pattern), name) for method, pattern, name in ROUTES]
RESOURCES = frozenset(pattern.split("/")[0] for _, pattern, _ in ROUTES)
# The routes Girder and the plugin mark `access.public`: a request with an unknown token
# runs them as the anonymous user; the others ask to log in.
PUBLIC_ROUTES = frozenset({
    "user_me", "get_folder", "list_items", "get_item", "tiles", "region", "histogram", "list_views",
    "get_configuration", "list_annotations", "count_annotations", "hydrate", "list_annotation_ids",
    "get_annotation", "list_connections", "get_connection",
})
# The routes the annotation plugin at 818835a has and an older one has not.
NEWER_ROUTES = frozenset({"POST upenn_annotation/list/ids"})


class Api:
    """Answers one authenticated request. `missing_routes` ("METHOD path pattern", e.g.
    NEWER_ROUTES) are left out, as a server with an older plugin has them."""

    def __init__(self, store: Store, missing_routes: frozenset[str] = frozenset()) -> None:
        self.store = store
        unknown = missing_routes - {f"{method} {pattern}" for method, pattern, _ in ROUTES}
        if unknown:
            raise ValueError(f"no such routes: {sorted(unknown)}")
        self._routes = [(method, pattern, name) for method, pattern, name in _COMPILED
                        if f"{method} {pattern.pattern}" not in missing_routes]

    def is_public(self, request: Request) -> bool:
        """Whether the route `request` takes runs without a user (a path with no route is
        answered as such, whoever asks)."""
        try:
            return self._route(request).__name__ in PUBLIC_ROUTES
        except ApiError:
            return True

    def handle(self, request: Request) -> Response:
        handler = self._route(request)
        result = handler(request)
        return result if isinstance(result, Response) else Response.of_json(result)

    def _route(self, request: Request) -> Callable[[Request], Any]:
        for method, pattern, name in self._routes:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                request.params = match.groupdict()
                return getattr(self, name)
        resource, _, rest = request.path.partition("/")
        if resource in RESOURCES:  # Girder: a resource it has, no route of it
            raise ApiError(400, f'No matching route for "{request.method} {rest}"')
        raise NotFoundPage()

    @staticmethod
    def _id(request: Request) -> str:
        return parse_object_id(request.params["id"])

    # --- user, folders, items, images ---------------------------------------

    def user_me(self, request: Request) -> dict:
        return self.store.users.me(request.user)

    def get_folder(self, request: Request) -> dict:
        return self.store.dataset_call("get_folder", self._id(request), request.user)

    def list_items(self, request: Request) -> list[dict]:
        folder_id = parse_object_id(_required(request.query, "folderId"))
        return self.store.dataset_call("list_items", folder_id, _paging(request.query, default_sort="lowerName"),
                                       request.user)

    def get_item(self, request: Request) -> dict:
        return self.store.dataset_call("get_item", self._id(request), request.user)

    def _image(self, request: Request):
        return self.store.dataset_call("image", self._id(request), request.user)

    def tiles(self, request: Request) -> dict:
        return self._image(request).tiles_metadata()

    def region(self, request: Request) -> Response:
        region = self._image(request).region(request.query)
        return Response(200, region.content, region.content_type)

    def histogram(self, request: Request) -> list[dict]:
        return self._image(request).histogram(request.query)

    def list_views(self, request: Request) -> list[dict]:
        dataset_id = request.query.get("datasetId")
        return self.store.dataset_call(
            "list_views", parse_object_id(dataset_id) if dataset_id else None,
            _boolean(request.query, "currentUserOnly"), _paging(request.query), request.user,
        )

    def get_configuration(self, request: Request) -> dict:
        return self.store.dataset_call("get_configuration", self._id(request), request.user)

    # --- annotations --------------------------------------------------------

    def list_annotations(self, request: Request) -> Response:
        body, count = self.store.annotation_page(_annotation_query(request.query), _paging(request.query),
                                                 request.user)
        return Response(200, body, headers=_total_count(count))

    def count_annotations(self, request: Request) -> dict:
        return {"count": self.store.count_annotations(_annotation_query(request.query), request.user)}

    def list_annotation_ids(self, request: Request) -> dict:
        body = request.json_object()
        dataset_id = body.get("datasetId")
        if dataset_id is None:
            raise ApiError(400, "datasetId is required")
        if not isinstance(dataset_id, str) or not re.fullmatch(r"[0-9a-fA-F]{24}", dataset_id):
            raise ApiError(400, "datasetId is not a valid id")
        ids = self.store.list_annotation_ids(dataset_id.lower(), _list_filters(body), request.user)
        return {"total": len(ids), "ids": ids}

    def get_annotation(self, request: Request) -> dict:
        return self.store.get_annotation(self._id(request), request.user)

    def hydrate(self, request: Request) -> list[dict]:
        ids = request.json_list()
        if not all(is_object_id(value) for value in ids):  # the plugin's requireObjectId
            raise ApiError(400, "annotationId is not a valid id")
        return self.store.hydrate([value.lower() for value in ids], request.user)

    def create_annotation(self, request: Request) -> dict:
        return self.store.create_annotation(request.json(), request.user)

    def create_annotations(self, request: Request) -> list[dict]:
        return self.store.create_annotations(request.json_list(), request.user)

    def update_annotation(self, request: Request) -> None:
        self.store.update_annotation(self._id(request), request.json(), request.user)

    def update_annotations(self, request: Request) -> None:
        self.store.update_annotations(request.json_list(), request.user)

    def delete_annotation(self, request: Request) -> None:
        self.store.delete_annotation(self._id(request), request.user)

    def delete_annotations(self, request: Request) -> None:
        self.store.delete_annotations(request.json_list(), request.user)

    # --- connections --------------------------------------------------------

    def list_connections(self, request: Request) -> Response:
        query = request.query
        # The plugin passes each straight to ObjectId: a malformed one is a 500.
        filters = {"datasetId": convert_object_id(_required(query, "datasetId"))}
        for key in ("parentId", "childId", "nodeAnnotationId"):
            if query.get(key):
                filters[key] = convert_object_id(query[key])
        found, count = self.store.list_connections(filters, _paging(query), request.user)
        return Response.of_json(found, headers=_total_count(count))

    def create_connection(self, request: Request) -> dict:
        return self.store.create_connections([request.json()], request.user, single=True)[0]

    def create_connections(self, request: Request) -> list[dict]:
        return self.store.create_connections(request.json_list(), request.user)

    def connect_to(self, request: Request) -> list[dict]:
        body = request.json_object()
        missing = [key for key in ("annotationsIds", "tags", "channelId") if key not in body]
        if missing:
            raise ApiError(500, f"KeyError: {missing[0]!r}", "internal")
        return self.store.connect_to_nearest(body, request.user)

    def get_connection(self, request: Request) -> dict:
        return self.store.get_connection(self._id(request), request.user)

    def delete_connection(self, request: Request) -> None:
        self.store.delete_connection(self._id(request), request.user)

    def delete_connections(self, request: Request) -> str:
        return self.store.delete_connections(request.json_list(), request.user)

    # --- the undo history -----------------------------------------------------

    def list_history(self, request: Request) -> list[dict]:
        return self.store.history_entries(parse_object_id(_required(request.query, "datasetId")), request.user)

    def undo(self, request: Request) -> None:
        self.store.undo(parse_object_id(_required(request.query, "datasetId")), request.user)

    def redo(self, request: Request) -> None:
        self.store.undo(parse_object_id(_required(request.query, "datasetId")), request.user, redo=True)

    # --- worker interfaces --------------------------------------------------

    def set_interface(self, request: Request) -> dict:
        return self.store.set_interface(_required(request.query, "image"), request.json_object(), request.user)

    def get_interface(self, request: Request) -> Any:
        return self.store.get_interface(_required(request.query, "image"))
