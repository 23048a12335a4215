#!/usr/bin/env python3
"""The worker end to end against the platform's own server: issue 23's reference check.

    python3 ../shared/platform-server/install.py      # once: the server's venv
    .venv/bin/python scripts/platform_check.py [--keep] [--only 2,3]

A development check, not part of `make test`: it needs `../shared/platform-server` (Girder
5 + NimbusImage's annotation plugin at 818835a + girder_large_image, mongomock as the
database; its README) beside this checkout, and the server's venv that `install.py` makes
(`PLATFORM_SERVER_HOME`, default /tmp/nimbus-platform-server). It starts that server on a
free port with this checkout's worker as the platform's container (`LOCAL_WORKER`; the
oracle predictor `tests.oracle:from_environment` answers each box with the true cell, and
`SAM2_CHECKPOINT_DIR` holds a placeholder `sam2.1_hiera_tiny.pt`), makes users and datasets
as the web app does (`nimbus_app.py`), runs jobs through the platform's own job path
(`POST worker_interface/request`, `POST upenn_annotation/compute`) and reads back what
the server holds. Named checks, each PASS or FAIL with its figures:

1. interface: the interface job's interface is stored and read back as the app reads it;
2. replace: Delete on, Connect to nearest, two locations, each original connected to a
   parent: every original replaced by exactly one refined polygon, each connection moved
   once, none to a deleted annotation, the summary's counts are what the server holds;
3. rerun: the same job again says an earlier run did the work and writes nothing;
4. undo: the app's undo of the job's last write (`PUT history/undo`), then the job again:
   each original replaced once, nothing twice;
5. read-only: a user whose access drops to READ while the job waits: exit 1, "No write
   access", nothing written, no model loaded;
6. no view: a user who may write the folder but not read its view: exit 1, the error
   says why, nothing written;
7. single frame: a single-frame image is refined;
8. location filter: a job on 2 of 8 frames reads by location (`POST
   upenn_annotation/list/ids`) and reads what the listing reads;
9. app edit: `PUT upenn_annotation/multiple` of a refined polygon keeps its marker, and a
   rerun takes it as done;
10. embedded server: the embedded server (`nimbus_server/`) answers as this one, pixel for
   pixel (random regions, sizes and styles, histograms, the worker's own window and frame
   reads) and request by request (status, keys and value types of each answer a job gets;
   `scripts/platform_compare.py`).

Exit status 0 when every check passes, 1 otherwise. `--keep` leaves the scratch
directory (server log, events log, each job's output) and prints where it is.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import platform_compare as compare  # noqa: E402
from platform_harness import IMAGE, PLATFORM_SERVER, SERVER_HOME, TINY, PlatformServer, app, compute_body  # noqa: E402

from sam2_refine.interface import build_interface  # noqa: E402
from sam2_refine.nimbus_records import MARKER_KEY  # noqa: E402
from tests.oracle import Disk  # noqa: E402

SIDE = 512  # frame width and height
GRID = 12   # cells per row and column: 144 a frame
ROUGH, NUCLEUS, FIELD, LINEAGE = "rough", "nucleus", "field", "lineage"


def grid_cells(count: int = GRID) -> list[Disk]:
    rng = np.random.default_rng(23)
    pitch = (SIDE - 72) / (count - 1)
    return [Disk(float(36 + column * pitch + rng.uniform(-2, 2)), float(36 + row * pitch + rng.uniform(-2, 2)),
                 float(rng.uniform(10, 14))) for row in range(count) for column in range(count)]


CELLS = grid_cells()
FIELDS = [(SIDE / 4, SIDE / 4), (3 * SIDE / 4, SIDE / 4), (SIDE / 4, 3 * SIDE / 4), (3 * SIDE / 4, 3 * SIDE / 4)]


def frames(times: int, channels: int) -> np.ndarray:
    """(T, C, H, W): the cells bright on a dim background."""
    images = np.full((times, channels, SIDE, SIDE), 300, np.uint16)
    rows, columns = np.mgrid[:SIDE, :SIDE]
    for cell in CELLS:
        images[:, :, (columns + 0.5 - cell.cx) ** 2 + (rows + 0.5 - cell.cy) ** 2 < cell.radius ** 2] = 3000
    return images


def polygon(dataset_id: str, points: list[dict], time_index: int, tags: list[str], shape: str = "polygon") -> dict:
    return {"tags": tags, "shape": shape, "channel": 0, "location": {"XY": 0, "Z": 0, "Time": time_index},
            "coordinates": [{"x": float(p["x"]), "y": float(p["y"]), "z": 0} for p in points], "datasetId": dataset_id}


def seed_cells(user, dataset_id: str, times: list[int], parents: bool = False) -> dict:
    """The cells outlined roughly (tag ROUGH) at `times`; with `parents`, each connected
    to a NUCLEUS point beside it (tag LINEAGE) and four FIELD points a frame, the parents
    Connect to nearest chooses among. Returns {original id: parent id or None}."""
    documents = [polygon(dataset_id, cell.rough_outline(), t, [ROUGH]) for t in times for cell in CELLS]
    originals = [a["_id"] for a in app.post_annotations(user, documents)]
    if not parents:
        return dict.fromkeys(originals)
    nuclei = app.post_annotations(user, [polygon(dataset_id, [{"x": c.cx + 1, "y": c.cy}], t, [NUCLEUS], "point")
                                         for t in times for c in CELLS])
    app.post_annotations(user, [polygon(dataset_id, [{"x": x, "y": y}], t, [FIELD], "point")
                                for t in times for x, y in FIELDS])
    app.post_connections(user, [{"parentId": n["_id"], "childId": o, "datasetId": dataset_id, "tags": [LINEAGE]}
                                for n, o in zip(nuclei, originals)])
    return {o: n["_id"] for o, n in zip(originals, nuclei)}


def held(user, dataset_id: str) -> tuple[dict, list[dict]]:
    return {a["_id"]: a for a in app.annotations(user, dataset_id)}, app.connections(user, dataset_id)


def refined_by_original(annotations: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for annotation in annotations.values():
        if MARKER_KEY in annotation:
            found.setdefault(str(annotation[MARKER_KEY]).split("/", 1)[1], []).append(annotation["_id"])
    return found


def summary_counts(text: str) -> dict[str, int]:
    counts = {}
    for name, pattern in (("refined", r"Refined (\d+) of"), ("to refine", r"Refined \d+ of (\d+)"),
                          ("replaced", r"replaced (\d+) originals"), ("earlier", r"(\d+) already refined"),
                          ("outlines of earlier run", r"did this work \((\d+) refined outline")):
        match = re.search(pattern, text)
        if match:
            counts[name] = int(match.group(1))
    return counts


@dataclass
class Check:
    number: int
    name: str
    problems: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0

    def expect(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    @property
    def passed(self) -> bool:
        return not self.problems


class Run:
    """The nine checks against one server; later checks reuse earlier datasets."""

    def __init__(self, server: PlatformServer):
        self.server = server
        self.alice = server.user("alice")
        self.replace_set: dict | None = None  # check 2's dataset: id and {original: parent}
        self.single: dict | None = None       # check 7's dataset
        self.views: dict[str, str] = {}       # dataset id -> its view's id

    # --- the job of checks 2-4 -----------------------------------------------------------

    def _replace_body(self) -> dict:
        return compute_body(self.replace_set["id"], delete=True, batch_time="1-2", connect_to=[FIELD])

    def _check_replaced(self, check: Check, annotations: dict, connections: list[dict]) -> None:
        """Every original replaced by exactly one refined polygon, its lineage connection
        moved once, each refined polygon connected once to its nearest field point."""
        parent_of = self.replace_set["parents"]
        refined = refined_by_original(annotations)
        left = [o for o in parent_of if o in annotations]
        missing = [o for o in parent_of if o not in refined]
        twice = [o for o, ids in refined.items() if len(ids) > 1]
        check.expect(not left, f"{len(left)} originals still there")
        check.expect(not missing, f"{len(missing)} originals without a refined polygon")
        check.expect(not twice, f"{len(twice)} originals with more than one refined polygon")
        dangling = [c for c in connections if c["parentId"] not in annotations or c["childId"] not in annotations]
        check.expect(not dangling, f"{len(dangling)} connections to a deleted annotation")
        links = Counter((c["parentId"], c["childId"]) for c in connections)
        check.expect(all(n == 1 for n in links.values()), f"{sum(n > 1 for n in links.values())} connections twice")
        unmoved = [o for o, parent in parent_of.items() if not any(
            LINEAGE in c.get("tags", []) and c["parentId"] == parent and c["childId"] in refined.get(o, ())
            for c in connections)]
        check.expect(not unmoved, f"{len(unmoved)} lineage connections not moved to the refined polygon")
        fields = {a["_id"]: a for a in annotations.values() if FIELD in a.get("tags", [])}
        wrong_field = 0
        for ids in refined.values():
            for refined_id in ids:
                parents = [c["parentId"] for c in connections if c["childId"] == refined_id and c["parentId"] in fields]
                points = np.array([[p["x"], p["y"]] for p in annotations[refined_id]["coordinates"]]).mean(axis=0)
                nearest = min(fields, key=lambda f: np.hypot(*(np.array(
                    [fields[f]["coordinates"][0]["x"], fields[f]["coordinates"][0]["y"]]) - points))
                    if fields[f]["location"] == annotations[refined_id]["location"] else np.inf)
                wrong_field += parents != [nearest]
        check.expect(not wrong_field, f"{wrong_field} refined polygons not connected once to their nearest field")
        check.figures.update(originals=len(parent_of), refined=sum(len(ids) for ids in refined.values()),
                             originals_left=len(left), connections=len(connections), dangling=len(dangling))

    def check_1_interface(self, check: Check) -> None:
        job = self.server.request_interface(self.alice)
        check.expect(job.exit_code == 0 and job.status == "SUCCESS", f"job {job.status}, exit {job.exit_code}")
        stored = self.alice.get("worker_interface", params={"image": IMAGE})
        check.expect(stored == build_interface([TINY]), f"stored interface differs: {str(stored)[:200]}")
        check.figures.update(fields=len(stored or {}), exit=job.exit_code)

    def check_2_replace(self, check: Check) -> None:
        dataset = self.server.dataset(self.alice, "replace", frames(2, 2), ["DAPI", "GFP"])
        parents = seed_cells(self.alice, dataset["dataset_id"], [0, 1], parents=True)
        self.replace_set = {"id": dataset["dataset_id"], "parents": parents}
        _, before_connections = held(self.alice, dataset["dataset_id"])
        job = self.server.compute(self.alice, dataset["dataset_id"], self._replace_body())
        check.expect(job.exit_code == 0, f"exit {job.exit_code}: {job.errors[-1:]}")
        annotations, connections = held(self.alice, dataset["dataset_id"])
        self._check_replaced(check, annotations, connections)
        counts = summary_counts(job.last_progress)
        refined = sum(len(ids) for ids in refined_by_original(annotations).values())
        check.expect(counts.get("refined") == refined and counts.get("to refine") == len(parents),
                     f"summary {job.last_progress!r}; the server holds {refined} refined")
        deleted = sum(o not in annotations for o in parents)
        check.expect(counts.get("replaced") == deleted, f"summary says replaced {counts.get('replaced')}, "
                                                         f"{deleted} originals are gone")
        check.figures.update(summary=job.last_progress, lineage_connections_before=len(before_connections),
                             requests=len(job.requests), writes=len(job.writes()), warnings=len(job.warnings))

    def check_3_rerun(self, check: Check) -> None:
        before = held(self.alice, self.replace_set["id"])
        job = self.server.compute(self.alice, self.replace_set["id"], self._replace_body())
        after = held(self.alice, self.replace_set["id"])
        check.expect(job.exit_code == 0, f"exit {job.exit_code}: {job.errors[-1:]}")
        check.expect("earlier run" in job.last_progress, f"says {job.last_progress!r}, not that an earlier run did it")
        check.expect(summary_counts(job.last_progress).get("outlines of earlier run") == len(self.replace_set["parents"]),
                     f"counts {job.last_progress!r}")
        check.expect(not job.writes(), f"{len(job.writes())} writes: {job.writes()[:3]}")
        check.expect(before == after, "the server's annotations or connections changed")
        check.figures.update(said=job.last_progress, writes=len(job.writes()))

    def check_4_undo(self, check: Check) -> None:
        dataset_id = self.replace_set["id"]
        entries = self.alice.get("history", params={"datasetId": dataset_id})
        before, _ = held(self.alice, dataset_id)
        self.alice.put("history/undo", params={"datasetId": dataset_id})
        undone, _ = held(self.alice, dataset_id)
        restored = [o for o in self.replace_set["parents"] if o in undone]
        check.expect(bool(restored), "the undo restored no original")
        job = self.server.compute(self.alice, dataset_id, self._replace_body())
        check.expect(job.exit_code == 0, f"exit {job.exit_code}: {job.errors[-1:]}")
        annotations, connections = held(self.alice, dataset_id)
        self._check_replaced(check, annotations, connections)
        check.expect(len(annotations) == len(before), f"{len(annotations)} annotations, {len(before)} before the undo")
        check.figures.update(history_entries=len(entries), last_entry=entries[0]["actionName"] if entries else None,
                             restored_by_undo=len(restored), summary=job.last_progress)

    # --- access ----------------------------------------------------------------------------

    def _small_dataset(self, name: str) -> str:
        dataset = self.server.dataset(self.alice, name, frames(1, 2), ["DAPI", "GFP"])
        seed_cells(self.alice, dataset["dataset_id"], [0], parents=True)
        self.views[dataset["dataset_id"]] = dataset["view_id"]
        return dataset["dataset_id"]

    def _nothing_written(self, check: Check, job, dataset_id: str, before, user_id: str) -> None:
        check.expect(held(self.alice, dataset_id) == before, "the dataset changed")
        check.expect(not job.writes(), f"{len(job.writes())} writes: {job.writes()[:3]}")
        history = [e for e in self.server.history() if e["user"] == user_id and e["dataset"] == dataset_id]
        check.expect(not history, f"{len(history)} undo entries")

    def check_5_read_only(self, check: Check) -> None:
        dataset_id = self._small_dataset("read-only")
        bob = self.server.user("bobby")
        app.share(self.alice, self.views[dataset_id], "bobby", 1)  # WRITE: the platform starts the job
        before = held(self.alice, dataset_id)
        job = self.server.compute(bob, dataset_id, compute_body(dataset_id, delete=True),
                                  hold=True, while_held=lambda: app.share(self.alice, self.views[dataset_id], "bobby", 0))
        error = job.errors[-1] if job.errors else {}
        check.expect(job.exit_code == 1, f"exit {job.exit_code}")
        check.expect(error.get("title") == "No write access", f"error {error}")
        self._nothing_written(check, job, dataset_id, before, bob.get("user/me")["_id"])
        loaded = [m for m in job.messages if "progress" in m and str(m.get("info", "")).startswith(("Loading", "Loaded"))]
        check.expect(not loaded, f"the model was loaded: {loaded}")
        check.expect(not job.count("GET", "item/"), f"{job.count('GET', 'item/')} image requests")
        check.figures.update(error=error.get("error"), requests=len(job.requests))

    def check_6_no_view(self, check: Check) -> None:
        dataset_id = self._small_dataset("no-view")
        carol = self.server.user("carol")
        carol_id = carol.get("user/me")["_id"]
        access = self.alice.get(f"folder/{dataset_id}/access")
        access["users"].append({"id": carol_id, "level": 1})  # Girder's own folder sharing: WRITE, no view
        self.alice.put(f"folder/{dataset_id}/access", data={"access": json.dumps(access)})
        before = held(self.alice, dataset_id)
        job = self.server.compute(carol, dataset_id, compute_body(dataset_id, delete=True))
        error = job.errors[-1] if job.errors else {}
        check.expect(job.exit_code == 1, f"exit {job.exit_code}")
        check.expect(error.get("title") == "No visible layer" and "view" in str(error.get("info", "")),
                     f"error {error}")
        self._nothing_written(check, job, dataset_id, before, carol_id)
        check.figures.update(error=error.get("error"), info=error.get("info"))

    # --- images, reading, edits -----------------------------------------------------------

    def check_7_single_frame(self, check: Check) -> None:
        dataset = self.server.dataset(self.alice, "single", frames(1, 1), ["only"])
        tiles = dataset["tiles"]
        check.figures.update(tile_keys=sorted(k for k in ("frames", "channels", "IndexRange") if k in tiles))
        originals = seed_cells(self.alice, dataset["dataset_id"], [0])
        self.single = {"id": dataset["dataset_id"], "originals": originals}
        job = self.server.compute(self.alice, dataset["dataset_id"], compute_body(dataset["dataset_id"], delete=False))
        check.expect(job.exit_code == 0, f"exit {job.exit_code}: {job.errors[-1:]}")
        annotations, _ = held(self.alice, dataset["dataset_id"])
        refined = refined_by_original(annotations)
        check.expect(sorted(refined) == sorted(originals) and all(len(ids) == 1 for ids in refined.values()),
                     f"{len(refined)} originals refined of {len(originals)}")
        check.expect(all(o in annotations for o in originals), "an original was deleted")
        check.figures.update(refined=sum(len(ids) for ids in refined.values()), summary=job.last_progress)

    def check_8_location_filter(self, check: Check) -> None:
        from sam2_refine.nimbus import Platform
        from sam2_refine.parameters import Location

        dataset = self.server.dataset(self.alice, "many", frames(8, 1), ["DAPI"])
        dataset_id = dataset["dataset_id"]
        seed_cells(self.alice, dataset_id, list(range(8)))
        listing = app.annotations(self.alice, dataset_id)
        selected = {a["_id"] for a in listing if a["location"]["Time"] in (2, 3)}
        platform = Platform(self.server.base, self.alice.token, dataset_id, {})
        locations = [Location(0, 0, 2), Location(0, 0, 3)]
        by_filter = platform.polygons((ROUGH,), locations)
        platform._annotations._server_filters = False  # as an older server: the listing
        by_listing = platform.polygons((ROUGH,), locations)
        check.expect(by_filter == by_listing, f"the filter read {len(by_filter)} records, the listing {len(by_listing)}")
        check.expect({r.id for r in by_filter} == selected, "the filter read other annotations than those at Time 3-4")
        job = self.server.compute(self.alice, dataset_id, compute_body(dataset_id, delete=False, batch_time="3-4"))
        check.expect(job.exit_code == 0, f"exit {job.exit_code}: {job.errors[-1:]}")
        check.expect(job.count("POST", "upenn_annotation/list/ids") > 0, "no POST upenn_annotation/list/ids")
        full_listings = [r for r in job.requests if r["method"] == "GET" and r["path"].startswith("upenn_annotation?")
                         and "afterId" not in r["path"]]
        check.expect(not full_listings, f"{len(full_listings)} listings of the dataset: {full_listings[:2]}")
        refined = refined_by_original(held(self.alice, dataset_id)[0])
        check.expect(set(refined) == selected and all(len(ids) == 1 for ids in refined.values()),
                     f"refined {len(refined)} originals, {len(selected)} at Time 3-4")
        check.figures.update(originals=len(listing), at_selected=len(selected), refined=len(refined),
                             list_ids=job.count("POST", "upenn_annotation/list/ids"),
                             hydrate=job.count("POST", "upenn_annotation/hydrate"), requests=len(job.requests))

    def check_9_app_edit(self, check: Check) -> None:
        dataset_id = self.single["id"]
        annotations, _ = held(self.alice, dataset_id)
        refined_id = refined_by_original(annotations)[next(iter(self.single["originals"]))][0]
        moved = [{**p, "x": p["x"] + 1.5} for p in annotations[refined_id]["coordinates"]]
        self.alice.put("upenn_annotation/multiple", body=[{"id": refined_id, "coordinates": moved}])
        edited = self.alice.get(f"upenn_annotation/{refined_id}")
        check.expect(edited.get(MARKER_KEY) == annotations[refined_id][MARKER_KEY], "the edit lost the marker")
        check.expect(edited["coordinates"] == moved, "the edit did not land")
        before = held(self.alice, dataset_id)
        job = self.server.compute(self.alice, dataset_id, compute_body(dataset_id, delete=False))
        check.expect(job.exit_code == 0, f"exit {job.exit_code}: {job.errors[-1:]}")
        check.expect(held(self.alice, dataset_id) == before, "the rerun changed the dataset")
        check.expect(not job.writes(), f"{len(job.writes())} writes")
        check.expect("earlier run" in job.last_progress, f"says {job.last_progress!r}")
        check.figures.update(marker_kept=edited.get(MARKER_KEY) is not None, said=job.last_progress)


    # --- the embedded server against this one -----------------------------------------------

    def check_10_embedded_server(self, check: Check) -> None:
        """The embedded server answers as this one: pixels, histograms and the worker's
        own reads of the same frames, then the JSON of each request the worker makes."""
        from nimbus_server import NimbusServer
        from sam2_refine.nimbus import Platform

        rng = np.random.default_rng(10)
        noise = [rng.integers(0, 60000, (2, 2, 1201, 999), dtype=np.uint16),
                 rng.integers(0, 60000, (1, 1, 2048, 1536), dtype=np.uint16),
                 rng.integers(0, 250, (1, 2, 300, 200), dtype=np.uint8),
                 (rng.random((1, 2, 200, 300)) * 3).astype(np.float32)]
        pixels, reads, answers = compare.Tally(), compare.Tally(), compare.Tally()
        with NimbusServer() as embedded:
            platform_side = compare.Side(self.server.base, self.alice.token)
            embedded_side = compare.Side(embedded.url, embedded.token)
            datasets = []
            for index, frames in enumerate(noise):
                names = ["DAPI", "GFP"][:frames.shape[1]]
                ours = self.server.dataset(self.alice, f"compare-{index}", frames, names)["dataset_id"]
                theirs = embedded.add_dataset(frames[None, None], name=f"compare-{index}", channel_names=names)
                datasets.append((ours, theirs, frames))
            compare.compare_pixels(platform_side, embedded_side, datasets, rng, 30, pixels)
            first = datasets[0]
            compare.compare_worker_reads(Platform(self.server.base, self.alice.token, first[0], {}),
                                         Platform(embedded.url, embedded.token, first[1], {}),
                                         first[2].shape[-1], first[2].shape[-2], rng, 12, reads)
            compare.compare_answers(platform_side, embedded_side, first[0], first[1], answers)
            # Other users: one the dataset is shared with for reading (the app's Share), one who
            # may write its folder but not read its view (Girder's own folder sharing).
            reader, writer = self.server.user("compare-reader"), self.server.user("compare-writer")
            app.share(self.alice, self.alice.get("dataset_view", params={"datasetId": first[0]})[0]["_id"],
                      "compare-reader", 0)
            access = self.alice.get(f"folder/{first[0]}/access")
            access["users"].append({"id": writer.get("user/me")["_id"], "level": 1})
            self.alice.put(f"folder/{first[0]}/access", data={"access": json.dumps(access)})
            tokens = embedded.add_user("compare-reader"), embedded.add_user("compare-writer")
            embedded.share(first[1], "compare-reader", 0)
            embedded.share(first[1], "compare-writer", 1, view=False)
            compare.compare_pairs(compare.requests_of_other_users(platform_side, first[0], reader.token, writer.token),
                                  compare.requests_of_other_users(embedded_side, first[1], *tokens), answers)
        for name, tally in (("pixels", pixels), ("worker_reads", reads), ("answers", answers)):
            check.figures[name] = f"{tally.compared - len(tally.differences)} of {tally.compared} alike"
            for difference in tally.differences[:12]:
                check.problems.append(f"{name}: {difference}")
        check.figures["accepted differences"] = "; ".join(compare.ACCEPTED)


CHECKS = [
    (1, "interface request", "check_1_interface"),
    (2, "Delete on, Connect to nearest, two locations", "check_2_replace"),
    (3, "the same job again", "check_3_rerun"),
    (4, "the app's undo of the job's last write, then the job again", "check_4_undo"),
    (5, "a user whose access drops to READ while the job waits", "check_5_read_only"),
    (6, "a user who may write the folder but not read its view", "check_6_no_view"),
    (7, "a single-frame image", "check_7_single_frame"),
    (8, "the location filter on 2 of 8 frames", "check_8_location_filter"),
    (9, "an app edit of a refined polygon, then a rerun", "check_9_app_edit"),
    (10, "the embedded server answers as the platform's", "check_10_embedded_server"),
]
NEEDS = {3: 2, 4: 2, 9: 7}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated check numbers (with those they build on)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if not (PLATFORM_SERVER / "serve.py").exists() or not (SERVER_HOME / "venv" / "bin" / "python").exists():
        print(f"needs {PLATFORM_SERVER} and its venv in {SERVER_HOME} (python3 {PLATFORM_SERVER}/install.py)")
        return 2
    wanted = {int(n) for n in args.only.split(",") if n.strip()} or {number for number, _, _ in CHECKS}
    wanted |= {NEEDS[n] for n in wanted if n in NEEDS}
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="platform-check-"))
    server = PlatformServer(scratch, CELLS)
    checks: list[Check] = []
    try:
        server.start()
        run = Run(server)
        for number, name, method in CHECKS:
            if number not in wanted:
                continue
            check = Check(number, name)
            began = time.monotonic()
            try:
                getattr(run, method)(check)
            except Exception as error:  # noqa: BLE001 (one check's failure; the others still run)
                check.problems.append(f"{type(error).__name__}: {error}")
                traceback.print_exc()
            check.seconds = time.monotonic() - began
            checks.append(check)
            print(f"{'PASS' if check.passed else 'FAIL'} {number}. {name} ({check.seconds:.1f} s)", flush=True)
            for key, value in check.figures.items():
                print(f"     {key}: {value}")
            for problem in check.problems:
                print(f"     problem: {problem}")
    finally:
        server.stop()
        if args.keep:
            print(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    passed = sum(check.passed for check in checks)
    print(f"{passed} of {len(checks)} checks passed against the platform's own server "
          f"in {time.monotonic() - started:.0f} s")
    return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
