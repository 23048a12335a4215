"""Memory bounded by the locations a job refines, not by the dataset (issue 17 item 7),
through the whole worker: the same 1-frame job on a dataset of 1 frame and on one of
100 frames, every frame holding the same 400 tagged cells. The large dataset is on a
server without the location filter (an older plugin), so the annotations outside the job's
range are listed (filtered by tag and shape only) but not kept; where the platform filters
by location they are not read at all (tests/test_location_filter.py).

The benchmark row with 300 frames × 1000 cells, time included, is
`.venv/bin/python benchmarks/run.py --dataset-scale`.
"""

from __future__ import annotations

import numpy as np

from nimbus_server import NEWER_ROUTES, NimbusServer
from tests.conftest import compute_parameters, oracle_env, run_worker
from tests.oracle import Disk

SIDE, PER_ROW = 512, 20
REFINED_FRAMES, LARGE_FRAMES = 1, 100
MEMORY_BOUND = 1.5


def grid_cells() -> list[Disk]:
    rng = np.random.default_rng(9)
    pitch = SIDE / PER_ROW
    return [Disk(float((col + 0.5) * pitch), float((row + 0.5) * pitch), float(rng.uniform(6, 9)))
            for row in range(PER_ROW) for col in range(PER_ROW)]


def peak_rss_of_the_job(frames: int, checkpoint_dir, tmp_path) -> tuple[int, int]:
    """(peak RSS in KiB, refined polygons) of refining the first frames of a `frames`-frame dataset."""
    cells = grid_cells()
    image = np.full((SIDE, SIDE), 300, dtype=np.uint16)
    rows, cols = np.mgrid[:SIDE, :SIDE]
    nearest = np.full((SIDE, SIDE), np.inf)
    for cell in cells:  # each pixel belongs to the cell whose edge it is furthest inside
        nearest = np.minimum(nearest, np.hypot(cols + 0.5 - cell.cx, rows + 0.5 - cell.cy) - cell.radius)
    image[nearest < 0] = 3000
    with NimbusServer(missing_routes=NEWER_ROUTES) as server:
        dataset_id = server.add_dataset(np.broadcast_to(image, (1, 1, frames, 1, SIDE, SIDE)))
        outlines = [[(p["x"], p["y"]) for p in cell.rough_outline()] for cell in cells]
        for time_point in range(frames):
            for outline in outlines:
                server.add_annotation(dataset_id, outline, tags=["rough"], location={"XY": 0, "Z": 0, "Time": time_point})
        parameters = compute_parameters(dataset_id, **{"Batch Time": f"1-{REFINED_FRAMES}", "Resolution": "Whole frame"})
        parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
        run = run_worker(server, "compute", parameters, checkpoint_dir, dataset_id,
                         extra_env=oracle_env(tmp_path, cells), measure_peak_rss=True)
        assert run.returncode == 0, run.stdout + run.stderr
        refined = sum(1 for a in server.annotations(dataset_id) if a["tags"] == ["refined"])
    return run.peak_rss_kib, refined


def test_a_job_over_1_frame_needs_no_more_memory_in_a_dataset_of_100(oracle_checkpoint_dir, tmp_path):
    small, small_refined = peak_rss_of_the_job(REFINED_FRAMES, oracle_checkpoint_dir, tmp_path)
    large, large_refined = peak_rss_of_the_job(LARGE_FRAMES, oracle_checkpoint_dir, tmp_path)
    print(f"peak RSS: {small / 1024:.0f} MiB on {REFINED_FRAMES} frames, {large / 1024:.0f} MiB on {LARGE_FRAMES} "
          f"frames ({large / small:.2f}×)")
    assert small_refined == large_refined == REFINED_FRAMES * PER_ROW * PER_ROW
    assert large <= MEMORY_BOUND * small, f"{large / small:.2f}× the memory of the same job on a {REFINED_FRAMES}-frame dataset"
