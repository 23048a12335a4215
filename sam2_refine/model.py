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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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

# Boxes decoded per call, by device type. On CPU one box per call is fastest per box
# (benchmarks/PROPOSALS.md, `micro.py decode`); GPU sizes are unmeasured here (no GPU lent).
DECODE_BATCH_SIZE = {"cpu": 1, "mps": 16, "cuda": 64}


@dataclass(frozen=True)
class Window:
    """A rectangle of the image, in image pixels: columns [left, left+width), rows [top, top+height)."""

    left: int
    top: int
    width: int
    height: int


class MaskPredictor(Protocol):
    """What the engine needs of a promptable segmenter: these two methods, nothing more.

    Optional extensions a predictor may have (the engine checks with `hasattr`):
    - `decode_batch_size: int`, boxes per decode call (default `DEFAULT_DECODE_BATCH`);
    - `decode(boxes, areas) -> DecodedMasks`, which adds SAM2's own scores and may skip
      computing logits outside `areas` (see `ScoredPredictor`).
    """

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        """Encode `window_image` (rows, cols, 3) float32 in [0, 1], which shows `window`
        at its own resolution or lower."""

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) boxes in window pixels -> (N, h, w) float32 mask logits over the window; > 0 is inside."""


@dataclass(frozen=True)
class DecodedMasks:
    """What one decode call gives for N boxes of the encoded window.

    `logits` (N, h, w) float32 cover the whole window (window frame, resized without
    keeping aspect to the low-resolution grid); > 0 is inside. Outside the `areas` the
    engine asked for they may hold anything. The scores are None when the predictor
    does not provide them: `predicted_iou` is SAM2's own IoU estimate (0-1) and
    `object_score` its object-presence logit (> 0: an object is present).
    """

    logits: np.ndarray
    predicted_iou: np.ndarray | None = None
    object_score: np.ndarray | None = None


class ScoredPredictor(MaskPredictor, Protocol):
    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        """Like `decode_low_res`, with scores. `areas` (N, 4) are window pixels
        (col0, row0, col1, row1), end-exclusive: the engine reads each object's logits
        only there, so a predictor may leave the rest uncomputed. None means everywhere."""


DEFAULT_DECODE_BATCH = 16


def decode_batch_size(predictor: MaskPredictor) -> int:
    return max(1, int(getattr(predictor, "decode_batch_size", DEFAULT_DECODE_BATCH)))


def decode_masks(predictor: MaskPredictor, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
    """Decode through the richest method the predictor has."""
    if hasattr(predictor, "decode"):
        return predictor.decode(boxes, areas)
    return DecodedMasks(np.asarray(predictor.decode_low_res(boxes), dtype=np.float32))


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


# SAM2's input normalisation (ImageNet statistics, for images in [0, 1]).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# What sam2.build_sam.build_sam2 applies to official configs (its apply_postprocessing).
POSTPROCESSING_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextmanager
def _without_random_init() -> Iterator[None]:
    """torch.nn.init does nothing while the model is built: the checkpoint replaces every
    parameter, so random initialisation would be wasted start-up time."""
    from torch.nn import init

    saved = {name: getattr(init, name) for name in _INITIALISERS if hasattr(init, name)}
    for name in saved:
        setattr(init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def _build_model(config: str | Path, checkpoint: Path, device: str):
    """The SAM2 model of `config` with the weights of `checkpoint` (the official format,
    {"model": state_dict}); the same model sam2.build_sam.build_sam2 builds."""
    import torch
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (registers the packaged configs with hydra)

    if isinstance(config, str):
        settings = compose(config_name=config, overrides=POSTPROCESSING_OVERRIDES)
    else:
        settings = OmegaConf.load(config)
    OmegaConf.resolve(settings)
    with _without_random_init():
        model = instantiate(settings.model, _recursive_=True)
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["model"]
    model.load_state_dict(weights, strict=True, assign=True)
    return model.to(device).eval()


class Sam2Predictor:
    """SAM2 for box prompts, one mask per box.

    It does what sam2's SAM2ImagePredictor does for this case, without importing it:
    that module pulls in torchvision, which costs seconds of start-up.
    """

    def __init__(self, checkpoint: Path, device: str | None = None):
        import torch

        self.device = device or pick_device()
        if self.device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        if self.device == "cuda" and torch.cuda.get_device_properties(0).major >= 8:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        config = config_for_checkpoint(checkpoint)
        try:
            self.model = _build_model(config, checkpoint, self.device)
        except Exception as error:  # any failure to read or fit the file is the same to the user
            raise WorkerError(
                f"Model {checkpoint.name} could not be loaded: {type(error).__name__}: {error}",
                info="The checkpoint file may be truncated or not match its config; reinstall the model.",
                title="Model failed to load",
            ) from error
        with torch.inference_mode():
            self._dense_pe = self.model.sam_prompt_encoder.get_dense_pe()
        self._mean = torch.tensor(IMAGE_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGE_STD, device=self.device).view(1, 3, 1, 1)
        self.decode_batch_size = DECODE_BATCH_SIZE.get(self.device, 1)

    def _autocast(self):
        import torch

        if self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        import torch
        import torch.nn.functional as F

        model = self.model
        side = model.image_size
        with torch.inference_mode(), self._autocast():
            pixels = torch.from_numpy(np.ascontiguousarray(window_image.transpose(2, 0, 1)))[None].to(self.device)
            pixels = F.interpolate(pixels, (side, side), mode="bilinear", align_corners=False, antialias=True)
            pixels = (pixels - self._mean) / self._std
            backbone = model.forward_image(pixels)
            _, features, _, sizes = model._prepare_backbone_features(backbone)
            if model.directly_add_no_mem_embed:
                features[-1] = features[-1] + model.no_mem_embed
            maps = [f.permute(1, 2, 0).view(1, -1, h, w) for f, (h, w) in zip(features, sizes)]
        self._image_embed, self._high_res = maps[-1], maps[:-1]
        self._window_hw = (window.height, window.width)

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        import torch

        model = self.model
        height, width = self._window_hw
        with torch.inference_mode(), self._autocast():
            corners = torch.as_tensor(boxes, dtype=torch.float, device=self.device).reshape(-1, 2, 2)
            # Window pixels -> the model's input frame (the window stretched to side x side).
            corners = corners / torch.tensor([width, height], dtype=torch.float, device=self.device) * model.image_size
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device).repeat(len(boxes), 1)
            sparse, dense = model.sam_prompt_encoder(points=(corners, corner_labels), boxes=None, masks=None)
            low_res, _, _, _ = model.sam_mask_decoder(
                image_embeddings=self._image_embed,
                image_pe=self._dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
                repeat_image=len(boxes) > 1,
                high_res_features=self._high_res,
            )
        return low_res[:, 0].float().cpu().numpy()
