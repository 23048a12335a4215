"""How sam2_refine.nimbus sends requests, through the SDK's real session (girder_client,
requests, our transport) against the embedded server: reads are retried within the
budget, writes are sent once and report an unknown outcome, settings are checked."""

from __future__ import annotations

import pytest
from girder_client import HttpError
from requests.adapters import HTTPAdapter

from nimbus_server import NimbusServer
from sam2_refine import nimbus
from sam2_refine.errors import WorkerError
from sam2_refine.nimbus import OutcomeUnknown, PayloadTooLarge, Platform
from tests.conftest import frames

DOCUMENT = {"shape": "point", "coordinates": [{"x": 1.0, "y": 1.0}], "tags": ["x"], "channel": 0,
            "location": {"XY": 0, "Z": 0, "Time": 0}}


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(nimbus, "FIRST_BACKOFF", 0.01)
    monkeypatch.setattr(nimbus, "HTTP_TIMEOUT", 0.5)
    monkeypatch.setattr(nimbus, "RETRY_SECONDS", 5.0)


@pytest.fixture
def dataset(server) -> str:
    return server.add_dataset(frames(z=1, time=1))


def platform_for(server, dataset_id: str, token: str | None = None) -> Platform:
    return Platform(server.url, token or server.token, dataset_id, {})


def statuses(server, method: str, path: str) -> list[int]:
    return [status for m, p, _, status in server.request_log if (m, p) == (method, path)]


# --- reads ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_reads_are_retried_on_transient_answers_until_one_succeeds(server, dataset, status):
    server.inject_fault("GET", r"^annotation_connection$", status=status, times=2)
    assert platform_for(server, dataset).dataset_connections() == []
    assert statuses(server, "GET", "annotation_connection") == [status, status, 200]


@pytest.mark.parametrize("fault", [{"delay": 2.0}, {"drop": True}, {"drop": True, "after_apply": True}])
def test_reads_are_retried_after_a_hang_or_a_dropped_connection(server, dataset, fault):
    injected = server.inject_fault("GET", r"^annotation_connection$", times=1, **fault)
    assert platform_for(server, dataset).dataset_connections() == []
    assert injected.hits == 1 and statuses(server, "GET", "annotation_connection")[-1] == 200


def test_reads_give_up_after_the_retry_budget(server, dataset, monkeypatch):
    monkeypatch.setattr(nimbus, "RETRY_SECONDS", 0.2)
    server.inject_fault("GET", r"^annotation_connection$", status=503)
    with pytest.raises(WorkerError) as caught:
        platform_for(server, dataset).dataset_connections()
    assert caught.value.title == "Platform unavailable"
    assert server.token not in caught.value.message and "?" not in caught.value.message  # no query echoed
    assert len(statuses(server, "GET", "annotation_connection")) >= 2


def test_reads_refused_by_the_server_are_final(server, dataset):
    server.inject_fault("GET", r"^annotation_connection$", status=404)
    with pytest.raises(WorkerError) as caught:
        platform_for(server, dataset).dataset_connections()
    assert caught.value.title == "Platform error"
    assert statuses(server, "GET", "annotation_connection") == [404]


@pytest.mark.parametrize(("status", "title"), [(401, "Not authorized"), (403, "Access denied")])
def test_access_errors_are_explained(server, dataset, status, title):
    server.inject_fault("GET", r"^annotation_connection$", status=status)
    with pytest.raises(WorkerError) as caught:
        platform_for(server, dataset).dataset_connections()
    assert caught.value.title == title


def test_the_read_only_hydrate_post_is_retried_like_a_read(server, dataset):
    annotation = server.add_annotation(dataset, [(1, 1)], shape="point")
    server.inject_fault("POST", r"^upenn_annotation/hydrate$", status=503, times=1)
    assert platform_for(server, dataset).existing_annotations([annotation, "0" * 24]) == {annotation}
    assert statuses(server, "POST", "upenn_annotation/hydrate") == [503, 200]


# --- writes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "may_apply_later", "applied"), [
    ({"status": 502, "after_apply": True}, False, True),   # done, then a 502
    ({"status": 503}, False, False),                       # refused before doing anything
    ({"status": 504, "delay": 1.0}, True, False),          # a gateway gave up waiting
    ({"delay": 1.0}, True, True),                          # applied after the client gave up (late)
    ({"drop": True}, True, False),                         # the connection dropped
    ({"drop": True, "after_apply": True}, True, True),
])
def test_a_write_whose_outcome_is_unknown_is_sent_once_and_says_so(server, dataset, fault, may_apply_later,
                                                                   applied):
    injected = server.inject_fault("POST", r"^upenn_annotation/multiple$", times=1, **fault)
    with pytest.raises(OutcomeUnknown) as caught:
        platform_for(server, dataset).create_annotations([{**DOCUMENT, "datasetId": dataset}])
    assert caught.value.may_apply_later is may_apply_later
    assert injected.hits == 1 and len(statuses(server, "POST", "upenn_annotation/multiple")) <= 1
    if not fault.get("delay"):  # a delayed one is still being answered, to nobody
        assert (len(server.annotations(dataset)) == 1) is applied


def test_a_delete_whose_outcome_is_unknown_is_sent_once(server, dataset):
    annotation = server.add_annotation(dataset, [(1, 1)], shape="point")
    server.inject_fault("DELETE", r"^upenn_annotation/multiple$", status=502, after_apply=True)
    with pytest.raises(OutcomeUnknown):
        platform_for(server, dataset).delete_annotations([annotation])
    assert statuses(server, "DELETE", "upenn_annotation/multiple") == [502]
    assert server.annotations(dataset) == []


def test_a_write_refused_by_the_server_is_final(server, dataset):
    with pytest.raises(HttpError) as caught:
        platform_for(server, dataset).create_annotations([{**DOCUMENT, "datasetId": dataset, "channel": 1.5}])
    assert caught.value.status == 400
    assert statuses(server, "POST", "upenn_annotation/multiple") == [400]


def test_a_body_too_large_for_the_server_is_refused_as_such():
    with NimbusServer(max_body_bytes=500) as server:
        dataset = server.add_dataset(frames(z=1, time=1))
        with pytest.raises(PayloadTooLarge):
            platform_for(server, dataset).create_annotations([{**DOCUMENT, "datasetId": dataset}] * 10)
        assert server.annotations(dataset) == []


def test_a_write_that_never_reached_the_server_is_sent_again_until_the_budget_ends(monkeypatch):
    monkeypatch.setattr(nimbus, "RETRY_SECONDS", 0.3)
    attempts = []
    send = HTTPAdapter.send

    def counting(self, request, **kwargs):
        attempts.append(request.method)
        return send(self, request, **kwargs)

    monkeypatch.setattr(HTTPAdapter, "send", counting)
    with NimbusServer() as server:
        url, token = server.url, server.token  # nothing listens there once it has stopped
    platform = Platform(url, token, "0" * 24, {})
    with pytest.raises(OutcomeUnknown) as caught:
        platform.create_annotations([DOCUMENT])
    assert not caught.value.may_apply_later  # never sent: nothing can be applied late
    assert len(attempts) >= 3 and set(attempts) == {"POST"}


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [("SAM2_REFINE_HTTP_TIMEOUT", "2m"), ("SAM2_REFINE_HTTP_TIMEOUT", "0"),
                                             ("SAM2_REFINE_RETRY_SECONDS", "-1"), ("SAM2_REFINE_RETRY_SECONDS", "nan")])
def test_a_setting_that_is_not_a_number_of_seconds_is_named(name, value):
    with pytest.raises(WorkerError) as caught:
        nimbus.configure({name: value})
    assert name in caught.value.message and repr(value) in caught.value.message
    assert caught.value.title == "Invalid setting"


def test_settings_are_read_from_the_environment(monkeypatch):
    nimbus.configure({"SAM2_REFINE_HTTP_TIMEOUT": "7.5", "SAM2_REFINE_RETRY_SECONDS": "0"})
    assert (nimbus.HTTP_TIMEOUT, nimbus.RETRY_SECONDS) == (7.5, 0.0)
    nimbus.configure({})
    assert (nimbus.HTTP_TIMEOUT, nimbus.RETRY_SECONDS) == (nimbus.DEFAULT_HTTP_TIMEOUT, nimbus.DEFAULT_RETRY_SECONDS)


def test_the_sessions_transport_is_ours_for_every_scheme(server, dataset):
    session = platform_for(server, dataset).context._gc._session
    assert isinstance(session.get_adapter("http://127.0.0.1/"), nimbus.JobTransport)
    assert isinstance(session.get_adapter("https://example.org/"), nimbus.JobTransport)


def test_without_hydrate_existing_annotations_are_asked_for_one_by_one(server, dataset):
    present = server.add_annotation(dataset, [(1, 1)], shape="point")
    server.inject_fault("POST", r"^upenn_annotation/hydrate$", status=404)  # as [K], which has no hydrate
    assert platform_for(server, dataset).existing_annotations([present, "0" * 24]) == {present}
    assert [p for m, p, *_ in server.request_log if m == "GET"] == [f"upenn_annotation/{present}",
                                                                      f"upenn_annotation/{'0' * 24}"]
