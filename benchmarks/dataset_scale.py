"""Memory and time bounded by the location, not the dataset (issue 17 item 7).

    .venv/bin/python benchmarks/run.py --dataset-scale [--repeat N]

The same job, refining frames 1-5 in Whole frame with the free model (no SAM2: each
box's logits are its true cell's, benchmarks/probe.py with BENCH_MODEL=none), once on
a dataset of 5 frames and once on a dataset of 300 frames, each frame holding the same
1000 tagged cells on a 1024² image. Only the dataset's size differs, so any difference in
peak memory or time is what the worker spends on the annotations outside its range.
Each dataset lives in its own embedded server, so neither server's listing work is
slowed by the other's documents.
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
MEMORY_GOAL, TIME_GOAL = 1.5, 2.0


@dataclass
class ScaleRun:
    frames: int
    returncode: int
    seconds: float
    rss_mb: float
    created: int


def _run_once(run_process, parameters, checkpoint_dir: Path, server, dataset_id: str, frames: int,
              workload, scratch: Path) -> ScaleRun:
    from benchmarks.run import REPO  # noqa: PLC0415 (run.py imports this module lazily)

    body = parameters(dataset_id, "tiny", "Whole frame", REFINED_FRAMES)
    command = [sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--token", server.token,
               "--request", "compute", "--parameters", json.dumps(body), "--datasetId", dataset_id]
    cells_path = scratch / "cells.npz"
    workload.cells.save(cells_path)
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(checkpoint_dir), "PYTHONUNBUFFERED": "1",
           "SAM2_REFINE_PREDICTOR": "benchmarks.probe:predictor", "BENCH_MODEL": "none",
           "BENCH_CELLS": str(cells_path), "BENCH_TIMINGS": str(scratch / "timings.json")}
    before = {a["_id"] for a in server.annotations(dataset_id)}
    finished = run_process(command, env, scratch, f"scale-{frames}")
    created = [a for a in server.annotations(dataset_id) if a["_id"] not in before]
    server.delete_annotations([a["_id"] for a in created])  # the next repeat refines the same frames again
    return ScaleRun(frames, finished.returncode, finished.seconds, finished.rss_mb, len(created))


def dataset_scale_lines(run_process, parameters, checkpoint_dir: Path, repeat: int = 1) -> list[str]:
    """The benchmark row: the median run of each dataset size and their ratios."""
    from benchmarks.run import add_dataset  # noqa: PLC0415 (run.py imports this module lazily)
    from nimbus_server import NimbusServer

    workload = make_workload(SIDE, CELLS)
    runs: dict[int, list[ScaleRun]] = {SMALL_FRAMES: [], LARGE_FRAMES: []}
    with tempfile.TemporaryDirectory(prefix="sam2-scale-") as scratch, \
            NimbusServer() as small, NimbusServer() as large:
        datasets = {SMALL_FRAMES: (small, add_dataset(small, SMALL_FRAMES, workload)),
                    LARGE_FRAMES: (large, add_dataset(large, LARGE_FRAMES, workload))}
        for _ in range(repeat):  # interleaved, so slow spells of other jobs hit both alike
            for frames, (server, dataset_id) in datasets.items():
                run = _run_once(run_process, parameters, checkpoint_dir, server, dataset_id, frames, workload,
                                Path(scratch))
                print(f"dataset of {frames} frames: exit {run.returncode}, {run.seconds:.1f} s, "
                      f"{run.rss_mb:.0f} MB, {run.created} refined", file=sys.stderr, flush=True)
                runs[frames].append(run)
    median = {frames: sorted(found, key=lambda r: r.seconds)[len(found) // 2] for frames, found in runs.items()}
    small_run, large_run = median[SMALL_FRAMES], median[LARGE_FRAMES]
    memory_ratio = large_run.rss_mb / small_run.rss_mb
    time_ratio = large_run.seconds / small_run.seconds
    lines = [
        f"| dataset (each frame {SIDE}² × {CELLS} tagged cells) | frames refined | exit | total s | peak RSS MB | "
        f"refined |",
        "|---|---|---|---|---|---|",
    ]
    for run in (small_run, large_run):
        lines.append(f"| {run.frames} frames | 1-{REFINED_FRAMES} | {run.returncode} | {run.seconds:.1f} | "
                     f"{run.rss_mb:.0f} | {run.created} |")
    lines.append("")
    lines.append(f"- {LARGE_FRAMES} frames against {SMALL_FRAMES}: peak memory {memory_ratio:.2f}× "
                 f"(target <= {MEMORY_GOAL}×: {'MET' if memory_ratio <= MEMORY_GOAL else 'MISSED'}), "
                 f"time {time_ratio:.2f}× (target <= {TIME_GOAL}×: {'MET' if time_ratio <= TIME_GOAL else 'MISSED'})")
    if repeat > 1:
        for frames, found in runs.items():
            lines.append(f"- {frames} frames: totals of the {repeat} runs {[round(r.seconds, 2) for r in found]} s, "
                         f"peak RSS {[round(r.rss_mb) for r in found]} MB (median "
                         f"{statistics.median(r.seconds for r in found):.2f} s)")
    return lines
