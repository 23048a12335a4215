"""The one policy every write of the job goes through, and what it needs of the platform.

A write is sent once. When its outcome is unknown (`nimbus.OutcomeUnknown`) the server
is asked what it holds, again and again until the write shows or the server has had
`settle_seconds()` to apply it, and only what is still missing is sent again, within
`MAX_SENDS` sends and `write_budget()` seconds; what is left then is handed back for the
end of the job. A 413 (`PayloadTooLarge`) halves the request; any other refusal is final
and raised to the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from . import nimbus
from .errors import WorkerError
from .nimbus import AnnotationRecord, ConnectionRecord, OutcomeUnknown, PayloadTooLarge, iter_chunks

CHUNK_BYTES = 1_000_000  # under the common 1 MiB proxy body limit; a 413 halves it
MAX_SENDS = 4  # of one write, before it is left for the end of the job
FIRST_POLL = 0.25  # seconds before the first re-check of an unknown outcome; doubles

T = TypeVar("T")


class Platform(Protocol):
    """What write-back needs of the platform (`nimbus.Platform`; tests use an in-memory fake)."""

    def cursor(self) -> str | None:
        """An id before any the server creates from now on."""

    def create_annotations(self, documents: list[dict]) -> list[dict]:
        """Create in one request; the created documents in request order. Raises
        `OutcomeUnknown` when the request may or may not have been applied."""

    def annotations_since(self, cursor: str | None, tags: tuple[str, ...]) -> Iterable[AnnotationRecord]:
        """The polygons carrying all of `tags` created after `cursor`."""

    def existing_annotations(self, annotation_ids: list[str]) -> set[str]: ...

    def delete_annotations(self, annotation_ids: list[str]) -> None: ...

    def connections(self, touching: Iterable[str] | None = None) -> list[ConnectionRecord]: ...

    def connections_since(self, cursor: str | None) -> Iterable[ConnectionRecord]: ...

    def existing_connections(self, connection_ids: list[str]) -> set[str]: ...

    def create_connections(self, connections: list[dict]) -> list[dict]: ...

    def delete_connections(self, connection_ids: list[str]) -> None: ...

    def tagged_annotations(self, any_of_tags: tuple[str, ...], locations=None) -> list[AnnotationRecord]:
        """Every annotation (any shape) carrying any of the tags, at `locations`."""

    def polygons(self, any_of_tags: tuple[str, ...], locations=None) -> list[AnnotationRecord]: ...

    def output_polygons(self, tags: tuple[str, ...], locations=None) -> list[AnnotationRecord]: ...


@dataclass
class Clock:
    """Time as write-back waits on it (tests substitute one that does not sleep)."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def settle_seconds() -> float:
    """How long the server gets to apply a write whose outcome is unknown before what it
    lacks is sent again: as long as the client waited for it, within the retry budget."""
    return min(nimbus.HTTP_TIMEOUT, nimbus.RETRY_SECONDS)


def write_budget() -> float:
    """Seconds from a write's first send after which it is left for the end of the job."""
    return nimbus.RETRY_SECONDS + settle_seconds()


def server_message(error: BaseException) -> str:
    """A refusal in the user's words: the worker's own message, or the platform's."""
    if isinstance(error, WorkerError):
        return error.message
    text = getattr(error, "responseText", None)
    status = getattr(error, "status", None)
    try:
        message = json.loads(text)["message"] if text else str(error)
    except (ValueError, KeyError, TypeError):
        message = text or str(error)
    return f"HTTP {status}: {message}" if status else message


class WritePolicy:
    """The job's writes: `complete` each one; `chunk_bytes` is the request size that the
    server has accepted so far (a 413 halves it for the rest of the job)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.chunk_bytes = CHUNK_BYTES
        self.last_resend: float | None = None  # when a write the server may still apply was last failed
        self.last_problem = ""  # the last unknown outcome, in words

    def settled(self, pending: list[T], missing: Callable[[list[T]], list[T]], may_apply_later: bool = True
                ) -> list[T]:
        """What of `pending` the server still lacks. When it may still be applying the
        write, it is asked again and again until all of it shows or the server has had
        `settle_seconds()` since the write failed; otherwise once."""
        failed_at = self.clock.now()
        wait = FIRST_POLL
        while True:
            try:
                pending = missing(pending)
            except WorkerError:  # the check itself failed: the outcome is still unknown
                pass
            left = settle_seconds() - (self.clock.now() - failed_at)
            if not pending or not may_apply_later or left <= 0:
                return pending
            self.clock.sleep(min(wait, left))
            wait *= 2

    def complete(self, items: list[T], send: Callable[[list[T]], None], missing: Callable[[list[T]], list[T]],
                 verify_first: bool = False) -> list[T]:
        """Do the write `send` for `items`; return those it left undone. An unknown outcome
        is verified (`missing` says which items the server lacks) and only what is missing
        is sent again; a 413 halves the request. Final refusals are raised."""
        started = self.clock.now()
        pending = list(items)
        if verify_first:  # the end of the job has waited for late writes: one check is enough
            pending = self.settled(pending, missing, may_apply_later=False)
        sends = 0
        backoff = nimbus.FIRST_BACKOFF
        while pending:
            sends += 1
            try:
                send(pending)
                return []
            except PayloadTooLarge:
                if len(pending) == 1:
                    raise WorkerError(
                        f"The platform refuses a single request of {nimbus.json_size(pending)} bytes as too large",
                        info="Raise the request body limit of the platform's web server, or raise Smoothing: "
                             "smoother outlines have fewer vertices.",
                        title="Request too large",
                    ) from None
                self.chunk_bytes = max(self.chunk_bytes // 2, 1)
                half = len(pending) // 2
                return self.complete(pending[:half], send, missing) + self.complete(pending[half:], send, missing)
            except OutcomeUnknown as unknown:
                self.last_problem = str(unknown)
                pending = self.settled(pending, missing, unknown.may_apply_later)
                if unknown.may_apply_later:
                    self.last_resend = self.clock.now()
                if pending and (sends >= MAX_SENDS or self.clock.now() - started > write_budget()):
                    return pending
                if pending and not unknown.may_apply_later:
                    self.clock.sleep(backoff)  # an error answer: the server is struggling, not slow
                    backoff *= 2
        return []

    def delete(self, ids: list[str], chunk_size: int, delete: Callable[[list[str]], None],
               existing: Callable[[list[str]], set[str]]) -> list[str]:
        """Delete `ids` chunk by chunk; those still present after the policy (none when done)."""
        def still_present(chunk: list[str]) -> list[str]:
            present = existing(chunk)
            return [i for i in chunk if i in present]

        left: list[str] = []
        for chunk in iter_chunks(ids, chunk_size):
            left += self.complete(chunk, delete, still_present)
        return left

    def wait_for_late_writes(self) -> None:
        """Until the server has had its settle time for the last write it may still apply."""
        if self.last_resend is not None:
            self.clock.sleep(max(0.0, settle_seconds() - (self.clock.now() - self.last_resend)))

    def unconfirmed(self, what: str) -> str:
        """`what` was not confirmed, with the platform's last answer when there was one."""
        return f"{what} (the platform's last answer: {self.last_problem})" if self.last_problem else what
