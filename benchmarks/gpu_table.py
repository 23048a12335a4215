"""The GPU table: benchmarks/gpu.sh's last step (issue 26's "Must show").

    python3 benchmarks/gpu_table.py --out OUT [--budget SECONDS] [--dry-run]

Our worker end to end (`entrypoint.py --request compute` as a subprocess against the embedded
server, as `make bench` runs it: benchmarks/run.py's run_case) at 2048² × 100 and × 1000 cells,
sam2.1 tiny and small, Resolution Whole frame and Auto, and the existing worker's algorithm
(benchmarks/existing.py, on the same GPU under its bf16 autocast) on the same frames. Random-init
weights: after the real decoder has run, its logits are replaced by the true cells' (probe.py),
so the outlines, review and write-back work on realistic masks. Per run:
- objects per second end to end, and after start-up (start-up = process start to the first
  encoder call: imports, reading the annotations, the first fetch, the model built meanwhile);
- the split by stage: the probe's synchronised encode and decode, the worker's own stage clock;
- the model's own time (encode + decode) against the job's after start-up;
- peak GPU memory (torch's allocator, in the worker) and peak RSS.
Runs go most wanted first (tiny at 2048² × 1000: issue 26's goals) and each is written to
results.json as it ends; a run is given what is left of the budget, at most RUN_CAP seconds,
and killed (with its process tree) when that is spent. `--dry-run`: the CPU, 512² × 20 cells,
tiny only (no figure is a GPU's).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_record  # noqa: E402
from benchmarks.run import AUTO, EXISTING, WHOLE, Case, Result, ensure_checkpoints, run_case  # noqa: E402
from benchmarks.workload import make_workload  # noqa: E402

SIZE, DRY_RUN_SIZE = 2048, 512
# (model, cells, implementation), most wanted first.
RUNS = [
    ("tiny", 1000, WHOLE), ("tiny", 1000, AUTO), ("tiny", 100, WHOLE), ("tiny", 100, AUTO), ("tiny", 100, EXISTING),
    ("small", 1000, WHOLE), ("small", 1000, AUTO), ("small", 100, WHOLE), ("small", 100, AUTO),
    ("small", 100, EXISTING), ("tiny", 1000, EXISTING),
]
DRY_RUNS = [("tiny", 20, WHOLE), ("tiny", 20, AUTO), ("tiny", 20, EXISTING)]
RUN_CAP, DRY_RUN_CAP = 60.0, 300.0
MIN_RUN = 10.0  # seconds: a run is not started with less left
# Issue 26's goals: tiny, 2048² × 1000, after start-up.
GOALS = {WHOLE: 5000.0, AUTO: 2000.0}
JOB_OVER_MODEL_MAX = 2.0


def process_tree(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (this table's server URL: the launcher and
    the worker of a run), and all their descendants."""
    parents, matched = {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker.encode() in cmdline:
            matched.append(int(entry.name))
    tree, frontier = set(matched), list(matched)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sorted(tree)


def kill_tree(marker: str) -> list[int]:
    killed = []
    for pid in process_tree(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def row(result: Result, model: str, size: int, count: int, timings: dict, seconds_allowed: float) -> dict:
    """One line of the table from run.py's Result and the probe's timings."""
    values = timings.get("values", {})
    entry = {"workload": f"{size}² × {count} {model}", "model": model, "size": size, "count": count,
             "implementation": result.implementation, "returncode": result.returncode, "created": result.created,
             "seconds_allowed": round(seconds_allowed, 1), "note": result.note[-300:]}
    if result.returncode != 0:
        return entry
    stages = result.stages
    startup = stages["to_first_encode"]
    after = max(result.total - startup, 1e-9)
    model_seconds = stages["encode"] + stages["decode"]
    windows = values.get("encode_windows", [])
    entry.update({
        "total_s": round(result.total, 2), "startup_s": round(startup, 2), "model_build_s": round(stages["model"], 2),
        "objects_per_s_end_to_end": round(count / result.total, 1), "objects_per_s_after_startup": round(count / after, 1),
        "encode_s": round(stages["encode"], 3), "encode_calls": result.calls.get("encode", 0),
        "encode_windows_per_call": windows, "decode_s": round(stages["decode"], 3),
        "decode_calls": result.calls.get("decode", 0), "substitute_s": round(stages["substitute"], 3),
        "model_s": round(model_seconds, 3), "job_after_startup_s": round(after, 3),
        "job_over_model": round(after / model_seconds, 2) if model_seconds > 0 else None,
        "peak_gpu_mb": round(values["gpu_peak_allocated_mb"][0]) if values.get("gpu_peak_allocated_mb") else None,
        "peak_gpu_reserved_mb": round(values["gpu_peak_reserved_mb"][0]) if values.get("gpu_peak_reserved_mb") else None,
        "peak_rss_mb": round(result.rss_mb), "exit_s": round(stages.get("teardown", float("nan")), 2),
        "stages": {k: round(v, 3) for k, v in stages.items() if not k.startswith("stage:")},
        "worker_stages": {k[len("stage:"):]: round(v, 3) for k, v in stages.items() if k.startswith("stage:")},
    })
    return entry


def compare_with_existing(rows: list[dict]) -> None:
    existing = {r["workload"]: r for r in rows if r["implementation"] == EXISTING and r.get("total_s")}
    for r in rows:
        base = existing.get(r["workload"])
        if base and r["implementation"] != EXISTING and r.get("total_s"):
            r["vs_existing"] = f"{base['total_s'] / r['total_s']:.1f}× as fast"


def goal_lines(rows: list[dict], size: int, count: int, dry_run: bool) -> list[str]:
    lines = []
    for implementation, goal in GOALS.items():
        found = [r for r in rows if r["implementation"] == implementation and r["model"] == "tiny"
                 and r["count"] == count and r["size"] == size and r.get("total_s")]
        if not found:
            lines.append(f"{implementation}, tiny, {size}² × {count}: not measured")
            continue
        r = found[0]
        rate, ratio = r["objects_per_s_after_startup"], r["job_over_model"]
        lines.append(f"{implementation}, tiny, {size}² × {count}, after start-up: {rate:.0f} objects/s (goal >= {goal:.0f}): "
                     f"{'MET' if rate >= goal else 'MISSED'}; the job {ratio}× the model's own time (goal <= "
                     f"{JOB_OVER_MODEL_MAX:.0f}×): {'MET' if ratio is not None and ratio <= JOB_OVER_MODEL_MAX else 'MISSED'}")
    if dry_run:
        lines = [f"(dry run on the CPU: no goal applies) {line}" for line in lines]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write results.json and summary.md here (gpu.sh: $OUT)")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for every run together")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, 512² × 20, tiny (no figure is a GPU's)")
    args = parser.parse_args()
    import torch

    from nimbus_server import NimbusServer

    if not torch.cuda.is_available() and not args.dry_run:
        print("no CUDA device: run this on a GPU machine, or with --dry-run")
        return 2
    deadline = time.monotonic() + args.budget
    size, runs, cap = (DRY_RUN_SIZE, DRY_RUNS, DRY_RUN_CAP) if args.dry_run else (SIZE, RUNS, RUN_CAP)
    environment = {"CUDA_VISIBLE_DEVICES": ""} if args.dry_run else {}
    os.environ.update(environment)  # the dry run keeps the workers on the CPU even where a GPU is
    ensure_checkpoints()
    if args.out:
        gpu_record.update(args.out, "table", [])
    rows: list[dict] = []
    servers: dict[int, tuple] = {}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="sam2-gpu-table-") as scratch:
        for model, count, implementation in runs:
            left = deadline - time.monotonic()
            if left < MIN_RUN:
                entry = {"workload": f"{size}² × {count} {model}", "model": model, "size": size, "count": count,
                         "implementation": implementation, "returncode": None, "note": "not run: budget spent"}
                print(f"- {entry['workload']}, {implementation}: not run, budget spent", flush=True)
                rows.append(entry)
                if args.out:
                    gpu_record.append(args.out, "table", entry)
                continue
            if count not in servers:
                server = NimbusServer().__enter__()
                servers[count] = (server, make_workload(size, count))
            server, workload = servers[count]
            allowed = min(cap, left)
            watchdog = threading.Timer(allowed, kill_tree, args=(server.url,))
            watchdog.start()
            started = time.monotonic()
            try:
                result = run_case(server, Case(size, count, model, (implementation,), group="gpu"), workload,
                                  implementation, Path(scratch), model_masks=False)
            finally:
                watchdog.cancel()
                kill_tree(server.url)  # a worker's strays, if any
            if time.monotonic() - started >= allowed and result.returncode != 0:
                result.note = f"killed after {allowed:.0f} s (its share of the budget); " + result.note
            timings_path = Path(scratch) / "timings.json"
            timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
            entry = row(result, model, size, count, timings, allowed)
            failed += result.returncode != 0
            rows.append(entry)
            compare_with_existing(rows)
            print(f"- {entry['workload']}, {implementation}: " + (
                f"{entry['objects_per_s_after_startup']:.0f} objects/s after start-up ({entry['startup_s']:.1f} s), "
                f"{entry['objects_per_s_end_to_end']:.0f} end to end ({entry['total_s']:.1f} s); encode "
                f"{entry['encode_s']:.2f} s in {entry['encode_calls']} calls {entry['encode_windows_per_call']}, decode "
                f"{entry['decode_s']:.2f} s; job/model {entry['job_over_model']}; peak GPU {entry['peak_gpu_mb']} MB, "
                f"RSS {entry['peak_rss_mb']} MB; made {entry['created']}/{count}"
                if entry.get("total_s") else f"FAILED: {entry['note']}"), flush=True)
            if args.out:
                gpu_record.update(args.out, "table", rows)
                gpu_record.update(args.out, "goals", goal_lines(rows, size, runs[0][1], args.dry_run))
        for server, _ in servers.values():
            server.__exit__(None, None, None)
    for line in goal_lines(rows, size, runs[0][1], args.dry_run):
        print(f"- {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
