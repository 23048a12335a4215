"""`make bench`: our worker end to end vs the existing worker's algorithm.

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME...] [--repeat N] [--json PATH] [--allow-overlaps]
    .venv/bin/python benchmarks/run.py --windows [TILING_PY]     # Auto's windows only, no model

Each case is a fresh dataset in an in-process NimbusServer holding synthetic frames
(benchmarks/workload.py) with rough outlines tagged "rough". Each implementation runs as
a subprocess, timed from process start to exit: our `entrypoint.py --request compute` in
both Resolution modes, and benchmarks/existing.py. Stage times come from
benchmarks/probe.py inside each process; peak RSS is the worker's ru_maxrss, taken by a small
launcher process (LAUNCHER) whose only child it is.
Random-init weights give noise masks, so both implementations replace the decoder's
logits with the true cells' (after running the real decoder): see probe.py.

Groups of cases (all of them by default; `--only` picks by name):
  speed      2048² × 100 and 4096² × 200 against the existing algorithm, and more objects;
  scale      Auto at 4096², 16384² and 32768² with 150 cells: peak memory by frame size;
  timelapse  300 frames × 50 cells, 512² each, no model (the true cells' logits): time
             per frame and memory from the first frame to the last.
  throughput the job's own work where the model is free (no model, the true cells'
             logits): cost per extra object at 4096² (16 vs 4000 cells) in both modes, and
             the CPU time of the job's main process per extra object (from its job log,
             the free model's own time left out), Auto on 1 CPU against 2 (taskset; the
             embedded server on the first CPU in all of these), Auto at 2048² × 100 with
             150 ms added to every region read, and real random-init SAM2's noise masks
             against the same run with the true cells' masks (Whole frame 4096² × 200).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine_lines  # noqa: E402
from benchmarks.workload import LOW_RES, Workload, make_workload  # noqa: E402

CHECKPOINT_DIR = REPO / "benchmarks" / "checkpoints"  # ignored by git (`checkpoints/`)
CONFIGS = {"tiny": ("sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml"),
           "small": ("sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml")}
WHOLE, AUTO, EXISTING = "ours Whole frame", "ours Auto", "existing"
WHOLE_FP32, AUTO_FP32 = "ours Whole frame fp32", "ours Auto fp32"  # bf16 off (BENCH_PRECISION=fp32)
IMPLEMENTATIONS = (WHOLE, AUTO, WHOLE_FP32, AUTO_FP32, EXISTING)
PADDING, SMOOTHING = 1.0, 0.7
EXTRA_FIELDS: dict = {}  # interface fields every case adds (--allow-overlaps)
TIMEOUT = 1800
NO_MODEL = "no model"


@dataclass(frozen=True)
class Case:
    size: int
    count: int
    model: str
    implementations: tuple[str, ...] = (WHOLE, AUTO, EXISTING)
    frames: int = 1
    group: str = "speed"
    cpus: int | None = None       # run under `taskset` on this many CPUs
    region_delay: float = 0.0     # seconds the server adds to every region read
    noise_masks: bool = False     # keep the random-init model's own masks
    server_on_first_cpu: bool = False  # the embedded server's threads on CPU 0 only

    @property
    def name(self) -> str:
        if self.frames > 1:
            name = f"{self.frames} frames × {self.count} cells, {self.size}², {self.model}"
        else:
            name = f"{self.size}² × {self.count} {self.model}"
        if self.cpus:
            name += f", {self.cpus} CPU"
        if self.region_delay:
            name += f", +{1000 * self.region_delay:.0f} ms per region read"
        if self.noise_masks:
            name += ", noise masks"
        return name


QUICK = [Case(1024, 100, "tiny")]
SPEED = [
    Case(1024, 100, "tiny"),
    Case(2048, 100, "tiny", (WHOLE, AUTO, WHOLE_FP32, AUTO_FP32, EXISTING)),
    Case(4096, 200, "tiny"),
    Case(2048, 1000, "tiny", (WHOLE,)),
    Case(4096, 1000, "tiny", (WHOLE,)),
    Case(2048, 100, "small", (WHOLE, AUTO, EXISTING)),
]
SCALE = [Case(size, 150, "tiny", (AUTO,), group="scale") for size in (4096, 16384, 32768)]
TIMELAPSE = [Case(512, 50, NO_MODEL, (AUTO,), frames=300, group="timelapse")]
REGION_DELAY = 0.15
THROUGHPUT = [
    *(Case(4096, count, NO_MODEL, (WHOLE, AUTO), group="throughput", server_on_first_cpu=True) for count in (16, 4000)),
    *(Case(4096, count, NO_MODEL, (AUTO,), group="throughput", cpus=1, server_on_first_cpu=True) for count in (16, 4000)),
    *(Case(2048, 100, NO_MODEL, (AUTO,), group="throughput", region_delay=delay) for delay in (0.0, REGION_DELAY)),
    *(Case(4096, 200, "tiny", (WHOLE,), group="throughput", noise_masks=noise) for noise in (False, True)),
]
# The GPU table is benchmarks/gpu_table.py (benchmarks/gpu.sh), built on run_case.
DEFAULT = SPEED + SCALE + TIMELAPSE + THROUGHPUT


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
    scales: list[float] = field(default_factory=list)  # image pixels per mask pixel, per object
    frames: list[dict] = field(default_factory=list)   # time-lapse: per frame, seconds and RSS
    note: str = ""
    region_reads: int = 0              # tiles/region requests the run made
    load: float = 0.0                  # 1-minute load average after the run
    main_cpu: float = float("nan")     # CPU seconds of the worker's main process (its job log)
    main_cpu_stages: dict[str, float] = field(default_factory=dict)  # ... of the stages it ran
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


def parameters(dataset_id: str, model: str, resolution: str, frames: int) -> dict:
    return {
        "datasetId": dataset_id, "type": "segmentation", "id": "bench", "name": "SAM2 Refiner",
        "image": "annotations/sam2_refine_worker:latest", "channel": 0,
        "assignment": {"XY": 0, "Z": 0, "Time": 0}, "tile": {"XY": 0, "Z": 0, "Time": 0}, "tags": ["refined"],
        "connectTo": {"tags": [], "layer": None, "channel": None},
        "workerInterface": {
            "SAM2 Refiner": "", "Batch XY": "", "Batch Z": "", "Batch Time": f"1-{frames}" if frames > 1 else "",
            "Tag of objects to refine": ["rough"], "Model": CONFIGS["tiny" if model == NO_MODEL else model][0],
            "Resolution": resolution, "Delete original annotations": False, "Padding": PADDING,
            "Smoothing": SMOOTHING, "Doubtful refinements": "Accept anyway", **EXTRA_FIELDS,
        },
        "scales": {},
    }


@dataclass
class Finished:
    returncode: int
    seconds: float
    rss_mb: float
    lines: list[tuple[float, str, float]]  # arrival time, stdout line, RSS (MB) then
    started: float


# Runs the worker as its own child and writes its wall time and peak RSS to argv[1]. The
# peak must not be taken from the benchmark process's own child: Python starts children
# with vfork, and Linux then counts the parent's peak RSS (here gigabytes of frames held by
# the embedded server) in the child's ru_maxrss. This launcher is a small parent.
LAUNCHER = (
    "import json, resource, subprocess, sys, time; started = time.time(); clock = time.perf_counter(); "
    "code = subprocess.run(sys.argv[2:]).returncode; seconds = time.perf_counter() - clock; "
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "open(sys.argv[1], 'w').write(json.dumps({'started': started, 'seconds': seconds, 'peak_kib': peak})); "
    "sys.exit(code)"
)


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            found = children.read().split()
    except OSError:
        return None
    return int(found[0]) if found else None


def run_process(command: list[str], env: dict, scratch: Path, name: str, timeout: float = TIMEOUT) -> Finished:
    """Run to exit through LAUNCHER: the worker's wall seconds and peak RSS, its stdout
    lines with their arrival times and the worker's RSS when each arrived."""
    lines: list[tuple[float, str, float]] = []
    measured = scratch / f"{name}.measured.json"
    measured.unlink(missing_ok=True)
    with open(scratch / f"{name}.stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(measured), *command], stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, env=env, cwd=REPO)
        killer = threading.Timer(timeout, process.kill)
        killer.start()

        def read() -> None:
            worker = None
            for line in process.stdout:
                worker = worker or child_pid(process.pid)
                lines.append((time.time(), line, rss_mb(worker) if worker else 0.0))

        reader = threading.Thread(target=read)
        reader.start()
        process.wait()
        killer.cancel()
        reader.join()
    result = json.loads(measured.read_text()) if measured.is_file() else {"started": 0, "seconds": float("nan"),
                                                                        "peak_kib": float("nan")}
    return Finished(process.returncode, result["seconds"], result["peak_kib"] / 1024, lines, result["started"])


def worker_main_cpu(stderr: str) -> tuple[float, dict[str, float]]:
    """The worker's main-process CPU seconds from its job log, in all and by stage:
    "main process CPU seconds: 1.83 (fetch 0.05, decode 0.19, review 0.03, write 0.30)"."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("main process CPU seconds: "):
            total, _, stages = line.split(": ", 1)[1].partition(" (")
            by_stage = {}
            for part in filter(None, stages.rstrip(")").split(", ")):
                name, _, value = part.rpartition(" ")
                by_stage[name] = float(value)
            return float(total), by_stage
    return float("nan"), {}


def worker_stage_seconds(stderr: str) -> dict[str, float]:
    """The worker's own stage clock from its job log: "stage seconds (...): fetch 0.81, ..."."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("stage seconds"):
            stages = {}
            for part in line.split("): ", 1)[1].split(", "):
                name, _, value = part.rpartition(" ")
                stages[name] = float(value)
            return stages
    return {}


def stages_of(finished: Finished, timings: dict, stderr: str = "") -> dict[str, float]:
    """Our worker's stages: its own clock (outline and review as geometry, write-back as
    upload, summed over the threads and processes, which overlap), the probe's for the rest."""
    seconds, marks = timings.get("seconds", {}), timings.get("marks", {})
    worker = worker_stage_seconds(stderr)
    stages = {
        "to_first_encode": marks.get("first_encode", finished.started) - finished.started,
        "model": seconds.get("model", 0.0),
        "fetch": worker.get("fetch", seconds.get("fetch_image", 0.0)),
        "encode": seconds.get("encode", 0.0),
        "decode": seconds.get("decode", 0.0),
        "geometry": worker.get("outline", 0.0) + worker.get("review", 0.0) or seconds.get("geometry", 0.0),
        "upload": worker.get("write", seconds.get("upload", 0.0)),
        "substitute": seconds.get("substitute", 0.0),
    }
    stages.update({f"stage:{name}": value for name, value in worker.items()})
    if "after_encode" in seconds:
        stages["after_encode"] = seconds["after_encode"]
    if "exit" in marks:  # interpreter shut-down after the worker's last line of code
        stages["teardown"] = finished.started + finished.seconds - marks["exit"]
    return stages


def frame_records(finished: Finished) -> list[dict]:
    """Per finished location (the worker's "Saved ..." progress line): seconds since the
    previous one, and the worker's RSS when it arrived."""
    records, previous = [], None
    for arrived, line, rss in finished.lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "progress" in message and str(message.get("info", "")).startswith("Saved "):
            if previous is not None:
                records.append({"seconds": arrived - previous, "rss_mb": rss})
            previous = arrived
    return records


def mask_memory_gb(workload: Workload) -> float:
    """What the existing algorithm keeps: one float32 full-frame mask per object."""
    return workload.count * workload.size * workload.size * 4 / 1e9


def available_gb() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def add_dataset(server, frame_count: int, workload: Workload) -> str:
    """A dataset of `frame_count` time points of the workload's frame, each with its outlines."""
    import numpy as np

    frames = np.broadcast_to(workload.image, (frame_count, *workload.image.shape))
    dataset_id = server.add_dataset(frames[np.newaxis, np.newaxis, :, np.newaxis])
    for time_point in range(frame_count):
        for outline in workload.outlines:
            server.add_annotation(dataset_id, outline, tags=["rough"], location={"XY": 0, "Z": 0, "Time": time_point})
    return dataset_id


def run_case(server, case: Case, workload: Workload, implementation: str, scratch: Path, model_masks: bool) -> Result:
    if implementation == EXISTING and mask_memory_gb(workload) > 0.7 * available_gb():
        return Result(case.name, implementation, case.count, -1, float("nan"), float("nan"), 0,
                      note=f"skipped: needs {mask_memory_gb(workload):.0f} GB of masks, {available_gb():.0f} GB free")
    dataset_id = add_dataset(server, case.frames, workload)
    resolution = "Auto" if implementation in (AUTO, AUTO_FP32) else "Whole frame"
    script = "benchmarks/existing.py" if implementation == EXISTING else "entrypoint.py"
    command = [sys.executable, str(REPO / script), "--apiUrl", server.url, "--token", server.token,
               "--request", "compute", "--parameters",
               json.dumps(parameters(dataset_id, case.model, resolution, case.frames)), "--datasetId", dataset_id]
    cells_path, timings_path = scratch / "cells.npz", scratch / "timings.json"
    workload.cells.save(cells_path)
    timings_path.unlink(missing_ok=True)
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(CHECKPOINT_DIR), "PYTHONUNBUFFERED": "1",
           "SAM2_REFINE_PREDICTOR": "benchmarks.probe:predictor",
           "BENCH_CELLS": str(cells_path), "BENCH_TIMINGS": str(timings_path)}
    if implementation in (WHOLE_FP32, AUTO_FP32):
        env["BENCH_PRECISION"] = "fp32"
    if case.model == NO_MODEL:
        env["BENCH_MODEL"] = "none"
    if model_masks or case.noise_masks:  # the random-init model's own (noise) masks
        env.pop("BENCH_CELLS", None)
    if case.cpus or case.server_on_first_cpu:  # the worker on its own CPUs, whatever the server's
        command = ["taskset", "-c", ",".join(str(cpu) for cpu in range(case.cpus or len(os.sched_getaffinity(0)))),
                   *command]
    if case.region_delay:
        server.inject_fault("GET", r"tiles/region$", delay=case.region_delay)
    reads_before = sum(1 for entry in server.request_log if entry[1].endswith("tiles/region"))
    name = implementation.replace(" ", "_")
    stderr_path = scratch / f"{name}.stderr"
    try:
        finished = run_process(command, env, scratch, name)
    finally:
        server.clear_faults()
    region_reads = sum(1 for entry in server.request_log if entry[1].endswith("tiles/region")) - reads_before
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    created = sum(1 for a in server.annotations(dataset_id) if "refined" in a.get("tags", []))
    note = ""
    if finished.returncode != 0:
        note = f"exit {finished.returncode}: {stderr_path.read_text()[-300:]!r}"
    stderr = stderr_path.read_text()
    return Result(case.name, implementation, case.count * case.frames, finished.returncode, finished.seconds,
                  finished.rss_mb, created, stages_of(finished, timings, stderr),
                  timings.get("calls", {}),
                  timings.get("values", {}).get("image_px_per_mask_px", []), frame_records(finished), note,
                  region_reads=region_reads, main_cpu=worker_main_cpu(stderr)[0],
                  main_cpu_stages=worker_main_cpu(stderr)[1])


def median_run(runs: list[Result]) -> Result:
    """The run with the median total (the upper one of two); all totals kept for the record."""
    ordered = sorted(runs, key=lambda r: (r.returncode != 0, r.total))
    chosen = ordered[len(ordered) // 2] if all(r.returncode == 0 for r in runs) else ordered[-1]
    chosen.all_totals = [round(r.total, 2) for r in runs]
    return chosen


def scale_text(scales: list[float]) -> str:
    if not scales:
        return ""
    return f"{statistics.median(scales):.2g} ({max(scales):.2g})"


def format_table(results: list[Result]) -> str:
    header = ("| workload | implementation | total s | ms/object | to first encode s (model) | fetch | encode s (runs) | "
              "image px per mask px: median (max) | decode | geometry | upload | exit | peak RSS MB | made | "
              "vs existing | load |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    existing = {r.case: r for r in results if r.implementation == EXISTING and r.returncode == 0}
    for r in results:
        if r.returncode != 0:
            lines.append(f"| {r.case} | {r.implementation} | {r.note} |" + " |" * 13)
            continue
        s = r.stages
        base = existing.get(r.case)
        ratio = ""
        if base is not None and r.implementation != EXISTING:
            speed = base.total / r.total
            ratio = f"{speed:.2f}× as fast"
        lines.append(
            f"| {r.case} | {r.implementation} | {r.total:.1f} | {1000 * r.total / r.count:.0f} | "
            f"{s['to_first_encode']:.1f} ({s['model']:.1f}) | {s['fetch']:.1f} | "
            f"{s['encode']:.1f} ({r.calls.get('encode', 0)}) | {scale_text(r.scales)} | {s['decode']:.1f} | "
            f"{s['geometry']:.2f} | {s['upload']:.2f} | {s.get('teardown', float('nan')):.2f} | {r.rss_mb:.0f} | "
            f"{r.created}/{r.count} | {ratio} | {r.load:.2f} |"
        )
    return "\n".join(lines)


def timelapse_lines(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        if not r.frames or r.returncode != 0:
            continue
        first, last = r.frames[:30], r.frames[-30:]
        median = lambda records, key: statistics.median(x[key] for x in records)  # noqa: E731
        out.append(
            f"{r.case}, {r.implementation}: {len(r.frames) + 1} frames saved one by one; seconds per frame, median of "
            f"frames 2-31 {median(first, 'seconds'):.3f}, of the last 30 {median(last, 'seconds'):.3f}; worker RSS "
            f"at frame 31 {first[-1]['rss_mb']:.0f} MB, at the last frame {last[-1]['rss_mb']:.0f} MB, "
            f"peak {r.rss_mb:.0f} MB"
        )
    return out


def marginal_lines(results: list[Result]) -> list[str]:
    """Per additional object once the model is loaded and the window encoded, vs the decoder alone."""
    out = []
    for r in results:
        s = r.stages
        if r.returncode != 0 or r.implementation == EXISTING or NO_MODEL in r.case or "after_encode" not in s:
            continue
        per_object = (s["after_encode"] - s["substitute"]) / r.count
        decoder = s["decode"] / r.count
        out.append(f"{r.case}, {r.implementation}: {1000 * per_object:.1f} ms per object after encoding, "
                   f"decoder alone {1000 * decoder:.1f} ms")
    return out


def target_lines(results: list[Result]) -> list[str]:
    by = {(r.case, r.implementation): r for r in results if r.returncode == 0}
    out = []
    for implementation, case, goal in ((WHOLE, "2048² × 100 tiny", 2.0), (WHOLE, "4096² × 200 tiny", 6.0),
                                       (AUTO, "2048² × 100 tiny", 0.5)):
        ours, base = by.get((case, implementation)), by.get((case, EXISTING))
        if ours and base:
            speed = base.total / ours.total
            out.append(f"{implementation} {case}: {speed:.2f}× the existing algorithm's speed (target >= {goal}×): "
                       f"{'MET' if speed >= goal else 'MISSED'}")
    rss = sorted((r.count, r.rss_mb) for r in results if r.implementation == WHOLE and r.returncode == 0
                 and r.case.startswith("4096²") and "tiny" in r.case)
    if rss:
        text = ", ".join(f"{count} objects {mb:.0f} MB" for count, mb in rss)
        out.append(f"Peak RSS, {WHOLE} 4096² tiny: {text} (target <= 2500 MB, flat): "
                   f"{'MET' if max(mb for _, mb in rss) <= 2500 else 'MISSED'}")
    scale = [(r.case, r.rss_mb) for r in results if r.case.endswith("× 150 tiny") and r.returncode == 0]
    if scale:
        out.append("Peak RSS, Auto, 150 cells: " + ", ".join(f"{case.split(' ')[0]} {mb:.0f} MB" for case, mb in scale)
                   + f" (target <= 3072 MB at 16384²)")
    return out


def throughput_lines(results: list[Result]) -> list[str]:
    """The issue-17 figures: cost per extra object, CPUs, hidden waiting, noise masks."""
    by = {(r.case, r.implementation): r for r in results if r.returncode == 0}
    out = []

    def per_extra_object_ms(implementation: str, suffix: str = "") -> float | None:
        few, many = by.get((f"4096² × 16 {NO_MODEL}{suffix}", implementation)), by.get(
            (f"4096² × 4000 {NO_MODEL}{suffix}", implementation))
        if few is None or many is None:
            return None
        return 1000 * (many.total - few.total) / (many.count - few.count)

    def main_cpu_per_extra_object_ms(implementation: str) -> tuple[float, dict[str, float]] | None:
        """The main process's CPU per extra object, ms: in all, and by the stages it ran."""
        few, many = by.get((f"4096² × 16 {NO_MODEL}", implementation)), by.get((f"4096² × 4000 {NO_MODEL}", implementation))
        if few is None or many is None:
            return None
        extra = many.count - few.count
        stages = {name: 1000 * (seconds - few.main_cpu_stages.get(name, 0.0)) / extra
                  for name, seconds in many.main_cpu_stages.items()}
        return 1000 * (many.main_cpu - few.main_cpu) / extra, stages

    for implementation, goal in ((WHOLE, 0.4), (AUTO, 0.8)):
        cost = per_extra_object_ms(implementation)
        if cost is not None:
            out.append(f"{implementation}, free model, 4096²: {cost:.2f} ms per extra object (16 vs 4000 cells; "
                       f"target <= {goal} ms): {'MET' if cost <= goal else 'MISSED'}")
        main = main_cpu_per_extra_object_ms(implementation)
        if main is not None:
            total, stages = main
            # The decode stage holds the free model's own work (the probe's true-cell logits).
            own = total - stages.get("decode", 0.0)
            split = ", ".join(f"{name} {ms:.3f}" for name, ms in stages.items() if abs(ms) >= 0.0005)
            out.append(f"{implementation}, free model, 4096²: the job's main process {total:.3f} ms CPU per extra "
                       f"object (16 vs 4000 cells; by stage: {split}), {own:.3f} ms outside the decode stage, which "
                       f"holds the free model's logits (target <= 0.15 ms): {'MET' if own <= 0.15 else 'MISSED'}")
    two, one = per_extra_object_ms(AUTO), per_extra_object_ms(AUTO, ", 1 CPU")
    if two is not None and one is not None:
        out.append(f"{AUTO}, free model, 4096²: {one:.2f} ms per extra object on 1 CPU, {two:.2f} ms on 2: "
                   f"{one / two:.2f}× (target >= 1.6×): {'MET' if one / two >= 1.6 else 'MISSED'}")
    plain = by.get((f"2048² × 100 {NO_MODEL}", AUTO))
    slow = by.get((f"2048² × 100 {NO_MODEL}, +{1000 * REGION_DELAY:.0f} ms per region read", AUTO))
    if plain and slow and slow.region_reads:
        waiting = slow.region_reads * REGION_DELAY
        hidden = 1 - (slow.total - plain.total) / waiting
        out.append(f"{AUTO}, free model, 2048² × 100, +{1000 * REGION_DELAY:.0f} ms per region read: "
                   f"{slow.total - plain.total:+.2f} s for {slow.region_reads} reads ({waiting:.2f} s of waiting), "
                   f"{100 * hidden:.0f} % hidden (target >= 65 %): {'MET' if hidden >= 0.65 else 'MISSED'}")
    true, noise = by.get(("4096² × 200 tiny", WHOLE)), by.get(("4096² × 200 tiny, noise masks", WHOLE))
    if true and noise:
        ratio = noise.total / true.total
        out.append(f"{WHOLE}, random-init tiny, 4096² × 200: noise masks {noise.total:.1f} s, true masks "
                   f"{true.total:.1f} s: {ratio:.2f}× (target <= 1.5×): {'MET' if ratio <= 1.5 else 'MISSED'}")
    return out


def start_server(case: Case):
    """A fresh embedded server; with `server_on_first_cpu`, its threads run on CPU 0 only
    (they inherit the affinity of the thread that starts them, which then gets all back)."""
    from nimbus_server import NimbusServer

    if not case.server_on_first_cpu:
        return NimbusServer().__enter__()
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})
    try:
        return NimbusServer().__enter__()
    finally:
        os.sched_setaffinity(0, everything)


def load_tiling(path: Path | None):
    """sam2_refine.tiling, or another version of it (e.g. `git show REV:sam2_refine/tiling.py`)."""
    if path is None:
        from sam2_refine import tiling

        return tiling
    import sam2_refine  # noqa: F401  (the parent package of the relative imports)

    spec = importlib.util.spec_from_file_location("sam2_refine.tiling_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def windows_report(path: Path | None) -> list[str]:
    """Auto's encoder runs and image pixels per mask pixel at each speed workload, planned only."""
    from sam2_refine.engine import prompt_box

    tiling = load_tiling(path)
    out = [f"| workload | encoder runs | image px per mask px: median (max) | tiling |", "|---|---|---|---|"]
    for case in [c for c in SPEED if c.model == "tiny"] + SCALE:
        workload = make_workload(case.size, case.count)
        boxes = [prompt_box(outline, case.size, case.size) for outline in workload.outlines]
        windows = tiling.auto_windows(boxes, case.size, case.size)
        scales = [max(w.width, w.height) / LOW_RES for w, members in windows for _ in members]
        out.append(f"| {case.size}² × {case.count} | {len(windows)} | {scale_text(scales)} | {path or 'current'} |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1024² × 100, tiny (~1 min)")
    parser.add_argument("--only", nargs="*", help="cases whose name or group contains one of these, e.g. '4096² × 200'")
    parser.add_argument("--implementations", nargs="*", choices=IMPLEMENTATIONS, help="run only these")
    parser.add_argument("--model-masks", action="store_true",
                        help="keep the random-init model's noise masks instead of the true cells' (see probe.py)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation; the table shows the median run")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--windows", nargs="?", const="current", metavar="TILING_PY",
                        help="only plan Auto's windows (current tiling.py, or the file given) and print their cost")
    parser.add_argument("--dataset-scale", action="store_true",
                        help="only the 5-frame job on datasets of 5 and 300 frames (benchmarks/dataset_scale.py)")
    parser.add_argument("--allow-overlaps", action="store_true",
                        help="tick 'Allow overlapping outlines' (touching outlines are not kept apart)")
    args = parser.parse_args()
    if args.allow_overlaps:
        EXTRA_FIELDS["Allow overlapping outlines"] = True
    if args.windows:
        print("\n".join(windows_report(None if args.windows == "current" else Path(args.windows))))
        return 0
    if args.dataset_scale:
        from benchmarks.dataset_scale import dataset_scale_lines

        ensure_checkpoints()
        print(f"$ .venv/bin/python benchmarks/run.py {' '.join(sys.argv[1:])}")
        for line in machine_lines():
            print(line)
        print("\n".join(dataset_scale_lines(run_process, parameters, CHECKPOINT_DIR, args.repeat)))
        return 0
    cases = QUICK if args.quick else DEFAULT
    if args.only:
        cases = [c for c in cases if any(o in c.name or o == c.group for o in args.only)]

    ensure_checkpoints()
    print(f"$ .venv/bin/python benchmarks/run.py {' '.join(sys.argv[1:])}")
    for line in machine_lines():
        print(line)
    results: list[Result] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sam2-bench-") as scratch:
        for case in cases:
            server = start_server(case)  # one per case: a 32768² frame is 2 GB of the server's memory
            workload = make_workload(case.size, case.count)
            implementations = [i for i in case.implementations if not args.implementations or i in args.implementations]
            runs: dict[str, list[Result]] = {i: [] for i in implementations}
            for _ in range(args.repeat):  # interleaved, so slow spells of other jobs hit all alike
                for implementation in implementations:
                    result = run_case(server, case, workload, implementation, Path(scratch), args.model_masks)
                    result.load = os.getloadavg()[0]
                    runs[implementation].append(result)
                    print(f"[{time.perf_counter() - started:6.0f} s] {case.name} {implementation}: "
                          f"{result.total:.1f} s, {result.rss_mb:.0f} MB, load {result.load:.2f} {result.note}",
                          file=sys.stderr, flush=True)
            for implementation in implementations:
                results.append(median_run(runs[implementation]))
            server.__exit__(None, None, None)
            del workload, server
            gc.collect()  # the next case's frames should not sit on top of this one's
    print(f"- finished: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"load average (1 min) {os.getloadavg()[0]:.2f}")
    print()
    print(format_table(results))
    print()
    if args.repeat > 1:
        for r in results:
            print(f"- {r.case}, {r.implementation}: totals of the {args.repeat} runs {r.all_totals} s")
    lines = timelapse_lines(results) + marginal_lines(results) + target_lines(results) + throughput_lines(results)
    for line in lines:
        print(f"- {line}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.returncode <= 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
