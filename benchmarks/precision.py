"""bf16 autocast against fp32 on this CPU: speed, and how much the masks move.

    .venv/bin/python benchmarks/precision.py [--size 2048 --count 100] [--windows 8] [--repeat 3]

In-process, on the benchmark frame of `--size`² × `--count` (benchmarks/workload.py), with
the Auto windows the worker would encode (sam2_refine/tiling.py), tiny, random-init
weights. Three predictors with the same weights encode the same windows and decode every
object over its search area: `fp32`; `bf16 encoder`, as the worker runs on a CPU with
native bf16 (the image encoder under bf16 autocast, the mask decoder in fp32); and
`bf16 both`, the decoder under bf16 autocast too (what CUDA runs).

Speed: median seconds per encode (1024² model input) and ms per decoded box at batch sizes
1, 4 and 8; and, for comparison, sam2's unmodified mask decoder (MaskDecoder.forward over
the whole 256² grid, fp32) on the same boxes.

Agreement with fp32, per object, over its search area resized to image pixels as the
engine does:
- IoU of the thresholded masks (logits > 0);
- outline displacement: at each vertex of the fp32 outline (the zero crossing of the
  fp32 logits, marching squares), |bf16 logit| / |gradient of the bf16 logits| is the
  first-order distance in image pixels to the bf16 outline; reported as the share of
  outline vertices, and of objects, where it exceeds 0.5 pixel.
Random-init weights make the masks noise with outlines everywhere in the area, so these
figures are pessimistic about which pixels flip; the displacement is the part that
carries over to trained weights, whose logits cross zero more steeply.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.machine import machine_lines  # noqa: E402
from benchmarks.workload import make_workload  # noqa: E402

CHECKPOINT = REPO / "benchmarks" / "checkpoints" / "sam2.1_hiera_tiny.pt"
MOVED = 0.5  # image pixels


def frame_image(image: np.ndarray) -> np.ndarray:
    """The uint16 frame as the worker's window images: float32 (rows, cols, 3) in [0, 1]."""
    scaled = (image.astype(np.float32) - image.min()) / max(1.0, float(image.max() - image.min()))
    return np.repeat(scaled[:, :, None], 3, axis=2)


def window_pixels(box, window) -> np.ndarray:
    return np.array([[box.x0 - window.left, box.y0 - window.top, box.x1 - window.left, box.y1 - window.top]],
                    np.float32)


def displacement(fp32: np.ndarray, bf16: np.ndarray) -> np.ndarray:
    """First-order distance (pixels) from each vertex of fp32's zero contour to bf16's."""
    from skimage.measure import find_contours

    contours = find_contours(fp32, 0.0)
    if not contours:
        return np.zeros(0)
    points = np.concatenate(contours)
    grad_rows, grad_cols = np.gradient(bf16)
    rows = np.clip(np.round(points[:, 0]).astype(int), 0, fp32.shape[0] - 1)
    cols = np.clip(np.round(points[:, 1]).astype(int), 0, fp32.shape[1] - 1)
    r0, c0 = np.floor(points[:, 0]).astype(int), np.floor(points[:, 1]).astype(int)
    r1, c1 = np.minimum(r0 + 1, fp32.shape[0] - 1), np.minimum(c0 + 1, fp32.shape[1] - 1)
    fr, fc = points[:, 0] - r0, points[:, 1] - c0
    value = ((1 - fr) * ((1 - fc) * bf16[r0, c0] + fc * bf16[r0, c1])
             + fr * ((1 - fc) * bf16[r1, c0] + fc * bf16[r1, c1]))
    slope = np.hypot(grad_rows[rows, cols], grad_cols[rows, cols])
    return np.abs(value) / np.maximum(slope, 1e-6)


def bf16_everywhere(checkpoint: Path):
    """A Sam2Predictor whose mask decoder also runs under CPU bf16 autocast."""
    import torch

    from sam2_refine.model import Sam2Predictor

    class Bf16Both(Sam2Predictor):
        def _autocast(self, stage: str):
            return torch.autocast("cpu", dtype=torch.bfloat16)

    return Bf16Both(checkpoint, device="cpu", precision="bf16")


def unmodified_decode(predictor, boxes: np.ndarray) -> None:
    """sam2's MaskDecoder.forward for these boxes, as SAM2ImagePredictor calls it."""
    import torch

    model = predictor.model
    height, width = predictor._window_hw
    with torch.inference_mode():
        corners = torch.as_tensor(boxes, dtype=torch.float).reshape(-1, 2, 2)
        corners = corners / torch.tensor([width, height], dtype=torch.float) * model.image_size
        labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(len(boxes), 1)
        sparse, dense = model.sam_prompt_encoder(points=(corners, labels), boxes=None, masks=None)
        model.sam_mask_decoder(image_embeddings=predictor._image_embed, image_pe=predictor._dense_pe,
                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                               multimask_output=False, repeat_image=len(boxes) > 1,
                               high_res_features=predictor._high_res)


def median_of(times: list[float]) -> str:
    return f"{statistics.median(times):.3g} (min {min(times):.3g}, max {max(times):.3g}, n={len(times)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--windows", type=int, default=8, help="encode at most this many Auto windows")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the first window")
    args = parser.parse_args()

    import torch

    from sam2_refine.engine import prompt_box, resize_region
    from sam2_refine.model import Sam2Predictor
    from sam2_refine.sam2_build import native_bf16_flags
    from sam2_refine.tiling import auto_windows, search_area

    print(f"$ .venv/bin/python benchmarks/precision.py --size {args.size} --count {args.count} "
          f"--windows {args.windows} --repeat {args.repeat}")
    for line in machine_lines():
        print(line)
    print(f"native bf16 flags: {native_bf16_flags() or 'none'}")
    workload = make_workload(args.size, args.count)
    image = frame_image(workload.image)
    boxes = [prompt_box(outline, args.size, args.size) for outline in workload.outlines]
    windows = auto_windows(boxes, args.size, args.size)[:args.windows]
    predictors = {"fp32": Sam2Predictor(CHECKPOINT, device="cpu", precision="fp32"),
                  "bf16 encoder": Sam2Predictor(CHECKPOINT, device="cpu", precision="bf16"),
                  "bf16 both": bf16_everywhere(CHECKPOINT)}

    # Speed: alternate the two on the first window.
    window, members = windows[0]
    crop = np.ascontiguousarray(image[window.top:window.top + window.height, window.left:window.left + window.width])
    encode_s = {name: [] for name in predictors}
    decode_ms = {(name, batch): [] for name in predictors for batch in (1, 4, 8)}
    for _ in range(args.repeat):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictor.encode(crop, window)
            encode_s[name].append(time.perf_counter() - start)
            for batch in (1, 4, 8):
                chosen = [members[i % len(members)] for i in range(8)]
                prompts = np.concatenate([window_pixels(boxes[i], window) for i in chosen])
                areas = np.array([[a - o for a, o in zip(search_area(boxes[i], args.size, args.size),
                                                         (window.left, window.top) * 2)] for i in chosen])
                start = time.perf_counter()
                for first in range(0, 8, batch):
                    predictor.decode(prompts[first:first + batch], areas[first:first + batch])
                decode_ms[(name, batch)].append(1000 * (time.perf_counter() - start) / 8)
    unmodified_ms = {1: [], 4: []}
    fp32 = predictors["fp32"]
    fp32.encode(crop, window)
    for _ in range(args.repeat):
        for batch in unmodified_ms:
            start = time.perf_counter()
            for first in range(0, 8, batch):
                unmodified_decode(fp32, prompts[first:first + batch])
            unmodified_ms[batch].append(1000 * (time.perf_counter() - start) / 8)
    print(f"\nthreads {torch.get_num_threads()}, load average before agreement {os.getloadavg()[0]:.2f}")
    for name in predictors:
        print(f"{name}: encode s {median_of(encode_s[name])}")
        for batch in (1, 4, 8):
            print(f"{name}: decode ms per box at batch {batch}: {median_of(decode_ms[(name, batch)])}")
    for batch, times in unmodified_ms.items():
        print(f"sam2's unmodified decoder, fp32: ms per box at batch {batch}: {median_of(times)}")

    # Agreement with fp32 over every object of the chosen windows.
    logits: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    for window, members in windows:
        crop = np.ascontiguousarray(image[window.top:window.top + window.height, window.left:window.left + window.width])
        for name, predictor in predictors.items():
            predictor.encode(crop, window)
            for i in members:
                col0, row0, col1, row1 = search_area(boxes[i], args.size, args.size)
                region = (col0 - window.left, row0 - window.top, col1 - window.left, row1 - window.top)
                low_res = predictor.decode(window_pixels(boxes[i], window), np.array([region])).logits[0]
                logits[name].append(resize_region(low_res, window.height, window.width, region))
    print(f"\nagreement with fp32 over {len(logits['fp32'])} objects in {len(windows)} windows, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name in [n for n in predictors if n != "fp32"]:
        ious, moved_vertices, objects_moved, vertices = [], 0, 0, 0
        for fp32, other in zip(logits["fp32"], logits[name]):
            a, b = fp32 > 0, other > 0
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
            moved = displacement(fp32, other)
            vertices += len(moved)
            moved_vertices += int((moved > MOVED).sum())
            objects_moved += int((moved > MOVED).any())
        ious = np.array(ious)
        print(f"{name}: mask IoU median {np.median(ious):.4f}, 5th percentile {np.percentile(ious, 5):.4f}, "
              f"min {ious.min():.4f}, share >= 0.99 {np.mean(ious >= 0.99):.2f}; outline moved > {MOVED} px at "
              f"{moved_vertices} of {vertices} outline vertices ({moved_vertices / max(vertices, 1):.2%}), "
              f"in {objects_moved} of {len(ious)} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
