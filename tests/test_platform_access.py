"""What the platform lets this job's user do, decided before the model loads: a user
who may not write the dataset (hole 8 of issue 23), or to whom its image shows no layer
(the view's own access list), gets an error line saying why and what to do; nothing is
written. And the app's undo of a job's last write: a rerun completes it cleanly."""

from __future__ import annotations

import os

import requests

from nimbus_server import READ, WRITE
from tests.conftest import cells, check_nothing_lost, compute_parameters, frames, refined_by_source, replacing

LOCATIONS = ({"XY": 0, "Z": 0, "Time": 0}, {"XY": 0, "Z": 1, "Time": 0})


def recording_oracle(checkpoint):
    """The oracle, noting each build in $BUILDS_LOG: a job that never loads the model leaves no file."""
    from tests.oracle import from_environment

    with open(os.environ["BUILDS_LOG"], "a") as log:
        log.write(f"{checkpoint}\n")
    return from_environment(checkpoint)


def two_locations(server, **dataset_options):
    """A dataset with `cells()` outlined roughly at Z 1 and Z 2: (dataset id, originals)."""
    dataset_id = server.add_dataset(frames(z=2, time=1), **dataset_options)
    originals = [
        server.add_annotation(dataset_id, shape.rough_outline(), tags=["rough"], location=location)
        for location in LOCATIONS for shape in cells()
    ]
    return dataset_id, originals


def run_as(worker, tmp_path, dataset_id, token, **values):
    log = tmp_path / "builds.log"
    env = {"SAM2_REFINE_PREDICTOR": "tests.test_platform_access:recording_oracle", "BUILDS_LOG": str(log)}
    run = worker(compute_parameters(dataset_id, **{"Batch Z": "1-2", **values}), dataset_id, token=token,
                 extra_env=env)
    return run, log.exists()


def test_a_user_who_may_only_read_the_dataset_is_refused_before_the_model_loads(server, worker, tmp_path):
    dataset_id, _ = two_locations(server)
    reader = server.add_user("reader")
    server.share(dataset_id, "reader", READ)
    before = server.annotations(dataset_id)

    run, model_loaded = run_as(worker, tmp_path, dataset_id, reader)

    assert run.returncode == 1, run.stdout + run.stderr
    [error] = run.errors
    assert error["title"] == "No write access"
    assert "may read this dataset but not change it" in error["error"]
    assert "write access" in error["info"] and "owner" in error["info"]
    assert not model_loaded
    assert server.annotations(dataset_id) == before
    folder_reads = [entry for entry in server.request_log if entry[:2] == ("GET", f"folder/{dataset_id}")]
    assert len(folder_reads) == 1  # asked once
    assert not any(path.startswith("upenn_annotation") for _, path, *_ in server.request_log)


def test_a_user_who_may_write_the_dataset_but_not_read_its_view_is_told_to_ask_for_the_view(
        server, worker, tmp_path):
    """Girder's folder sharing gives the folder only: the view (and its configuration,
    which hold the layers) keep their own access lists, so the image shows no layer."""
    dataset_id, _ = two_locations(server)
    writer = server.add_user("writer")
    server.share(dataset_id, "writer", WRITE, view=False)
    before = server.annotations(dataset_id)

    run, model_loaded = run_as(worker, tmp_path, dataset_id, writer)

    assert run.returncode == 1, run.stdout + run.stderr
    [error] = run.errors
    assert error["title"] == "No visible layer"
    assert "view" in error["error"] and "no layer" in error["error"]
    assert "share" in error["info"] and "view" in error["info"]
    assert not model_loaded
    assert server.annotations(dataset_id) == before


def test_an_image_whose_layers_are_all_hidden_is_refused_with_the_fix(server, worker, tmp_path):
    hidden = [{"channel": channel, "visible": False} for channel in (0, 1)]
    dataset_id, _ = two_locations(server, layers=hidden)
    before = server.annotations(dataset_id)

    run, model_loaded = run_as(worker, tmp_path, dataset_id, None)

    assert run.returncode == 1, run.stdout + run.stderr
    [error] = run.errors
    assert error["title"] == "No visible layer"
    assert "Make at least one layer visible" in error["info"]
    assert not model_loaded
    assert server.annotations(dataset_id) == before


def test_a_user_the_dataset_is_shared_with_for_editing_refines_it(server, worker, tmp_path):
    dataset_id, originals = two_locations(server)
    editor = server.add_user("editor")
    server.share(dataset_id, "editor", WRITE)

    run, model_loaded = run_as(worker, tmp_path, dataset_id, editor)

    assert run.returncode == 0, run.stdout + run.stderr
    assert model_loaded
    assert sum(a["tags"] == ["refined"] for a in server.annotations(dataset_id)) == len(originals)


def test_a_rerun_after_the_apps_undo_of_the_jobs_last_write_replaces_each_original_once(server, worker, tmp_path):
    """The job's writes are the user's undo history; the app's undo reverts the last one
    alone (here: the second location's originals deleted by the Delete-on job come back,
    with their ids, beside their refinements). The same job again completes it."""
    dataset_id, originals = two_locations(server)
    parameters = replacing(dataset_id, **{"Batch Z": "1-2"})

    first = worker(parameters, dataset_id)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not {a["_id"] for a in server.annotations(dataset_id)} & set(originals)
    assert server.history(dataset_id)[0]["actionName"] == "Delete multiple annotations"

    undone = requests.put(f"{server.url}/history/undo", params={"datasetId": dataset_id},
                          headers={"Girder-Token": server.token}, timeout=30)
    assert undone.status_code == 200
    back = {a["_id"] for a in server.annotations(dataset_id)} & set(originals)
    assert back == set(originals[len(cells()):])  # the last location's, with their ids

    again = worker(parameters, dataset_id)
    assert again.returncode == 0, again.stdout + again.stderr
    present = {a["_id"] for a in server.annotations(dataset_id)}
    assert not present & set(originals)
    refined = check_nothing_lost(server, dataset_id, originals)
    assert set(refined) == set(originals) and set(refined.values()) == {1}
    assert refined_by_source(server, dataset_id) == refined
