"""The CPU cost of keeping touching outlines apart, with a free model (issue 25).

    .venv/bin/python benchmarks/keep_apart_cost.py [repeats]
    .venv/bin/python benchmarks/keep_apart_cost.py --touching [frames]

The throughput workload of benchmarks/run.py (4096² frame, 16 and 4000 cells, Auto,
Padding 1, Smoothing 0.7, no model: the true cells' logits), run through the worker with
'Allow overlapping outlines' ticked and unticked, pinned to one CPU (taskset -c 0, so the
outlines are made in line and every CPU second is the worker's own). Prints the CPU seconds
of each run and the CPU milliseconds per extra object (4000 vs 16 cells, the least of the
repeats). CPU time, not wall time: the figures hold on a shared machine.

--touching: dense fields where most cells touch (tests/touching_cells.py, `frames` 1024²
frames of 60 cells, masks bleeding 0-3 px into each neighbour, Padding 1, Smoothing 0.7),
through the worker on every CPU it may use (the outlines, and the touching groups, in
processes once the job has 200 objects), ticked and unticked: the CPU seconds of its main
process per object (from the job log), in all (the stand-in's own answers, "decode", left
out) and by stage: "review" holds finding the groups and applying what comes back, "write"
pays for the polygons' vertices. (The outline processes' CPU is not counted here: they are
not the worker's children. tests.measure_contacts gives the whole CPU per object, in line.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.run import CONFIGS, NO_MODEL, add_dataset, parameters  # noqa: E402
from benchmarks.workload import make_workload  # noqa: E402
from nimbus_server import NimbusServer  # noqa: E402

OVERLAPS = "Allow overlapping outlines"
# Runs the command after it and prints its children's CPU seconds (user + system) and exit code.
LAUNCHER = ("import json, resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(json.dumps([usage.ru_utime + usage.ru_stime, code]), file=sys.stderr)")


def cpu_seconds(server, count: int, allow: bool, scratch: Path) -> float:
    workload = make_workload(4096, count)
    dataset_id = add_dataset(server, 1, workload)
    values = parameters(dataset_id, NO_MODEL, "Auto", 1)
    values["workerInterface"][OVERLAPS] = allow
    cells = scratch / "cells.npz"
    workload.cells.save(cells)
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(scratch), "PYTHONUNBUFFERED": "1",
           "SAM2_REFINE_PREDICTOR": "benchmarks.probe:predictor", "BENCH_CELLS": str(cells),
           "BENCH_TIMINGS": str(scratch / "timings.json"), "BENCH_MODEL": "none"}
    command = ["taskset", "-c", "0", sys.executable, "-c", LAUNCHER, sys.executable, str(REPO / "entrypoint.py"),
               "--apiUrl", server.url, "--token", server.token, "--request", "compute",
               "--parameters", json.dumps(values), "--datasetId", dataset_id]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    seconds, code = json.loads(done.stderr.strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"the worker exited {code}: {done.stdout[-500:]}")
    return seconds


def touching_cpu(server, frames: int, allow: bool, scratch: Path) -> tuple[int, float, dict[str, float]]:
    """(objects, CPU seconds of the job's main process, of its stages)."""
    import numpy as np

    from benchmarks.run import worker_main_cpu
    from tests.touching_cells import answers_to_json, touching_set

    scenes = [touching_set(seed, 1024, 1024, 60) for seed in range(frames)]
    dataset_id = server.add_dataset(np.full((1, 1, frames, 1, 1024, 1024), 100, np.uint16))
    for time_point, scene in enumerate(scenes):
        for prompt in scene.prompts:
            server.add_annotation(dataset_id, [(c["x"], c["y"]) for c in prompt.coordinates], tags=["rough"],
                                  shape=prompt.shape, location={"XY": 0, "Z": 0, "Time": time_point})
    oracle = scratch / "touching.json"
    oracle.write_text(answers_to_json(scenes))
    values = parameters(dataset_id, NO_MODEL, "Auto", frames)
    values["workerInterface"][OVERLAPS] = allow
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(scratch), "PYTHONUNBUFFERED": "1",
           "SAM2_REFINE_PREDICTOR": "tests.touching_cells:from_environment", "TOUCHING_ORACLE": str(oracle)}
    command = [sys.executable, "-c", LAUNCHER, sys.executable, str(REPO / "entrypoint.py"),
               "--apiUrl", server.url, "--token", server.token, "--request", "compute",
               "--parameters", json.dumps(values), "--datasetId", dataset_id]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    _, code = json.loads(done.stderr.strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"the worker exited {code}: {done.stdout[-500:]}")
    main_cpu, stages = worker_main_cpu(done.stderr)
    return sum(len(scene.prompts) for scene in scenes), main_cpu, stages


def touching_main(frames: int) -> None:
    with tempfile.TemporaryDirectory() as scratch, NimbusServer(token="keep-apart-cost") as server:
        scratch = Path(scratch)
        (scratch / CONFIGS["tiny"][0]).write_bytes(b"no model")
        for allow in (True, False):
            count, main_cpu, stages = touching_cpu(server, frames, allow, scratch)
            per = {name: 1000 * value / count for name, value in stages.items()}
            own = 1000 * (main_cpu - stages.get("decode", 0.0)) / count
            print(f"overlaps {'allowed' if allow else 'kept apart'}, {count} objects in {frames} dense frames: "
                  f"main process {own:.3f} CPU ms per object without the stand-in's decode; by stage "
                  f"{', '.join(f'{name} {value:.3f}' for name, value in per.items())}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--touching":
        touching_main(int(sys.argv[2]) if len(sys.argv) > 2 else 16)
        return
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    with tempfile.TemporaryDirectory() as scratch, NimbusServer(token="keep-apart-cost") as server:
        scratch = Path(scratch)
        (scratch / CONFIGS["tiny"][0]).write_bytes(b"no model")
        runs: dict[tuple[bool, int], list[float]] = {}
        for _ in range(repeats):
            for allow in (True, False):
                for count in (16, 4000):
                    seconds = cpu_seconds(server, count, allow, scratch)
                    runs.setdefault((allow, count), []).append(seconds)
                    print(f"overlaps {'allowed' if allow else 'kept apart'}, {count} cells: {seconds:.2f} CPU s",
                          flush=True)
        per_object = {allow: 1000 * (min(runs[(allow, 4000)]) - min(runs[(allow, 16)])) / (4000 - 16)
                      for allow in (True, False)}
        print(f"CPU ms per extra object: {per_object[True]:.3f} with overlaps allowed, {per_object[False]:.3f} "
              f"kept apart ({100 * (per_object[False] / per_object[True] - 1):+.1f} %)")


if __name__ == "__main__":
    main()
