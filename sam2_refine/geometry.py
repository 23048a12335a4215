"""Fields to polygons: the sub-pixel zero crossing of a mask field.

Frame: platform coordinates, x = image column, y = image row, with pixel (r, c) the
square [c, c+1] x [r, r+1]. A field (SAM2's logits resized to image pixels, or a 0/1
mask as ±0.5) holds one value per pixel, sampled at the pixel's centre
(c + 0.5, r + 0.5); > 0 is inside. The outline is where the field crosses zero, with
linear interpolation between neighbouring centres (marching squares, the outer ring only,
as skimage.measure.find_contours(fully_connected="low") traces it), so it follows the
model's boundary to a fraction of a pixel instead of the pixel edges. On a 0/1 mask the crossing lies on the pixel edges
half-way between centres, with each convex corner cut by a 0.5-pixel diagonal: a
hole-free piece of N pixels becomes an outline of area N - 0.5 (4 convex corners more
than concave ones, 1/8 pixel each).

Smoothing S (pixels) is the width of the band, centred on the exact outline, that the
smoothed outline stays in: vertices are removed by Douglas-Peucker with tolerance S / 2
(a vertex goes when the outline it stood on stays within S / 2 of the new edge), then the
simplified outline's edges move along their normals by the one distance that restores
the area enclosed before simplifying. Douglas-Peucker alone cuts across every bulge, so
it shrinks convex cells; after the correction the smoothed outline crosses the exact one
instead of lying inside it, and the area is unchanged. Padding is a true offset of the
outline with round joins, applied before smoothing.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
# Field value beyond the field's edge: the outline closes there, just outside the field.
_OUTSIDE = -1.0e6
# Newton steps that restore the area after simplification; 3 reach 1e-9 relative.
_AREA_STEPS = 3
_PADDING_QUAD_SEGMENTS = 8  # segments per quarter circle of a round join
MITRE_LIMIT = 2.0  # how far a mitred corner may reach, in offset distances


def largest_piece(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected piece of `mask` (same shape, bool, holes not filled); None if empty."""
    labels, count = ndimage.label(mask, structure=_FOUR_CONNECTED)
    if count <= 1:
        return np.asarray(mask, dtype=bool) if count else None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def piece_at(mask: np.ndarray, row: int, col: int) -> np.ndarray | None:
    """The 4-connected piece of `mask` holding pixel (row, col); None if that pixel is outside."""
    if not mask[row, col]:
        return None
    labels, count = ndimage.label(mask, structure=_FOUR_CONNECTED)
    return np.asarray(mask, dtype=bool) if count == 1 else labels == labels[row, col]


def touched_sides(piece: np.ndarray) -> tuple[bool, bool, bool, bool]:
    """Whether the piece reaches the field's (left, top, right, bottom) edge."""
    return bool(piece[:, 0].any()), bool(piece[0, :].any()), bool(piece[:, -1].any()), bool(piece[-1, :].any())


# Marching squares. A square's corners (r, c), (r, c+1), (r+1, c), (r+1, c+1) add 1, 2, 4, 8
# to its case when above zero; its sides are T (r, c)-(r, c+1), B (r+1, c)-(r+1, c+1),
# L (r, c)-(r+1, c) and R (r, c+1)-(r+1, c+1). A case's segment runs from one side to another
# with the cells above zero on its right; at a saddle (cases 6 and 9) the cells below zero
# are connected (skimage's fully_connected="low"): the two above are cut off one by one.
_T, _B, _L, _R = 0, 1, 2, 3
_CORNER = {1: (_T, _L), 2: (_R, _T), 4: (_L, _B), 8: (_B, _R)}
_HALF = {3: (_R, _L), 12: (_L, _R), 5: (_T, _B), 10: (_B, _T)}


def _segment_tables() -> tuple[np.ndarray, ...]:
    enter, leave = np.zeros(16, np.int64), np.zeros(16, np.int64)
    enter2, leave2 = np.full(16, -1, np.int64), np.full(16, -1, np.int64)
    for case in range(1, 15):
        corners = bin(case).count("1")
        if case in (6, 9):
            (enter[case], leave[case]), (enter2[case], leave2[case]) = \
                (_CORNER[2], _CORNER[4]) if case == 6 else (_CORNER[1], _CORNER[8])
        elif corners == 1:
            enter[case], leave[case] = _CORNER[case]
        elif corners == 3:
            leave[case], enter[case] = _CORNER[15 - case]
        else:
            enter[case], leave[case] = _HALF[case]
    return enter, leave, enter2, leave2


_ENTER, _LEAVE, _ENTER2, _LEAVE2 = _segment_tables()
# Each side's first corner relative to the square's (row, col), and whether it runs along a row.
_SIDE_ROW, _SIDE_COL = np.array([0, 1, 0, 0]), np.array([0, 0, 0, 1])
_ALONG_ROW = np.array([True, True, False, False])


def outer_ring(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The outer zero crossing (rows, cols; closed) around the cells of `values` above zero,
    which must form one 4-connected piece with negative values all around it."""
    height, width = values.shape
    above = (values > 0).view(np.uint8)
    case = above[:-1, :-1] | (above[:-1, 1:] << 1) | (above[1:, :-1] << 2) | (above[1:, 1:] << 3)
    squares = np.flatnonzero((case - np.uint8(1)) < 14)  # neither all below nor all above
    cases = case.ravel()[squares]
    rows, cols = np.divmod(squares, width - 1)
    enter, leave = _ENTER[cases], _LEAVE[cases]
    saddles = np.flatnonzero((cases == 6) | (cases == 9))
    if len(saddles):
        enter = np.concatenate([enter, _ENTER2[cases[saddles]]])
        leave = np.concatenate([leave, _LEAVE2[cases[saddles]]])
        rows, cols = np.concatenate([rows, rows[saddles]]), np.concatenate([cols, cols[saddles]])
    # Each side of the grid has one id: along a row r * (width - 1) + c, after them along a column.
    along_rows = height * (width - 1)

    def side(kinds: np.ndarray) -> np.ndarray:
        row, col = rows + _SIDE_ROW[kinds], cols + _SIDE_COL[kinds]
        return np.where(_ALONG_ROW[kinds], row * (width - 1) + col, along_rows + row * width + col)

    segment_of = np.empty(along_rows + (height - 1) * width, np.int64)
    segment_of[side(enter)] = np.arange(len(enter))
    following = segment_of[side(leave)].tolist()
    # Where each segment enters: the zero crossing on that side, linear between its corners.
    along = _ALONG_ROW[enter]
    row, col = rows + _SIDE_ROW[enter], cols + _SIDE_COL[enter]
    flat = values.ravel()
    first = flat[row * width + col]
    second = flat[row * width + col + np.where(along, 1, width)]
    share = -first / (second - first)
    ring_rows, ring_cols = np.where(along, row, row + share), np.where(along, col + share, col)
    # The top-most crossing lies on the outer ring (every hole lies inside it).
    start = int(np.argmin(ring_rows))
    order, at = [start], following[start]
    while at != start:
        order.append(at)
        at = following[at]
    order.append(start)
    return ring_rows[order], ring_cols[order]


def piece_outline(field: np.ndarray, piece: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> Polygon | None:
    """The outer zero crossing of `field` around `piece`, in platform coordinates.

    `field` (rows, cols) is sampled at pixel centres; its pixel (0, 0) is the square
    whose top-left corner is platform point `offset` = (x0, y0). `piece` is one
    4-connected piece of `field > 0`; other positive pixels are ignored and the piece's
    holes are filled (only the outer ring is kept). Where the piece reaches the field's
    edge, the outline is cut along that edge.
    """
    rows, cols = np.flatnonzero(piece.any(axis=1)), np.flatnonzero(piece.any(axis=0))
    if rows.size == 0:
        return None
    height, width = field.shape
    touched = rows[0] == 0 or cols[0] == 0 or rows[-1] == height - 1 or cols[-1] == width - 1
    # One pixel of context around the piece, where the field has it.
    row0, row1 = max(rows[0] - 1, 0), min(rows[-1] + 2, height)
    col0, col1 = max(cols[0] - 1, 0), min(cols[-1] + 2, width)
    crop = field[row0:row1, col0:col1]
    inside = piece[row0:row1, col0:col1]
    piece_values = np.where(inside, crop, np.minimum(crop, -1e-6)).astype(np.float64, copy=False)
    if touched:
        # Beyond the field's edge: the edge values once more, then far outside, so the outline
        # closes outside the field and clipping to the field's rectangle cuts it on the edge.
        values = np.full((row1 - row0 + 4, col1 - col0 + 4), _OUTSIDE)
        core = values[2:-2, 2:-2]
        core[...] = piece_values
        values[1, 2:-2], values[-2, 2:-2] = core[0], core[-1]
        values[1:-1, 1], values[1:-1, -2] = values[1:-1, 2], values[1:-1, -3]
        pad = 2
    else:  # the context pixels all round are below zero: the outline closes within them
        values, pad = piece_values, 0
    ring_rows, ring_cols = outer_ring(values)
    # Crop index -> field index (crop start - padding) -> platform point at the pixel centre (+0.5).
    x = ring_cols + (col0 - pad + 0.5 + offset[0])
    y = ring_rows + (row0 - pad + 0.5 + offset[1])
    polygon: BaseGeometry = Polygon(np.column_stack([x, y]))
    if not polygon.is_valid:
        polygon = shapely.make_valid(polygon)
    if touched:
        polygon = polygon.intersection(box(offset[0], offset[1], offset[0] + width, offset[1] + height))
    return largest_polygon(polygon)


def largest_polygon(geometry: BaseGeometry) -> Polygon | None:
    """The largest polygon of `geometry`, outer ring only; None if there is none."""
    if isinstance(geometry, Polygon) and not geometry.interiors:
        return geometry if not geometry.is_empty and geometry.area > 0 else None
    if geometry.is_empty:
        return None
    candidates = [g for g in shapely.get_parts(geometry) if isinstance(g, Polygon) and not g.is_empty]
    candidates += [p for g in shapely.get_parts(geometry) if isinstance(g, MultiPolygon) for p in g.geoms]
    if not candidates:
        return None
    biggest = max(candidates, key=lambda p: p.area)
    return Polygon(biggest.exterior) if biggest.area > 0 else None


def simplify_keeping_area(polygon: Polygon, tolerance: float) -> Polygon | None:
    """Douglas-Peucker with `tolerance` (pixels), then an offset of the simplified outline
    (mitred, so no vertices are added) by the distance that restores `polygon`'s area.

    Douglas-Peucker keeps vertices on the outline and cuts across every bulge, so on its
    own it shrinks convex cells; the offset removes that bias.
    """
    # Plain Douglas-Peucker first (several times faster); the topology-keeping variant only
    # where that crossed itself.
    simple = polygon.simplify(tolerance, preserve_topology=False)
    if not isinstance(simple, Polygon) or simple.is_empty or not simple.is_valid:
        simple = polygon.simplify(tolerance, preserve_topology=True)
    simple = largest_polygon(simple)
    if simple is None:
        return None
    corrected = _mitre_offset_to_area(simple, polygon.area)
    return corrected if corrected is not None else _buffered_to_area(simple, polygon.area)


def _mitre_offset_to_area(polygon: Polygon, target: float) -> Polygon | None:
    """`polygon` offset along its normals, each vertex moved along its corner's bisector
    (a mitre join), by the one distance that gives it area `target`; None where a corner is
    sharper than MITRE_LIMIT allows or the result is not a valid polygon.

    The offset vertices are v + d m (m the mitre vector of each corner), so the signed area
    is exactly quadratic in d: a0 + a1 d + a2 d^2, and d is its root nearest 0.
    """
    points = shapely.get_coordinates(polygon.exterior)[:-1]
    if len(points) < 3:
        return None
    following = np.concatenate((points[1:], points[:1]))
    edges = following - points
    x, y, x_next, y_next = points[:, 0], points[:, 1], following[:, 0], following[:, 1]
    signed = 0.5 * float((x * y_next - x_next * y).sum())
    orientation = 1.0 if signed > 0 else -1.0  # counter-clockwise in x right, y up terms
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    if not np.all(lengths > 0):
        return None
    normals = np.column_stack((edges[:, 1], -edges[:, 0])) * (orientation / lengths)[:, None]  # outward
    before = np.concatenate((normals[-1:], normals[:-1]))  # of the edge ending at each vertex
    cosine = (before * normals).sum(axis=1)
    if np.any(cosine <= 2 / MITRE_LIMIT**2 - 1):  # |m| = sqrt(2 / (1 + cos)) > MITRE_LIMIT
        return None
    mitres = (before + normals) / (1 + cosine)[:, None]
    mx, my = mitres[:, 0], mitres[:, 1]
    mx_next, my_next = np.concatenate((mx[1:], mx[:1])), np.concatenate((my[1:], my[:1]))
    a0 = orientation * signed
    a1 = orientation * 0.5 * float((x * my_next + mx * y_next - x_next * my - mx_next * y).sum())
    a2 = orientation * 0.5 * float((mx * my_next - mx_next * my).sum())
    deficit = target - a0
    if abs(a2) < 1e-12:
        distance = deficit / a1
    else:
        discriminant = a1 * a1 + 4 * a2 * deficit
        if discriminant < 0:
            return None
        distance = (-a1 + np.sign(a1) * np.sqrt(discriminant)) / (2 * a2)
    offset = Polygon(points + distance * mitres)
    return offset if offset.is_valid and offset.area > 0 else None


def _buffered_to_area(simple: Polygon, target: float) -> Polygon:
    """`_mitre_offset_to_area` by Newton steps on shapely's mitred buffer, for outlines with
    corners too sharp for a plain mitre."""
    corrected = simple
    distance = 0.0
    for _ in range(_AREA_STEPS):
        deficit = target - corrected.area
        if abs(deficit) <= 1e-9 * target:
            break
        distance += deficit / corrected.length  # d(area)/d(offset) is the perimeter
        corrected = largest_polygon(simple.buffer(distance, join_style="mitre", mitre_limit=MITRE_LIMIT)) or simple
    return corrected


def finish_outline(polygon: Polygon, smoothing: float, padding: float) -> Polygon | None:
    """Padding (a true offset with round joins, pixels) then smoothing (a band `smoothing`
    pixels wide about the outline, see the module)."""
    result: Polygon | None = polygon
    if padding:
        result = largest_polygon(polygon.buffer(padding, quad_segs=_PADDING_QUAD_SEGMENTS, join_style="round"))
    if result is None:
        return None
    # Vertices on straight runs carry nothing, so they go even at smoothing 0.
    result = simplify_keeping_area(result, smoothing / 2) if smoothing > 0 else largest_polygon(result.simplify(0))
    if result is None or result.area <= 0:
        return None
    return result


def field_to_polygon(
    field: np.ndarray, smoothing: float, padding: float, offset: tuple[float, float] = (0.0, 0.0)
) -> Polygon | None:
    """The outline of the largest piece of `field > 0` (see `piece_outline`), padded and
    smoothed; None when nothing valid remains."""
    piece = largest_piece(field > 0)
    if piece is None:
        return None
    outline = piece_outline(field, piece, offset)
    return None if outline is None else finish_outline(outline, smoothing, padding)


def mask_to_polygon(
    mask: np.ndarray, smoothing: float, padding: float, offset: tuple[float, float] = (0.0, 0.0)
) -> Polygon | None:
    """The outline of the largest piece of a binary mask, in platform coordinates.

    The same rules as for logits, applied to the field +0.5 inside, -0.5 outside: the
    outline runs along the pixel edges with convex corners cut by 0.5-pixel diagonals
    (area = pixel count - 0.5 for a hole-free piece); what is left of the staircase is a
    zigzag about 0.7 px wide, which smoothing of 1.5 removes. `mask` is a 2-D bool array whose
    pixel (0, 0) lies at platform point `offset` = (x0, y0). Returns None when nothing
    valid remains.
    """
    field = np.where(np.asarray(mask, dtype=bool), 0.5, -0.5)
    return field_to_polygon(field, smoothing, padding, offset)


def clip_to_image(polygon: Polygon, width: int, height: int) -> Polygon | None:
    """The largest part of `polygon` inside the image [0, width] x [0, height]."""
    x0, y0, x1, y1 = polygon.bounds
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return largest_polygon(polygon)
    return largest_polygon(polygon.intersection(box(0, 0, width, height)))


def polygon_to_coordinates(polygon: Polygon) -> list[dict[str, float]]:
    """Platform coordinates of the outline, open (the first point is not repeated)."""
    return [{"x": x, "y": y} for x, y in shapely.get_coordinates(polygon.exterior)[:-1].tolist()]


def coordinates_to_points(coordinates: list[dict] | np.ndarray) -> np.ndarray:
    """(N, 2) array of (x, y) from platform coordinates (or such an array already read);
    non-finite points are dropped."""
    if isinstance(coordinates, np.ndarray):
        points = coordinates.reshape(-1, 2).astype(np.float64, copy=False)
        finite = np.isfinite(points).all(axis=1)
        return points if finite.all() else points[finite]
    try:  # well-formed coordinates, the platform's: one pass
        points = np.array([(c["x"], c["y"]) for c in coordinates], dtype=np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError, IndexError):
        points = np.array(
            [(float(c.get("x", np.nan)), float(c.get("y", np.nan))) for c in coordinates if isinstance(c, dict)],
            dtype=np.float64,
        ).reshape(-1, 2)
    finite = np.isfinite(points).all(axis=1)
    return points if finite.all() else points[finite]
