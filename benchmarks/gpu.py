"""The CUDA path's set-up and checks: the first two steps of `benchmarks/gpu.sh`.

    python3 benchmarks/gpu.py setup  --out OUT [--dry-run]   # device, versions, checkpoints
    python3 benchmarks/gpu.py checks --out OUT [--dry-run]   # the CUDA checks

setup: the device (GPU, driver, torch, CUDA, cuDNN, CPU), every pinned package's installed
version against its pin (where it was imported from: the carried wheels or the image), and the
random-init checkpoints of tiny and small (benchmarks/checkpoints, as everywhere in the
benchmarks). Exits 1 when a carried package is not the pinned version.

checks, with tiny on the benchmark frame (benchmarks/workload.py: 2048² × 100 cells, its whole
frame and its first Auto windows), each object compared over its search area resized to image
pixels as the engine does, by mask IoU and by the share of outline vertices that move by more
than half an image pixel (benchmarks/precision.py's measures; thresholds below):
- the predictor is on CUDA, in bf16 autocast;
- the encoder batch size it sized from its first window's measured peak is more than 1 where
  the GPU has room for two windows, and no more than fits in half the free memory; a batch of
  that size then runs within half the free memory, near the single window's peak per window;
- windows encoded in one batch decode as each encoded alone;
- the whole-grid decode agrees with the per-area decode;
- the GPU's bf16 masks agree with the CPU's fp32 ones.
The device's description (name, bf16, TF32) is asserted by tests/test_device.py (gpu.sh's
next step). Exits 1 if a check fails, 2 if there is no CUDA device. `--dry-run` runs the same
checks on the CPU at a smaller size, with the CPU imitating CUDA's dtypes (the mask decoder
under bf16 autocast too, the whole-grid decode); the CUDA-only ones are reported as skipped.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks import gpu_record  # noqa: E402

# Agreement of two sets of masks, per object over its search area in image pixels. The CPU's
# bf16 (encoder and decoder) against fp32 measured 5th-percentile IoU 0.9963 and 0.22 % of
# outline vertices moved (benchmarks/RESULTS.md, Table E, random-init weights, whose noise
# masks are the harshest case); trained weights' logits cross zero more steeply.
IOU_P5_MIN = 0.98        # 95 % of objects keep at least this IoU
MOVED_PX = 0.5           # image pixels
MOVED_SHARE_MAX = 0.01   # at most 1 % of outline vertices move more than MOVED_PX
FLIPPED_IOU = 0.5        # below this, the object got a different mask (another of SAM2's choices)


class Checks:
    """PASS / FAIL / SKIP lines, printed and written to results.json as they come."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.found: list[dict] = []
        if out:
            gpu_record.update(out, "checks", [])

    def add(self, name: str, status: str, detail: str = "") -> None:
        print(f"- {status.upper()} {name}{': ' + detail if detail else ''}", flush=True)
        entry = {"name": name, "status": status, "detail": detail}
        self.found.append(entry)
        if self.out:
            gpu_record.append(self.out, "checks", entry)

    def check(self, name: str, passed: bool, detail: str = "") -> None:
        self.add(name, "pass" if passed else "fail", detail)

    @property
    def failed(self) -> list[str]:
        return [c["name"] for c in self.found if c["status"] == "fail"]


def agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> dict:
    """Per object (logits in image pixels over its search area): IoU of the masks (> 0) and
    the first-order distance of each reference outline vertex to the other's outline."""
    from benchmarks.precision import displacement

    ious, vertices, moved, objects_moved = [], 0, 0, 0
    for a, b in zip(reference, other, strict=True):
        inside_a, inside_b = a > 0, b > 0
        union = np.logical_or(inside_a, inside_b).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(inside_a, inside_b).sum() / union))
        distance = displacement(a, b)
        vertices += len(distance)
        moved += int((distance > MOVED_PX).sum())
        objects_moved += int((distance > MOVED_PX).any())
    ious_array = np.array(ious) if ious else np.ones(1)
    return {"objects": len(ious), "iou_median": float(np.median(ious_array)),
            "iou_p5": float(np.percentile(ious_array, 5)), "iou_min": float(ious_array.min()),
            "flipped": int((ious_array < FLIPPED_IOU).sum()), "vertices": vertices, "moved": moved,
            "moved_share": moved / max(vertices, 1), "objects_moved": objects_moved}


def agrees(stats: dict) -> bool:
    return stats["iou_p5"] >= IOU_P5_MIN and stats["moved_share"] <= MOVED_SHARE_MAX


def agreement_text(stats: dict) -> str:
    return (f"{stats['objects']} objects, mask IoU median {stats['iou_median']:.4f}, 5th percentile "
            f"{stats['iou_p5']:.4f} (>= {IOU_P5_MIN}), min {stats['iou_min']:.4f}, {stats['flipped']} with another "
            f"mask; outline moved > {MOVED_PX} px at {stats['moved']} of {stats['vertices']} vertices "
            f"({stats['moved_share']:.2%}, <= {MOVED_SHARE_MAX:.0%}) in {stats['objects_moved']} objects")


# --- setup -------------------------------------------------------------------------------

def device_lines(dry_run: bool) -> dict:
    import torch

    from benchmarks.machine import machine_lines

    device = {"python": platform.python_version(), "torch": torch.__version__, "torch CUDA": torch.version.cuda,
              "cuDNN": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
              "CPUs": os.cpu_count()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        device["GPU"] = (f"{properties.name}, compute capability {properties.major}.{properties.minor}, "
                         f"{properties.total_memory / 2**30:.1f} GiB, {properties.multi_processor_count} SMs")
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            smi = f"not run: {error}"
        device["nvidia-smi"] = smi
    else:
        device["GPU"] = "none (dry run on the CPU)" if dry_run else "none: torch.cuda.is_available() is False"
    device["machine"] = " ".join(line.removeprefix("- ") + ";" for line in machine_lines()[:3])
    return device


def version_rows(wheels: Path) -> list[dict]:
    """Each pinned package and each carried one (.whl/MANIFEST.txt, the pins' dependencies):
    the version wanted (requirements' pin, else the manifest's: a stale .whl/ shows as a
    difference), the one installed, and where it came from: the carried wheels, the device's
    image, or (dry run) this virtual environment."""
    from benchmarks.gpu_wheels import NOT_FOR_THE_DEVICE, pinned

    manifest = wheels / "MANIFEST.txt"
    carried = dict(line.split("==") for line in manifest.read_text().split()) if manifest.is_file() else {}
    wanted = carried | {name: pin for name, pin in pinned().items() if name not in NOT_FOR_THE_DEVICE}
    rows = []
    for name, pin in sorted(wanted.items()):
        try:
            distribution = metadata.distribution(name)
            installed, location = distribution.version, str(distribution.locate_file(""))
        except metadata.PackageNotFoundError:
            installed, location = "not installed", ""
        source = "carried wheel" if location.startswith("/tmp/gpu-site") else \
            ("this venv" if ".venv" in location else "the image")
        rows.append({"name": name, "pinned": pin, "installed": installed, "source": source,
                     "expected_from_wheels": name in carried})
    return rows


def setup(out: Path | None, dry_run: bool) -> int:
    from benchmarks.run import ensure_checkpoints

    device = device_lines(dry_run)
    for key, value in device.items():
        print(f"- {key}: {value}")
    rows = version_rows(REPO / os.environ.get("GPU_WHEELS", ".whl"))
    for row in rows:
        mark = "" if row["installed"] == row["pinned"] else "   <- differs"
        print(f"  {row['name']:24} pinned {row['pinned']:12} installed {row['installed']:16} {row['source']}{mark}")
    if out:
        gpu_record.update(out, "device", device)
        gpu_record.update(out, "versions", rows)
    wrong = [r["name"] for r in rows if r["expected_from_wheels"] and r["installed"] != r["pinned"] and not dry_run]
    started = time.perf_counter()
    ensure_checkpoints()
    print(f"- random-init checkpoints ready in {time.perf_counter() - started:.1f} s")
    if wrong:
        print(f"carried packages not at their pinned version: {', '.join(wrong)}")
        return 1
    return 0


# --- checks ------------------------------------------------------------------------------

def logits_by_object(predictor, crop: np.ndarray, window, boxes, members, size: int, encoded=None) -> list[np.ndarray]:
    """Each member's logits over its search area, in image pixels, decoded in one batch
    (through the seam, as the engine decodes: a predictor that crops gives each box's cells
    with their origin on the low-resolution grid)."""
    from sam2_refine.lowres import LowRes, resize_crop
    from sam2_refine.seam import decode_masks
    from sam2_refine.tiling import search_area

    if encoded is None:
        predictor.encode(crop, window)
    else:
        predictor.use(encoded)
    offset = (window.left, window.top) * 2
    prompts = np.array([[boxes[i].x0 - window.left, boxes[i].y0 - window.top, boxes[i].x1 - window.left,
                         boxes[i].y1 - window.top] for i in members], np.float32)
    areas = np.array([[a - o for a, o in zip(search_area(boxes[i], size, size), offset)] for i in members], np.int64)
    decoded = decode_masks(predictor, prompts, areas)
    origins = decoded.origins if decoded.origins is not None else np.zeros((len(members), 2), np.int64)
    return [resize_crop(LowRes(low_res, int(row0), int(col0), decoded.grid_shape), window.height, window.width,
                        tuple(area)) for low_res, (row0, col0), area in zip(decoded.logits, origins, areas)]


def cuda_memory_checks(checks: Checks, predictor, crops: list[np.ndarray], windows: list) -> None:
    """The encoder batch size against the GPU's memory, measured here independently."""
    import torch

    torch.cuda.synchronize()
    free_before = torch.cuda.mem_get_info()[0]
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    predictor.encode(crops[0], windows[0])
    torch.cuda.synchronize()
    single_peak = max(torch.cuda.max_memory_allocated() - base, 1)
    room = int(0.5 * free_before // single_peak)
    size = int(getattr(predictor, "encode_batch_size", 1))
    gib = 2**30
    detail = (f"{size} windows per batch; one window's peak {single_peak / gib:.2f} GiB, {free_before / gib:.1f} GiB "
              f"free, room for {room} in half of it")
    checks.check("encoder batch sized from the measured peak", (size >= 2 if room >= 2 else size == 1) and size <= max(room, 1),
                 detail)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        predictor.encode_batch([crops[0]] * size, [windows[0]] * size)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        checks.check(f"a batch of {size} windows runs within half the free memory", peak <= 0.5 * free_before
                     and peak <= 1.5 * size * single_peak,
                     f"peak {peak / gib:.2f} GiB ({peak / size / gib:.2f} GiB per window, one alone "
                     f"{single_peak / gib:.2f}); half the free memory {0.5 * free_before / gib:.1f} GiB")
    except Exception as error:  # noqa: BLE001 (recorded as the check's failure)
        checks.check(f"a batch of {size} windows runs within half the free memory", False,
                     f"{type(error).__name__}: {error}")


def run_checks(out: Path | None, dry_run: bool) -> int:
    import torch

    from benchmarks.precision import bf16_everywhere, frame_image
    from benchmarks.run import CHECKPOINT_DIR, CONFIGS, ensure_checkpoints
    from benchmarks.workload import make_workload
    from sam2_refine.engine import prompt_box
    from sam2_refine.model import Sam2Predictor
    from sam2_refine.seam import Window
    from sam2_refine.tiling import auto_windows

    checks = Checks(out)
    cuda = torch.cuda.is_available() and not dry_run
    if not cuda and not dry_run:
        print("no CUDA device: nothing to check (run this on a GPU machine, or with --dry-run)")
        return 2
    ensure_checkpoints()
    checkpoint = CHECKPOINT_DIR / CONFIGS["tiny"][0]
    started = time.perf_counter()
    if cuda:
        gpu = Sam2Predictor(checkpoint)
    else:  # the CPU imitating CUDA's dtypes and its whole-grid decode
        gpu = bf16_everywhere(checkpoint)
        gpu.crop_upscaling = False
    description = getattr(gpu, "device_description", "")
    print(f"- model built in {time.perf_counter() - started:.1f} s on {description}")
    if cuda:
        checks.check("predictor on CUDA in bf16 autocast", description.startswith("CUDA GPU") and "bf16 autocast" in description,
                     description)
    else:
        checks.add("predictor on CUDA in bf16 autocast", "skip", f"dry run: {description}, decoder in bf16 too")

    size, count = (1024, 30) if dry_run else (2048, 100)
    workload = make_workload(size, count)
    image = frame_image(workload.image)
    boxes = [prompt_box(outline, size, size) for outline in workload.outlines]
    windows = [(Window(0, 0, size, size), list(range(count)))] + auto_windows(boxes, size, size)[:2 if dry_run else 3]
    crops = [np.ascontiguousarray(image[w.top:w.top + w.height, w.left:w.left + w.width]) for w, _ in windows]
    print(f"- {size}² × {count}: the whole frame and {len(windows) - 1} Auto windows, "
          f"{sum(len(m) for _, m in windows)} objects")

    if cuda:
        cuda_memory_checks(checks, gpu, crops[1:], [w for w, _ in windows[1:]])
    else:
        checks.add("encoder batch sized from the measured peak", "skip", "CUDA only")

    alone = [logits_by_object(gpu, crop, w, boxes, m, size) for crop, (w, m) in zip(crops, windows)]
    if hasattr(gpu, "encode_batch") and hasattr(gpu, "use"):
        together = gpu.encode_batch(crops, [w for w, _ in windows])
        batched = [logits_by_object(gpu, crop, w, boxes, m, size, encoded)
                   for crop, (w, m), encoded in zip(crops, windows, together)]
        stats = agreement(sum(alone, []), sum(batched, []))
        checks.check(f"{len(windows)} windows encoded in one batch decode as each alone", agrees(stats),
                     agreement_text(stats))
    else:
        checks.add("windows encoded in one batch decode as each alone", "skip", "the predictor has no encode_batch")

    if hasattr(gpu, "crop_upscaling"):
        whole_grid = gpu.crop_upscaling
        gpu.crop_upscaling = not whole_grid
        other = [logits_by_object(gpu, crop, w, boxes, m, size) for crop, (w, m) in zip(crops, windows)]
        gpu.crop_upscaling = whole_grid
        by_area, whole = (alone, other) if whole_grid else (other, alone)
        stats = agreement(sum(by_area, []), sum(whole, []))
        checks.check("whole-grid decode agrees with the per-area decode", agrees(stats), agreement_text(stats))
    else:
        checks.add("whole-grid decode agrees with the per-area decode", "skip", "the predictor has no crop_upscaling")

    started = time.perf_counter()
    cpu = Sam2Predictor(checkpoint, device="cpu", precision="fp32")
    reference = [logits_by_object(cpu, crop, w, boxes, m, size) for crop, (w, m) in zip(crops, windows)]
    print(f"- CPU fp32 reference in {time.perf_counter() - started:.1f} s")
    stats = agreement(sum(reference, []), sum(alone, []))
    checks.check(f"{'GPU' if cuda else 'CPU imitating CUDA'} bf16 masks agree with the CPU's fp32", agrees(stats),
                 agreement_text(stats))

    failed = checks.failed
    print(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all CUDA checks passed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("setup", "checks"), nargs="?", default="checks")
    parser.add_argument("--out", type=Path, help="write results.json and summary.md here (gpu.sh: $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, smaller (no figure is a GPU's)")
    args = parser.parse_args()
    if args.step == "setup":
        return setup(args.out, args.dry_run)
    return run_checks(args.out, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
