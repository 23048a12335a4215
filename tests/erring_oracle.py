"""A predictor that errs on purpose: each box prompt gets a chosen answer.

Answers are keyed by the prompt box's centre in image pixels (the centre of the
original's bounding box); a prompt gets the answer whose key is nearest. The answer's
field (tests/synthetic_cells.py) is sampled at the centres of SAM2's 256 x 256
low-resolution grid over the encoded window, as the real logits are. Optionally each
answer carries SAM2-like scores (predicted IoU, object score), given through `decode`.

In the worker subprocess: SAM2_REFINE_PREDICTOR=tests.erring_oracle:from_environment,
ERRING_ORACLE=<json file from `answers_to_json`>; with ERRING_ORACLE_DECODES=<file>,
each decoded box's centre (image pixels) is appended to that file, one "x y" line per box;
ERRING_ORACLE_DEVICE and ERRING_ORACLE_DEVICE_WARNING set the optional `device_description`
and `device_warning` a real predictor has.
"""

from __future__ import annotations

import json
import os

import numpy as np

from sam2_refine.seam import DecodedMasks, Window
from tests.synthetic_cells import Answer, answer_from_json

LOW_RES = 256


class ErringOracle:
    decode_batch_size = 4

    def __init__(self, keys: np.ndarray, answers: list[Answer], scores: list[tuple[float, float]] | None = None,
                 decode_log: str | None = None):
        self.keys = np.asarray(keys, dtype=np.float64).reshape(-1, 2)
        self.answers = answers
        self.scores = scores
        self.decode_log = decode_log
        self._window: Window | None = None

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        assert window_image.dtype == np.float32 and window_image.ndim == 3
        self._window = window

    def _answer_index(self, x: float, y: float) -> int:
        return int(np.argmin(((self.keys - (x, y)) ** 2).sum(axis=1)))

    def _decode(self, boxes: np.ndarray) -> tuple[np.ndarray, list[int]]:
        window = self._window
        columns = window.left + (np.arange(LOW_RES) + 0.5) * window.width / LOW_RES
        rows = window.top + (np.arange(LOW_RES) + 0.5) * window.height / LOW_RES
        x, y = np.meshgrid(columns, rows)
        logits, chosen, centres = [], [], []
        for x0, y0, x1, y1 in boxes:
            centre = (window.left + (x0 + x1) / 2, window.top + (y0 + y1) / 2)
            index = self._answer_index(*centre)
            chosen.append(index)
            centres.append(centre)
            logits.append(self.answers[index].field(x, y).astype(np.float32))
        if self.decode_log:
            with open(self.decode_log, "a") as log:
                log.writelines(f"{cx:.3f} {cy:.3f}\n" for cx, cy in centres)
        return np.stack(logits), chosen

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        return self._decode(boxes)[0]


class ScoredErringOracle(ErringOracle):
    """With scores, and optionally SAM2-like alternative masks: `candidates[i]` lists
    (answer, predicted IoU) pairs for answer i, given as `DecodedMasks.candidates`."""

    candidates: list[list[tuple[Answer, float]]] | None = None

    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        logits, chosen = self._decode(boxes)
        candidates = candidate_iou = None
        if self.candidates is not None:
            window = self._window
            columns = window.left + (np.arange(LOW_RES) + 0.5) * window.width / LOW_RES
            rows = window.top + (np.arange(LOW_RES) + 0.5) * window.height / LOW_RES
            x, y = np.meshgrid(columns, rows)
            candidates = np.stack([np.stack([answer.field(x, y).astype(np.float32)
                                             for answer, _ in self.candidates[i]]) for i in chosen])
            candidate_iou = np.array([[iou for _, iou in self.candidates[i]] for i in chosen], dtype=np.float32)
        return DecodedMasks(
            logits,
            predicted_iou=np.array([self.scores[i][0] for i in chosen], dtype=np.float32),
            object_score=np.array([self.scores[i][1] for i in chosen], dtype=np.float32),
            candidates=candidates,
            candidate_iou=candidate_iou,
        )


def answers_to_json(keys, answers: list[Answer], scores=None, candidates=None) -> str:
    """`candidates`: per answer, (answer, predicted IoU) pairs, the same number for each."""
    return json.dumps({"keys": [list(map(float, k)) for k in keys], "answers": [a.to_json() for a in answers],
                       "scores": scores,
                       "candidates": None if candidates is None else [
                           [[answer.to_json(), float(iou)] for answer, iou in options] for options in candidates]})


def from_environment(checkpoint) -> ErringOracle:
    with open(os.environ["ERRING_ORACLE"]) as handle:
        raw = json.load(handle)
    answers = [answer_from_json(a) for a in raw["answers"]]
    kind = ScoredErringOracle if raw.get("scores") else ErringOracle
    oracle = kind(np.array(raw["keys"]), answers, raw.get("scores"), os.environ.get("ERRING_ORACLE_DECODES"))
    if raw.get("candidates"):
        oracle.candidates = [[(answer_from_json(answer), iou) for answer, iou in options] for options in raw["candidates"]]
    # Where a real predictor says it runs (ERRING_ORACLE_DEVICE) and why not on the GPU.
    if "ERRING_ORACLE_DEVICE" in os.environ:
        oracle.device_description = os.environ["ERRING_ORACLE_DEVICE"]
    if "ERRING_ORACLE_DEVICE_WARNING" in os.environ:
        oracle.device_warning = os.environ["ERRING_ORACLE_DEVICE_WARNING"]
    return oracle
