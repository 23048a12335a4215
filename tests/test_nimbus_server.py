"""The NimbusImage double, exercised through the published nimbusimage SDK."""

from __future__ import annotations

import json
import pickle
from concurrent.futures import ThreadPoolExecutor

import girder_client
import nimbusimage as ni
import numpy as np
import pytest
import requests

from nimbus_server import NimbusServer

TOKEN = "s3cret-token"
_DROP = object()  # a _valid_doc change that removes the key


@pytest.fixture
def server():
    with NimbusServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def client(server):
    return ni.connect(server.url, token=server.token)


def _frames(xy=2, z=3, t=1, c=2, h=6, w=8, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(10, 4000, size=(xy, z, t, c, h, w)).astype(dtype)


def _polygon(ds_id, tags, x=10.0, y=10.0, location=None, channel=0) -> ni.Annotation:
    return ni.Annotation(
        shape="polygon", tags=tags, channel=channel, dataset_id=ds_id,
        location=ni.Location.from_dict(location or {"XY": 0, "Z": 0, "Time": 0}),
        coordinates=[{"x": x, "y": y}, {"x": x + 4, "y": y}, {"x": x + 4, "y": y + 4}],
    )


def _raw(server, method, path, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {"Girder-Token": server.token})
    return requests.request(method, f"{server.url}/{path}", headers=headers, timeout=10, **kwargs)


def _valid_doc(ds_id, **changes) -> dict:
    doc = {
        "coordinates": [{"x": 1.5, "y": 2.5}], "tags": ["cell"], "channel": 0,
        "location": {"XY": 0, "Z": 0, "Time": 0}, "shape": "point", "datasetId": ds_id,
    }
    doc.update(changes)
    return {key: value for key, value in doc.items() if value is not _DROP}


# --- datasets and images ------------------------------------------------------


def test_dataset_metadata_matches_the_frames(server, client):
    frames = _frames(xy=2, z=3, t=1, c=2)
    ds = client.dataset(server.add_dataset(frames, name="demo", channel_names=["DAPI", "GFP"]))

    assert ds.name == "demo"
    assert ds.shape == (6, 8)
    assert (ds.num_xy, ds.num_z, ds.num_time, ds.num_channels) == (2, 3, 1, 2)
    assert ds.channels == ["DAPI", "GFP"]
    assert ds.dtype == "uint16"
    tiles = ds._tiles
    assert tiles["IndexRange"] == {"IndexC": 2, "IndexZ": 3, "IndexXY": 2}
    assert all("IndexT" not in frame for frame in tiles["frames"])
    assert tiles["channelmap"] == {"DAPI": 0, "GFP": 1}


def test_the_sdk_reads_a_single_frame_dataset(server, client):
    ds = client.dataset(server.add_dataset(_frames(xy=1, z=1, t=1, c=1), mm_x=0.00065))
    assert (ds.num_xy, ds.num_z, ds.num_time, ds.num_channels) == (1, 1, 1, 1)
    assert ds.pixel_size.value == pytest.approx(0.00065)


def test_images_get_returns_every_frame_exactly(server, client):
    frames = _frames(xy=2, z=2, t=2, c=2)
    ds = client.dataset(server.add_dataset(frames))
    for xy, z, t, c in np.ndindex(*frames.shape[:4]):
        np.testing.assert_array_equal(ds.images.get(xy=xy, z=z, time=t, channel=c), frames[xy, z, t, c])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_images_get_keeps_the_dtype(server, client, dtype):
    frames = _frames(c=1, dtype=np.uint8).astype(dtype)
    image = client.dataset(server.add_dataset(frames)).images.get(xy=1, z=2)
    assert image.dtype == dtype
    np.testing.assert_array_equal(image, frames[1, 2, 0, 0])


def test_crop_and_max_size(server, client):
    frames = _frames(xy=1, z=1, c=1, h=20, w=40)
    ds = client.dataset(server.add_dataset(frames))
    plane = frames[0, 0, 0, 0]

    np.testing.assert_array_equal(ds.images.get(crop=(2, 3, 12, 9)), plane[3:9, 2:12])
    np.testing.assert_array_equal(ds.images.get(crop=(-10, -5, -1, -1)), plane[15:19, 30:39])
    np.testing.assert_array_equal(ds.images.get(crop=(30, 0, 99, 1)), plane[0:1, 30:40])
    small = ds.images.get(max_size=10)
    assert small.shape == (5, 10)
    # As the platform's large_image resamples 16 bits: the nearest pixels, every fourth here.
    np.testing.assert_array_equal(small, plane[::4, ::4])
    assert ds.images.get(max_size=1000).shape == (20, 40)  # never upsampled


def test_region_caps_downsample_keeping_aspect(server, client):
    frames = _frames(xy=1, z=1, c=1, h=20, w=40)
    ds = client.dataset(server.add_dataset(frames))
    ds._ensure_metadata()
    response = _raw(server, "GET", f"item/{ds._item_id}/tiles/region",
                    params={"encoding": "pickle:4", "width": 100, "height": 5})
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert pickle.loads(response.content).shape == (5, 10, 1)


def test_composite_of_two_channels_is_the_lighten_of_min_max_scaled_layers(server, client):
    frames = _frames(xy=1, z=2, c=2)
    ds = client.dataset(server.add_dataset(frames))
    composite = ds.images.get_composite(0, 1, 0, dtype="float32")

    def scaled(plane):
        plane = plane.astype(np.float64)
        return (plane - plane.min()) / (plane.max() - plane.min())

    red, green = scaled(frames[0, 1, 0, 0]), scaled(frames[0, 1, 0, 1])
    expected = np.stack([red, green, np.zeros_like(red)], axis=-1)
    assert composite.dtype == np.float32
    np.testing.assert_allclose(composite, expected, atol=1e-6)


def test_composite_overlapping_colors_take_the_per_pixel_maximum(server, client):
    frames = _frames(xy=1, z=1, c=2)
    white = [{"channel": c, "color": "#FFFFFF"} for c in (0, 1)]
    ds = client.dataset(server.add_dataset(frames, layers=white))
    composite = ds.images.get_composite(dtype="float64")

    planes = frames[0, 0, 0].astype(np.float64)
    low = planes.min(axis=(1, 2), keepdims=True)
    high = planes.max(axis=(1, 2), keepdims=True)
    brightest = ((planes - low) / (high - low)).max(axis=0)
    for band in range(3):
        np.testing.assert_allclose(composite[..., band], brightest, atol=1e-9)


def test_styled_max_merge_composite(server, client):
    frames = _frames(xy=1, z=3, c=1, h=8, w=8)
    layer = {"channel": 0, "color": "#FFFFFF", "z": {"type": "max-merge", "value": None}}
    ds = client.dataset(server.add_dataset(frames, layers=[layer]))
    composite = ds.images.get_composite(z=1, dtype="float64")

    # The contrast comes from the histogram of the current z; each band is windowed to
    # it and the bands are merged by maximum. At full resolution large_image answers in
    # float32 (not 8 bits), so the projection is the per-frame maximum to float32's precision.
    current = frames[0, 1, 0, 0].astype(np.float64)
    low, high = current.min(), current.max()
    bands = [np.clip((frames[0, z, 0, 0] - low) / (high - low), 0, 1) for z in range(3)]
    np.testing.assert_allclose(composite[..., 0], np.max(bands, axis=0), rtol=1e-6, atol=1e-7)


def test_styled_downsampled_composite(server, client):
    frames = _frames(xy=1, z=1, c=1, h=8, w=16)
    ds = client.dataset(server.add_dataset(frames, layers=[{"channel": 0, "color": "#00FF00"}]))
    composite = ds.images.get_composite(max_size=8, dtype="float64")

    # As the platform's large_image does: the frame styled with its own min..max (the SDK
    # sends the histogram's), cut to 8 bits, then resized with PIL's Lanczos filter.
    from PIL import Image

    plane = frames[0, 0, 0, 0].astype(np.float64)
    styled = np.clip((plane - plane.min()) / (plane.max() - plane.min()) * 255, 0, 255).astype(np.uint8)
    expected = np.asarray(Image.fromarray(styled, "L").resize((8, 4), Image.Resampling.LANCZOS)) / 255
    assert composite.shape == (4, 8, 3)
    np.testing.assert_allclose(composite[..., 1], expected, atol=1e-9)
    assert not composite[..., 0].any() and not composite[..., 2].any()


def test_histogram_reports_min_and_max(server, client):
    frames = _frames(xy=1, z=1, c=1)
    ds = client.dataset(server.add_dataset(frames))
    ds._ensure_metadata()
    (histogram,) = client.girder.get(f"item/{ds._item_id}/tiles/histogram", parameters={"frame": 0, "bins": 16})
    assert histogram["min"] == frames.min() and histogram["max"] == frames.max()
    assert sum(histogram["hist"]) == histogram["samples"] == frames.size
    assert len(histogram["bin_edges"]) == 17


def test_histogram_of_a_size_reads_the_level_large_image_would(server, client):
    """The SDK asks for the histogram at width = height = 2048 without resampling: of a
    4096-pixel frame that is the level at 1/2 (every second pixel), not the whole frame."""
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 60000, size=(1, 1, 1, 1, 4096, 64), dtype=np.uint16)
    ds = client.dataset(server.add_dataset(frames))
    ds._ensure_metadata()
    (histogram,) = client.girder.get(f"item/{ds._item_id}/tiles/histogram",
                                     parameters={"frame": 0, "bins": 16, "width": 2048, "height": 2048})
    level = frames[0, 0, 0, 0, ::2, ::2]
    assert histogram["samples"] == level.size
    assert histogram["min"] == level.min() and histogram["max"] == level.max()


def test_dataset_from_files(server, client, tmp_path):
    from PIL import Image

    planes = [np.full((4, 5), value, dtype=np.uint8) for value in (10, 200)]
    paths = []
    for index, plane in enumerate(planes):
        path = tmp_path / f"ch{index}.png"
        Image.fromarray(plane).save(path)
        paths.append(path)
    ds = client.dataset(server.add_dataset_from_files(paths, name="files"))
    assert ds.channels == ["ch0", "ch1"]
    np.testing.assert_array_equal(ds.images.get(channel=1), planes[1])


# --- annotations --------------------------------------------------------------


def test_create_many_returns_ids_in_request_order(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    ds = client.dataset(ds_id)
    created = ds.annotations.create_many([_polygon(ds_id, [f"t{i}"], x=i) for i in range(5)])

    assert [a.tags for a in created] == [[f"t{i}"] for i in range(5)]
    ids = [a.id for a in created]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [doc["_id"] for doc in server.annotations(ds_id)] == ids
    assert all(doc["datasetId"] == ds_id for doc in server.annotations(ds_id))
    assert ds.annotations.create_many([]) == []


def test_iter_all_pages_with_after_id(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    ids = [server.add_annotation(ds_id, [(i, i)], tags=["a"], shape="point") for i in range(5)]
    ds = client.dataset(ds_id)

    assert [a.id for a in ds.annotations.iter_all(page_size=2)] == ids
    pages = [query for method, path, query, status in server.request_log if path == "upenn_annotation"]
    assert [query.get("afterId") for query in pages] == [None, ids[1], ids[3], ids[4]]
    assert all(query["limit"] == "2" for query in pages)


def test_list_paging_defaults_offset_and_sort(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    for i in range(60):
        server.add_annotation(ds_id, [(i, i)], shape="point", channel=i % 3)
    gc = client.girder

    assert len(gc.get("upenn_annotation", parameters={"datasetId": ds_id})) == 50
    assert len(gc.get("upenn_annotation", parameters={"datasetId": ds_id, "limit": 0})) == 60
    page = gc.get("upenn_annotation", parameters={"datasetId": ds_id, "limit": 0, "offset": 58})
    assert [doc["coordinates"][0]["x"] for doc in page] == [58, 59]
    by_channel = gc.get("upenn_annotation", parameters={
        "datasetId": ds_id, "limit": 4, "sort": "channel", "sortdir": -1})
    assert [doc["channel"] for doc in by_channel] == [2, 2, 2, 2]
    assert [doc["coordinates"][0]["x"] for doc in by_channel] == [2, 5, 8, 11]


def test_tags_filter_requires_all_tags(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    both = server.add_annotation(ds_id, [(1, 1)], tags=["nucleus", "CD8+"])
    server.add_annotation(ds_id, [(2, 2)], tags=["nucleus"])
    server.add_annotation(ds_id, [(3, 3)], tags=["CD8+"], shape="point")
    ds = client.dataset(ds_id)

    assert [a.id for a in ds.annotations.list(tags=["nucleus", "CD8+"])] == [both]
    assert ds.annotations.count(tags=["nucleus"]) == 2
    assert ds.annotations.count(tags=["CD8+"], shape="point") == 1
    assert ds.annotations.count() == 3


def test_annotation_get_update_hydrate_and_delete(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    ds = client.dataset(ds_id)
    first, second = ds.annotations.create_many([_polygon(ds_id, ["a"]), _polygon(ds_id, ["b"])])

    updated = ds.annotations.update(first.id, {"tags": ["changed"], "unknown": 1})
    assert updated.tags == ["changed"]
    assert "unknown" not in server.annotations(ds_id)[0]
    assert [a.id for a in ds.annotations.get_many([second.id, first.id])] == [first.id, second.id]
    ds.annotations.delete(first.id)
    with pytest.raises(girder_client.HttpError) as error:
        ds.annotations.get(first.id)
    assert error.value.status == 400


def test_put_with_a_string_dataset_id_hides_the_annotation(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    ds = client.dataset(ds_id)
    (created,) = ds.annotations.create_many([_polygon(ds_id, ["a"])])
    client.girder.put(f"upenn_annotation/{created.id}", json={"datasetId": ds_id})
    assert ds.annotations.count() == 0
    assert ds.annotations.get(created.id).dataset_id == ds_id


@pytest.mark.parametrize("bad_doc, message", [
    ({"tags": _DROP}, "data must contain"),
    ({"channel": 1.0}, "data.channel must be integer"),
    ({"channel": True}, "data.channel must be integer"),
    ({"shape": "blob"}, "data.shape must be one of"),
    ({"coordinates": []}, "data.coordinates must contain at least 1 items"),
    ({"coordinates": [{"x": "1", "y": 2}]}, "data.coordinates[0].x must be number"),
    ({"location": {"XY": 0, "Z": 1.5}}, "data.location.Z must be integer"),
    ({"name": None}, "data.name must be string"),
    ({"tags": ["ok", 3]}, "data.tags[1] must be string"),
])
def test_schema_rejects_the_whole_batch(server, client, bad_doc, message):
    ds_id = server.add_dataset(_frames(c=1))
    bad = _valid_doc(ds_id, **bad_doc)
    with pytest.raises(girder_client.HttpError) as error:
        client.girder.post("upenn_annotation/multiple", json=[_valid_doc(ds_id), bad])

    assert error.value.status == 400
    body = json.loads(error.value.responseText)
    assert body["type"] == "validation" and message in body["message"]
    assert server.annotations(ds_id) == []


def test_schema_accepts_extra_keys_and_optional_location_keys(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    doc = _valid_doc(ds_id, location={}, tags=[], color=None, name="n", properties={"a": 1})
    (created,) = client.girder.post("upenn_annotation/multiple", json=[doc])
    assert created["properties"] == {"a": 1} and created["location"] == {}
    assert server.annotations(ds_id)[0]["_id"] == created["_id"]


def test_dataset_id_checks(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    gc = client.girder
    absent = "0123456789abcdef01234567"
    not_a_dataset = gc.get(f"folder/{ds_id}")["parentId"]

    cases = [
        ("upenn_annotation/multiple", [_valid_doc(absent)], 403, "Dataset(s) not found"),
        ("upenn_annotation/multiple", [_valid_doc(not_a_dataset)], 400, "Annotation dataset ID is invalid"),
        ("upenn_annotation", _valid_doc(not_a_dataset), 400, "Annotation dataset ID is invalid"),
        ("upenn_annotation/multiple", [_valid_doc("nope")], 500, "not a valid ObjectId"),
    ]
    for path, body, status, message in cases:
        with pytest.raises(girder_client.HttpError) as error:
            gc.post(path, json=body)
        assert error.value.status == status
        assert message in json.loads(error.value.responseText)["message"]
    assert gc.post("upenn_annotation/", json=_valid_doc(ds_id))["datasetId"] == ds_id


# --- connections --------------------------------------------------------------


def test_delete_many_leaves_connections_orphaned(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    ds = client.dataset(ds_id)
    parent, child, other = ds.annotations.create_many([_polygon(ds_id, ["p"]) for _ in range(3)])
    ds.connections.create_many([
        ni.Connection(parent_id=parent.id, child_id=child.id, dataset_id=ds_id, tags=[]),
        ni.Connection(parent_id=parent.id, child_id=other.id, dataset_id=ds_id, tags=[]),
    ])

    ds.annotations.delete_many([child.id, "0123456789abcdef01234567"])
    assert [doc["_id"] for doc in server.annotations(ds_id)] == [parent.id, other.id]
    assert len(server.connections(ds_id)) == 2  # the production bug

    ds.annotations.delete(other.id)
    assert [c["childId"] for c in server.connections(ds_id)] == [child.id]
    with pytest.raises(girder_client.HttpError) as error:
        ds.annotations.delete_many(["not-an-id"])
    assert error.value.status == 500


def test_connection_listing_filters(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    a, b, c = (server.add_annotation(ds_id, [(i, i)]) for i in range(3))
    ab = server.add_connection(ds_id, a, b, label="ab")
    bc = server.add_connection(ds_id, b, c)
    ds = client.dataset(ds_id)

    assert [x.id for x in ds.connections.list(node_id=b)] == [ab, bc]
    assert [x.id for x in ds.connections.list(parent_id=b)] == [bc]
    assert [x.id for x in ds.connections.list(child_id=b)] == [ab]
    ds.connections.delete_many([ab])
    assert [x.id for x in ds.connections.list()] == [bc]


def test_create_connections_rejects_unknown_annotations(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    a = server.add_annotation(ds_id, [(1, 1)])
    body = [
        {"parentId": a, "childId": a, "datasetId": ds_id, "tags": []},
        {"parentId": a, "childId": "0123456789abcdef01234567", "datasetId": ds_id, "tags": []},
    ]
    with pytest.raises(girder_client.HttpError) as error:
        client.girder.post("annotation_connection/multiple", json=body)
    assert error.value.status == 400
    assert server.connections(ds_id) == []


def test_connect_to_matches_location_including_key_order(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    near = server.add_annotation(ds_id, [(10, 10)], tags=["nucleus"], shape="point")
    server.add_annotation(ds_id, [(50, 50)], tags=["nucleus"], shape="point")
    server.add_annotation(ds_id, [(11, 11)], tags=["other"], shape="point")
    ds = client.dataset(ds_id)
    other_order = {"XY": 0, "Time": 0, "Z": 0}
    created = ds.annotations.create_many([
        _polygon(ds_id, ["refined"], x=8, y=8),
        ni.Annotation(shape="point", tags=["refined"], channel=0, dataset_id=ds_id,
                      coordinates=[{"x": 10, "y": 10}]),
    ])
    client.girder.post("upenn_annotation", json=_valid_doc(ds_id, location=other_order))

    reordered = ds.annotations.list(shape="point", tags=["cell"])[0].id
    connections = client.girder.post("annotation_connection/connectTo", json={
        "annotationsIds": [created[0].id, created[1].id, reordered],
        "tags": ["nucleus"], "channelId": 0, "datasetId": ds_id,
    })
    assert [(c["parentId"], c["childId"]) for c in connections] == [(near, created[0].id), (near, created[1].id)]
    assert all(c["label"] == "A Connection -- automatic" for c in connections)
    assert [list(doc["location"]) for doc in server.annotations(ds_id)][-1] == list(other_order)


def test_create_many_with_connect_to(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    parent = server.add_annotation(ds_id, [(5, 5)], tags=["nucleus"], shape="point", channel=1)
    ds = client.dataset(ds_id)
    (child,) = ds.annotations.create_many(
        [_polygon(ds_id, ["refined"], x=4, y=4)], connect_to={"tags": ["nucleus"], "channel": 1})
    assert [(c["parentId"], c["childId"]) for c in server.connections(ds_id)] == [(parent, child.id)]


# --- auth, routes, interfaces, faults -----------------------------------------


def test_wrong_token_is_rejected(server):
    """As Girder: an unknown token is no user; user/me answers null, a dataset's read and
    any write are refused with 401."""
    ds_id = server.add_dataset(_frames(c=1))
    bad = ni.connect(server.url, token="wrong")
    assert bad.girder.get("user/me") is None
    with pytest.raises(girder_client.HttpError) as error:
        bad.girder.get(f"folder/{ds_id}")
    assert error.value.status == 401
    assert json.loads(error.value.responseText)["type"] == "access"
    assert _raw(server, "POST", "upenn_annotation/multiple", headers={}).status_code == 401


def test_unknown_routes_and_ids(server, client):
    assert _raw(server, "GET", "no/such/route").status_code == 404
    response = _raw(server, "GET", "upenn_annotation/not-an-id")
    assert response.status_code == 400 and response.json()["type"] == "validation"
    assert _raw(server, "GET", "upenn_annotation").status_code == 400  # datasetId is required
    assert client.user_id == client.girder.get("user/me")["_id"]


def test_worker_interface_round_trip(server, client):
    image = "annotations/sam2_refine_worker:latest"
    interface = {"Padding": {"type": "number", "min": -20, "max": 20, "default": 0}}
    context = ni.worker_context(api_url=server.url, token=server.token, params={"image": image})
    context.set_interface(image, interface)

    assert server.interfaces == {image: interface}
    assert client.get_worker_interface(image, request_if_missing=False) == interface


def test_get_fault_is_retried_by_the_sdk(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    server.add_annotation(ds_id, [(1, 1)], tags=["a"])
    fault = server.inject_fault("GET", r"^upenn_annotation$", status=502, times=1)

    assert len(client.dataset(ds_id).annotations.list()) == 1
    assert fault.hits == 1
    statuses = [status for method, path, query, status in server.request_log if path == "upenn_annotation"]
    assert statuses == [502, 200]


def test_after_apply_fault_writes_then_fails(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    ds = client.dataset(ds_id)
    fault = server.inject_fault("POST", r"upenn_annotation/multiple", status=502, after_apply=True, body="gateway")

    with pytest.raises(girder_client.HttpError) as error:
        ds.annotations.create_many([_polygon(ds_id, ["a"]), _polygon(ds_id, ["b"])])
    assert error.value.status == 502
    assert json.loads(error.value.responseText) == {"message": "gateway", "type": "rest"}
    assert [doc["tags"] for doc in server.annotations(ds_id)] == [["a"], ["b"]]
    assert fault.hits == 1

    server.clear_faults()
    ds.annotations.create_many([_polygon(ds_id, ["c"])])
    assert len(server.annotations(ds_id)) == 3


def test_fault_limited_to_times_and_method(server):
    ds_id = server.add_dataset(_frames(c=1))
    fault = server.inject_fault("DELETE", r"upenn_annotation", status=503, times=2)
    assert _raw(server, "GET", "upenn_annotation", params={"datasetId": ds_id}).status_code == 200
    statuses = [_raw(server, "DELETE", "upenn_annotation/multiple", json=[]).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert fault.hits == 2
    assert [entry[3] for entry in server.request_log if entry[0] == "DELETE"] == statuses


def test_concurrent_creates_get_unique_increasing_ids(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    ds = client.dataset(ds_id)

    def create(i):
        return [a.id for a in ds.annotations.create_many([_polygon(ds_id, [str(i)]) for _ in range(5)])]

    with ThreadPoolExecutor(max_workers=8) as pool:
        batches = list(pool.map(create, range(16)))
    ids = [doc["_id"] for doc in server.annotations(ds_id)]
    assert len(ids) == len(set(ids)) == 80 and ids == sorted(ids)
    assert all(batch == sorted(batch) for batch in batches)


# --- the fault kinds of issue 19, listings by cursor ---------------------------------


def test_listing_serves_documents_seeded_with_numpy_numbers(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    server.add_annotation(ds_id, [{"x": np.float64(1.5), "y": np.float32(2.5)}], tags=["a"], shape="point")
    (annotation,) = client.dataset(ds_id).annotations.list()
    assert annotation.coordinates[0] == {"x": 1.5, "y": 2.5}


def test_listing_after_a_cursor_skips_deleted_and_unmatched_documents(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    ids = [server.add_annotation(ds_id, [(i, i)], tags=["a"] if i % 2 else ["b"], shape="point") for i in range(9)]
    server.delete_annotations([ids[3]])
    page = client.girder.get("upenn_annotation", parameters={
        "datasetId": ds_id, "tags": json.dumps(["a"]), "afterId": ids[0], "limit": 2})
    assert [doc["_id"] for doc in page] == [ids[1], ids[5]]
    page = client.girder.get("upenn_annotation", parameters={"datasetId": ds_id, "afterId": "0" * 24, "limit": 0})
    assert [doc["_id"] for doc in page] == [i for i in ids if i != ids[3]]


def test_a_dropped_connection_gets_no_answer_and_after_apply_still_writes(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    server.inject_fault("POST", r"upenn_annotation/multiple", drop=True, after_apply=True, times=1)
    with pytest.raises(requests.ConnectionError):
        client.girder.post("upenn_annotation/multiple", json=[_valid_doc(ds_id)])
    assert len(server.annotations(ds_id)) == 1
    assert server.request_log[-1][3] == 0


def test_a_partial_insert_applies_only_the_first_documents(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    server.inject_fault("POST", r"upenn_annotation/multiple", status=400, after_apply=True, apply_only=1)
    with pytest.raises(girder_client.HttpError):
        client.girder.post("upenn_annotation/multiple", json=[_valid_doc(ds_id, tags=["1"]), _valid_doc(ds_id)])
    assert [doc["tags"] for doc in server.annotations(ds_id)] == [["1"]]


def test_a_write_applied_late_lands_after_the_client_gave_up_and_the_server_says_when_it_is_idle(server, client):
    ds_id = server.add_dataset(_frames(c=1))
    server.inject_fault("POST", r"upenn_annotation/multiple", delay=1.0, times=1)
    with pytest.raises(requests.Timeout):
        requests.post(f"{server.url}/upenn_annotation/multiple", json=[_valid_doc(ds_id)],
                      headers={"Girder-Token": server.token}, timeout=0.2)
    assert server.wait_until_idle(10)
    assert len(server.annotations(ds_id)) == 1
    (logged,) = [r for r in server.requests if r.method == "POST"]
    assert json.loads(logged.body)[0]["tags"] == ["cell"]


def test_a_body_over_the_limit_is_refused_with_413():
    with NimbusServer(token=TOKEN, max_body_bytes=300) as server:
        ds_id = server.add_dataset(_frames(c=1))
        response = _raw(server, "POST", "upenn_annotation/multiple", json=[_valid_doc(ds_id)] * 5)
        assert response.status_code == 413 and server.annotations(ds_id) == []
        assert _raw(server, "POST", "upenn_annotation/multiple", json=[_valid_doc(ds_id)]).status_code == 200


def test_a_put_can_keep_only_schema_fields_dropping_the_documents_own_keys():
    with NimbusServer(token=TOKEN, put_keeps_only_schema_fields=True) as server:
        ds_id = server.add_dataset(_frames(c=1))
        annotation = server.add_annotation(ds_id, [(1, 1)], shape="point", marker="kept?")
        assert _raw(server, "PUT", f"upenn_annotation/{annotation}", json={"tags": ["x"]}).status_code == 200
        (stored,) = server.annotations(ds_id)
        assert stored["tags"] == ["x"] and "marker" not in stored


def test_random_faults_are_seeded_and_of_the_kinds_asked(server):
    def draws(seed):
        faults = server.inject_random_faults(0.5, seed, kinds=("error", "dropped"))
        return [(fault.status, fault.drop) if fault else None
                for fault in (faults.draw("GET", "x") for _ in range(40))]

    first = draws(3)
    assert first == draws(3) != draws(4)
    assert {entry for entry in first if entry} == {(500, False), (503, False), (None, True)}
    with pytest.raises(ValueError):
        server.inject_random_faults(0.1, 1, kinds=("flood",))
