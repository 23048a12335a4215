"""One retry budget, through the SDK's real session against the embedded server: the
server's own count of attempts shows whether retry layers multiply."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from sam2_refine import nimbus, nimbus_transport
from sam2_refine.errors import WorkerError
from sam2_refine.nimbus import OutcomeUnknown, Platform
from tests.conftest import cells, compute_parameters, frames, oracle_env, run_worker

HUNG = 30.0  # seconds the server sits on a hung request, far beyond any client timeout here


@pytest.fixture
def dataset(server) -> str:
    dataset_id = server.add_dataset(frames())
    for shape in cells():
        server.add_annotation(dataset_id, shape.rough_outline(), tags=["rough"], location={"XY": 0, "Z": 1, "Time": 0})
    return dataset_id


def platform_for(server, dataset_id: str) -> Platform:
    return Platform(server.url, server.token, dataset_id, {})


def test_a_hung_read_fails_the_job_within_the_retry_budget(server, dataset, oracle_checkpoint_dir, tmp_path):
    """SAM2_REFINE_HTTP_TIMEOUT=1, SAM2_REFINE_RETRY_SECONDS=3: attempts start only within
    3 s of the first, and each lasts 1 s, so at most 3 reach the server (0, 1.25, 2.75 s
    after the first, with 0.25 s and 0.5 s of backoff). The SDK's own urllib3 retries
    (five more per attempt) would make that 18."""
    hung = server.inject_fault("POST", r"^upenn_annotation/list/ids$", delay=HUNG)  # read-only: retried
    environment = {**oracle_env(tmp_path, cells()), "SAM2_REFINE_HTTP_TIMEOUT": "1", "SAM2_REFINE_RETRY_SECONDS": "3"}

    started = time.monotonic()
    run = run_worker(server, "compute", compute_parameters(dataset), oracle_checkpoint_dir, dataset,
                     extra_env=environment)
    print(f"hung read: the job failed after {time.monotonic() - started:.2f} s, {hung.hits} attempts")

    assert run.returncode == 1, run.stdout + run.stderr
    [error] = run.errors
    assert error["title"] == "Platform unavailable"
    assert error["error"] == "Could not list the annotations: no answer within the time limit"
    assert 2 <= hung.hits <= 3
    assert [a["tags"] for a in server.annotations(dataset)] == [["rough"]] * len(cells())


def test_a_failing_read_reaches_the_server_once_per_attempt(server, dataset, monkeypatch):
    """With no retry time left, one attempt is all the server sees: the session adds none."""
    monkeypatch.setattr(nimbus, "RETRY_SECONDS", 0.0)
    unavailable = server.inject_fault("GET", r"^annotation_connection$", status=503)
    platform = platform_for(server, dataset)
    with pytest.raises(WorkerError) as caught:
        platform.dataset_connections()
    assert caught.value.title == "Platform unavailable"
    assert "HTTP 503" in caught.value.message
    assert unavailable.hits == 1


def test_transient_answers_are_retried_until_one_succeeds(server, dataset, monkeypatch):
    monkeypatch.setattr(nimbus, "FIRST_BACKOFF", 0.01)
    server.add_connection(dataset, "a" * 24, "b" * 24)
    flaky = server.inject_fault("GET", r"^annotation_connection$", status=503, times=2)
    assert len(platform_for(server, dataset).dataset_connections()) == 1
    listing = [entry for entry in server.request_log if entry[1] == "annotation_connection"]
    assert flaky.hits == 2 and [status for *_, status in listing] == [503, 503, 200]


def test_every_request_gets_the_timeout(server, dataset, monkeypatch):
    monkeypatch.setattr(nimbus, "HTTP_TIMEOUT", 0.5)
    monkeypatch.setattr(nimbus, "RETRY_SECONDS", 0.0)
    hung = server.inject_fault("GET", r"/tiles$", delay=HUNG)
    platform = platform_for(server, dataset)
    with pytest.raises(WorkerError, match="no answer within the time limit"):
        platform.frame_geometry()
    assert hung.hits == 1


def test_a_create_whose_answer_is_lost_is_sent_once(server, dataset, monkeypatch):
    """POST is never repeated blindly, by us or by the session."""
    monkeypatch.setattr(nimbus, "HTTP_TIMEOUT", 0.5)
    slow = server.inject_fault("POST", r"^upenn_annotation/multiple$", delay=HUNG)
    document = {"shape": "point", "coordinates": [{"x": 1, "y": 1}], "tags": ["x"], "channel": 0,
                "location": {"XY": 0, "Z": 0, "Time": 0}, "datasetId": dataset}
    with pytest.raises(OutcomeUnknown):
        platform_for(server, dataset).create_annotations([document])
    assert slow.hits == 1


class SamePage:
    """A listing that ignores its afterId cursor: every page is the first."""

    def __init__(self, page: list[dict]):
        self.page = page
        self.calls = 0

    def get(self, path, parameters=None, jsonResp=True):
        self.calls += 1
        return list(self.page) if jsonResp else SimpleNamespace(content=json.dumps(self.page).encode())


def test_paging_stops_when_the_cursor_does_not_advance(server, dataset, monkeypatch):
    monkeypatch.setattr(nimbus_transport, "PAGE_SIZE", 2)
    platform = platform_for(server, dataset)
    platform._rest._girder = SamePage([{"_id": "6" * 24}, {"_id": "7" * 24}])
    with pytest.raises(WorkerError) as caught:
        platform.dataset_connections()
    assert "paging would never end" in caught.value.message
    assert platform._rest._girder.calls == 2


def test_paging_follows_the_cursor_through_the_real_server(server, dataset, monkeypatch):
    monkeypatch.setattr(nimbus_transport, "PAGE_SIZE", 2)
    ids = [server.add_connection(dataset, "a" * 24, f"{index:024x}") for index in range(5)]
    found = platform_for(server, dataset).dataset_connections()
    assert [connection.id for connection in found] == sorted(ids)
