"""Micro-benchmarks behind benchmarks/PROPOSALS.md, in-process on the current model.py.

    .venv/bin/python benchmarks/micro.py decode   [--model tiny] [--batches 1 2 4 8 16] [--bf16] [--threads N] [--channels-last] [--proposed]
    .venv/bin/python benchmarks/micro.py encode   [--model tiny] [--bf16] [--threads N] [--channels-last] [--compile]
    .venv/bin/python benchmarks/micro.py layout   [--model tiny] [--repeat 5]     # channels-last A/B
    .venv/bin/python benchmarks/micro.py ops      [--model tiny] [--batch 4]      # where decode time goes
    .venv/bin/python benchmarks/micro.py startup  [--model tiny] [--repeat 3]     # fresh interpreters
    .venv/bin/python benchmarks/micro.py iou      [--model tiny] [--size 1024 --count 100]
    .venv/bin/python benchmarks/micro.py geometry [--sizes 1024 2048 4096] [--count 50]
    .venv/bin/python benchmarks/micro.py crop     [--model tiny] [--size 1024 --count 100 --batch 1]
    .venv/bin/python benchmarks/micro.py fetch    [--size 4096]                   # embedded server
    .venv/bin/python benchmarks/micro.py exit                                     # teardown after torch

Every command prints the load average first: other jobs on a 2-core machine skew timings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.workload import make_workload  # noqa: E402

CHECKPOINTS = {"tiny": REPO / "benchmarks/checkpoints/sam2.1_hiera_tiny.pt",
               "small": REPO / "benchmarks/checkpoints/sam2.1_hiera_small.pt"}


def load_average() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(function: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float], scale: float = 1.0, unit: str = "s") -> str:
    values = [t * scale for t in times]
    return f"median {statistics.median(values):.3g} {unit} (min {min(values):.3g}, max {max(values):.3g}, n={len(values)})"


def frame_image(size: int, count: int) -> tuple[np.ndarray, object]:
    """The workload's frame as the worker sees it: float32 (rows, cols, 3) in [0, 1]."""
    workload = make_workload(size, count)
    image = workload.image.astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    return np.repeat(image[:, :, None], 3, axis=2), workload


def predictor(model: str, threads: int | None, channels_last: bool):
    import torch

    from sam2_refine.model import Sam2Predictor

    built = Sam2Predictor(CHECKPOINTS[model], "cpu")
    if threads:
        torch.set_num_threads(threads)
    if channels_last:
        built.model.to(memory_format=torch.channels_last)
    return built


def autocast(bf16: bool):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def boxes_of(workload, count: int) -> np.ndarray:
    from sam2_refine.engine import prompt_box

    found = [prompt_box(outline, workload.size, workload.size) for outline in workload.outlines[:count]]
    return np.array([[b.x0, b.y0, b.x1, b.y1] for b in found], dtype=np.float32)


def window_of(size: int):
    from sam2_refine.model import Window

    return Window(0, 0, size, size)


def cmd_decode(args: argparse.Namespace) -> None:
    """Per-box decode time by batch size (batch sizes alternate across repeats)."""
    image, workload = frame_image(1024, 100)
    if args.proposed:
        from benchmarks.proposed import FastSam2Predictor

        built = FastSam2Predictor(CHECKPOINTS[args.model], "cpu")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
    else:
        built = predictor(args.model, args.threads, args.channels_last)
    times: dict[int, list[float]] = {batch: [] for batch in args.batches}
    with autocast(args.bf16):
        built.encode(image, window_of(1024))
        boxes = boxes_of(workload, 48)
        built.decode_low_res(boxes[:4])  # warm-up
        for _ in range(args.repeat):
            for batch in args.batches:
                def run() -> None:
                    for start in range(0, len(boxes), batch):
                        built.decode_low_res(boxes[start:start + batch])
                times[batch] += [t / len(boxes) for t in timed(run, 1)]
    label = "proposed (P5+P6)" if args.proposed else "model.py"
    for batch, values in times.items():
        print(f"decode {label} {args.model} batch {batch:2d} bf16={args.bf16} threads={args.threads or 'default'} "
              f"channels_last={args.channels_last}: per box {summary(values, 1000, 'ms')}", flush=True)


def cmd_encode(args: argparse.Namespace) -> None:
    import torch

    image, _ = frame_image(1024, 100)
    built = predictor(args.model, args.threads, args.channels_last)
    if args.compile:
        model = built.model
        start = time.perf_counter()
        model.image_encoder = torch.compile(model.image_encoder)
        with autocast(args.bf16):
            built.encode(image, window_of(1024))
        print(f"torch.compile: first encode (compiling) {time.perf_counter() - start:.1f} s", flush=True)
    with autocast(args.bf16):
        built.encode(image, window_of(1024))  # warm-up
        times = timed(lambda: built.encode(image, window_of(1024)), args.repeat)
    print(f"encode {args.model} 1024² bf16={args.bf16} threads={args.threads or 'default'} "
          f"channels_last={args.channels_last} compile={args.compile}: {summary(times)}", flush=True)


def cmd_layout(args: argparse.Namespace) -> None:
    """Encoder with contiguous vs channels-last weights, alternated in one process (A/B)."""
    import torch

    image, _ = frame_image(1024, 100)
    built = predictor(args.model, args.threads, False)
    model = built.model
    times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    embeddings = {}
    built.encode(image, window_of(1024))  # warm-up
    for _ in range(args.repeat):
        for layout, memory_format in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            model.to(memory_format=memory_format)
            times[layout] += timed(lambda: built.encode(image, window_of(1024)), 1)
            embeddings[layout] = built._image_embed.clone()
    for layout, values in times.items():
        print(f"encode {args.model} 1024² {layout}: {summary(values)}")
    difference = (embeddings["contiguous"] - embeddings["channels_last"]).abs().max().item()
    print(f"max |embedding difference| {difference:.2e}")


def cmd_ops(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    image, workload = frame_image(1024, 100)
    built = predictor(args.model, None, False)
    built.encode(image, window_of(1024))
    boxes = boxes_of(workload, 32)
    built.decode_low_res(boxes[:args.batch])
    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        for start in range(0, len(boxes), args.batch):
            built.decode_low_res(boxes[start:start + args.batch])
    print(recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


STARTUP_SCRIPT = r"""
import json, sys, time
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import torch; mark("import torch")
from sam2.build_sam import build_sam2; mark("import sam2.build_sam")
from sam2.sam2_image_predictor import SAM2ImagePredictor; mark("import SAM2ImagePredictor (torchvision)")
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
config = compose(config_name=sys.argv[2]); OmegaConf.resolve(config); mark("hydra compose")
model = instantiate(config.model, _recursive_=True); mark("instantiate (random init)")
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["model"]; mark("torch.load")
model.load_state_dict(state); model.eval(); mark("load_state_dict + eval")
SAM2ImagePredictor(model); mark("SAM2ImagePredictor() (torch.jit.script)")
print(json.dumps([(name, t - marks[i][1]) for i, (name, t) in enumerate(marks[1:])]))
"""

PREDICTOR_SCRIPT = r"""
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, sys.argv[3])
from pathlib import Path
import torch
imported = time.perf_counter()
if sys.argv[4] == "current":
    from sam2_refine.model import Sam2Predictor as Predictor
else:
    from benchmarks.proposed import FastSam2Predictor as Predictor
Predictor(Path(sys.argv[1]), "cpu")
done = time.perf_counter()
print(json.dumps([["import torch", imported - start], ["predictor built (after torch)", done - imported],
                  ["total", done - start], ["torchvision imported", float("torchvision" in sys.modules)],
                  ["torch._dynamo imported", float("torch._dynamo" in sys.modules)]]))
"""


def cmd_startup(args: argparse.Namespace) -> None:
    import json

    config = {"tiny": "configs/sam2.1/sam2.1_hiera_t.yaml", "small": "configs/sam2.1/sam2.1_hiera_s.yaml"}[args.model]
    variants = (("sam2 steps", STARTUP_SCRIPT, ""), ("model.py Sam2Predictor", PREDICTOR_SCRIPT, "current"),
                ("proposed.py FastSam2Predictor", PREDICTOR_SCRIPT, "proposed"))
    for label, script, which in variants:
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", script, str(CHECKPOINTS[args.model]), config, str(REPO), which],
                                 capture_output=True, text=True, cwd=REPO, check=True)
            wall = time.perf_counter() - start
            for name, seconds in json.loads(out.stdout.strip().splitlines()[-1]):
                runs.setdefault(name, []).append(seconds)
            runs.setdefault("process wall (incl. interpreter)", []).append(wall)
        print(f"{label}:")
        for name, values in runs.items():
            print(f"  {name:45s} {summary(values)}")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def cmd_iou(args: argparse.Namespace) -> None:
    """bf16 autocast vs fp32 on the real model path: the same boxes, masks over each search area."""
    from sam2_refine import tiling
    from sam2_refine.engine import prompt_box, upsample_region

    image, workload = frame_image(args.size, args.count)
    built = predictor(args.model, None, False)
    window = window_of(args.size)
    boxes = boxes_of(workload, args.count)
    masks: dict[bool, list[np.ndarray]] = {}
    for bf16 in (False, True):
        with autocast(bf16):
            built.encode(image, window)
            logits = np.concatenate([built.decode_low_res(boxes[i:i + 4]) for i in range(0, len(boxes), 4)])
        found = []
        for outline, low_res in zip(workload.outlines, logits):
            box = prompt_box(outline, args.size, args.size)
            region = tiling.search_area(box, args.size, args.size)
            found.append(upsample_region(low_res, args.size, args.size, region))
        masks[bf16] = found
    ious = np.array([mask_iou(a, b) for a, b in zip(masks[False], masks[True])])
    print(f"bf16 vs fp32 {args.model} {args.size}² × {args.count} (random-init weights): IoU median {np.median(ious):.4f}, "
          f"min {ious.min():.4f}, share >= 0.99: {(ious >= 0.99).mean():.2f}")


def cmd_geometry(args: argparse.Namespace) -> None:
    """Per-object geometry on the true cells' masks: ours (_refine_one on cell logits) vs the
    existing algorithm (full-frame upsampled mask -> find_contours -> simplify -> buffer)."""
    import torch
    import torch.nn.functional as F

    from benchmarks.existing import masks_to_polygons
    from sam2_refine import engine
    from sam2_refine.engine import RefineSettings, prompt_box

    settings = RefineSettings(smoothing=0.7, padding=1.0, resolution="Whole frame")
    for size in args.sizes:
        workload = make_workload(size, max(args.count, 100))
        window = window_of(size)
        boxes = [prompt_box(o, size, size) for o in workload.outlines[:args.count]]
        logits = [workload.cells.low_res_logits(np.array([b.x0, b.y0, b.x1, b.y1]), 0, 0, size, size) for b in boxes]

        def ours() -> None:
            for low_res, box in zip(logits, boxes):
                engine._refine_one(low_res, box, window, size, size, settings)

        full_masks = [(F.interpolate(torch.from_numpy(l)[None, None], (size, size), mode="bilinear",
                                     align_corners=False) > 0)[0, 0].float().numpy() for l in logits[:10]]

        def existing() -> None:
            masks_to_polygons(full_masks, 0.7, 1.0)

        ours_ms = [t / len(boxes) for t in timed(ours, args.repeat)]
        existing_ms = [t / len(full_masks) for t in timed(existing, args.repeat)]
        print(f"geometry {size}²: ours {summary(ours_ms, 1000, 'ms')} per object; "
              f"existing {summary(existing_ms, 1000, 'ms')} per object", flush=True)


def cmd_crop(args: argparse.Namespace) -> None:
    """P5 (decoder upscaling cropped to each search area) and P6 (first block's image
    projections shared) vs the full decode, in benchmarks/proposed.py's predictor."""
    from benchmarks import proposed
    from sam2_refine import tiling
    from sam2_refine.engine import prompt_box, resize_region

    image, workload = frame_image(args.size, args.count)
    built = proposed.FastSam2Predictor(CHECKPOINTS[args.model], "cpu")
    window = window_of(args.size)
    boxes = boxes_of(workload, args.count)
    built.encode(image, window)
    decoder = built.model.sam_mask_decoder
    variants = {"full decode": (False, False), "P5 crop": (True, False), "P5 crop + P6 share": (True, True)}
    for stability in (False, True):
        decoder.dynamic_multimask_via_stability = stability
        found: dict[str, list[np.ndarray]] = {}
        per_box: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeat):  # variants alternate, so load changes hit all alike
            for name, (crop, share) in variants.items():
                proposed.CROP_UPSCALING, proposed.SHARE_FIRST_BLOCK = crop, share
                start = time.perf_counter()
                logits = np.concatenate(
                    [built.decode_low_res(boxes[i:i + args.batch]) for i in range(0, len(boxes), args.batch)]
                )
                per_box[name].append((time.perf_counter() - start) / len(boxes))
                regions = []
                for outline, low_res in zip(workload.outlines, logits):
                    area = tiling.search_area(prompt_box(outline, args.size, args.size), args.size, args.size)
                    regions.append(resize_region(low_res, args.size, args.size, area))
                found[name] = regions
        for name in variants:
            line = f"stability={stability} {name:20s} batch {args.batch}: {summary(per_box[name], 1000, 'ms')} per box"
            if name != "full decode":
                diffs = np.array([np.abs(a - b).max() for a, b in zip(found["full decode"], found[name])])
                ious = np.array([mask_iou(a > 0, b > 0) for a, b in zip(found["full decode"], found[name])])
                line += (f"; search-area logits vs full: max |difference| {diffs.max():.1e}, "
                         f"mask IoU min {ious.min():.4f}, identical masks {np.mean(ious == 1.0):.2f}")
            print(line, flush=True)


def cmd_fetch(args: argparse.Namespace) -> None:
    """Platform.frame_image against the embedded NimbusServer: downsampled vs full resolution."""
    from nimbus_server import NimbusServer
    from sam2_refine.nimbus import Platform
    from sam2_refine.parameters import Location

    workload = make_workload(args.size, args.count)
    with NimbusServer() as server:
        dataset_id = server.add_dataset(workload.image[np.newaxis, np.newaxis, np.newaxis, np.newaxis])
        platform = Platform(server.url, server.token, dataset_id, {})
        location = Location(0, 0, 0)
        for max_size in (1024, None):
            times = timed(lambda: platform.frame_image(location, max_size), args.repeat)
            print(f"frame_image {args.size}² max_size={max_size}: {summary(times)}", flush=True)
        times = timed(lambda: platform.dataset.images.get(), args.repeat)
        print(f"raw uint16 frame (images.get) {args.size}²: {summary(times)}", flush=True)


EXIT_SCRIPT = r"""
import os, sys, time
import torch
print(time.time(), flush=True)
if sys.argv[1] == "os._exit":
    os._exit(0)
"""


def cmd_exit(args: argparse.Namespace) -> None:
    """Seconds from a process's last line to its end, after `import torch`."""
    for how in ("return", "os._exit"):
        values = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, how], capture_output=True, text=True, check=True)
            values.append(time.time() - float(out.stdout.strip().splitlines()[-1]))
        print(f"exit after `import torch` by {how}: {summary(values)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("decode", "encode", "layout", "ops", "startup", "iou", "geometry", "crop", "fetch", "exit"):
        sub = commands.add_parser(name)
        sub.add_argument("--model", choices=sorted(CHECKPOINTS), default="tiny")
        sub.add_argument("--repeat", type=int, default=3)
        sub.add_argument("--threads", type=int)
        sub.add_argument("--bf16", action="store_true")
        sub.add_argument("--channels-last", action="store_true")
        sub.add_argument("--compile", action="store_true")
        sub.add_argument("--proposed", action="store_true", help="benchmarks/proposed.py's predictor")
        sub.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8, 16])
        sub.add_argument("--batch", type=int, default=4)
        sub.add_argument("--size", type=int, default=1024)
        sub.add_argument("--count", type=int, default=100)
        sub.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048, 4096])
    args = parser.parse_args()
    print(load_average(), flush=True)
    globals()[f"cmd_{args.command}"](args)
    print(load_average(), flush=True)


if __name__ == "__main__":
    main()
