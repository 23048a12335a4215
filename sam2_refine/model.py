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

# Boxes decoded per call, by device type. On CPU 1 and 4 are within noise of each other
# per box and 8 is slower (benchmarks/RESULTS.md, `benchmarks/precision.py`); GPU sizes
# are unmeasured (no GPU lent).
DECODE_BATCH_SIZE = {"cpu": 4, "mps": 16, "cuda": 64}


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
    - `decode(boxes, areas) -> DecodedMasks`, which adds SAM2's own scores and alternative
      masks and may skip computing logits outside `areas` (see `ScoredPredictor`);
    - `encode_batch(window_images, windows) -> list` and `use(encoded)`, with
      `encode_batch_size: int`: several windows through the image encoder at once, each then
      made the current window by `use` (see `BatchEncoder`).
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
    # (N, K, h, w): K more masks for each box, on the same grid as `logits` and valid over
    # the same areas (SAM2's multi-mask outputs), with SAM2's IoU estimate of each (N, K).
    candidates: np.ndarray | None = None
    candidate_iou: np.ndarray | None = None


class ScoredPredictor(MaskPredictor, Protocol):
    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        """Like `decode_low_res`, with scores. `areas` (N, 4) are window pixels
        (col0, row0, col1, row1), end-exclusive: the engine reads each object's logits
        only there, so a predictor may leave the rest uncomputed. None means everywhere."""


class BatchEncoder(MaskPredictor, Protocol):
    encode_batch_size: int

    def encode_batch(self, window_images: list[np.ndarray], windows: list[Window]) -> list[object]:
        """Encode several windows at once (as `encode` would each); returns one opaque
        encoding per window, in order."""

    def use(self, encoded: object) -> None:
        """Make an encoding from `encode_batch` the current window, as `encode` would."""


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


# SAM2's input normalisation (ImageNet statistics, for images in [0, 1]).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# What sam2.build_sam.build_sam2 applies to official configs (its apply_postprocessing);
# applied to custom `name.yaml` configs too, so fine-tuned checkpoints decode alike.
POSTPROCESSING = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}
# The mask decoder's low-resolution grid, and the image-embedding grid it upscales
# from: one embedding cell becomes 4 x 4 low-resolution cells.
LOW_RES_SIDE = 256
EMBEDDING_SIDE = 64
# What `decode` leaves in the logits outside the areas it was asked for (never read).
NOT_DECODED = -1000.0
# /proc/cpuinfo flags of CPUs that compute in bfloat16 natively (AVX-512 BF16, AMX).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def native_bf16_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The NATIVE_BF16_FLAGS this CPU reports; empty off x86 Linux, where autocast
    would emulate bfloat16 many times slower than fp32 (benchmarks/RESULTS.md)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    return []


def choose_precision(device_kind: str, cpuinfo: Path = CPUINFO) -> str:
    """"bf16" (autocast) on CUDA and on CPUs with native bfloat16, else "fp32"."""
    if device_kind == "cuda" or (device_kind == "cpu" and native_bf16_flags(cpuinfo)):
        return "bf16"
    return "fp32"


def _model_settings(config: str | Path):
    """The hydra settings of `config` (a packaged config name or a .yaml path), with POSTPROCESSING."""
    from hydra import compose
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (registers the packaged configs with hydra)

    if isinstance(config, str):
        overrides = [f"++{key}={str(value).lower()}" for key, value in POSTPROCESSING.items()]
        settings = compose(config_name=config, overrides=overrides)
    else:
        settings = OmegaConf.load(config)
        for key, value in POSTPROCESSING.items():
            OmegaConf.update(settings, key, value, force_add=True)
    OmegaConf.resolve(settings)
    return settings


def _meta_construction():
    """A torch function mode for building a model on the meta device.

    - Initialisers and in-place arithmetic on meta tensors do nothing, and a scalar times a
      meta tensor is a new meta tensor: the checkpoint replaces every parameter, and these
      ops on meta tensors would run torch's Python references, which import torch._dynamo
      (a second of start-up).
    - `arange` and `linspace` run on the CPU: sam2 reads drop-path rates from them with
      `.item()` and builds its rotary encodings, which no checkpoint holds, from them.
    - Meta tensors are not moved to another device (sam2 moves some to CUDA while building).
    """
    import torch
    from torch.overrides import TorchFunctionMode

    Tensor = torch.Tensor
    unchanged = {Tensor.normal_, Tensor.uniform_, Tensor.erfinv_, Tensor.mul_, Tensor.add_, Tensor.clamp_,
                 Tensor.fill_, Tensor.zero_, Tensor.to, Tensor.cuda}
    scaled = {Tensor.__mul__, Tensor.__rmul__, Tensor.mul, torch.mul}
    on_cpu = {torch.arange, torch.linspace}

    class MetaConstruction(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            subject = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes `tensor=`
            if isinstance(subject, Tensor) and subject.is_meta:
                if func in unchanged or getattr(func, "__module__", None) == "torch.nn.init":
                    return subject
                if func in scaled and len(args) == 2 and isinstance(args[1], (int, float)):
                    return torch.empty_like(subject)
            if func in on_cpu and kwargs.get("device") is None:
                kwargs = {**kwargs, "device": "cpu"}
            return func(*args, **kwargs)

    return MetaConstruction()


def _check_materialised(model) -> None:
    """Every parameter, buffer and tensor attribute holds data: none was left on meta."""
    import torch

    left_on_meta = [
        f"{module_name}.{name}" for module_name, module in model.named_modules()
        for name, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False),
                            *vars(module).items()]
        if isinstance(value, torch.Tensor) and value.is_meta
    ]
    if left_on_meta:
        raise RuntimeError(f"not in the checkpoint: {', '.join(left_on_meta)}")


def _build_model(config: str | Path, checkpoint: Path, device: str):
    """The SAM2 model of `config` with the weights of `checkpoint` (the official format,
    {"model": state_dict}); the same model sam2.build_sam.build_sam2 builds. It is
    constructed on the meta device (no memory, no random initialisation) and the
    checkpoint's tensors are assigned to it."""
    import torch
    from hydra.utils import instantiate

    settings = _model_settings(config)
    with torch.device("meta"), _meta_construction():
        model = instantiate(settings.model, _recursive_=True)
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["model"]
    model.load_state_dict(weights, strict=True, assign=True)
    _check_materialised(model)
    return model.to(device).eval()


@dataclass(frozen=True)
class _Span:
    """Rows or columns [start, stop) of a grid."""

    start: int
    stop: int


def low_res_span(start: int, stop: int, window_size: int, cells: int = LOW_RES_SIDE) -> _Span:
    """The cells of a `cells`-wide low-resolution grid that resizing the logits to
    `window_size` pixels reads for window pixels [start, stop) (engine.resize_region's
    bilinear sampling), with one cell to spare on each side against rounding."""
    scale = cells / window_size
    first = max(0.0, (start + 0.5) * scale - 0.5)
    last = max(0.0, (max(stop, start + 1) - 0.5) * scale - 0.5)
    return _Span(max(0, int(first) - 1), min(cells, int(last) + 3))


def embedding_span(cells: _Span) -> _Span:
    """The embedding cells whose upscaling produces low-resolution `cells` (4 per cell)."""
    return _Span(cells.start // 4, -(-cells.stop // 4))


@dataclass
class _Encoded:
    """One encoded window: what `decode` reads of it (model tensors)."""

    window_hw: tuple[int, int]
    image_embed: object
    high_res: list
    first_block: dict


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


# Up to this many windows per encoder batch, using at most this share of the free GPU memory.
MAX_ENCODE_BATCH = 8
ENCODE_MEMORY_SHARE = 0.5


def _encode_batch_for(peak_bytes: int, free_bytes: int) -> int:
    """Windows per encoder batch: as many as fit ENCODE_MEMORY_SHARE of the free memory at
    the measured peak per window, within [1, MAX_ENCODE_BATCH]."""
    if peak_bytes <= 0:
        return MAX_ENCODE_BATCH
    return max(1, min(MAX_ENCODE_BATCH, int(ENCODE_MEMORY_SHARE * free_bytes // peak_bytes)))


def _gpu_failure(error: BaseException, checkpoint: Path) -> str:
    """Why the model runs on the CPU instead of the GPU, for the job's warning."""
    if _is_out_of_memory(error):
        return (f"the GPU did not have the memory to load {checkpoint.name} ({error}); another job may be "
                "using it, or the model is too large for it")
    return f"the installed torch has no kernels for this GPU (it is older than the build supports): {error}"


class Sam2Predictor:
    """SAM2 for box prompts, one mask per box (and SAM2's alternatives for it).

    It does what sam2's SAM2ImagePredictor does for this case, without importing it
    (that module pulls in torchvision, seconds of start-up), and computes less:
    - the mask decoder's upscaling runs only over the embedding cells that cover the
      area the engine reads (`decode`'s `areas`). Its layers (two 2 x 2 stride-2
      transposed convolutions, a per-pixel LayerNorm, GELU, per-pixel adds of the
      high-resolution features, the hypernetwork product) are pixel-local, so the logits
      there are the full decoder's. SAM2's fallback to its best multi-mask output when
      the single mask is unstable (build_sam2's `dynamic_multimask_via_stability`) is
      judged on those cells; it is the full decoder's judgement whenever no logit outside
      the area exceeds -0.05, i.e. whenever the object lies inside its area. The masks
      not chosen are returned as `candidates`;
    - the first two-way attention block's projections of the image tokens are computed
      once per window: with box prompts the dense prompt embedding is the constant
      `no_mask_embed`, so they are the same for every box.
    tests/test_decoder_equivalence.py checks both against sam2's own decoder.

    On CUDA, windows go through the image encoder in batches (`encode_batch`) sized to
    the GPU's free memory after the first window's peak was measured, and each decode
    batch is upscaled over the whole grid at once. CUDA running out of memory while the
    model is built, or a GPU the installed torch has no kernels for, falls back to the
    CPU with `device_warning` saying so.
    """

    def __init__(self, checkpoint: Path, device: str | None = None, precision: str | None = None):
        import torch

        from .device import choose_device, is_missing_kernel

        choice = choose_device(device)
        config = config_for_checkpoint(checkpoint)
        try:
            self._start(choice, precision, config, checkpoint)
        except WorkerError:
            raise
        except Exception as error:
            if choice.kind.startswith("cuda") and (_is_out_of_memory(error) or is_missing_kernel(error)):
                self.model = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self._start(choice.on_cpu(_gpu_failure(error, checkpoint)), precision, config, checkpoint)
            else:
                raise WorkerError(
                    f"Model {checkpoint.name} could not be loaded: {type(error).__name__}: {error}",
                    info="The checkpoint file may be truncated or not match its config; reinstall the model.",
                    title="Model failed to load",
                ) from error

    def _start(self, choice, precision: str | None, config, checkpoint: Path) -> None:
        import torch

        self.device = choice.kind
        self.threads = choice.threads
        self._use_threads()
        self.tf32 = self.device.startswith("cuda") and torch.cuda.get_device_properties(self.device).major >= 8
        if self.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.precision = precision or choose_precision(self.device.split(":")[0])
        self.device_description = f"{choice.description}, {self._precision_words()}"
        self.device_warning = choice.warning
        self.model = _build_model(config, checkpoint, self.device)
        with torch.inference_mode():
            self._dense_pe = self.model.sam_prompt_encoder.get_dense_pe()
        self._mean = torch.tensor(IMAGE_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGE_STD, device=self.device).view(1, 3, 1, 1)
        self._current: _Encoded | None = None
        kind = self.device.split(":")[0]
        self.decode_batch_size = DECODE_BATCH_SIZE.get(kind, 1)
        # CPU and MPS upscale each box over its area; CUDA the batch over the whole grid
        # at once (the same logits there; which is faster on a GPU is unmeasured).
        self.crop_upscaling = kind != "cuda"
        self.encode_batch_size = 1  # CUDA: set from the first window's measured peak
        self._encode_peak_bytes: int | None = None

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
    def _first_block(self) -> dict:
        return self._current.first_block

    def _use_threads(self) -> None:
        """torch's CPU thread count is per calling thread (OpenMP), and the predictor may
        be built in one thread and used in another: set it in each that computes."""
        import torch

        if self.device == "cpu" and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _precision_words(self) -> str:
        if self.precision == "fp32":
            return "fp32"
        if self.device == "cpu":
            return f"image encoder in bf16 autocast ({', '.join(native_bf16_flags()) or 'emulated'}), mask decoder in fp32"
        return "bf16 autocast" + (", TF32" if self.tf32 else "")

    def _autocast(self, stage: str):
        """bf16 autocast for `stage` ("encode" or "decode") where it is chosen. On the CPU
        only the image encoder runs in bf16: the decoder is no faster in bf16 there
        (benchmarks/RESULTS.md) and stays exact in fp32."""
        import torch

        kind = self.device.split(":")[0]
        if self.precision != "bf16" or kind not in ("cuda", "cpu"):
            return nullcontext()
        if kind == "cpu" and stage == "decode":
            return nullcontext()
        return torch.autocast(kind, dtype=torch.bfloat16)

    def encode(self, window_image: np.ndarray, window: Window) -> None:
        self.use(self.encode_batch([window_image], [window])[0])

    def use(self, encoded: _Encoded) -> None:
        self._current = encoded

    def encode_batch(self, window_images: list[np.ndarray], windows: list[Window]) -> list[_Encoded]:
        """The windows through the image encoder together; on CUDA running out of memory
        halves the batch size and retries."""
        try:
            return self._encode_together(window_images, windows)
        except Exception as error:
            if not (self.device.startswith("cuda") and _is_out_of_memory(error)):
                raise
            import torch

            torch.cuda.empty_cache()
            if len(windows) == 1:
                raise WorkerError(
                    f"The GPU ran out of memory while SAM2 looked at one window: {error}",
                    info="Another job may be using this GPU; run the tool again when it is free, or choose a smaller model.",
                    title="GPU out of memory",
                ) from error
            self.encode_batch_size = max(1, len(windows) // 2)
            half = len(windows) // 2
            return self.encode_batch(window_images[:half], windows[:half]) + \
                self.encode_batch(window_images[half:], windows[half:])

    def _encode_together(self, window_images: list[np.ndarray], windows: list[Window]) -> list[_Encoded]:
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
                encoded.append(_Encoded((window.height, window.width), image_embed, high_res,
                                        self._first_block_projections(image_embed)))
        return encoded

    def decode_low_res(self, boxes: np.ndarray) -> np.ndarray:
        return self.decode(boxes).logits

    def decode(self, boxes: np.ndarray, areas: np.ndarray | None = None) -> DecodedMasks:
        """SAM2's mask for each box, exact over its area (see the class), NOT_DECODED
        elsewhere where it was not computed; SAM2's predicted IoU of that mask and its
        object-presence logit; its other three masks as candidates."""
        import torch

        self._use_threads()
        model = self.model
        decoder = model.sam_mask_decoder
        count = len(boxes)
        with torch.inference_mode(), self._autocast("decode"):
            tokens = self._prompt_tokens(boxes)
            hs, src = self._transformer(tokens)
            src = src.transpose(1, 2).reshape(count, *self._image_embed.shape[1:])
            first = 1 if decoder.pred_obj_scores else 0
            mask_tokens = hs[:, first + 1:first + 1 + decoder.num_mask_tokens, :]
            hyper_in = torch.stack(
                [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
            )
            iou_pred = decoder.iou_prediction_head(hs[:, first, :]).float()
            if decoder.pred_obj_scores:
                object_score = decoder.pred_obj_score_head(hs[:, 0, :])[:, 0].float()
            else:  # what sam2 reports when the model has no object-score head
                object_score = torch.full((count,), 10.0, device=self.device)
            reads = [self._read_cells(None if areas is None else areas[k]) for k in range(count)]
            if self.crop_upscaling:
                masks, order = self._decode_by_area(src, hyper_in, iou_pred, reads)
            else:
                masks, order = self._decode_whole_grid(src, hyper_in, iou_pred, reads)
            scores = iou_pred.cpu().numpy()
        ranked = np.take_along_axis(scores, order, axis=1)
        return DecodedMasks(masks[:, 0], ranked[:, 0].astype(np.float32), object_score.cpu().numpy().astype(np.float32),
                            masks[:, 1:], ranked[:, 1:].astype(np.float32))

    def _decode_by_area(self, src, hyper_in, iou_pred, reads) -> tuple[np.ndarray, np.ndarray]:
        """Each box upscaled over the embedding cells its area needs: (N, 4, h, w) masks,
        the chosen one first, then the others in SAM2's order (NOT_DECODED outside the
        area), and for each box the mask indexes in that order (N, 4)."""
        count = len(reads)
        tokens = hyper_in.shape[1]
        masks = np.full((count, tokens, LOW_RES_SIDE, LOW_RES_SIDE), NOT_DECODED, dtype=np.float32)
        order = np.empty((count, tokens), dtype=np.int64)
        for k, (rows, cols) in enumerate(reads):
            block_rows, block_cols = embedding_span(rows), embedding_span(cols)
            block = self._upscale(src[k:k + 1], hyper_in[k:k + 1], block_rows, block_cols)
            read = block[:, :, rows.start - 4 * block_rows.start:rows.stop - 4 * block_rows.start,
                         cols.start - 4 * block_cols.start:cols.stop - 4 * block_cols.start]
            chosen = self._chosen_mask(read[0], iou_pred[k])
            order[k] = [chosen] + [i for i in range(tokens) if i != chosen]
            masks[k, :, 4 * block_rows.start:4 * block_rows.stop, 4 * block_cols.start:4 * block_cols.stop] = \
                block[0, order[k]].float().cpu().numpy()
        return masks, order

    def _decode_whole_grid(self, src, hyper_in, iou_pred, reads) -> tuple[np.ndarray, np.ndarray]:
        """The batch upscaled over the whole grid at once, each box's choice judged on the
        cells it reads, all on the device; then one transfer. Same result as
        `_decode_by_area` over the areas."""
        import torch

        whole = _Span(0, EMBEDDING_SIDE)
        masks = self._upscale(src, hyper_in, whole, whole).float()  # (N, 4, 256, 256)
        count, tokens = masks.shape[:2]
        chosen = self._chosen_masks(masks, iou_pred, reads)
        others = torch.arange(tokens, device=masks.device).expand(count, tokens)
        others = others[others != chosen[:, None]].view(count, tokens - 1)
        order = torch.cat([chosen[:, None], others], dim=1)
        ordered = torch.take_along_dim(masks, order[:, :, None, None], dim=1)
        return ordered.cpu().numpy(), order.cpu().numpy()

    def _chosen_mask(self, read, iou) -> int:
        """MaskDecoder.forward's choice for one single-mask output, from all its masks over
        the cells read (4, h, w): mask 0, or, when `dynamic_multimask_via_stability` finds
        it unstable there, the multi-mask output with the highest predicted IoU."""
        decoder = self.model.sam_mask_decoder
        if not decoder.dynamic_multimask_via_stability:
            return 0
        if bool(decoder._get_stability_scores(read[0:1])[0] >= decoder.dynamic_multimask_stability_thresh):
            return 0
        return 1 + int(iou[1:].argmax())

    def _chosen_masks(self, masks, iou_pred, reads):
        """`_chosen_mask` for a batch over the whole grid (N, 4, h, w), on the device: the
        stability of mask 0 counted over each box's cells only."""
        import torch

        decoder = self.model.sam_mask_decoder
        count = masks.shape[0]
        if not decoder.dynamic_multimask_via_stability:
            return torch.zeros(count, dtype=torch.int64, device=masks.device)
        bounds = torch.tensor([[r.start, r.stop, c.start, c.stop] for r, c in reads], device=masks.device)
        cells = torch.arange(masks.shape[-1], device=masks.device)
        in_rows = (cells[None, :] >= bounds[:, 0:1]) & (cells[None, :] < bounds[:, 1:2])
        in_cols = (cells[None, :] >= bounds[:, 2:3]) & (cells[None, :] < bounds[:, 3:4])
        read = in_rows[:, :, None] & in_cols[:, None, :]
        delta = decoder.dynamic_multimask_stability_delta
        first = masks[:, 0]
        intersections = ((first > delta) & read).sum(dim=(-1, -2)).float()
        unions = ((first > -delta) & read).sum(dim=(-1, -2)).float()
        stability = torch.where(unions > 0, intersections / unions.clamp(min=1), torch.ones_like(unions))
        best_other = 1 + iou_pred[:, 1:].argmax(dim=1)
        stable = stability >= decoder.dynamic_multimask_stability_thresh
        return torch.where(stable, torch.zeros_like(best_other), best_other)

    def _read_cells(self, area: np.ndarray | None) -> tuple[_Span, _Span]:
        """The low-resolution rows and columns the engine reads for `area` (window pixels
        col0, row0, col1, row1, end-exclusive); every cell when None."""
        if area is None:
            return _Span(0, LOW_RES_SIDE), _Span(0, LOW_RES_SIDE)
        height, width = self._window_hw
        col0, row0, col1, row1 = (int(v) for v in area)
        return low_res_span(max(row0, 0), min(row1, height), height), low_res_span(max(col0, 0), min(col1, width), width)

    def _prompt_tokens(self, boxes: np.ndarray):
        """The decoder's input tokens for box prompts: its output tokens, then each box's two corners."""
        import torch

        model = self.model
        decoder = model.sam_mask_decoder
        height, width = self._window_hw
        corners = torch.as_tensor(np.asarray(boxes), dtype=torch.float, device=self.device).reshape(-1, 2, 2)
        # Window pixels -> the model's input frame (the window stretched to side x side).
        corners = corners / torch.tensor([width, height], dtype=torch.float, device=self.device) * model.image_size
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=self.device).repeat(len(corners), 1)
        sparse, _ = model.sam_prompt_encoder(points=(corners, corner_labels), boxes=None, masks=None)
        heads = [decoder.obj_score_token.weight] if decoder.pred_obj_scores else []
        output_tokens = torch.cat(heads + [decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        return torch.cat((output_tokens.unsqueeze(0).expand(len(corners), -1, -1), sparse), dim=1)

    def _upscale(self, src, hyper_in, rows: _Span, cols: _Span):
        """MaskDecoder.predict_masks' upscaling and mask product over embedding `rows` x
        `cols`: (n, masks, 4 * rows, 4 * cols) logits."""
        decoder = self.model.sam_mask_decoder
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = self._high_res
        r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
        up = act1(ln1(dc1(src[:, :, r0:r1, c0:c1]) + feat_s1[:, :, 2 * r0:2 * r1, 2 * c0:2 * c1]))
        up = act2(dc2(up) + feat_s0[:, :, 4 * r0:4 * r1, 4 * c0:4 * c1])
        count, channels, height, width = up.shape
        return (hyper_in @ up.view(count, channels, height * width)).view(count, -1, height, width)

    def _first_block_projections(self, image_embed) -> dict:
        """What the decoder's first two-way block computes from the image tokens alone: a
        box prompt's dense embedding is the constant no_mask_embed, so these are the same
        for every box of the window. Called inside inference mode and the decoder's autocast."""
        model = self.model
        block = model.sam_mask_decoder.transformer.layers[0]
        no_mask = model.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (image_embed + no_mask).flatten(2).permute(0, 2, 1)
        key_pe = self._dense_pe.flatten(2).permute(0, 2, 1)
        keyed = keys + key_pe
        return {
            "keys": keys,
            "key_pe": key_pe,
            "k": block.cross_attn_token_to_image.k_proj(keyed),
            "v": block.cross_attn_token_to_image.v_proj(keys),
            "q": block.cross_attn_image_to_token.q_proj(keyed),
        }

    def _transformer(self, tokens):
        """sam2's TwoWayTransformer.forward for these tokens over the encoded window, with
        the first block's projections of the image tokens taken from encode."""
        import torch.nn.functional as F

        transformer = self.model.sam_mask_decoder.transformer
        first, rest = transformer.layers[0], transformer.layers[1:]
        cached = self._first_block
        count = tokens.shape[0]
        key_pe = cached["key_pe"].expand(count, -1, -1)

        def heads(attention, x):
            return attention._separate_heads(x, attention.num_heads)

        # TwoWayAttentionBlock.forward of the first block (skip_first_layer_pe=True).
        queries = first.norm1(first.self_attn(q=tokens, k=tokens, v=tokens))
        to_image = first.cross_attn_token_to_image
        out = F.scaled_dot_product_attention(
            heads(to_image, to_image.q_proj(queries + tokens)),
            heads(to_image, cached["k"].expand(count, -1, -1)),
            heads(to_image, cached["v"].expand(count, -1, -1)),
        )
        queries = first.norm2(queries + to_image.out_proj(to_image._recombine_heads(out)))
        queries = first.norm3(queries + first.mlp(queries))
        to_token = first.cross_attn_image_to_token
        out = F.scaled_dot_product_attention(
            heads(to_token, cached["q"].expand(count, -1, -1)),
            heads(to_token, to_token.k_proj(queries + tokens)),
            heads(to_token, to_token.v_proj(queries)),
        )
        keys = first.norm4(cached["keys"] + to_token.out_proj(to_token._recombine_heads(out)))
        # The other blocks and the final attention, as TwoWayTransformer.forward runs them.
        for layer in rest:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
        attention = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
        queries = transformer.norm_final_attn(queries + attention)
        return queries, keys
