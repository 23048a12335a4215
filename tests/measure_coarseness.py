"""How well a perfect mask survives SAM2's resolution, by how many mask pixels it spans.

    .venv/bin/python -m tests.measure_coarseness

Whole frame on a 2048² frame (8 image pixels per low-resolution mask pixel): lumpy cells
of each diameter, rough outlines drawn 15 % of the diameter outside them, answered by the
oracle with each cell's true field sampled on SAM2's 256 x 256 grid. Prints the IoU of the
refined outline with the true one against the span of the box (engine.coarseness) and the
reasons given; review.COARSE_SPAN and SIZE_BLUR_SPAN quote it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from shapely.geometry import Polygon

from sam2_refine.engine import RefineSettings, coarseness, prompt_box
from sam2_refine.pipeline import refine_frame
from sam2_refine.interface import RESOLUTION_WHOLE_FRAME
from sam2_refine.seam import Window
from tests.oracle import OraclePredictor, Star

SIDE = 2048
DIAMETERS = (8, 12, 16, 20, 24, 28, 32, 40, 48, 64)


def black(window: Window) -> np.ndarray:
    return np.zeros((min(window.height, 1024), min(window.width, 1024), 3), np.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    for diameter in DIAMETERS:
        shapes = [Star(float(rng.uniform(100, SIDE - 100)), float(rng.uniform(100, SIDE - 100)), diameter / 2,
                       tuple(rng.uniform(0, 0.08, 3)), tuple(rng.uniform(0, 2 * np.pi, 3))) for _ in range(60)]
        outlines = [shape.rough_outline(grow=0.15 * diameter) for shape in shapes]
        outcomes = refine_frame(OraclePredictor(shapes), black, (SIDE, SIDE), outlines,
                                RefineSettings(0.7, 0, RESOLUTION_WHOLE_FRAME))
        ious, reasons = [], Counter()
        for shape, outcome in zip(shapes, outcomes):
            truth = Polygon(shape.outline(512))
            if outcome.polygon is None:
                ious.append(0.0)
                reasons[str(outcome.reason)] += 1
                continue
            ious.append(outcome.polygon.intersection(truth).area / outcome.polygon.union(truth).area)
            reasons.update(str(reason) for reason in outcome.doubts)
        span = np.median([coarseness(prompt_box(o, SIDE, SIDE), Window(0, 0, SIDE, SIDE), (256, 256)) for o in outlines])
        print(f"diameter {diameter:3d} px, span {span:4.1f} mask px: IoU median {np.median(ious):.3f}, "
              f"10th percentile {np.percentile(ious, 10):.3f}, min {min(ious):.3f}; {dict(reasons)}")


if __name__ == "__main__":
    main()
