"""Write-back order, tags and connections, against the in-memory platform (milliseconds).

The subprocess tests (test_safe_writeback.py, test_trust.py) show the same guarantees
through HTTP; these cover the cases one by one.
"""

from __future__ import annotations

import pytest
from shapely.geometry import Polygon, box

from sam2_refine import interface as ui
from sam2_refine.errors import WorkerError
from sam2_refine.nimbus import MARKER_KEY
from sam2_refine.parameters import ConnectTo, Location, RefineParameters
from sam2_refine.writeback import AUTOMATIC_LABEL, Counterpart, Refined, WriteBack, run_key
from tests.fake_platform import FakePlatform, HttpError

HERE = Location(0, 0, 0)


class Silent:
    def __init__(self):
        self.warnings = []

    def warning(self, message, info=None):
        self.warnings.append((message, info))

    def log(self, text):
        pass

    def progress(self, *args, **kwargs):
        pass


def parameters(platform, *, replace=True, output_tags=("refined",), connect=None, **changes) -> RefineParameters:
    values = dict(
        image="img", dataset_id=platform.dataset_id, refine_tags=("nucleus",), output_tags=tuple(output_tags),
        output_channel=1, model_name="m.pt", checkpoint_path=None, resolution=ui.RESOLUTION_AUTO,
        delete_originals=replace, padding=0.0, smoothing=0.7, tile=HERE, batch_text={},
        connect_to=ConnectTo(tuple(connect), None) if connect else None,
    )
    values.update(changes)
    return RefineParameters(**values)


def square(x, y, side=10):
    return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]


def writer_for(platform, params) -> WriteBack:
    writer = WriteBack(platform, params, run_key(params), Silent())
    writer.prepare()
    return writer


def refine_all(platform, writer, originals, doubtful=(), location=HERE):
    refined = [Refined(platform.annotations[o], box(*Polygon(square(i * 20, 0)).bounds).buffer(-1), o in doubtful)
               for i, o in enumerate(originals)]
    writer.write_location(location, refined)


def only_refined(platform, original):
    (refined,) = platform.refined_of(original)
    return refined


def test_connect_to_the_tag_being_refined_makes_no_self_loops_and_never_picks_an_original():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(5)]
    parent = platform.add([(50, 5)], tags=["nucleus"], shape="point")  # a nucleus that is not being refined
    params = parameters(platform, connect=["nucleus"])
    writer = writer_for(platform, params)
    refine_all(platform, writer, originals)
    refined_ids = {only_refined(platform, o)["_id"] for o in originals}
    assert all(parent_id != child for parent_id, child in platform.links())
    assert platform.links() == sorted((parent, child) for child in refined_ids)
    assert all(c["label"] == AUTOMATIC_LABEL for c in platform.connections.values())
    assert not set(originals) & set(platform.annotations)


def test_nearest_parent_is_never_the_refined_outlines_own_original_even_when_it_is_kept():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    params = parameters(platform, connect=["nucleus"])
    writer = writer_for(platform, params)
    refine_all(platform, writer, originals, doubtful={originals[0]})
    assert originals[0] in platform.annotations  # doubtful: kept
    assert platform.links() == []  # the only nucleus-tagged objects are this job's own


def test_parent_connection_moves_to_the_counterpart_exactly_once():
    platform = FakePlatform()
    cell = platform.add(square(0, 0, 100), tags=["cell"])
    nucleus = platform.add(square(10, 10), tags=["nucleus"])
    platform.connect(cell, nucleus, tags=["lineage"], label="manual")
    params = parameters(platform, connect=["cell"])
    writer = writer_for(platform, params)
    writer.write_location(HERE, [Refined(platform.annotations[nucleus], Polygon(square(11, 11, 8)))])
    refined = only_refined(platform, nucleus)["_id"]
    # connect-to-nearest picked the same cell: one connection, not two.
    assert platform.links() == [(cell, refined)]
    assert [c["tags"] for c in platform.connections.values()] == [["lineage"]]


def test_connection_between_an_original_and_its_refined_version_is_dropped_not_made_a_self_loop():
    platform = FakePlatform()
    original = platform.add(square(0, 0), tags=["nucleus"])
    params = parameters(platform)
    # A half-written location whose refined outline was connected to its own original
    # (as the platform's connectTo did on the first release).
    refined = platform.add(square(1, 1, 8), tags=["refined"], **{MARKER_KEY: f"{run_key(params)}/{original}"})
    platform.connect(original, refined)
    writer = writer_for(platform, params)
    writer.write_location(HERE, [], [(platform.annotations[original], Counterpart.of(platform.annotations[refined]))])
    assert original not in platform.annotations
    assert platform.links() == []


def test_without_output_tags_refined_outlines_keep_their_originals_tags():
    platform = FakePlatform()
    a = platform.add(square(0, 0), tags=["nucleus", "treated"])
    b = platform.add(square(20, 0), tags=["nucleus", "control"])
    writer = writer_for(platform, parameters(platform, output_tags=()))
    refine_all(platform, writer, [a, b], doubtful={b})
    assert only_refined(platform, a)["tags"] == ["nucleus", "treated"]
    assert only_refined(platform, b)["tags"] == ["nucleus", "control", ui.REVIEW_TAG]
    assert a not in platform.annotations and b in platform.annotations


def test_doubtful_refinement_never_replaces_its_original_and_carries_one_review_tag():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    writer = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals, doubtful={originals[1]})
    assert [o in platform.annotations for o in originals] == [False, True, False]
    assert only_refined(platform, originals[1])["tags"] == ["refined", ui.REVIEW_TAG]
    assert only_refined(platform, originals[0])["tags"] == ["refined"]
    assert writer.result.deleted == 2 and writer.result.created_doubtful == 1


def test_originals_are_deleted_only_after_their_counterparts_are_created():
    platform = FakePlatform()
    cell = platform.add(square(0, 0, 100), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.connect(cell, originals[0])
    writer = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    calls = [c for c in platform.calls if c not in ("dataset_connections", "tagged_annotations")]
    assert calls == ["create_annotations", "create_connections", "delete_connections", "delete_annotations"]


def test_failed_create_deletes_nothing_and_raises():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("create_annotations", HttpError(400, "data.tags must be array"))
    writer = writer_for(platform, parameters(platform))
    with pytest.raises(WorkerError, match="data.tags must be array"):
        refine_all(platform, writer, originals)
    assert set(originals) <= set(platform.annotations)
    assert "delete_annotations" not in platform.calls


def test_failed_delete_keeps_both_versions_and_counts_them():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("delete_annotations", HttpError(500))
    writer = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    assert set(originals) <= set(platform.annotations)
    assert all(len(platform.refined_of(o)) == 1 for o in originals)
    assert writer.result.kept_originals == 3 and writer.result.deleted == 0


def test_create_applied_but_answer_lost_is_not_repeated():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("create_annotations", after_apply=True)
    writer = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    assert all(len(platform.refined_of(o)) == 1 for o in originals)
    assert platform.calls.count("create_annotations") == 1
    assert not set(originals) & set(platform.annotations)


def test_lineage_across_frames_follows_both_ends_as_each_frame_is_replaced():
    platform = FakePlatform()
    first = platform.add(square(0, 0), tags=["nucleus"], location={"XY": 0, "Z": 0, "Time": 0})
    second = platform.add(square(2, 0), tags=["nucleus"], location={"XY": 0, "Z": 0, "Time": 1})
    platform.connect(first, second, tags=["track"])
    writer = writer_for(platform, parameters(platform))
    writer.write_location(Location(0, 0, 0), [Refined(platform.annotations[first], Polygon(square(1, 1, 8)))])
    writer.write_location(Location(0, 0, 1), [Refined(platform.annotations[second], Polygon(square(3, 1, 8)))])
    assert platform.links() == [(only_refined(platform, first)["_id"], only_refined(platform, second)["_id"])]
    assert [c["tags"] for c in platform.connections.values()] == [["track"]]


def test_half_written_location_is_completed_without_duplicates():
    platform = FakePlatform()
    cell = platform.add(square(0, 0, 100), tags=["cell"])
    original = platform.add(square(10, 10), tags=["nucleus"])
    platform.connect(cell, original, tags=["lineage"])
    params = parameters(platform, connect=["cell"])
    # The first run saved the refined outline and copied the connection, then was killed.
    refined = platform.add(square(11, 11, 8), tags=["refined"], **{MARKER_KEY: f"{run_key(params)}/{original}"})
    platform.connect(cell, refined, tags=["lineage"])
    writer = writer_for(platform, params)
    counterpart = Counterpart.of(platform.annotations[refined])
    writer.write_location(HERE, [], [(platform.annotations[original], counterpart)])
    assert original not in platform.annotations
    assert platform.links() == [(cell, refined)]
    assert "create_annotations" not in platform.calls
    assert writer.result.completed == 1


def test_earlier_doubtful_counterpart_is_not_completed_into_a_replacement():
    platform = FakePlatform()
    original = platform.add(square(10, 10), tags=["nucleus"])
    params = parameters(platform)
    refined = platform.add(square(11, 11, 8), tags=["refined", ui.REVIEW_TAG],
                           **{MARKER_KEY: f"{run_key(params)}/{original}"})
    writer = writer_for(platform, params)
    writer.write_location(HERE, [], [(platform.annotations[original], Counterpart.of(platform.annotations[refined]))])
    assert original in platform.annotations and writer.result.deleted == 0


def test_run_key_changes_with_the_settings_that_shape_the_output_only():
    platform = FakePlatform()
    base = parameters(platform)
    assert run_key(base) == run_key(parameters(platform, replace=False, connect=["cell"]))
    assert run_key(base) != run_key(parameters(platform, padding=2.0))
    assert run_key(base) != run_key(parameters(platform, model_name="other.pt"))
    assert run_key(base) != run_key(parameters(platform, output_tags=("x",)))


def test_the_platform_and_the_fake_have_what_write_back_needs_with_the_same_parameters():
    import inspect

    from sam2_refine import nimbus, writeback

    needed = [name for name in vars(writeback.Platform) if not name.startswith("_")]
    assert "create_annotations" in needed and "marked_annotations" in needed
    for name in needed:
        wanted = list(inspect.signature(getattr(writeback.Platform, name)).parameters)
        assert list(inspect.signature(getattr(nimbus.Platform, name)).parameters) == wanted, name
        assert list(inspect.signature(getattr(FakePlatform, name)).parameters) == wanted, name
