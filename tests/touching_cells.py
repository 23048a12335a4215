"""Touching cells: dense fields of real-looking cells that share a boundary, and a SAM2
stand-in whose masks bleed into the neighbours.

The truth. Cells are the stars of tests/synthetic_cells.py (`family_cell`: round, lobed
and elongated, 8-150 px across), placed in clusters so that a new cell's star overlaps
its neighbour's by 3-30 % of the smaller radius (more overlap: a longer contact). Where
two stars overlap, the shared area is split where their fields are equal (f_A = f_B, a
curve through the overlap), so the true cells tile without overlapping and each pair
of neighbours meets along one curve, its *contact* (2-60 px long). No point lies in
three stars. All coordinates are image pixels, x = column.

The stand-in. SAM2 answers a box with the signed distance to its cell's outline (slope
1 px per px, as the other oracles), sampled on the 256 x 256 low-resolution grid of each
window it sees. Its mask *bleeds* into each touching neighbour: the outline runs b px
inside the neighbour along their contact (the neighbour's part within b of the contact),
with b drawn from 0-3 px for each box and neighbour independently; `perfect` answers
have b = 0. Each cell is prompted with a box 0-15 % of its diameter loose on each side;
some cells 16 px across or more get a second box (two prompts on one cell).

In-process: `TouchingOracle(scene)`. Through the worker: SAM2_REFINE_PREDICTOR=
tests.touching_cells:from_environment with TOUCHING_ORACLE=<json of `answers_to_json`>.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import LineString, MultiLineString, Polygon, box
from shapely.ops import unary_union
from skimage.measure import find_contours, points_in_poly

from tests.erring_oracle import ErringOracle
from tests.synthetic_cells import FAMILIES, Cell, box_coordinates, family_cell

DIAMETERS = (8.0, 150.0)  # equivalent diameters of the stars, pixels
OVERLAP = (0.03, 0.30)  # how far a neighbour's star reaches into the anchor's, share of the smaller radius
MAX_LENS_SHARE = 0.2  # two stars share at most this share of the smaller one's area
BLEED = (0.0, 3.0)  # pixels a mask bleeds into each touching neighbour
LOOSENESS = 0.15  # a box side lies up to this share of the cell's diameter outside it
MIN_CONTACT = 1.0  # pixels: shorter shared boundaries are not counted as contacts
SECOND_PROMPT_DIAMETER = 16.0  # pixels: the smallest cell boxed twice
_TRUTH_STEP = 0.05  # pixels between the samples the contacts are traced from
_RING_STEP = 0.25  # pixels between the vertices a signed distance is measured to


# --- signed distance to a polygon ---------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """An answer: the signed distance to `polygon`'s outline, > 0 inside (exact to 1e-6 px:
    to the nearest of the segments at the nearest vertices of the densified outline)."""

    polygon: Polygon

    def field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        x0, y0, x1, y1 = self.polygon.bounds
        # Far from the outline only the sign matters: minus the distance to the bounds.
        spacing = max(float(np.max(np.abs(np.diff(x, axis=-1)), initial=1.0)),
                      float(np.max(np.abs(np.diff(y, axis=0)), initial=1.0)) if y.ndim > 1 else 1.0)
        margin = 2.0 * spacing + 2.0
        near = (x > x0 - margin) & (x < x1 + margin) & (y > y0 - margin) & (y < y1 + margin)
        out = -np.hypot(np.maximum(np.maximum(x0 - x, x - x1), 0), np.maximum(np.maximum(y0 - y, y - y1), 0)) - margin
        if near.any():
            out[near] = self._signed(x[near], y[near])
        return out

    @cached_property
    def _ring(self) -> tuple[np.ndarray, cKDTree]:
        ring = np.asarray(shapely.segmentize(self.polygon.exterior, _RING_STEP).coords)[:-1]
        return ring, cKDTree(ring)

    def _signed(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ring, tree = self._ring
        points = np.column_stack([x, y])
        _, nearest = tree.query(points, k=min(3, len(ring)))
        count = len(ring)
        distance = np.full(len(points), np.inf)
        for column in range(nearest.shape[1]):
            for step in (-1, 0):
                start = ring[(nearest[:, column] + step) % count]
                stop = ring[(nearest[:, column] + step + 1) % count]
                edge = stop - start
                length2 = np.maximum((edge ** 2).sum(axis=1), 1e-12)
                t = np.clip(((points - start) * edge).sum(axis=1) / length2, 0.0, 1.0)
                distance = np.minimum(distance, np.hypot(*(points - start - t[:, None] * edge).T))
        inside = points_in_poly(points, ring)
        return np.where(inside, distance, -distance)

    def outline(self) -> Polygon:
        return self.polygon

    def to_json(self) -> dict:
        return {"kind": "region", "exterior": np.asarray(self.polygon.exterior.coords).round(6).tolist()}

    @classmethod
    def from_json(cls, raw: dict) -> "Region":
        return cls(Polygon(raw["exterior"]))


# --- the truth ----------------------------------------------------------------------------


def positive_region(values: np.ndarray, x0: float, y0: float, step: float) -> Polygon:
    """Where `values` (sampled at x0 + c step, y0 + r step) are > 0, as a polygon (even-odd
    fill of the closed zero crossings; beyond the samples counts as <= 0)."""
    padded = np.pad(values, 1, constant_values=-1.0)
    rings = [Polygon(np.column_stack([x0 + (c[:, 1] - 1) * step, y0 + (c[:, 0] - 1) * step]))
             for c in find_contours(padded, 0.0) if len(c) >= 4]
    region = Polygon()
    for ring in rings:
        region = region.symmetric_difference(shapely.make_valid(ring))
    return region


def _largest(geometry) -> Polygon | None:
    parts = [g for g in shapely.get_parts(geometry) if isinstance(g, Polygon) and g.area > 0]
    return Polygon(max(parts, key=lambda p: p.area).exterior) if parts else None


@dataclass
class TouchingScene:
    """Cells that tile where they touch. `stars[i]` is cell i's star, `truths[i]` its true
    outline; `contacts[(i, j)]` (i < j) the boundary cells i and j share."""

    width: int
    height: int
    cells: list[Cell]
    stars: list[Polygon]
    truths: list[Polygon] = field(default_factory=list)
    contacts: dict[tuple[int, int], LineString | MultiLineString] = field(default_factory=dict)

    def neighbours(self, index: int) -> list[int]:
        return sorted({j for pair in self.contacts for j in pair if index in pair and j != index})

    @property
    def touching(self) -> list[tuple[int, int]]:
        return sorted(self.contacts)

    def isolated(self, gap: float = 5.0) -> list[int]:
        """Cells with no other cell within `gap` px."""
        tree = shapely.STRtree(self.truths)
        return [i for i, truth in enumerate(self.truths)
                if all(int(j) == i for j in tree.query(truth, predicate="dwithin", distance=gap))]


def _split_overlap(a: Cell, b: Cell, lens: Polygon) -> Polygon:
    """The part of `lens` (where the stars of a and b overlap) where a's field is the higher."""
    x0, y0, x1, y1 = lens.bounds
    x0, y0 = x0 - 1.0, y0 - 1.0
    columns = np.arange(x0, x1 + 1.0 + _TRUTH_STEP, _TRUTH_STEP)
    rows = np.arange(y0, y1 + 1.0 + _TRUTH_STEP, _TRUTH_STEP)
    x, y = np.meshgrid(columns, rows)
    return positive_region(a.field(x, y) - b.field(x, y), x0, y0, _TRUTH_STEP)


def partition(scene: TouchingScene) -> None:
    """Fill `truths` and `contacts`: each overlap of two stars split where their fields are equal."""
    truths = list(scene.stars)
    tree = shapely.STRtree(scene.stars)
    pairs = tree.query(scene.stars, predicate="intersects")
    for i, j in zip(*pairs):
        i, j = int(i), int(j)
        if i >= j:
            continue
        lens = scene.stars[i].intersection(scene.stars[j])
        if lens.area <= 0:
            continue
        wins = _split_overlap(scene.cells[i], scene.cells[j], lens)
        truths[i] = truths[i].difference(lens.difference(wins))
        truths[j] = truths[j].difference(lens.intersection(wins))
        contact = lens.intersection(wins.boundary)
        contact = shapely.line_merge(unary_union([g for g in shapely.get_parts(contact) if g.length > 0]))
        if contact.length >= MIN_CONTACT:
            scene.contacts[(i, j)] = contact
    scene.truths = [_largest(t) for t in truths]


# --- placing cells -------------------------------------------------------------------------


def place_touching(rng: np.random.Generator, width: int, height: int, count: int,
                   clustered: float = 0.8) -> tuple[list[Cell], list[Polygon]]:
    """`count` cells (fewer if the frame fills up): a share `clustered` overlapping an
    earlier one by OVERLAP (a similar size), the rest anywhere (equivalent diameters
    log-uniform in DIAMETERS). No point lies in three stars and no two stars share more
    than MAX_LENS_SHARE of the smaller."""
    cells: list[Cell] = []
    stars: list[Polygon] = []
    lenses: list[Polygon] = []
    for _ in range(count * 60):
        if len(cells) == count:
            break
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
        if cells and rng.random() < clustered:
            anchor = cells[int(rng.integers(len(cells)))]
            radius = float(np.clip(anchor.radius * rng.uniform(0.7, 1.4), DIAMETERS[0] / 2, DIAMETERS[1] / 2))
            shape = family_cell(rng, family, 0.0, 0.0, radius)
            theta = float(rng.uniform(0, 2 * np.pi))
            overlap = float(rng.uniform(*OVERLAP)) * min(anchor.radius, radius)
            distance = float(anchor.radius_at(theta) + shape.radius_at(theta + np.pi)) - overlap
            cell = replace(shape, cx=anchor.cx + distance * math.cos(theta), cy=anchor.cy + distance * math.sin(theta))
        else:
            radius = float(np.exp(rng.uniform(*np.log(DIAMETERS)))) / 2
            cell = family_cell(rng, family, rng.uniform(0, width), rng.uniform(0, height), radius)
        star = cell.outline()
        x0, y0, x1, y1 = star.bounds
        if x0 < 2 or y0 < 2 or x1 > width - 2 or y1 > height - 2:
            continue
        new_lenses = []
        for other, other_star in zip(cells, stars):
            if not star.intersects(other_star):
                continue
            lens = star.intersection(other_star)
            if lens.area == 0:
                continue
            if (not isinstance(lens, Polygon) or lens.area > MAX_LENS_SHARE * min(star.area, other_star.area)
                    or other_star.contains(shapely.Point(cell.centre)) or star.contains(shapely.Point(other.centre))):
                new_lenses = None
                break
            new_lenses.append(lens)
        if new_lenses is None:
            continue
        crowded = any(a.intersects(b) for k, a in enumerate(new_lenses) for b in new_lenses[k + 1:]) or any(
            a.intersects(b) for a in new_lenses for b in lenses)
        if crowded:
            continue
        cells.append(cell)
        stars.append(star)
        lenses.extend(new_lenses)
    return cells, stars


# --- prompts and answers ----------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One original: a box around cell `cell` (`second`: the cell's second box)."""

    cell: int
    shape: str  # "rectangle" or "polygon"
    coordinates: list[dict]
    second: bool = False

    def prompt_centre(self, width: int, height: int) -> tuple[float, float]:
        xs = np.clip([c["x"] for c in self.coordinates], 0, width)
        ys = np.clip([c["y"] for c in self.coordinates], 0, height)
        return (float(xs.min()) + float(xs.max())) / 2, (float(ys.min()) + float(ys.max())) / 2


def loose_box(rng: np.random.Generator, outline: Polygon, width: int, height: int) -> list[dict]:
    x0, y0, x1, y1 = outline.bounds
    slack = rng.uniform(0.0, LOOSENESS, size=4) * max(x1 - x0, y1 - y0)
    return box_coordinates(max(x0 - slack[0], 0.0), max(y0 - slack[1], 0.0),
                           min(x1 + slack[2], float(width)), min(y1 + slack[3], float(height)))


def bled(scene: TouchingScene, index: int, bleeds: dict[int, float]) -> Polygon:
    """Cell `index`'s outline run `bleeds[j]` px into each touching neighbour j: its true
    outline and the neighbour's part within that distance of their contact."""
    parts = [scene.truths[index]]
    for j, depth in bleeds.items():
        if depth > 0:
            contact = scene.contacts[tuple(sorted((index, j)))]
            parts.append(scene.truths[j].intersection(contact.buffer(depth, quad_segs=16)))
    return _largest(unary_union(parts).buffer(0)) if len(parts) > 1 else scene.truths[index]


@dataclass
class TouchingSet:
    """A scene, its prompts (boxes) and, per prompt, the answer SAM2's stand-in gives."""

    scene: TouchingScene
    prompts: list[Prompt]
    answers: list[Region]

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.scene.width, self.scene.height

    def keys(self) -> np.ndarray:
        return np.array([p.prompt_centre(*self.frame_size) for p in self.prompts])


def touching_set(seed: int, width: int = 1024, height: int = 1024, count: int = 60, perfect: bool = False,
                 second_prompts: int = 3) -> TouchingSet:
    """A dense field of touching cells with one loose box per cell (and `second_prompts`
    cells boxed twice), answered with masks that bleed 0-3 px into each touching
    neighbour, or exactly (`perfect`). The same seed gives the same cells, boxes and
    bleeds with or without `perfect`."""
    rng = np.random.default_rng(seed)
    cells, stars = place_touching(rng, width, height, count)
    scene = TouchingScene(width, height, cells, stars)
    partition(scene)
    prompts, answers = [], []
    for index in range(len(cells)):
        prompts.append(Prompt(index, "rectangle" if rng.random() < 0.5 else "polygon",
                              loose_box(rng, scene.truths[index], width, height)))
    # Boxed twice: cells at least SECOND_PROMPT_DIAMETER across (smaller ones lose IoU to
    # SAM2's resolution and the bleed alone, whatever the split).
    large = [i for i, truth in enumerate(scene.truths) if 2 * math.sqrt(truth.area / math.pi) >= SECOND_PROMPT_DIAMETER]
    for index in rng.choice(large, size=min(second_prompts, len(large)), replace=False):
        prompts.append(Prompt(int(index), "rectangle", loose_box(rng, scene.truths[int(index)], width, height), True))
    for prompt in prompts:
        depths = {j: float(rng.uniform(*BLEED)) for j in scene.neighbours(prompt.cell)}
        answers.append(Region(scene.truths[prompt.cell] if perfect else bled(scene, prompt.cell, depths)))
    return TouchingSet(scene, prompts, answers)


class TouchingOracle(ErringOracle):
    """The stand-in: each box answered with its prompt's `Region`, nearest box centre first."""

    def __init__(self, touching: TouchingSet):
        super().__init__(touching.keys(), touching.answers)


def answers_to_json(touching: list[TouchingSet]) -> str:
    """The stand-in's answers to the prompts of `touching` (scenes at different time points
    whose boxes do not meet), for TOUCHING_ORACLE."""
    keys = [key for scene in touching for key in scene.keys().tolist()]
    return json.dumps({"keys": keys, "answers": [a.to_json() for scene in touching for a in scene.answers]})


def from_environment(checkpoint) -> ErringOracle:
    """Predictor factory for the worker subprocess."""
    with open(os.environ["TOUCHING_ORACLE"]) as handle:
        raw = json.load(handle)
    return ErringOracle(np.array(raw["keys"]), [Region.from_json(a) for a in raw["answers"]])
