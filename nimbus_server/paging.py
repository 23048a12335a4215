"""Girder's paging (limit, offset, sort) with NimbusImage's afterId cursor, and the
copies documents leave the server as."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable


@dataclass
class Paging:
    """Girder's paging parameters, plus NimbusImage's ``afterId`` cursor."""

    limit: int = 50
    offset: int = 0
    sort: str = "_id"
    sortdir: int = 1
    after_id: str | None = None


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def out(doc: Any) -> Any:
    """A deep copy with plain JSON types (ids as ``str``)."""
    return json.loads(json.dumps(doc))


def _field(doc: dict, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _mongo_order(value: Any) -> tuple:
    """MongoDB's cross-type sort order: null < numbers < strings < objects
    < arrays < booleans."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (5, value)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3 if isinstance(value, dict) else 4, json.dumps(value))


def page(docs: list[dict], paging: Paging) -> list[dict]:
    """Sort (stable, ties in ``_id`` order), then afterId or offset, then limit."""
    docs = sorted(docs, key=lambda d: d["_id"])
    if paging.sort != "_id":
        docs.sort(key=lambda d: _mongo_order(_field(d, paging.sort)), reverse=paging.sortdir < 0)
    elif paging.sortdir < 0:
        docs.reverse()
    if paging.after_id is not None:
        docs = [d for d in docs if d["_id"] > paging.after_id]
    else:
        docs = docs[paging.offset:]
    return docs[:paging.limit] if paging.limit else docs


def page_in_order(order: list[str], table: dict[str, dict], keep: Callable[[dict], bool], paging: Paging
                   ) -> list[dict]:
    """`page` sorted by ascending `_id`, walking `order` (every id inserted, ascending)
    from the cursor instead of sorting the whole table."""
    start = bisect.bisect_right(order, paging.after_id) if paging.after_id is not None else 0
    skip = paging.offset if paging.after_id is None else 0
    found: list[dict] = []
    for index in range(start, len(order)):
        doc = table.get(order[index])
        if doc is None or not keep(doc):
            continue
        if skip:
            skip -= 1
            continue
        found.append(doc)
        if paging.limit and len(found) >= paging.limit:
            break
    return found
