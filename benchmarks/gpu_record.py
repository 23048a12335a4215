"""The GPU run's results under $OUT, written as each step goes (benchmarks/gpu.sh).

    python3 benchmarks/gpu_record.py step OUT NAME STATUS SECONDS BUDGET   # gpu.sh, after each step
    python3 benchmarks/gpu_record.py summary OUT                            # print summary.md

`OUT/results.json` holds one section per step ("steps", "device", "versions", "checks",
"micro", "table", "goals"); each step rewrites it whole (write and rename), so a step killed
at its budget leaves the sections before it intact. `OUT/summary.md` is rendered from it
after every write. The device tool brings back at most 8 files from $OUT: gpu.sh writes
these two and one log per step (setup, checks, tests, micro, table).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

RESULTS, SUMMARY = "results.json", "summary.md"


def load(out: Path) -> dict:
    path = Path(out) / RESULTS
    return json.loads(path.read_text()) if path.is_file() else {}


def save(out: Path, results: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{RESULTS}.partial"
    partial.write_text(json.dumps(results, indent=1, default=str))
    os.replace(partial, out / RESULTS)
    partial = out / f".{SUMMARY}.partial"
    partial.write_text(render(results))
    os.replace(partial, out / SUMMARY)


def update(out: Path, section: str, value: Any) -> None:
    """Set one section of results.json (and re-render summary.md)."""
    results = load(out)
    results[section] = value
    save(out, results)


def append(out: Path, section: str, item: Any) -> None:
    """Add an item to a list section of results.json."""
    results = load(out)
    results.setdefault(section, []).append(item)
    save(out, results)


def record_step(out: Path, name: str, status: str, seconds: float, budget: float) -> None:
    results = load(out)
    results.setdefault("steps", {})[name] = {"status": status, "seconds": round(seconds, 1), "budget": budget,
                                             "log": f"{name}.log"}
    save(out, results)


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(cell) for cell in row) + " |" for row in rows]
    return lines


def _attention_lines(entries: list[dict]) -> list[str]:
    """One row per input and batch, one column per backend; each error text once, by number."""
    backends = list(dict.fromkeys(m["backend"] for m in entries))
    errors = list(dict.fromkeys(m["error"] for m in entries if m.get("error")))
    cells: dict[tuple, dict[str, str]] = {}
    for m in entries:
        cell = f"{m['ms']:.3f}" if m.get("ms") is not None else f"error {errors.index(m['error']) + 1}"
        cells.setdefault((m["what"], m["batch"]), {})[m["backend"]] = cell
    lines = _table(["what", "boxes", *backends],
                   [[what, batch, *(row.get(b, "") for b in backends)] for (what, batch), row in cells.items()])
    return lines + [""] + [f"- error {k}: {text}" for k, text in enumerate(errors, 1)] if errors else lines


def render(results: dict) -> str:
    """summary.md: the device, each step's status, the checks, the measurements, the table, the goals."""
    lines = ["# benchmarks/gpu.sh" + (" (dry run on the CPU: no figure here is a GPU's)" if results.get("dry_run") else "")]
    device = results.get("device", {})
    if device:
        lines.append("")
        lines += [f"- {key}: {value}" for key, value in device.items()]
    steps = results.get("steps", {})
    if steps:
        lines += ["", "## Steps", ""]
        lines += _table(["step", "status", "seconds", "budget s", "log"],
                        [[name, s["status"], s["seconds"], s["budget"], s["log"]] for name, s in steps.items()])
    versions = [v for v in results.get("versions", []) if v.get("installed") != v.get("pinned")]
    if results.get("versions"):
        lines += ["", "## Versions that differ from the pins", ""]
        lines += [f"- {v['name']}: pinned {v['pinned']}, installed {v['installed']} ({v['source']})" for v in versions] \
            or ["- none"]
    if results.get("checks"):
        lines += ["", "## CUDA checks (benchmarks/gpu.py)", ""]
        lines += [f"- {c['status'].upper()} {c['name']}: {c['detail']}" for c in results["checks"]]
    micro = results.get("micro", {})
    if micro.get("decode_batch"):
        lines += ["", "## Decode batches (one window, tiny)", ""]
        lines += _table(["workload", "upscaling", "boxes per call", "ms per box", "peak MB", "note"],
                        [[m.get("workload"), m.get("upscaling"), m["batch"], m.get("ms_per_box"), m.get("peak_mb"),
                          m.get("error", "")] for m in micro["decode_batch"]])
    if micro.get("encode_batch"):
        lines += ["", "## Encoder batches (1024² model input)", ""]
        lines += _table(["model", "windows per call", "ms per window", "peak MB per window", "note"],
                        [[m["model"], m["batch"], m.get("ms_per_window"), m.get("peak_mb_per_window"),
                          m.get("error", "")] for m in micro["encode_batch"]])
    if micro.get("attention"):
        lines += ["", "## Attention backends (torch.nn.attention.sdpa_kernel): ms per call", ""]
        lines += _attention_lines(micro["attention"])
    if results.get("table"):
        lines += ["", "## GPU table (benchmarks/gpu_table.py; masks after the model are the true cells')", ""]
        lines += _table(
            ["workload", "implementation", "objects/s after start-up", "objects/s end to end", "start-up s",
             "total s", "encode s (calls)", "decode s", "model s", "job / model", "peak GPU MB", "peak RSS MB",
             "made", "vs existing", "note"],
            [[r["workload"], r["implementation"], r.get("objects_per_s_after_startup"),
              r.get("objects_per_s_end_to_end"), r.get("startup_s"), r.get("total_s"),
              f"{_number(r.get('encode_s'), 2)} ({r.get('encode_calls', '')})", _number(r.get("decode_s"), 2),
              _number(r.get("model_s"), 2), _number(r.get("job_over_model"), 2), r.get("peak_gpu_mb"),
              r.get("peak_rss_mb"), f"{r.get('created', '')}/{r.get('count', '')}", r.get("vs_existing", ""),
              r.get("note", "")] for r in results["table"]])
        split = [r for r in results["table"] if r.get("worker_stages")]
        if split:
            lines += ["", "Stage seconds from the worker's own clock (summed over threads and processes, which overlap):", ""]
            lines += [f"- {r['workload']}, {r['implementation']}: " +
                      ", ".join(f"{k} {v:.2f}" for k, v in r["worker_stages"].items()) for r in split]
    if results.get("goals"):
        lines += ["", "## Goals (issue 26)", ""]
        lines += [f"- {goal}" for goal in results["goals"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "step":
        _, out, name, status, seconds, budget = argv
        record_step(Path(out), name, status, float(seconds), float(budget))
        return 0
    if len(argv) == 2 and argv[0] == "summary":
        print(render(load(Path(argv[1]))))
        return 0
    if len(argv) >= 2 and argv[0] == "start":
        out = Path(argv[1])
        save(out, {"dry_run": "--dry-run" in argv[2:], "command": " ".join(argv[2:]), "steps": {}})
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
