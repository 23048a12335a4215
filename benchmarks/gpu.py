"""The CUDA path's checks, before the GPU table (`benchmarks/gpu.sh` runs this, then the table).

    python3 benchmarks/gpu.py

On a CUDA machine: the predictor on the GPU (its description, GPU name, bf16 autocast
and TF32, is asserted by tests/test_device.py, which gpu.sh runs next); encode and decode; windows encoded in a batch
equal to one at a time; the whole-grid decode equal to the per-area one; and the GPU's
masks against the CPU's fp32 ones (bf16 on the GPU: agreement, not equality). Exits 1 if
a check fails, 2 if there is no CUDA device. Random-init weights (written to
benchmarks/checkpoints on first use), as everywhere in the benchmarks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.run import CHECKPOINT_DIR, CONFIGS, ensure_checkpoints  # noqa: E402

FAILED: list[str] = []


def check(name: str, passed: bool, detail: str = "") -> None:
    print(f"- {'PASS' if passed else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not passed:
        FAILED.append(name)


def masks_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a > 0, b > 0).sum()
    return float(np.logical_and(a > 0, b > 0).sum() / union) if union else 1.0


def main() -> int:
    import torch

    from sam2_refine.model import Sam2Predictor, Window

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (run this on a GPU machine)")
        return 2
    ensure_checkpoints()
    name = torch.cuda.get_device_name(0)
    major, minor = torch.cuda.get_device_capability(0)
    print(f"- GPU: {name}, compute capability {major}.{minor}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    checkpoint = CHECKPOINT_DIR / CONFIGS["tiny"][0]
    started = time.perf_counter()
    gpu = Sam2Predictor(checkpoint)
    print(f"- model built in {time.perf_counter() - started:.1f} s on {gpu.device_description}")
    # The device's description (name, bf16, TF32) is asserted by tests/test_device.py, which gpu.sh runs next.
    check("device is CUDA", gpu.device.startswith("cuda"), gpu.device)

    rng = np.random.default_rng(0)
    windows = [Window(0, 0, 1024, 1024), Window(512, 256, 700, 500)]
    images = [rng.random((w.height, w.width, 3), dtype=np.float32) for w in windows]
    boxes = np.array([[100, 120, 180, 210], [300, 260, 420, 330], [10, 10, 60, 40]], np.float32)
    areas = np.array([[90, 110, 190, 220], [290, 250, 430, 340], [0, 0, 70, 50]], np.int64)

    alone = []
    for image, window in zip(images, windows):
        gpu.encode(image, window)
        alone.append(gpu.decode(boxes, areas))
    check("encode batch size sized from the GPU's memory", gpu.encode_batch_size >= 1,
          f"{gpu.encode_batch_size} windows per batch")
    together = gpu.encode_batch(images, windows)
    for k, (encoded, expected) in enumerate(zip(together, alone)):
        gpu.use(encoded)
        decoded = gpu.decode(boxes, areas)
        ious = [masks_iou(a, b) for a, b in zip(decoded.logits, expected.logits)]
        check(f"window {k}: batched encoding decodes as one at a time", min(ious) >= 0.99, f"mask IoU min {min(ious):.4f}")

    gpu.encode(images[0], windows[0])
    whole = gpu.decode(boxes, areas)
    gpu.crop_upscaling = True
    by_area = gpu.decode(boxes, areas)
    gpu.crop_upscaling = False
    differences = []
    for k, (col0, row0, col1, row1) in enumerate(areas // 4):
        differences.append(float(np.abs(whole.logits[k, row0:row1, col0:col1] - by_area.logits[k, row0:row1, col0:col1]).max()))
    check("whole-grid decode equals per-area decode over the areas", max(differences) < 0.05,
          f"max |difference| {max(differences):.4f}")

    cpu = Sam2Predictor(checkpoint, device="cpu", precision="fp32")
    cpu.encode(images[0], windows[0])
    reference = cpu.decode(boxes, areas)
    ious = [masks_iou(a[r0:r1, c0:c1], b[r0:r1, c0:c1])
            for a, b, (c0, r0, c1, r1) in zip(whole.logits, reference.logits, areas // 4)]
    check("GPU (bf16) masks agree with CPU fp32", min(ious) >= 0.9, f"mask IoU over the areas: {[round(i, 4) for i in ious]}")

    torch.cuda.synchronize()
    gpu.encode(images[0], windows[0])
    many = np.repeat(boxes, 22, axis=0)[:64]
    many_areas = np.repeat(areas, 22, axis=0)[:64]
    for _ in range(3):
        gpu.decode(many, many_areas)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        gpu.decode(many, many_areas)
    torch.cuda.synchronize()
    per_box = (time.perf_counter() - started) / (10 * len(many))
    started = time.perf_counter()
    for _ in range(5):
        gpu.encode_batch(images[:1], windows[:1])
    torch.cuda.synchronize()
    print(f"- decode {1e3 * per_box:.3f} ms per box (batches of 64), encode "
          f"{1e3 * (time.perf_counter() - started) / 5:.1f} ms per window (tiny)")
    print(f"{len(FAILED)} check(s) failed: {', '.join(FAILED)}" if FAILED else "all CUDA checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
