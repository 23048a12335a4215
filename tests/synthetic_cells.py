"""Real-looking cells, the rough originals users draw of them, and the ways SAM2 errs.

A cell is an irregular star-shaped outline (a radius with a few low harmonics), 8-60 px
across. Its *field* is positive inside and zero on the outline, with slope about 1 px
per px near it, so an oracle can answer a box prompt with it as mask logits.

A scene packs cells into a frame, many of them touching a neighbour, and gives each
cell a rough original: a box 1-3 px loose (`rectangle` or a 4-vertex `polygon`), or a
hand-drawn outline a little inside or outside the cell. A quarter of the cells get a
wrong answer, as SAM2 gives them: the cell with its neighbour (neighbour-grabbing), an
inner part (the nucleus), the neighbour instead, or nothing. Some cells get a second
original (two prompts on one cell). All coordinates are image pixels, x = column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import LineString, Polygon
from shapely.ops import unary_union

GOOD, GRAB, INNER, WRONG, EMPTY, SECOND = "good", "grab", "inner", "wrong", "empty", "second prompt"
ERRORS = (GRAB, INNER, WRONG, EMPTY)


@dataclass(frozen=True)
class Cell:
    cx: float
    cy: float
    radius: float
    # (order, relative amplitude, phase) of the outline's harmonics.
    harmonics: tuple[tuple[int, float, float], ...] = ()
    # Linear scale about the centre (an inner part of the cell is the cell scaled < 1).
    scale: float = 1.0

    @property
    def centre(self) -> tuple[float, float]:
        return self.cx, self.cy

    def radius_at(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta, dtype=np.float64)
        for order, amplitude, phase in self.harmonics:
            r = r + amplitude * np.cos(order * theta + phase)
        return self.scale * self.radius * r

    def field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - self.cx, y - self.cy
        return self.radius_at(np.arctan2(dy, dx)) - np.hypot(dx, dy)

    def outline(self, vertices: int = 180) -> Polygon:
        theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
        r = self.radius_at(theta)
        return Polygon(np.column_stack([self.cx + r * np.cos(theta), self.cy + r * np.sin(theta)]))

    def to_json(self) -> dict:
        return {"kind": "cell", "cx": self.cx, "cy": self.cy, "radius": self.radius,
                "harmonics": [list(h) for h in self.harmonics], "scale": self.scale}


@dataclass(frozen=True)
class Union:
    """Two cells taken as one mask, joined by a bridge across the gap between them (a box
    prompt that grabbed the neighbour)."""

    parts: tuple[Cell, Cell]

    @property
    def bridge_half_width(self) -> float:
        return 0.4 * min(part.radius for part in self.parts)

    def _bridge(self, x, y):
        (ax, ay), (bx, by) = self.parts[0].centre, self.parts[1].centre
        length2 = (bx - ax) ** 2 + (by - ay) ** 2
        t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / length2, 0.0, 1.0)
        return self.bridge_half_width - np.hypot(x - (ax + t * (bx - ax)), y - (ay + t * (by - ay)))

    def field(self, x, y):
        return np.maximum.reduce([part.field(x, y) for part in self.parts] + [self._bridge(x, y)])

    def outline(self) -> Polygon:
        bridge = LineString([part.centre for part in self.parts]).buffer(self.bridge_half_width)
        return unary_union([part.outline() for part in self.parts] + [bridge])

    def to_json(self) -> dict:
        return {"kind": "union", "parts": [part.to_json() for part in self.parts]}


@dataclass(frozen=True)
class Nothing:
    """No object anywhere (logits well below zero)."""

    def field(self, x, y):
        return np.full(np.broadcast(x, y).shape, -8.0)

    def outline(self) -> None:
        return None

    def to_json(self) -> dict:
        return {"kind": "nothing"}


Answer = Cell | Union | Nothing


def answer_from_json(raw: dict) -> Answer:
    if raw["kind"] == "cell":
        return Cell(raw["cx"], raw["cy"], raw["radius"], tuple(tuple(h) for h in raw["harmonics"]), raw["scale"])
    if raw["kind"] == "union":
        return Union(tuple(answer_from_json(part) for part in raw["parts"]))
    return Nothing()


@dataclass(frozen=True)
class Original:
    cell: int  # index of the cell it outlines
    shape: str  # "polygon" or "rectangle"
    coordinates: list[dict]
    kind: str  # GOOD, one of ERRORS, or SECOND
    answer: Answer  # what the predictor answers to its box

    @property
    def box_centre(self) -> tuple[float, float]:
        xs = [c["x"] for c in self.coordinates]
        ys = [c["y"] for c in self.coordinates]
        return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2


@dataclass
class Scene:
    width: int
    height: int
    cells: list[Cell] = field(default_factory=list)
    originals: list[Original] = field(default_factory=list)


def random_cell(rng: np.random.Generator, cx: float, cy: float, radius: float) -> Cell:
    harmonics = tuple(
        (order, float(rng.uniform(0.0, 0.12 / order ** 0.5)), float(rng.uniform(0, 2 * np.pi)))
        for order in (2, 3, 4, 5)
    )
    return Cell(float(cx), float(cy), float(radius), harmonics)


def _fits(candidate: Cell, cells: list[Cell], width: int, height: int) -> bool:
    outline = candidate.outline(72)
    x0, y0, x1, y1 = outline.bounds
    if x0 < 6 or y0 < 6 or x1 > width - 6 or y1 > height - 6:
        return False
    for other in cells:
        if math.dist(other.centre, candidate.centre) > 2.6 * (other.radius + candidate.radius):
            continue
        if outline.intersection(other.outline(72)).area > 0.01 * min(outline.area, other.outline(72).area):
            return False
    return True


def pack_cells(rng: np.random.Generator, width: int, height: int, count: int) -> list[Cell]:
    """`count` cells 8-60 px across; about half placed touching an earlier one."""
    cells: list[Cell] = []
    for _ in range(count * 60):
        if len(cells) == count:
            break
        radius = float(np.exp(rng.uniform(np.log(4.0), np.log(30.0))))
        if cells and rng.random() < 0.6:
            # Neighbours in a cluster are of similar size.
            anchor = cells[int(rng.integers(len(cells)))]
            radius = float(np.clip(anchor.radius * rng.uniform(0.7, 1.4), 4.0, 30.0))
            angle = rng.uniform(0, 2 * np.pi)
            distance = (anchor.radius + radius) * 1.12 + rng.uniform(0.0, 1.5)
            cx, cy = anchor.cx + distance * np.cos(angle), anchor.cy + distance * np.sin(angle)
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        candidate = random_cell(rng, cx, cy, radius)
        if _fits(candidate, cells, width, height):
            cells.append(candidate)
    return cells


def loose_box(rng: np.random.Generator, cell: Cell) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = cell.outline().bounds
    slack = rng.uniform(1.0, 3.0, size=4)
    return x0 - slack[0], y0 - slack[1], x1 + slack[2], y1 + slack[3]


def box_coordinates(x0, y0, x1, y1) -> list[dict]:
    return [{"x": x0, "y": y0}, {"x": x1, "y": y0}, {"x": x1, "y": y1}, {"x": x0, "y": y1}]


def hand_drawn(rng: np.random.Generator, cell: Cell) -> list[dict]:
    """The outline a little inside or outside the cell, with a wobbly hand, 10-24 vertices."""
    offset = rng.uniform(-1.0, 1.0) * max(1.5, 0.1 * cell.radius)
    vertices = int(rng.integers(10, 25))
    step = 2 * np.pi / vertices
    theta = np.arange(vertices) * step + rng.uniform(-0.3, 0.3, vertices) * step
    r = np.maximum(cell.radius_at(theta) + offset + rng.normal(0, 0.6, vertices), 0.5 * cell.radius)
    return [{"x": float(cell.cx + a * np.cos(t)), "y": float(cell.cy + a * np.sin(t))} for a, t in zip(r, theta)]


def rough_original(rng: np.random.Generator, cell: Cell) -> tuple[str, list[dict]]:
    choice = rng.random()
    if choice < 0.35:
        return "rectangle", box_coordinates(*loose_box(rng, cell))
    if choice < 0.5:
        return "polygon", box_coordinates(*loose_box(rng, cell))
    return "polygon", hand_drawn(rng, cell)


def _nearest_neighbour(cells: list[Cell], index: int) -> tuple[int, float]:
    """The cell of similar size (radius within 0.6-1.6 x) whose outline is closest to
    cell `index`, and that gap in pixels: the neighbour SAM2 confuses with it."""
    cell = cells[index]
    outline = cell.outline(72)
    gaps = [
        (outline.distance(other.outline(72)), j)
        for j, other in enumerate(cells)
        if j != index and math.dist(other.centre, cell.centre) < 3 * (other.radius + cell.radius)
        and 0.6 <= other.radius / cell.radius <= 1.6
    ]
    if not gaps:
        return -1, math.inf
    gap, j = min(gaps)
    return j, gap


def make_scene(seed: int, width: int = 512, height: int = 512, count: int = 40,
               error_share: float = 0.25, second_prompts: int = 3) -> Scene:
    rng = np.random.default_rng(seed)
    scene = Scene(width, height, pack_cells(rng, width, height, count))
    cells = scene.cells
    erring = set(rng.choice(len(cells), size=round(error_share * len(cells)), replace=False).tolist())
    for index, cell in enumerate(cells):
        shape, coordinates = rough_original(rng, cell)
        kind, answer = GOOD, cell
        if index in erring:
            neighbour, gap = _nearest_neighbour(cells, index)
            options = [INNER, EMPTY] + ([GRAB, WRONG] if gap < 3.0 else [])
            kind = options[int(rng.integers(len(options)))]
            if kind == GRAB:
                answer = Union((cell, cells[neighbour]))
            elif kind == WRONG:
                answer = cells[neighbour]
            elif kind == INNER:
                answer = Cell(cell.cx, cell.cy, cell.radius, cell.harmonics, float(rng.uniform(0.35, 0.6)))
            else:
                answer = Nothing()
        scene.originals.append(Original(index, shape, coordinates, kind, answer))
    good = [i for i in range(len(cells)) if i not in erring]
    for index in rng.choice(good, size=min(second_prompts, len(good)), replace=False):
        shape, coordinates = rough_original(rng, cells[int(index)])
        scene.originals.append(Original(int(index), shape, coordinates, SECOND, cells[int(index)]))
    return scene
