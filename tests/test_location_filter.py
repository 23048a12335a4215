"""Reading only the job's locations where the platform can select by location (POST
upenn_annotation/list/ids, then hydrate), the dataset's listing where it cannot (an older
plugin answers Girder's 400 "No matching route"): the same records either way."""

from __future__ import annotations

import pytest
import requests

from nimbus_server import NEWER_ROUTES, NimbusServer
from sam2_refine.nimbus import Platform
from sam2_refine.nimbus_annotations import location_filters
from sam2_refine.parameters import DatasetSizes, Location
from tests.conftest import cells, compute_parameters, frames, oracle_env, run_worker

SIZES = DatasetSizes(xy=2, z=3, time=4)


def everywhere(sizes: DatasetSizes = SIZES) -> list[Location]:
    return [Location(xy, z, t) for xy in range(sizes.xy) for z in range(sizes.z) for t in range(sizes.time)]


def test_location_filters_select_exactly_the_locations_with_as_few_requests_as_can_be():
    assert location_filters([Location(0, 1, 2)], SIZES) == [{"XY": 0, "Z": 1, "Time": 2}]
    assert location_filters([Location(1, z, t) for z in range(3) for t in range(4)], SIZES) == [{"XY": 1}]
    assert location_filters([Location(xy, z, 2) for xy in range(2) for z in range(3)], SIZES) == [{"Time": 2}]
    frames_1_2 = [Location(xy, z, t) for xy in range(2) for z in range(3) for t in (0, 1)]
    assert location_filters(frames_1_2, SIZES) == [{"Time": 0}, {"Time": 1}]
    assert location_filters(everywhere(), SIZES) == [{}]
    scattered = [Location(0, 0, 0), Location(1, 2, 3)]
    assert location_filters(scattered, SIZES) == [{"XY": 0, "Z": 0, "Time": 0}, {"XY": 1, "Z": 2, "Time": 3}]
    for selection in (frames_1_2, scattered, everywhere()[5:17]):
        covered = {(loc.xy, loc.z, loc.time) for loc in everywhere() if any(
            all(getattr(loc, attribute) == value for attribute, value in
                zip(("xy", "z", "time"), (part.get("XY"), part.get("Z"), part.get("Time"))) if value is not None)
            for part in location_filters(selection, SIZES))}
        assert covered == {(loc.xy, loc.z, loc.time) for loc in selection}


def seeded(server) -> str:
    """Polygons, rectangles and points under several tags at every location of SIZES."""
    dataset_id = server.add_dataset(frames(xy=SIZES.xy, z=SIZES.z, time=SIZES.time, channels=1))
    for index, location in enumerate(everywhere()):
        where = location.as_dict()
        for tags, shape in ((["rough"], "polygon"), (["rough", "other"], "rectangle"), (["other"], "polygon"),
                            (["refined"], "polygon"), (["refined", "job"], "polygon"), (["rough"], "point")):
            server.add_annotation(dataset_id, [(index, 1), (index + 5, 1), (index + 5, 6)], tags=tags, shape=shape,
                                  location=where)
    return dataset_id


def reads(platform: Platform, locations):
    return {
        "polygons": [r.id for r in platform.polygons(("other", "rough"), locations)],
        "untagged polygons": [r.id for r in platform.polygons((), locations)],
        "tagged": [r.id for r in platform.tagged_annotations(("rough",), locations)],
        "outputs": [r.id for r in platform.output_polygons(("refined", "job"), locations)],
        "all outputs": [r.id for r in platform.output_polygons((), locations)],
    }


@pytest.mark.parametrize("selection", [[Location(1, 2, 3)], [Location(xy, z, t) for xy in range(2)
                                                               for z in range(3) for t in (1, 2)]])
def test_the_location_filter_reads_what_the_listing_reads_in_the_same_order(selection):
    with NimbusServer() as server, NimbusServer(missing_routes=NEWER_ROUTES) as older:
        current, old = seeded(server), seeded(older)
        filtered = reads(Platform(server.url, server.token, current, {}), selection)
        listed = reads(Platform(older.url, older.token, old, {}), selection)
        # The same documents in both servers, with their own ids: compare by position.
        every_current = [a["_id"] for a in server.annotations(current)]
        every_old = [a["_id"] for a in older.annotations(old)]
        assert {key: [every_current.index(i) for i in ids] for key, ids in filtered.items()} == {
            key: [every_old.index(i) for i in ids] for key, ids in listed.items()}
        assert all(filtered.values())
        assert not [path for method, path, *_ in server.request_log if (method, path) == ("GET", "upenn_annotation")]
        assert {path for _, path, *_ in server.request_log if path.startswith("upenn_annotation")} == {
            "upenn_annotation/list/ids", "upenn_annotation/hydrate"}
        refused = [(path, status) for _, path, _, status in older.request_log if path == "upenn_annotation/list/ids"]
        assert refused == [("upenn_annotation/list/ids", 400)]  # asked once, then the listing


def test_an_older_server_answers_the_filter_as_girder_answers_a_missing_route():
    with NimbusServer(missing_routes=NEWER_ROUTES) as older:
        dataset_id = older.add_dataset(frames(z=1, time=1))
        answer = requests.post(f"{older.url}/upenn_annotation/list/ids", json={"datasetId": dataset_id},
                               headers={"Girder-Token": older.token}, timeout=30)
    assert answer.status_code == 400
    assert answer.json() == {"message": 'No matching route for "POST list/ids"', "type": "rest"}


def test_list_ids_answers_as_the_plugin_does(server):
    dataset_id = server.add_dataset(frames(z=2, time=2, channels=1))
    here = {"XY": 0, "Z": 1, "Time": 1}
    first = server.add_annotation(dataset_id, [(1, 1)], tags=["rough"], shape="polygon", location=here)
    server.add_annotation(dataset_id, [(1, 1)], tags=["rough"], shape="polygon", location={**here, "Time": 0})
    both = server.add_annotation(dataset_id, [(1, 1)], tags=["rough", "b"], shape="rectangle", location=here)

    def ids(filters):
        answer = requests.post(f"{server.url}/upenn_annotation/list/ids", json={"datasetId": dataset_id,
                                                                                 "filters": filters},
                               headers={"Girder-Token": server.token}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert ids({"location": here}) == {"total": 2, "ids": [first, both]}
    assert ids({"location": {"Time": 1, "XY": None}, "shape": "rectangle"}) == {"total": 1, "ids": [both]}
    assert ids({"tags": {"values": ["b", "x"], "exclusive": False}}) == {"total": 1, "ids": [both]}
    assert ids({"tags": {"values": ["rough"], "exclusive": True}, "location": here}) == {"total": 1, "ids": [first]}
    assert ids({"location": {"Time": "1"}})["total"] == 0  # values are matched with their type


def test_a_job_on_some_frames_of_a_large_dataset_reads_only_their_annotations(server, oracle_checkpoint_dir,
                                                                              tmp_path):
    dataset_id = server.add_dataset(frames(z=1, time=6))
    for time_point in range(6):
        for shape in cells():
            server.add_annotation(dataset_id, shape.rough_outline(), tags=["rough"],
                                  location={"XY": 0, "Z": 0, "Time": time_point})
    parameters = compute_parameters(dataset_id, **{"Batch Time": "2-3", "Delete original annotations": True})
    parameters["tile"] = parameters["assignment"] = {"XY": 0, "Z": 0, "Time": 0}
    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, cells()))
    assert run.returncode == 0, run.stdout + run.stderr
    by_time = {}
    for annotation in server.annotations(dataset_id):
        by_time.setdefault(annotation["location"]["Time"], []).append(annotation["tags"])
    assert by_time[1] == by_time[2] == [["refined"]] * len(cells())
    assert all(tags == [["rough"]] * len(cells()) for time_point, tags in by_time.items() if time_point not in (1, 2))
    listed = sum(len(query) for method, path, query, _ in server.request_log if (method, path) == (
        "GET", "upenn_annotation"))
    assert listed == 0
    hydrated = [path for method, path, *_ in server.request_log if path == "upenn_annotation/hydrate"]
    assert hydrated
