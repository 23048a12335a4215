"""Masks to polygons, exact to the pixel.

Frame: platform coordinates, x = image column, y = image row, with pixel (r, c) the
square [c, c+1] x [r, r+1]. Outlines follow pixel edges, so a block of pixels becomes
exactly its square: there is no half-pixel shift and no sub-pixel guessing.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)

# Unit steps (dx, dy) with y pointing down the image.
_EAST, _SOUTH, _WEST, _NORTH = (1, 0), (0, 1), (-1, 0), (0, -1)


def largest_piece(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The largest 4-connected piece of `mask` with its holes filled, cropped to its
    bounding box, and the (row, col) of that crop's first pixel; None if empty."""
    labels, count = ndimage.label(mask, structure=_FOUR_CONNECTED)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    biggest = int(np.argmax(sizes))
    rows, cols = ndimage.find_objects(labels)[biggest - 1]
    piece = labels[rows, cols] == biggest
    return ndimage.binary_fill_holes(piece, structure=_FOUR_CONNECTED), (rows.start, cols.start)


def _boundary_edges(piece: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed unit edges around the piece, keyed by start corner (x, y).

    Each edge runs with the piece on its right (clockwise on screen), so every corner
    of a simple outline has one outgoing edge.
    """
    padded = np.pad(piece, 1)
    inside = padded[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    sides = (
        (padded[:-2, 1:-1], (0, 0), _EAST),   # top side, from the top-left corner
        (padded[1:-1, 2:], (1, 0), _SOUTH),   # right side, from the top-right corner
        (padded[2:, 1:-1], (1, 1), _WEST),    # bottom side, from the bottom-right corner
        (padded[1:-1, :-2], (0, 1), _NORTH),  # left side, from the bottom-left corner
    )
    for neighbour, (corner_dx, corner_dy), step in sides:
        rows, cols = np.nonzero(inside & ~neighbour)
        for row, col in zip(rows.tolist(), cols.tolist()):
            edges.setdefault((col + corner_dx, row + corner_dy), []).append(step)
    return edges


def _right_turn(step: tuple[int, int]) -> tuple[int, int]:
    return (-step[1], step[0])


def _left_turn(step: tuple[int, int]) -> tuple[int, int]:
    return (step[1], -step[0])


def trace_outline(piece: np.ndarray) -> list[tuple[int, int]]:
    """Corners (x, y) of the outer outline of a hole-free 4-connected piece, in the
    piece's own frame, with only the corners where the outline turns."""
    edges = _boundary_edges(piece)
    start = min(edges)  # top-most row's left-most corner: an outer-outline corner
    corner, step = start, edges[start][0]
    corners: list[tuple[int, int]] = []
    previous_step = None
    while True:
        if step != previous_step:
            corners.append(corner)
        corner = (corner[0] + step[0], corner[1] + step[1])
        previous_step = step
        if corner == start:
            break
        choices = edges[corner]
        # Where two pieces touch at a corner only, turning right keeps to this piece.
        for candidate in (_right_turn(step), step, _left_turn(step)):
            if candidate in choices:
                step = candidate
                break
    if corners and previous_step == edges[start][0]:
        corners.pop(0)  # the start lies in the middle of a straight run
    return corners


def _largest_polygon(geometry: BaseGeometry) -> Polygon | None:
    if geometry.is_empty:
        return None
    if isinstance(geometry, Polygon):
        return geometry
    polygons = [g for g in getattr(geometry, "geoms", []) if isinstance(g, Polygon) and not g.is_empty]
    nested = [p for g in getattr(geometry, "geoms", []) if isinstance(g, MultiPolygon) for p in g.geoms]
    candidates = polygons + nested
    return max(candidates, key=lambda p: p.area) if candidates else None


def mask_to_polygon(
    mask: np.ndarray, smoothing: float, padding: float, offset: tuple[float, float] = (0.0, 0.0)
) -> Polygon | None:
    """The outline of the largest piece of `mask`, in platform coordinates.

    `mask` is a 2-D bool array (rows, cols) whose pixel (0, 0) lies at platform point
    `offset` = (x0, y0). Holes are filled. `padding` grows (positive) or shrinks
    (negative) the outline by that many pixels with mitred corners, so a square stays a
    square; then `smoothing` is the simplification tolerance in pixels (0 = none).
    Returns None when nothing valid remains.
    """
    found = largest_piece(np.asarray(mask, dtype=bool))
    if found is None:
        return None
    piece, (row0, col0) = found
    x0, y0 = offset[0] + col0, offset[1] + row0
    corners = np.asarray(trace_outline(piece), dtype=np.float64) + (x0, y0)
    polygon: BaseGeometry = Polygon(corners)
    if not polygon.is_valid:
        polygon = shapely.make_valid(polygon)
    if padding:
        polygon = polygon.buffer(padding, join_style="mitre", mitre_limit=2.0)
    polygon = _largest_polygon(polygon)
    if polygon is None:
        return None
    if smoothing > 0:
        polygon = _largest_polygon(polygon.simplify(smoothing, preserve_topology=True))
    if polygon is None or polygon.area <= 0:
        return None
    return Polygon(polygon.exterior)


def clip_to_image(polygon: Polygon, width: int, height: int) -> Polygon | None:
    """The largest part of `polygon` inside the image [0, width] x [0, height]."""
    clipped = _largest_polygon(polygon.intersection(box(0, 0, width, height)))
    if clipped is None or clipped.area <= 0:
        return None
    return Polygon(clipped.exterior)


def polygon_to_coordinates(polygon: Polygon) -> list[dict[str, float]]:
    """Platform coordinates of the outline, open (the first point is not repeated)."""
    ring = list(polygon.exterior.coords)[:-1]
    return [{"x": float(x), "y": float(y)} for x, y in ring]


def coordinates_to_points(coordinates: list[dict]) -> np.ndarray:
    """(N, 2) array of (x, y) from platform coordinates; non-finite points are dropped."""
    points = np.array(
        [(float(c.get("x", np.nan)), float(c.get("y", np.nan))) for c in coordinates if isinstance(c, dict)],
        dtype=np.float64,
    ).reshape(-1, 2)
    return points[np.isfinite(points).all(axis=1)]
