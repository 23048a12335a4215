"""A 4096² frame with 100+ objects through real SAM2 on CPU, within bounded memory."""

import numpy as np

from tests.conftest import compute_parameters, run_worker

SIZE = 4096
OBJECTS = 120
PEAK_RSS_LIMIT_GB = 3.0


def test_large_frame_many_objects_peak_memory(server, tiny_checkpoint_dir):
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 1000, size=(1, 1, 1, 1, SIZE, SIZE), dtype=np.uint16)
    dataset_id = server.add_dataset(frame)
    for index in range(OBJECTS):
        x, y = 200 + (index % 12) * 300, 200 + (index // 12) * 350
        server.add_annotation(dataset_id, [(x, y), (x + 30, y), (x + 30, y + 24), (x, y + 24)], tags=["rough"])
    parameters = compute_parameters(dataset_id, Resolution="Whole frame", Smoothing=0.7)
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
    run = run_worker(server, "compute", parameters, tiny_checkpoint_dir, dataset_id, measure_peak_rss=True)
    assert run.returncode == 0, run.stdout + run.stderr
    created = [a for a in server.annotations(dataset_id) if a["tags"] == ["refined"]]
    skipped = sum(int(w["warning"].split()[0]) for w in run.warnings if "skipped" in w["warning"])
    assert len(created) + skipped == OBJECTS
    assert run.peak_rss_kib / 2**20 < PEAK_RSS_LIMIT_GB, f"peak RSS {run.peak_rss_kib / 2**20:.2f} GiB"
