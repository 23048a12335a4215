"""What the job decided for each original, read back from the server after the run.

A refined polygon carries the marker `sam2Refine` = "<run key>/<original id>"; a doubtful one
also the tag `SAM2 review`. An original with no refined polygon was skipped; the worker names
each skipped original and its reason in the job log ("skipped <id>: <reason>").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from sam2_refine.interface import REVIEW_TAG
from sam2_refine.messages import skipped_summary
from sam2_refine.nimbus import MARKER_KEY

ACCEPTED, DOUBTFUL, SKIPPED = "accepted", "doubtful", "skipped"
OUTCOMES = (ACCEPTED, DOUBTFUL, SKIPPED)
SKIP_LINE = re.compile(r"^skipped (\S+): (.+)$", re.MULTILINE)

Outline = list[tuple[float, float]]


@dataclass(frozen=True)
class Decision:
    original_id: str
    original: Outline
    outcome: str  # one of OUTCOMES
    refined: Outline | None = None
    original_kept: bool = True  # still on the server after the run
    skip_reason: str = ""


def outline(document: dict) -> Outline:
    return [(float(point["x"]), float(point["y"])) for point in document["coordinates"]]


def skip_reasons(job_log: str) -> dict[str, str]:
    return {original_id: reason.strip() for original_id, reason in SKIP_LINE.findall(job_log)}


def read_decisions(originals: dict[str, Outline], documents: list[dict], job_log: str) -> list[Decision]:
    """One Decision per original (id -> outline as drawn), from the server's `documents`
    after the run and the compute job's log."""
    refined_by_original = {
        str(document[MARKER_KEY]).split("/", 1)[1]: document for document in documents if MARKER_KEY in document
    }
    present = {document["_id"] for document in documents}
    reasons = skip_reasons(job_log)
    decisions = []
    for original_id, drawn in originals.items():
        refined = refined_by_original.get(original_id)
        kept = original_id in present
        if refined is None:
            reason = reasons.get(original_id, "no refined outline saved")
            decisions.append(Decision(original_id, drawn, SKIPPED, None, kept, reason))
        else:
            outcome = DOUBTFUL if REVIEW_TAG in (refined.get("tags") or []) else ACCEPTED
            decisions.append(Decision(original_id, drawn, outcome, outline(refined), kept))
    return decisions


def counts(decisions: list[Decision]) -> Counter:
    return Counter(decision.outcome for decision in decisions)


def summary(decisions: list[Decision]) -> str:
    """'24 accepted (24 originals replaced), 3 doubtful (tagged 'SAM2 review', originals kept),
    2 skipped (2 empty masks)': the counts the picture's title shows."""
    tally = counts(decisions)
    replaced = sum(1 for d in decisions if d.outcome == ACCEPTED and not d.original_kept)
    reasons = skipped_summary(Counter(d.skip_reason for d in decisions if d.outcome == SKIPPED))
    return (
        f"{tally[ACCEPTED]} accepted ({replaced} originals replaced), "
        f"{tally[DOUBTFUL]} doubtful (tagged '{REVIEW_TAG}', originals kept), "
        f"{tally[SKIPPED]} skipped" + (f" ({reasons})" if reasons else "")
    )
