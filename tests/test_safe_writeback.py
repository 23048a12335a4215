"""Nothing lost, nothing duplicated: write-back under injected platform failures.

Every scenario runs the worker as a subprocess against the embedded server and checks
the invariants: every original still exists unless its refined counterpart does, no
original has two refined counterparts, and the counts reported match the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sam2_refine.nimbus import MARKER_KEY
from sam2_refine.writes import MAX_SENDS
from tests.conftest import REPO, TAG, cells, check_nothing_lost, compute_parameters, oracle_env, refined_by_source, \
    replacing, seed

FAST_FAILURE = {"SAM2_REFINE_RETRY_SECONDS": "1", "SAM2_REFINE_HTTP_TIMEOUT": "2"}
def test_replacing_deletes_only_after_the_refined_polygons_are_saved(server, worker):
    dataset_id, originals = seed(server)
    run = worker(replacing(dataset_id), dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    refined = check_nothing_lost(server, dataset_id, originals)
    assert set(refined) == set(originals)
    assert not {a["_id"] for a in server.annotations(dataset_id)} & set(originals)
    methods = [(m, p) for m, p, *_ in server.request_log if m in ("POST", "DELETE")]
    assert methods.index(("POST", "upenn_annotation/multiple")) < methods.index(("DELETE", "upenn_annotation/multiple"))
    assert f"replaced {len(originals)} originals" in run.progress[-1]["info"]


def test_upload_that_always_fails_deletes_nothing(server, worker):
    dataset_id, originals = seed(server)
    server.inject_fault("POST", r"^upenn_annotation/multiple$", status=500)
    run = worker(replacing(dataset_id), dataset_id, extra_env=FAST_FAILURE)
    assert run.returncode == 1
    assert [a["_id"] for a in server.annotations(dataset_id)] == originals
    assert "Nothing was deleted" in run.errors[-1]["info"]
    assert not any(m == "DELETE" for m, *_ in server.request_log)


def test_gateway_errors_on_every_upload_end_in_an_error_not_a_loop(server, worker):
    dataset_id, originals = seed(server)
    server.inject_fault("POST", r"^upenn_annotation/multiple$", status=503)
    run = worker(replacing(dataset_id), dataset_id, extra_env=FAST_FAILURE)
    assert run.returncode == 1
    assert [a["_id"] for a in server.annotations(dataset_id)] == originals
    assert "4 refined polygons could not be saved" in run.errors[-1]["error"]
    posts = [entry for entry in server.request_log if entry[:2] == ("POST", "upenn_annotation/multiple")]
    assert len(posts) <= 2 * MAX_SENDS  # the job's attempts and the end of the job's, each capped


def test_upload_failing_once_with_502_is_retried_without_duplicates(server, worker):
    dataset_id, originals = seed(server)
    fault = server.inject_fault("POST", r"^upenn_annotation/multiple$", status=502, times=1)
    run = worker(replacing(dataset_id), dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    assert fault.hits == 1
    assert set(check_nothing_lost(server, dataset_id, originals)) == set(originals)


def test_upload_applied_but_answered_502_is_not_sent_twice(server, worker):
    dataset_id, originals = seed(server)
    server.inject_fault("POST", r"^upenn_annotation/multiple$", status=502, times=1, after_apply=True)
    run = worker(replacing(dataset_id), dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    assert set(check_nothing_lost(server, dataset_id, originals)) == set(originals)
    posts = [s for m, p, _, s in server.request_log if (m, p) == ("POST", "upenn_annotation/multiple")]
    assert posts == [502]  # found on the server, so never re-sent


def test_upload_hanging_past_the_client_timeout_is_checked_then_resent(server, worker):
    dataset_id, originals = seed(server)
    server.inject_fault("POST", r"^upenn_annotation/multiple$", status=504, delay=3.0, times=1)
    run = worker(replacing(dataset_id), dataset_id, extra_env={"SAM2_REFINE_HTTP_TIMEOUT": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert set(check_nothing_lost(server, dataset_id, originals)) == set(originals)


def test_deleting_always_refused_keeps_both_versions_fails_the_job_and_says_how_to_find_them(server, worker):
    dataset_id, originals = seed(server)
    server.inject_fault("DELETE", r"^upenn_annotation/multiple$", status=500)
    run = worker(replacing(dataset_id), dataset_id, extra_env=FAST_FAILURE)
    assert run.returncode == 1, run.stdout + run.stderr
    present = {a["_id"] for a in server.annotations(dataset_id)}
    assert set(originals) <= present
    assert set(check_nothing_lost(server, dataset_id, originals)) == set(originals)
    [error] = run.errors
    assert error["title"] == "Not finished"
    assert f"{len(originals)} originals are still there next to the refined version" in error["error"]
    assert "HTTP 500 from DELETE" in error["info"]
    assert "refined polygons carry the tags refined" in error["info"] and f"originals carry {TAG}" in error["info"]
    assert "Run the tool again with the same settings" in error["info"]


def start_worker_with_upload_in_flight(server, oracle_checkpoint_dir, tmp_path, dataset_id):
    """A worker whose first upload the server holds for 2 s; returns once it is in flight."""
    fault = server.inject_fault("POST", r"^upenn_annotation/multiple$", delay=2.0, times=1)
    command = [sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--token", server.token,
               "--request", "compute", "--parameters", json.dumps(replacing(dataset_id)), "--datasetId", dataset_id]
    env = {**os.environ, **oracle_env(tmp_path, cells()), "SAM2_CHECKPOINT_DIR": str(oracle_checkpoint_dir)}
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while fault.hits == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # polling for the upload to be in flight
    assert fault.hits == 1, "the upload never started"
    return process


def wait_for_refined(server, dataset_id, count):
    deadline = time.monotonic() + 10
    while sum(refined_by_source(server, dataset_id).values()) < count and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the server to finish the held upload


def test_killed_during_upload_leaves_both_versions_never_neither(server, oracle_checkpoint_dir, tmp_path):
    dataset_id, originals = seed(server)
    process = start_worker_with_upload_in_flight(server, oracle_checkpoint_dir, tmp_path, dataset_id)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    wait_for_refined(server, dataset_id, len(originals))
    refined = check_nothing_lost(server, dataset_id, originals)
    assert set(refined) == set(originals)
    assert {a["_id"] for a in server.annotations(dataset_id)} >= set(originals)


def test_cancel_during_upload_reports_it_and_loses_nothing(server, oracle_checkpoint_dir, tmp_path):
    dataset_id, originals = seed(server)
    process = start_worker_with_upload_in_flight(server, oracle_checkpoint_dir, tmp_path, dataset_id)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 143
    assert '"Cancelled"' in stdout
    wait_for_refined(server, dataset_id, len(originals))
    check_nothing_lost(server, dataset_id, originals)
    assert {a["_id"] for a in server.annotations(dataset_id)} >= set(originals)


def test_connections_of_replaced_originals_move_to_their_refined_versions(server, worker):
    dataset_id, originals = seed(server)
    parent = server.add_annotation(dataset_id, [(0, 0), (320, 0), (320, 240)], tags=["field"],
                                   location={"XY": 0, "Z": 1, "Time": 0})
    server.add_connection(dataset_id, parent, originals[0], tags=["lineage"], label="manual")
    server.add_connection(dataset_id, originals[1], originals[2], tags=["pair"])
    run = worker(replacing(dataset_id), dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    refined = {a[MARKER_KEY].split("/", 1)[1]: a["_id"] for a in server.annotations(dataset_id) if MARKER_KEY in a}
    links = {(c["parentId"], c["childId"], tuple(c["tags"])) for c in server.connections(dataset_id)}
    assert links == {
        (parent, refined[originals[0]], ("lineage",)),
        (refined[originals[1]], refined[originals[2]], ("pair",)),
    }


def test_wrong_token_writes_nothing_and_says_so(server, worker):
    dataset_id, originals = seed(server)
    run = worker(replacing(dataset_id), dataset_id, token="not-the-token")
    assert run.returncode == 1
    assert "token" in run.errors[0]["error"]
    assert "not-the-token" not in run.stdout + run.stderr
    assert [a["_id"] for a in server.annotations(dataset_id)] == originals


def test_empty_selection_warns_and_writes_nothing(server, worker):
    dataset_id, originals = seed(server)
    run = worker(replacing(dataset_id, **{"Tag of objects to refine": ["absent"]}), dataset_id)
    assert run.returncode == 0
    assert "Nothing to refine" in run.warnings[0]["warning"]
    assert [a["_id"] for a in server.annotations(dataset_id)] == originals


def test_delete_with_no_tag_chosen_is_refused(server, worker):
    dataset_id, originals = seed(server)
    run = worker(replacing(dataset_id, **{"Tag of objects to refine": []}), dataset_id)
    assert run.returncode == 2
    assert "Choose the tag of the objects to refine" in run.errors[0]["info"]
    assert [a["_id"] for a in server.annotations(dataset_id)] == originals


def test_skipped_objects_are_summarised_by_reason(server, worker):
    dataset_id, originals = seed(server)
    location = {"XY": 0, "Z": 1, "Time": 0}
    server.add_annotation(dataset_id, [(1, 1), (9, 9)], tags=[TAG], location=location)
    server.add_annotation(dataset_id, [(1, 1), (5, 1), (9, 1)], tags=[TAG], location=location)
    server.add_annotation(dataset_id, [(-90, -90), (-50, -90), (-50, -50)], tags=[TAG], location=location)
    run = worker(compute_parameters(dataset_id), dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [w["warning"] for w in run.warnings] == ["2 objects skipped: degenerate prompt", "1 object skipped: outside the image"]
    assert run.progress[-1]["info"] == "Refined 4 of 7; 3 skipped: 2 degenerate prompts, 1 outside the image"
