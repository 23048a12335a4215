"""The worker's interface: the fields the platform shows, and the image's identity.

Field labels are the keys the platform sends back in `workerInterface`, so they are
part of the contract and never change spelling.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import WorkerError

CHECKPOINT_DIR_VARIABLE = "SAM2_CHECKPOINT_DIR"
# Where the Docker images put the official checkpoints (see Dockerfile).
DEFAULT_CHECKPOINT_DIR = "/opt/sam2/checkpoints"
PREFERRED_MODEL = "sam2.1_hiera_small.pt"

NOTES = "SAM2 Refiner"
BATCH_XY = "Batch XY"
BATCH_Z = "Batch Z"
BATCH_TIME = "Batch Time"
REFINE_TAGS = "Tag of objects to refine"
MODEL = "Model"
RESOLUTION = "Resolution"
DELETE_ORIGINALS = "Delete original annotations"
PADDING = "Padding"
SMOOTHING = "Smoothing"
DOUBTFUL = "Doubtful refinements"
OVERLAPS = "Allow overlapping outlines"

RESOLUTION_AUTO = "Auto"
RESOLUTION_WHOLE_FRAME = "Whole frame"
RESOLUTION_CHOICES = (RESOLUTION_AUTO, RESOLUTION_WHOLE_FRAME)

DOUBTFUL_TAG = "Tag for review"
DOUBTFUL_ACCEPT = "Accept anyway"
DOUBTFUL_SKIP = "Skip"
DOUBTFUL_CHOICES = (DOUBTFUL_TAG, DOUBTFUL_ACCEPT, DOUBTFUL_SKIP)
# The one tag a doubtful refined outline carries besides the output tags.
REVIEW_TAG = "SAM2 review"

PADDING_RANGE = (-20.0, 20.0)
PADDING_DEFAULT = 0.0
SMOOTHING_RANGE = (0.0, 3.0)
SMOOTHING_DEFAULT = 0.7

# Docker labels the platform reads (PLATFORM.md §6); the Dockerfiles must agree.
WORKER_LABELS = {
    "isUPennContrastWorker": "",
    "isAnnotationWorker": "",
    "interfaceName": "SAM2 Refiner",
    "interfaceCategory": "SAM2",
    "description": "Refines rough outlines into cell-hugging polygons with SAM2 box prompts",
    "annotationShape": "polygon",
    "defaultToolName": "SAM2 Refiner",
}

NOTES_HTML = (
    "Refines the polygons carrying the chosen tag: each one's bounding box prompts "
    "Meta's SAM2, and the refined outline is written as a new polygon with this "
    "tool's tags (or, if the tool has none, the original's tags). With <i>Delete original "
    "annotations</i> ticked, an original is deleted only after its refined polygon has "
    "been saved. Rectangles are refined too. Every refinement is checked against its "
    "original: one that reaches well outside it (neighbouring cells taken in), is much "
    "smaller than it (only an inner part kept), covers another refined outline, that "
    "SAM2 itself rates poorly, or that is too coarse at the chosen Resolution is "
    "<i>doubtful</i> and never replaces its original; SAM2's alternative masks for the same "
    "box are tried first. See <i>Doubtful refinements</i>."
)


def checkpoint_dir() -> Path:
    return Path(os.environ.get(CHECKPOINT_DIR_VARIABLE) or DEFAULT_CHECKPOINT_DIR)


def available_checkpoints(directory: Path | None = None) -> list[str]:
    """The `*.pt` file names in the checkpoint directory, sorted.

    Raises WorkerError naming the variable when there are none.
    """
    directory = directory or checkpoint_dir()
    names = sorted(p.name for p in directory.glob("*.pt") if p.is_file()) if directory.is_dir() else []
    if not names:
        state = "does not exist" if not directory.is_dir() else "holds no *.pt checkpoint"
        raise WorkerError(
            f"No SAM2 checkpoints: {directory} {state}",
            info=(
                f"Set {CHECKPOINT_DIR_VARIABLE} to a directory of SAM2 checkpoints "
                "(the Docker image ships them; `make weights` downloads them)."
            ),
            title="No SAM2 models",
        )
    return names


def default_model(names: list[str]) -> str:
    return PREFERRED_MODEL if PREFERRED_MODEL in names else names[0]


def _batch_field(axis: str, order: int) -> dict:
    return {
        "type": "text",
        "displayOrder": order,
        "tooltip": (
            f"1-based {axis} positions to process, e.g. 1-3, 5-8, or all.\n"
            "Leave empty to process the current position only."
        ),
        "vueAttrs": {
            "placeholder": "ex. 1-3, 5-8, or all",
            "label": f"Enter the {axis} positions you want to process",
            "persistentPlaceholder": True,
            "filled": True,
        },
    }


def build_interface(model_names: list[str]) -> dict:
    """The body of `POST worker_interface?image=`: field label -> field spec."""
    return {
        NOTES: {"type": "notes", "value": NOTES_HTML, "displayOrder": 0},
        BATCH_XY: _batch_field("XY", 1),
        BATCH_Z: _batch_field("Z", 2),
        BATCH_TIME: _batch_field("Time", 3),
        REFINE_TAGS: {
            "type": "tags",
            "displayOrder": 4,
            "tooltip": (
                "Polygons and rectangles carrying any of these tags are refined; with no tag, every one in range."
            ),
        },
        MODEL: {
            "type": "select",
            "items": list(model_names),
            "default": default_model(model_names),
            "required": True,
            "displayOrder": 5,
            "tooltip": (
                "The SAM2 model to use for refinement. Larger models may give slightly "
                "better results, but are slower and use more memory."
            ),
        },
        RESOLUTION: {
            "type": "select",
            "items": list(RESOLUTION_CHOICES),
            "default": RESOLUTION_AUTO,
            "required": True,
            "displayOrder": 6,
            "tooltip": (
                "Auto: SAM2 looks at windows sized to the objects, so small cells in "
                "large images keep their detail.\nWhole frame: one look at the whole "
                "image; fastest, coarser for small objects."
            ),
        },
        DELETE_ORIGINALS: {
            "type": "checkbox",
            "default": False,
            "displayOrder": 7,
            "tooltip": (
                "If checked, the original annotations will be deleted after refinement. Needs a tag "
                "above; an original whose refinement is doubtful is kept."
            ),
        },
        PADDING: {
            "type": "number",
            "min": PADDING_RANGE[0],
            "max": PADDING_RANGE[1],
            "default": PADDING_DEFAULT,
            "step": 0.5,
            "unit": "Pixels",
            "displayOrder": 8,
            "tooltip": (
                "Grows (or, if negative, shrinks) each refined outline by this many pixels: "
                "every point moves this far along the outline's normal, with rounded corners."
            ),
        },
        SMOOTHING: {
            "type": "number",
            "min": SMOOTHING_RANGE[0],
            "max": SMOOTHING_RANGE[1],
            "default": SMOOTHING_DEFAULT,
            "step": 0.1,
            "displayOrder": 9,
            "tooltip": (
                "Removes vertices while the outline stays within a band this many pixels wide "
                "around SAM2's exact outline (about half this value on either side); the area "
                "is kept as it was, so smoothing neither shrinks nor grows cells. 0 keeps every "
                "vertex; 0.7, the default, keeps about one vertex per 4 pixels of outline."
            ),
        },
        DOUBTFUL: {
            "type": "select",
            "items": list(DOUBTFUL_CHOICES),
            "default": DOUBTFUL_TAG,
            "required": True,
            "displayOrder": 10,
            "tooltip": (
                f"What happens to a refinement that does not agree with its original.\n"
                f"{DOUBTFUL_TAG}: it is saved with the extra tag '{REVIEW_TAG}' and its "
                "original is kept, even with 'Delete original annotations'.\n"
                f"{DOUBTFUL_ACCEPT}: it is treated like any other refinement (but one cut where "
                "SAM2's mask went on is tagged and never replaces its original).\n"
                f"{DOUBTFUL_SKIP}: it is not saved; its original is kept."
            ),
        },
        OVERLAPS: {
            "type": "checkbox",
            "default": False,
            "displayOrder": 11,
            "tooltip": (
                "Unticked (the default), refined outlines of touching cells do not overlap: where two "
                "overlap, each point goes to the cell whose SAM2 mask is more certain there (the higher "
                "logit; without one, the nearer cell), so neighbours meet along one boundary, and Padding "
                "and Smoothing never push an outline into a neighbour's. A doubtful outline gives way to "
                "an accepted one, a new one to an accepted one saved before; a second outline of the same "
                "cell is doubtful and left as found.\n"
                "Ticked: each outline is kept as SAM2 found it and padded and smoothed on its own, "
                "so outlines may overlap (for cells that really overlap, as in a projection of a "
                "thick sample)."
            ),
        },
    }
