"""Streaming and resume, through the whole worker: a 60-frame time-lapse with "Delete
original annotations", killed with SIGKILL half way, then run again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from collections import Counter

import numpy as np

from sam2_refine.nimbus import MARKER_KEY
from tests.conftest import IMAGE, REPO, compute_parameters, run_worker
from tests.erring_oracle import answers_to_json
from tests.synthetic_cells import Cell, random_cell, rough_original

FRAMES = 60
WIDTH, HEIGHT = 240, 120  # the rightmost cell ends at x = 120 + 1.3 * 59 + 8 + 3 < 240
TAG = "rough"
SAVED = re.compile(r"^Saved (\d+) refined polygons; (\d+) of (\d+) objects done")


def cells_at(time: int, rng: np.random.Generator) -> list[Cell]:
    """Four cells drifting 1.3 px right per frame, so every frame's boxes differ."""
    drift = 1.3 * time
    return [random_cell(rng, 30 + drift, 30, 10), random_cell(rng, 80 + drift, 70, 14),
            random_cell(rng, 120 + drift, 30, 8), random_cell(rng, 45 + drift, 85, 12)]


def seed_time_lapse(server, frame_count: int = FRAMES):
    rng = np.random.default_rng(11)
    frames = rng.integers(500, 3000, size=(1, 1, frame_count, 1, HEIGHT, WIDTH), dtype=np.uint16)
    dataset_id = server.add_dataset(frames)
    originals, keys, answers = [], [], []
    for time in range(frame_count):
        for cell in cells_at(time, rng):
            shape, coordinates = rough_original(rng, cell)
            originals.append(server.add_annotation(
                dataset_id, [(c["x"], c["y"]) for c in coordinates], tags=[TAG], shape=shape,
                location={"XY": 0, "Z": 0, "Time": time},
            ))
            xs, ys = [c["x"] for c in coordinates], [c["y"] for c in coordinates]
            keys.append(((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2))
            answers.append(cell)
    return dataset_id, originals, keys, answers


def refined_counts(server, dataset_id) -> Counter:
    return Counter(a[MARKER_KEY].split("/", 1)[1] for a in server.annotations(dataset_id) if MARKER_KEY in a)


def decoded_originals(log_path, keys, originals) -> Counter:
    """Which originals the oracle decoded (by nearest box centre), and how often."""
    if not log_path.exists():
        return Counter()
    centres = np.loadtxt(log_path, ndmin=2)
    key_array = np.array(keys)
    nearest = [int(np.argmin(((key_array - centre) ** 2).sum(axis=1))) for centre in centres]
    return Counter(originals[i] for i in nearest)


def oracle_answering(tmp_path: Path, keys, answers) -> dict:
    """The environment of a worker whose SAM2 is the erring oracle with these answers."""
    path = tmp_path / "answers.json"
    path.write_text(answers_to_json(keys, answers))
    return {"SAM2_REFINE_PREDICTOR": "tests.erring_oracle:from_environment", "ERRING_ORACLE": str(path)}


def start_worker(server, parameters: dict, dataset_id: str, checkpoint_dir: Path, extra_env: dict) -> subprocess.Popen:
    """The worker as the platform starts it, its JSON lines readable as they come."""
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(checkpoint_dir), "PYTHONUNBUFFERED": "1", **extra_env}
    command = [sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--token", server.token,
               "--request", "compute", "--parameters", json.dumps(parameters), "--datasetId", dataset_id]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def test_killed_half_way_then_run_again_refines_every_cell_exactly_once(server, oracle_checkpoint_dir, tmp_path):
    dataset_id, originals, keys, answers = seed_time_lapse(server)
    oracle = oracle_answering(tmp_path, keys, answers)
    parameters = compute_parameters(dataset_id, **{"Delete original annotations": True, "Batch Time": "all"})
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
    first_log, second_log = tmp_path / "decodes-1.txt", tmp_path / "decodes-2.txt"
    process = start_worker(server, parameters, dataset_id, oracle_checkpoint_dir,
                           {**oracle, "ERRING_ORACLE_DECODES": str(first_log), "SAM2_REFINE_RETRY_SECONDS": "1"})
    # Half way, deletes start failing: the location whose write-back starts after the next
    # report is left half-written (refined polygons saved, originals kept); at the report
    # after that, the worker is killed.
    saved_when_killed, reports_since_fault = None, None
    for line in process.stdout:
        info = (json.loads(line).get("info") or "") if line.startswith("{") else ""
        match = SAVED.match(info)
        if not match:
            continue
        if reports_since_fault is None and int(match.group(2)) >= int(match.group(3)) // 2:
            server.inject_fault("DELETE", r"^upenn_annotation/multiple$", status=500)
            reports_since_fault = 0
        elif reports_since_fault is not None:
            reports_since_fault += 1
            if reports_since_fault == 2:
                process.send_signal(signal.SIGKILL)
                saved_when_killed = int(match.group(1))
                break
    process.communicate(timeout=60)
    server.clear_faults()
    assert process.returncode == -signal.SIGKILL, "the first run ended before it was killed"
    total = len(originals)
    assert saved_when_killed is not None and saved_when_killed >= total / 3

    after_kill = refined_counts(server, dataset_id)
    assert sum(after_kill.values()) < total  # the first run did not finish
    present = {a["_id"] for a in server.annotations(dataset_id)}
    unfinished = {o for o in originals if o in present and o not in after_kill}
    half_written = {o for o in originals if o in present and o in after_kill}
    assert half_written

    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env={**oracle, "ERRING_ORACLE_DECODES": str(second_log)})
    assert run.returncode == 0, run.stdout + run.stderr
    refined = refined_counts(server, dataset_id)
    assert set(refined) == set(originals) and set(refined.values()) == {1}  # every cell refined exactly once
    assert not {a["_id"] for a in server.annotations(dataset_id)} & set(originals)  # every original replaced
    decoded_again = decoded_originals(second_log, keys, originals)
    assert set(decoded_again) == unfinished and set(decoded_again.values()) == {1}  # only the unfinished, once
    final = run.progress[-1]["info"]
    assert f"replaced {len(present & set(originals))} originals" in final
    assert f"{len(half_written)} already refined by an earlier run" in final


def test_a_run_with_other_settings_is_not_taken_for_an_earlier_one(server, oracle_checkpoint_dir, tmp_path):
    dataset_id, originals, keys, answers = seed_time_lapse(server)
    env = oracle_answering(tmp_path, keys, answers)

    def run(**values):
        parameters = compute_parameters(dataset_id, **{"Batch Time": "1-3", **values})
        parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
        result = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id, extra_env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    run()
    again = run()  # same settings: nothing new
    assert "Nothing new to refine: 12 already refined" in again.progress[-1]["info"]
    assert sum(refined_counts(server, dataset_id).values()) == 12
    run(Padding=2)  # other settings: a new set of refined outlines
    assert sum(refined_counts(server, dataset_id).values()) == 24


def test_with_the_job_date_tag_on_a_run_killed_half_way_then_run_again_refines_no_cell_twice(
        server, oracle_checkpoint_dir, tmp_path):
    """The platform's "job date tag" adds a tag that differs in every run (PLATFORM.md §1a);
    the rerun still recognises what the first run saved (the originals are kept, so each
    one the first run refined would be refined again if it did not)."""
    dataset_id, originals, keys, answers = seed_time_lapse(server, 8)
    oracle = oracle_answering(tmp_path, keys, answers)

    def parameters(job_tag: str) -> dict:
        body = compute_parameters(dataset_id, **{"Batch Time": "all"})
        body["tile"] = {"XY": 0, "Z": 0, "Time": 0}
        body["tags"] = ["refined", f"{IMAGE} job {job_tag} UTC-1"]
        return body

    process = start_worker(server, parameters("2025-3-7 9:5:2"), dataset_id, oracle_checkpoint_dir, oracle)
    reports = 0
    for line in process.stdout:
        info = (json.loads(line).get("info") or "") if line.startswith("{") else ""
        if SAVED.match(info):
            reports += 1
            if reports == 3:
                process.send_signal(signal.SIGKILL)
                break
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the first run ended before it was killed"
    saved = set(refined_counts(server, dataset_id))
    assert 0 < len(saved) < len(originals)

    log = tmp_path / "decodes.txt"
    run = run_worker(server, "compute", parameters("2025-3-7 9:17:40"), oracle_checkpoint_dir, dataset_id,
                     extra_env={**oracle, "ERRING_ORACLE_DECODES": str(log)})
    assert run.returncode == 0, run.stdout + run.stderr
    refined = refined_counts(server, dataset_id)
    assert set(refined) == set(originals) and set(refined.values()) == {1}  # no cell refined twice
    decoded_again = decoded_originals(log, keys, originals)
    assert set(decoded_again) == set(originals) - saved and set(decoded_again.values()) == {1}
    assert f"{len(saved)} already refined by an earlier run" in run.progress[-1]["info"]
