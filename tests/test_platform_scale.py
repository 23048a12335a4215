"""Jobs at platform scale, run as the platform runs them: memory follows the window, not
the frame, and an absurd Batch range is refused before anything is expanded."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Point, Polygon

from tests.conftest import compute_parameters, oracle_env, run_worker
from tests.oracle import Disk

HUGE_SIDE = 16384
CELLS = 150
PEAK_RSS_LIMIT_GIB = 3.0
SMALL_START_GIB = 0.5  # a worker that refuses its parameters needs little more than Python and the SDK


def spread_cells(count: int, side: int) -> list[Disk]:
    """Cells on a jittered grid over the whole frame, radius 10-24 pixels."""
    rng = np.random.default_rng(11)
    per_row = int(np.ceil(np.sqrt(count)))
    pitch = side / per_row
    cells = []
    for index in range(count):
        row, col = divmod(index, per_row)
        cx = (col + 0.5) * pitch + rng.uniform(-pitch / 4, pitch / 4)
        cy = (row + 0.5) * pitch + rng.uniform(-pitch / 4, pitch / 4)
        cells.append(Disk(float(round(cx, 1)), float(round(cy, 1)), float(rng.uniform(10, 24))))
    return cells


def frame_showing(cells: list[Disk], side: int) -> np.ndarray:
    """(1, 1, 1, 1, side, side) uint16: dim background, bright disks."""
    frame = np.full((side, side), 100, dtype=np.uint16)
    for cell in cells:
        top, left = int(cell.cy - cell.radius) - 1, int(cell.cx - cell.radius) - 1
        size = int(2 * cell.radius) + 3
        rows, cols = np.mgrid[top:top + size, left:left + size]
        inside = np.hypot(cols + 0.5 - cell.cx, rows + 0.5 - cell.cy) < cell.radius
        frame[rows[inside], cols[inside]] = 3000
    return frame[np.newaxis, np.newaxis, np.newaxis, np.newaxis]


def test_a_16384_square_frame_in_auto_stays_within_3_gb(server, oracle_checkpoint_dir, tmp_path):
    cells = spread_cells(CELLS, HUGE_SIDE)
    dataset_id = server.add_dataset(frame_showing(cells, HUGE_SIDE))
    for cell in cells:
        server.add_annotation(dataset_id, [(p["x"], p["y"]) for p in cell.rough_outline(4.0)], tags=["rough"])
    parameters = compute_parameters(dataset_id)
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}

    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, cells), measure_peak_rss=True)

    assert run.returncode == 0, run.stdout + run.stderr
    assert not run.warnings, run.warnings
    refined = [a for a in server.annotations(dataset_id) if a["tags"] == ["refined"]]
    assert len(refined) == CELLS
    for cell in cells:
        truth = Point(cell.cx, cell.cy).buffer(cell.radius, quad_segs=64)
        match = [Polygon([(p["x"], p["y"]) for p in a["coordinates"]]) for a in refined]
        best = max(match, key=lambda polygon: polygon.intersection(truth).area)
        assert best.intersection(truth).area / best.union(truth).area > 0.9
    # Only the windows' regions were fetched, never the frame.
    regions = [query for method, path, query, _ in server.request_log if path.endswith("tiles/region")]
    assert regions
    for query in regions:
        width = float(query["right"]) - float(query["left"])
        height = float(query["bottom"]) - float(query["top"])
        assert max(width, height) < HUGE_SIDE / 8, query
    peak_gib = run.peak_rss_kib / 2**20
    print(f"16384² Auto, {CELLS} cells: worker peak RSS {peak_gib:.2f} GiB")
    assert peak_gib <= PEAK_RSS_LIMIT_GIB, f"peak RSS {peak_gib:.2f} GiB"


def test_an_absurd_batch_range_is_refused_at_once_naming_the_valid_range(server, oracle_checkpoint_dir):
    frames = np.zeros((1, 2, 5, 1, 64, 64), dtype=np.uint16)
    dataset_id = server.add_dataset(frames)
    server.add_annotation(dataset_id, [(1, 1), (9, 1), (9, 9)], tags=["rough"])
    parameters = compute_parameters(dataset_id, **{"Batch Time": "1-30000000"})

    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id, measure_peak_rss=True)

    assert run.returncode == 2, run.stdout + run.stderr
    [error] = run.errors
    assert error["title"] == "Invalid Batch Time"
    assert "position 30000000 is beyond this dataset's 5 Time positions" in error["error"]
    assert error["info"] == "Enter positions from 1 to 5, or all."
    print(f"Batch Time 1-30000000: worker peak RSS {run.peak_rss_kib / 2**10:.0f} MiB")
    assert run.peak_rss_kib / 2**20 < SMALL_START_GIB, f"peak RSS {run.peak_rss_kib / 2**20:.2f} GiB"
    assert not [a for a in server.annotations(dataset_id) if a["tags"] != ["rough"]]


def test_a_window_larger_than_sams_input_is_fetched_downsampled(server, oracle_checkpoint_dir, tmp_path):
    """A cell 1400 pixels across gets a window wider than SAM2's 1024-pixel input: the server
    downsamples that region (the SDK's size cap), and the outline still lands in place."""
    cells = [Disk(1500.0, 1400.0, 700.0), Disk(200.0, 2700.0, 15.0), Disk(2800.0, 300.0, 20.0)]
    dataset_id = server.add_dataset(frame_showing(cells, 3000))
    for cell in cells:
        server.add_annotation(dataset_id, [(p["x"], p["y"]) for p in cell.rough_outline(4.0)], tags=["rough"])
    parameters = compute_parameters(dataset_id)
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}

    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, cells))

    assert run.returncode == 0, run.stdout + run.stderr
    refined = [Polygon([(p["x"], p["y"]) for p in a["coordinates"]])
               for a in server.annotations(dataset_id) if a["tags"] == ["refined"]]
    assert len(refined) == len(cells)
    for cell in cells:
        truth = Point(cell.cx, cell.cy).buffer(cell.radius, quad_segs=64)
        best = max(refined, key=lambda polygon: polygon.intersection(truth).area)
        assert best.intersection(truth).area / best.union(truth).area > 0.9
    regions = [query for method, path, query, _ in server.request_log if path.endswith("tiles/region")]
    capped = [query for query in regions if "width" in query]
    assert len(capped) == 1 and int(capped[0]["width"]) == int(capped[0]["height"]) == 1024
    assert float(capped[0]["right"]) - float(capped[0]["left"]) > 1400
    assert all(max(float(q["right"]) - float(q["left"]), float(q["bottom"]) - float(q["top"])) <= 1024
               for q in regions if q is not capped[0])
