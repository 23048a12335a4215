"""SAM2 as a predictor: the model seam's protocol (seam.py) over a model built by
sam2_build.py, decoded by sam2_decoder.py.

`Sam2Predictor` is thin: it encodes windows (several at once on a GPU, as many as fit its
free memory after the first window's peak was measured), makes one of them current, and
decodes box prompts there. On CUDA, running out of memory halves the encoder's batch or the
decoder's boxes per pass and tries again, after the failed attempt's tensors are released;
one window or one box that does not fit is a clear error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import sam2_build
from .errors import WorkerError
from .sam2_decoder import NOT_DECODED, Encoded, FastDecoder, on_whole_grid
from .seam import DecodedMasks, Window

# Names of earlier releases, for callers that import them from here.
from .sam2_build import OFFICIAL_CONFIGS, choose_precision, config_for_checkpoint, native_bf16_flags  # noqa: F401
from .seam import (  # noqa: F401
    DEFAULT_DECODE_BATCH, LOW_RES_SIDE, MODEL_INPUT_SIDE, MaskPredictor, decode_masks, low_res_span,
)

# Boxes decoded per call, by device type. On CPU 1 and 4 are within noise of each other
# per box and 8 is slower (benchmarks/RESULTS.md, `benchmarks/precision.py`); GPU sizes
# are unmeasured (no GPU lent).
DECODE_BATCH_SIZE = {"cpu": 4, "mps": 16, "cuda": 64}
# SAM2's input normalisation (ImageNet statistics, for images in [0, 1]).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# Up to this many windows per encoder batch, using at most this share of the free GPU memory.
MAX_ENCODE_BATCH = 8
ENCODE_MEMORY_SHARE = 0.5


def _encode_batch_for(peak_bytes: int, free_bytes: int) -> int:
    """Windows per encoder batch: as many as fit ENCODE_MEMORY_SHARE of the free memory at
    the measured peak per window, within [1, MAX_ENCODE_BATCH]."""
    if peak_bytes <= 0:
        return MAX_ENCODE_BATCH
    return max(1, min(MAX_ENCODE_BATCH, int(ENCODE_MEMORY_SHARE * free_bytes // peak_bytes)))


def _joined(parts: list[DecodedMasks]) -> DecodedMasks:
    """Decoded crops of consecutive boxes as one, padded to the largest crop."""
    if len(parts) == 1:
        return parts[0]
    height = max(p.logits.shape[1] for p in parts)
    width = max(p.logits.shape[2] for p in parts)

    def padded(values: np.ndarray) -> np.ndarray:
        pad = [(0, 0)] * (values.ndim - 2) + [(0, height - values.shape[-2]), (0, width - values.shape[-1])]
        return np.pad(values, pad, constant_values=NOT_DECODED)

    return DecodedMasks(np.concatenate([padded(p.logits) for p in parts]),
                        np.concatenate([p.predicted_iou for p in parts]),
                        np.concatenate([p.object_score for p in parts]),
                        np.concatenate([padded(p.candidates) for p in parts]),
                        np.concatenate([p.candidate_iou for p in parts]),
                        np.concatenate([p.origins for p in parts]), parts[0].grid)


class Sam2Predictor:
    """SAM2 for box prompts, one mask per box and SAM2's alternatives for it (see the module).

    On CUDA, windows go through the image encoder in batches (`encode_batch`) sized to
    the GPU's free memory after the first window's peak was measured, and each decode
    batch is upscaled over the whole grid at once (`crop_upscaling` False). CUDA running out
    of memory while the model is built, or a GPU the installed torch has no kernels for,
    falls back to the CPU with `device_warning` saying so.
    """

    def __init__(self, checkpoint: Path, device: str | None = None, precision: str | None = None):
        import torch

        built = sam2_build.load(Path(checkpoint), device, precision)
        self._built = built
        self.model = built.model
        self.device = built.device
        self.threads = built.threads
        self.precision = built.precision
        self.tf32 = built.tf32
        self.device_description = built.description
        self.device_warning = built.warning
        self._decoder = FastDecoder(built.model, built.device)
        self._mean = torch.tensor(IMAGE_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGE_STD, device=self.device).view(1, 3, 1, 1)
        self._current: Encoded | None = None
        self.decode_batch_size = DECODE_BATCH_SIZE.get(built.kind, 1)
        # CPU and MPS upscale each box over its area; CUDA the batch over the whole grid
        # at once (the same logits there; which is faster on a GPU is unmeasured).
        self.crop_upscaling = built.kind != "cuda"
        self.encode_batch_size = 1  # CUDA: set from the first window's measured peak
        self._encode_peak_bytes: int | None = None
        self._decode_pass: int | None = None  # boxes per decoder pass, once CUDA ran out of memory

    # The current window (what `decode` reads), for tests and benchmarks.
    @property
    def _window_hw(self) -> tuple[int, int]:
        return self._current.window_hw

    @property
    def _image_embed(self):
        return self._current.image_embed

    @property
    def _high_res(self):
        return self._current.high_res

    @property
    def _dense_pe(self):
        return self._decoder.dense_pe

    def _use_threads(self) -> None:
        self._built.use_threads()

    def _autocast(self, stage: str):
        """bf16 autocast for `stage` ("encode" or "decode") where it is chosen (sam2_build)."""
        return self._built.autocast(stage)

    def _out_of_gpu_memory(self, error: BaseException) -> bool:
        return self.device.startswith("cuda") and sam2_build.is_out_of_memory(error)

    def _release_gpu_memory(self) -> None:
        import torch

        torch.cuda.empty_cache()

    # --- encoding -------------------------------------------------------------------

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        self.use(self.encode_batch([window_image], [window])[0])

    def use(self, encoded: Encoded) -> None:
        self._current = encoded

    def encode_batch(self, window_images: list[np.ndarray], windows: list[Window]) -> list[Encoded]:
        """The windows through the image encoder together; on CUDA, running out of memory
        halves the batch (for this call and the ones after it) and encodes the rest."""
        encoded: list[Encoded] = []
        size = len(windows)
        while len(encoded) < len(windows):
            start, size = len(encoded), min(size, len(windows) - len(encoded))
            try:
                encoded += self._encode_together(window_images[start:start + size], windows[start:start + size])
                continue
            except Exception as error:
                if not self._out_of_gpu_memory(error):
                    raise
                if size == 1:
                    raise _out_of_memory("looked at one window", error) from error
            # Here, outside the handler, the failed attempt's tensors are gone with its traceback.
            self._release_gpu_memory()
            size = max(1, size // 2)
            self.encode_batch_size = size
        return encoded

    def _encode_together(self, window_images: list[np.ndarray], windows: list[Window]) -> list[Encoded]:
        import torch
        import torch.nn.functional as F

        self._use_threads()
        model = self.model
        side = model.image_size
        measuring = self.device.startswith("cuda") and self._encode_peak_bytes is None and len(windows) == 1
        if measuring:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode(), self._autocast("encode"):
            inputs = []
            for image in window_images:
                pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(self.device)
                inputs.append(F.interpolate(pixels, (side, side), mode="bilinear", align_corners=False, antialias=True))
            pixels = (torch.cat(inputs) - self._mean) / self._std
            backbone = model.forward_image(pixels)
            _, features, _, sizes = model._prepare_backbone_features(backbone)
            if model.directly_add_no_mem_embed:
                features[-1] = features[-1] + model.no_mem_embed
            count = len(windows)
            maps = [f.permute(1, 2, 0).view(count, -1, h, w) for f, (h, w) in zip(features, sizes)]
        if measuring:
            self._encode_peak_bytes = torch.cuda.max_memory_allocated(self.device) - before
            self.encode_batch_size = _encode_batch_for(self._encode_peak_bytes, torch.cuda.mem_get_info(self.device)[0])
        encoded = []
        with torch.inference_mode(), self._autocast("decode"):
            for k, window in enumerate(windows):
                window_maps = [m[k:k + 1] for m in maps]
                if self.device == "cpu":
                    window_maps = [m.float() for m in window_maps]
                image_embed, high_res = window_maps[-1], window_maps[:-1]
                encoded.append(Encoded((window.height, window.width), image_embed, high_res,
                                       self._decoder.first_block_projections(image_embed)))
        return encoded

    # --- decoding -------------------------------------------------------------------

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        return self.decode(boxes).logits

    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        """SAM2's mask for each box over the whole low-resolution grid, exact over its area
        (NOT_DECODED where it was not computed); SAM2's predicted IoU of that mask and its
        object-presence logit; its other three masks as candidates."""
        return on_whole_grid(self.decode_crops(boxes, areas))

    def decode_crops(self, boxes: np.ndarray, areas: np.ndarray | None) -> DecodedMasks:
        """`decode` with each box's masks cropped to the cells its area reads (`origins`):
        what the engine uses. On CUDA, running out of memory halves the boxes per decoder
        pass (for this call and the ones after it) and decodes the rest."""
        self._use_threads()
        parts: list[DecodedMasks] = []
        done = 0
        while done < len(boxes):
            size = len(boxes) - done if self._decode_pass is None else min(self._decode_pass, len(boxes) - done)
            try:
                parts.append(self._decode_pass_of(boxes[done:done + size], None if areas is None else
                                                  areas[done:done + size]))
                done += size
                continue
            except Exception as error:
                if not self._out_of_gpu_memory(error):
                    raise
                if size == 1:
                    raise _out_of_memory("decoded one box", error) from error
            # Outside the handler: the failed pass's tensors are gone with its traceback.
            self._release_gpu_memory()
            self._decode_pass = max(1, size // 2)
        return _joined(parts)

    def _decode_pass_of(self, boxes: np.ndarray, areas: np.ndarray | None) -> DecodedMasks:
        import torch

        with torch.inference_mode(), self._autocast("decode"):
            return self._decoder.decode(self._current, boxes, areas, whole_grid=not self.crop_upscaling)


def _out_of_memory(doing: str, error: BaseException) -> WorkerError:
    """The error a job ends with when the GPU runs out of memory on the smallest batch."""
    return WorkerError(
        f"The GPU ran out of memory while SAM2 {doing}: {error}",
        info="Another job may be using this GPU; run the tool again when it is free, or choose a smaller model.",
        title="GPU out of memory",
    )
