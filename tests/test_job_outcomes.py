"""How a job ends when something happens to it while it runs, or when it has nothing
left to do, through the whole worker (a subprocess against the embedded server): issue
23's holes 1, 4 and 7."""

from __future__ import annotations

from nimbus_server import NimbusServer
from tests.conftest import (
    TAG, cells, compute_parameters, frames, oracle_env, refined_by_source, replacing, run_worker, seed,
)
from tests.oracle import Disk

AT = {"XY": 0, "Z": 1}  # Z 2 of the test frames (1-based in the Batch fields)


def two_time_points(server: NimbusServer, extra_at_second=()) -> tuple[str, list[str], list[str]]:
    """`cells()` outlined roughly at Time 1 and Time 2 (plus `extra_at_second` at Time 2):
    (dataset id, the originals at Time 1, those at Time 2)."""
    dataset_id = server.add_dataset(frames(z=2, time=2))
    first = [server.add_annotation(dataset_id, shape.rough_outline(), tags=[TAG], location={**AT, "Time": 0})
             for shape in cells()]
    second = [server.add_annotation(dataset_id, shape.rough_outline(), tags=[TAG], location={**AT, "Time": 1})
              for shape in [*cells(), *extra_at_second]]
    return dataset_id, first, second


def present(server, dataset_id) -> set[str]:
    return {a["_id"] for a in server.annotations(dataset_id)}


def test_a_refinement_deleted_while_a_replacing_rerun_works_leaves_its_original_and_the_job_says_so(
        server, oracle_checkpoint_dir, tmp_path):
    dataset_id, first, second = two_time_points(server)
    env = oracle_env(tmp_path, cells())
    # Run 1 refines Time 2 and keeps the originals.
    run = run_worker(server, "compute", compute_parameters(dataset_id, **{"Batch Time": "2"}), oracle_checkpoint_dir,
                     dataset_id, extra_env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    refinements = {a["sam2Refine"].split("/", 1)[1]: a["_id"] for a in server.annotations(dataset_id)
                   if "sam2Refine" in a}
    assert set(refinements) == set(second)
    # Run 2, the same settings replacing at both times: while it refines Time 1, the user
    # deletes one of Time 2's refinements in the app (after the job read the dataset).
    victim = second[2]
    hook = {"SAM2_REFINE_PREDICTOR": "tests.hook_oracles:deleting", "HOOK_DELETE": refinements[victim],
            "HOOK_API_URL": server.url, "HOOK_TOKEN": server.token}
    run = run_worker(server, "compute", replacing(dataset_id, **{"Batch Time": "all"}), oracle_checkpoint_dir,
                     dataset_id, extra_env={**env, **hook})
    assert run.returncode == 0, run.stdout + run.stderr
    assert refinements[victim] not in present(server, dataset_id)
    assert victim in present(server, dataset_id)  # never neither version
    assert not (set(first) | set(second)) - {victim} & present(server, dataset_id)  # the rest replaced
    assert [w["warning"] for w in run.warnings] == [
        "1 original was kept: its refined polygon was deleted while the job ran"]
    assert "replaced 7 originals" in run.progress[-1]["info"]
    # The same job again refines the kept original anew and replaces it.
    again = run_worker(server, "compute", replacing(dataset_id, **{"Batch Time": "all"}), oracle_checkpoint_dir,
                       dataset_id, extra_env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert victim not in present(server, dataset_id) and refined_by_source(server, dataset_id)[victim] == 1


def test_a_device_error_half_way_ends_with_the_summary_and_says_the_work_saved_is_kept(
        server, oracle_checkpoint_dir, tmp_path):
    trigger = Disk(290, 40, 12)
    dataset_id, first, second = two_time_points(server, extra_at_second=[trigger])
    shapes = [*cells(), trigger]
    parameters = replacing(dataset_id, **{"Batch Time": "all"})
    hook = {"SAM2_REFINE_PREDICTOR": "tests.hook_oracles:failing", "HOOK_FAIL_AT": str(len(shapes) - 1)}
    run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                     extra_env={**oracle_env(tmp_path, shapes), **hook})
    assert run.returncode == 1, run.stdout + run.stderr
    [error] = run.errors
    assert error["error"] == "Unexpected error: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert ("The 4 refined polygons saved before are kept; run the tool again with the same settings to continue"
            in error["info"])
    assert run.progress[-1]["info"] == "Refined 4 of 9; replaced 4 originals"
    assert not set(first) & present(server, dataset_id)  # Time 1 was saved and replaced
    again = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id,
                       extra_env=oracle_env(tmp_path, shapes))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.progress[-1]["info"] == "Refined 5 of 5; replaced 5 originals"  # only what was left


def test_a_finished_replacing_job_run_again_says_an_earlier_run_did_the_work(server, worker):
    dataset_id, originals = seed(server)
    assert worker(replacing(dataset_id), dataset_id).returncode == 0
    assert not set(originals) & present(server, dataset_id)
    again = worker(replacing(dataset_id), dataset_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not again.warnings  # not "Nothing to refine ... Check 'Tag of objects to refine'"
    assert again.progress[-1]["info"] == (
        "Nothing left to refine: an earlier run with the same settings did this work (4 refined outlines at the "
        "1 selected position)")


def test_a_late_twin_that_landed_after_a_finished_job_is_removed_by_the_next_run(server, worker):
    """A create the platform applied only after the job ended leaves a second refined polygon
    with the same marker; the next run finds and removes it, also when nothing is left to refine."""
    dataset_id, originals = seed(server)
    assert worker(replacing(dataset_id), dataset_id).returncode == 0
    [first] = [a for a in server.annotations(dataset_id) if a.get("sam2Refine", "").endswith(originals[0])]
    twin = server.add_annotation(dataset_id, first["coordinates"], tags=first["tags"], location=first["location"],
                                 channel=first["channel"], **{k: first[k] for k in ("sam2Refine", "sam2RefineSource")})
    again = worker(replacing(dataset_id), dataset_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert twin not in present(server, dataset_id) and first["_id"] in present(server, dataset_id)
    assert set(refined_by_source(server, dataset_id).values()) == {1}
    assert again.progress[-1]["info"].startswith("Nothing left to refine")
