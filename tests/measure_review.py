"""How well the per-object checks separate good refinements from SAM2's typical errors.

    .venv/bin/python -m tests.measure_review [scenes]

Synthetic scenes (tests/synthetic_cells.py), refined outlines taken as the answers'
true shapes, checked with `sam2_refine.review`. Prints each signal's spread for good
and erring objects and the rates at the chosen thresholds; README quotes them.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

import numpy as np

from sam2_refine.engine import Outcome
from sam2_refine.review import (
    allowed_looseness, area_share, original_outline, outside_share, review_location,
)
from tests.synthetic_cells import EMPTY, ERRORS, GOOD, SECOND, make_scene


def main(scenes: int = 40) -> None:
    signals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    flagged: Counter = Counter()
    totals: Counter = Counter()
    reasons: dict[str, Counter] = defaultdict(Counter)
    accepted_per_doubled_cell: list[int] = []
    for seed in range(scenes):
        scene = make_scene(seed)
        outlines = [original_outline({"shape": o.shape, "coordinates": o.coordinates}) for o in scene.originals]
        outcomes = [Outcome(o.answer.outline()) for o in scene.originals]
        reviewed = review_location(outlines, outcomes)
        cells_prompted_twice = {o.cell for o in scene.originals if o.kind == SECOND}
        for original, outline, outcome in zip(scene.originals, outlines, reviewed):
            if original.cell in cells_prompted_twice:
                continue  # counted per cell below
            totals[original.kind] += 1
            if outcome.polygon is None:
                flagged[original.kind] += original.kind == EMPTY
                continue
            looseness = allowed_looseness(outline)
            signals[original.kind]["outside"].append(outside_share(outcome.polygon, outline, looseness))
            signals[original.kind]["area"].append(area_share(outcome.polygon, outline))
            if outcome.doubts:
                flagged[original.kind] += 1
                reasons[original.kind].update(outcome.doubts)
        for cell in cells_prompted_twice:
            accepted_per_doubled_cell.append(sum(
                1 for o, r in zip(scene.originals, reviewed) if o.cell == cell and r.polygon is not None and not r.doubts
            ))
    print(f"{scenes} scenes, {sum(totals.values())} originals")
    print("signal spread (5th / 50th / 95th percentile; min / max):")
    for kind in (GOOD, *ERRORS):
        for name, values in signals[kind].items():
            p5, p50, p95 = np.percentile(values, [5, 50, 95])
            print(f"  {kind:14s} {name:8s} {p5:6.3f} {p50:6.3f} {p95:6.3f}   {min(values):6.3f} {max(values):6.3f}")
    print("doubtful (empty masks: no outline, original kept):")
    for kind in (GOOD, *ERRORS):
        share = flagged[kind] / totals[kind] if totals[kind] else 0.0
        print(f"  {kind:14s} {flagged[kind]:4d} of {totals[kind]:4d} = {100 * share:5.1f} %   {dict(reasons[kind])}")
    erring = sum(totals[k] for k in ERRORS)
    caught = sum(flagged[k] for k in ERRORS)
    print(f"erring caught: {caught} of {erring} = {100 * caught / erring:.1f} %")
    print(f"good flagged: {flagged[GOOD]} of {totals[GOOD]} = {100 * flagged[GOOD] / totals[GOOD]:.1f} %")
    print(f"cells prompted twice: accepted outlines per cell {Counter(accepted_per_doubled_cell)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
