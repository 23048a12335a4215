"""Write-back order, tags, connections and the write policy, against the in-memory
platform (milliseconds; its clock moves only when write-back waits).

The subprocess tests (test_safe_writeback.py, test_faults.py, test_trust.py) show the
same guarantees through HTTP; these cover the cases one by one.
"""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon

from sam2_refine import creates, markers, nimbus, writes
from sam2_refine import interface as ui
from sam2_refine.connections import AUTOMATIC_LABEL
from sam2_refine.creates import Refined
from sam2_refine.errors import WorkerError
from sam2_refine.markers import run_key
from sam2_refine.nimbus import MARKER_KEY, SOURCE_KEY, outline_digest
from sam2_refine.parameters import Location
from sam2_refine.resume import Counterpart
from sam2_refine.writeback import Unfinished, WriteBack
from sam2_refine.writes import MAX_SENDS
from tests.fake_platform import FakePlatform, HttpError
from tests.writeback_jobs import (  # noqa: F401 (fault_test_budget: an autouse fixture)
    HERE, WRITES, check_replaced_exactly_once, complete_earlier, fault_test_budget, inner, only_refined, parameters,
    refine_all, square, stale_refinement_of_an_edited_original, write_calls, writer_for,
)

# --- order, tags, connections ----------------------------------------------------------


def test_connect_to_the_tag_being_refined_makes_no_self_loops_and_never_picks_an_original():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(5)]
    parent = platform.add([(50, 5)], tags=["nucleus"], shape="point")  # a nucleus that is not being refined
    params = parameters(platform, connect=["nucleus"])
    writer, _ = writer_for(platform, params)
    refine_all(platform, writer, originals)
    writer.finish()
    refined_ids = {only_refined(platform, o)["_id"] for o in originals}
    assert all(parent_id != child for parent_id, child in platform.links())
    assert platform.links() == sorted((parent, child) for child in refined_ids)
    assert all(c["label"] == AUTOMATIC_LABEL for c in platform.connections_by_id.values())
    assert not set(originals) & set(platform.annotations)


def test_nearest_parent_is_never_the_refined_outlines_own_original_even_when_it_is_kept():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    params = parameters(platform, connect=["nucleus"])
    writer, _ = writer_for(platform, params)
    refine_all(platform, writer, originals, doubtful={originals[0]})
    writer.finish()
    assert originals[0] in platform.annotations  # doubtful: kept
    assert platform.links() == []  # the only nucleus-tagged objects are this job's own


def test_connect_to_nearest_chooses_the_nearest_parent_at_the_same_location_and_channel():
    platform = FakePlatform()
    here, later = {"XY": 0, "Z": 0, "Time": 0}, {"XY": 0, "Z": 0, "Time": 1}
    original = platform.add(square(100, 100), tags=["nucleus"], location=here)
    near = platform.add([(120, 105)], tags=["cell"], shape="point", location=here, channel=0)
    platform.add([(300, 300)], tags=["cell"], shape="point", location=here, channel=0)  # far
    platform.add([(105, 105)], tags=["cell"], shape="point", location=later, channel=0)  # nearer, another Time
    platform.add([(106, 106)], tags=["cell"], shape="point", location=here, channel=2)  # nearer, another channel
    params = parameters(platform, connect=["cell"], connect_channel=0, replace=False)
    writer, _ = writer_for(platform, params, locations=(HERE, Location(0, 0, 1)))
    refine_all(platform, writer, [original])
    writer.finish()
    assert platform.links() == [(near, only_refined(platform, original)["_id"])]


def test_parent_connection_moves_to_the_counterpart_exactly_once():
    platform = FakePlatform()
    cell = platform.add(square(0, 0, 100), tags=["cell"])
    nucleus = platform.add(square(10, 10), tags=["nucleus"])
    platform.connect(cell, nucleus, tags=["lineage"], label="manual")
    params = parameters(platform, connect=["cell"])
    writer, _ = writer_for(platform, params)
    writer.write_location(HERE, [Refined(platform.annotations[nucleus], Polygon(square(11, 11, 8)))])
    writer.finish()
    refined = only_refined(platform, nucleus)["_id"]
    # connect-to-nearest picked the same cell: one connection, not two.
    assert platform.links() == [(cell, refined)]
    assert [c["tags"] for c in platform.connections_by_id.values()] == [["lineage"]]


def test_connection_between_an_original_and_its_refined_version_is_dropped_not_made_a_self_loop():
    platform = FakePlatform()
    original = platform.add(square(0, 0), tags=["nucleus"])
    params = parameters(platform)
    # A half-written location whose refined outline was connected to its own original
    # (as the platform's connectTo did on the first release).
    refined = platform.add(square(1, 1, 8), tags=["refined"], **{MARKER_KEY: f"{run_key(params)}/{original}"})
    platform.connect(original, refined)
    writer, job = writer_for(platform, params)
    writer.write_location(HERE, [], [(platform.annotations[original], job.earlier.counterparts[original])])
    writer.finish()
    assert original not in platform.annotations
    assert platform.links() == []


def test_without_output_tags_refined_outlines_keep_their_originals_tags():
    platform = FakePlatform()
    a = platform.add(square(0, 0), tags=["nucleus", "treated"])
    b = platform.add(square(20, 0), tags=["nucleus", "control"])
    writer, _ = writer_for(platform, parameters(platform, output_tags=()))
    refine_all(platform, writer, [a, b], doubtful={b})
    writer.finish()
    assert only_refined(platform, a)["tags"] == ["nucleus", "treated"]
    assert only_refined(platform, b)["tags"] == ["nucleus", "control", ui.REVIEW_TAG]
    assert a not in platform.annotations and b in platform.annotations


def test_doubtful_refinement_never_replaces_its_original_and_carries_one_review_tag():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals, doubtful={originals[1]})
    writer.finish()
    assert [o in platform.annotations for o in originals] == [False, True, False]
    assert only_refined(platform, originals[1])["tags"] == ["refined", ui.REVIEW_TAG]
    assert only_refined(platform, originals[0])["tags"] == ["refined"]
    assert writer.result.deleted == 2 and writer.result.created_doubtful == 1


def test_originals_are_deleted_only_after_their_counterparts_are_created():
    platform = FakePlatform()
    cell = platform.add(square(0, 0, 100), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.connect(cell, originals[0])
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    writer.finish()
    assert write_calls(platform) == list(WRITES)


def test_lineage_across_frames_follows_both_ends_as_each_frame_is_replaced():
    platform = FakePlatform()
    first = platform.add(square(0, 0), tags=["nucleus"], location={"XY": 0, "Z": 0, "Time": 0})
    second = platform.add(square(2, 0), tags=["nucleus"], location={"XY": 0, "Z": 0, "Time": 1})
    platform.connect(first, second, tags=["track"])
    writer, _ = writer_for(platform, parameters(platform), locations=(Location(0, 0, 0), Location(0, 0, 1)))
    writer.write_location(Location(0, 0, 0), [Refined(platform.annotations[first], Polygon(square(1, 1, 8)))])
    writer.write_location(Location(0, 0, 1), [Refined(platform.annotations[second], Polygon(square(3, 1, 8)))])
    writer.finish()
    assert platform.links() == [(only_refined(platform, first)["_id"], only_refined(platform, second)["_id"])]
    assert [c["tags"] for c in platform.connections_by_id.values()] == [["track"]]


# --- failures ----------------------------------------------------------------------------


def test_failed_create_deletes_nothing_and_raises():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("create_annotations", HttpError(400, "data.tags must be array"))
    writer, _ = writer_for(platform, parameters(platform))
    with pytest.raises(WorkerError, match="data.tags must be array"):
        refine_all(platform, writer, originals)
    assert set(originals) <= set(platform.annotations)
    assert "delete_annotations" not in platform.calls


def test_a_later_upload_chunk_that_fails_deletes_nothing_there_and_counts_what_was_saved(monkeypatch):
    monkeypatch.setattr(creates, "CREATE_CHUNK", 2)
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(4)]
    writer, _ = writer_for(platform, parameters(platform))
    platform.fail("create_annotations", HttpError(400, "data.coordinates must contain at least 1 items"),
                  after_calls=1)
    with pytest.raises(WorkerError, match="at least 1 items"):
        refine_all(platform, writer, originals)
    assert set(originals) <= set(platform.annotations)  # nothing deleted at that location
    assert "delete_annotations" not in platform.calls
    assert writer.result.created == 2 and writer.result.not_saved == 2


def test_failed_delete_keeps_both_versions_counts_them_and_ends_unfinished_naming_the_tags():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("delete_annotations", HttpError(403, "Write access denied"), times=100)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    with pytest.raises(Unfinished) as caught:
        writer.finish()
    assert set(originals) <= set(platform.annotations)
    assert all(len(platform.refined_of(o)) == 1 for o in originals)
    assert writer.result.kept_originals == 3 and writer.result.deleted == 0
    assert "3 originals are still there" in caught.value.message
    assert "refined polygons carry the tags refined" in caught.value.info
    assert "originals carry nucleus" in caught.value.info and "Run the tool again" in caught.value.info


def test_a_delete_that_fails_once_is_completed_within_the_job():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("delete_annotations", lost=True)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    writer.finish()
    check_replaced_exactly_once(platform, originals)
    assert write_calls(platform).count("delete_annotations") == 2


def test_a_connection_create_that_keeps_failing_keeps_the_originals_and_ends_unfinished():
    platform = FakePlatform()
    parent = platform.add(square(0, 0, 100), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    for original in originals:
        platform.connect(parent, original)
    platform.fail("create_connections", lost=True, times=100)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    with pytest.raises(Unfinished, match="3 originals are still there"):
        writer.finish()
    assert set(originals) <= set(platform.annotations)
    assert len([l for l in platform.links() if l[0] == parent]) == 3  # the original connections, untouched
    # Never a loop: each attempt sends at most MAX_SENDS times (the job's pass and finish's).
    assert write_calls(platform).count("create_connections") == 2 * MAX_SENDS


def test_a_connection_create_that_fails_once_is_completed_within_the_job():
    platform = FakePlatform()
    parent = platform.add(square(0, 0, 100), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    for original in originals:
        platform.connect(parent, original)
    platform.fail("create_connections", lost=True)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    writer.finish()
    check_replaced_exactly_once(platform, originals)
    assert platform.links() == sorted((parent, only_refined(platform, o)["_id"]) for o in originals)


def test_an_orphan_connection_is_skipped_and_counted_and_the_rest_replaced():
    platform = FakePlatform()
    parent = platform.add(square(0, 0, 100), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    for original in originals:
        platform.connect(parent, original)
    platform.connect("f" * 24, originals[1], tags=["orphan"])  # its parent was bulk-deleted long ago
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    writer.finish()
    check_replaced_exactly_once(platform, originals)
    assert platform.links() == sorted((parent, only_refined(platform, o)["_id"]) for o in originals)
    assert writer.result.connections_skipped == 1
    assert any("1 connection could not be moved" in message for message, _ in writer.reporter.warnings)


def test_a_413_halves_the_request_and_goes_on():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(5)]
    platform.max_body_items = 2
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    writer.finish()
    check_replaced_exactly_once(platform, originals)
    creates = [len(body) for method, body in platform.bodies if method == "create_annotations"]
    assert creates[0] == 5 and sum(size for size in creates if size <= 2) == 5


def test_chunks_are_bounded_by_bytes_as_well_as_count(monkeypatch):
    monkeypatch.setattr(writes, "CHUNK_BYTES", 2_000)
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(12)]
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    bodies = [body for method, body in platform.bodies if method == "create_annotations"]
    assert len(bodies) > 1 and all(nimbus.json_size(body) <= 2_000 for body in bodies)
    assert sum(len(body) for body in bodies) == 12


# --- unknown outcomes --------------------------------------------------------------------


def three_replaced_under(**fault) -> tuple[FakePlatform, WriteBack, list[str]]:
    """Three nuclei refined and replaced while the first create goes wrong as `fault`
    says (FakePlatform.fail); writes the server applies late have landed since."""
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("create_annotations", **fault)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    writer.finish()
    platform.finish_late_writes()
    return platform, writer, originals


def test_create_applied_but_answer_lost_is_not_repeated():
    platform, _, originals = three_replaced_under(after_apply=True)
    check_replaced_exactly_once(platform, originals)
    assert platform.calls.count("create_annotations") == 1


def test_a_create_never_applied_is_checked_then_sent_again_once():
    platform, _, originals = three_replaced_under(lost=True)
    check_replaced_exactly_once(platform, originals)
    first, second = platform.calls.index("create_annotations"), len(platform.calls) - 1 - \
        platform.calls[::-1].index("create_annotations")
    assert platform.calls.count("create_annotations") == 2
    assert "annotations_since" in platform.calls[first:second]  # checked in between
    assert platform.clock.seconds >= 1.0  # the server had its settle time first


def test_a_create_applied_late_within_its_settle_time_is_found_and_not_sent_again():
    platform, _, originals = three_replaced_under(late=0.5)
    check_replaced_exactly_once(platform, originals)
    assert platform.calls.count("create_annotations") == 1


def test_a_create_applied_after_it_was_sent_again_leaves_no_duplicate():
    # Applied after the resend, before the location is done.
    platform, writer, originals = three_replaced_under(late=1.2)
    check_replaced_exactly_once(platform, originals)
    assert platform.calls.count("create_annotations") == 2
    assert writer.result.duplicates_removed == 3


def test_a_create_applied_after_the_location_was_done_is_removed_at_the_end():
    platform, _, originals = three_replaced_under(late=1.9)
    check_replaced_exactly_once(platform, originals)


def test_a_connection_applied_after_it_was_sent_again_leaves_no_duplicate():
    platform = FakePlatform()
    parent = platform.add(square(0, 0, 100), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(2)]
    for original in originals:
        platform.connect(parent, original)
    platform.fail("create_connections", late=1.5)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    writer.finish()
    platform.finish_late_writes()
    check_replaced_exactly_once(platform, originals)
    assert platform.links() == sorted((parent, only_refined(platform, o)["_id"]) for o in originals)


def test_a_create_refused_with_an_error_answer_is_checked_once_and_sent_again_without_waiting():
    platform, _, originals = three_replaced_under(unavailable=True)
    check_replaced_exactly_once(platform, originals)
    assert platform.calls.count("create_annotations") == 2
    assert platform.clock.seconds < writes.settle_seconds()  # a 503 came from something that waited


def test_every_write_never_confirmed_is_sent_at_most_max_sends_times_then_reported():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("create_annotations", lost=True, times=100)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)  # left for the end of the job, not an endless loop
    with pytest.raises(Unfinished, match="3 refined polygons could not be saved"):
        writer.finish()
    assert platform.calls.count("create_annotations") <= 2 * MAX_SENDS
    assert set(originals) <= set(platform.annotations) and "delete_annotations" not in platform.calls


def test_verifying_an_upload_lists_only_what_was_created_since_not_the_dataset():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("create_annotations", lost=True)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    assert platform.calls.count("output_polygons") == 1  # only when the job starts
    assert platform.calls.count("annotations_since") >= 1


# --- resume --------------------------------------------------------------------------------


def test_half_written_location_is_completed_without_duplicates():
    platform = FakePlatform()
    cell = platform.add(square(0, 0, 100), tags=["cell"])
    original = platform.add(square(10, 10), tags=["nucleus"])
    platform.connect(cell, original, tags=["lineage"])
    params = parameters(platform, connect=["cell"])
    # The first run saved the refined outline and copied the connection, then was killed.
    refined = platform.add(square(11, 11, 8), tags=["refined"], **{
        MARKER_KEY: f"{run_key(params)}/{original}",
        SOURCE_KEY: outline_digest("polygon", platform.annotations[original]["coordinates"])})
    platform.connect(cell, refined, tags=["lineage"])
    writer, job = writer_for(platform, params)
    counterpart = job.earlier.counterparts[original]
    assert counterpart.refined_id == refined
    writer.write_location(HERE, [], [(platform.annotations[original], counterpart)])
    writer.finish()
    assert original not in platform.annotations
    assert platform.links() == [(cell, refined)]
    assert "create_annotations" not in platform.calls
    assert writer.result.completed == 1


def test_a_rerun_after_the_users_undo_of_the_jobs_last_write_replaces_each_original_once():
    """The platform keeps a job's writes in the user's undo history (PLATFORM.md §10): the
    user's next undo reverts the job's last write, bringing the originals that write
    deleted back, with their ids, beside their refinements. The same job again completes."""
    platform = FakePlatform()
    parent = platform.add(square(0, 0, 100), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    for original in originals:
        platform.connect(parent, original, tags=["lineage"])
    documents = {o: dict(platform.annotations[o]) for o in originals}
    params = parameters(platform)
    writer, _ = writer_for(platform, params)
    refine_all(platform, writer, originals)
    writer.finish()
    method, last = platform.bodies[-1]
    assert method == "delete_annotations" and set(last) == set(originals)
    platform.annotations.update({o: documents[o] for o in last})  # the undo
    writer, job = writer_for(platform, params)
    assert set(job.earlier.counterparts) == set(originals)
    complete_earlier(platform, writer, job, originals)
    writer.finish()
    check_replaced_exactly_once(platform, originals)
    assert platform.links() == sorted((parent, only_refined(platform, o)["_id"]) for o in originals)
    assert "create_annotations" not in platform.calls[platform.calls.index("polygons", 1):]
    assert writer.result.completed == 3


def test_earlier_doubtful_counterpart_is_not_completed_into_a_replacement():
    platform = FakePlatform()
    original = platform.add(square(10, 10), tags=["nucleus"])
    params = parameters(platform)
    refined = platform.add(square(11, 11, 8), tags=["refined", ui.REVIEW_TAG],
                           **{MARKER_KEY: f"{run_key(params)}/{original}"})
    writer, job = writer_for(platform, params)
    writer.write_location(HERE, [], [(platform.annotations[original], job.earlier.counterparts[original])])
    writer.finish()
    assert original in platform.annotations and writer.result.deleted == 0
    assert refined in platform.annotations


def test_a_counterpart_of_an_outline_since_edited_is_stale_and_replaced_by_the_new_refinement():
    platform = FakePlatform()
    params = parameters(platform)
    original, stale = stale_refinement_of_an_edited_original(platform, params)
    writer, job = writer_for(platform, params)
    assert original not in job.earlier.counterparts and job.earlier.stale == {original: [stale]}
    assert job.earlier.accepted_outlines(HERE) == []  # the stale one counts for nothing
    refine_all(platform, writer, [original])
    writer.finish()
    (refined,) = platform.refined_of(original)
    assert refined["_id"] != stale and stale not in platform.annotations and original not in platform.annotations
    assert writer.result.stale_removed == 1


def test_duplicates_of_an_earlier_run_are_removed_and_their_connections_kept_on_the_one_left():
    platform = FakePlatform()
    parent = platform.add(square(0, 0, 100), tags=["cell"])
    original = platform.add(square(10, 10), tags=["nucleus"])
    params = parameters(platform)
    digest = outline_digest("polygon", platform.annotations[original]["coordinates"])
    mark = {MARKER_KEY: f"{run_key(params)}/{original}", SOURCE_KEY: digest}
    keeper = platform.add(square(11, 11, 8), tags=["refined"], **mark)
    twin = platform.add(square(11, 11, 8), tags=["refined"], **mark)
    platform.connect(parent, twin, tags=["lineage"])
    writer, job = writer_for(platform, params)
    writer.write_location(HERE, [], [(platform.annotations[original], job.earlier.counterparts[original])])
    writer.finish()
    assert twin not in platform.annotations and keeper in platform.annotations
    assert platform.links() == [(parent, keeper)]


def test_accepted_outlines_include_those_whose_original_was_replaced():
    platform = FakePlatform()
    params = parameters(platform)
    outline = square(11, 11, 8)
    platform.add(outline, tags=["refined"], **{MARKER_KEY: f"{run_key(params)}/{'e' * 24}"})  # original gone
    platform.add(square(31, 11, 8), tags=["refined", ui.REVIEW_TAG], **{MARKER_KEY: f"{run_key(params)}/{'c' * 24}"})
    platform.add(square(31, 11, 8), tags=["refined"], location={"XY": 1, "Z": 0, "Time": 0},
                 **{MARKER_KEY: f"{run_key(params)}/{'b' * 24}"})  # out of the job's range
    _, job = writer_for(platform, params)
    [accepted] = job.earlier.accepted_outlines(HERE)
    assert accepted.dtype == np.float32 and accepted.tolist() == [list(map(float, p)) for p in outline]


def test_run_key_changes_with_each_setting_that_shapes_the_output_only():
    platform = FakePlatform()
    base = parameters(platform)
    assert run_key(base) == run_key(parameters(platform, replace=False, connect=["cell"]))
    for change in ({"model_name": "other.pt"}, {"resolution": ui.RESOLUTION_WHOLE_FRAME}, {"padding": 2.0},
                   {"smoothing": 1.5}, {"output_tags": ("x",)}, {"output_channel": 3}):
        assert run_key(base) != run_key(parameters(platform, **change)), change


def test_run_key_ignores_the_per_run_job_date_tag():
    platform = FakePlatform()
    first = parameters(platform, output_tags=("refined", "img job 2025-3-7 9:5:2 UTC-1"))
    second = parameters(platform, output_tags=("refined", "img job 2025-11-17 14:45:30 UTC+5.5"))
    assert run_key(first) == run_key(second) == run_key(parameters(platform))
    assert markers.stable_output_tags(first) == ("refined",)


def test_with_a_job_date_tag_a_rerun_finds_what_the_first_saved():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(2)]
    first = parameters(platform, replace=False, output_tags=("refined", "img job 2025-3-7 9:5:2 UTC-1"))
    writer, _ = writer_for(platform, first)
    refine_all(platform, writer, originals)
    second = parameters(platform, replace=False, output_tags=("refined", "img job 2025-3-8 10:0:0 UTC-1"))
    _, job = writer_for(platform, second)
    assert set(job.earlier.counterparts) == set(originals)


def test_the_platform_and_the_fake_have_what_write_back_needs_with_the_same_parameters():
    import inspect

    needed = [name for name in vars(writes.Platform) if not name.startswith("_")]
    assert "create_annotations" in needed and "annotations_since" in needed
    for name in needed:
        wanted = list(inspect.signature(getattr(writes.Platform, name)).parameters)
        assert list(inspect.signature(getattr(nimbus.Platform, name)).parameters) == wanted, name
        assert list(inspect.signature(getattr(FakePlatform, name)).parameters) == wanted, name


def test_counterpart_of_a_document_keeps_its_outline_compact():
    counterpart = Counterpart.of({"_id": "a" * 24, "shape": "polygon", "tags": ["refined"],
                                  "coordinates": [{"x": 1, "y": 2}, {"x": 5, "y": 2}, {"x": 5, "y": 6}]},
                                 ui.DOUBTFUL_TAG)
    assert counterpart.outline.dtype == np.float32 and counterpart.outline.shape == (3, 2)
    assert counterpart.point == (pytest.approx(11 / 3), pytest.approx(10 / 3), None)


def test_an_answer_that_leaves_out_a_created_polygon_is_checked_not_trusted_by_position():
    """The platform applied a create but its answer lacks the middle document: read by
    position, the second original would take the third's polygon (and its connection) and
    the third would be left out. Checked instead, each original is replaced by its own."""
    platform = FakePlatform()
    parent = platform.add(square(0, 0, 100), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    for original in originals:
        platform.connect(parent, original)
    platform.fail("create_annotations", answer_without=1)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    writer.finish()
    check_replaced_exactly_once(platform, originals)
    assert platform.calls.count("create_annotations") == 1  # all were applied: nothing sent again
    assert platform.links() == sorted((parent, only_refined(platform, o)["_id"]) for o in originals)



@pytest.mark.parametrize("second_policy, replaced", [(ui.DOUBTFUL_TAG, False), (ui.DOUBTFUL_ACCEPT, True)])
def test_a_refinement_accepted_anyway_replaces_its_original_later_only_if_that_run_accepts_doubtful_ones(
        second_policy, replaced):
    """Run 1: "Accept anyway", originals kept; one refinement was doubtful and saved
    untagged. Run 2, same settings with "Delete original annotations": under "Tag for
    review" that refinement must not replace its original; under "Accept anyway" it does."""
    platform = FakePlatform()
    doubted, good = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(2)]
    writer, _ = writer_for(platform, parameters(platform, replace=False, doubtful=ui.DOUBTFUL_ACCEPT))
    writer.write_location(HERE, [Refined(platform.annotations[doubted], inner(doubted, platform), accepted_anyway=True),
                                 Refined(platform.annotations[good], inner(good, platform))])
    writer.finish()
    assert ui.REVIEW_TAG not in only_refined(platform, doubted)["tags"]
    writer, job = writer_for(platform, parameters(platform, replace=True, doubtful=second_policy))
    writer.write_location(HERE, [], [(platform.annotations[o], job.earlier.counterparts[o]) for o in (doubted, good)])
    writer.finish()
    assert good not in platform.annotations
    assert (doubted not in platform.annotations) == replaced
    assert len(platform.refined_of(doubted)) == 1


def test_the_run_key_and_the_marker_are_what_earlier_releases_wrote():
    """Pinned: a change here would make every earlier run's refined polygons unrecognised."""
    platform = FakePlatform()
    assert run_key(parameters(platform)) == "d9cf7a25e0432f25"
    assert run_key(parameters(platform, output_tags=("refined", "img job 2025-3-7 9:5:2 UTC-1"), padding=2.5,
                              smoothing=1.25)) == "7fb84f03703e769b"
    assert run_key(parameters(platform, output_tags=())) == "117cd57e67e68f55"
    assert markers.marker("d9cf7a25e0432f25", "a" * 24) == "d9cf7a25e0432f25/" + "a" * 24
