"""The existing SAM2 Refiner's compute algorithm, re-implemented for comparison.

Same command line as the worker. What it does is what /work/shared/PLATFORM.md §7
describes of the existing worker (numbers are its steps):
  5. list every polygon of the dataset (limit=0) plus the dead 'blob' query; filter
     by tag and batch location on the client; group by location;
  6. build SAM2 and SAM2ImagePredictor: on CUDA where there is one, under bf16 autocast
     entered for good (l.230), else on the CPU in fp32;
  7. per location: every channel at full frame, merged with np.percentile contrast
     into float32 [0, 1]; `set_image` once; ONE `predict(box, multimask_output=False)`
     per box, each full-frame mask kept in memory;
  8. per mask: `find_contours(mask, 0.5)[0]`, shapely `simplify(smoothing)`, then
     `buffer(padding)`; polygons become annotations (no +0.5 offset);
  9. one POST of every annotation.
It differs only in being instrumented (benchmarks.probe.CLOCK; BENCH_CELLS gives it
the same realistic masks as our worker) and in reading checkpoints from
$SAM2_CHECKPOINT_DIR instead of /code/sam2/checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The existing worker imports these at module level, so they count as start-up.
import numpy as np  # noqa: E402
from nimbusimage.worker import WorkerContext  # noqa: E402
from shapely.geometry import Polygon  # noqa: E402
from skimage.measure import find_contours  # noqa: E402

from benchmarks.probe import CLOCK, cells_from_environment  # noqa: E402

CONFIGS = {
    "sam2.1_hiera_tiny.pt": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small.pt": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus.pt": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large.pt": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def progress(fraction: float, title: str, info: str) -> None:
    print(json.dumps({"progress": fraction, "title": title, "info": info}), flush=True)


def positions(text: str, current: int) -> list[int]:
    """1-based '1-3, 5' -> 0-based positions; empty -> the current tile only."""
    if not text or not text.strip():
        return [current]
    found: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        found.extend(range(int(low) - 1, int(high or low)))
    return found


def merge_channels(images: list[np.ndarray], layers: list[dict]) -> np.ndarray:
    """Visible layers, contrast as np.percentile quantiles, coloured, max-merged: float [0, 1]."""
    merged = None
    for image, layer in zip(images, sorted(layers, key=lambda layer: layer.get("channel", 0))):
        if not layer.get("visible", True):
            continue
        contrast = layer.get("contrast", {})
        black, white = np.percentile(image, [contrast.get("blackPoint", 0), contrast.get("whitePoint", 100)])
        scaled = np.clip((image.astype(np.float64) - black) / (white - black), 0, 1)
        colour = layer.get("color", "#FFFFFF").lstrip("#")
        rgb = [int(colour[i:i + 2], 16) / 255 for i in (0, 2, 4)] if len(colour) == 6 else [1.0, 1.0, 1.0]
        coloured = np.stack([scaled * c for c in rgb], axis=-1)
        merged = coloured if merged is None else np.maximum(merged, coloured)
    return merged


def masks_to_polygons(masks: list[np.ndarray], smoothing: float, padding: float) -> list:
    polygons = []
    for mask in masks:
        contours = find_contours(mask, 0.5)
        if not contours:
            continue
        try:
            polygon = Polygon(contours[0]).simplify(smoothing, preserve_topology=True)
            if padding != 0:
                polygon = polygon.buffer(padding)
        except Exception as error:  # the existing worker prints and goes on
            print(f"Warning: Failed to create polygon from contour: {error}")
            continue
        if not polygon.is_empty and polygon.is_valid:
            polygons.append(polygon)
    return polygons


def to_annotations(polygons: list, dataset_id: str, location: tuple[int, int, int], tags: list, channel: int) -> list:
    xy, z, time = location
    annotations = []
    for polygon in polygons:
        ring = list(polygon.exterior.coords)[:-1]  # (row, col) from find_contours
        annotations.append({
            "tags": tags, "shape": "polygon", "channel": channel, "datasetId": dataset_id,
            "location": {"XY": xy, "Time": time, "Z": z},
            "coordinates": [{"x": float(col), "y": float(row), "z": z} for row, col in ring],
        })
    return annotations


def compute(dataset_id: str, api_url: str, token: str, params: dict) -> None:
    import torch
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    context = WorkerContext(dataset_id=dataset_id, api_url=api_url, token=token, params=params)
    client = context._gc
    dataset = context.dataset
    values = params["workerInterface"]
    model_name = values.get("Model")
    if model_name not in CONFIGS:
        raise SystemExit(f"unknown model {model_name!r}")
    padding = float(values["Padding"])
    smoothing = float(values["Smoothing"])
    refine_tags = values["Tag of objects to refine"]
    tile = params["tile"]
    batch_xy = positions(values.get("Batch XY", ""), tile["XY"])
    batch_z = positions(values.get("Batch Z", ""), tile["Z"])
    batch_time = positions(values.get("Batch Time", ""), tile["Time"])

    progress(0.05, "Fetching annotations", "Retrieving annotations to refine")
    with CLOCK.timed("fetch_annotations"):
        documents = client.get("upenn_annotation", parameters={"datasetId": dataset_id, "shape": "polygon", "limit": 0})
        try:
            documents += client.get("upenn_annotation", parameters={"datasetId": dataset_id, "shape": "blob", "limit": 0})
        except Exception:
            pass
        if refine_tags:
            documents = [d for d in documents if any(tag in d.get("tags", []) for tag in refine_tags)]
        grouped: dict[tuple[int, int, int], list[dict]] = defaultdict(list)
        for document in documents:
            location = document.get("location", {})
            key = (location.get("XY", 0), location.get("Z", 0), location.get("Time", 0))
            if key[0] in batch_xy and key[1] in batch_z and key[2] in batch_time:
                grouped[key].append(document)
    if not grouped:
        progress(1.0, "Complete", "No annotations found to refine")
        return

    progress(0.1, "Initializing SAM2", f"Loading {model_name}")
    CLOCK.mark("model_start")
    with CLOCK.timed("model"):
        checkpoint = Path(os.environ.get("SAM2_CHECKPOINT_DIR", "/code/sam2/checkpoints")) / model_name
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            torch.autocast("cuda", dtype=torch.bfloat16).__enter__()
        model = build_sam2(CONFIGS[model_name], str(checkpoint), device=device, apply_postprocessing=False)
        predictor = SAM2ImagePredictor(model)
    CLOCK.mark("model_ready")
    cells = cells_from_environment()
    current_box: list[np.ndarray] = []
    if cells is not None:  # realistic masks: replace the decoder's logits before the full-frame upsampling
        upsample = predictor._transforms.postprocess_masks

        def realistic(masks: torch.Tensor, orig_hw) -> torch.Tensor:
            height, width = orig_hw
            with CLOCK.timed("substitute"):
                logits = torch.from_numpy(cells.low_res_logits(current_box[0], 0, 0, width, height))[None, None]
            return upsample(logits.to(masks.device, masks.dtype), orig_hw)

        predictor._transforms.postprocess_masks = realistic

    with CLOCK.timed("fetch_image"):
        layers = dataset.collections.layers
    new_annotations: list[dict] = []
    for location, annotations in grouped.items():
        xy, z, time = location
        with CLOCK.timed("fetch_image"):
            images = [dataset.images.get(xy=xy, z=z, time=time, channel=c) for c in range(dataset.num_channels)]
            image = merge_channels(images, layers).astype(np.float32)
        CLOCK.mark("first_encode")
        with CLOCK.timed("encode", synchronized=True):  # CUDA launches return before the GPU is done
            predictor.set_image(image)
        boxes = [Polygon([(c["x"], c["y"]) for c in a["coordinates"]]).bounds for a in annotations]
        CLOCK.values["image_px_per_mask_px"] += [max(image.shape[:2]) / 256] * len(boxes)
        masks = []
        with CLOCK.timed("decode", synchronized=True):
            for box in boxes:
                input_box = np.array(box, dtype=np.float32)
                current_box[:] = [input_box]
                found, _, _ = predictor.predict(point_coords=None, point_labels=None, box=input_box, multimask_output=False)
                masks.append(found[0])
        with CLOCK.timed("geometry"):
            polygons = masks_to_polygons(masks, smoothing, padding)
        new_annotations += to_annotations(polygons, dataset_id, location, params["tags"], params["channel"])
        del masks
    progress(0.85, "Uploading annotations", f"Sending {len(new_annotations)} refined annotations to server")
    with CLOCK.timed("upload"):
        client.post("upenn_annotation/multiple", json=new_annotations)
    progress(1.0, "Complete", f"Refined {len(new_annotations)} annotations")


def main() -> int:
    parser = argparse.ArgumentParser(description="The existing SAM2 Refiner algorithm (benchmark baseline)")
    parser.add_argument("--datasetId")
    parser.add_argument("--apiUrl", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--request", required=True)
    parser.add_argument("--parameters", required=True)
    args = parser.parse_args()
    if args.request == "compute":
        compute(args.datasetId, args.apiUrl, args.token, json.loads(args.parameters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
