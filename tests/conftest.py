"""Fixtures that run the worker as the platform does: a subprocess, real HTTP, JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nimbus_server import NimbusServer
from sam2_refine.nimbus import MARKER_KEY
from tests.oracle import Disk, Rect, shapes_to_json
from tests.worker_output import WorkerOutput

REPO = Path(__file__).resolve().parents[1]
IMAGE = "annotations/sam2_refine_worker:latest"
TINY = "sam2.1_hiera_tiny.pt"
FRAME_HEIGHT, FRAME_WIDTH = 240, 320


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory) -> Path:
    """A random-init sam2.1 tiny checkpoint in the official format (real code, meaningless masks)."""
    import torch
    from sam2.build_sam import build_sam2

    directory = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    torch.save({"model": model.state_dict()}, directory / TINY)
    return directory


@pytest.fixture
def oracle_checkpoint_dir(tmp_path) -> Path:
    """A checkpoint directory for runs whose predictor is the oracle (the file is never read)."""
    directory = tmp_path / "oracle-models"
    directory.mkdir()
    (directory / TINY).write_bytes(b"oracle")
    return directory


@pytest.fixture
def server():
    with NimbusServer(token="test-token-5f3a9c") as running:
        yield running


def frames(xy=1, z=2, time=2, channels=2) -> np.ndarray:
    """(XY, Z, T, C, H, W) uint16 frames with a little structure."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 4000, size=(xy, z, time, channels, FRAME_HEIGHT, FRAME_WIDTH), dtype=np.uint16)


# Runs the command given after it and reports that child's peak RSS (KiB) as its last stderr line.
PEAK_RSS_LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


@dataclass
class WorkerRun(WorkerOutput):
    returncode: int
    stdout: str
    stderr: str
    peak_rss_kib: int | None = None


def compute_parameters(dataset_id: str, **interface_values) -> dict:
    values = {
        "SAM2 Refiner": "", "Batch XY": "", "Batch Z": "", "Batch Time": "",
        "Tag of objects to refine": ["rough"], "Model": TINY, "Delete original annotations": False,
        "Padding": 0, "Smoothing": 0,
    }
    values.update(interface_values)
    return {
        "datasetId": dataset_id, "type": "segmentation", "id": "tool-1", "name": "SAM2 Refiner",
        "image": IMAGE, "channel": 1, "assignment": {"XY": 0, "Z": 1, "Time": 0},
        "tile": {"XY": 0, "Z": 1, "Time": 0}, "tags": ["refined"],
        "connectTo": {"tags": [], "layer": None, "channel": None},
        "workerInterface": values, "scales": {},
    }


def run_worker(
    server: NimbusServer,
    request: str,
    parameters: dict,
    checkpoint_dir: Path,
    dataset_id: str | None = None,
    token: str | None = None,
    extra_env: dict | None = None,
    timeout: float = 600,
    measure_peak_rss: bool = False,
) -> WorkerRun:
    command = [
        sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--token", token or server.token,
        "--request", request, "--parameters", json.dumps(parameters),
    ]
    if dataset_id is not None:
        command += ["--datasetId", dataset_id]
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(checkpoint_dir), "PYTHONUNBUFFERED": "1"}
    env.update(extra_env or {})
    if measure_peak_rss:
        command = [sys.executable, "-c", PEAK_RSS_LAUNCHER, *command]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    if not measure_peak_rss:
        return WorkerRun(completed.returncode, completed.stdout, completed.stderr)
    stderr, _, peak = completed.stderr.rstrip("\n").rpartition("\n")
    return WorkerRun(completed.returncode, completed.stdout, stderr, int(peak))


def oracle_env(tmp_path: Path, shapes) -> dict:
    path = tmp_path / "oracle-shapes.json"
    path.write_text(shapes_to_json(shapes))
    return {"SAM2_REFINE_PREDICTOR": "tests.oracle:from_environment", "ORACLE_SHAPES": str(path)}


def cells() -> list:
    """Known objects of the test frame, in image coordinates."""
    return [Disk(60, 60, 18), Disk(150, 70, 14), Rect(200, 140, 260, 200), Disk(90, 170, 22)]


# --- whole-worker jobs on `cells()` ------------------------------------------------------

TAG = "rough"  # the tag of `seed`'s originals


def seed(server):
    """A dataset of the test frames with `cells()` outlined roughly, tagged TAG at Z 1:
    (dataset id, the originals' ids)."""
    dataset_id = server.add_dataset(frames(z=2, time=1))
    originals = [
        server.add_annotation(dataset_id, shape.rough_outline(), tags=[TAG], location={"XY": 0, "Z": 1, "Time": 0})
        for shape in cells()
    ]
    return dataset_id, originals


def replacing(dataset_id, **values):
    return compute_parameters(dataset_id, **{"Delete original annotations": True, **values})


def refined_by_source(server, dataset_id) -> Counter:
    return Counter(a[MARKER_KEY].split("/", 1)[1] for a in server.annotations(dataset_id) if MARKER_KEY in a)


def check_nothing_lost(server, dataset_id, originals):
    present = {a["_id"] for a in server.annotations(dataset_id)}
    refined = refined_by_source(server, dataset_id)
    for original in originals:
        assert original in present or refined[original] == 1, f"original {original} lost"
    assert all(count == 1 for count in refined.values()), f"duplicates: {refined}"
    return refined


@pytest.fixture
def worker(server, oracle_checkpoint_dir, tmp_path):
    def run(parameters, dataset_id, **kwargs):
        env = {**oracle_env(tmp_path, cells()), **kwargs.pop("extra_env", {})}
        result = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id, extra_env=env, **kwargs)
        assert server.token not in result.stdout + result.stderr
        return result

    return run
