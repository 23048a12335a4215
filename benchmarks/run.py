"""`make bench`: our worker end to end vs the existing worker's algorithm.

    .venv/bin/python benchmarks/run.py [--quick | --full] [--json PATH] [--only WORKLOAD...]

Each case is a fresh dataset in an in-process NimbusServer holding one synthetic frame
(benchmarks/workload.py) with rough outlines tagged "rough". Each implementation runs as
a subprocess, timed from process start to exit: our `entrypoint.py --request compute` in
both Resolution modes, and benchmarks/existing.py. Stage times come from
benchmarks/probe.py inside each process; peak RSS from os.wait4 of that process.
Random-init weights give noise masks, so both implementations replace the decoder's
logits with the true cells' (after running the real decoder): see probe.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.workload import Workload, make_workload  # noqa: E402

CHECKPOINT_DIR = REPO / "benchmarks" / "checkpoints"  # ignored by git (`checkpoints/`)
CONFIGS = {"tiny": ("sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml"),
           "small": ("sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml")}
WHOLE, AUTO, EXISTING = "ours Whole frame", "ours Auto", "existing"
PROPOSED = "proposed Whole frame"  # ours with benchmarks/proposed.py's predictor (PROPOSALS.md)
OUTSIDE = "proposed + O1 + O2"     # and two simulated changes outside model.py (probe.py, PROPOSALS.md)
IMPLEMENTATIONS = (WHOLE, AUTO, PROPOSED, OUTSIDE, EXISTING)
TARGETS = (WHOLE, AUTO, PROPOSED, OUTSIDE, EXISTING)
PADDING, SMOOTHING = 1.0, 0.7
TIMEOUT = 1800


@dataclass(frozen=True)
class Case:
    size: int
    count: int
    model: str
    implementations: tuple[str, ...] = (WHOLE, AUTO, EXISTING)

    @property
    def name(self) -> str:
        return f"{self.size}² × {self.count} {self.model}"


QUICK = [Case(1024, 100, "tiny")]
DEFAULT = [
    Case(1024, 100, "tiny"),
    Case(2048, 100, "tiny", TARGETS),
    Case(2048, 1000, "tiny", (WHOLE,)),
    Case(4096, 200, "tiny", TARGETS),
    Case(4096, 1000, "tiny", (WHOLE, PROPOSED)),
    Case(2048, 100, "small", (WHOLE, EXISTING)),
]
FULL = [Case(size, count, model, IMPLEMENTATIONS)
        for model in CONFIGS for size in (1024, 2048, 4096) for count in (100, 200, 500, 1000)]


@dataclass
class Result:
    case: str
    implementation: str
    count: int
    returncode: int
    total: float
    rss_mb: float
    created: int
    stages: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    note: str = ""
    load: float = 0.0                  # 1-minute load average after the run
    all_totals: list[float] = field(default_factory=list)


def ensure_checkpoints() -> None:
    missing = [(name, config) for name, config in CONFIGS.values() if not (CHECKPOINT_DIR / name).is_file()]
    if not missing:
        return
    import torch
    from sam2.build_sam import build_sam2

    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    for name, config in missing:
        print(f"writing random-init checkpoint {name}", file=sys.stderr)
        torch.manual_seed(0)
        model = build_sam2(config, None, device="cpu")
        torch.save({"model": model.state_dict()}, CHECKPOINT_DIR / name)


def parameters(dataset_id: str, model: str, resolution: str) -> dict:
    return {
        "datasetId": dataset_id, "type": "segmentation", "id": "bench", "name": "SAM2 Refiner",
        "image": "annotations/sam2_refine_worker:latest", "channel": 0,
        "assignment": {"XY": 0, "Z": 0, "Time": 0}, "tile": {"XY": 0, "Z": 0, "Time": 0}, "tags": ["refined"],
        "connectTo": {"tags": [], "layer": None, "channel": None},
        "workerInterface": {
            "SAM2 Refiner": "", "Batch XY": "", "Batch Z": "", "Batch Time": "",
            "Tag of objects to refine": ["rough"], "Model": CONFIGS[model][0], "Resolution": resolution,
            "Delete original annotations": False, "Padding": PADDING, "Smoothing": SMOOTHING,
        },
        "scales": {},
    }


@dataclass
class Finished:
    returncode: int
    seconds: float
    rss_mb: float
    lines: list[tuple[float, str]]
    started: float


def run_process(command: list[str], env: dict, stderr_path: Path, timeout: float = TIMEOUT) -> Finished:
    """Run to exit; wall seconds, peak RSS of this child (os.wait4), stdout lines with arrival times."""
    lines: list[tuple[float, str]] = []
    with open(stderr_path, "w") as stderr:
        started = time.time()
        clock = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=REPO)
        killer = threading.Timer(timeout, process.kill)
        killer.start()

        def read() -> None:
            for line in process.stdout:
                lines.append((time.time(), line))

        reader = threading.Thread(target=read)
        reader.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - clock
        killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
    return Finished(process.returncode, seconds, usage.ru_maxrss / 1024, lines, started)


def first_progress_time(lines: list[tuple[float, str]]) -> float | None:
    for arrived, line in lines:
        try:
            if "progress" in json.loads(line):
                return arrived
        except ValueError:
            continue
    return None


def stages_of(implementation: str, finished: Finished, timings: dict) -> dict[str, float]:
    seconds, marks = timings.get("seconds", {}), timings.get("marks", {})
    if implementation == EXISTING:
        fetch_annotations = seconds.get("fetch_annotations", 0.0)
    else:  # our worker lists the polygons between its first progress line and loading the model
        first = first_progress_time(finished.lines) or marks.get("model_start", finished.started)
        fetch_annotations = marks.get("model_start", first) - first
    startup = marks.get("model_ready", finished.started) - finished.started - fetch_annotations
    stages = {
        "startup": startup,
        "model": seconds.get("model", 0.0),
        "fetch": fetch_annotations + seconds.get("fetch_image", 0.0),
        "encode": seconds.get("encode", 0.0),
        "decode": seconds.get("decode", 0.0),
        "geometry": seconds.get("geometry", 0.0),
        "upload": seconds.get("upload", 0.0),
        "substitute": seconds.get("substitute", 0.0),
    }
    if "after_encode" in seconds:
        stages["after_encode"] = seconds["after_encode"]
    if "exit" in marks:  # interpreter shut-down after the worker's last line of code
        stages["teardown"] = finished.started + finished.seconds - marks["exit"]
    return stages


def mask_memory_gb(workload: Workload) -> float:
    """What the existing algorithm keeps: one float32 full-frame mask per object."""
    return workload.count * workload.size * workload.size * 4 / 1e9


def available_gb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def run_case(
    server, case: Case, workload: Workload, implementation: str, scratch: Path, extra_env: dict, model_masks: bool
) -> Result:
    import numpy as np

    if implementation == EXISTING and mask_memory_gb(workload) > 0.7 * available_gb():
        return Result(case.name, implementation, case.count, -1, float("nan"), float("nan"), 0,
                      note=f"skipped: needs {mask_memory_gb(workload):.0f} GB of masks, {available_gb():.0f} GB free")
    dataset_id = server.add_dataset(workload.image[np.newaxis, np.newaxis, np.newaxis, np.newaxis])
    for outline in workload.outlines:
        server.add_annotation(dataset_id, outline, tags=["rough"], location={"XY": 0, "Z": 0, "Time": 0})
    resolution = "Auto" if implementation == AUTO else "Whole frame"
    script = "benchmarks/existing.py" if implementation == EXISTING else "entrypoint.py"
    command = [sys.executable, str(REPO / script), "--apiUrl", server.url, "--token", server.token,
               "--request", "compute", "--parameters", json.dumps(parameters(dataset_id, case.model, resolution)),
               "--datasetId", dataset_id]
    cells_path, timings_path = scratch / "cells.npz", scratch / "timings.json"
    workload.cells.save(cells_path)
    timings_path.unlink(missing_ok=True)
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(CHECKPOINT_DIR), "PYTHONUNBUFFERED": "1",
           "SAM2_REFINE_PREDICTOR": "benchmarks.probe:predictor",
           "BENCH_CELLS": str(cells_path), "BENCH_TIMINGS": str(timings_path), **extra_env}
    if implementation in (PROPOSED, OUTSIDE):
        env["BENCH_PREDICTOR"] = "proposed"
    if implementation == OUTSIDE:
        env.update(BENCH_FAST_EXIT="1", BENCH_FULL_RES_FETCH="1")
    if model_masks:  # the random-init model's own (noise) masks
        del env["BENCH_CELLS"]
    stderr_path = scratch / f"{implementation.replace(' ', '_')}.stderr"
    finished = run_process(command, env, stderr_path)
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    created = sum(1 for a in server.annotations(dataset_id) if "refined" in a.get("tags", []))
    note = ""
    if finished.returncode != 0:
        note = f"exit {finished.returncode}: {stderr_path.read_text()[-300:]!r}"
    return Result(case.name, implementation, case.count, finished.returncode, finished.seconds, finished.rss_mb,
                  created, stages_of(implementation, finished, timings), timings.get("calls", {}), note)


def median_run(runs: list[Result]) -> Result:
    """The run with the median total (the upper one of two); all totals kept for the record."""
    ordered = sorted(runs, key=lambda r: (r.returncode != 0, r.total))
    chosen = ordered[len(ordered) // 2] if all(r.returncode == 0 for r in runs) else ordered[-1]
    chosen.all_totals = [round(r.total, 2) for r in runs]
    return chosen


def format_table(results: list[Result]) -> str:
    header = ("| workload | implementation | total s | ms/object | startup (model) | fetch | encode (calls) | decode | "
              "geometry | upload | exit | peak RSS MB | made | ours/existing |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    existing = {r.case: r for r in results if r.implementation == EXISTING and r.returncode == 0}
    for r in results:
        if r.returncode != 0:
            lines.append(f"| {r.case} | {r.implementation} | {r.note} |" + " |" * 11)
            continue
        s = r.stages
        base = existing.get(r.case)
        ratio = ""
        if base is not None and r.implementation != EXISTING:
            speed = base.total / r.total
            ratio = f"{r.total / base.total:.2f} ({speed:.1f}× faster)" if speed >= 1 else \
                f"{r.total / base.total:.2f} ({1 / speed:.1f}× slower)"
        lines.append(
            f"| {r.case} | {r.implementation} | {r.total:.1f} | {1000 * r.total / r.count:.0f} | {s['startup']:.1f} ({s['model']:.1f}) | "
            f"{s['fetch']:.1f} | {s['encode']:.1f} ({r.calls.get('encode', 0)}) | {s['decode']:.1f} | "
            f"{s['geometry']:.2f} | {s['upload']:.2f} | {s.get('teardown', float('nan')):.1f} | {r.rss_mb:.0f} | "
            f"{r.created}/{r.count} | {ratio} |"
        )
    return "\n".join(lines)


def marginal_lines(results: list[Result]) -> list[str]:
    """Per additional object once the model is loaded and the window encoded, vs the decoder alone."""
    out = []
    for r in results:
        s = r.stages
        if r.returncode != 0 or r.implementation == EXISTING or not s.get("decode"):
            continue
        per_object = (s["after_encode"] - s["substitute"]) / r.count
        decoder = s["decode"] / r.count
        out.append(f"{r.case}, {r.implementation}: {1000 * per_object:.1f} ms per object after encoding, "
                   f"decoder alone {1000 * decoder:.1f} ms -> ratio {per_object / decoder:.3f} (target <= 1.15)")
    return out


def target_lines(results: list[Result]) -> list[str]:
    by = {(r.case, r.implementation): r for r in results if r.returncode == 0}
    out = []
    for implementation in (WHOLE, PROPOSED, OUTSIDE):
        for case, goal in (("2048² × 100 tiny", 1.7), ("4096² × 200 tiny", 5.0)):
            ours, base = by.get((case, implementation)), by.get((case, EXISTING))
            if ours and base:
                speedup = base.total / ours.total
                out.append(f"{implementation} {case}: {speedup:.2f}× faster than existing (target >= {goal}×): "
                           f"{'MET' if speedup >= goal else 'MISSED'}")
        rss = sorted((r.count, r.rss_mb) for r in results if r.implementation == implementation
                     and r.case.startswith("4096²") and r.returncode == 0 and "tiny" in r.case)
        if rss:
            text = ", ".join(f"{count} objects {mb:.0f} MB" for count, mb in rss)
            peak = max(mb for _, mb in rss)
            out.append(f"Peak RSS, {implementation} 4096² tiny: {text} (target <= 2500 MB, flat): "
                       f"{'MET' if peak <= 2500 else 'MISSED'}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true", help="smoke run: 1024² × 100, tiny (~2 min)")
    grid.add_argument("--full", action="store_true", help="the whole grid (hours on a 2-core CPU)")
    parser.add_argument("--only", nargs="*", help="run only cases whose name contains one of these, e.g. '4096² × 200'")
    parser.add_argument("--implementations", nargs="*", choices=IMPLEMENTATIONS, help="run only these")
    parser.add_argument("--model-masks", action="store_true",
                        help="keep the random-init model's noise masks instead of the true cells' (see probe.py)")
    parser.add_argument("--env", nargs="*", default=[], help="extra KEY=VALUE for the subprocesses (probe options)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation; the table shows the median run")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    cases = QUICK if args.quick else FULL if args.full else DEFAULT
    if args.only:
        cases = [c for c in cases if any(o in c.name for o in args.only)]
    extra_env = dict(item.split("=", 1) for item in args.env)

    from nimbus_server import NimbusServer

    ensure_checkpoints()
    results: list[Result] = []
    started = time.perf_counter()
    with NimbusServer() as server, tempfile.TemporaryDirectory(prefix="sam2-bench-") as scratch:
        for case in cases:
            workload = make_workload(case.size, case.count)
            implementations = [i for i in case.implementations if not args.implementations or i in args.implementations]
            runs: dict[str, list[Result]] = {i: [] for i in implementations}
            for _ in range(args.repeat):  # interleaved, so slow spells of other jobs hit all alike
                for implementation in implementations:
                    result = run_case(server, case, workload, implementation, Path(scratch), extra_env, args.model_masks)
                    result.load = os.getloadavg()[0]
                    runs[implementation].append(result)
                    print(f"[{time.perf_counter() - started:6.0f} s] {case.name} {implementation}: "
                          f"{result.total:.1f} s, {result.rss_mb:.0f} MB, load {result.load:.2f} {result.note}",
                          file=sys.stderr, flush=True)
            for implementation in implementations:
                results.append(median_run(runs[implementation]))
    print(format_table(results))
    print()
    if args.repeat > 1:
        for r in results:
            print(f"- {r.case}, {r.implementation}: totals of the {args.repeat} runs {r.all_totals} s")
    for line in marginal_lines(results) + target_lines(results):
        print(f"- {line}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.returncode <= 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
