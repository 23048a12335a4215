"""The overlap check, which finds every overlapping pair at once, decides as the rule reads
taken one outline at a time: best first, an outline sharing more than `max_share` of the
smaller of two with one already kept (of this run, or accepted by an earlier one) is doubtful."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Point, Polygon

from sam2_refine.outcome import Outcome, Reason
from sam2_refine.overlap import with_overlap_doubts

MAX_SHARE = 0.5


def one_at_a_time(refined, doubts, originals, accepted_elsewhere, max_share):
    """The rule, outline by outline, against every outline kept so far."""

    def agreement(polygon, original):
        if original is None:
            return 0.0
        union = polygon.union(original).area
        return polygon.intersection(original).area / union if union > 0 else 0.0

    present = [i for i, polygon in enumerate(refined) if polygon is not None]
    everything = [refined[i] for i in present] + accepted_elsewhere
    touching = {i for k, i in enumerate(present)
                if any(j != k and everything[j].envelope.intersects(refined[i].envelope) for j in range(len(everything)))}
    ranking = {i: (bool(doubts[i]), -agreement(refined[i], originals[i]) if i in touching else 0.0, i) for i in present}
    kept, doubtful = list(accepted_elsewhere), set()
    for i in sorted(present, key=ranking.get):
        polygon = refined[i]
        if any(min(polygon.area, other.area) > 0
               and polygon.intersection(other).area > max_share * min(polygon.area, other.area) for other in kept):
            doubtful.add(i)
        else:
            kept.append(polygon)
    return doubtful


def test_the_overlap_check_decides_as_the_rule_taken_one_at_a_time():
    rng = np.random.default_rng(8)
    for trial in range(20):
        count = 120
        centres = rng.uniform(0, 200, size=(count, 2))
        refined = [Point(x, y).buffer(rng.uniform(3, 9), quad_segs=4) if rng.random() > 0.05 else None
                   for x, y in centres]
        originals = [Point(x + rng.normal(0, 1), y + rng.normal(0, 1)).buffer(rng.uniform(4, 9), quad_segs=4)
                     if rng.random() > 0.1 else None for x, y in centres]
        doubts = [[Reason.SPILLS_OUTSIDE] if rng.random() < 0.2 else [] for _ in centres]
        accepted = [Polygon([(x, y), (x + 8, y), (x + 8, y + 8), (x, y + 8)])
                    for x, y in rng.uniform(0, 200, size=(int(rng.integers(0, 6)), 2))]
        outcomes = [Outcome(polygon, doubts=tuple(d)) if polygon is not None else Outcome(None, Reason.EMPTY_MASK)
                    for polygon, d in zip(refined, doubts)]
        checked = with_overlap_doubts(outcomes, refined, [list(d) for d in doubts], originals, accepted, MAX_SHARE)
        found = {i for i, outcome in enumerate(checked) if Reason.OVERLAPS_ANOTHER in outcome.doubts}
        assert found == one_at_a_time(refined, doubts, originals, accepted, MAX_SHARE)
        assert found  # dense enough that some overlap
