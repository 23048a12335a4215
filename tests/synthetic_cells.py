"""Real-looking cells, the rough originals users draw of them, and the ways SAM2 errs.

A cell is a star-shaped outline about its centre: an ellipse (of area pi r^2) with a few
low harmonics. Its *field* is positive inside and zero on the outline, with slope about
1 px per px near it, so an oracle can answer a box prompt with it as mask logits.

`calibration_scene` packs cells 8-150 px across of three shape families into a frame,
touching, isolated and cut by the frame's edge, and outlines each as people do: a box
loose by 0-30 % of the cell's diameter on each side (`rectangle` or a 4-vertex
`polygon`), or a drawn outline from 15 % inside to 30 % outside the cell with a
low-frequency wobble. A quarter of the cells get a wrong answer, as SAM2 gives them: an
inner part (the nucleus), the cell with its touching neighbours, the neighbour instead,
or nothing. Some cells get a second original (two prompts on one cell).
`random_cell` and `rough_original` make the small cells and tight originals of other
tests. All coordinates are image pixels, x = column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from shapely.geometry import LineString, Polygon
from shapely.ops import unary_union

from sam2_refine.review import equivalent_diameter

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
    # The outline's base is an ellipse of this long / short axis ratio (area kept at
    # pi radius^2), its long axis at `angle` radians from +x towards +y.
    aspect: float = 1.0
    angle: float = 0.0
    # Pixels the outline is moved out along the radius (in: negative): a mask's own error.
    offset_px: float = 0.0

    @property
    def centre(self) -> tuple[float, float]:
        return self.cx, self.cy

    def radius_at(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        long, short = math.sqrt(self.aspect), 1.0 / math.sqrt(self.aspect)
        along = theta - self.angle
        r = long * short / np.hypot(short * np.cos(along), long * np.sin(along))
        wobble = np.ones_like(theta)
        for order, amplitude, phase in self.harmonics:
            wobble = wobble + amplitude * np.cos(order * theta + phase)
        return self.scale * self.radius * r * wobble + self.offset_px

    def field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - self.cx, y - self.cy
        return self.radius_at(np.arctan2(dy, dx)) - np.hypot(dx, dy)

    def outline(self, vertices: int | None = None) -> Polygon:
        # Enough vertices that chords stay within ~0.05 px of the curve, also at the tips
        # of large elongated cells.
        vertices = vertices or max(180, math.ceil(10 * self.scale * self.radius * self.aspect))
        theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
        r = self.radius_at(theta)
        return Polygon(np.column_stack([self.cx + r * np.cos(theta), self.cy + r * np.sin(theta)]))

    def to_json(self) -> dict:
        return {"kind": "cell", "cx": self.cx, "cy": self.cy, "radius": self.radius,
                "harmonics": [list(h) for h in self.harmonics], "scale": self.scale,
                "aspect": self.aspect, "angle": self.angle, "offset_px": self.offset_px}


@dataclass(frozen=True)
class Union:
    """A cell and its touching neighbours taken as one mask, each neighbour joined to the
    first part by a bridge across the gap between them (a box prompt that grabbed them)."""

    parts: tuple[Cell, ...]

    @property
    def bridge_half_width(self) -> float:
        # A third of the narrowest part's short semi-axis: a waist, as between touching cells.
        return min(part.radius / math.sqrt(part.aspect) for part in self.parts) / 3.0

    def _bridge(self, x, y, other: Cell):
        (ax, ay), (bx, by) = self.parts[0].centre, other.centre
        length2 = (bx - ax) ** 2 + (by - ay) ** 2
        t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / length2, 0.0, 1.0)
        return self.bridge_half_width - np.hypot(x - (ax + t * (bx - ax)), y - (ay + t * (by - ay)))

    def field(self, x, y):
        return np.maximum.reduce([part.field(x, y) for part in self.parts]
                                 + [self._bridge(x, y, other) for other in self.parts[1:]])

    def outline(self) -> Polygon:
        bridges = [LineString([self.parts[0].centre, other.centre]).buffer(self.bridge_half_width)
                   for other in self.parts[1:]]
        return unary_union([part.outline() for part in self.parts] + bridges)

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
        return Cell(raw["cx"], raw["cy"], raw["radius"], tuple(tuple(h) for h in raw["harmonics"]), raw["scale"],
                    raw.get("aspect", 1.0), raw.get("angle", 0.0), raw.get("offset_px", 0.0))
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
    outline_kind: str = ""  # BOX or DRAWN (calibration scenes)

    @property
    def box_centre(self) -> tuple[float, float]:
        xs = [c["x"] for c in self.coordinates]
        ys = [c["y"] for c in self.coordinates]
        return (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2

    def prompt_centre(self, width: int, height: int) -> tuple[float, float]:
        """The centre of the box that prompts SAM2: the original's box clipped to the frame."""
        xs = np.clip([c["x"] for c in self.coordinates], 0, width)
        ys = np.clip([c["y"] for c in self.coordinates], 0, height)
        return (float(xs.min()) + float(xs.max())) / 2, (float(ys.min()) + float(ys.max())) / 2


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


# --- The calibration set: cells of many sizes and shapes, outlined as people outline them --

BOX, DRAWN = "box", "drawn outline"
ROUND, LOBED, ELONGATED = "round", "lobed", "elongated"
FAMILIES = (ROUND, LOBED, ELONGATED)
DIAMETERS = (8.0, 150.0)  # equivalent diameters of the cells, pixels
BOX_LOOSENESS = 0.30  # a box side lies up to this share of the cell's diameter outside it
DRAWN_OFFSETS = (-0.15, 0.30)  # a drawn outline's offset from the cell, share of its equivalent radius
WOBBLE = 0.03  # each of a drawn outline's harmonics 1-3 moves it up to this share of the radius
INNER_AREA = (0.12, 0.30)  # an inner part's area, share of its cell's
# A right answer's own boundary error: up to this many pixels in or out, or this share of
# the cell's diameter if more (about one of SAM2's low-resolution mask pixels in Auto).
BOUNDARY_ERROR_PX, BOUNDARY_ERROR_SHARE = 1.0, 0.025
TOUCHING_GAP = 3.0  # pixels; closer neighbours touch


def family_cell(rng: np.random.Generator, family: str, cx: float, cy: float, radius: float) -> Cell:
    """A cell of `family`: round (smooth nuclei), lobed (irregular), or elongated (rods, 1.8-3.5 : 1)."""
    angle = float(rng.uniform(0, np.pi))
    if family == ROUND:
        orders, strength, aspect = (2, 3, 4), 0.04, float(rng.uniform(1.0, 1.25))
    elif family == LOBED:
        orders, strength, aspect = (2, 3, 4, 5, 6), 0.14, float(rng.uniform(1.0, 1.4))
    else:
        orders, strength, aspect = (2, 3, 4), 0.03, float(rng.uniform(1.8, 3.5))
    harmonics = tuple(
        (order, float(rng.uniform(0.0, strength / order ** 0.5)), float(rng.uniform(0, 2 * np.pi))) for order in orders
    )
    return Cell(float(cx), float(cy), float(radius), harmonics, 1.0, aspect, angle)


def cell_diameter(cell: Cell) -> float:
    """The cell's equivalent diameter (of a disc of its area), pixels."""
    return equivalent_diameter(cell.outline())


def _placed(cell: Cell, outline: Polygon, placed: list[tuple[Cell, Polygon]], width: int, height: int,
            at_edge: bool) -> bool:
    x0, y0, x1, y1 = outline.bounds
    if at_edge:
        if not (0 <= cell.cx <= width and 0 <= cell.cy <= height):
            return False
    elif x0 < 2 or y0 < 2 or x1 > width - 2 or y1 > height - 2:
        return False
    return not any(outline.intersects(other) for _, other in placed)


def place_cells(rng: np.random.Generator, width: int, height: int, count: int,
                touching_share: float = 0.55, edge_share: float = 0.08) -> list[Cell]:
    """`count` cells (fewer if the frame fills up) with equivalent diameters log-uniform in
    DIAMETERS: a share touching an earlier one (a similar size, 0-2 px apart), a share cut
    by the frame's edge (centre inside, at least about half visible), the rest isolated."""
    placed: list[tuple[Cell, Polygon]] = []
    for _ in range(count * 80):
        if len(placed) == count:
            break
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
        at_edge = False
        if placed and rng.random() < touching_share:
            anchor = placed[int(rng.integers(len(placed)))][0]
            radius = float(np.clip(anchor.radius * rng.uniform(0.7, 1.4), DIAMETERS[0] / 2, DIAMETERS[1] / 2))
            shape = family_cell(rng, family, 0.0, 0.0, radius)
            theta = float(rng.uniform(0, 2 * np.pi))
            distance = float(anchor.radius_at(theta) + shape.radius_at(theta + np.pi)) + rng.uniform(0.0, 2.0)
            # Pushed out step by step until it touches without overlapping.
            for _step in range(8):
                cell = replace(shape, cx=anchor.cx + distance * math.cos(theta), cy=anchor.cy + distance * math.sin(theta))
                outline = cell.outline()
                if not any(outline.intersects(other) for _, other in placed):
                    break
                distance += 1.0
        else:
            radius = float(np.exp(rng.uniform(*np.log(DIAMETERS)))) / 2
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            if rng.random() < edge_share:
                at_edge = True
                inside = float(rng.uniform(0.15, 0.9)) * radius
                side = int(rng.integers(4))
                cx, cy = [(inside, cy), (cx, inside), (width - inside, cy), (cx, height - inside)][side]
            cell = family_cell(rng, family, cx, cy, radius)
            outline = cell.outline()
        if _placed(cell, outline, placed, width, height, at_edge):
            placed.append((cell, outline))
    return [cell for cell, _ in placed]


def box_original(rng: np.random.Generator, cell: Cell) -> list[dict]:
    """A box around the cell, each side independently 0-BOX_LOOSENESS of the cell's
    diameter (its longer extent) outside it."""
    x0, y0, x1, y1 = cell.outline().bounds
    slack = rng.uniform(0.0, BOX_LOOSENESS, size=4) * max(x1 - x0, y1 - y0)
    return box_coordinates(x0 - slack[0], y0 - slack[1], x1 + slack[2], y1 + slack[3])


def drawn_original(rng: np.random.Generator, cell: Cell) -> list[dict]:
    """The outline as a hand draws it: the cell's outline offset along its normals by
    DRAWN_OFFSETS of its equivalent radius, with a low-frequency wobble (harmonics 1-3,
    each up to WOBBLE of the radius, moving it radially about the cell's centre), a little
    jitter, and a vertex every ~2.5 px of its length (10-120 vertices)."""
    truth = cell.outline()
    radius = math.sqrt(truth.area / math.pi)
    grown = truth.buffer(float(rng.uniform(*DRAWN_OFFSETS)) * radius, quad_segs=16)
    base = max(getattr(grown, "geoms", [grown]), key=lambda part: part.area)
    ring = base.exterior
    vertices = int(np.clip(ring.length / 2.5, 10, 120))
    start = rng.uniform(0, ring.length / vertices)
    points = np.array([ring.interpolate(start + k * ring.length / vertices).coords[0] for k in range(vertices)])
    dx, dy = points[:, 0] - cell.cx, points[:, 1] - cell.cy
    theta, distance = np.arctan2(dy, dx), np.hypot(dx, dy)
    wobble = sum(rng.uniform(0, WOBBLE) * radius * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3))
    distance = np.maximum(distance + wobble + rng.normal(0, min(0.3, 0.02 * radius), vertices), 0.2 * radius)
    return [{"x": float(cell.cx + d * np.cos(t)), "y": float(cell.cy + d * np.sin(t))} for d, t in zip(distance, theta)]


def calibration_original(rng: np.random.Generator, cell: Cell, outline_kinds: tuple[str, ...]) -> tuple[str, str, list[dict]]:
    """(outline kind, annotation shape, coordinates): a box (as a `rectangle` or a
    4-vertex `polygon`) or a drawn outline."""
    outline_kind = outline_kinds[int(rng.integers(len(outline_kinds)))]
    if outline_kind == DRAWN:
        return DRAWN, "polygon", drawn_original(rng, cell)
    return BOX, ("rectangle" if rng.random() < 0.5 else "polygon"), box_original(rng, cell)


def inner_part(rng: np.random.Generator, cell: Cell) -> Cell:
    """An inner part of the cell (the nucleus SAM2 keeps): INNER_AREA of its area, its
    centre moved off the cell's by up to half the room there is."""
    scale = math.sqrt(rng.uniform(*INNER_AREA))
    room = (1 - scale) * float(cell.radius_at(np.linspace(0, 2 * np.pi, 90, endpoint=False)).min())
    shift, direction = rng.uniform(0, 0.5) * room, rng.uniform(0, 2 * np.pi)
    return replace(cell, cx=cell.cx + shift * math.cos(direction), cy=cell.cy + shift * math.sin(direction), scale=scale)


def with_boundary_error(rng: np.random.Generator, cell: Cell) -> Cell:
    """The cell as a right answer outlines it: its outline moved in or out by up to
    BOUNDARY_ERROR_PX, or BOUNDARY_ERROR_SHARE of its diameter if more."""
    limit = max(BOUNDARY_ERROR_PX, BOUNDARY_ERROR_SHARE * 2 * cell.radius)
    return replace(cell, offset_px=float(rng.uniform(-limit, limit)))


def touching_neighbours(cells: list[Cell], outlines: list[Polygon], index: int) -> list[int]:
    """Cells of similar size (radius 0.6-1.6 x) within TOUCHING_GAP px of cell `index`, nearest first."""
    cell, outline = cells[index], outlines[index]
    gaps = sorted(
        (outline.distance(outlines[j]), j) for j, other in enumerate(cells)
        if j != index and 0.6 <= other.radius / cell.radius <= 1.6
        and math.dist(other.centre, cell.centre) < 2.5 * (other.radius * other.aspect + cell.radius * cell.aspect)
    )
    return [j for gap, j in gaps if gap < TOUCHING_GAP]


def calibration_scene(seed: int, width: int = 1024, height: int = 1024, count: int = 40,
                      error_share: float = 0.25, second_prompts: int = 2,
                      outline_kinds: tuple[str, ...] = (BOX, DRAWN), boundary_error: bool = True) -> Scene:
    """Cells 8-150 px across of three shape families, each outlined once as a person
    would (`calibration_original`); `error_share` of them answered wrongly as SAM2 errs
    (an inner part, the cell with its touching neighbours, the neighbour instead, nothing),
    the rest with the cell itself, with a right answer's own boundary error
    (`with_boundary_error`) unless `boundary_error` is False (perfect answers);
    `second_prompts` good cells outlined a second time."""
    rng = np.random.default_rng(seed)
    scene = Scene(width, height, place_cells(rng, width, height, count))
    cells = scene.cells
    outlines = [cell.outline() for cell in cells]
    erring = set(rng.choice(len(cells), size=round(error_share * len(cells)), replace=False).tolist())
    for index, cell in enumerate(cells):
        outline_kind, shape, coordinates = calibration_original(rng, cell, outline_kinds)
        answered = with_boundary_error(rng, cell)  # drawn either way: the same scene with or without
        kind, answer = GOOD, answered if boundary_error else cell
        if index in erring:
            neighbours = touching_neighbours(cells, outlines, index)
            options = [INNER, EMPTY] + ([GRAB, WRONG] if neighbours else [])
            kind = options[int(rng.integers(len(options)))]
            if kind == GRAB:
                taken = neighbours[:2] if len(neighbours) > 1 and rng.random() < 0.4 else neighbours[:1]
                answer = Union((cell, *(cells[j] for j in taken)))
            elif kind == WRONG:
                answer = cells[neighbours[0]]
            elif kind == INNER:
                answer = inner_part(rng, cell)
            else:
                answer = Nothing()
        scene.originals.append(Original(index, shape, coordinates, kind, answer, outline_kind))
    good = [i for i in range(len(cells)) if i not in erring]
    for index in rng.choice(good, size=min(second_prompts, len(good)), replace=False):
        cell = cells[int(index)]
        outline_kind, shape, coordinates = calibration_original(rng, cell, outline_kinds)
        answered = with_boundary_error(rng, cell)
        answer = answered if boundary_error else cell
        scene.originals.append(Original(int(index), shape, coordinates, SECOND, answer, outline_kind))
    return scene
