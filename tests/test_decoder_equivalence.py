"""Sam2Predictor.decode against sam2's own, unmodified mask decoder.

The predictor upscales only over the embedding cells each object's area needs and
shares the first attention block's image projections across boxes (see model.py). Over
every low-resolution cell the engine reads for an area, its logits, predicted IoU and
object score must be the unmodified decoder's, for areas anywhere in the window, for an
area grown after a first decode, and for the whole window (areas=None).
"""

from __future__ import annotations

import numpy as np
import pytest

from sam2_refine.engine import resize_region
from sam2_refine.model import NOT_DECODED, Sam2Predictor
from sam2_refine.seam import LOW_RES_SIDE, Window, low_res_span
from tests.conftest import TINY

# (window height, width): wider than tall, and a window smaller than the low-res grid.
WINDOWS = [(300, 500), (70, 90)]
TOLERANCE = 2e-4  # fp32; the shared projections change the summation order only


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint_dir):
    return Sam2Predictor(tiny_checkpoint_dir / TINY, device="cpu", precision="fp32")


def boxes_and_areas(height: int, width: int) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Boxes in window pixels, and per box the areas decoded: its box plus a margin, the
    same area grown (as the engine grows it when a mask reaches its edge), the window."""
    boxes = np.array([[0.1 * width, 0.2 * height, 0.3 * width, 0.5 * height],
                      [0.6 * width, 0.55 * height, 0.98 * width, 0.97 * height],
                      [0, 0, width, height]], np.float32)
    areas = []
    for x0, y0, x1, y1 in boxes:
        margin = max(2.0, 0.25 * max(x1 - x0, y1 - y0))
        tight = np.array([max(0, x0 - margin), max(0, y0 - margin), min(width, x1 + margin), min(height, y1 + margin)])
        grown = np.array([max(0, x0 - 3 * margin), max(0, y0 - 3 * margin), min(width, x1 + 3 * margin),
                          min(height, y1 + 3 * margin)])
        areas += [tight.astype(int), grown.astype(int)]
    return boxes, areas + [None]


def reference_decode(predictor: Sam2Predictor, boxes: np.ndarray, stability: bool):
    """sam2's MaskDecoder.predict_masks over the whole window, unmodified: all four masks,
    their IoU predictions and the object-score logits, for each box alone."""
    import torch

    model = predictor.model
    decoder = model.sam_mask_decoder
    height, width = predictor._window_hw
    results = []
    with torch.inference_mode():
        for box in boxes:
            corners = torch.as_tensor(box, dtype=torch.float).reshape(1, 2, 2)
            corners = corners / torch.tensor([width, height], dtype=torch.float) * model.image_size
            sparse, dense = model.sam_prompt_encoder(points=(corners, torch.tensor([[2, 3]], dtype=torch.int)),
                                                     boxes=None, masks=None)
            masks, iou, _, object_score = decoder.predict_masks(
                image_embeddings=predictor._image_embed, image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, repeat_image=False,
                high_res_features=predictor._high_res,
            )
            results.append((masks[0].numpy(), iou[0].numpy(), float(object_score[0, 0])))
    return results


def chosen_by_sam2(predictor, masks: np.ndarray, iou: np.ndarray, rows, cols) -> tuple[np.ndarray, float]:
    """The single-mask output sam2's own `_dynamic_multimask_via_stability` picks, judged
    on the cells read (rows x cols of the low-res grid); its full-grid logits and IoU."""
    import torch

    decoder = predictor.model.sam_mask_decoder
    read = torch.from_numpy(masks[None, :, rows.start:rows.stop, cols.start:cols.stop].copy())
    picked, picked_iou = decoder._dynamic_multimask_via_stability(read, torch.from_numpy(iou[None]))
    index = next(i for i in range(len(masks)) if np.array_equal(read[0, i].numpy(), picked[0, 0].numpy()))
    return masks[index], float(picked_iou[0, 0])


@pytest.mark.parametrize("window_hw", WINDOWS)
@pytest.mark.parametrize("stability", [True, False])
@pytest.mark.parametrize("crop_upscaling", [True, False])
def test_decode_equals_the_unmodified_decoder_over_every_cell_the_engine_reads(
    predictor, window_hw, stability, crop_upscaling
):
    height, width = window_hw
    image = np.random.default_rng(height).random((height, width, 3), dtype=np.float32)
    predictor.encode(image, Window(0, 0, width, height))
    boxes, areas = boxes_and_areas(height, width)
    decoder = predictor.model.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability  # what build_sam2 gives official configs
    decoder.dynamic_multimask_via_stability = stability
    predictor.crop_upscaling = crop_upscaling
    try:
        reference = reference_decode(predictor, boxes, stability)
        for area in areas:
            decoded = predictor.decode(boxes, None if area is None else np.repeat(area[None], len(boxes), axis=0))
            region = (0, 0, width, height) if area is None else tuple(int(v) for v in area)
            rows = low_res_span(region[1], region[3], height) if area is not None else low_res_span(0, height, height)
            cols = low_res_span(region[0], region[2], width) if area is not None else low_res_span(0, width, width)
            for k, (masks, iou, object_score) in enumerate(reference):
                if stability:
                    expected, expected_iou = chosen_by_sam2(predictor, masks, iou, rows, cols)
                else:
                    expected, expected_iou = masks[0], float(iou[0])
                np.testing.assert_allclose(
                    resize_region(decoded.logits[k], height, width, region),
                    resize_region(expected, height, width, region), atol=TOLERANCE,
                )
                assert decoded.predicted_iou[k] == pytest.approx(expected_iou, abs=TOLERANCE)
                assert decoded.object_score[k] == pytest.approx(object_score, abs=TOLERANCE)
    finally:
        decoder.dynamic_multimask_via_stability = True
        predictor.crop_upscaling = True


def test_whole_window_decode_equals_sam2s_image_predictor(predictor, tiny_checkpoint_dir):
    """areas=None is exactly SAM2ImagePredictor.predict(box, multimask_output=False)."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = np.random.default_rng(3).random((300, 500, 3), dtype=np.float32)
    boxes = np.array([[10, 20, 90, 110], [400.5, 200.5, 480, 290], [0, 0, 500, 300]], np.float32)
    predictor.encode(image, Window(0, 0, 500, 300))
    decoded = predictor.decode(boxes)
    reference = SAM2ImagePredictor(
        build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", str(tiny_checkpoint_dir / TINY), device="cpu")
    )
    reference.set_image(image)
    for k, box in enumerate(boxes):
        _, iou, low_res = reference.predict(box=box, multimask_output=False, return_logits=True)
        np.testing.assert_allclose(decoded.logits[k], low_res[0], atol=2e-3)
        assert decoded.predicted_iou[k] == pytest.approx(float(iou[0]), abs=1e-4)
    np.testing.assert_array_equal(predictor.decode_low_res(boxes), decoded.logits)


def test_cells_outside_the_area_are_not_decoded(predictor):
    predictor.encode(np.random.default_rng(1).random((256, 256, 3), dtype=np.float32), Window(0, 0, 256, 256))
    area = np.array([[100, 100, 140, 130]])
    logits = predictor.decode(np.array([[110, 105, 130, 125]], np.float32), area).logits[0]
    decoded = logits != NOT_DECODED
    assert decoded[100:130, 100:140].all()
    assert 0 < decoded.sum() < 0.1 * LOW_RES_SIDE**2


def test_windows_encoded_together_decode_as_when_encoded_one_at_a_time(predictor):
    """What a GPU does with batches of windows (encode_batch), here with two on the CPU."""
    rng = np.random.default_rng(11)
    windows = [Window(0, 0, 320, 240), Window(100, 50, 256, 256)]
    images = [rng.random((w.height, w.width, 3), dtype=np.float32) for w in windows]
    boxes = np.array([[20, 30, 90, 110], [150, 100, 230, 200]], np.float32)
    alone = []
    for image, window in zip(images, windows):
        predictor.encode(image, window)
        alone.append(predictor.decode(boxes))
    together = predictor.encode_batch(images, windows)
    assert len(together) == 2
    for encoded, expected in zip(together, alone):
        predictor.use(encoded)
        decoded = predictor.decode(boxes)
        np.testing.assert_allclose(decoded.logits, expected.logits, atol=TOLERANCE)
        np.testing.assert_allclose(decoded.candidates, expected.candidates, atol=TOLERANCE)
        np.testing.assert_allclose(decoded.predicted_iou, expected.predicted_iou, atol=TOLERANCE)


def test_candidates_are_sam2s_other_masks_for_the_box(predictor):
    """Besides the chosen mask, decode returns the other three masks of the same pass, in
    sam2's order, with sam2's IoU estimate of each."""
    height, width = 300, 500
    predictor.encode(np.random.default_rng(5).random((height, width, 3), dtype=np.float32), Window(0, 0, width, height))
    boxes, _ = boxes_and_areas(height, width)
    decoded = predictor.decode(boxes)
    reference = reference_decode(predictor, boxes, True)
    for k, (masks, iou, _) in enumerate(reference):
        chosen, chosen_iou = chosen_by_sam2(predictor, masks, iou, low_res_span(0, height, height),
                                            low_res_span(0, width, width))
        index = next(i for i in range(4) if np.allclose(masks[i], chosen, atol=TOLERANCE))
        others = [i for i in range(4) if i != index]
        assert decoded.candidates.shape[1:] == (3, LOW_RES_SIDE, LOW_RES_SIDE)
        np.testing.assert_allclose(decoded.candidates[k], masks[others], atol=TOLERANCE)
        np.testing.assert_allclose(decoded.candidate_iou[k], iou[others], atol=TOLERANCE)
