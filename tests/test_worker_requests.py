"""The platform's two requests, end to end: entrypoint.py as a subprocess against the embedded server."""

from __future__ import annotations

import os

import numpy as np
import pytest
from shapely.geometry import Polygon

from tests.conftest import (
    FRAME_HEIGHT, FRAME_WIDTH, IMAGE, TINY, cells, compute_parameters, frames, oracle_env, run_worker,
)
from sam2_refine.errors import WorkerError
from tests.oracle import Disk, Rect
from tests.test_engine import iou

SEED_FIELDS = {"Batch XY", "Batch Z", "Batch Time", "Tag of objects to refine", "Model",
               "Delete original annotations", "Padding", "Smoothing"}


def seed_dataset(server, xy=1, z=2, time=2):
    """A dataset with rough outlines of `cells()` tagged "rough" at every position,
    plus an untagged polygon and a tagged point at each."""
    dataset_id = server.add_dataset(frames(xy=xy, z=z, time=time))
    for location in ({"XY": a, "Z": b, "Time": c} for a in range(xy) for b in range(z) for c in range(time)):
        for shape in cells():
            server.add_annotation(dataset_id, shape.rough_outline(), tags=["rough"], location=location, channel=0)
        server.add_annotation(dataset_id, [(5, 5), (25, 5), (25, 25)], tags=["other"], location=location)
        server.add_annotation(dataset_id, [(40, 40)], tags=["rough"], shape="point", location=location)
    return dataset_id


def new_annotations(server, dataset_id, before):
    known = {a["_id"] for a in before}
    return [a for a in server.annotations(dataset_id) if a["_id"] not in known]


def test_interface_posts_every_field(server, tiny_checkpoint_dir):
    run = run_worker(server, "interface", {"image": IMAGE}, tiny_checkpoint_dir)
    assert run.returncode == 0, run.stdout + run.stderr
    posted = server.interfaces[IMAGE]
    assert SEED_FIELDS <= set(posted)
    assert posted["Model"]["items"] == [TINY]
    assert not run.errors


def test_interface_uses_the_image_from_the_parameters(server, tiny_checkpoint_dir):
    run = run_worker(server, "interface", {"image": "someone/custom_refiner:v2"}, tiny_checkpoint_dir)
    assert run.returncode == 0
    assert list(server.interfaces) == ["someone/custom_refiner:v2"]


def test_interface_never_imports_torch(server, tiny_checkpoint_dir, tmp_path):
    poison = tmp_path / "poison"
    (poison / "torch").mkdir(parents=True)
    (poison / "torch" / "__init__.py").write_text("raise ImportError('interface must not import torch')\n")
    run = run_worker(server, "interface", {"image": IMAGE}, tiny_checkpoint_dir, extra_env={"PYTHONPATH": str(poison)})
    assert run.returncode == 0, run.stderr
    assert IMAGE in server.interfaces


def test_interface_without_checkpoints_names_the_variable(server, tmp_path):
    run = run_worker(server, "interface", {"image": IMAGE}, tmp_path / "missing")
    assert run.returncode != 0
    assert "SAM2_CHECKPOINT_DIR" in run.errors[0]["info"]
    assert server.interfaces == {}


def test_compute_with_real_sam2_writes_refined_polygons_at_the_current_tile(server, tiny_checkpoint_dir):
    dataset_id = seed_dataset(server)
    before = server.annotations(dataset_id)
    # A random-init checkpoint's masks are meaningless, so most are doubtful: accept them here
    # (those cut where the noise goes on are still tagged for review).
    parameters = compute_parameters(dataset_id, **{"Doubtful refinements": "Accept anyway"})
    run = run_worker(server, "compute", parameters, tiny_checkpoint_dir, dataset_id)
    assert run.returncode == 0, run.stdout + run.stderr
    created = new_annotations(server, dataset_id, before)
    assert created, run.stdout
    final = run.progress[-1]
    assert final["progress"] == 1.0 and f"Refined {len(created)} of {len(cells())}" in final["info"]
    for annotation in created:
        assert annotation["shape"] == "polygon"
        assert annotation["tags"] in (["refined"], ["refined", "SAM2 review"])
        assert annotation["channel"] == 1
        assert list(annotation["location"].items()) == [("XY", 0), ("Z", 1), ("Time", 0)]
        polygon = Polygon([(c["x"], c["y"]) for c in annotation["coordinates"]])
        assert polygon.is_valid
        assert annotation["coordinates"][0] != annotation["coordinates"][-1]
        x0, y0, x1, y1 = polygon.bounds
        assert 0 <= x0 and 0 <= y0 and x1 <= FRAME_WIDTH and y1 <= FRAME_HEIGHT
    # Originals, untagged polygons and other positions are untouched.
    assert [a for a in server.annotations(dataset_id) if a["_id"] in {b["_id"] for b in before}] == before
    fractions = [m["progress"] for m in run.progress]
    assert fractions == sorted(fractions) and len(set(fractions)) > 3


def test_compute_outlines_match_the_objects_exactly(server, oracle_checkpoint_dir, tmp_path):
    dataset_id = seed_dataset(server)
    before = server.annotations(dataset_id)
    parameters = compute_parameters(dataset_id, **{"Batch Z": "1-2", "Batch Time": "all"})
    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, cells()))
    assert run.returncode == 0, run.stdout + run.stderr
    created = new_annotations(server, dataset_id, before)
    assert len(created) == len(cells()) * 4  # every tagged polygon at 2 Z x 2 Time
    locations = {tuple(a["location"].values()) for a in created}
    assert locations == {(0, z, t) for z in range(2) for t in range(2)}
    for annotation in created:
        polygon = Polygon([(c["x"], c["y"]) for c in annotation["coordinates"]])
        truth = max(cells(), key=lambda s: iou(polygon, s.mask(FRAME_HEIGHT, FRAME_WIDTH)))
        assert iou(polygon, truth.mask(FRAME_HEIGHT, FRAME_WIDTH)) >= 0.98


def test_compute_with_batch_xy_beyond_the_dataset_writes_nothing(server, oracle_checkpoint_dir, tmp_path):
    dataset_id = seed_dataset(server)
    before = server.annotations(dataset_id)
    run = run_worker(server, "compute", compute_parameters(dataset_id, **{"Batch XY": "1-3"}),
                     oracle_checkpoint_dir, dataset_id, extra_env=oracle_env(tmp_path, cells()))
    assert run.returncode == 2
    assert run.errors[0]["error"].startswith("Batch XY")
    assert "1 to 1" in run.errors[0]["info"]
    assert server.annotations(dataset_id) == before
    assert not any(method == "POST" for method, *_ in server.request_log)


@pytest.mark.parametrize(
    ("field", "value"), [("Padding", "wide"), ("Smoothing", 9), ("Model", None), ("Model", "gone.pt"), ("Batch Time", "2-1")]
)
def test_invalid_parameters_stop_the_job_before_any_write(server, oracle_checkpoint_dir, tmp_path, field, value):
    dataset_id = seed_dataset(server)
    before = server.annotations(dataset_id)
    run = run_worker(server, "compute", compute_parameters(dataset_id, **{field: value}),
                     oracle_checkpoint_dir, dataset_id, extra_env=oracle_env(tmp_path, cells()))
    assert run.returncode == 2
    assert len(run.errors) == 1 and run.errors[0]["error"].startswith(field)
    assert run.errors[0]["info"]
    assert "Traceback" not in run.stdout
    assert server.annotations(dataset_id) == before


def test_connect_to_links_each_refined_polygon_to_its_nearest_parent(server, oracle_checkpoint_dir, tmp_path):
    dataset_id = seed_dataset(server, z=2, time=1)
    parent = server.add_annotation(dataset_id, [(0, 0), (320, 0), (320, 240), (0, 240)], tags=["field"],
                                   location={"XY": 0, "Z": 1, "Time": 0}, channel=0)
    before = server.annotations(dataset_id)
    parameters = compute_parameters(dataset_id)
    parameters["connectTo"] = {"tags": ["field"], "layer": None, "channel": None}
    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, cells()))
    assert run.returncode == 0, run.stdout + run.stderr
    created = {a["_id"] for a in new_annotations(server, dataset_id, before)}
    links = {(c["parentId"], c["childId"]) for c in server.connections(dataset_id)}
    assert links == {(parent, child) for child in created}


def test_unknown_request_is_ignored(server, tiny_checkpoint_dir):
    run = run_worker(server, "preview", {"image": IMAGE}, tiny_checkpoint_dir, dataset_id="0" * 24)
    assert run.returncode == 0
    assert not run.errors


def test_whole_frame_fetches_a_downsampled_frame_and_keeps_outlines_exact(server, oracle_checkpoint_dir, tmp_path):
    height, width = 1536, 2560
    dataset_id = server.add_dataset(np.zeros((1, 1, 1, 1, height, width), np.uint16) + 100)
    shapes = [Disk(300, 400, 90), Rect(1800, 900, 2200, 1300), Disk(2450, 1400, 120)]
    for shape in shapes:
        server.add_annotation(dataset_id, shape.rough_outline(), tags=["rough"])
    parameters = compute_parameters(dataset_id, Resolution="Whole frame")
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env=oracle_env(tmp_path, shapes))
    assert run.returncode == 0, run.stdout + run.stderr
    regions = [query for method, path, query, _ in server.request_log if path.endswith("tiles/region")]
    assert regions and all(int(query["width"]) == 1707 for query in regions)  # shorter side 1536 -> 1024
    created = [a for a in server.annotations(dataset_id) if a["tags"] == ["refined"]]
    assert len(created) == len(shapes), run.stdout
    for shape in shapes:  # each object has its own refined outline, whatever the server's order
        best = max(iou(Polygon([(c["x"], c["y"]) for c in a["coordinates"]]), shape.mask(height, width))
                   for a in created)
        assert best >= 0.98


def counting_oracle(checkpoint):
    """The oracle, recording each build in $BUILDS_LOG (one line per build, by thread)."""
    import threading

    from tests.oracle import from_environment

    with open(os.environ["BUILDS_LOG"], "a") as log:
        log.write(f"{checkpoint} {threading.current_thread().name}\n")
    return from_environment(checkpoint)


def failing_factory(checkpoint):
    raise WorkerError(f"Model {checkpoint.name} could not be loaded: broken on purpose", info="reinstall it")


def test_the_predictor_built_in_the_background_is_the_one_used(server, oracle_checkpoint_dir, tmp_path):
    """The model loads while the job reads its annotations; it is built once, and the
    job's last message is on stdout although the process skips interpreter teardown."""
    dataset_id = seed_dataset(server, z=2, time=1)
    log = tmp_path / "builds.log"
    env = {**oracle_env(tmp_path, cells()), "SAM2_REFINE_PREDICTOR": "tests.test_worker_requests:counting_oracle",
           "BUILDS_LOG": str(log), "PYTHONUNBUFFERED": ""}  # stdout block-buffered, as on the platform
    run = run_worker(server, "compute", compute_parameters(dataset_id), oracle_checkpoint_dir, dataset_id, extra_env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    builds = log.read_text().splitlines()
    assert builds == [f"{oracle_checkpoint_dir / TINY} preload-predictor"]
    assert run.messages[-1]["progress"] == 1.0 and run.messages[-1]["info"].startswith(f"Refined {len(cells())} of")


def test_a_model_that_fails_to_build_in_the_background_fails_the_job(server, oracle_checkpoint_dir, tmp_path):
    dataset_id = seed_dataset(server, z=2, time=1)
    before = server.annotations(dataset_id)
    env = {"SAM2_REFINE_PREDICTOR": "tests.test_worker_requests:failing_factory"}
    run = run_worker(server, "compute", compute_parameters(dataset_id), oracle_checkpoint_dir, dataset_id, extra_env=env)
    assert run.returncode == 1
    assert [e["error"] for e in run.errors] == [f"Model {TINY} could not be loaded: broken on purpose"]
    assert server.annotations(dataset_id) == before


def test_nothing_to_refine_exits_cleanly_while_the_model_still_loads(server, tiny_checkpoint_dir):
    """The real SAM2 is still loading in the background when the job finds nothing to do."""
    dataset_id = server.add_dataset(frames(z=2, time=1))
    run = run_worker(server, "compute", compute_parameters(dataset_id), tiny_checkpoint_dir, dataset_id)
    assert run.returncode == 0, run.stderr
    assert run.progress[-1]["progress"] == 1.0 and run.progress[-1]["info"] == "Nothing to refine"
    assert "Traceback" not in run.stderr


def test_a_refused_job_never_starts_loading_the_model(server, oracle_checkpoint_dir, tmp_path):
    dataset_id = seed_dataset(server, z=2, time=1)
    log = tmp_path / "builds.log"
    env = {**oracle_env(tmp_path, cells()), "SAM2_REFINE_PREDICTOR": "tests.test_worker_requests:counting_oracle",
           "BUILDS_LOG": str(log)}
    run = run_worker(server, "compute", compute_parameters(dataset_id, **{"Batch Z": "1-9"}), oracle_checkpoint_dir,
                     dataset_id, extra_env=env)
    assert run.returncode == 2
    assert not log.exists()
