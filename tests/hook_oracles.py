"""Predictor factories (SAM2_REFINE_PREDICTOR) for whole-worker tests in which something
happens while the job runs: the oracle of tests/oracle.py (shapes in ORACLE_SHAPES), and
one act at a known moment."""

from __future__ import annotations

import os

import numpy as np
import requests

from tests.oracle import OraclePredictor, from_environment


class DeletingOracle(OraclePredictor):
    """At its first encode (the job refining its first location), deletes the annotations
    named in HOOK_DELETE (comma-separated ids) on the platform at HOOK_API_URL with
    HOOK_TOKEN: a user deleting them in the app while the job runs."""

    def __init__(self, shapes):
        super().__init__(shapes)
        self._deleted = False

    def encode(self, window_image, window) -> None:
        if not self._deleted:
            self._deleted = True
            for annotation_id in os.environ["HOOK_DELETE"].split(","):
                response = requests.delete(f"{os.environ['HOOK_API_URL']}/upenn_annotation/{annotation_id}",
                                           headers={"Girder-Token": os.environ["HOOK_TOKEN"]}, timeout=10)
                response.raise_for_status()
        super().encode(window_image, window)


def deleting(checkpoint) -> DeletingOracle:
    return DeletingOracle(from_environment(checkpoint).shapes)


class FailingOracle(OraclePredictor):
    """Raises a RuntimeError, as torch does on a device fault, when asked to decode a box
    whose nearest shape is the one at index HOOK_FAIL_AT of ORACLE_SHAPES."""

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        trigger = self.shapes[int(os.environ["HOOK_FAIL_AT"])]
        window = self._window
        if any(self._nearest(window.left + (x0 + x1) / 2, window.top + (y0 + y1) / 2) is trigger
               for x0, y0, x1, y1 in boxes):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().decode_low_res(boxes)


def failing(checkpoint) -> FailingOracle:
    return FailingOracle(from_environment(checkpoint).shapes)
