"""The predictor seam (SAM2_REFINE_PREDICTOR=module:factory): a predictor written to an
earlier version of the protocol still runs the whole worker, and what a predictor can do
is read from it once."""

from __future__ import annotations

import pytest
from shapely.geometry import Polygon

from tests.conftest import cells, compute_parameters, oracle_env, run_worker, seed
from tests.test_engine import iou
from tests.conftest import FRAME_HEIGHT, FRAME_WIDTH


@pytest.mark.parametrize("factory", ["tests.oracle:two_methods_from_environment",
                                     "tests.oracle:plain_scored_from_environment"])
def test_a_predictor_written_to_an_earlier_protocol_runs_the_whole_worker(
    server, oracle_checkpoint_dir, tmp_path, factory
):
    """Only `encode`/`decode_low_res`; or a `decode` returning a plain object with only
    `logits`, `predicted_iou` and `object_score` (no alternatives): every cell is refined."""
    dataset_id, originals = seed(server)
    env = {**oracle_env(tmp_path, cells()), "SAM2_REFINE_PREDICTOR": factory}
    run = run_worker(server, "compute", compute_parameters(dataset_id), oracle_checkpoint_dir, dataset_id,
                     extra_env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not run.errors
    refined = [a for a in server.annotations(dataset_id) if "refined" in a.get("tags", [])]
    assert len(refined) == len(cells())
    for shape in cells():
        truth = shape.mask(FRAME_HEIGHT, FRAME_WIDTH)
        assert max(iou(Polygon([(p["x"], p["y"]) for p in a["coordinates"]]), truth) for a in refined) >= 0.97
