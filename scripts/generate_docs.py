#!/usr/bin/env python3
"""Generate SAM2_REFINE.md, the worker's catalogue page, from its interface and labels.

    python scripts/generate_docs.py            # (re)write SAM2_REFINE.md   (make docs)
    python scripts/generate_docs.py --check    # exit 1 if SAM2_REFINE.md is stale

The parameter table comes from `sam2_refine.interface.build_interface`; the header
from the LABELs of the Dockerfile's final stage. The output is deterministic.
"""

from __future__ import annotations

import argparse
import html
import re
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sam2_refine import interface  # noqa: E402
from sam2_refine.review import ADVICE, MEANINGS  # noqa: E402

PAGE = ROOT / "SAM2_REFINE.md"
DOCKERFILE = ROOT / "Dockerfile"

# Two different model lists: the fields whose spec changes between them are filled
# in at run time, and are shown as such.
SAMPLE_MODELS = [
    "sam2.1_hiera_tiny.pt",
    "sam2.1_hiera_small.pt",
    "sam2.1_hiera_base_plus.pt",
    "sam2.1_hiera_large.pt",
]
OTHER_MODELS = ["placeholder.pt"]

FILES = [
    ("entrypoint.py", "Command-line entry the platform runs (`--request interface` or `compute`)"),
    ("sam2_refine/", "Worker logic -- `interface.py` defines the UI and the Docker labels"),
    ("Dockerfile", "Docker build configuration (x86_64 / production, NVIDIA CUDA)"),
    ("Dockerfile_M1", "ARM64 / Apple Silicon Docker configuration (CPU only)"),
    ("environment.yml", "Conda environment; installs `requirements.txt`"),
    ("requirements.txt", "Pinned Python dependencies (the only pin list)"),
    ("build_workers.sh", "Builds the image (and optionally runs the tests in it)"),
    ("scripts/download_weights.py", "Downloads and verifies the SAM2.1 checkpoints (`make weights`)"),
]


def logical_lines(text: str) -> list[str]:
    """Dockerfile instructions with `\\` continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse_labels(text: str) -> dict[str, str]:
    """The LABELs of the Dockerfile's last stage, in order."""
    labels: dict[str, str] = {}
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            labels = {}
        elif keyword.upper() == "LABEL":
            for token in shlex.split(rest):
                key, separator, value = token.partition("=")
                if not separator:
                    raise ValueError(f"LABEL without '=': {token!r}")
                labels[key] = value
    return labels


def parse_arg_default(text: str, name: str) -> str | None:
    """The default of the first `ARG name=...` in the Dockerfile, if any."""
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "ARG" and rest.startswith(f"{name}="):
            return shlex.split(rest)[0].partition("=")[2]
    return None


def cell(text: str) -> str:
    """Make text safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def html_to_markdown(value: str) -> str:
    value = re.sub(r"</?(i|em)>", "*", value)
    value = re.sub(r"</?(b|strong)>", "**", value)
    return html.unescape(re.sub(r"<br\s*/?>", "\n", re.sub(r"<(?!br)[^>]+>", "", value)))


def parameter_row(label: str, spec: dict[str, Any], runtime: bool) -> str:
    kind = spec["type"]
    name = f"**{label}** *(runtime)*" if runtime else f"**{label}**"
    required = "Yes" if spec.get("required") else ""
    default = "--" if runtime or "default" not in spec else f"`{number(spec['default'])}`"
    if runtime:
        options = "_runtime_"
    elif kind == "number" and "min" in spec and "max" in spec:
        options = f"{number(spec['min'])} - {number(spec['max'])} {spec.get('unit', '')}".strip()
        if "step" in spec:
            options += f" (step {number(spec['step'])})"
    elif kind == "select":
        options = ", ".join(f"`{item}`" for item in spec.get("items", []))
    else:
        options = "--"
    description = spec.get("tooltip") or spec.get("vueAttrs", {}).get("label", "")
    return f"| {name} | `{kind}` | {required} | {cell(default)} | {cell(options)} | {cell(description)} |"


def render(labels: dict[str, str], checkpoints: str | None) -> str:
    fields = interface.build_interface(SAMPLE_MODELS)
    other = interface.build_interface(OTHER_MODELS)
    ordered = sorted(fields.items(), key=lambda item: item[1].get("displayOrder", float("inf")))
    notes = [spec for _, spec in ordered if spec["type"] == "notes"]
    parameters = [(label, spec) for label, spec in ordered if spec["type"] != "notes"]
    gpu = labels.get("isGPUWorker", "").lower() in {"true", "1", "yes"}
    kind = "Property Worker" if "isPropertyWorker" in labels else "Annotation Worker"
    shipped = ", ".join(f"`sam2.1_hiera_{name}.pt`" for name in (checkpoints or "").split()) or "none"

    lines = [
        f"# {labels['interfaceName']}",
        "",
        f"**Type:** {kind}  ",
        f"**Annotation Shape:** `{labels.get('annotationShape', 'point')}`  ",
        f"**Interface Category:** {labels.get('interfaceCategory', 'Other Automated Tools')}  ",
        f"**GPU Support:** {'Yes (NVIDIA CUDA)' if gpu else 'No'}  ",
        "",
        "## Description",
        "",
        f"{labels.get('description', '').rstrip('.')}.",
        "",
        *[html_to_markdown(spec.get("value", "")) + "\n" for spec in notes],
        "## Interface Parameters",
        "",
        "| Parameter | Type | Required | Default | Range / Options | Description |",
        "|-----------|------|:--------:|---------|-----------------|-------------|",
        *[parameter_row(label, spec, spec != other[label]) for label, spec in parameters],
        "",
        "> **(runtime)** = option list is fetched at runtime: the `*.pt` files in "
        f"`${interface.CHECKPOINT_DIR_VARIABLE}` (default `{interface.DEFAULT_CHECKPOINT_DIR}`). "
        f"The default is `{interface.PREFERRED_MODEL}` when present, else the first file. "
        f"The Docker images ship {shipped} (build argument `SAM2_CHECKPOINTS`).",
        "",
        "## What the job reports",
        "",
        "Every refinement is checked against its original. One that fails a check is *doubtful*: "
        "it never replaces its original, and *Doubtful refinements* decides what is saved. When SAM2's "
        "mask for a box is doubtful or empty (and not too coarse at the resolution), its alternative "
        "masks for the same box are tried, best rated first, and the first that passes every check is used (counted as recovered). The job's "
        "summary and warnings count each original under one reason:",
        "",
        "| Reason | What it means | What to do |",
        "|--------|---------------|------------|",
        *[f"| {reason} | {cell(MEANINGS[reason])} | {cell(ADVICE.get(reason, ''))} |" for reason in MEANINGS],
        "",
        "## Running a job again",
        "",
        "Run the same job again (the same model, resolution, padding, smoothing, output tags and layer, and "
        "*Allow overlapping outlines* when ticked) and it "
        "continues where it stopped: each refined polygon carries a marker (`sam2Refine`) made of those settings "
        "and its original's id, so what was saved is neither refined nor created again, and originals left next to "
        "their refinement are replaced. Editing a refined polygon in the app keeps its marker. A polygon without "
        "the marker is never taken for a refinement, whatever its tags or position. An original is deleted only "
        "while its refined polygon exists: one deleted while the job runs keeps its original. Unless overlaps are "
        "allowed, new refinements yield to those an earlier run saved and accepted beside them, which are never "
        "edited.",
        "",
        "Every write the job makes lands in your undo history, as if you had made it (the platform keeps 10 "
        "entries a user, for an hour): your next undo in the app reverts the job's last write alone, for example "
        "bringing back one location's originals beside their refinements. Running the same job again then "
        "completes it cleanly.",
        "",
        "## Files",
        "",
        "| File | Description |",
        "|------|-------------|",
        *[f"| `{path}` | {cell(description)} |" for path, description in FILES],
        "",
        "## Building",
        "",
        "```bash",
        "./build_workers.sh sam2_refine",
        "```",
        "",
        "This builds `annotations/sam2_refine_worker:latest` with `Dockerfile`, or with the "
        "CPU-only `Dockerfile_M1` on arm64 or when `MAC_DEVELOPMENT_MODE=true`. "
        "`--build-and-run-tests` also builds the `test` stage and runs the test suite in it; "
        "`--no-cache` rebuilds every layer.",
        "",
        "---",
        "Generated by `scripts/generate_docs.py` (`make docs`) from `sam2_refine/interface.py` "
        "and the `Dockerfile` labels; do not edit by hand.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is not up to date")
    parser.add_argument("--output", type=Path, default=PAGE, help=f"default: {PAGE.name}")
    parser.add_argument("--dockerfile", type=Path, default=DOCKERFILE, help=f"default: {DOCKERFILE.name}")
    args = parser.parse_args(argv)

    dockerfile = args.dockerfile.read_text(encoding="utf-8")
    page = render(parse_labels(dockerfile), parse_arg_default(dockerfile, "SAM2_CHECKPOINTS"))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != page:
            print(f"{args.output} is stale; run `make docs` and commit it.", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date.")
        return 0
    args.output.write_text(page, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
