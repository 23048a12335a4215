"""The embedded server (`nimbus_server/`) against the platform's own server, answer by
answer, for `scripts/platform_check.py` check 10.

The same frames become a dataset on both; then
- pixels: random regions (crops, size caps down and up, with and without a style: one gray
  band or two, numeric windows, "min", "max", "auto"), histograms as the SDK asks for them,
  and the windows and frames the worker itself reads through the SDK
  (`sam2_refine.nimbus.Platform`): the same shape, dtype and values;
- answers: each request the worker makes (and the app's history and undo), the same status
  and the same keys and value types in the JSON, ids, dates and sizes aside.
Known differences that are not the embedded server's to copy are listed in ACCEPTED.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field

import numpy as np
import requests

# Where the platform's server as run here (mongomock) differs from the platform in
# production, or where the answer's text is the database's own: not copied.
ACCEPTED = {
    "Girder-Total-Count": "the plugin counts a page with its cursor's count(), which mongomock's cursors lack, so "
                          "the server run here sends no count; with MongoDB it does, as the embedded server",
    "DeleteResult": "DELETE annotation_connection/multiple answers the database's printed delete result, whose "
                    "fields are the database's own",
    "Content-Type of pickled regions": "girder_large_image labels a pickled region image/jpeg; nothing reads it",
    "a 500's message": "Girder answers 'An unexpected error occurred on the server.' and an id to find the error in "
                       "its log; the embedded server names the error (the status is compared)",
    "histogram without resample=false": "below a pyramid level the platform then resamples each tile through PIL "
                                        "in 8 bits; the app and the SDK always send resample=false",
}


@dataclass
class Tally:
    compared: int = 0
    differences: list[str] = field(default_factory=list)

    def add(self, label: str, problems: list[str]) -> None:
        self.compared += 1
        if problems:
            self.differences.append(f"{label}: {'; '.join(problems[:8])}")


class Side:
    """One server as a client sees it: its base URL and a token."""

    def __init__(self, base: str, token: str):
        self.base, self.session = base, requests.Session()
        self.session.headers["Girder-Token"] = token

    def call(self, method: str, path: str, params=None, body=None, token: str | None = None) -> requests.Response:
        headers = {"Girder-Token": token} if token else None
        return self.session.request(method, f"{self.base}/{path}", params=params, json=body, headers=headers,
                                    timeout=120)


def large_image_item(side: Side, dataset_id: str) -> str:
    items = side.call("GET", "item", {"folderId": dataset_id, "limit": 0}).json()
    return next(item["_id"] for item in items if "largeImage" in item)


def same_pixels(platform: np.ndarray, embedded: np.ndarray) -> list[str]:
    platform, embedded = np.asarray(platform), np.asarray(embedded)
    if platform.shape != embedded.shape or platform.dtype != embedded.dtype:
        return [f"{platform.shape} {platform.dtype} against {embedded.shape} {embedded.dtype}"]
    if platform.dtype.kind == "f":
        equal = np.allclose(platform, embedded, rtol=1e-6, atol=1e-6, equal_nan=True)
    else:
        equal = np.array_equal(platform, embedded)
    if equal:
        return []
    difference = np.abs(platform.astype(np.float64) - embedded.astype(np.float64))
    return [f"values differ (max {difference.max():g}, mean {difference.mean():g})"]


def random_requests(rng: np.random.Generator, width: int, height: int, frames: int, count: int) -> list[dict]:
    """tiles/region queries: the whole frame and random crops, capped below and above
    their size, half of them styled."""
    queries = []
    for index in range(count):
        left, top = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
        right, bottom = int(rng.integers(left + 1, width + 1)), int(rng.integers(top + 1, height + 1))
        if index < 3:
            left, top, right, bottom = 0, 0, width, height
        cap = int(rng.integers(8, 1200))
        query = {"frame": int(rng.integers(0, frames)), "encoding": "pickle:5", "left": left, "top": top,
                 "right": right, "bottom": bottom, "width": cap, "height": cap}
        if index % 2:
            windows = [(float(rng.integers(0, 2000)), float(rng.integers(2500, 60000))), ("min", "max"),
                       ("auto", "auto")]
            low, high = windows[index % 3]
            bands = [{"frame": query["frame"], "min": low, "max": high, "palette": ["#000000", "#ffffff"]}]
            if index % 4 == 1 and frames > 1:
                bands.append({"frame": (query["frame"] + 1) % frames, "min": low, "max": high,
                              "palette": ["#000000", "#ffffff"]})
            query["style"] = json.dumps({"bands": bands})
        queries.append(query)
    return queries


def compare_pixels(platform: Side, embedded: Side, datasets: list[tuple[str, str, np.ndarray]],
                   rng: np.random.Generator, per_dataset: int, tally: Tally) -> None:
    """`datasets`: (platform's dataset id, embedded's, frames (T, C, H, W))."""
    for platform_dataset, embedded_dataset, frames in datasets:
        count, (height, width) = frames.shape[0] * frames.shape[1], frames.shape[-2:]
        items = large_image_item(platform, platform_dataset), large_image_item(embedded, embedded_dataset)
        for query in random_requests(rng, width, height, count, per_dataset):
            answers = [pickle.loads(side.call("GET", f"item/{item}/tiles/region", query).content)
                       for side, item in zip((platform, embedded), items)]
            tally.add(f"region of {width}x{height} {frames.dtype} {query}", same_pixels(*answers))
        for query in ({"bins": 4096, "width": 2048, "height": 2048, "resample": "false", "cache": "none", "frame": 0},
                      {"frame": count - 1, "resample": "false"},
                      {"frame": 0, "bins": 16, "width": 300, "height": 300, "resample": "false"}):
            answers = [side.call("GET", f"item/{item}/tiles/histogram", query).json()
                       for side, item in zip((platform, embedded), items)]
            tally.add(f"histogram of {width}x{height} {frames.dtype} {query}", [
                f"{key}: {str(answers[0][0].get(key))[:80]} against {str(answers[1][0].get(key))[:80]}"
                for key in sorted(set(answers[0][0]) | set(answers[1][0]))
                if not close(answers[0][0].get(key), answers[1][0].get(key))])


def compare_worker_reads(platform_client, embedded_client, width: int, height: int, rng: np.random.Generator,
                         count: int, tally: Tally) -> None:
    """Windows and whole frames through the worker's own platform adapter (the SDK's
    composite of the visible layers), at full resolution and capped."""
    from sam2_refine.parameters import Location
    from sam2_refine.seam import Window

    for index in range(count):
        left, top = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        window = Window(left=left, top=top, width=int(rng.integers(8, width - left + 1)),
                        height=int(rng.integers(8, height - top + 1)))
        cap = None if index % 2 else int(rng.integers(16, 1100))
        location = Location(0, 0, index % 2)
        answers = [client.window_image(location, window, cap) for client in (platform_client, embedded_client)]
        tally.add(f"the worker's window {window} at {cap}", same_pixels(*answers))
    for cap in (None, 300, 1024):
        answers = [client.frame_image(Location(0, 0, 1), cap) for client in (platform_client, embedded_client)]
        tally.add(f"the worker's frame at {cap}", same_pixels(*answers))


def close(platform, embedded) -> bool:
    """Equal JSON, floats to 1e-6 of each other (float32 data summed in another order)."""
    if isinstance(platform, dict) and isinstance(embedded, dict):
        return platform.keys() == embedded.keys() and all(close(platform[k], embedded[k]) for k in platform)
    if isinstance(platform, list) and isinstance(embedded, list):
        return len(platform) == len(embedded) and all(close(a, b) for a, b in zip(platform, embedded))
    if isinstance(platform, float) and isinstance(embedded, float):
        return abs(platform - embedded) <= 1e-6 * max(1.0, abs(platform))
    return type(platform) is type(embedded) and platform == embedded


_ID = re.compile(r"^[0-9a-f]{24}$")


def skeleton(value):
    """The keys and value types of a JSON answer (a list by its first element and its
    length; an access level by its value)."""
    if isinstance(value, dict):
        return {key: item if key == "_accessLevel" else skeleton(item) for key, item in value.items()
                if key not in ("created", "updated", "size")}
    if isinstance(value, list):
        return [skeleton(value[0]), f"{len(value)} long"] if value else []
    if isinstance(value, str) and _ID.match(value):
        return "id"
    return type(value).__name__


def requests_of_a_job(side: Side, dataset_id: str) -> list[tuple[str, requests.Response]]:
    """The requests a job makes (and the app's history, undo and edit), in a job's order,
    on one server: [(label, answer)]."""
    answers: list[tuple[str, requests.Response]] = []

    def ask(label: str, method: str, path: str, params=None, body=None, token=None) -> requests.Response:
        answer = side.call(method, path, params, body, token)
        answers.append((label, answer))
        return answer

    def polygon(x: float, tags: list[str], time_index: int = 0) -> dict:
        return {"tags": tags, "shape": "polygon", "channel": 0, "location": {"XY": 0, "Z": 0, "Time": time_index},
                "coordinates": [{"x": x, "y": 5.0, "z": 0}, {"x": x + 4, "y": 5.0, "z": 0}, {"x": x, "y": 9.0, "z": 0}],
                "datasetId": dataset_id}

    ask("GET user/me", "GET", "user/me")
    ask("GET folder/{id}", "GET", f"folder/{dataset_id}")
    views = ask("GET dataset_view (current user)", "GET", "dataset_view",
                {"datasetId": dataset_id, "currentUserOnly": "true"}).json()
    ask("GET dataset_view", "GET", "dataset_view", {"datasetId": dataset_id})
    ask("GET upenn_collection/{id}", "GET", f"upenn_collection/{views[0]['configurationId']}")
    ask("GET item?folderId", "GET", "item", {"folderId": dataset_id, "limit": 0})
    ask("GET item/{id}/tiles", "GET", f"item/{large_image_item(side, dataset_id)}/tiles")
    created = ask("POST upenn_annotation/multiple", "POST", "upenn_annotation/multiple",
                  body=[polygon(10.0 * i, ["rough"], i % 2) for i in range(6)]).json()
    ids = [annotation["_id"] for annotation in created]
    listing = {"datasetId": dataset_id, "shape": "polygon", "tags": json.dumps(["rough"]), "limit": 4, "sort": "_id",
               "sortdir": 1}
    ask("GET upenn_annotation (page)", "GET", "upenn_annotation", listing)
    ask("GET upenn_annotation (afterId)", "GET", "upenn_annotation", {**listing, "afterId": ids[1]})
    ask("POST upenn_annotation/list/ids", "POST", "upenn_annotation/list/ids", body={
        "datasetId": dataset_id, "filters": {"location": {"Time": 1}, "shape": "polygon",
                                             "tags": {"values": ["rough"], "exclusive": False}}})
    ask("POST upenn_annotation/hydrate", "POST", "upenn_annotation/hydrate", body=ids[:3])
    ask("POST upenn_annotation/hydrate (one gone)", "POST", "upenn_annotation/hydrate",
        body=ids[:1] + ["0123456789abcdef01234567"])
    ask("GET upenn_annotation/{unknown id}", "GET", "upenn_annotation/0123456789abcdef01234567")
    ask("POST upenn_annotation/hydrate (a malformed id)", "POST", "upenn_annotation/hydrate", body=["nothex"])
    ask("GET upenn_annotation (a malformed afterId)", "GET", "upenn_annotation", {**listing, "afterId": "nothex"})
    ask("DELETE upenn_annotation/multiple (a malformed id)", "DELETE", "upenn_annotation/multiple", body=["nothex"])
    ask("POST upenn_annotation/list/ids (a malformed datasetId)", "POST", "upenn_annotation/list/ids",
        body={"datasetId": "nothex"})
    links = ask("POST annotation_connection/multiple", "POST", "annotation_connection/multiple", body=[
        {"parentId": ids[0], "childId": child, "datasetId": dataset_id, "tags": ["lineage"]} for child in ids[1:4]]).json()
    connections = {"datasetId": dataset_id, "limit": 1000, "sort": "_id", "sortdir": 1}
    ask("GET annotation_connection", "GET", "annotation_connection", connections)
    ask("GET annotation_connection (afterId)", "GET", "annotation_connection", {**connections, "afterId": links[0]["_id"]})
    ask("GET annotation_connection (childId)", "GET", "annotation_connection", {**connections, "childId": ids[1]})
    ask("GET annotation_connection/{unknown id}", "GET", "annotation_connection/0123456789abcdef01234567")
    ask("GET annotation_connection (a malformed afterId)", "GET", "annotation_connection",
        {**connections, "afterId": "nothex"})
    ask("DELETE annotation_connection/multiple", "DELETE", "annotation_connection/multiple", body=[links[0]["_id"]])
    ask("PUT upenn_annotation/multiple (the app's edit)", "PUT", "upenn_annotation/multiple",
        body=[{"id": ids[2], "tags": ["rough", "edited"]}])
    ask("DELETE upenn_annotation/multiple", "DELETE", "upenn_annotation/multiple", body=ids[4:])
    ask("GET history", "GET", "history", {"datasetId": dataset_id})
    ask("PUT history/undo", "PUT", "history/undo", {"datasetId": dataset_id})
    ask("POST worker_interface", "POST", "worker_interface", {"image": "compare/worker:latest"},
        body={"Field": {"type": "text"}})
    ask("GET worker_interface", "GET", "worker_interface", {"image": "compare/worker:latest"})
    ask("GET worker_interface (none)", "GET", "worker_interface", {"image": "compare/none:latest"})
    expired = "0" * 64
    ask("GET user/me (expired token)", "GET", "user/me", token=expired)
    ask("GET folder/{id} (expired token)", "GET", f"folder/{dataset_id}", token=expired)
    ask("GET upenn_annotation (expired token)", "GET", "upenn_annotation", {"datasetId": dataset_id}, token=expired)
    ask("GET no/such/route (expired token)", "GET", "no/such/route", token=expired)
    ask("GET dataset_view (expired token)", "GET", "dataset_view", {"datasetId": dataset_id, "currentUserOnly": "true"},
        token=expired)
    ask("POST upenn_annotation/multiple (expired token)", "POST", "upenn_annotation/multiple",
        body=[polygon(1.0, ["x"])], token=expired)
    return answers


def skeleton_differences(platform, embedded, path: str = "") -> list[str]:
    """Where two skeletons differ: keys only one has, values of other types."""
    if isinstance(platform, dict) and isinstance(embedded, dict):
        found = [f"{path}.{key} only on the platform" for key in platform if key not in embedded]
        found += [f"{path}.{key} only embedded" for key in embedded if key not in platform]
        for key in platform.keys() & embedded.keys():
            found += skeleton_differences(platform[key], embedded[key], f"{path}.{key}")
        return found
    if isinstance(platform, list) and isinstance(embedded, list) and platform and embedded:
        return skeleton_differences(platform[0], embedded[0], f"{path}[]") + (
            [] if platform[1:] == embedded[1:] else [f"{path}: {platform[1]} against {embedded[1]}"])
    return [] if platform == embedded else [f"{path or 'the answer'}: {json.dumps(platform)[:80]} against "
                                            f"{json.dumps(embedded)[:80]}"]


def body(answer: requests.Response):
    """The JSON of an answer; a text that is not JSON as {"text": its start}."""
    if not answer.content:
        return None
    try:
        return answer.json()
    except ValueError:
        return {"text": answer.text[:60]}


def message(answer: requests.Response) -> str | None:
    """An error answer's message, ids taken out."""
    found = body(answer)
    if not isinstance(found, dict) or "message" not in found:
        return None
    return re.sub(r"[0-9a-f]{24}", "<id>", str(found["message"]))


def compare_answers(platform: Side, embedded: Side, platform_dataset: str, embedded_dataset: str,
                    tally: Tally) -> None:
    """The same requests on both: the same status and the same keys and value types."""
    compare_pairs(requests_of_a_job(platform, platform_dataset), requests_of_a_job(embedded, embedded_dataset), tally)


def requests_of_other_users(side: Side, dataset_id: str, reader: str, writer: str) -> list[tuple[str, requests.Response]]:
    """What a user the dataset is shared with for reading (the app's Share, view included)
    and one who may write its folder but not read its view (Girder's own folder sharing) get."""
    configuration = side.call("GET", "dataset_view", {"datasetId": dataset_id}).json()[0]["configurationId"]
    answers = []
    for who, token in (("reader", reader), ("folder writer", writer)):
        for label, method, path, params, body in (
                ("GET folder/{id}", "GET", f"folder/{dataset_id}", None, None),
                ("GET dataset_view (current user)", "GET", "dataset_view",
                 {"datasetId": dataset_id, "currentUserOnly": "true"}, None),
                ("GET dataset_view", "GET", "dataset_view", {"datasetId": dataset_id}, None),
                ("GET upenn_collection/{id}", "GET", f"upenn_collection/{configuration}", None, None),
                ("GET upenn_annotation", "GET", "upenn_annotation", {"datasetId": dataset_id, "limit": 3}, None),
                ("POST upenn_annotation/multiple", "POST", "upenn_annotation/multiple", None, [{
                    "tags": ["x"], "shape": "point", "channel": 0, "location": {"XY": 0, "Z": 0, "Time": 0},
                    "coordinates": [{"x": 1.0, "y": 1.0, "z": 0}], "datasetId": dataset_id}]),
                ("GET history", "GET", "history", {"datasetId": dataset_id}, None)):
            answers.append((f"{label} ({who})", side.call(method, path, params, body, token)))
    return answers


def compare_pairs(ours: list[tuple[str, requests.Response]], theirs: list[tuple[str, requests.Response]],
                  tally: Tally) -> None:
    """Answers to the same requests: the same status, skeleton and error message."""
    for (label, mine), (_, other) in zip(ours, theirs):
        problems = []
        if mine.status_code != other.status_code:
            problems.append(f"status {mine.status_code} against {other.status_code}: "
                            f"{mine.text[:120]} / {other.text[:120]}")
        else:
            if mine.status_code != 500:
                problems += skeleton_differences(skeleton(body(mine)), skeleton(body(other)))
            if not problems and mine.status_code != 500 and message(mine) != message(other):
                problems.append(f"message {message(mine)!r} against {message(other)!r}")
        tally.add(label, problems)
