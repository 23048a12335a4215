"""`make demo`: the worker refining a sample dataset as the platform would run it.

Finds or fetches SAM2 weights (demo/weights.py), starts the embedded NimbusImage server with
a generated sample (two channels of cells, rough outlines tagged "rough"), runs `interface`
then `compute` through entrypoint.py with "Delete original annotations" on, reads back what
the job decided for each original, prints the counts and draws them in
./demo-output/before_after.png (demo/picture.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.decisions import SKIPPED, read_decisions, summary  # noqa: E402
from demo.picture import Caption, draw_decisions, title  # noqa: E402
from demo.weights import WeightsUnavailable, random_init_weights, real_weights  # noqa: E402
from nimbus_server import NimbusServer  # noqa: E402

OUTPUT_DIR = "demo-output"  # relative to where the demo runs, like ./checkpoints
IMAGE = "annotations/sam2_refine_worker:latest"
SIZE = 512
TAG = "rough"
RESOLUTION = "Auto"
SMOOTHING = 0.7
DELETE_ORIGINALS = True


def sample_cells(seed: int = 4) -> list[tuple[float, float, float, float, float]]:
    """(cx, cy, rx, ry, angle) of non-overlapping elliptical cells."""
    rng = np.random.default_rng(seed)
    cells: list[tuple[float, float, float, float, float]] = []
    while len(cells) < 28:
        cx, cy = rng.uniform(30, SIZE - 30, 2)
        rx, ry = rng.uniform(10, 22), rng.uniform(8, 16)
        if all(np.hypot(cx - x, cy - y) > max(rx, ry) + max(a, b) + 6 for x, y, a, b, _ in cells):
            cells.append((float(cx), float(cy), float(rx), float(ry), float(rng.uniform(0, np.pi))))
    return cells


def sample_frames(cells) -> np.ndarray:
    """(1, 1, 1, 2, H, W) uint16: nuclei and a dimmer, wider cytoplasm channel."""
    rows, cols = np.mgrid[:SIZE, :SIZE].astype(np.float32) + 0.5
    rng = np.random.default_rng(0)
    nuclei = np.zeros((SIZE, SIZE), np.float32)
    cytoplasm = np.zeros((SIZE, SIZE), np.float32)
    for cx, cy, rx, ry, angle in cells:
        dx, dy = cols - cx, rows - cy
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        distance = np.hypot(u, v)
        nuclei = np.maximum(nuclei, 1 / (1 + np.exp((distance - 1) * 12)))
        cytoplasm = np.maximum(cytoplasm, 0.5 / (1 + np.exp((distance - 1.7) * 6)))
    noise = rng.normal(0, 0.04, (2, SIZE, SIZE))
    planes = np.clip(np.stack([nuclei, cytoplasm]) + noise, 0, 1) * 3000 + 200
    return planes.astype(np.uint16)[np.newaxis, np.newaxis, np.newaxis]


def rough_outlines(cells) -> list[list[tuple[float, float]]]:
    """One rough outline per cell, the same on every run."""
    rng = np.random.default_rng(1)
    return [rough_outline(cell, rng) for cell in cells]


def rough_outline(cell, rng) -> list[tuple[float, float]]:
    """A hand-drawn-looking outline: too big, shifted, wobbly."""
    cx, cy, rx, ry, angle = cell
    shift = rng.uniform(-4, 4, 2)
    points = []
    for t in np.linspace(0, 2 * np.pi, 11)[:-1]:
        scale = rng.uniform(1.15, 1.45)
        x, y = rx * scale * np.cos(t), ry * scale * np.sin(t)
        points.append((cx + shift[0] + x * np.cos(angle) - y * np.sin(angle),
                       cy + shift[1] + x * np.sin(angle) + y * np.cos(angle)))
    return points


def run_worker(
    server: NimbusServer, request: str, parameters: dict, checkpoints: Path, dataset_id: str | None = None
) -> tuple[list[dict], str]:
    """Run entrypoint.py as the platform does; its JSON messages and its job log (stderr)."""
    command = [sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--token", server.token,
               "--request", request, "--parameters", json.dumps(parameters)]
    if dataset_id:
        command += ["--datasetId", dataset_id]
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(checkpoints.resolve()), "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    messages = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        raise SystemExit(f"{request} failed (exit {completed.returncode}): {messages[-1] if messages else ''}")
    return messages, completed.stderr


def composite(frames: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: nuclei green, cytoplasm magenta."""
    planes = frames[0, 0, 0].astype(np.float32)
    planes = (planes - planes.min()) / (planes.max() - planes.min())
    rgb = np.stack([planes[1] * 0.6, planes[0], planes[1] * 0.6 + planes[0] * 0.3], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def random_init_banner(reason: str) -> str:
    rule = "=" * 72
    return "\n".join([
        rule,
        f"NO SAM2 WEIGHTS: {reason}",
        "Using a RANDOM-INIT checkpoint: the refined outlines are MEANINGLESS.",
        "Run `make demo` again where the download works (or set SAM2_WEIGHTS_BASE_URL to a mirror),",
        "run `make weights`, or set SAM2_CHECKPOINT_DIR to a directory of official checkpoints.",
        rule,
    ])


def main() -> None:
    output = Path(OUTPUT_DIR)
    output.mkdir(exist_ok=True)
    try:
        weights = real_weights()
        print(f"SAM2 weights: {weights.description}", flush=True)
    except WeightsUnavailable as unavailable:
        print(random_init_banner(str(unavailable)), flush=True)
        weights = random_init_weights(output, str(unavailable))
    predictor = os.environ.get("SAM2_REFINE_PREDICTOR")
    if predictor:
        print(f"SAM2_REFINE_PREDICTOR={predictor}: that predictor answers instead of SAM2", flush=True)
    cells = sample_cells()
    frames = sample_frames(cells)
    with NimbusServer() as server:
        dataset_id = server.add_dataset(frames, name="demo cells", channel_names=["nuclei", "cytoplasm"])
        originals = {server.add_annotation(dataset_id, drawn, tags=[TAG]): drawn for drawn in rough_outlines(cells)}
        run_worker(server, "interface", {"image": IMAGE}, weights.directory)
        fields = server.interfaces[IMAGE]
        model = fields["Model"]["default"]
        print(f"interface: {len(fields)} fields posted; models offered: {', '.join(fields['Model']['items'])}")
        parameters = {
            "datasetId": dataset_id, "image": IMAGE, "channel": 0, "tags": ["refined"],
            "tile": {"XY": 0, "Z": 0, "Time": 0}, "assignment": {"XY": 0, "Z": 0, "Time": 0},
            "connectTo": {"tags": [], "channel": None},
            "workerInterface": {"Tag of objects to refine": [TAG], "Model": model, "Resolution": RESOLUTION,
                                "Delete original annotations": DELETE_ORIGINALS, "Padding": 0,
                                "Smoothing": SMOOTHING},
        }
        messages, job_log = run_worker(server, "compute", parameters, weights.directory, dataset_id)
        documents = server.annotations(dataset_id)
    for message in messages:
        if message.get("warning"):
            print(f"warning: {message['warning']}")
    print(f"compute with {model}: {messages[-1].get('info')}")
    decisions = read_decisions(originals, documents, job_log)
    for decision in decisions:
        if decision.outcome == SKIPPED:
            print(f"skipped {decision.original_id}: {decision.skip_reason}")
    print(f"outcomes: {summary(decisions)}")
    caption = Caption(
        title=title(decisions),
        settings=(f"model {model} ({'RANDOM-INIT' if weights.is_random_init else weights.description}); "
                  f"Resolution {RESOLUTION}, Smoothing {SMOOTHING}, Delete original annotations "
                  f"{'on' if DELETE_ORIGINALS else 'off'}"),
        warning=weights.random_init_reason and f"{weights.random_init_reason}. A random-init checkpoint was used.",
        notice=predictor and f"SAM2_REFINE_PREDICTOR={predictor}: that predictor answered, not SAM2",
    )
    picture = output / "before_after.png"
    draw_decisions(composite(frames), decisions, caption, DELETE_ORIGINALS, picture)
    print(f"wrote {picture.resolve()}")


if __name__ == "__main__":
    main()
