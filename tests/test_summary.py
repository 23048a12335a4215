"""The job's last words (sam2_refine/summary.py): the summary line, what is left undone,
and the failures that end a job with nothing refined."""

from __future__ import annotations

from collections import Counter

import pytest

from sam2_refine.errors import WorkerError
from sam2_refine.ledger import Left, WriteResult
from sam2_refine.outcome import Reason
from sam2_refine.summary import Tally, check_something_refined, job_summary, left_undone, with_saved_work
from tests.fake_platform import FakePlatform
from tests.writeback_jobs import parameters


def test_the_summary_counts_replaced_originals_and_those_kept():
    params = parameters(FakePlatform())
    tally = Tally(to_refine=5, earlier=2, skipped=Counter({Reason.EMPTY_MASK: 1}))
    result = WriteResult(created=4, deleted=3, kept_originals=1)
    assert job_summary(tally, result, params) == (
        "Refined 4 of 5; 1 skipped: 1 empty mask; 2 already refined by an earlier run with the same settings; "
        "replaced 3 originals, kept 1")


def test_a_job_whose_originals_an_earlier_run_all_refined_says_so_first():
    """It used to begin "Refined 0 of 0" (the platform's own server, Delete off, run again)."""
    params = parameters(FakePlatform(), replace=False)
    assert job_summary(Tally(earlier=144), WriteResult(), params) == (
        "Nothing new to refine: 144 already refined by an earlier run with the same settings")
    # Delete on: a rerun after the app's undo brought originals back completes their replacement.
    assert job_summary(Tally(earlier=144), WriteResult(deleted=144), parameters(FakePlatform())) == (
        "Nothing new to refine: 144 already refined by an earlier run with the same settings; replaced 144 originals")


def test_what_is_left_undone_is_said_part_by_part():
    assert left_undone(Left()) == ""
    assert left_undone(Left(unsaved=2, kept_originals=1, connections=1, leftovers=3, unswept=True)) == (
        "2 refined polygons could not be saved (their originals are untouched); 1 original is still there next "
        "to the refined version; 1 connection to nearest parents was not made; 3 extra refined polygons "
        "(duplicates or refinements of an earlier outline) could not be removed; refined polygons a late write "
        "may have made twice were not looked for")


def test_a_failure_says_what_was_saved_before_it_and_what_is_left():
    info = with_saved_work(None, WriteResult(created=3), "1 original is still there next to the refined version")
    assert info == ("The 3 refined polygons saved before are kept; run the tool again with the same settings to "
                    "continue. Also left undone: 1 original is still there next to the refined version.")
    assert with_saved_work("Check the token.", WriteResult(), "") == "Check the token."


def test_a_job_that_refined_none_of_its_originals_fails_with_the_reasons():
    tally = Tally(to_refine=3, skipped=Counter({Reason.OUTSIDE: 2}), doubtful=Counter({Reason.SPILLS_OUTSIDE: 1}))
    with pytest.raises(WorkerError, match=r"No object could be refined \(2 outside the image, 1 spills outside"):
        check_something_refined(tally, WriteResult())
    check_something_refined(tally, WriteResult(completed=1))  # completing an earlier run's work counts
    check_something_refined(Tally(), WriteResult())  # nothing to refine is not a failure
