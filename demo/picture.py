"""demo-output/before_after.png: the rough originals, what the job decided for each, a legend,
the counts, and a zoomed inset where a sub-pixel outline can be seen against its pixels."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from demo.decisions import ACCEPTED, DOUBTFUL, SKIPPED, Decision, Outline, counts

PANEL_SCALE = 2  # screen pixels per image pixel in the two big panels
INSET_SIDE = 120  # image pixels
INSET_ZOOM = 5
GAP = 14
TITLE_HEIGHT = 96
CAPTION_HEIGHT = 34

ORIGINAL_COLOUR = (235, 235, 235)
ACCEPTED_COLOUR = (255, 221, 0)
DOUBTFUL_COLOUR = (0, 200, 255)
SKIPPED_COLOUR = (255, 45, 45)
WARNING_BACKGROUND = (190, 0, 0)
NOTICE_BACKGROUND = (150, 95, 0)
PAPER = (255, 255, 255)
INK = (20, 20, 20)

Point = tuple[float, float]


@dataclass(frozen=True)
class Caption:
    title: str  # the counts
    settings: str  # model and job settings
    warning: str | None = None  # random-init weights: why, shown in red
    notice: str | None = None  # another predictor than SAM2


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def scaled(points: Outline, scale: float, origin: Point = (0.0, 0.0)) -> list[Point]:
    """Image coordinates (pixel (i, j) covers [j, j + 1] x [i, i + 1]) to screen pixels."""
    return [((x - origin[0]) * scale, (y - origin[1]) * scale) for x, y in points]


def solid(pen: ImageDraw.ImageDraw, points: list[Point], colour, width: int) -> None:
    pen.line(points + points[:1], fill=colour, width=width, joint="curve")


def dashed(pen: ImageDraw.ImageDraw, points: list[Point], colour, width: int, dash: float, gap: float) -> None:
    """A closed outline drawn as dashes of `dash` screen pixels with `gap` between them."""
    period = dash + gap
    travelled = 0.0
    for start, end in zip(points, points[1:] + points[:1]):
        length = float(np.hypot(end[0] - start[0], end[1] - start[1]))
        position = 0.0
        while position < length:
            phase = (travelled + position) % period
            run = (dash - phase) if phase < dash else (period - phase)
            step = min(run, length - position)
            if phase < dash:
                a, b = position / length, (position + step) / length
                pen.line([(start[0] + a * (end[0] - start[0]), start[1] + a * (end[1] - start[1])),
                          (start[0] + b * (end[0] - start[0]), start[1] + b * (end[1] - start[1]))],
                         fill=colour, width=width)
            position += step
        travelled += length


def cross(pen: ImageDraw.ImageDraw, centre: Point, half: float, colour, width: int) -> None:
    x, y = centre
    pen.line([(x - half, y - half), (x + half, y + half)], fill=colour, width=width)
    pen.line([(x - half, y + half), (x + half, y - half)], fill=colour, width=width)


def centroid(points: list[Point]) -> Point:
    return float(np.mean([p[0] for p in points])), float(np.mean([p[1] for p in points]))


def draw_decision(pen: ImageDraw.ImageDraw, decision: Decision, scale: float, origin: Point, label: bool) -> None:
    """One original's outcome; lines a little heavier when zoomed, still thin beside a pixel."""
    thin, thick = (1, 2) if scale < 4 else (2, 3)
    original = scaled(decision.original, scale, origin)
    if decision.outcome == SKIPPED:
        solid(pen, original, SKIPPED_COLOUR, thick + 1)
        centre = centroid(original)
        cross(pen, centre, 3 * scale, SKIPPED_COLOUR, thick)
        if label:
            text = f"skipped: {decision.skip_reason}"
            top = min(p[1] for p in original)
            box = pen.textbbox((centre[0], top - 4), text, font=font(15), anchor="mb")
            pen.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=(0, 0, 0))
            pen.text((centre[0], top - 4), text, fill=SKIPPED_COLOUR, font=font(15), anchor="mb")
        return
    if decision.original_kept:
        solid(pen, original, ORIGINAL_COLOUR, thin)
    refined = scaled(decision.refined or [], scale, origin)
    if decision.outcome == ACCEPTED:
        solid(pen, refined, ACCEPTED_COLOUR, thick)
    else:
        dashed(pen, refined, DOUBTFUL_COLOUR, thick, dash=5 * thick, gap=3 * thick)


def panel(base: Image.Image) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = base.resize((base.width * PANEL_SCALE, base.height * PANEL_SCALE), Image.NEAREST)
    return image, ImageDraw.Draw(image)


def heading(pen: ImageDraw.ImageDraw, text: str) -> None:
    box = pen.textbbox((10, 8), text, font=font(22))
    pen.rectangle([box[0] - 6, box[1] - 4, box[2] + 6, box[3] + 4], fill=(0, 0, 0))
    pen.text((10, 8), text, fill=PAPER, font=font(22))


def inset_origin(decisions: Sequence[Decision], width: int, height: int) -> tuple[int, int]:
    """The top-left corner of an INSET_SIDE square holding a few originals whole, preferring
    one that shows more kinds of outcome."""
    boxes = np.array([(min(x for x, _ in d.original), min(y for _, y in d.original),
                       max(x for x, _ in d.original), max(y for _, y in d.original)) for d in decisions])
    outcomes = np.array([d.outcome for d in decisions])
    best, best_score = (0, 0), (-1, -1, -1)
    for left in range(0, width - INSET_SIDE + 1, 8):
        for top in range(0, height - INSET_SIDE + 1, 8):
            inside = ((boxes[:, 0] >= left) & (boxes[:, 1] >= top)
                      & (boxes[:, 2] <= left + INSET_SIDE) & (boxes[:, 3] <= top + INSET_SIDE))
            count = int(inside.sum())
            score = (min(count, 3), len(set(outcomes[inside])), count)
            if score > best_score:
                best, best_score = (left, top), score
    return best


def inset(base: Image.Image, decisions: Sequence[Decision], origin: tuple[int, int]) -> Image.Image:
    left, top = origin
    crop = base.crop((left, top, left + INSET_SIDE, top + INSET_SIDE))
    image = crop.resize((INSET_SIDE * INSET_ZOOM, INSET_SIDE * INSET_ZOOM), Image.NEAREST)
    pen = ImageDraw.Draw(image)
    for decision in decisions:
        draw_decision(pen, decision, INSET_ZOOM, (float(left), float(top)), label=False)
    return image


def legend(width: int, delete_originals: bool) -> Image.Image:
    accepted = ("refined outline; replaced its original (Delete on)" if delete_originals
                else "refined outline, saved next to its original")
    entries = [
        ("original", "rough original as drawn (on the right: kept on the server)"),
        (ACCEPTED, f"accepted: {accepted}"),
        (DOUBTFUL, "doubtful: refined outline tagged 'SAM2 review', original kept"),
        (SKIPPED, "skipped: no refined outline, original kept; the reason beside it"),
    ]
    row = 44
    image = Image.new("RGB", (width, 40 + row * len(entries)), (40, 40, 40))
    pen = ImageDraw.Draw(image)
    pen.text((12, 8), "Legend", fill=PAPER, font=font(20))
    for index, (kind, text) in enumerate(entries):
        y = 40 + index * row + row / 2
        sample = [(16.0, y - 12), (76.0, y - 12), (76.0, y + 12), (16.0, y + 12)]
        if kind == "original":
            solid(pen, sample, ORIGINAL_COLOUR, 1)
        elif kind == ACCEPTED:
            solid(pen, sample, ACCEPTED_COLOUR, 3)
        elif kind == DOUBTFUL:
            dashed(pen, sample, DOUBTFUL_COLOUR, 3, dash=10, gap=6)
        else:
            solid(pen, sample, SKIPPED_COLOUR, 4)
            cross(pen, (46.0, y), 7, SKIPPED_COLOUR, 3)
        lines = textwrap.wrap(text, 52)
        for line_index, line in enumerate(lines):
            line_y = y + 19 * (line_index - (len(lines) - 1) / 2)
            pen.text((92, line_y), line, fill=PAPER, font=font(16), anchor="lm")
    return image


def banner(text: str, width: int, background, size: int) -> Image.Image:
    characters = max(20, int(width / (font(size).getlength("n") or 1)))
    lines = textwrap.wrap(text, characters)
    image = Image.new("RGB", (width, 12 + len(lines) * (size + 8)), background)
    pen = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        pen.text((14, 6 + index * (size + 8)), line, fill=PAPER, font=font(size))
    return image


def draw_decisions(
    rgb: np.ndarray, decisions: Sequence[Decision], caption: Caption, delete_originals: bool, path: Path
) -> None:
    """Write the picture to `path`; `rgb` is the (H, W, 3) uint8 image the outlines lie on."""
    base = Image.fromarray(rgb)
    before, before_pen = panel(base)
    for decision in decisions:
        solid(before_pen, scaled(decision.original, PANEL_SCALE), ORIGINAL_COLOUR, 2)
    heading(before_pen, f"Before: {len(decisions)} rough outlines (input)")
    after, after_pen = panel(base)
    for decision in decisions:
        draw_decision(after_pen, decision, PANEL_SCALE, (0.0, 0.0), label=True)
    heading(after_pen, "After: what the job saved, by outcome")
    origin = inset_origin(decisions, base.width, base.height)
    zoomed = inset(base, decisions, origin)
    frame = [origin[0] * PANEL_SCALE, origin[1] * PANEL_SCALE,
             (origin[0] + INSET_SIDE) * PANEL_SCALE, (origin[1] + INSET_SIDE) * PANEL_SCALE]
    after_pen.rectangle(frame, outline=PAPER, width=2)
    after_pen.text((frame[0] + 5, frame[1] + 3), "inset", fill=PAPER, font=font(16))
    if caption.warning:
        strip = banner("RANDOM-INIT WEIGHTS: these outlines are meaningless", after.width, WARNING_BACKGROUND, 26)
        after.paste(strip, (0, after.height - strip.height))

    side = zoomed.width
    key = legend(side, delete_originals)
    width = before.width + after.width + side + 4 * GAP
    bands = [banner(f"WARNING: {caption.warning}", width - 2 * GAP, WARNING_BACKGROUND, 22)] if caption.warning else []
    if caption.notice:
        bands.append(banner(caption.notice, width - 2 * GAP, NOTICE_BACKGROUND, 22))
    top = TITLE_HEIGHT + sum(band.height + 6 for band in bands)
    height = top + max(before.height, side + CAPTION_HEIGHT + GAP + key.height) + GAP
    canvas = Image.new("RGB", (width, height), PAPER)
    pen = ImageDraw.Draw(canvas)
    pen.text((GAP, 12), caption.title, fill=INK, font=font(32))
    pen.text((GAP, 58), caption.settings, fill=INK, font=font(20))
    y = TITLE_HEIGHT
    for band in bands:
        canvas.paste(band, (GAP, y))
        y += band.height + 6
    canvas.paste(before, (GAP, top))
    canvas.paste(after, (2 * GAP + before.width, top))
    column = 3 * GAP + before.width + after.width
    pen.text((column, top), f"Inset: {INSET_SIDE} x {INSET_SIDE} image pixels at {INSET_ZOOM}x",
             fill=INK, font=font(20))
    canvas.paste(zoomed, (column, top + CAPTION_HEIGHT))
    canvas.paste(key, (column, top + CAPTION_HEIGHT + side + GAP))
    canvas.save(path)


def title(decisions: Sequence[Decision]) -> str:
    tally = counts(list(decisions))
    return (f"SAM2 Refiner: {len(decisions)} rough outlines -> {tally[ACCEPTED]} accepted, "
            f"{tally[DOUBTFUL]} doubtful, {tally[SKIPPED]} skipped")
