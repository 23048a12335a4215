"""What only happens on a CUDA GPU, caught on the CPU: running out of GPU memory in the
encoder and the decoder (a fake out-of-memory error raised where torch raises it), bf16
logits (as CUDA autocast makes them) judged alike by the per-area and the whole-grid
decode, and the encoder's batch sized from the measured peak."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from sam2_refine.errors import WorkerError
from sam2_refine.model import MAX_ENCODE_BATCH, Sam2Predictor, _encode_batch_for
from sam2_refine.sam2_decoder import EMBEDDING_SIDE, Encoded
from sam2_refine.seam import Span, Window
from tests.conftest import TINY


class OutOfMemoryError(RuntimeError):
    """What torch.cuda raises (torch.OutOfMemoryError), by name."""


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint_dir):
    return Sam2Predictor(tiny_checkpoint_dir / TINY, device="cpu", precision="fp32")


def test_an_encoder_batch_that_runs_out_of_memory_is_halved_after_its_tensors_are_released(predictor, monkeypatch):
    """8 windows where only 2 fit: tried as 8, then 4, then 2 at a time (no cascade down to
    one window), each retry made once the failed attempt's tensors are gone."""

    class Tensors:
        """Stands for what a failed attempt allocated."""

    attempts: list[int] = []
    failed: list[weakref.ref] = []
    alive_at_retry: list[bool] = []

    def encode_together(window_images, windows):
        gc.collect()
        alive_at_retry.extend(ref() is not None for ref in failed)
        attempts.append(len(windows))
        allocated = Tensors()
        if len(windows) > 2:
            failed.append(weakref.ref(allocated))
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [f"encoding of {window.left}" for window in windows]

    monkeypatch.setattr(predictor, "device", "cuda")
    monkeypatch.setattr(predictor, "_encode_together", encode_together)
    monkeypatch.setattr(predictor, "encode_batch_size", 8)
    windows = [Window(left, 0, 64, 64) for left in range(8)]
    encoded = predictor.encode_batch([np.zeros((64, 64, 3), np.float32)] * 8, windows)
    assert encoded == [f"encoding of {left}" for left in range(8)]
    assert attempts == [8, 4, 2, 2, 2, 2]
    assert not any(alive_at_retry), "a retry ran while the failed attempt's tensors were still held"
    assert predictor.encode_batch_size == 2


def test_one_window_that_does_not_fit_the_gpu_is_a_clear_error(predictor, monkeypatch):
    def encode_together(window_images, windows):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(predictor, "device", "cuda")
    monkeypatch.setattr(predictor, "_encode_together", encode_together)
    with pytest.raises(WorkerError, match="GPU ran out of memory") as caught:
        predictor.encode_batch([np.zeros((64, 64, 3), np.float32)] * 2, [Window(0, 0, 64, 64)] * 2)
    assert caught.value.title == "GPU out of memory"


def boxes_and_areas(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(count)
    corners = rng.uniform(10, 200, (count, 2))
    sizes = rng.uniform(10, 40, (count, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1).astype(np.float32)
    areas = np.concatenate([np.floor(corners - 10), np.ceil(corners + sizes + 10)], axis=1).astype(np.int64)
    return boxes, np.clip(areas, 0, 256)


def test_a_decode_that_runs_out_of_memory_halves_its_boxes_per_pass(predictor, monkeypatch):
    """64 boxes where 16 fit: the same masks as decoded at once, in 16-box passes."""
    predictor.encode(np.random.default_rng(0).random((256, 256, 3), dtype=np.float32), Window(0, 0, 256, 256))
    boxes, areas = boxes_and_areas(64)
    expected = predictor.decode_crops(boxes, areas)
    final_attention = predictor.model.sam_mask_decoder.transformer.final_attn_token_to_image
    passes: list[int] = []
    real_forward = final_attention.forward

    def forward(q, k, v):
        passes.append(len(q))
        if len(q) > 16:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_forward(q, k, v)

    monkeypatch.setattr(predictor, "device", "cuda")
    monkeypatch.setattr(final_attention, "forward", forward)
    decoded = predictor.decode_crops(boxes, areas)
    assert passes == [64, 32, 16, 16, 16, 16]
    for k, (origin, expected_origin) in enumerate(zip(decoded.origins, expected.origins)):
        assert tuple(origin) == tuple(expected_origin)
        height, width = expected.logits.shape[1:]
        np.testing.assert_allclose(decoded.logits[k][:height, :width], expected.logits[k], atol=1e-5)
    np.testing.assert_allclose(decoded.predicted_iou, expected.predicted_iou, atol=1e-5)
    monkeypatch.setattr(predictor, "_decode_pass", None)


def test_one_box_that_does_not_fit_the_gpu_is_a_clear_error(predictor, monkeypatch):
    predictor.encode(np.zeros((64, 64, 3), np.float32), Window(0, 0, 64, 64))
    final_attention = predictor.model.sam_mask_decoder.transformer.final_attn_token_to_image

    def forward(q, k, v):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(predictor, "device", "cuda")
    monkeypatch.setattr(final_attention, "forward", forward)
    monkeypatch.setattr(predictor, "_decode_pass", None)
    with pytest.raises(WorkerError, match="GPU ran out of memory") as caught:
        predictor.decode_crops(np.array([[8, 8, 40, 40], [10, 10, 30, 30]], np.float32),
                               np.array([[0, 0, 64, 64], [0, 0, 64, 64]]))
    assert caught.value.title == "GPU out of memory"


def test_bf16_logits_are_judged_alike_by_the_per_area_and_the_whole_grid_decode(predictor, monkeypatch):
    """SAM2 falls back to its best other mask when mask 0 is unstable over the cells read
    (stability < 0.98: cells above +0.05 over cells above -0.05). With bf16 logits, as CUDA
    autocast gives them, 3 of 100 cells at bf16's 0.05 (0.050049) make mask 0 unstable if
    +-0.05 is rounded to bf16 too, stable if judged in fp32: both decodes must agree."""
    import torch

    torch_bf16 = torch.bfloat16
    near_delta = torch.tensor(0.05, dtype=torch_bf16)
    assert float(near_delta) > 0.05
    grid = torch.full((1, 4, 4 * EMBEDDING_SIDE, 4 * EMBEDDING_SIDE), -5.0, dtype=torch_bf16)
    grid[0, 0, 40:50, 60:70] = 1.0
    grid[0, 0, 40, 60:63] = near_delta  # 3 of the 100 cells read
    for other in (1, 2, 3):
        grid[0, other, 40:50, 60:70] = 2.0
    reads = [(Span(40, 50), Span(60, 70))]
    iou = torch.tensor([[0.9, 0.2, 0.8, 0.1]])  # best other: mask 2

    def upscale(encoded, src, hyper_in, rows, cols):
        return grid[:, :, 4 * rows.start:4 * rows.stop, 4 * cols.start:4 * cols.stop].expand(len(src), -1, -1, -1)

    decoder = predictor._decoder
    monkeypatch.setattr(decoder, "upscale", upscale)
    encoded = Encoded((256, 256), None, [], {})
    src, hyper_in = torch.zeros(1, 1), torch.zeros(1, 4)
    _, _, by_area = decoder._decode_by_area(encoded, src, hyper_in, iou, reads)
    _, _, whole_grid = decoder._decode_whole_grid(encoded, src, hyper_in, iou, reads)
    assert by_area[0, 0] == whole_grid[0, 0] == 0  # stable when judged in fp32, as sam2 judges fp32 logits


@pytest.mark.parametrize(("peak_gb", "free_gb", "windows"), [(2.0, 20.0, 5), (2.0, 3.0, 1), (0.5, 70.0, 8), (0.0, 1.0, 8)])
def test_the_encoder_batch_is_sized_from_the_measured_peak(peak_gb, free_gb, windows):
    """As many windows as fit half the free GPU memory at the first window's peak, 1 to 8."""
    assert _encode_batch_for(int(peak_gb * 2**30), int(free_gb * 2**30)) == windows <= MAX_ENCODE_BATCH
