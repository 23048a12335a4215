"""Window images drawn in processes of their own (nimbus_fetchers.py): the same images as the
worker's own connection draws, a failed read that fails the job as before, and helper
processes that end with the worker, however it ends."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sam2_refine import nimbus_fetchers
from sam2_refine.nimbus import Platform
from sam2_refine.parameters import Location
from sam2_refine.processes import _gone
from sam2_refine.seam import Window
from tests.conftest import REPO, compute_parameters, frames, oracle_env, run_worker
from tests.oracle import Disk

WIDTH, HEIGHT, TIMES = 640, 480, 4
# 60 cells a frame, 240 in all: enough for the job to use helper processes (worker.PROCESS_POOL_MIN_OBJECTS).
CELLS = [Disk(40 + 62 * (i % 10), 45 + 75 * (i // 10), 9 + i % 4) for i in range(60)]


def seed_cells(server) -> str:
    images = np.full((1, 1, TIMES, 1, HEIGHT, WIDTH), 300, dtype=np.uint16)
    for cell in CELLS:
        images[..., cell.mask(HEIGHT, WIDTH)] = 3000
    dataset_id = server.add_dataset(images)
    for time_point in range(TIMES):
        for cell in CELLS:
            server.add_annotation(dataset_id, [(p["x"], p["y"]) for p in cell.rough_outline(4.0)], tags=["rough"],
                                  location={"XY": 0, "Z": 0, "Time": time_point})
    return dataset_id


def parameters_of(dataset_id: str) -> dict:
    parameters = compute_parameters(dataset_id, **{"Batch Time": "all", "Resolution": "Auto"})
    parameters["channel"] = 0
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
    return parameters


def test_fetch_processes_draw_the_images_the_worker_draws_asking_only_for_images(server):
    dataset_id = server.add_dataset(frames(xy=1, z=1, time=2))
    platform = Platform(server.url, server.token, dataset_id, compute_parameters(dataset_id))
    platform.require_visible_layer()
    platform.frame_geometry()
    windows = [Window(0, 0, 320, 240), Window(37, 11, 101, 67), Window(250, 200, 70, 40)]
    location = Location(0, 0, 1)
    fetchers = platform.fetchers(2)
    try:
        asked_before = len(server.request_log)
        drawn = [fetchers.window(location, window) for window in windows] + [fetchers.frame(location, 100)]
        asked = [path for _, path, *_ in server.request_log[asked_before:]]
    finally:
        fetchers.close()
    expected = [platform.window_image(location, window) for window in windows] + [platform.frame_image(location, 100)]
    for (image, black), own in zip(drawn, expected):
        assert image.dtype == own.dtype and image.shape == own.shape and np.array_equal(image, own)
        assert black == (not own.any())
    # The dataset and the view come with the processes: they ask only for regions and contrast histograms.
    assert asked and all(path.endswith(("tiles/region", "tiles/histogram")) for path in asked), asked
    assert not glob.glob(f"{nimbus_fetchers.SHARED_MEMORY}/sam2-refine-{os.getpid()}-*")  # nothing left behind


def test_the_fetch_processes_ask_for_each_frames_histogram_once_between_them(server, tmp_path):
    dataset_id = server.add_dataset(frames(xy=1, z=1, time=3))
    platform = Platform(server.url, server.token, dataset_id, compute_parameters(dataset_id))
    platform.require_visible_layer()
    platform.frame_geometry()
    fetchers = platform.fetchers(3)
    try:
        for time_point in range(3):
            for k in range(6):  # one after another: whichever process is free draws it
                fetchers.window(Location(0, 0, time_point), Window(10 * k, 5 * k, 120, 90))
    finally:
        fetchers.close()
    histograms = [query for _, path, query, _ in server.request_log if path.endswith("tiles/histogram")]
    assert len(histograms) == len({query["frame"] for query in histograms})  # once per frame asked about
    # Shared by any two processes: kept whole, read back as it was; what is not kept is missing.
    answers, other = nimbus_fetchers.SharedAnswers(str(tmp_path)), nimbus_fetchers.SharedAnswers(str(tmp_path))
    answers[("contrast", (1, 2))], answers[("none", (3,))] = (12, 3400.5), None
    assert other[("contrast", (1, 2))] == (12, 3400.5) and other[("none", (3,))] is None
    with pytest.raises(KeyError):
        other[("contrast", (2,))]


def test_an_image_crosses_through_shared_memory_or_else_whole(tmp_path, monkeypatch):
    image = np.random.default_rng(3).random((37, 51, 3), dtype=np.float32)
    monkeypatch.setattr(nimbus_fetchers, "_image_dir", str(tmp_path))
    shared = nimbus_fetchers._shared(image)
    assert shared[0] == "file" and len(list(tmp_path.iterdir())) == 1
    received = nimbus_fetchers._received(shared)
    assert np.array_equal(received, image) and received.dtype == image.dtype and received.flags.writeable
    assert not list(tmp_path.iterdir())  # taken: removed at once
    received[0, 0, 0] = 2.0  # the receiver's own copy
    monkeypatch.setattr(nimbus_fetchers, "_image_dir", str(tmp_path / "gone"))  # no room (or gone): whole
    shared = nimbus_fetchers._shared(image)
    assert shared[0] == "array" and np.array_equal(nimbus_fetchers._received(shared), image)


def test_a_region_read_refused_in_a_fetch_process_fails_the_job_as_the_worker_would(server, oracle_checkpoint_dir,
                                                                                    tmp_path):
    dataset_id = seed_cells(server)
    server.inject_fault("GET", r"tiles/region$", status=400, body="region refused")
    run = run_worker(server, "compute", parameters_of(dataset_id), oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, CELLS))
    assert run.returncode == 1, run.stdout + run.stderr
    error = run.errors[-1]
    assert error["error"].startswith("Could not read the image at XY 1, Z 1, Time 1: HTTP 400"), error
    assert "Check that the dataset still exists" in error["info"]
    assert server.token not in run.stdout + run.stderr
    assert not [a for a in server.annotations(dataset_id) if "refined" in a.get("tags", [])]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    parents[int(name)] = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, of in parents.items() if of == parent and child not in found]
        found.update(children)
        todo += children
    return found


@pytest.mark.skipif(not os.path.isdir("/proc") or (os.cpu_count() or 1) < 2, reason="needs /proc and 2 CPUs")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_helper_processes_end_when_the_worker_is_killed_or_cancelled(server, oracle_checkpoint_dir, tmp_path,
                                                                         how):
    dataset_id = seed_cells(server)
    server.inject_fault("GET", r"tiles/region$", delay=1.0)  # a slow server: the job is still running when stopped
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(oracle_checkpoint_dir), "PYTHONUNBUFFERED": "1",
           **oracle_env(tmp_path, CELLS)}
    command = [sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--token", server.token,
               "--request", "compute", "--parameters", json.dumps(parameters_of(dataset_id)), "--datasetId", dataset_id]
    worker = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in worker.stdout:  # the pipeline starts once the model is loading
            if line.startswith("{") and "Loading" in (json.loads(line).get("info") or ""):
                break
        # The fork server, 2 outline and 3 fetch processes; wait until they have all started.
        deadline = time.monotonic() + 60
        while len(helpers := descendants(worker.pid)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(helpers) >= 6, helpers
        worker.send_signal(how)
        worker.communicate(timeout=60)
        assert worker.returncode == (-signal.SIGKILL if how == signal.SIGKILL else 143)
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in helpers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in helpers), [pid for pid in helpers if not _gone(pid)]
        assert not glob.glob(f"{nimbus_fetchers.SHARED_MEMORY}/sam2-refine-{worker.pid}-*")  # its images removed
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
