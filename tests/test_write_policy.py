"""Issue 19's write policy through the whole worker (a subprocess against the embedded
server): unknown outcomes verified and completed, never resent blind; late writes;
connections that cannot be moved; resume that cannot be fooled by edits in the app."""

from __future__ import annotations

import json

import pytest
import requests
from shapely.geometry import Polygon

from sam2_refine.nimbus import MARKER_KEY
from tests.conftest import TAG, check_nothing_lost, compute_parameters, frames, replacing, run_worker, seed
from tests.oracle import Disk

HERE = {"XY": 0, "Z": 1, "Time": 0}
ONE_SECOND = {"SAM2_REFINE_HTTP_TIMEOUT": "1", "SAM2_REFINE_RETRY_SECONDS": "6"}


def exactly_once(server, dataset_id, originals):
    refined = check_nothing_lost(server, dataset_id, originals)
    assert set(refined) == set(originals) and set(refined.values()) == {1}, refined
    assert not {a["_id"] for a in server.annotations(dataset_id)} & set(originals)


def posted_sources(request) -> list[str]:
    return [document[MARKER_KEY].split("/", 1)[1] for document in json.loads(request.body)]


@pytest.mark.parametrize("delay", [1.5, 2.6])  # lands before the re-check gives up / after the resend
def test_an_upload_the_server_applies_late_leaves_one_refined_polygon_per_cell(server, worker, delay):
    dataset_id, originals = seed(server)
    server.inject_fault("POST", r"^upenn_annotation/multiple$", delay=delay, times=1)
    run = worker(replacing(dataset_id), dataset_id, extra_env=ONE_SECOND)
    assert run.returncode == 0, run.stdout + run.stderr
    assert server.wait_until_idle()
    exactly_once(server, dataset_id, originals)
    assert not run.warnings


def test_an_upload_partly_applied_is_checked_and_only_the_missing_polygons_are_sent_again(server, worker):
    dataset_id, originals = seed(server)
    server.inject_fault("POST", r"^upenn_annotation/multiple$", status=502, after_apply=True, apply_only=2,
                        times=1)
    run = worker(replacing(dataset_id), dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    exactly_once(server, dataset_id, originals)
    log = [r for r in server.requests if r.path.startswith("upenn_annotation") and r.method != "DELETE"]
    posts = [i for i, r in enumerate(log) if (r.method, r.path) == ("POST", "upenn_annotation/multiple")]
    first, second = (log[i] for i in posts)
    assert [r.status for r in (first, second)] == [502, 200] and len(posts) == 2
    checks = log[posts[0] + 1:posts[1]]
    assert checks and all((r.method, r.path) == ("GET", "upenn_annotation") and "afterId" in r.query for r in checks)
    assert sorted(posted_sources(second)) == sorted(posted_sources(first)[2:])  # only what was missing


def test_a_delete_that_fails_once_is_completed_within_the_job(server, worker):
    dataset_id, originals = seed(server)
    server.inject_fault("DELETE", r"^upenn_annotation/multiple$", status=500, times=1)
    run = worker(replacing(dataset_id), dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    exactly_once(server, dataset_id, originals)


def connect_each_to_a_parent(server, dataset_id, originals) -> dict[str, str]:
    parents = {}
    for original in originals:
        parents[original] = server.add_annotation(dataset_id, [(1, 1)], tags=["parent"], shape="point", location=HERE)
        server.add_connection(dataset_id, parents[original], original, tags=["lineage"])
    return parents


def test_connections_that_cannot_be_created_keep_the_originals_and_fail_the_job(server, worker):
    dataset_id, originals = seed(server)
    parents = connect_each_to_a_parent(server, dataset_id, originals)
    server.inject_fault("POST", r"^annotation_connection/multiple$", status=500)
    run = worker(replacing(dataset_id), dataset_id, extra_env={"SAM2_REFINE_RETRY_SECONDS": "1",
                                                               "SAM2_REFINE_HTTP_TIMEOUT": "2"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{len(originals)} originals are still there" in run.errors[-1]["error"]
    assert set(originals) <= {a["_id"] for a in server.annotations(dataset_id)}
    assert {(c["parentId"], c["childId"]) for c in server.connections(dataset_id)} == {
        (parents[o], o) for o in originals}
    server.clear_faults()
    again = worker(replacing(dataset_id), dataset_id)  # the same job again completes it
    assert again.returncode == 0, again.stdout + again.stderr
    exactly_once(server, dataset_id, originals)


def test_an_orphan_connection_is_skipped_and_counted_and_every_original_replaced(server, worker):
    dataset_id, originals = seed(server)
    parents = connect_each_to_a_parent(server, dataset_id, originals)
    server.add_connection(dataset_id, "f" * 24, originals[1], tags=["orphan"])  # its parent is long gone
    run = worker(replacing(dataset_id), dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    exactly_once(server, dataset_id, originals)
    refined = {source: a["_id"] for a in server.annotations(dataset_id) if MARKER_KEY in a
               for source in [a[MARKER_KEY].split("/", 1)[1]]}
    assert {(c["parentId"], c["childId"]) for c in server.connections(dataset_id)} == {
        (parents[o], refined[o]) for o in originals}
    assert [w["warning"] for w in run.warnings] == [
        "1 connection could not be moved to a refined polygon: the annotation at its other end no longer exists"]


def test_connect_to_nearest_chooses_the_near_parent_at_the_same_location_and_channel(server, oracle_checkpoint_dir,
                                                                                     tmp_path):
    from tests.conftest import oracle_env

    dataset_id = server.add_dataset(frames(z=2, time=2))
    shape = Disk(60, 60, 18)
    here, later = HERE, {"XY": 0, "Z": 1, "Time": 1}
    original = server.add_annotation(dataset_id, shape.rough_outline(), tags=[TAG], location=here)
    near = server.add_annotation(dataset_id, [(85, 60)], tags=["cell"], shape="point", location=here, channel=0)
    server.add_annotation(dataset_id, [(250, 200)], tags=["cell"], shape="point", location=here, channel=0)
    server.add_annotation(dataset_id, [(60, 60)], tags=["cell"], shape="point", location=later, channel=0)
    server.add_annotation(dataset_id, [(61, 61)], tags=["cell"], shape="point", location=here, channel=1)
    parameters = compute_parameters(dataset_id, **{"Batch Time": "all"})
    parameters["connectTo"] = {"tags": ["cell"], "layer": None, "channel": 0}
    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, [shape]))
    assert run.returncode == 0, run.stdout + run.stderr
    [refined] = [a["_id"] for a in server.annotations(dataset_id) if MARKER_KEY in a]
    assert [(c["parentId"], c["childId"]) for c in server.connections(dataset_id)] == [(near, refined)]
    assert original in {a["_id"] for a in server.annotations(dataset_id)}


def put(server, annotation_id, changes):
    response = requests.put(f"{server.url}/upenn_annotation/{annotation_id}", json=changes,
                            headers={"Girder-Token": server.token}, timeout=10)
    response.raise_for_status()


def test_an_original_edited_between_runs_is_refined_again_from_its_new_outline(server, worker):
    dataset_id, originals = seed(server)
    keep = compute_parameters(dataset_id)  # Delete off: the originals stay
    assert worker(keep, dataset_id).returncode == 0
    first = {a[MARKER_KEY].split("/", 1)[1]: a["_id"] for a in server.annotations(dataset_id) if MARKER_KEY in a}
    edited = originals[0]
    [document] = [a for a in server.annotations(dataset_id) if a["_id"] == edited]
    outline = Polygon([(c["x"], c["y"]) for c in document["coordinates"]])
    put(server, edited, {"coordinates": [{"x": x, "y": y} for x, y in outline.buffer(2).exterior.coords[:-1]]})
    run = worker(replacing(dataset_id), dataset_id)  # the same settings, now replacing
    assert run.returncode == 0, run.stdout + run.stderr
    exactly_once(server, dataset_id, originals)
    now = {a[MARKER_KEY].split("/", 1)[1]: a["_id"] for a in server.annotations(dataset_id) if MARKER_KEY in a}
    assert now[edited] != first[edited]  # refined again, the stale refinement removed
    assert all(now[o] == first[o] for o in originals[1:])  # the others completed with what the first run made
    assert "Refined 1 of 1" in run.progress[-1]["info"]


def test_a_refined_polygon_edited_in_the_app_keeps_its_marker_and_is_not_refined_again(server, worker):
    """The app edits only with PUT upenn_annotation/multiple, which merges the sent fields
    into the stored document (PLATFORM.md §10): the marker stays, so the rerun knows it."""
    dataset_id, originals = seed(server)
    parameters = compute_parameters(dataset_id)
    assert worker(parameters, dataset_id).returncode == 0
    edited = [a for a in server.annotations(dataset_id) if MARKER_KEY in a][0]
    moved = [{"x": c["x"] + 0.5, "y": c["y"]} for c in edited["coordinates"]]
    response = requests.put(f"{server.url}/upenn_annotation/multiple",
                            json=[{"id": edited["_id"], "coordinates": moved, "tags": edited["tags"]}],
                            headers={"Girder-Token": server.token}, timeout=10)
    response.raise_for_status()
    [stored] = [a for a in server.annotations(dataset_id) if a["_id"] == edited["_id"]]
    assert stored["coordinates"] == moved and stored[MARKER_KEY] == edited[MARKER_KEY]
    again = worker(parameters, dataset_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Nothing new to refine: {len(originals)} already refined" in again.progress[-1]["info"]
    outputs = [a for a in server.annotations(dataset_id) if a["tags"] == ["refined"]]
    assert len(outputs) == len(originals)  # no cell refined twice
