"""The replace job under random platform faults (issue 19), shared by tests/test_faults.py
(a few seeds) and its measurement (`python -m tests.measure_faults`, 20 seeds).

A time-lapse of `frames` frames with `cells` cells each; every rough original has a
parent (a "nucleus" point beside it) connected to it. The worker runs as the platform
runs it (a subprocess, HTTP, JSON lines) with "Delete original annotations" on, a 1 s
client timeout and a 6 s retry budget, against the embedded server failing a share of
all requests in the ways a platform fails: an error before doing anything, a hang past
the timeout, the request done and then a 502, a late answer, a dropped connection (before
or after applying) and a write applied only after the client gave up.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from sam2_refine.nimbus import MARKER_KEY
from tests.conftest import compute_parameters, oracle_env, run_worker
from tests.oracle import Disk

WIDTH, HEIGHT = 240, 200
TAG, PARENT_TAG, LINK_TAG = "rough", "nucleus", "lineage"
FAULTY_ENV = {"SAM2_REFINE_HTTP_TIMEOUT": "1", "SAM2_REFINE_RETRY_SECONDS": "6"}
FAULT_RATE = 0.10


def grid_cells(count: int) -> list[Disk]:
    """`count` disks on a grid over the frame, radius 9-13 pixels."""
    rng = np.random.default_rng(5)
    columns = 5
    rows = -(-count // columns)
    cells = []
    for index in range(count):
        row, column = divmod(index, columns)
        cells.append(Disk(float(24 + column * 46 + rng.uniform(-3, 3)), float(24 + row * (HEIGHT - 48) / max(rows - 1, 1)
                                                                               + rng.uniform(-3, 3)),
                          float(rng.uniform(9, 13))))
    return cells


@dataclass
class Scenario:
    dataset_id: str
    originals: list[str]
    parent_of: dict[str, str]  # original id -> its parent's id
    cells: list[Disk]
    frames: int


def seed(server, frames: int, cells: int) -> Scenario:
    shapes = grid_cells(cells)
    images = np.full((1, 1, frames, 1, HEIGHT, WIDTH), 300, dtype=np.uint16)
    for shape in shapes:
        images[..., shape.mask(HEIGHT, WIDTH)] = 3000
    dataset_id = server.add_dataset(images)
    originals, parent_of = [], {}
    for time_point in range(frames):
        location = {"XY": 0, "Z": 0, "Time": time_point}
        for shape in shapes:
            original = server.add_annotation(dataset_id, shape.rough_outline(), tags=[TAG], location=location)
            parent = server.add_annotation(dataset_id, [(shape.cx + 1, shape.cy)], tags=[PARENT_TAG], shape="point",
                                           location=location)
            server.add_connection(dataset_id, parent, original, tags=[LINK_TAG])
            originals.append(original)
            parent_of[original] = parent
    return Scenario(dataset_id, originals, parent_of, shapes, frames)


def parameters(scenario: Scenario) -> dict:
    body = compute_parameters(scenario.dataset_id, **{"Delete original annotations": True, "Batch Time": "all",
                                                      "Smoothing": 0.7})
    body["tile"] = {"XY": 0, "Z": 0, "Time": 0}
    return body


def run(server, scenario: Scenario, checkpoint_dir, tmp_path, fault_seed: int | None, rate: float = FAULT_RATE):
    """One job; faults from `fault_seed` (none if None). Returns (run, fault counts, seconds);
    the counts name each kind, and "... on writes" how many of them met a write."""
    faults = server.inject_random_faults(rate, fault_seed) if fault_seed is not None else None
    started = time.monotonic()
    try:
        result = run_worker(server, "compute", parameters(scenario), checkpoint_dir, scenario.dataset_id,
                            extra_env={**oracle_env(tmp_path, scenario.cells), **FAULTY_ENV})
    finally:
        server.clear_faults()
    counts = {}
    if faults:
        counts = {**faults.counts, **{f"{kind} on writes": n for kind, n in faults.write_counts.items() if n}}
    return result, counts, time.monotonic() - started


def settle(server) -> None:
    """Until the server has finished every request it holds (a write applied late, after
    the worker gave up on it), so the checks see what the platform will hold."""
    assert server.wait_until_idle(60), "the server is still handling requests"


def problems(server, scenario: Scenario) -> list[str]:
    """What is not exactly once: originals left, refined polygons missing or twice, parent
    connections missing, twice or to a deleted annotation."""
    found = []
    annotations = {a["_id"]: a for a in server.annotations(scenario.dataset_id)}
    refined_of: dict[str, list[str]] = {}
    for annotation in annotations.values():
        if MARKER_KEY in annotation:
            refined_of.setdefault(str(annotation[MARKER_KEY]).split("/", 1)[1], []).append(annotation["_id"])
    left = [o for o in scenario.originals if o in annotations]
    if left:
        found.append(f"{len(left)} originals still there")
    missing = [o for o in scenario.originals if o not in refined_of]
    twice = {o: ids for o, ids in refined_of.items() if len(ids) > 1}
    if missing:
        found.append(f"{len(missing)} originals without a refined polygon")
    if twice:
        found.append(f"{len(twice)} originals with {sum(len(ids) for ids in twice.values())} refined polygons")
    connections = server.connections(scenario.dataset_id)
    dangling = [c for c in connections if c["parentId"] not in annotations or c["childId"] not in annotations]
    if dangling:
        found.append(f"{len(dangling)} connections to a deleted annotation")
    links = Counter((c["parentId"], c["childId"]) for c in connections)
    doubled = sum(1 for count in links.values() if count > 1)
    if doubled:
        found.append(f"{doubled} connections made twice")
    unmoved = [o for o in scenario.originals
               if not any(links.get((scenario.parent_of[o], refined), 0) for refined in refined_of.get(o, []))]
    if unmoved:
        found.append(f"{len(unmoved)} parents not connected to their refined child")
    per_parent = Counter(c["parentId"] for c in connections if c["parentId"] in set(scenario.parent_of.values()))
    if any(count != 1 for count in per_parent.values()):
        found.append(f"{sum(1 for count in per_parent.values() if count != 1)} parents with other than one child")
    return found
