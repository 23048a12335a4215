"""What an original outlines, as drawn: a rectangle's box, a polygon's interior (repaired
if it crosses itself), one by one or many at once (the same polygons); and the part of an
outline inside the image, as the review judges it. Image pixels (x = column, y = row).
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from .geometry import coordinates_to_points

FrameSize = tuple[int, int]  # (width, height), image pixels


def original_outline(document: dict) -> Polygon | None:
    """The area an original outlines: a rectangle's box, a polygon's interior (repaired
    if it crosses itself); None when it outlines no area."""
    points = outline_points(document)
    if len(points) == 0:
        return None
    if document.get("shape") == "rectangle":
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        return box(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
    if len(points) < 3:
        return None
    outline = Polygon(points)
    if not outline.is_valid:
        outline = shapely.make_valid(outline)
        polygons = [g for g in getattr(outline, "geoms", [outline]) if isinstance(g, Polygon)]
        outline = max(polygons, key=lambda p: p.area) if polygons else None
    return outline if outline is not None and outline.area > 0 else None


def outline_points(document) -> np.ndarray:
    """An original's vertices, (n, 2) x, y, the non-finite dropped: a compact record's
    `points` as read, or the points of a document's coordinates."""
    points = getattr(document, "points", None)
    return coordinates_to_points(points if points is not None else document.get("coordinates") or [])


def original_outlines(documents: list, points: list[np.ndarray] | None = None) -> list[Polygon | None]:
    """`original_outline` of each document (`points`: their `outline_points`, if read
    already); the polygons made all at once (shapely's vectorized constructors, the same
    rings), each checked as `original_outline` does."""
    outlines: list[Polygon | None] = [None] * len(documents)
    if points is None:
        points = [outline_points(document) for document in documents]
    plain = [i for i, (document, found) in enumerate(zip(documents, points))
             if document.get("shape") != "rectangle" and len(found) >= 3]
    if plain:
        counts = [len(points[i]) for i in plain]
        rings = shapely.linearrings(np.concatenate([points[i] for i in plain]),
                                    indices=np.repeat(np.arange(len(plain)), counts))
        polygons = shapely.polygons(rings)
        valid, areas = shapely.is_valid(polygons), shapely.area(polygons)
        for k, i in enumerate(plain):
            outlines[i] = (polygons[k] if areas[k] > 0 else None) if valid[k] else original_outline(documents[i])
    done = set(plain)
    for i, document in enumerate(documents):
        if i not in done:
            outlines[i] = original_outline(document)
    return outlines


def _largest_polygon(shape) -> Polygon | None:
    parts = [shape] if isinstance(shape, Polygon) else [g for g in getattr(shape, "geoms", []) if isinstance(g, Polygon)]
    parts = [part for part in parts if not part.is_empty and part.area > 0]
    return max(parts, key=lambda part: part.area) if parts else None


def within_frame(outline: Polygon | None, frame_size: FrameSize | None) -> Polygon | None:
    """The part of an outline inside the image, as a refinement is clipped; None if none.
    Unchanged without a frame size."""
    if outline is None or frame_size is None:
        return outline
    width, height = frame_size
    x0, y0, x1, y1 = outline.bounds
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return outline
    return _largest_polygon(outline.intersection(box(0, 0, width, height)))


def _as_array(outlines: list[Polygon | None]) -> np.ndarray:
    array = np.empty(len(outlines), dtype=object)
    array[:] = outlines
    return array


def within_frame_all(outlines: list[Polygon | None], frame_size: FrameSize | None) -> list[Polygon | None]:
    """`within_frame` of each outline; those inside the image (most) told at once."""
    if frame_size is None or not outlines:
        return list(outlines)
    width, height = frame_size
    x0, y0, x1, y1 = shapely.bounds(_as_array(outlines)).T
    inside = (x0 >= 0) & (y0 >= 0) & (x1 <= width) & (y1 <= height)  # False for None (NaN bounds)
    return [outline if outline is None or inside[k] else within_frame(outline, frame_size)
            for k, outline in enumerate(outlines)]
