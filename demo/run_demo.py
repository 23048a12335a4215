"""`make demo`: the worker refining a sample dataset as the platform would run it.

Starts the embedded NimbusImage server with a generated sample (two channels of cells,
rough outlines tagged "rough"), runs `interface` then `compute` through entrypoint.py,
prints a summary and writes demo-output/before_after.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nimbus_server import NimbusServer  # noqa: E402
from sam2_refine.model import OFFICIAL_CONFIGS  # noqa: E402

OUTPUT = REPO / "demo-output"
IMAGE = "annotations/sam2_refine_worker:latest"
SIZE = 512
TAG = "rough"


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


def official_checkpoint_dir() -> Path | None:
    configured = os.environ.get("SAM2_CHECKPOINT_DIR")
    if configured and any((Path(configured) / name).is_file() for name in OFFICIAL_CONFIGS):
        return Path(configured)
    local = REPO / "checkpoints"
    if any((local / name).is_file() for name in OFFICIAL_CONFIGS):
        return local
    return None


def random_checkpoint_dir() -> Path:
    import torch
    from sam2.build_sam import build_sam2

    directory = OUTPUT / "random-checkpoints"
    path = directory / "sam2.1_hiera_tiny.pt"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
        torch.save({"model": model.state_dict()}, path)
    return directory


def run_worker(server: NimbusServer, request: str, parameters: dict, checkpoints: Path, dataset_id=None) -> list[dict]:
    command = [sys.executable, str(REPO / "entrypoint.py"), "--apiUrl", server.url, "--token", server.token,
               "--request", request, "--parameters", json.dumps(parameters)]
    if dataset_id:
        command += ["--datasetId", dataset_id]
    env = {**os.environ, "SAM2_CHECKPOINT_DIR": str(checkpoints), "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    messages = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        raise SystemExit(f"{request} failed (exit {completed.returncode}): {messages[-1] if messages else ''}")
    return messages


def draw(frames: np.ndarray, rough: list[list[dict]], refined: list[list[dict]], path: Path) -> None:
    planes = frames[0, 0, 0].astype(np.float32)
    planes = (planes - planes.min()) / (planes.max() - planes.min())
    rgb = np.stack([planes[1] * 0.6, planes[0], planes[1] * 0.6 + planes[0] * 0.3], axis=-1)
    base = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize((SIZE * 2, SIZE * 2), Image.NEAREST)
    canvas = Image.new("RGB", (SIZE * 4 + 10, SIZE * 2), "white")
    for panel, (outlines, colour) in enumerate(((rough, (255, 80, 80)), (refined, (255, 255, 0)))):
        image = base.copy()
        pen = ImageDraw.Draw(image)
        for outline in outlines:
            points = [(c["x"] * 2, c["y"] * 2) for c in outline]
            pen.polygon(points, outline=colour, width=2)
        pen.text((8, 8), "rough outlines (input)" if panel == 0 else "refined by SAM2 Refiner", fill="white")
        canvas.paste(image, (panel * (SIZE * 2 + 10), 0))
    canvas.save(path)


def main() -> None:
    OUTPUT.mkdir(exist_ok=True)
    checkpoints = official_checkpoint_dir()
    if checkpoints is None:
        checkpoints = random_checkpoint_dir()
        print("=" * 72)
        print("NO SAM2 WEIGHTS FOUND: using a RANDOM-INIT checkpoint.")
        print("The refined outlines below are MEANINGLESS until real weights are installed:")
        print("run `make weights` (needs internet) or set SAM2_CHECKPOINT_DIR.")
        print("=" * 72)
    cells = sample_cells()
    frames = sample_frames(cells)
    rng = np.random.default_rng(1)
    with NimbusServer() as server:
        dataset_id = server.add_dataset(frames, name="demo cells", channel_names=["nuclei", "cytoplasm"])
        for cell in cells:
            server.add_annotation(dataset_id, rough_outline(cell, rng), tags=[TAG])
        run_worker(server, "interface", {"image": IMAGE}, checkpoints)
        fields = server.interfaces[IMAGE]
        model = fields["Model"]["default"]
        print(f"interface: {len(fields)} fields posted; models offered: {', '.join(fields['Model']['items'])}")
        parameters = {
            "datasetId": dataset_id, "image": IMAGE, "channel": 0, "tags": ["refined"],
            "tile": {"XY": 0, "Z": 0, "Time": 0}, "assignment": {"XY": 0, "Z": 0, "Time": 0},
            "connectTo": {"tags": [], "channel": None},
            "workerInterface": {"Tag of objects to refine": [TAG], "Model": model, "Resolution": "Auto",
                                "Delete original annotations": False, "Padding": 0, "Smoothing": 0.7},
        }
        messages = run_worker(server, "compute", parameters, checkpoints, dataset_id)
        annotations = server.annotations(dataset_id)
    rough = [a["coordinates"] for a in annotations if TAG in a["tags"]]
    refined = [a["coordinates"] for a in annotations if "refined" in a["tags"]]
    for message in messages:
        if message.get("warning"):
            print(f"warning: {message['warning']}")
    print(f"compute with {model}: {messages[-1].get('info')}")
    draw(frames, rough, refined, OUTPUT / "before_after.png")
    print(f"wrote {OUTPUT / 'before_after.png'} ({len(rough)} rough outlines, {len(refined)} refined)")


if __name__ == "__main__":
    main()
