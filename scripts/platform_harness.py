"""The platform's own server with this checkout's worker, for `scripts/platform_check.py`.

Starts `../shared/platform-server/serve.py` (Girder 5 + NimbusImage's annotation plugin +
girder_large_image, mongomock as the database) on a free port with this checkout's
`entrypoint.py` as its `LOCAL_WORKER`, answering with the oracle predictor
(`tests.oracle:from_environment`, the true cells in `ORACLE_SHAPES`), and drives it as the
web app does (`nimbus_app.py`): users, datasets, annotations, connections, sharing, jobs
through `POST upenn_annotation/compute` and `POST worker_interface/request`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PLATFORM_SERVER = REPO.parent / "shared" / "platform-server"
SERVER_HOME = Path(os.environ.get("PLATFORM_SERVER_HOME", "/tmp/nimbus-platform-server"))
IMAGE = "annotations/sam2_refine_worker:latest"
TINY = "sam2.1_hiera_tiny.pt"
USER_PASSWORD = "password1"
API_PREFIX = "/api/v1/"  # the events log's paths start with it

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(PLATFORM_SERVER))
import nimbus_app as app  # noqa: E402  (the platform server's own app steps; needs only requests)

from tests.oracle import Disk, shapes_to_json  # noqa: E402
from tests.worker_output import WorkerOutput  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class JobRun(WorkerOutput):
    """A finished platform job: its Girder status, the container's exit code and output,
    and the HTTP requests the worker made while it ran (from the server's events log)."""

    job_id: str
    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    requests: list[dict] = field(default_factory=list)  # method, path (after /api/v1/), status

    @property
    def last_progress(self) -> str:
        infos = [str(m.get("info") or "") for m in self.progress]
        return infos[-1] if infos else ""

    def writes(self) -> list[dict]:
        return [r for r in self.requests if r["method"] in ("POST", "PUT", "DELETE")
                and not r["path"].startswith(("upenn_annotation/hydrate", "upenn_annotation/list"))]

    def count(self, method: str, path_prefix: str) -> int:
        return sum(1 for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix))


class PlatformServer:
    """The platform's server in a subprocess of this script, and the admin's session."""

    def __init__(self, scratch: Path, shapes: list[Disk]):
        self.scratch = scratch
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/api/v1"
        self.jobs_dir = scratch / "jobs"
        self.events_log = scratch / "events.jsonl"
        self.hold_file = scratch / "hold"
        self.import_root = scratch / "imports"
        checkpoints = scratch / "checkpoints"
        checkpoints.mkdir()
        (checkpoints / TINY).write_bytes(b"oracle")  # the oracle never reads it
        shapes_path = scratch / "oracle-shapes.json"
        shapes_path.write_text(shapes_to_json(shapes))
        self.worker_env = {"SAM2_REFINE_PREDICTOR": "tests.oracle:from_environment", "ORACLE_SHAPES": str(shapes_path),
                           "SAM2_CHECKPOINT_DIR": str(checkpoints), "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen | None = None
        self.admin: app.Api | None = None

    def start(self, timeout: float = 180) -> None:
        python = SERVER_HOME / "venv" / "bin" / "python"
        env = {**os.environ,
               "LOCAL_WORKER": f"{REPO / '.venv' / 'bin' / 'python'} {REPO / 'entrypoint.py'}",
               "LOCAL_WORKER_CWD": str(REPO), "LOCAL_WORKER_ENV": json.dumps(self.worker_env),
               "LOCAL_WORKER_HOLD": str(self.hold_file), "JOBS_DIR": str(self.jobs_dir),
               "EVENTS_LOG": str(self.events_log), "GIRDER_SETTING_WORKER_API_URL": self.base}
        log = open(self.scratch / "server.log", "w")
        self.process = subprocess.Popen([str(python), "-B", str(PLATFORM_SERVER / "serve.py"), str(self.port),
                                         str(self.scratch / "assetstore")], env=env, stdout=log,
                                        stderr=subprocess.STDOUT, cwd=self.scratch)
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the platform's server exited ({self.process.returncode}); "
                                   f"see {self.scratch / 'server.log'}")
            try:
                self.admin = app.Api(self.base).login("admin", "password")
                return
            except Exception:  # noqa: BLE001 (not listening yet)
                if time.monotonic() - started > timeout:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    # --- users and datasets, as the app makes them -------------------------------------------

    def user(self, login: str) -> app.Api:
        app.create_user(self.admin, login, USER_PASSWORD)
        return app.Api(self.base).login(login, USER_PASSWORD)

    def dataset(self, owner: app.Api, name: str, images: np.ndarray, channels: list[str]) -> dict:
        """`images` (T, C, H, W) uint16 as a multi-source image of the app's kind; a single
        frame (one T and one C) as a plain 2-D TIFF."""
        import tifffile

        path = self.scratch / f"{name}.tiff"
        times, count = images.shape[:2]
        if times == 1 and count == 1:
            tifffile.imwrite(path, images[0, 0], photometric="minisblack")
            axes = {}
        else:
            tifffile.imwrite(path, images, photometric="minisblack", metadata={"axes": "TCYX"})
            axes = {"c": 1, "t": count}
        return app.create_dataset(self.admin, owner, name, str(path), str(self.import_root), channels, axes)

    # --- jobs -------------------------------------------------------------------------

    def _events(self) -> list[dict]:
        if not self.events_log.exists():
            return []
        return [json.loads(line) for line in self.events_log.read_text().splitlines() if line.strip()]

    def _finished(self, user: app.Api, answer) -> JobRun:
        job = app.first_job(answer)
        done = app.wait_job(user, job["_id"])
        records = list(self.jobs_dir.glob(f"*-{job['_id']}.json"))
        record = json.loads(records[0].read_text()) if records else {}
        stdout = Path(record["stdout"]).read_text() if record.get("stdout") else ""
        stderr = Path(record["stderr"]).read_text() if record.get("stderr") else ""
        requests, inside = [], False
        for event in self._events():
            if event.get("kind") == "job" and event.get("job") == job["_id"]:
                inside = event.get("state") == "started"
            elif inside and event.get("kind") == "http" and event.get("ua") != app.USER_AGENT:
                requests.append({**event, "path": event["path"].removeprefix(API_PREFIX)})
        status = app.JOB_DONE.get(done.get("status"), str(done.get("status")))
        return JobRun(job["_id"], status, record.get("exit_code"), stdout, stderr, requests)

    def compute(self, user: app.Api, dataset_id: str, body: dict, hold: bool = False, while_held=None) -> JobRun:
        """`POST upenn_annotation/compute?datasetId=` as the app sends it, then the job's end.
        With `hold`, `while_held()` runs while the job waits in the queue."""
        if hold:
            self.hold_file.write_text("")
        try:
            answer = user.post("upenn_annotation/compute", params={"datasetId": dataset_id}, body=body)
            if while_held is not None:
                while_held()
        finally:
            if hold:
                self.hold_file.unlink()
        return self._finished(user, answer)

    def request_interface(self, user: app.Api) -> JobRun:
        return self._finished(user, user.post("worker_interface/request", params={"image": IMAGE}))

    def history(self) -> list[dict]:
        """The undo entries the plugin made so far."""
        return [e for e in self._events() if e.get("kind") == "history"]


def compute_body(dataset_id: str, *, delete: bool, batch_time: str = "", connect_to: list[str] = (),
                 tile_time: int = 0) -> dict:
    """The body the app's computeAnnotationWithWorker sends (PLATFORM.md §1a)."""
    location = {"XY": 0, "Z": 0, "Time": tile_time}
    return {
        "datasetId": dataset_id, "type": "segmentation", "id": "8c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
        "name": "SAM2 Refiner", "image": IMAGE, "channel": 0, "assignment": dict(location), "tile": dict(location),
        "tags": ["refined"], "connectTo": {"tags": list(connect_to), "layer": None, "channel": None},
        "workerInterface": {"SAM2 Refiner": "", "Batch XY": "", "Batch Z": "", "Batch Time": batch_time,
                            "Tag of objects to refine": ["rough"], "Model": TINY,
                            "Delete original annotations": delete, "Padding": 0, "Smoothing": 0.7},
        "scales": {"pixelSize": {"value": 1, "unit": "µm"}, "zStep": {"value": 1, "unit": "µm"},
                   "tStep": {"value": 1, "unit": "s"}},
    }
