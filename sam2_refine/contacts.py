"""Touching cells share one boundary: the refined outlines of a location kept apart.

Each object is refined on its own, so where two cells touch their refined outlines
overlap: SAM2's mask for one box often takes a band of the neighbour, and smoothing and
padding push each outline further in. This module settles one location's outlines,
with no model: pure functions of outlines, logit fields and options.

**The split.** Where the outlines SAM2 found for two objects overlap, the shared area
goes to the object whose mask is more certain there: the one with the higher logit. Both
objects' logits are known over the overlap (it lies within each outline), so the split
is the zero crossing of their difference f_A - f_B at the pixel centres, traced like
every outline (marching squares, linear between centres): sub-pixel, and one curve for
both, so the two meet along one boundary. Where either field is missing, the split is
geometric: the zero crossing of the difference of the distances to the two outlines'
exclusive parts, the line a person would draw through the middle of the overlap.
Outlines written before (by an earlier run) are never edited: the others yield to them.

**Standing.** Each object has a rank (the caller's: the engine gives accepted outlines 0,
doubtful ones 1). Objects of equal rank split their overlaps as above; one of a lower
standing (higher rank) yields to one of a higher standing: it loses all the other holds.
So a doubtful outline never takes area from an accepted one.

**Territories.** Smoothing and padding (`finish`) come after the split, and each finished
polygon is kept within its territory: its split outline and the free space nearer to it
than to any neighbour's split outline (the difference of the two distances, sampled every
TERRITORY_STEP px). So padding fills only space no neighbour holds, smoothing never pushes
an outline into a neighbour's, and no two finished polygons overlap. Flaps thinner than
2 FLAP px that sampling leaves where three territories meet are opened away.

**Outcomes.** apart.py applies this to a location's reviewed outcomes: after the review's
duplicate rule (an outline it doubted as another's duplicate takes no part, so a cell
prompted twice is never split against itself), and before the review judges each changed
outline again.

**Round-off.** Where GEOS refuses an overlay (nearly coincident edges), a group is settled
again with its outlines snapped to SNAP px, and failing that left as it was: a job never
fails for it.

**Cost.** Only objects whose outlines or finished polygons meet another's take part
(`touching_groups`: one spatial query for the location); an isolated object is returned
unchanged. Each group is settled on its own (`settle_group`), a unit of work that can run
in any process; within a group only pairs that meet are compared (one spatial index), so
a large group costs what its contacts cost.

Coordinates are image pixels (x = column, y = row); pixel (r, c) is the square
[c, c+1] x [r, r+1] and a field's value for it is at its centre (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry
from skimage.measure import find_contours

from .geometry import clip_to_image, finish_outline, largest_polygon

# A region of the image (col0, row0, col1, row1), whole pixels, end-exclusive.
PixelRegion = tuple[int, int, int, int]
# An object's logits at the centres of a region's pixels, (rows, cols); None where they
# are not all known.
FieldReader = Callable[[PixelRegion], "np.ndarray | None"]
# An outline padded and smoothed (and clipped to the image) as the user asked; None: nothing left.
Finish = Callable[[Polygon], "Polygon | None"]

GEOMETRIC_STEP = 0.5  # pixels between the samples of a geometric split
TERRITORY_STEP = 0.5  # pixels between the samples of a territory's edge in free space
FLAP = 0.25  # pixels: half the width of the thinnest flap a territory's cut may leave
_SPLIT_TOLERANCE = 0.05  # pixels: the logit split's vertices on a straight run are dropped within this
_CUT_TOLERANCE = 0.05  # pixels: a cut's vertices on a straight run are dropped within this
_NEGLIGIBLE = 1e-9  # px²: overlaps smaller than this are floating-point noise
_HAIR = 1e-6  # pixels: edges this close are one edge (round-off of the overlay)
SNAP = 1e-4  # pixels: the grid outlines are snapped to when an overlay fails on round-off


@dataclass(frozen=True)
class Member:
    """One object of a location: SAM2's outline `found` (before padding and smoothing),
    the `polygon` finished from it, its logits (None: not known) and its rank (lower
    stands higher)."""

    found: Polygon
    polygon: Polygon
    field: FieldReader | None = None
    rank: int = 0


@dataclass(frozen=True)
class Settled:
    """An object after the split: its split outline (what the review judges) and its
    finished polygon within its territory; None where nothing is left."""

    found: Polygon | None
    polygon: Polygon | None


# --- which objects meet ---------------------------------------------------------------


def touching_groups(members: Sequence[Member | None], written: Sequence[Polygon] = ()
                    ) -> list[tuple[list[int], list[int]]]:
    """The location's groups of objects that meet: (member indices, written indices) for
    each group of members whose outlines or finished polygons meet one another's or a
    written outline. Members in no group meet nothing and need no work."""
    shapes, owners = [], []
    for index, member in enumerate(members):
        if member is not None:
            shapes += [member.found, member.polygon]
            owners += [index, index]
    for index, outline in enumerate(written):
        shapes.append(outline)
        owners.append(-1 - index)
    if len(shapes) < 3:
        return []
    shapes = np.array(shapes, dtype=object)
    left, right = shapely.STRtree(shapes).query(shapes)  # bounds that meet
    owners = np.array(owners)
    a, b = owners[left], owners[right]
    keep = (left < right) & (a != b) & ((a >= 0) | (b >= 0))
    keep[keep] = shapely.intersects(shapes[left[keep]], shapes[right[keep]])
    parent = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for x, y in zip(a[keep].tolist(), b[keep].tolist()):
        parent[root(x)] = root(y)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for node in sorted(parent):
        group = groups.setdefault(root(node), ([], []))
        (group[0] if node >= 0 else group[1]).append(node if node >= 0 else -1 - node)
    return [(sorted(m), sorted(w)) for m, w in groups.values() if m]


# --- fields to regions ------------------------------------------------------------------


def positive_region(values: np.ndarray, origin: tuple[float, float], step: float) -> BaseGeometry:
    """Where `values` > 0, with values[r, c] at (x0 + c step, y0 + r step) for `origin`
    (x0, y0): the zero crossing traced with linear interpolation between samples
    (marching squares), each closed ring filled even-odd. Beyond the samples counts as
    below zero, so the region ends within one step outside them."""
    x0, y0 = origin
    padded = np.pad(np.asarray(values, dtype=np.float64), 1, constant_values=-1.0)
    region: BaseGeometry = Polygon()
    for contour in find_contours(padded, 0.0, fully_connected="low"):
        if len(contour) < 4:
            continue
        ring = Polygon(np.column_stack([x0 + (contour[:, 1] - 1) * step, y0 + (contour[:, 0] - 1) * step]))
        region = region.symmetric_difference(ring if ring.is_valid else shapely.make_valid(ring))
    return region


def _around(shape: BaseGeometry, margin: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = shape.bounds
    return x0 - margin, y0 - margin, x1 + margin, y1 + margin


def _samples(bounds: tuple[float, float, float, float], step: float) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = bounds
    columns = x0 + step * np.arange(max(2, math.ceil((x1 - x0) / step) + 1))
    rows = y0 + step * np.arange(max(2, math.ceil((y1 - y0) / step) + 1))
    return np.meshgrid(columns, rows)


def _nearer(first: BaseGeometry, second: BaseGeometry, where: BaseGeometry, step: float
            ) -> tuple[BaseGeometry, BaseGeometry]:
    """(nearer `first`, nearer `second`): the points around `where` split by the zero
    crossing of the difference of their distances to the two, sampled every `step` px.
    Both lie within `where` grown by half a step, which they cover together."""
    x0, y0, x1, y1 = _around(where, 3 * step)
    xs, ys = _samples((x0, y0, x1, y1), step)
    near = shapely.contains_xy(where.buffer(2 * step, quad_segs=4), xs, ys)
    # Samples farther from `where` are not measured: their sign (any will do) shapes the
    # region only in the squares between samples that have one at a corner, all of
    # which lie more than half a step from `where`.
    difference = np.ones(xs.shape)
    points = shapely.points(xs[near], ys[near])
    difference[near] = shapely.distance(points, second) - shapely.distance(points, first)
    wins = positive_region(difference, (x0, y0), step).simplify(_CUT_TOLERANCE)
    domain = where.buffer(0.5 * step, quad_segs=4)
    return domain.intersection(wins), domain.difference(wins)


def _field_wins(a: Member, b: Member, overlap: BaseGeometry) -> tuple[BaseGeometry, BaseGeometry] | None:
    """(where a's logits exceed b's, where they do not) over `overlap` and a pixel around
    it; None without both fields."""
    if a.field is None or b.field is None:
        return None
    x0, y0, x1, y1 = overlap.bounds
    region = (math.floor(x0) - 1, math.floor(y0) - 1, math.ceil(x1) + 1, math.ceil(y1) + 1)
    first, second = a.field(region), b.field(region)
    if first is None or second is None:
        return None
    wins = positive_region(first - second, (region[0] + 0.5, region[1] + 0.5), 1.0).simplify(_SPLIT_TOLERANCE)
    # The samples' hull (pixel centres), which holds the overlap.
    sampled = box(region[0] + 0.5, region[1] + 0.5, region[2] - 0.5, region[3] - 0.5)
    return sampled.intersection(wins), sampled.difference(wins)


def split_pair(a: Member, b: Member) -> tuple[BaseGeometry, BaseGeometry]:
    """(what a loses, what b loses) where their found outlines overlap: the overlap split
    by the higher logit, or geometrically where a field is missing (see the module).
    Each loss is the other outline where the other wins: no edge of it is made from the
    loser's own edges, which overlay round-off would leave as slivers."""
    overlap = a.found.intersection(b.found)
    if overlap.area <= _NEGLIGIBLE:
        return Polygon(), Polygon()
    wins = _field_wins(a, b, overlap)
    if wins is None:
        only_a, only_b = a.found.difference(b.found), b.found.difference(a.found)
        if only_a.is_empty or only_b.is_empty:  # one inside the other: the inner one keeps itself
            return (Polygon(), a.found) if only_a.is_empty else (b.found, Polygon())
        wins = _nearer(only_a, only_b, overlap, GEOMETRIC_STEP)
    a_wins, b_wins = wins
    return b.found.intersection(b_wins), a.found.intersection(a_wins)


# --- one group ----------------------------------------------------------------------------


def _minus(shape: Polygon | None, losses: list[BaseGeometry]) -> Polygon | None:
    """The largest piece of `shape` without `losses`, as an outline (no holes)."""
    losses = [loss for loss in losses if not loss.is_empty]
    if shape is None or not losses:
        return shape
    pieces = [p for p in shapely.get_parts(shape.difference(shapely.union_all(losses))) if isinstance(p, Polygon)]
    if not pieces:
        return None
    piece = max(pieces, key=lambda p: p.area)
    # A loss whose edge runs along the shape's edge (a neighbour's outline along a chord
    # smoothing cut) can leave it a hole behind a hair of round-off: opened, not filled.
    for ring in piece.interiors:
        if ring.distance(piece.exterior) < _HAIR:
            piece = largest_polygon(piece.difference(Polygon(ring).buffer(_HAIR, join_style="mitre"))) or piece
    return largest_polygon(piece)


def _opened(polygon: Polygon | None, before: Polygon | None) -> Polygon | None:
    """`polygon`, if cut from `before`, without the flaps thinner than 2 FLAP px that
    sampling the edge of a territory leaves where three meet (a morphological opening:
    it only takes away)."""
    if polygon is None or polygon is before:
        return polygon
    try:
        opened = polygon.buffer(-FLAP, join_style="mitre").buffer(FLAP, join_style="mitre")
        # Mitred corners may reach a hair beyond: what is kept lies within `polygon`.
        opened = largest_polygon(opened.intersection(polygon))
    except shapely.errors.GEOSException:  # the overlay's round-off: the flaps stay
        return polygon
    return opened if opened is not None and opened.area > 0.5 * polygon.area else polygon


def _meeting(shapes: Sequence[BaseGeometry | None], others: Sequence[BaseGeometry | None] | None = None,
             owners: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The pairs (i, j) whose shapes meet: i < j within `shapes`, or i in `shapes` and j in
    `others` (one spatial index, so a large group costs what its contacts cost). With
    `owners`, shape k stands for object owners[k], and pairs name objects."""
    present = [k for k, shape in enumerate(shapes) if shape is not None and not shape.is_empty]
    if others is None:
        targets, candidates = present, [shapes[k] for k in present]
    else:
        targets = [k for k, shape in enumerate(others) if shape is not None and not shape.is_empty]
        candidates = [others[k] for k in targets]
    if not present or not candidates:
        return []
    tree = shapely.STRtree(candidates)
    left, right = tree.query([shapes[k] for k in present], predicate="intersects")
    own = (lambda k: k) if owners is None else owners.__getitem__
    pairs = {(own(present[a]), targets[b] if others is not None else own(targets[b]))
             for a, b in zip(left.tolist(), right.tolist())}
    return sorted(pair for pair in pairs if others is not None or pair[0] < pair[1])


def split_outlines(members: dict[int, Member], written: Sequence[Polygon] = ()) -> dict[int, Polygon | None]:
    """Each member's found outline after the split: yielding to `written` and to members
    that stand higher, split with those of its rank."""
    by_rank = sorted(members, key=lambda index: (members[index].rank, index))
    founds = [members[index].found for index in by_rank]
    losses: dict[int, list[BaseGeometry]] = {index: [] for index in members}
    for k, w in _meeting(founds, written):
        losses[by_rank[k]].append(written[w])
    neighbours: dict[int, list[int]] = {index: [] for index in members}
    for k, l in _meeting(founds):
        i, j = by_rank[k], by_rank[l]
        neighbours[i].append(j)
        neighbours[j].append(i)
        if members[i].rank == members[j].rank:
            lost_i, lost_j = split_pair(members[i], members[j])
            losses[i].append(lost_i)
            losses[j].append(lost_j)
    split: dict[int, Polygon | None] = {}
    for index in by_rank:
        member = members[index]
        # Higher standing first, so what it holds after its own split is final.
        higher = [split[j] for j in neighbours[index] if members[j].rank < member.rank and split[j] is not None
                  and split[j].intersects(member.found)]
        split[index] = _minus(member.found, losses[index] + higher)
    return split


def _reach(polygon: Polygon, outline: Polygon) -> float:
    """How far `polygon` reaches beyond `outline`: the largest distance from it of points
    every TERRITORY_STEP along its edge (a chord across a concave bend is farthest between
    its ends), and a step more. Only points outside the outline are measured, each to the
    nearest of points every TERRITORY_STEP / 2 along the outline's edge (a k-d tree: never
    nearer than the edge, at most a quarter step farther), so it never falls short."""
    points = shapely.get_coordinates(shapely.segmentize(polygon.exterior, TERRITORY_STEP))
    outside = points[~shapely.contains_xy(outline, points[:, 0], points[:, 1])]
    if len(outside) == 0:
        return TERRITORY_STEP
    edge = shapely.get_coordinates(shapely.segmentize(outline.boundary, TERRITORY_STEP / 2))
    distances, _ = cKDTree(edge).query(outside)
    return float(np.max(distances)) + TERRITORY_STEP


def _territory_losses(outline_a: Polygon, polygon_a: Polygon, outline_b: Polygon, polygon_b: Polygon
                      ) -> tuple[BaseGeometry, BaseGeometry]:
    """(what a's polygon loses, what b's loses): each loses the other's outline, and where
    it reaches into free space (neither outline) the points nearer the other's outline."""
    # Free space a point of a's polygon could be nearer b in: within a's reach of b's outline.
    free_a = polygon_a.difference(outline_a).difference(outline_b)
    free_b = polygon_b.difference(outline_b).difference(outline_a)
    if not free_a.is_empty:
        free_a = free_a.intersection(outline_b.buffer(_reach(polygon_a, outline_a), quad_segs=4))
    if not free_b.is_empty:
        free_b = free_b.intersection(outline_a.buffer(_reach(polygon_b, outline_b), quad_segs=4))
    pieces = [piece for piece in shapely.get_parts(free_a.union(free_b)) if piece.area > _NEGLIGIBLE]
    if not pieces:
        return outline_b, outline_a
    # Each piece on its own (the two ends of a contact lie far apart).
    nearer = [_nearer(outline_a, outline_b, piece, TERRITORY_STEP) for piece in pieces]
    return (shapely.union_all([outline_b] + [b_side for _, b_side in nearer]),
            shapely.union_all([outline_a] + [a_side for a_side, _ in nearer]))


def settle_group(members: dict[int, Member], written: Sequence[Polygon], finish: Finish) -> dict[int, Settled]:
    """One group of objects that meet (see `touching_groups`): each one's split outline and
    its finished polygon kept within its territory."""
    split = split_outlines(members, written)
    finished: dict[int, Polygon | None] = {}
    for index, member in members.items():
        outline = split[index]
        unchanged = outline is not None and outline.equals_exact(member.found, 0.0)
        finished[index] = member.polygon if unchanged else (None if outline is None else finish(outline))
    by_rank = sorted(members, key=lambda index: (members[index].rank, index))
    # Each object's reach: its split outline and its finished polygon.
    reach = [None if None in (split[i], finished[i]) else shape for i in by_rank for shape in (split[i], finished[i])]
    losses: dict[int, list[BaseGeometry]] = {index: [] for index in members}
    for k, w in _meeting([None if finished[i] is None else finished[i] for i in by_rank], written):
        losses[by_rank[k]].append(written[w])
    neighbours: dict[int, list[int]] = {index: [] for index in members}
    for k, l in _meeting(reach, owners=[k // 2 for k in range(len(reach))]):
        i, j = by_rank[k], by_rank[l]
        neighbours[i].append(j)
        neighbours[j].append(i)
        if members[i].rank != members[j].rank:
            continue
        if not (finished[i].intersects(finished[j]) or finished[i].intersects(split[j])
                or finished[j].intersects(split[i])):
            continue
        lost_i, lost_j = _territory_losses(split[i], finished[i], split[j], finished[j])
        losses[i].append(lost_i)
        losses[j].append(lost_j)
    kept: dict[int, Polygon | None] = {}
    for index in by_rank:
        rank = members[index].rank
        # What stands higher is final already: its outline and kept polygon are its own.
        higher = [shape for j in neighbours[index] if j in kept and members[j].rank < rank
                  for shape in (split[j], kept[j]) if shape is not None]
        kept[index] = _opened(_minus(finished[index], losses[index] + higher), finished[index])
    return {index: Settled(split[index], kept[index] if split[index] is not None else None) for index in members}


# --- one location ---------------------------------------------------------------------


def keep_apart(members: Sequence[Member | None], written: Sequence[Polygon], finish: Finish,
               others: Sequence[Polygon] = ()) -> dict[int, Settled]:
    """The objects that meet another, settled (see the module); those absent from the
    result are unchanged. `members[i]` None: object i has no outline or takes no part (it
    is neither split nor kept out of). `others`: outlines beside them that are not to be
    changed (objects settled elsewhere, outlines written before): a polygon finished anew
    yields to them."""
    settled: dict[int, Settled] = {}
    for group, written_here in touching_groups(members, written):
        part = {index: members[index] for index in group}
        settled.update(_settled_safely(part, [written[w] for w in written_here], finish))
    return _clear_of_the_rest(members, settled, list(others) + list(written))


def _settled_safely(members: dict[int, Member], written: list[Polygon], finish: Finish) -> dict[int, Settled]:
    """`settle_group`; where the overlay fails on round-off (GEOS's non-noded
    intersections), again with every outline snapped to a grid of SNAP px; where that fails
    too, the group is left as it was (its outlines may overlap: better than no result)."""
    try:
        return settle_group(members, written, finish)
    except shapely.errors.GEOSException:
        pass
    snap = partial(shapely.set_precision, grid_size=SNAP)
    try:
        snapped = {index: replace(member, found=snap(member.found), polygon=snap(member.polygon))
                   for index, member in members.items()}
        return settle_group(snapped, [snap(outline) for outline in written], finish)
    except shapely.errors.GEOSException:
        return {}


def _clear_of_the_rest(members: Sequence[Member | None], settled: dict[int, Settled],
                       others: Sequence[Polygon] = ()) -> dict[int, Settled]:
    """A polygon finished anew from its split outline may reach an object outside its
    group (one that met nothing before) or one of `others`: it yields to that object's
    outline and polygon."""
    shapes = [shape for index, member in enumerate(members) if member is not None and index not in settled
              for shape in (member.found, member.polygon)] + list(others)
    if not shapes or not settled:
        return settled
    tree = shapely.STRtree(shapes)
    for index, result in settled.items():
        if result.polygon is None or result.polygon is members[index].polygon:
            continue
        hits = [shapes[int(k)] for k in tree.query(result.polygon, predicate="intersects")]
        if hits:
            try:
                settled[index] = Settled(result.found, _minus(result.polygon, hits))
            except shapely.errors.GEOSException:  # round-off: kept as settled in its group
                pass
    return settled


# --- the user's finish -----------------------------------------------------------------


def _finished(outline: Polygon, smoothing: float, padding: float, frame_size: tuple[int, int]) -> Polygon | None:
    polygon = finish_outline(outline, smoothing, padding)
    return None if polygon is None else clip_to_image(polygon, *frame_size)


def finisher(smoothing: float, padding: float, frame_size: tuple[int, int]) -> Finish:
    """The user's padding and smoothing (geometry.finish_outline), clipped to the image."""
    return partial(_finished, smoothing=smoothing, padding=padding, frame_size=frame_size)
