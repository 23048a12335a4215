"""How refined outlines of touching cells meet: overlaps, and fidelity near the contacts.

    .venv/bin/python -m tests.measure_contacts                # every setting, seeds 0-5
    .venv/bin/python -m tests.measure_contacts --seeds 2      # fewer scenes
    .venv/bin/python -m tests.measure_contacts --doubled      # cells boxed twice, against boxed once

Dense fields of touching cells (tests/touching_cells.py: 1024² frames of ~60 cells
8-150 px across, ~50 touching pairs each, contacts 1-100 px long), each boxed 0-15 %
loose, a few boxed twice, refined by the engine itself (Auto) with the stand-in answering
on SAM2's 256 x 256 grid: masks that bleed 0-3 px into each touching neighbour, or
perfect ones. Per setting:

- touching pairs whose written outlines, both accepted, overlap by more than 0.5 px²;
- overlap (px²) per px of contact over those pairs, and the worst pair;
- near the contacts (within 3 px of one): the 90th percentile of the distances from the
  outline to the true boundary and back, per cell; the median over the touching cells
  (with Padding p the true boundary is the cell grown by p into the space no true cell holds);
- whole-cell IoU of the touching cells (median, min), against the same truth;
- touching cells left without an accepted refinement (doubtful or missing);
- cells boxed twice: accepted outlines per cell and the IoU of the accepted one;
- isolated cells (none within 5 px): IoU median;
- touching cells' accepted polygons: vertices per px of outline (median);
- CPU per object (in line, the stand-in's answers included).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, fields

import numpy as np
import shapely
from shapely.geometry import Polygon

from sam2_refine.engine import RefineSettings
from sam2_refine.interface import RESOLUTION_AUTO
from sam2_refine.outcome import Outcome
from sam2_refine.originals import prompt_coordinates
from sam2_refine.pipeline import refine_frame
from tests.touching_cells import Region, TouchingOracle, TouchingSet, positive_region, touching_set

NEAR_CONTACT = 3.0  # pixels
MAX_OVERLAP = 0.5  # px²: a touching pair overlapping by more counts as overlapping
SAMPLE_STEP = 0.1  # pixels between points sampled along an outline
SEEDS = range(0, 6)


def refine(touching: TouchingSet, smoothing: float, padding: float, **options) -> tuple[list[Outcome], float]:
    """The engine's reviewed outcomes for each prompt, and the CPU seconds they took."""
    oracle = TouchingOracle(touching)
    blank = np.zeros((8, 8, 3), np.float32)
    coordinates = [prompt_coordinates({"shape": p.shape, "coordinates": p.coordinates}) for p in touching.prompts]
    settings = RefineSettings(smoothing=smoothing, padding=padding, resolution=RESOLUTION_AUTO, **options)
    start = time.process_time()
    outcomes = refine_frame(oracle, lambda window: blank, touching.frame_size, coordinates, settings)
    return outcomes, time.process_time() - start


def ideal(touching: TouchingSet, index: int, padding: float) -> Polygon:
    """What cell `index`'s outline should be: the true outline, grown by `padding` into the
    space no true cell holds (where two grown cells meet, split by the nearer cell)."""
    truth = touching.scene.truths[index]
    if padding <= 0:
        return truth
    grown = truth.buffer(padding, quad_segs=32)
    others = [t for j, t in enumerate(touching.scene.truths) if j != index and t.distance(truth) < 2 * padding + 1]
    for other in others:
        grown = grown.difference(other)
        shared = grown.intersection(other.buffer(padding, quad_segs=32))
        if shared.area > 0:
            # Keep the part nearer this cell: where the difference of distances is > 0.
            x0, y0, x1, y1 = shared.bounds
            x0, y0, step = x0 - 0.5, y0 - 0.5, 0.1
            xs, ys = np.meshgrid(np.arange(x0, x1 + 0.5 + step, step), np.arange(y0, y1 + 0.5 + step, step))
            nearer = positive_region(np.maximum(-Region(other).field(xs, ys), 0)
                                     - np.maximum(-Region(truth).field(xs, ys), 0), x0, y0, step)
            grown = grown.difference(shared.difference(nearer))
    parts = [g for g in shapely.get_parts(grown) if isinstance(g, Polygon)]
    return max(parts, key=lambda p: p.area)


def _points_along(ring) -> np.ndarray:
    count = max(int(ring.length / SAMPLE_STEP), 64)
    return shapely.line_interpolate_point(ring, np.linspace(0, ring.length, count, endpoint=False))


def near_contact_p90(refined: Polygon, reference: Polygon, zone) -> float | None:
    """The 90th percentile of the distances, within `zone`, from points along the refined
    outline to the reference outline and from points along the reference to the refined."""
    own = _points_along(refined.exterior)
    own = own[shapely.contains(zone, own)]
    true = _points_along(reference.exterior)
    true = true[shapely.contains(zone, true)]
    distances = np.concatenate([shapely.distance(own, reference.exterior), shapely.distance(true, refined.exterior)])
    return float(np.percentile(distances, 90)) if len(distances) else None


def iou(a: Polygon, b: Polygon) -> float:
    return a.intersection(b).area / a.union(b).area


@dataclass
class Figures:
    pairs: int = 0  # touching pairs, both outlines accepted
    overlapping: int = 0  # of those, overlapping by more than MAX_OVERLAP
    overlap_area: float = 0.0
    contact_length: float = 0.0
    worst: tuple[float, float] = (0.0, 0.0)  # (overlap px², contact px) of the worst pair
    near_p90: list = None
    ious: list = None
    touching_cells: int = 0
    doubted: int = 0
    doubled: int = 0
    doubled_one_accepted: int = 0
    doubled_ious: list = None
    isolated_ious: list = None
    vertices: list = None  # touching cells' accepted polygons: vertices per px of outline
    cpu: float = 0.0
    prompts: int = 0

    def __post_init__(self):
        for name in ("near_p90", "ious", "doubled_ious", "isolated_ious", "vertices"):
            if getattr(self, name) is None:
                setattr(self, name, [])

    def add(self, other: "Figures") -> None:
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "worst":
                self.worst = max(mine, theirs)
            else:
                setattr(self, f.name, mine + theirs)


def measure(touching: TouchingSet, outcomes: list[Outcome], padding: float, ideals: dict | None = None) -> Figures:
    """The figures of one scene's outcomes; `ideals` caches `ideal` per cell (for this scene and padding)."""
    scene = touching.scene
    ideals = {} if ideals is None else ideals

    def reference(cell: int) -> Polygon:
        if cell not in ideals:
            ideals[cell] = ideal(touching, cell, padding)
        return ideals[cell]

    figures = Figures()
    by_cell: dict[int, list[Outcome]] = {}
    for prompt, outcome in zip(touching.prompts, outcomes):
        by_cell.setdefault(prompt.cell, []).append(outcome)
    accepted = {cell: next((o.polygon for o in found if o.accepted), None) for cell, found in by_cell.items()}
    for (i, j), contact in scene.contacts.items():
        a, b = accepted.get(i), accepted.get(j)
        if a is None or b is None:
            continue
        overlap = a.intersection(b).area
        figures.pairs += 1
        figures.overlapping += overlap > MAX_OVERLAP
        figures.overlap_area += overlap
        figures.contact_length += contact.length
        figures.worst = max(figures.worst, (overlap, contact.length))
    touching_cells = sorted({k for pair in scene.contacts for k in pair})
    for cell in touching_cells:
        polygon = accepted.get(cell)
        figures.touching_cells += 1
        figures.doubted += polygon is None
        if polygon is None:
            continue
        zone = shapely.union_all([scene.contacts[tuple(sorted((cell, j)))] for j in scene.neighbours(cell)]).buffer(
            NEAR_CONTACT + max(padding, 0.0))
        p90 = near_contact_p90(polygon, reference(cell), zone)
        if p90 is not None:
            figures.near_p90.append(p90)
        figures.ious.append(iou(polygon, reference(cell)))
        figures.vertices.append((len(polygon.exterior.coords) - 1) / polygon.exterior.length)
    for cell, found in by_cell.items():
        if len(found) > 1:
            figures.doubled += 1
            kept = [o.polygon for o in found if o.accepted]
            figures.doubled_one_accepted += len(kept) == 1
            figures.doubled_ious += [iou(p, reference(cell)) for p in kept]
    for cell in scene.isolated():
        if accepted.get(cell) is not None:
            figures.isolated_ious.append(iou(accepted[cell], reference(cell)))
    figures.prompts = len(outcomes)
    return figures


SETTINGS = (
    ("bleeding masks, defaults", False, 0.7, 0.0),
    ("bleeding masks, Padding 2", False, 0.7, 2.0),
    ("perfect masks, defaults", True, 0.7, 0.0),
    ("perfect masks, Padding 2", True, 0.7, 2.0),
)


def row(name: str, f: Figures) -> str:
    per_contact = f.overlap_area / f.contact_length if f.contact_length else 0.0
    near = f"{np.median(f.near_p90):.2f} px" if f.near_p90 else "–"
    ious = f"{np.median(f.ious):.3f} ({min(f.ious):.3f})" if f.ious else "–"
    doubled = f"{f.doubled_one_accepted} of {f.doubled}, IoU min {min(f.doubled_ious):.3f}" if f.doubled_ious else "–"
    isolated = f"{np.median(f.isolated_ious):.3f}" if f.isolated_ious else "–"
    vertices = f"{np.median(f.vertices):.2f}" if f.vertices else "–"
    return (f"| {name} | {f.overlapping} of {f.pairs} | {per_contact:.3f} ({f.worst[0]:.1f} px² over {f.worst[1]:.0f} px) "
            f"| {near} | {ious} | {f.doubted} of {f.touching_cells} | {doubled} | {isolated} | {vertices} "
            f"| {1000 * f.cpu / max(f.prompts, 1):.1f} |")


HEADER = ("| setting | touching pairs overlapping > 0.5 px² (both accepted) | overlap px² per px of contact "
          "(worst pair) | near contacts: 90th-pct distance, median over cells | whole-cell IoU median (min) "
          "| touching cells doubted | cells boxed twice: one accepted, IoU | isolated cells IoU median "
          "| touching cells' vertices per px of outline, median | CPU ms per object |\n|---|---|---|---|---|---|---|---|---|---|")


def doubled(seeds: int) -> None:
    """Each cell boxed twice (bleeding masks, defaults): the IoU of its accepted outline,
    and of the same cell's accepted outline when it is boxed once (its second box left out:
    the windows SAM2 sees may then lie a little differently), and with overlaps allowed."""
    from tests.touching_cells import TouchingSet

    print("| seed | cell | px across | neighbours | IoU boxed twice | boxed once | boxed once, overlaps allowed |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(seeds):
        touching = touching_set(seed)
        twice, _ = refine(touching, 0.7, 0.0)
        keep = [k for k, prompt in enumerate(touching.prompts) if not prompt.second]
        once_set = TouchingSet(touching.scene, [touching.prompts[k] for k in keep], [touching.answers[k] for k in keep])
        once, _ = refine(once_set, 0.7, 0.0)
        allowed, _ = refine(once_set, 0.7, 0.0, keep_apart=False)
        for prompt in touching.prompts:
            if not prompt.second:
                continue
            cell, truth = prompt.cell, touching.scene.truths[prompt.cell]
            kept = [o.polygon for p, o in zip(touching.prompts, twice) if p.cell == cell and o.accepted]
            first = next(k for k, p in enumerate(once_set.prompts) if p.cell == cell)
            scores = [f"{iou(polygon, truth):.3f}" if polygon is not None else "–"
                      for polygon in (kept[0] if len(kept) == 1 else None, once[first].polygon, allowed[first].polygon)]
            print(f"| {seed} | {cell} | {2 * np.sqrt(truth.area / np.pi):.1f} | "
                  f"{len(touching.scene.neighbours(cell))} | " + " | ".join(scores) + " |", flush=True)


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="scenes per setting (seeds 0..N-1)")
    parser.add_argument("--only", help="settings whose name contains this text")
    parser.add_argument("--doubled", action="store_true", help="only the cells boxed twice, boxed once and twice")
    parser.add_argument("--allow-overlaps", action="store_true", help="outlines not kept apart (as before issue 25)")
    args = parser.parse_args(arguments)
    if args.doubled:
        doubled(args.seeds)
        return
    print(HEADER)
    ideals: dict[tuple[int, float], dict] = {}
    for name, perfect, smoothing, padding in SETTINGS:
        if args.only and args.only not in name:
            continue
        total = Figures()
        for seed in range(args.seeds):
            touching = touching_set(seed, perfect=perfect)
            outcomes, cpu = refine(touching, smoothing, padding, keep_apart=not args.allow_overlaps)
            figures = measure(touching, outcomes, padding, ideals.setdefault((seed, padding), {}))
            figures.cpu = cpu
            total.add(figures)
        print(row(name, total), flush=True)


if __name__ == "__main__":
    main()
