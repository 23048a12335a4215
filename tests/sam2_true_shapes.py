"""Real SAM2 answering with true shapes: its encoder and decoder run on every window and
box (so time and memory are SAM2's), then its logits are replaced by the oracle's.

Random-init weights give noise masks, which cannot show whether the right outline was
made; the oracle's logits can. Factory for the worker subprocess:
SAM2_REFINE_PREDICTOR=tests.sam2_true_shapes:from_environment with ORACLE_SHAPES=<json>.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sam2_refine.model import Sam2Predictor

from sam2_refine.seam import DecodedMasks, Window
from tests.oracle import ScoredOraclePredictor, Shape, shapes_from_json


class TrueShapesSam2:
    def __init__(self, checkpoint: Path, shapes: list[Shape]):
        self.sam2 = Sam2Predictor(checkpoint)
        self.oracle = ScoredOraclePredictor(shapes)
        self.decode_batch_size = self.sam2.decode_batch_size
        self.device_description = self.sam2.device_description
        self.device_warning = self.sam2.device_warning

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        self.sam2.encode(window_image, window)
        self.oracle.encode(window_image, window)

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        return self.decode(boxes).logits

    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        self.sam2.decode(boxes, areas)
        return self.oracle.decode(boxes, areas)


def from_environment(checkpoint) -> TrueShapesSam2:
    with open(os.environ["ORACLE_SHAPES"]) as handle:
        return TrueShapesSam2(Path(checkpoint), shapes_from_json(handle.read()))
