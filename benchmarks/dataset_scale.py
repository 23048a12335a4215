"""Memory and time bounded by the location, not the dataset (issue 17 item 7, issue 23).

    .venv/bin/python benchmarks/run.py --dataset-scale [--repeat N]

The same job, refining frames 1-5 in Whole frame with the free model (no SAM2: each
box's logits are its true cell's, benchmarks/probe.py with BENCH_MODEL=none), on a
dataset of 5 frames, and on one of 300 frames twice: on a server that selects by location
(POST upenn_annotation/list/ids, as the platform's plugin at 818835a) and on one that
cannot (an older plugin: the worker pages through the whole dataset's listing). Each frame
holds the same 1000 tagged cells on a 1024² image. Only the dataset's size differs, so any
difference in peak memory or time is what the worker spends on the annotations outside its
range. Each dataset lives in its own embedded server, so no server's work is slowed by
another's documents. Besides the wall time (process start to exit, the benchmark's
in-process server included) the worker's own CPU seconds (user + system, its outline
processes included) are reported: they do not count what other jobs on the machine take.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.workload import make_workload

SIDE, CELLS = 1024, 1000
SMALL_FRAMES, LARGE_FRAMES, REFINED_FRAMES = 5, 300, 5
MEMORY_GOAL, TIME_GOAL = 1.3, 1.3  # with the location filter; without it, no worse than before
# Runs the command after it and writes its CPU seconds (user + system, its descendants'
# included) to the file named first.
CPU_LAUNCHER = (
    "import json, resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "open(sys.argv[1], 'w').write(json.dumps({'cpu': usage.ru_utime + usage.ru_stime})); sys.exit(code)"
)
SMALL, FILTERED, LISTED = "5 frames", "300 frames", "300 frames, older server"


@dataclass
class ScaleRun:
    case: str
    returncode: int
    seconds: float
    cpu_seconds: float
    rss_mb: float
    created: int


def _run_once(run_process, parameters, checkpoint_dir: Path, server, dataset_id: str, case: str,
              workload, scratch: Path) -> ScaleRun:
    from benchmarks.run import REPO  # noqa: PLC0415 (run.py imports this module lazily)

    body = parameters(dataset_id, "tiny", "Whole frame", REFINED_FRAMES)
    cpu_path = scratch / "cpu.json"
    cpu_path.unlink(missing_ok=True)
    command = [sys.executable, "-c", CPU_LAUNCHER, str(cpu_path),
               sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--token", server.token,
               "--request", "compute", "--parameters", json.dumps(body), "--datasetId", dataset_id]
    cells_path = scratch / "cells.npz"
    workload.cells.save(cells_path)
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(checkpoint_dir), "PYTHONUNBUFFERED": "1",
           "SAM2_REFINE_PREDICTOR": "benchmarks.probe:predictor", "BENCH_MODEL": "none",
           "BENCH_CELLS": str(cells_path), "BENCH_TIMINGS": str(scratch / "timings.json")}
    before = {a["_id"] for a in server.annotations(dataset_id)}
    finished = run_process(command, env, scratch, "scale")
    cpu = json.loads(cpu_path.read_text())["cpu"] if cpu_path.is_file() else float("nan")
    created = [a for a in server.annotations(dataset_id) if a["_id"] not in before]
    server.delete_annotations([a["_id"] for a in created])  # the next repeat refines the same frames again
    return ScaleRun(case, finished.returncode, finished.seconds, cpu, finished.rss_mb, len(created))


def _verdict(ratio: float, goal: float) -> str:
    return f"target <= {goal}×: {'MET' if ratio <= goal else 'MISSED'}"


def dataset_scale_lines(run_process, parameters, checkpoint_dir: Path, repeat: int = 1) -> list[str]:
    """The benchmark rows: the median run of each case and their ratios."""
    from benchmarks.run import add_dataset  # noqa: PLC0415 (run.py imports this module lazily)
    from nimbus_server import NEWER_ROUTES, NimbusServer

    workload = make_workload(SIDE, CELLS)
    runs: dict[str, list[ScaleRun]] = {SMALL: [], FILTERED: [], LISTED: []}
    with tempfile.TemporaryDirectory(prefix="sam2-scale-") as scratch, NimbusServer() as small, \
            NimbusServer() as large, NimbusServer(missing_routes=NEWER_ROUTES) as older:
        datasets = {SMALL: (small, add_dataset(small, SMALL_FRAMES, workload)),
                    FILTERED: (large, add_dataset(large, LARGE_FRAMES, workload)),
                    LISTED: (older, add_dataset(older, LARGE_FRAMES, workload))}
        for _ in range(repeat):  # interleaved, so slow spells of other jobs hit all alike
            for case, (server, dataset_id) in datasets.items():
                run = _run_once(run_process, parameters, checkpoint_dir, server, dataset_id, case, workload,
                                Path(scratch))
                print(f"dataset of {case}: exit {run.returncode}, {run.seconds:.1f} s, {run.cpu_seconds:.1f} CPU s, "
                      f"{run.rss_mb:.0f} MB, {run.created} refined", file=sys.stderr, flush=True)
                runs[case].append(run)
    median = {case: sorted(found, key=lambda r: r.cpu_seconds)[len(found) // 2] for case, found in runs.items()}
    lines = [
        f"| dataset (each frame {SIDE}² × {CELLS} tagged cells) | frames refined | exit | total s | worker CPU s | "
        f"peak RSS MB | refined |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in median.values():
        lines.append(f"| {run.case} | 1-{REFINED_FRAMES} | {run.returncode} | {run.seconds:.1f} | {run.cpu_seconds:.1f} "
                     f"| {run.rss_mb:.0f} | {run.created} |")
    lines.append("")
    base = median[SMALL]
    for case in (FILTERED, LISTED):
        run = median[case]
        memory, cpu, wall = run.rss_mb / base.rss_mb, run.cpu_seconds / base.cpu_seconds, run.seconds / base.seconds
        if case == FILTERED:
            lines.append(f"- {case} against {SMALL}: peak memory {memory:.2f}× ({_verdict(memory, MEMORY_GOAL)}), "
                         f"worker CPU time {cpu:.2f}× ({_verdict(cpu, TIME_GOAL)}), wall time {wall:.2f}×")
        else:
            lines.append(f"- {case} against {SMALL}: peak memory {memory:.2f}×, worker CPU time {cpu:.2f}×, "
                         f"wall time {wall:.2f}× (the listing, as before the location filter)")
    if repeat > 1:
        for case, found in runs.items():
            lines.append(f"- {case}: the {repeat} runs' worker CPU {[round(r.cpu_seconds, 2) for r in found]} s, "
                         f"wall {[round(r.seconds, 2) for r in found]} s, peak RSS {[round(r.rss_mb) for r in found]} "
                         f"MB (median by CPU: {statistics.median(r.cpu_seconds for r in found):.2f} s)")
    return lines
