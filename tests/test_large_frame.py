"""Large frames through real SAM2 on CPU, in both resolutions, within bounded memory.

SAM2 (random-init tiny) encodes and decodes every window and box, so time and memory are
its own; its logits are then replaced by the true shapes' (tests/sam2_true_shapes.py), so
every object must come back as its own outline.
"""

import numpy as np
import pytest
from shapely.geometry import Point, Polygon

from tests.conftest import compute_parameters, run_worker
from tests.oracle import Disk, shapes_to_json

SIZE = 4096
PEAK_RSS_LIMIT_GB = 3.0


def disks(count: int, spacing: int) -> list[Disk]:
    """`count` disks of radius 20-26 px (more than one low-resolution cell of a whole
    4096² frame) on a grid `spacing` px apart, from (200, 200)."""
    per_row = (SIZE - 400) // spacing + 1
    radii = 20 + np.arange(count) % 7
    return [Disk(200 + (i % per_row) * spacing + 0.3, 200 + (i // per_row) * spacing + 0.6, float(r))
            for i, r in enumerate(radii)]


# Whole frame sees a 4096² frame through SAM2's 256² grid, 16 pixels per cell: a 40-pixel
# disk is a few cells across, so its outline is coarse (and flagged as too coarse at this
# resolution); Auto windows see it in detail.
@pytest.mark.parametrize(
    ("resolution", "count", "spacing", "min_iou"), [("Whole frame", 120, 300, 0.85), ("Auto", 12, 1100, 0.95)]
)
def test_large_frame_refines_every_object_within_bounded_memory(
    server, tiny_checkpoint_dir, tmp_path, resolution, count, spacing, min_iou
):
    shapes = disks(count, spacing)
    rng = np.random.default_rng(5)
    dataset_id = server.add_dataset(rng.integers(0, 1000, size=(1, 1, 1, 1, SIZE, SIZE), dtype=np.uint16))
    for shape in shapes:
        server.add_annotation(dataset_id, shape.rough_outline(grow=2.0), tags=["rough"])
    shapes_file = tmp_path / "shapes.json"
    shapes_file.write_text(shapes_to_json(shapes))
    parameters = compute_parameters(dataset_id, Resolution=resolution, Smoothing=0.7)
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
    env = {"SAM2_REFINE_PREDICTOR": "tests.sam2_true_shapes:from_environment", "ORACLE_SHAPES": str(shapes_file)}
    run = run_worker(server, "compute", parameters, tiny_checkpoint_dir, dataset_id, extra_env=env,
                     measure_peak_rss=True)
    assert run.returncode == 0, run.stdout + run.stderr
    refined = [a for a in server.annotations(dataset_id) if "refined" in a["tags"]]
    created = [Polygon([(c["x"], c["y"]) for c in a["coordinates"]]) for a in refined]
    assert len(created) == count, run.stdout
    if resolution == "Whole frame":
        assert f"{count} doubtful ({count} too coarse at this resolution)" in run.progress[-1]["info"]
    else:
        assert all(a["tags"] == ["refined"] for a in refined)
    for shape in shapes:
        truth = Point(shape.cx, shape.cy).buffer(shape.radius, 64)
        best = max(created, key=lambda polygon: polygon.intersection(truth).area)
        assert best.intersection(truth).area / best.union(truth).area >= min_iou
    assert run.peak_rss_kib / 2**20 < PEAK_RSS_LIMIT_GB, f"peak RSS {run.peak_rss_kib / 2**20:.2f} GiB"
