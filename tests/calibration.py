"""The review's calibration: its thresholds fitted on one half of a synthetic set, its
false doubts and misses reported on the other half.

    .venv/bin/python -m tests.calibration          # the held-out table, review.py's thresholds
    .venv/bin/python -m tests.calibration --fit    # fit the thresholds on the fit half

The set (tests/synthetic_cells.py, `calibration_scene`): 1024 x 1024 frames of cells
8-150 px across in three shape families (round, lobed, elongated), touching, isolated and
cut by the frame's edge, each outlined once as people outline them: a box loose by 0-30 %
of the cell's diameter on each side, or a drawn outline from 15 % inside to 30 % outside
the cell with a low-frequency wobble. A quarter of the cells are answered as SAM2 errs:
an inner part (12-30 % of the cell's area), the cell with its touching neighbours, the
neighbour instead, nothing; the right answers carry a mask's own boundary error (up to
1 px or 2.5 % of the diameter in or out). Each scene is refined and judged by the engine
itself, as the worker runs it (`pipeline.refine_frame`, Auto, smoothing 0.7), with an oracle
answering from the true shapes on SAM2's 256 x 256 grid and the thresholds under test passed
in the settings. The fit half is seeds 0-39, the held-out half seeds 1000-1039.

The fit, for each signal and kind of original (`fit_linear`): for each pixel allowance
of a grid, the band of shares of the object's size between the smallest that doubts no
right answer of the fit half and the next error the signal is for; the threshold
is the middle of that band. Of the allowances, the one that misses the fewest errors,
on ties the widest band. The spill check also picks its share outside from a grid.

The fit reads each answer's own measures (its refined outline, unpadded, against its
original), refined under fixed reference thresholds (review.py's, `DEFAULT_THRESHOLDS`),
never under the thresholds being fitted. So what is measured does not move with the fit:
where the engine stops following a mask that spills, or chooses among SAM2's alternative
masks, it does so by the reference thresholds. (The calibration's oracle gives one mask per
box, no alternatives: the fit measures the first answers, which are what the thresholds
must tell apart.)
"""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import numpy as np
import shapely
from shapely.geometry import Polygon

from sam2_refine.engine import Outcome, RefineSettings
from sam2_refine.pipeline import refine_frame
from sam2_refine.interface import RESOLUTION_AUTO
from sam2_refine.review import (
    DEFAULT_THRESHOLDS, FrameSize, Thresholds, cut_by_frame, mean_gap, original_outline, outline_size, outside_share,
    unpadded, widest_margin, within_frame,
)
from sam2_refine.originals import prompt_coordinates
from tests.erring_oracle import ErringOracle
from tests.synthetic_cells import (
    BOX, DRAWN, EMPTY, ERRORS, GOOD, GRAB, INNER, SECOND, WRONG, Scene, calibration_scene, cell_diameter,
)

FIT_SEEDS = range(0, 40)
HELD_OUT_SEEDS = range(1000, 1040)
SIZE_BINS = (("< 20 px", 0.0, 20.0), ("20-50 px", 20.0, 50.0), ("≥ 50 px", 50.0, math.inf))
PIXEL_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
# Shares of a refinement's area that may lie outside its grown original. Not below 5 %:
# less than that is a bump of the mask a person would not call a neighbour.
OUTSIDE_SHARE_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
ERROR_NAMES = {INNER: "inner part", GRAB: "cell + neighbours", WRONG: "neighbour instead", EMPTY: "nothing"}


def size_bin(diameter: float) -> str:
    return next(name for name, low, high in SIZE_BINS if low <= diameter < high)


@dataclass(frozen=True)
class Judged:
    """One original of a calibration scene, refined and reviewed."""

    seed: int
    kind: str  # GOOD, one of ERRORS, or SECOND
    outline_kind: str  # BOX or DRAWN
    diameter: float  # the outlined cell's equivalent diameter, pixels
    cell: int
    original: Polygon | None  # as the review judges it: clipped to the frame
    refined: Polygon | None  # unpadded
    outcome: Outcome  # judged
    frame_size: FrameSize

    @property
    def doubtful_or_missing(self) -> bool:
        return self.outcome.polygon is None or bool(self.outcome.doubts)


def refine_scene(scene: Scene, thresholds: Thresholds = DEFAULT_THRESHOLDS, padding: float = 0.0,
                 smoothing: float = 0.7) -> list[Outcome]:
    """The engine's judged outcomes for a scene, the oracle answering each original's box."""
    frame_size = (scene.width, scene.height)
    keys = np.array([o.prompt_centre(*frame_size) for o in scene.originals])
    oracle = ErringOracle(keys, [o.answer for o in scene.originals])
    blank = np.zeros((8, 8, 3), np.float32)  # the oracle never looks at the image
    documents = [{"shape": o.shape, "coordinates": o.coordinates} for o in scene.originals]
    return refine_frame(oracle, lambda window: blank, frame_size, [prompt_coordinates(d) for d in documents],
                        RefineSettings(smoothing, padding, RESOLUTION_AUTO, thresholds),
                        outlines=[original_outline(d) for d in documents])


def judge_scene(seed: int, thresholds: Thresholds = DEFAULT_THRESHOLDS, padding: float = 0.0) -> list[Judged]:
    scene = calibration_scene(seed)
    frame_size = (scene.width, scene.height)
    originals = [original_outline({"shape": o.shape, "coordinates": o.coordinates}) for o in scene.originals]
    outcomes = refine_scene(scene, thresholds, padding)
    diameters = [cell_diameter(cell) for cell in scene.cells]
    return [
        Judged(seed, o.kind, o.outline_kind, diameters[o.cell], o.cell, within_frame(original, frame_size),
               unpadded(outcome.polygon, padding, frame_size), outcome, frame_size)
        for o, original, outcome in zip(scene.originals, originals, outcomes)
    ]


def judge(seeds: Iterable[int], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Judged]:
    return [judged for seed in seeds for judged in judge_scene(seed, thresholds)]


def singly_prompted(judged: list[Judged]) -> list[Judged]:
    """Originals whose cell has no second original (those are counted per cell)."""
    doubled = {(j.seed, j.cell) for j in judged if j.kind == SECOND}
    return [j for j in judged if (j.seed, j.cell) not in doubled]


# --- the fit --------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearFit:
    """Doubtful when the signal (pixels) exceeds px + share x size. `gap`: the width (in
    share) of the band between the right answers and the next error that the
    threshold sits in the middle of."""

    px: float
    share: float
    gap: float
    misses: int
    errors: int


def fit_linear(good: list[tuple[float, float]], erring: list[tuple[float, float]]) -> LinearFit:
    """`good` and `erring` hold (signal, size) pairs, pixels. For each pixel allowance of
    PIXEL_GRID: the smallest share that doubts no good one, and the band above it up to
    the next erring one; the threshold is the middle of that band (rounded to 0.01).
    Of the allowances, the one that misses the fewest erring ones, on ties the widest band."""
    best = None
    for px in PIXEL_GRID:
        lowest = max(0.0, max((signal - px) / size for signal, size in good))
        above = sorted(s for s in ((signal - px) / size for signal, size in erring) if s > lowest)
        highest = above[0] if above else lowest + 1.0
        share = round(float(lowest + highest) / 2, 2)
        misses = sum(1 for signal, size in erring if signal <= px + share * size)
        fit = LinearFit(px, share, round(float(highest - lowest), 3), misses, len(erring))
        if best is None or (fit.misses, -fit.gap) < (best.misses, -best.gap):
            best = fit
    return best


def growth_for_share(refined: list[Polygon], originals: list[Polygon], share: float) -> np.ndarray:
    """For each pair, the least growth (pixels) of the original that leaves no more than
    `share` of the refined area outside it (bisection to 0.01 px; exact shapely areas)."""
    refined_array, original_array = np.array(refined, dtype=object), np.array(originals, dtype=object)
    low = np.zeros(len(refined))
    high = np.array([outline_size(r) + outline_size(o) for r, o in zip(refined, originals)])
    areas = shapely.area(refined_array)

    def outside(growth: np.ndarray) -> np.ndarray:
        return shapely.area(shapely.difference(refined_array, shapely.buffer(original_array, growth))) / areas

    already = outside(low) <= share
    high[already] = 0.0
    while np.max(high - low) > 0.01:
        middle = (low + high) / 2
        inside = outside(middle) <= share
        high = np.where(inside, middle, high)
        low = np.where(inside, low, middle)
    return high


@dataclass(frozen=True)
class SpillFit:
    px: float
    share: float
    outside_share: float
    gap: float
    misses: int
    errors: int


def fit_spill(good: list[Judged], erring: list[Judged]) -> SpillFit:
    best = None
    for outside_share in OUTSIDE_SHARE_GRID:
        growth = growth_for_share([j.refined for j in good + erring], [j.original for j in good + erring], outside_share)
        sizes = [outline_size(j.original) for j in good + erring]
        pairs = list(zip(growth, sizes))
        fit = fit_linear(pairs[:len(good)], pairs[len(good):])
        if best is None or (fit.misses, -fit.gap) < (best.misses, -best.gap):
            best = SpillFit(fit.px, fit.share, outside_share, fit.gap, fit.misses, fit.errors)
    return best


def _with_refinement(judged: list[Judged], kinds: tuple[str, ...], outline_kind: str) -> list[Judged]:
    return [j for j in judged if j.kind in kinds and j.outline_kind == outline_kind
            and j.refined is not None and j.original is not None]


def fit_thresholds(judged: list[Judged]) -> tuple[Thresholds, dict[str, object]]:
    """Thresholds fitted on `judged` (refined under the reference thresholds: the fit reads
    only the refinements and originals), and each fit's details."""
    judged = singly_prompted(judged)
    good_boxes, good_drawn = _with_refinement(judged, (GOOD,), BOX), _with_refinement(judged, (GOOD,), DRAWN)
    margin = fit_linear([(widest_margin(j.refined, j.original), outline_size(j.refined))
                         for j in good_boxes if not cut_by_frame(j.refined, j.frame_size)],
                        [(widest_margin(j.refined, j.original), outline_size(j.refined))
                         for j in _with_refinement(judged, (INNER,), BOX) if not cut_by_frame(j.refined, j.frame_size)])
    gap = fit_linear([(mean_gap(j.refined, j.original, j.frame_size), outline_size(j.refined)) for j in good_drawn],
                     [(mean_gap(j.refined, j.original, j.frame_size), outline_size(j.refined))
                      for j in _with_refinement(judged, (INNER,), DRAWN)])
    box_spill = fit_spill(good_boxes, _with_refinement(judged, (GRAB, WRONG), BOX))
    drawn_spill = fit_spill(good_drawn, _with_refinement(judged, (GRAB, WRONG), DRAWN))
    thresholds = Thresholds(
        box_growth_px=box_spill.px, box_growth_share=box_spill.share, box_outside_share=box_spill.outside_share,
        drawn_growth_px=drawn_spill.px, drawn_growth_share=drawn_spill.share,
        drawn_outside_share=drawn_spill.outside_share,
        box_margin_px=margin.px, box_margin_share=margin.share,
        drawn_gap_px=gap.px, drawn_gap_share=gap.share,
    )
    return thresholds, {"box margin": margin, "drawn gap": gap, "box spill": box_spill, "drawn spill": drawn_spill}


# --- the report -----------------------------------------------------------------------

@dataclass
class Counts:
    doubted: int = 0  # right answers doubtful or missing
    right: int = 0
    missed: Counter = field(default_factory=Counter)  # error kind -> erring answers accepted
    erring: Counter = field(default_factory=Counter)  # error kind -> erring answers


def tally(judged: list[Judged]) -> dict[tuple[str, str], Counts]:
    """Per (original kind, size bin): right answers doubtful or missing, and erring
    answers accepted (missed) by error kind."""
    table: dict[tuple[str, str], Counts] = defaultdict(Counts)
    for j in singly_prompted(judged):
        counts = table[(j.outline_kind, size_bin(j.diameter))]
        if j.kind == GOOD:
            counts.right += 1
            counts.doubted += j.doubtful_or_missing
        elif j.kind in ERRORS:
            counts.erring[j.kind] += 1
            counts.missed[j.kind] += not j.doubtful_or_missing
    return table


def cut_cells(judged: list[Judged]) -> tuple[int, int]:
    """Right answers for cells cut by the image's edge: (doubtful or missing, all)."""
    cut = [j for j in singly_prompted(judged) if j.kind == GOOD and j.refined is not None
           and cut_by_frame(j.refined, j.frame_size)]
    return sum(j.doubtful_or_missing for j in cut), len(cut)


def doubled_cells(judged: list[Judged]) -> Counter:
    """How many accepted outlines each cell prompted twice ends with."""
    doubled = {(j.seed, j.cell) for j in judged if j.kind == SECOND}
    accepted = Counter((j.seed, j.cell) for j in judged if (j.seed, j.cell) in doubled and not j.doubtful_or_missing)
    return Counter(accepted[cell] for cell in doubled)


def _share(count: int, total: int) -> str:
    return f"{count} of {total} ({100 * count / total:.1f} %)" if total else "–"


def table_rows(table: dict[tuple[str, str], Counts]) -> list[list[str]]:
    rows = []
    for outline_kind in (BOX, DRAWN):
        for name, _, _ in SIZE_BINS:
            counts = table[(outline_kind, name)]
            missed, erring = sum(counts.missed.values()), sum(counts.erring.values())
            rows.append([outline_kind, name, _share(counts.doubted, counts.right)]
                        + [f"{counts.missed[k]} / {counts.erring[k]}" for k in ERRORS] + [_share(missed, erring)])
    total = Counts()
    for counts in table.values():
        total.doubted += counts.doubted
        total.right += counts.right
        total.missed.update(counts.missed)
        total.erring.update(counts.erring)
    rows.append(["all", "all", _share(total.doubted, total.right)]
                + [f"{total.missed[k]} / {total.erring[k]}" for k in ERRORS]
                + [_share(sum(total.missed.values()), sum(total.erring.values()))])
    return rows


HEADER = (["original", "cell size", "right answers doubted"]
          + [f"{ERROR_NAMES[k]} accepted" for k in ERRORS] + ["erring accepted"])


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def separations(judged: list[Judged], thresholds: Thresholds) -> list[str]:
    """Each signal on the held-out half in units of its threshold (1 = the boundary):
    the largest value among right answers against the errors it is for."""
    judged = singly_prompted(judged)
    lines = []

    def spread(name: str, good: list[float], erring: list[float]) -> None:
        erring = sorted(erring)
        lines.append(f"{name}: right answers max {max(good):.2f}; errors min {erring[0]:.2f}, "
                     f"5th pct {np.percentile(erring, 5):.2f}, median {np.median(erring):.2f} (n = {len(erring)})")

    def margin(j: Judged) -> float:
        return widest_margin(j.refined, j.original) / (thresholds.box_margin_px
                                                      + thresholds.box_margin_share * outline_size(j.refined))

    def gap(j: Judged) -> float:
        return mean_gap(j.refined, j.original, j.frame_size) / (
            thresholds.drawn_gap_px + thresholds.drawn_gap_share * outline_size(j.refined))

    spread("box: widest margin / threshold",
           [margin(j) for j in _with_refinement(judged, (GOOD,), BOX) if not cut_by_frame(j.refined, j.frame_size)],
           [margin(j) for j in _with_refinement(judged, (INNER,), BOX) if not cut_by_frame(j.refined, j.frame_size)])
    spread("drawn: mean gap / threshold", [gap(j) for j in _with_refinement(judged, (GOOD,), DRAWN)],
           [gap(j) for j in _with_refinement(judged, (INNER,), DRAWN)])
    for outline_kind, px, share, limit in (
        (BOX, thresholds.box_growth_px, thresholds.box_growth_share, thresholds.box_outside_share),
        (DRAWN, thresholds.drawn_growth_px, thresholds.drawn_growth_share, thresholds.drawn_outside_share),
    ):
        def outside(j: Judged) -> float:
            return outside_share(j.refined, j.original, px + share * outline_size(j.original)) / limit

        spread(f"{outline_kind}: share outside / threshold",
               [outside(j) for j in _with_refinement(judged, (GOOD,), outline_kind)],
               [outside(j) for j in _with_refinement(judged, (GRAB, WRONG), outline_kind)])
    for outline_kind in (BOX, DRAWN):
        good = [j.refined.area / j.original.area for j in _with_refinement(judged, (GOOD,), outline_kind)]
        inner = [j.refined.area / j.original.area for j in _with_refinement(judged, (INNER,), outline_kind)]
        lines.append(f"{outline_kind}: by area alone (refined / original): right answers min {min(good):.2f}, "
                     f"inner parts max {max(inner):.2f}; {sum(g <= max(inner) for g in good)} of {len(good)} "
                     f"right answers as small as an inner part")
    return lines


def main(arguments: list[str]) -> None:
    if "--fit" in arguments:
        fitted, details = fit_thresholds(judge(FIT_SEEDS))
        print(f"fitted on seeds {FIT_SEEDS.start}-{FIT_SEEDS.stop - 1}:")
        for name, detail in details.items():
            print(f"  {name}: {detail}")
        for parameter in fields(Thresholds):
            value, current = getattr(fitted, parameter.name), getattr(DEFAULT_THRESHOLDS, parameter.name)
            print(f"  {parameter.name} = {value}" + ("" if value == current else f"   (review.py has {current})"))
        return
    judged = judge(HELD_OUT_SEEDS)
    print(f"held out: seeds {HELD_OUT_SEEDS.start}-{HELD_OUT_SEEDS.stop - 1}, {len(judged)} originals, "
          f"review.py's thresholds")
    print(markdown_table(table_rows(tally(judged))))
    print("\n".join(separations(judged, DEFAULT_THRESHOLDS)))
    print("right answers for cells cut by the image's edge doubted: {} of {}".format(*cut_cells(judged)))
    print(f"cells prompted twice, by accepted outlines: {dict(sorted(doubled_cells(judged).items()))}")


if __name__ == "__main__":
    main(sys.argv[1:])
