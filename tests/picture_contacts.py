"""A before/after picture of touching cells, with the overlaps shown.

    .venv/bin/python -m tests.picture_contacts [docs/touching_cells.png]

One dense field of touching cells (tests/touching_cells.py, seed 3) refined by the engine
with the stand-in whose masks bleed 0-3 px into each touching neighbour: left, with
overlaps allowed (what every refinement did before issue 25); right, kept apart (the
default). Top row the defaults, bottom row Padding 2. The true outlines are thin black
lines, each refined outline a coloured line, and where two refined outlines overlap the
area is filled red; each panel says how much overlaps in all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry import Polygon, box

from tests.measure_contacts import refine
from tests.touching_cells import touching_set

SEED = 3
CROP = (736.0, 540.0, 896.0, 668.0)  # x0, y0, x1, y1: image pixels
SCALE = 4  # screen pixels per image pixel
CAPTION = 40
GAP = 10
PALETTE = [(31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207), (140, 86, 75),
           (188, 189, 34), (227, 119, 194)]
OVERLAP = (230, 20, 20)


def _screen(coordinates: np.ndarray) -> list[tuple[float, float]]:
    x0, y0 = CROP[0], CROP[1]
    return [((x - x0) * SCALE, (y - y0) * SCALE) for x, y in coordinates]


def panel(truths: list[Polygon], polygons: list[Polygon], title: str) -> Image.Image:
    width, height = int((CROP[2] - CROP[0]) * SCALE), int((CROP[3] - CROP[1]) * SCALE)
    image = Image.new("RGB", (width, height + CAPTION), "white")
    pen = ImageDraw.Draw(image)
    frame = box(*CROP)
    overlap_area = 0.0
    for i, a in enumerate(polygons):
        for b in polygons[i + 1:]:
            shared = a.intersection(b).intersection(frame)
            overlap_area += shared.area
            for part in shapely.get_parts(shared):
                if isinstance(part, Polygon) and part.area > 0:
                    pen.polygon(_screen(np.asarray(part.exterior.coords)), fill=OVERLAP)
    for truth in truths:
        if truth.intersects(frame):
            pen.line(_screen(np.asarray(truth.exterior.coords)), fill=(0, 0, 0), width=1)
    for k, polygon in enumerate(polygons):
        if polygon.intersects(frame):
            pen.line(_screen(np.asarray(polygon.exterior.coords)), fill=PALETTE[k % len(PALETTE)], width=2)
    pen.rectangle((0, height, width, height + CAPTION), fill="white")
    font = ImageFont.load_default(size=15)
    pen.text((6, height + 3), title, fill=(20, 20, 20), font=font)
    pen.text((6, height + 21), f"overlapping: {overlap_area:.0f} square px", fill=OVERLAP if overlap_area > 0.5 else (20, 20, 20),
             font=font)
    return image


def picture() -> Image.Image:
    touching = touching_set(SEED)
    truths = touching.scene.truths
    panels = []
    for padding in (0.0, 2.0):
        row = []
        for keep_apart, name in ((False, "before: each outline on its own"), (True, "after: kept apart")):
            outcomes, _ = refine(touching, 0.7, padding, keep_apart=keep_apart)
            polygons = [o.polygon for o, p in zip(outcomes, touching.prompts) if o.polygon is not None and not p.second]
            setting = "defaults" if padding == 0 else f"Padding {padding:g}"
            row.append(panel(truths, polygons, f"{name} ({setting})"))
        panels.append(row)
    width, height = panels[0][0].size
    sheet = Image.new("RGB", (2 * width + GAP, 2 * height + GAP), (200, 200, 200))
    for r, row in enumerate(panels):
        for c, image in enumerate(row):
            sheet.paste(image, (c * (width + GAP), r * (height + GAP)))
    return sheet


def main(arguments: list[str]) -> None:
    path = Path(arguments[0] if arguments else "docs/touching_cells.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    picture().save(path, optimize=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
