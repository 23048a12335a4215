"""The model seam: SAM2 behind a two-call protocol.

The engine asks a predictor to encode one window of the image, then to decode batches
of box prompts into SAM2's low-resolution mask logits over that window. Upsampling and
thresholding happen in the engine, only around each object, so the predictor never
builds a full-size mask. Tests substitute an oracle predictor with the same protocol.

Frames: `boxes` are in window pixels (x0, y0, x1, y1), x = window column; the returned
logits cover the whole window, resized (without keeping aspect) to the model's
low-resolution grid.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import WorkerError

# Official checkpoint names -> their configs inside the sam2 package.
OFFICIAL_CONFIGS = {
    "sam2.1_hiera_tiny.pt": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small.pt": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus.pt": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large.pt": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_tiny.pt": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_small.pt": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_base_plus.pt": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_large.pt": "configs/sam2/sam2_hiera_l.yaml",
}

# SAM2 resizes every input to this square side, in pixels.
MODEL_INPUT_SIDE = 1024

# Boxes decoded per call, by device type. Measured with `make bench` (benchmarks/RESULTS.md):
# on CPU, batches above ~4 cost more per box; a GPU keeps gaining up to large batches.
DECODE_BATCH_SIZE = {"cpu": 4, "mps": 16, "cuda": 64}


@dataclass(frozen=True)
class Window:
    """A rectangle of the image, in image pixels: columns [left, left+width), rows [top, top+height)."""

    left: int
    top: int
    width: int
    height: int


class MaskPredictor(Protocol):
    """What the engine needs of a promptable segmenter."""

    decode_batch_size: int

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        """Encode `window_image` (rows, cols, 3) float32 in [0, 1], which shows `window`
        at its own resolution or lower."""

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) boxes in window pixels -> (N, h, w) float32 mask logits over the window; > 0 is inside."""


def config_for_checkpoint(checkpoint: Path) -> str | Path:
    """The sam2 config name of an official checkpoint, or the `.yaml` beside a custom one."""
    if checkpoint.name in OFFICIAL_CONFIGS:
        return OFFICIAL_CONFIGS[checkpoint.name]
    beside = checkpoint.with_suffix(".yaml")
    if beside.is_file():
        return beside
    raise WorkerError(
        f"No config for model {checkpoint.name}",
        info=(
            f"Official names ({', '.join(sorted(OFFICIAL_CONFIGS))}) need nothing more; for another "
            f"checkpoint, put its SAM2 config beside it as {beside.name}."
        ),
        title="Unknown model",
    )


def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _build_model(config: str | Path, checkpoint: Path, device: str):
    from sam2.build_sam import _load_checkpoint, build_sam2

    if isinstance(config, str):
        return build_sam2(config, str(checkpoint), device=device, mode="eval")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    settings = OmegaConf.load(config)
    OmegaConf.resolve(settings)
    model = instantiate(settings.model, _recursive_=True)
    _load_checkpoint(model, str(checkpoint))
    return model.to(device).eval()


class Sam2Predictor:
    """SAM2 image predictor, box prompts only, single mask per box."""

    def __init__(self, checkpoint: Path, device: str | None = None):
        import torch
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.device = device or pick_device()
        if self.device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        if self.device == "cuda" and torch.cuda.get_device_properties(0).major >= 8:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        config = config_for_checkpoint(checkpoint)
        try:
            model = _build_model(config, checkpoint, self.device)
        except Exception as error:  # any failure to read or fit the file is the same to the user
            raise WorkerError(
                f"Model {checkpoint.name} could not be loaded: {type(error).__name__}: {error}",
                info="The checkpoint file may be truncated or not match its config; reinstall the model.",
                title="Model failed to load",
            ) from error
        self._predictor = SAM2ImagePredictor(model)
        self.decode_batch_size = DECODE_BATCH_SIZE.get(self.device, 4)

    def _autocast(self):
        import torch

        if self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        import torch

        with torch.inference_mode(), self._autocast():
            self._predictor.set_image(window_image)
        self._window_hw = (window.height, window.width)

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        import torch

        predictor = self._predictor
        model = predictor.model
        with torch.inference_mode(), self._autocast():
            box_tensor = torch.as_tensor(boxes, dtype=torch.float, device=self.device)
            model_boxes = predictor._transforms.transform_boxes(
                box_tensor, normalize=True, orig_hw=self._window_hw
            ).reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device).repeat(len(boxes), 1)
            sparse, dense = model.sam_prompt_encoder(points=(model_boxes, corner_labels), boxes=None, masks=None)
            features = predictor._features
            low_res, _, _, _ = model.sam_mask_decoder(
                image_embeddings=features["image_embed"][-1].unsqueeze(0),
                image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
                repeat_image=len(boxes) > 1,
                high_res_features=[level[-1].unsqueeze(0) for level in features["high_res_feats"]],
            )
        return low_res[:, 0].float().cpu().numpy()
