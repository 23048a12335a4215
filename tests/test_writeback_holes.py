"""Issue 23's write-back holes, one by one, against the in-memory platform: what a
careful reader found where creates, connections, replace, resume and the end of the
job meet (each test failed on the code before its fix)."""

from __future__ import annotations

import pytest

from sam2_refine import connections
from sam2_refine.errors import WorkerError
from sam2_refine.nimbus import MARKER_KEY, SOURCE_KEY, outline_digest
from sam2_refine.markers import run_key
from sam2_refine.summary import report_nothing_to_refine
from sam2_refine.writeback import Unfinished
from tests.fake_platform import FakePlatform, HttpError
from tests.writeback_jobs import (  # noqa: F401 (fault_test_budget: an autouse fixture)
    HERE, Silent, check_replaced_exactly_once, complete_earlier, fault_test_budget, only_refined, parameters,
    refine_all, square, stale_refinement_of_an_edited_original, writer_for,
)

TOKEN_EXPIRED = WorkerError("The platform did not accept this job's token (HTTP 401)",
                            info="Run the tool again from the app; your session may have expired.",
                            title="Not authorized")


def refined_by_an_earlier_run(platform, count=3):
    """`count` originals an earlier run with the same settings refined, keeping them."""
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(count)]
    writer, _ = writer_for(platform, parameters(platform, replace=False))
    refine_all(platform, writer, originals)
    writer.finish()
    return originals


# --- 1: an original is deleted only when its counterpart exists at that moment -----------


def test_an_original_whose_refinement_is_deleted_while_the_job_runs_is_kept_and_the_job_says_so():
    platform = FakePlatform()
    originals = refined_by_an_earlier_run(platform)
    writer, job = writer_for(platform, parameters(platform))  # the same job, now replacing
    deleted = only_refined(platform, originals[1])["_id"]
    del platform.annotations[deleted]  # the user deletes it in the app after the job read the dataset
    complete_earlier(platform, writer, job, originals)
    writer.finish()
    assert originals[1] in platform.annotations  # never neither version
    check_replaced_exactly_once(platform, [originals[0], originals[2]])
    assert writer.result.deleted == 2 and writer.result.completed == 2
    [(message, info)] = writer.reporter.warnings
    assert message.startswith("1 original was kept") and "refined polygon was deleted" in message
    assert "Run the tool again" in info


def test_a_duplicate_whose_keeper_is_deleted_while_the_job_runs_is_kept():
    platform = FakePlatform()
    original = platform.add(square(10, 10), tags=["nucleus"])
    params = parameters(platform)
    digest = outline_digest("polygon", platform.annotations[original]["coordinates"])
    mark = {MARKER_KEY: f"{run_key(params)}/{original}", SOURCE_KEY: digest}
    keeper = platform.add(square(11, 11, 8), tags=["refined"], **mark)
    twin = platform.add(square(11, 11, 8), tags=["refined"], **mark)
    writer, job = writer_for(platform, params)
    del platform.annotations[keeper]
    complete_earlier(platform, writer, job, [original])
    writer.finish()
    assert twin in platform.annotations and original in platform.annotations


# --- 2: moved connections made in chunks are never made twice -----------------------------


def test_a_later_chunk_of_moved_connections_refused_does_not_make_the_earlier_chunks_twice(monkeypatch):
    monkeypatch.setattr(connections, "CONNECTION_CHUNK", 2)
    platform = FakePlatform()
    parent = platform.add(square(0, 0, 200), tags=["cell"])
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(5)]
    for original in originals:
        platform.connect(parent, original)
    writer, _ = writer_for(platform, parameters(platform))
    # The second chunk of moved connections is refused once (an end looked gone).
    platform.fail("create_connections", HttpError(400, "A parent or child annotation does not exist"), after_calls=1)
    refine_all(platform, writer, originals)
    writer.finish()
    check_replaced_exactly_once(platform, originals)
    links = platform.links()
    assert len(links) == len(set(links)), "a connection made twice"
    assert links == sorted((parent, only_refined(platform, o)["_id"]) for o in originals)


# --- 3: the end-of-job retry keeps what is unsaved on the list -----------------------------


@pytest.mark.parametrize("refusal", [HttpError(400, "data.tags must be array"), TOKEN_EXPIRED])
def test_a_refusal_in_the_end_of_job_retry_is_the_jobs_error_and_still_counts_the_unsaved(refusal):
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("create_annotations", lost=True, times=100)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)  # never confirmed: left for the end of the job
    platform.clear_faults("create_annotations")
    platform.fail("create_annotations", refusal, times=100)
    with pytest.raises(Unfinished) as caught:
        writer.finish()
    assert "3 refined polygons could not be saved" in caught.value.message
    assert writeback_message(refusal) in caught.value.info
    assert "Run the tool again with the same settings" in caught.value.info
    assert "3 refined polygons could not be saved" in writer.left_undone()
    assert set(originals) <= set(platform.annotations)


def writeback_message(refusal) -> str:
    return refusal.message if isinstance(refusal, WorkerError) else "HTTP 400: data.tags must be array"


def test_a_token_that_expires_before_the_last_replacements_is_reported_with_what_is_left():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    platform.fail("create_annotations", lost=True)  # sent again: its late twins are looked for at the end
    platform.fail("delete_annotations", lost=True, times=100)
    writer, _ = writer_for(platform, parameters(platform))
    refine_all(platform, writer, originals)
    platform.clear_faults("delete_annotations")
    for method in ("existing_annotations", "delete_annotations", "annotations_since", "connections_since"):
        platform.fail(method, TOKEN_EXPIRED, times=100)
    with pytest.raises(Unfinished) as caught:
        writer.finish()
    assert "3 originals are still there" in caught.value.message
    assert "HTTP 401" in caught.value.info
    assert set(originals) <= set(platform.annotations)


# --- 5: a first run recognises nothing it did not make -------------------------------------


def test_an_unmarked_polygon_with_the_output_tags_inside_an_original_is_not_taken_for_its_refinement():
    platform = FakePlatform()
    original = platform.add(square(10, 10, 20), tags=["nucleus"])
    platform.add(square(12, 12, 15), tags=["refined"])  # another tool's output under the same tag
    writer, job = writer_for(platform, parameters(platform))
    assert original not in job.earlier.counterparts
    assert job.earlier.accepted_outlines(HERE) == []
    refine_all(platform, writer, [original])
    writer.finish()
    check_replaced_exactly_once(platform, [original])


# --- 6: "replaced N originals" counts originals only ---------------------------------------


def test_stale_refinements_removed_at_the_end_of_the_job_are_not_counted_as_replaced_originals():
    platform = FakePlatform()
    params = parameters(platform)
    original, stale = stale_refinement_of_an_edited_original(platform, params)
    writer, _ = writer_for(platform, params)
    platform.fail("delete_annotations", HttpError(500, "busy"))  # the stale one's removal, the first delete
    refine_all(platform, writer, [original])
    writer.finish()
    assert stale not in platform.annotations and original not in platform.annotations
    assert writer.result.deleted == 1 and writer.result.stale_removed == 1


# --- 7: a finished job run again says an earlier run did the work ---------------------------


class Recorder(Silent):
    def __init__(self):
        super().__init__()
        self.lines = []

    def progress(self, fraction, info="", force=False):
        self.lines.append(info)


def test_a_finished_replacing_job_run_again_counts_the_refined_outlines_an_earlier_run_made():
    platform = FakePlatform()
    originals = [platform.add(square(i * 20, 0), tags=["nucleus"]) for i in range(3)]
    params = parameters(platform)
    writer, _ = writer_for(platform, params)
    refine_all(platform, writer, originals)
    writer.finish()
    check_replaced_exactly_once(platform, originals)
    twin_id = platform._new_id()  # a late write that landed after the job: no 4th outline
    platform.annotations[twin_id] = {**only_refined(platform, originals[0]), "_id": twin_id}
    _, job = writer_for(platform, params)  # the same job again
    assert job.originals == {}
    reporter = Recorder()
    report_nothing_to_refine(params, 1, job.earlier.refined_outlines(), reporter)
    assert reporter.warnings == []  # not "Nothing to refine ... Check 'Tag of objects to refine'"
    assert reporter.lines == ["Nothing left to refine: an earlier run with the same settings did this work "
                              "(3 refined outlines at the 1 selected position)"]


def test_a_job_with_nothing_at_its_positions_still_says_to_check_the_tag():
    platform = FakePlatform()
    params = parameters(platform)
    _, job = writer_for(platform, params)
    reporter = Recorder()
    report_nothing_to_refine(params, 2, job.earlier.refined_outlines(), reporter)
    assert reporter.warnings == [("Nothing to refine: no polygons or rectangles tagged nucleus at the 2 selected "
                                  "positions", "Check 'Tag of objects to refine' and the Batch fields.")]
    assert reporter.lines == ["Nothing to refine"]
