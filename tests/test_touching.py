"""Touching cells share one boundary, through the whole worker (subprocess, embedded server).

Dense fields of touching cells (tests/touching_cells.py), each boxed 0-15 % loose, a few
boxed twice, answered by a SAM2 stand-in whose masks bleed 0-3 px into each touching
neighbour (SAM2_REFINE_PREDICTOR=tests.touching_cells:from_environment), Delete on: the
accepted outlines that replace the originals do not overlap, with the defaults and with
Padding 2; near the contacts they follow the true boundary; a cell boxed twice keeps one
whole outline; with 'Allow overlapping outlines' ticked they overlap as SAM2 found them.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

from sam2_refine.interface import OVERLAPS, REVIEW_TAG
from sam2_refine.nimbus import MARKER_KEY
from tests.conftest import compute_parameters, run_worker
from tests.measure_contacts import NEAR_CONTACT, ideal, iou, near_contact_p90
from tests.touching_cells import TouchingSet, answers_to_json, touching_set

SIDE = 512
SEEDS = (0, 3)  # two frames, 58 touching pairs


def scenes() -> list[TouchingSet]:
    return [touching_set(seed, SIDE, SIDE, 30) for seed in SEEDS]


def refine_through_worker(server, checkpoint_dir, tmp_path, touching: list[TouchingSet], log: list | None = None,
                          **fields):
    """Each scene at its own time point; returns, per scene, cell -> [(polygon, accepted)]
    (and the job log's lines in `log`)."""
    side = touching[0].scene.width
    dataset_id = server.add_dataset(np.full((1, 1, len(touching), 1, side, side), 100, np.uint16))
    sources = {}
    for time, scene in enumerate(touching):
        for prompt in scene.prompts:
            annotation_id = server.add_annotation(
                dataset_id, [(c["x"], c["y"]) for c in prompt.coordinates], tags=["rough"], shape=prompt.shape,
                location={"XY": 0, "Z": 0, "Time": time})
            sources[annotation_id] = (time, prompt.cell)
    oracle = tmp_path / "touching.json"
    oracle.write_text(answers_to_json(touching))
    parameters = compute_parameters(dataset_id, **{"Delete original annotations": True, "Batch Time": "all",
                                                   "Smoothing": 0.7, **fields})
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
    env = {"SAM2_REFINE_PREDICTOR": "tests.touching_cells:from_environment", "TOUCHING_ORACLE": str(oracle)}
    run = run_worker(server, "compute", parameters, checkpoint_dir, dataset_id, extra_env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    if log is not None:
        log.extend(run.stderr.splitlines())
    present = {a["_id"] for a in server.annotations(dataset_id)}
    found = [defaultdict(list) for _ in touching]
    for annotation in server.annotations(dataset_id):
        if MARKER_KEY not in annotation:
            continue
        source = annotation[MARKER_KEY].split("/", 1)[1]
        time, cell = sources[source]
        accepted = REVIEW_TAG not in annotation["tags"]
        assert accepted == (source not in present)  # replaced exactly when accepted
        polygon = Polygon([(c["x"], c["y"]) for c in annotation["coordinates"]])
        assert polygon.is_valid
        found[time][cell].append((polygon, accepted))
    return found


def overlaps(touching: list[TouchingSet], found) -> list[float]:
    """Overlap (px²) of each touching pair whose outlines are both accepted."""
    areas = []
    for scene, cells in zip(touching, found):
        accepted = {cell: next((p for p, ok in versions if ok), None) for cell, versions in cells.items()}
        for i, j in scene.scene.contacts:
            if accepted.get(i) is not None and accepted.get(j) is not None:
                areas.append(accepted[i].intersection(accepted[j]).area)
    return areas


@pytest.mark.parametrize("padding", [0, 2])
def test_touching_cells_meet_on_one_boundary(server, oracle_checkpoint_dir, tmp_path, padding):
    touching = scenes()
    found = refine_through_worker(server, oracle_checkpoint_dir, tmp_path, touching, Padding=padding)
    areas = overlaps(touching, found)
    print(f"Padding {padding}: {len(areas)} touching pairs accepted, largest overlap {max(areas):.3g} px²")
    assert len(areas) >= 45
    assert max(areas) <= 0.5
    near, doubled = [], []
    for scene, cells in zip(touching, found):
        for cell in {k for pair in scene.scene.contacts for k in pair}:
            accepted = [p for p, ok in cells.get(cell, []) if ok]
            assert len(accepted) <= 1
            if not accepted:
                continue
            zone = shapely.union_all([scene.scene.contacts[tuple(sorted((cell, j)))]
                                      for j in scene.scene.neighbours(cell)]).buffer(NEAR_CONTACT + padding)
            p90 = near_contact_p90(accepted[0], ideal(scene, cell, padding), zone)
            if p90 is not None:
                near.append(p90)
        for prompt in scene.prompts:
            if prompt.second:  # two boxes on one cell: one accepted outline, the whole cell
                accepted = [p for p, ok in cells[prompt.cell] if ok]
                assert len(accepted) == 1
                doubled.append(iou(accepted[0], ideal(scene, prompt.cell, padding)))
    print(f"near the contacts, 90th-pct distance: median {np.median(near):.2f} px over {len(near)} cells; "
          f"cells boxed twice: IoU min {min(doubled):.3f}")
    assert np.median(near) <= 0.8
    assert min(doubled) >= 0.9


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the outline processes need two CPUs")
def test_touching_cells_meet_on_one_boundary_when_the_outline_processes_keep_them_apart(
        server, oracle_checkpoint_dir, tmp_path):
    """A job of more than PROCESS_POOL_MIN_OBJECTS objects: the outlines are settled, and
    the touching groups kept apart, in the outline processes."""
    from sam2_refine.worker import PROCESS_POOL_MIN_OBJECTS

    touching = [touching_set(seed, 1024, 1024, 60) for seed in (0, 1, 2, 3)]
    assert sum(len(scene.prompts) for scene in touching) >= PROCESS_POOL_MIN_OBJECTS
    log: list[str] = []
    found = refine_through_worker(server, oracle_checkpoint_dir, tmp_path, touching, log, Padding=2)
    assert any("outlines in" in line and "processes" in line for line in log), log
    areas = overlaps(touching, found)
    print(f"{len(areas)} touching pairs accepted, largest overlap {max(areas):.3g} px²")
    assert len(areas) >= 150 and max(areas) <= 0.5


def test_with_overlaps_allowed_touching_outlines_overlap_as_found(server, oracle_checkpoint_dir, tmp_path):
    touching = scenes()
    found = refine_through_worker(server, oracle_checkpoint_dir, tmp_path, touching, **{OVERLAPS: True})
    areas = overlaps(touching, found)
    assert sum(area > 0.5 for area in areas) >= 0.8 * len(areas)


@pytest.mark.parametrize("padding", [0, 2])
def test_isolated_cells_keep_exactly_the_outline_they_had(padding):
    """Cells with no other within 5 px are neither split nor clipped: with outlines kept
    apart (the default) their polygons are vertex for vertex those made with overlaps allowed."""
    from tests.measure_contacts import refine

    touching = touching_set(1)
    apart, _ = refine(touching, 0.7, padding)
    overlapping, _ = refine(touching, 0.7, padding, keep_apart=False)
    isolated = set(touching.scene.isolated())
    checked = 0
    for prompt, a, b in zip(touching.prompts, apart, overlapping):
        if prompt.cell in isolated:
            assert a.polygon.equals_exact(b.polygon, 0.0) and a.doubts == b.doubts
            checked += 1
    assert checked >= 5


def test_new_outlines_yield_to_the_outlines_an_earlier_run_wrote(server, oracle_checkpoint_dir, tmp_path):
    """Half the cells refined by a first run, their touching neighbours added and refined by
    a second run with the same settings: the written outlines stay as they are, and the new
    ones yield to them as written (padded and smoothed), not to an approximation."""
    scene = touching_set(0, SIDE, SIDE, 30)
    dataset_id = server.add_dataset(np.full((1, 1, 1, 1, SIDE, SIDE), 100, np.uint16))
    oracle = tmp_path / "touching.json"
    oracle.write_text(answers_to_json([scene]))
    env = {"SAM2_REFINE_PREDICTOR": "tests.touching_cells:from_environment", "TOUCHING_ORACLE": str(oracle)}
    parameters = compute_parameters(dataset_id, **{"Delete original annotations": True, "Smoothing": 0.7,
                                                   "Padding": 2})
    parameters["tile"] = {"XY": 0, "Z": 0, "Time": 0}
    sources = {}

    def refine(cells: set[int]) -> dict[str, Polygon]:
        for prompt in scene.prompts:
            if prompt.cell in cells and not prompt.second:
                annotation_id = server.add_annotation(
                    dataset_id, [(c["x"], c["y"]) for c in prompt.coordinates], tags=["rough"], shape=prompt.shape,
                    location={"XY": 0, "Z": 0, "Time": 0})
                sources[annotation_id] = prompt.cell
        run = run_worker(server, "compute", parameters, oracle_checkpoint_dir, dataset_id, extra_env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        return {a["_id"]: Polygon([(c["x"], c["y"]) for c in a["coordinates"]])
                for a in server.annotations(dataset_id) if MARKER_KEY in a and REVIEW_TAG not in a["tags"]}

    first = refine({cell for cell in range(len(scene.scene.truths)) if cell % 2 == 0})
    both = refine({cell for cell in range(len(scene.scene.truths)) if cell % 2 == 1})
    assert all(both[i].equals_exact(polygon, 0.0) for i, polygon in first.items())  # never edited
    cell_of = {i: sources[a[MARKER_KEY].split("/", 1)[1]] for a in server.annotations(dataset_id)
               if (i := a["_id"]) in both}
    new = {cell_of[i]: polygon for i, polygon in both.items() if i not in first}
    old = {cell_of[i]: polygon for i, polygon in first.items()}
    areas = [old[i].intersection(new[j]).area for pair in scene.scene.contacts
             for i, j in (pair, pair[::-1]) if i in old and j in new]
    print(f"{len(areas)} touching pairs across the runs, largest overlap {max(areas):.3g} px²")
    assert len(areas) >= 8
    assert max(areas) <= 0.01  # what is left: the written vertices as single floats (resume's Counterpart)
