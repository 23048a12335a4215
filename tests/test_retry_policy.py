"""The write and read retry policy of sam2_refine.nimbus, against a scripted client."""

import pytest
import requests
from girder_client import HttpError
from urllib3.exceptions import MaxRetryError, NewConnectionError

from sam2_refine import nimbus
from sam2_refine.errors import WorkerError
from sam2_refine.nimbus import OutcomeUnknown, Platform


class ScriptedClient:
    """Answers each call with the next scripted outcome: a value, or an exception to raise."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0

    def _next(self, *args, **kwargs):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    post = get = _next


def http_error(status):
    return HttpError(status=status, text='{"message": "scripted"}', url="http://h/api/v1/x?token=secret", method="POST")


def refused():
    return requests.ConnectionError(MaxRetryError(None, "/x", reason=NewConnectionError(None, "refused")))


@pytest.fixture
def platform(monkeypatch):
    monkeypatch.setattr(nimbus, "FIRST_BACKOFF", 0.001)
    return Platform("http://127.0.0.1:9/api/v1", "secret-token", "0" * 24, {})


def test_post_is_resent_when_the_connection_was_refused(platform):
    platform._girder = ScriptedClient(refused(), [{"_id": "a"}])
    assert platform.create_annotations([{}]) == [{"_id": "a"}]
    assert platform._girder.calls == 2


@pytest.mark.parametrize("failure", [requests.ReadTimeout("slow"), http_error(502), http_error(504),
                                     requests.ConnectionError("reset by peer")])
def test_post_with_unknown_outcome_is_not_resent(platform, failure):
    platform._girder = ScriptedClient(failure, [{"_id": "a"}])
    with pytest.raises(OutcomeUnknown):
        platform.create_annotations([{}])
    assert platform._girder.calls == 1


def test_post_refused_by_the_server_is_final(platform):
    platform._girder = ScriptedClient(http_error(400))
    with pytest.raises(HttpError):
        platform.create_annotations([{}])
    assert platform._girder.calls == 1


@pytest.mark.parametrize("failure", [http_error(500), http_error(429), requests.ReadTimeout("slow"), refused()])
def test_reads_are_retried_on_transient_failures(platform, failure):
    platform._girder = ScriptedClient(failure, failure, [])
    assert platform.dataset_connections() == []
    assert platform._girder.calls == 3


def test_reads_give_up_after_the_retry_budget(platform, monkeypatch):
    monkeypatch.setattr(nimbus, "RETRY_SECONDS", 0.05)
    platform._girder = ScriptedClient(*[http_error(503)] * 100)
    with pytest.raises(WorkerError) as caught:
        platform.dataset_connections()
    assert caught.value.title == "Platform unavailable"
    assert "secret" not in caught.value.message  # the URL's query is never echoed


def test_reads_refused_by_the_server_are_final(platform):
    platform._girder = ScriptedClient(http_error(404))
    with pytest.raises(WorkerError) as caught:
        platform.dataset_connections()
    assert caught.value.title == "Platform error" and platform._girder.calls == 1


@pytest.mark.parametrize(("status", "title"), [(401, "Not authorized"), (403, "Access denied")])
def test_access_errors_are_explained(platform, status, title):
    platform._girder = ScriptedClient(http_error(status))
    with pytest.raises(WorkerError) as caught:
        platform.dataset_connections()
    assert caught.value.title == title
