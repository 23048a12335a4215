"""The embedded server answers as the platform's own server does (issue 23; PLATFORM.md
§10, measured against Girder 5.0.21 with NimbusImage's annotation plugin at 818835a),
one test per answer the project had assumed differently, and the worker is right
against each."""

from __future__ import annotations

import re

import requests

from sam2_refine.nimbus import Platform
from sam2_refine.parameters import Location
from tests.conftest import cells, compute_parameters, frames, oracle_env, run_worker


def _get(server, path: str, token: str | None = None, **params) -> requests.Response:
    return requests.get(f"{server.url}/{path}", params=params, headers={"Girder-Token": token or server.token},
                        timeout=30)


def _request(server, method: str, path: str, body, **params) -> requests.Response:
    return requests.request(method, f"{server.url}/{path}", params=params, json=body,
                            headers={"Girder-Token": server.token}, timeout=30)


def _point(dataset_id: str, x: float = 1.0) -> dict:
    return {"shape": "point", "coordinates": [{"x": x, "y": 1.0}], "tags": ["x"], "channel": 0,
            "location": {"XY": 0, "Z": 0, "Time": 0}, "datasetId": dataset_id}


def test_an_unknown_annotation_id_is_a_400_invalid_id_and_the_worker_takes_it_as_missing(server):
    dataset_id = server.add_dataset(frames(z=1, time=1))
    present = server.add_annotation(dataset_id, [(1, 1)], shape="point")
    unknown = "0123456789abcdef01234567"

    answer = _get(server, f"upenn_annotation/{unknown}")
    assert answer.status_code == 400
    assert answer.json() == {"message": f"Invalid upenn_annotation id ({unknown}).", "type": "rest"}
    connection = _get(server, f"annotation_connection/{unknown}")
    assert connection.status_code == 400 and connection.json()["message"].startswith("Invalid annotation_connection id")
    # Where the worker asks id by id (a server without hydrate), a 400 means "not there".
    platform = Platform(server.url, server.token, dataset_id, {})
    assert platform._rest.existing("upenn_annotation", [present, unknown]) == {present}
    assert platform.existing_connections([unknown]) == set()


def test_deleting_connections_answers_a_json_string(server):
    dataset_id = server.add_dataset(frames(z=1, time=1))
    parent, child = (server.add_annotation(dataset_id, [(x, 1)], shape="point") for x in (1, 2))
    connection = server.add_connection(dataset_id, parent, child)

    answer = _request(server, "DELETE", "annotation_connection/multiple", [connection])
    assert answer.status_code == 200 and isinstance(answer.json(), str)
    assert server.connections(dataset_id) == []
    second = server.add_connection(dataset_id, parent, child)
    Platform(server.url, server.token, dataset_id, {}).delete_connections([second])
    assert server.connections(dataset_id) == []


def test_the_worker_interface_is_read_back_bare_or_as_null(server):
    image = "annotations/sam2_refine_worker:latest"
    assert _get(server, "worker_interface", image=image).json() is None
    interface = {"Padding": {"type": "number", "min": -20, "max": 20, "default": 0}}
    saved = _request(server, "POST", "worker_interface", interface, image=image).json()
    assert saved["image"] == image and saved["interface"] == interface
    assert _get(server, "worker_interface", image=image).json() == interface


def test_a_single_frame_image_has_no_frames_channels_or_index_range(server, oracle_checkpoint_dir, tmp_path):
    """And the whole worker refines it: one XY, Z, Time and channel."""
    dataset_id = server.add_dataset(frames(z=1, time=1, channels=1))
    item = next(item for item in _get(server, "item", folderId=dataset_id, limit=0).json() if "largeImage" in item)
    tiles = _get(server, f"item/{item['_id']}/tiles").json()
    assert not {"frames", "channels", "channelmap", "IndexRange", "IndexStride"} & set(tiles)
    assert (tiles["sizeX"], tiles["sizeY"]) == (frames().shape[-1], frames().shape[-2])

    for shape in cells():
        server.add_annotation(dataset_id, shape.rough_outline(), tags=["rough"], location={"XY": 0, "Z": 0, "Time": 0})
    parameters = compute_parameters(dataset_id)
    parameters["tile"] = parameters["assignment"] = {"XY": 0, "Z": 0, "Time": 0}
    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, cells()))
    assert run.returncode == 0, run.stdout + run.stderr
    assert sum(a["tags"] == ["refined"] for a in server.annotations(dataset_id)) == len(cells())


def test_frames_name_their_channel(server):
    dataset_id = server.add_dataset(frames(z=2, time=1, channels=2), channel_names=["DAPI", "GFP"])
    item = next(item for item in _get(server, "item", folderId=dataset_id, limit=0).json() if "largeImage" in item)
    tiles = _get(server, f"item/{item['_id']}/tiles").json()
    assert [frame["Channel"] for frame in tiles["frames"]] == ["DAPI", "GFP"] * 2
    assert tiles["IndexRange"] == {"IndexC": 2, "IndexZ": 2}


def test_the_dataset_folder_holds_the_image_and_its_multi_source_json_which_alone_is_a_large_image(
        server, oracle_checkpoint_dir, tmp_path):
    """As the app's createDataset leaves it: no selectedLargeImageId (the app stores null,
    which Girder's metadata drops), so clients find the image among the folder's items."""
    dataset_id = server.add_dataset(frames(z=2, time=1), name="cells")
    folder = _get(server, f"folder/{dataset_id}").json()
    assert folder["meta"] == {"subtype": "contrastDataset"}
    items = _get(server, "item", folderId=dataset_id, limit=0).json()
    assert sorted(item["name"] for item in items) == ["cells.tiff", "multi-source2.json"]
    assert [item["name"] for item in items if "largeImage" in item] == ["multi-source2.json"]
    image_item = next(item for item in items if item["name"] == "cells.tiff")
    assert _get(server, f"item/{image_item['_id']}/tiles").status_code == 400

    for shape in cells():
        server.add_annotation(dataset_id, shape.rough_outline(), tags=["rough"], location={"XY": 0, "Z": 1, "Time": 0})
    run = run_worker(server, "compute", compute_parameters(dataset_id), oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, cells()))
    assert run.returncode == 0, run.stdout + run.stderr
    assert sum(a["tags"] == ["refined"] for a in server.annotations(dataset_id)) == len(cells())


def test_every_page_of_a_listing_sends_its_total_count(server, monkeypatch):
    """Girder 5 counts the page's query (its afterId included) for every page."""
    dataset_id = server.add_dataset(frames(z=1, time=1))
    ids = [server.add_annotation(dataset_id, [(x, 1)], tags=["x"], shape="point") for x in range(5)]
    connections = [server.add_connection(dataset_id, ids[0], child) for child in ids[1:]]

    first = _get(server, "upenn_annotation", datasetId=dataset_id, limit=2)
    after = _get(server, "upenn_annotation", datasetId=dataset_id, limit=2, afterId=ids[1])
    none = _get(server, "upenn_annotation", datasetId=dataset_id, limit=2, tags='["y"]')
    assert [first.headers["Girder-Total-Count"], after.headers["Girder-Total-Count"],
            none.headers["Girder-Total-Count"]] == ["5", "3", "0"]
    linked = _get(server, "annotation_connection", datasetId=dataset_id, limit=3, afterId=connections[0])
    assert linked.headers["Girder-Total-Count"] == "3" and len(linked.json()) == 3

    from sam2_refine import nimbus_transport

    monkeypatch.setattr(nimbus_transport, "PAGE_SIZE", 2)
    platform = Platform(server.url, server.token, dataset_id, {})
    assert [record.id for record in platform.tagged_annotations(("x",), [Location(0, 0, 0)])] == ids


def test_the_undo_history_keeps_each_write_of_the_user_and_undo_puts_deleted_documents_back_with_their_ids(server):
    """As the plugin's history model: one entry per write, the user's newest 10; undo
    reverts the newest not undone (a delete: the documents back with their ids; a create:
    the documents removed), redo the oldest undone."""
    dataset_id = server.add_dataset(frames(z=1, time=1))
    created = _request(server, "POST", "upenn_annotation/multiple", [_point(dataset_id, x) for x in range(3)]).json()
    ids = [document["_id"] for document in created]
    assert _request(server, "DELETE", "upenn_annotation/multiple", ids[:2]).status_code == 200
    assert [entry["actionName"] for entry in server.history(dataset_id)] == [
        "Delete multiple annotations", "Create multiple annotations"]

    def undo(action: str = "undo") -> None:
        assert _request(server, "PUT", f"history/{action}", None, datasetId=dataset_id).status_code == 200

    undo()
    assert [a["_id"] for a in server.annotations(dataset_id)] == ids
    assert server.annotations(dataset_id)[0] == created[0]
    undo()
    assert server.annotations(dataset_id) == []
    undo("redo")
    assert [a["_id"] for a in server.annotations(dataset_id)] == ids
    for x in range(12):
        _request(server, "POST", "upenn_annotation/multiple", [_point(dataset_id, x)])
    entries = server.history(dataset_id)
    assert len(entries) == 10 and not any(entry["isUndone"] for entry in entries)


def test_without_hydrate_an_older_server_is_asked_id_by_id():
    """[K] has no POST upenn_annotation/hydrate: Girder answers 400 "No matching route"."""
    from nimbus_server import NimbusServer

    with NimbusServer(missing_routes={"POST upenn_annotation/hydrate"}) as older:
        dataset_id = older.add_dataset(frames(z=1, time=1))
        present = older.add_annotation(dataset_id, [(1, 1)], shape="point")
        platform = Platform(older.url, older.token, dataset_id, {})
        assert platform.existing_annotations([present, "0" * 24]) == {present}
        asked = [(method, path, status) for method, path, _, status in older.request_log if "upenn_annotation" in path]
    assert asked == [("POST", "upenn_annotation/hydrate", 400), ("GET", f"upenn_annotation/{present}", 200),
                     ("GET", f"upenn_annotation/{'0' * 24}", 400)]


def test_an_expired_token_reads_as_no_user_at_all(server):
    """Girder takes an unknown token as no token: a public read runs for an anonymous user
    (a dataset's folder: 401 "Read access denied for folder <id> (user None)."; its views:
    none), a write or a user's own resource asks to log in."""
    dataset_id = server.add_dataset(frames(z=1, time=1))
    expired = "0" * 64

    folder = _get(server, f"folder/{dataset_id}", token=expired)
    assert folder.status_code == 401
    assert folder.json() == {"message": f"Read access denied for folder {dataset_id} (user None).", "type": "access"}
    for path, params in (("upenn_annotation", {"datasetId": dataset_id}), ("item", {"folderId": dataset_id})):
        answer = _get(server, path, token=expired, **params)
        assert (answer.status_code, answer.json()["message"]) == (401, folder.json()["message"])
    views = _get(server, "dataset_view", token=expired, datasetId=dataset_id, currentUserOnly="true")
    assert (views.status_code, views.json()) == (200, [])
    assert _get(server, "user/me", token=expired).json() is None
    history = _get(server, "history", token=expired, datasetId=dataset_id)
    assert (history.status_code, history.json()["message"]) == (401, "You must be logged in.")
    create = requests.post(f"{server.url}/upenn_annotation/multiple", json=[_point(dataset_id)],
                           headers={"Girder-Token": expired}, timeout=30)
    assert (create.status_code, create.json()["message"]) == (401, "You must be logged in.")


def test_history_entries_are_dated_as_girder_writes_dates(server):
    dataset_id = server.add_dataset(frames(z=1, time=1))
    _request(server, "POST", "upenn_annotation/multiple", [_point(dataset_id)])
    [entry] = _get(server, "history", datasetId=dataset_id).json()
    assert set(entry) == {"actionName", "actionDate", "isUndone"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", entry["actionDate"])


def test_the_user_and_the_configuration_carry_the_platforms_fields(server):
    """GET user/me has Girder 5's user fields; the configuration is as the app creates it
    (an item-like document in the user's Private folder, with the compatibility the app
    checks a dataset against and an empty pipeline list)."""
    me = _get(server, "user/me").json()
    assert {"emailVerified", "otp", "groupInvites"} <= set(me)
    dataset_id = server.add_dataset(frames(z=2, time=1, channels=2), channel_names=["DAPI", "GFP"])
    [view] = _get(server, "dataset_view", datasetId=dataset_id).json()
    configuration = _get(server, f"upenn_collection/{view['configurationId']}").json()
    assert configuration["baseParentType"] == "folder"
    assert configuration["baseParentId"] == configuration["folderId"]
    assert isinstance(configuration["size"], int)
    assert configuration["meta"]["compatibility"] == {
        "xyDimensions": "one", "zDimensions": "multiple", "tDimensions": "one", "channels": {"0": "DAPI", "1": "GFP"}}
    assert configuration["meta"]["pipelines"] == []


def test_a_path_under_no_resource_is_girders_html_not_found_page(server):
    """Under a resource it has, Girder answers 400 "No matching route" in JSON (how the
    worker learns a plugin is older); under none, its web server's 404 page."""
    answer = _get(server, "no/such/route")
    assert answer.status_code == 404 and answer.headers["Content-Type"].startswith("text/html")
    assert "Nothing matches the given URI" in answer.text
    under = _request(server, "POST", "upenn_annotation/no/such", {})
    assert (under.status_code, under.json()) == (400, {"message": 'No matching route for "POST no/such"', "type": "rest"})


def test_malformed_ids_are_answered_as_the_plugin_answers_them(server):
    """The plugin checks hydrate's ids (400 "annotationId is not a valid id") but passes a
    listing's datasetId, afterId and a connection listing's ids straight to ObjectId (500,
    which a client takes for a server failure and retries)."""
    dataset_id = server.add_dataset(frames(z=1, time=1))
    hydrate = _request(server, "POST", "upenn_annotation/hydrate", ["nothex"])
    assert (hydrate.status_code, hydrate.json()) == (400, {"message": "annotationId is not a valid id", "type": "rest"})
    numbers = _request(server, "POST", "upenn_annotation/hydrate", [12])
    assert (numbers.status_code, numbers.json()["message"]) == (400, "annotationId is not a valid id")
    for path, params in (("upenn_annotation", {"datasetId": "nothex"}),
                         ("upenn_annotation", {"datasetId": dataset_id, "afterId": "nothex"}),
                         ("annotation_connection", {"datasetId": dataset_id, "afterId": "nothex"}),
                         ("annotation_connection", {"datasetId": dataset_id, "childId": "nothex"})):
        answer = _get(server, path, **params)
        assert (answer.status_code, answer.json()["type"]) == (500, "internal"), (path, params, answer.text)
