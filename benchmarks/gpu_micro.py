"""Measurements beside the GPU table: benchmarks/gpu.sh's `micro` step.

    python3 benchmarks/gpu_micro.py --out OUT [--budget SECONDS] [--dry-run]

In this order (the budget may end it early; what was measured is kept):
- decode batches: tiny, the whole-frame window of the 2048² × 1000 frame encoded once, its
  boxes decoded 16, 32, 64 and 128 per call over their search areas: ms per box and peak GPU
  memory, with the decode upscaling the whole grid and (where the predictor has the switch)
  each box's area;
- encoder batches: tiny and small, 1, 2, 4 and 8 windows per `encode_batch` call: ms and
  peak GPU memory per window (1024² model input);
- attention backends (torch.nn.attention.sdpa_kernel: FLASH, EFFICIENT, MATH, CUDNN): the
  mask decoder's token-to-image attention, whose keys and values are one window's for every
  box (expanded, stride 0 over the boxes, as the predictor passes them), and its
  image-to-token attention, whose queries are; each also with the expanded tensors made
  contiguous; 16, 64 and 128 boxes; then a whole decode of 64 boxes under each backend.
Times are medians of several runs after a warm-up, each run between torch.cuda.synchronize()
calls; peak memory is torch's allocator's. A backend that cannot run an input is recorded
with its error. `--dry-run`: the same on the CPU at small sizes (no figure is a GPU's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks import gpu_record  # noqa: E402

BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH", "CUDNN_ATTENTION")


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Recorder:
    """The `micro` section of results.json, rewritten after every measurement."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.micro: dict[str, list[dict]] = {"decode_batch": [], "encode_batch": [], "attention": []}

    def add(self, kind: str, entry: dict) -> None:
        self.micro[kind].append(entry)
        print(f"- {kind}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in entry.items()), flush=True)
        if self.out:
            gpu_record.update(self.out, "micro", self.micro)


def synchronize() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_ms(run, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def peak_mb(run) -> float | None:
    """Peak GPU memory allocated by `run` above what was allocated before it (None on a CPU)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        run()
        return None
    synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def predictor_for(model: str, device: str | None):
    from benchmarks.run import CHECKPOINT_DIR, CONFIGS
    from sam2_refine.model import Sam2Predictor

    return Sam2Predictor(CHECKPOINT_DIR / CONFIGS[model][0], device=device)


def decode_batches(recorder: Recorder, budget: Budget, dry_run: bool, device: str | None) -> None:
    from benchmarks.precision import frame_image
    from benchmarks.workload import make_workload
    from sam2_refine.engine import prompt_box
    from sam2_refine.seam import Window, decode_masks
    from sam2_refine.tiling import search_area

    size, count, batches, repeat = (512, 40, (4, 8), 2) if dry_run else (2048, 1000, (16, 32, 64, 128), 5)
    workload = make_workload(size, count)
    boxes = [prompt_box(outline, size, size) for outline in workload.outlines]
    prompts = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], np.float32)
    areas = np.array([search_area(b, size, size) for b in boxes], np.int64)
    predictor = predictor_for("tiny", device)
    predictor.encode(frame_image(workload.image), Window(0, 0, size, size))
    modes = [None] if not hasattr(predictor, "crop_upscaling") else [False, True]
    for crop in modes:
        if crop is not None:
            predictor.crop_upscaling = crop
        upscaling = "per area" if crop else "whole grid"
        for batch in batches:
            if budget.left() < 5:
                return
            calls = iter(range(10**6))

            def run(batch=batch):
                first = (next(calls) * batch) % (count - batch)
                decode_masks(predictor, prompts[first:first + batch], areas[first:first + batch])

            entry = {"workload": f"{size}² × {count} whole frame, tiny", "upscaling": upscaling, "batch": batch}
            try:
                entry["ms_per_box"] = median_ms(run, repeat) / batch
                entry["peak_mb"] = peak_mb(run)
            except Exception as error:  # noqa: BLE001 (recorded)
                entry["error"] = error_text(error)
            recorder.add("decode_batch", entry)


def encoder_batches(recorder: Recorder, budget: Budget, dry_run: bool, device: str | None) -> None:
    from sam2_refine.seam import Window

    rng = np.random.default_rng(0)
    models, batches, repeat = (("tiny",), (1, 2), 1) if dry_run else (("tiny", "small"), (1, 2, 4, 8), 3)
    side = 1024
    images = [rng.random((side, side, 3), dtype=np.float32) for _ in range(max(batches))]
    windows = [Window(0, 0, side, side)] * max(batches)
    for model in models:
        if budget.left() < 10:
            return
        predictor = predictor_for(model, device)
        for batch in batches:
            if budget.left() < 5:
                return
            entry = {"model": model, "batch": batch}
            if not hasattr(predictor, "encode_batch"):
                entry["error"] = "the predictor has no encode_batch"
            else:
                try:
                    def run(batch=batch):
                        predictor.encode_batch(images[:batch], windows[:batch])

                    entry["ms_per_window"] = median_ms(run, repeat) / batch
                    peak = peak_mb(run)
                    entry["peak_mb_per_window"] = None if peak is None else peak / batch
                except Exception as error:  # noqa: BLE001 (recorded)
                    entry["error"] = error_text(error)
            recorder.add("encode_batch", entry)
        del predictor
        free_memory()


def attention_backends(recorder: Recorder, budget: Budget, dry_run: bool, device: str | None) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sam2.modeling.sam.transformer import Attention

    on_gpu = torch.cuda.is_available() and not dry_run
    where = "cuda" if on_gpu else "cpu"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    # The mask decoder's cross attentions (sam2's TwoWayTransformer: 256 wide, 8 heads, halved inside).
    attention = Attention(256, 8, downsample_rate=2).to(where, dtype)
    heads, head_dim = attention.num_heads, attention.internal_dim // attention.num_heads
    tokens, image_tokens = 8, 64 * 64  # output tokens + a box's two corners; the 64 × 64 embedding
    generator = torch.Generator(where).manual_seed(0)

    def random(*shape):
        return torch.randn(*shape, generator=generator, device=where, dtype=dtype)

    batches, repeat = ((4, 16), 2) if dry_run else ((16, 64, 128), 10)
    backends = [(name, getattr(SDPBackend, name, None)) for name in BACKENDS]
    for batch in batches:
        per_box = random(batch, heads, tokens, head_dim)
        window = random(1, heads, image_tokens, head_dim).expand(batch, -1, -1, -1)
        cases = {
            "token-to-image, keys and values expanded": (per_box, window, window),
            "token-to-image, keys and values contiguous": (per_box, window.contiguous(), window.contiguous()),
            "image-to-token, queries expanded": (window, per_box, per_box),
            "image-to-token, queries contiguous": (window.contiguous(), per_box, per_box),
        }
        for what, (q, k, v) in cases.items():
            for name, backend in backends:
                if budget.left() < 5:
                    return
                entry = {"what": what, "backend": name, "batch": batch}
                if backend is None:
                    entry["error"] = "not in this torch"
                else:
                    try:
                        with sdpa_kernel([backend]):
                            entry["ms"] = median_ms(lambda: F.scaled_dot_product_attention(q, k, v), repeat)
                    except Exception as error:  # noqa: BLE001 (recorded)
                        entry["error"] = error_text(error)
                recorder.add("attention", entry)
    whole_decode(recorder, budget, dry_run, device, backends)


def whole_decode(recorder: Recorder, budget: Budget, dry_run: bool, device: str | None, backends) -> None:
    """One decode call of 64 boxes (dry run 8) under each backend: every attention of the decoder."""
    from torch.nn.attention import sdpa_kernel

    from sam2_refine.seam import Window, decode_masks

    if budget.left() < 10:
        return
    rng = np.random.default_rng(1)
    batch, side = (8, 512) if dry_run else (64, 1024)
    predictor = predictor_for("tiny", device)
    predictor.encode(rng.random((side, side, 3), dtype=np.float32), Window(0, 0, side, side))
    corners = rng.uniform(0, side - 60, (batch, 2))
    boxes = np.hstack([corners, corners + rng.uniform(20, 60, (batch, 2))]).astype(np.float32)
    areas = np.hstack([np.maximum(boxes[:, :2] - 10, 0), np.minimum(boxes[:, 2:] + 10, side)]).astype(np.int64)
    for name, backend in backends:
        if budget.left() < 5:
            return
        entry = {"what": f"whole decode of {batch} boxes", "backend": name, "batch": batch}
        if backend is None:
            entry["error"] = "not in this torch"
        else:
            try:
                with sdpa_kernel([backend]):
                    entry["ms"] = median_ms(lambda: decode_masks(predictor, boxes, areas), 3 if dry_run else 10)
            except Exception as error:  # noqa: BLE001 (recorded)
                entry["error"] = error_text(error)
        recorder.add("attention", entry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write results.json and summary.md here (gpu.sh: $OUT)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds; stops starting measurements after")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, small sizes (no figure is a GPU's)")
    args = parser.parse_args()
    import torch

    from benchmarks.run import ensure_checkpoints

    if not torch.cuda.is_available() and not args.dry_run:
        print("no CUDA device: run this on a GPU machine, or with --dry-run")
        return 2
    device = "cpu" if args.dry_run else None
    budget = Budget(args.budget)
    recorder = Recorder(args.out)
    ensure_checkpoints()
    failed = []
    for measure in (decode_batches, encoder_batches, attention_backends):
        if budget.left() < 5:
            print(f"- {measure.__name__}: not started, budget spent")
            continue
        started = time.perf_counter()
        try:
            measure(recorder, budget, args.dry_run, device)
        except Exception as error:  # noqa: BLE001 (the next measurement still runs)
            failed.append(measure.__name__)
            print(f"- {measure.__name__} failed: {error_text(error)}")
        print(f"- {measure.__name__}: {time.perf_counter() - started:.1f} s", flush=True)
        free_memory()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
