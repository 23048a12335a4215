"""What the job tells the user at its end: the summary line, the warnings that explain
it, and what is left undone, in one place.

The counts come from the worker's `Tally` (what happened to the originals) and the
write-back's `WriteResult` and `Left` (what was written, what could not be).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import interface as ui
from .errors import WorkerError
from .ledger import Left, WriteResult
from .messages import Reporter, plural, skipped_summary
from .parameters import RefineParameters
from .review import ADVICE

RUN_AGAIN = "Run the tool again with the same settings: it completes what is left without refining anything twice."


@dataclass
class Tally:
    """What happened to the originals, for the job's messages."""

    to_refine: int = 0
    finished: int = 0
    earlier: int = 0  # already refined by an earlier run with the same settings
    skipped: Counter = field(default_factory=Counter)  # Reason -> count
    doubtful: Counter = field(default_factory=Counter)  # primary Reason -> count
    recovered: Counter = field(default_factory=Counter)  # the primary mask's Reason -> count
    cut_kept: int = 0  # doubtful, accepted anyway, but cut where SAM2's mask went on: kept for review


# --- the end of a job ------------------------------------------------------------------


def report_skipped(reasons: Counter, reporter: Reporter) -> None:
    for reason, count in reasons.most_common():
        reporter.warning(f"{plural(count, 'object')} skipped: {reason}", info=ADVICE.get(reason))


def doubtful_summary(tally: Tally, policy: str) -> str:
    """'3 doubtful (2 spills outside the original, 1 ...), tagged SAM2 review, originals kept'."""
    count = sum(tally.doubtful.values())
    reasons = ", ".join(f"{n} {reason}" for reason, n in tally.doubtful.most_common())
    outcome = {
        ui.DOUBTFUL_TAG: f"tagged '{ui.REVIEW_TAG}', originals kept",
        ui.DOUBTFUL_ACCEPT: "accepted anyway",
        ui.DOUBTFUL_SKIP: "not saved, originals kept",
    }[policy]
    if tally.cut_kept:
        outcome += (f" but {tally.cut_kept} cut where SAM2's mask went on (tagged '{ui.REVIEW_TAG}', "
                    "originals kept)")
    return f"{count} doubtful ({reasons}), {outcome}"


def report_doubtful(tally: Tally, policy: str, reporter: Reporter) -> None:
    if not tally.doubtful:
        return
    advice = {
        ui.DOUBTFUL_TAG: (
            f"They carry the tag '{ui.REVIEW_TAG}' besides the output tags, next to their originals. "
            "Compare each pair and delete the outline you do not want."
        ),
        ui.DOUBTFUL_ACCEPT: "'Doubtful refinements' is set to accept them anyway; check them in the app.",
        ui.DOUBTFUL_SKIP: "'Doubtful refinements' is set to skip them; their originals are untouched.",
    }[policy]
    reasons = "; ".join(f"{reason}: {ADVICE[reason]}" for reason in tally.doubtful if reason in ADVICE)
    reporter.warning(f"{sum(tally.doubtful.values())} refinements are doubtful: {doubtful_summary(tally, policy)}",
                     info=f"{advice} {reasons}")


def job_summary(tally: Tally, result: WriteResult, params: RefineParameters) -> str:
    """The job's last progress line: 'Refined 40 of 42; 2 skipped: ...; replaced 40 originals'
    ('Nothing new to refine: 42 already refined by an earlier run ...' when an earlier run
    refined every original, and this one at most completed its write-back)."""
    if not tally.to_refine and tally.earlier:
        summary = f"Nothing new to refine: {tally.earlier} already refined by an earlier run with the same settings"
        if params.delete_originals:
            summary += f"; replaced {result.deleted} originals"
            if result.kept_originals:
                summary += f", kept {result.kept_originals}"
        return summary
    summary = f"Refined {result.created} of {tally.to_refine}"
    if tally.skipped:
        summary += f"; {sum(tally.skipped.values())} skipped: {skipped_summary(tally.skipped)}"
    if tally.doubtful:
        summary += f"; {doubtful_summary(tally, params.doubtful)}"
    if tally.recovered:
        reasons = ", ".join(f"{n} {reason}" for reason, n in tally.recovered.most_common())
        summary += f"; {sum(tally.recovered.values())} recovered with one of SAM2's alternative masks ({reasons})"
    if tally.earlier:
        summary += f"; {tally.earlier} already refined by an earlier run with the same settings"
    if params.delete_originals:
        summary += f"; replaced {result.deleted} originals"
        if result.kept_originals:
            summary += f", kept {result.kept_originals}"
    return summary


def report_end(tally: Tally, result: WriteResult, params: RefineParameters, reporter: Reporter) -> None:
    """The warnings that explain the summary, then the summary as the last progress line."""
    report_skipped(tally.skipped, reporter)
    report_doubtful(tally, params.doubtful, reporter)
    reporter.progress(1.0, job_summary(tally, result, params), force=True)


def report_nothing_to_refine(params: RefineParameters, positions: int, refined_earlier: int,
                             reporter: Reporter) -> None:
    """The end of a job that found no original to refine or complete; `refined_earlier`:
    the refined outlines of its settings already at its positions (an earlier run's work)."""
    where = f"at the {plural(positions, 'selected position')}"
    if refined_earlier:
        reporter.progress(1.0, "Nothing left to refine: an earlier run with the same settings did this work "
                               f"({plural(refined_earlier, 'refined outline')} {where})", force=True)
        return
    tags = ", ".join(params.refine_tags) or "any tag"
    reporter.warning(f"Nothing to refine: no polygons or rectangles tagged {tags} {where}",
                     info="Check 'Tag of objects to refine' and the Batch fields.")
    reporter.progress(1.0, "Nothing to refine", force=True)


def check_something_refined(tally: Tally, result: WriteResult) -> None:
    """A job that had originals to refine and saved or completed none of them failed."""
    if tally.to_refine and not result.created and not result.completed:
        reasons = Counter(tally.skipped) + Counter(tally.doubtful)
        raise WorkerError(
            f"No object could be refined ({skipped_summary(reasons)})",
            info="See the warnings above for what to change.",
            title="Nothing refined",
        )


def with_saved_work(info: str | None, result: WriteResult, left: str) -> str:
    """A failure's advice, plus what was saved before it and what is left undone."""
    info = info or ""
    if result.created:
        info = (f"{info} The {plural(result.created, 'refined polygon')} saved before are kept; run the tool again "
                "with the same settings to continue.")
    if left:
        info = f"{info} Also left undone: {left}."
    return info.strip()


# --- what write-back could not do ------------------------------------------------------


def left_undone(left: Left) -> str:
    """What the job could not do, in words ('' when nothing)."""
    parts = []
    if left.unsaved:
        parts.append(f"{plural(left.unsaved, 'refined polygon')} could not be saved (their originals are untouched)")
    if left.kept_originals:
        parts.append(f"{plural(left.kept_originals, 'original')} {'is' if left.kept_originals == 1 else 'are'} "
                     "still there next to the refined version")
    if left.connections:
        parts.append(f"{plural(left.connections, 'connection')} to nearest parents "
                     f"{'was' if left.connections == 1 else 'were'} not made")
    if left.leftovers:
        parts.append(f"{plural(left.leftovers, 'extra refined polygon')} (duplicates or refinements of an "
                     "earlier outline) could not be removed")
    if left.unswept:
        parts.append("refined polygons a late write may have made twice were not looked for")
    return "; ".join(parts)


def unfinished_info(left: Left, reasons: list[str], params: RefineParameters) -> str:
    """How to finish what is left: the platform's last refusal, and where to find both versions."""
    refined_tags_text = ", ".join(params.output_tags) or "of their originals"
    originals_text = ", ".join(params.refine_tags) or "their own tags"
    unsaved = "Nothing was deleted for the refined polygons that could not be saved. " if left.unsaved else ""
    return (
        (f"{reasons[-1]}. " if reasons else "") + unsaved
        + f"{RUN_AGAIN} The refined polygons carry the tags {refined_tags_text}; the originals carry "
        f"{originals_text}."
    )


def report_counterparts_gone(count: int, reporter: Reporter) -> None:
    if count:
        reporter.warning(
            f"{plural(count, 'original')} {'was' if count == 1 else 'were'} kept: "
            f"{'its refined polygon was' if count == 1 else 'their refined polygons were'} deleted while the job ran",
            info="An original is deleted only while its refined version exists. Run the tool again with the same "
                 "settings to refine them again, or delete them yourself.",
        )


def report_skipped_connections(count: int, reporter: Reporter) -> None:
    if count:
        reporter.warning(
            f"{plural(count, 'connection')} could not be moved to a refined polygon: "
            "the annotation at its other end no longer exists",
            info="Such connections point at nothing (deleting annotations in bulk leaves them behind); they "
                 "were removed with their originals.",
        )
