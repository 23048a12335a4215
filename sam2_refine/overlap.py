"""The overlap check of one location: two refined outlines that share most of the smaller
one's area outline the same cell, and only the better of them may be accepted.

Objects are taken best first (free of other doubts, then agreeing better with their own
original); one that overlaps an outline already kept is doubtful (OVERLAPS_ANOTHER), so two
prompts on one cell leave one accepted outline. Outlines an earlier run accepted at the
location count as kept from the start. All geometry is in image pixels; only outlines whose
bounds meet another's are compared (one spatial index over the location).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.strtree import STRtree

from .outcome import Outcome, Reason


def _agreement(refined: Polygon, original: Polygon | None) -> float:
    """IoU of a refined outline with its original; how well it matches what the user drew."""
    if original is None:
        return 0.0
    union = refined.union(original).area
    return refined.intersection(original).area / union if union > 0 else 0.0


def _agreements(refined: list[Polygon], originals: list[Polygon | None]) -> list[float]:
    """`_agreement` of each pair, the geometry for all of them at once (the same operations)."""
    found = [0.0] * len(refined)
    pairs = [k for k, original in enumerate(originals) if original is not None]
    if pairs:
        a, b = _as_array([refined[k] for k in pairs]), _as_array([originals[k] for k in pairs])
        union, shared = shapely.area(shapely.union(a, b)), shapely.area(shapely.intersection(a, b))
        for k, u, s in zip(pairs, union.tolist(), shared.tolist()):
            found[k] = s / u if u > 0 else 0.0
    return found


def _as_array(polygons: list) -> np.ndarray:
    array = np.empty(len(polygons), dtype=object)
    array[:] = polygons
    return array


@dataclass(frozen=True)
class _Outlines:
    """A location's refined outlines that exist (`present`: their indices) followed by those
    accepted elsewhere (`everything`), with one spatial index over them all."""

    present: list[int]
    everything: list[Polygon]
    tree: STRtree


def _indexed(refined: list[Polygon | None], accepted_elsewhere: list[Polygon]) -> _Outlines | None:
    """The location's outlines indexed; None when fewer than two could meet."""
    present = [i for i, polygon in enumerate(refined) if polygon is not None]
    everything = [refined[i] for i in present] + list(accepted_elsewhere)
    return _Outlines(present, everything, STRtree(everything)) if len(everything) >= 2 else None


def _touching_others(outlines: _Outlines) -> set[int]:
    """Indices of outlines whose bounds meet another outline's (of this run or accepted elsewhere)."""
    pairs = outlines.tree.query(outlines.everything)
    pairs = pairs[:, pairs[0] != pairs[1]]
    return {outlines.present[int(p)] for p in np.unique(pairs) if p < len(outlines.present)}


def overlap_doubts(
    refined: list[Polygon | None],
    ranking: list[tuple],
    outlines: _Outlines,
    max_share: float,
) -> set[int]:
    """Indices of refined outlines that overlap a better one.

    Objects are taken best first (`ranking`, smaller is better); one that overlaps an
    outline already kept is doubtful, so two prompts on one cell leave one accepted
    outline. Outlines accepted earlier (another run) count as kept from the start.
    Which outlines overlap which is found for all of them at once (one query of the
    index, the shared areas in one go); taking them best first then only looks it up.
    """
    present, everything = outlines.present, outlines.everything
    # Pairs (outline of this run, any other) whose bounds meet: their shared area decides.
    mine, other = outlines.tree.query(_as_array(everything[:len(present)]))
    keep = mine != other
    mine, other = mine[keep], other[keep]
    overlapping: list[list[int]] = [[] for _ in present]
    if len(mine):
        first, second = _as_array([everything[i] for i in mine]), _as_array([everything[i] for i in other])
        smaller = np.minimum(shapely.area(first), shapely.area(second))
        shared = shapely.area(shapely.intersection(first, second))
        for position, neighbour in zip(mine[(smaller > 0) & (shared > max_share * smaller)].tolist(),
                                       other[(smaller > 0) & (shared > max_share * smaller)].tolist()):
            overlapping[position].append(neighbour)
    kept = set(range(len(present), len(everything)))
    position_of = {index: position for position, index in enumerate(present)}
    doubtful: set[int] = set()
    for index in sorted(present, key=lambda i: ranking[i]):
        position = position_of[index]
        if any(neighbour in kept for neighbour in overlapping[position]):
            doubtful.add(index)
        else:
            kept.add(position)
    return doubtful


def with_overlap_doubts(
    outcomes: list[Outcome],
    refined: list[Polygon | None],
    doubts: list[list[Reason]],
    originals: list[Polygon | None],
    accepted_elsewhere: list[Polygon],
    max_share: float,
) -> list[Outcome]:
    """`outcomes` with their per-object `doubts` and the overlap check of the location:
    `refined` are the outlines judged (before padding), `originals` the originals (clipped
    to the image), `accepted_elsewhere` outlines an earlier run accepted at this location;
    two outlines overlap when their intersection exceeds `max_share` of the smaller."""
    # How well each agrees with its original decides who keeps a shared cell; only outlines
    # whose bounds meet another's can clash, so only theirs is computed.
    outlines = _indexed(refined, accepted_elsewhere)
    if outlines is not None:
        clashing = sorted(_touching_others(outlines))
        agreement = dict(zip(clashing, _agreements([refined[i] for i in clashing], [originals[i] for i in clashing])))
        ranking = [(bool(doubts[i]), -agreement[i] if i in agreement else 0.0, i) for i in range(len(refined))]
        for index in overlap_doubts(refined, ranking, outlines, max_share):
            if Reason.OVERLAPS_ANOTHER not in doubts[index]:
                doubts[index].append(Reason.OVERLAPS_ANOTHER)
    return [
        replace(outcome, doubts=tuple(found)) if outcome.polygon is not None and tuple(found) != outcome.doubts
        else outcome for outcome, found in zip(outcomes, doubts)
    ]
