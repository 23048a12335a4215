"""The dataset's image as the user sees it: the visible layers of their view, composited."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

import numpy as np

from .errors import WorkerError
from .seam import Window
from .nimbus_transport import Rest, status_of
from .parameters import Location

_ASK_FOR_THE_VIEW = ("Ask the dataset's owner to share it with you from the app (sharing a dataset there shares "
                     "its view too), then run the tool again. Nothing was changed.")


# What the SDK keeps of a dataset once read (its folder, image item and tile metadata) and of
# the user's view of it (the view and its configuration, which hold the layers).
_DATASET_STATE = ("_folder_data", "_item_id", "_tiles")
_VIEW_STATE = ("_view", "_cache")


class Images:
    """Frames and windows of one dataset, drawn as the app draws them, through the SDK's
    image accessor (`sdk_dataset().images`)."""

    def __init__(self, rest: Rest, sdk_dataset: Callable[[], Any], answers: MutableMapping | None = None):
        """`answers`: where each frame's contrast answer is kept (see `_memoized_contrast`;
        a mapping other processes share, or this one's own)."""
        self._rest = rest
        self._dataset = sdk_dataset
        self._answers = {} if answers is None else answers
        self._memoized = False

    def snapshot(self) -> dict | None:
        """What the SDK has read of the dataset and of the user's view of it (plain data),
        for `restore` in another process's `Images`, so that it draws by the same view
        without asking for it again; None when that is not all read yet."""
        dataset = self._dataset()
        state = {name: getattr(dataset, name, None) for name in _DATASET_STATE}
        state.update({name: getattr(dataset.collections, name, None) for name in _VIEW_STATE})
        return state if all(value is not None for value in state.values()) else None

    def restore(self, snapshot: dict | None) -> None:
        """Start from another `Images`' `snapshot` (nothing to do for None)."""
        if snapshot is None:
            return
        dataset = self._dataset()
        for name in _DATASET_STATE:
            setattr(dataset, name, snapshot[name])
        for name in _VIEW_STATE:
            setattr(dataset.collections, name, snapshot[name])

    @property
    def _images(self):
        """The SDK's image accessor, asking for each frame's contrast histogram once: it
        is the same for every window of a frame and channel (the SDK asks per composite)."""
        images = self._dataset().images
        if not self._memoized:
            images._contrast_range = _memoized_contrast(images._contrast_range, self._answers)
            self._memoized = True
        return images

    def require_visible_layer(self) -> None:
        """Refuse a job whose image would be black as the user sees it: the user's view of
        the dataset (their own, else any they may read, as the SDK and the app choose it)
        and its configuration hold the layers, and each has its own access list on the
        platform; or every layer is hidden."""
        collections = self._dataset().collections

        def layers() -> list[dict] | None:
            if not collections.view:
                return None
            try:
                return collections.layers
            except Exception as error:
                if status_of(error) in (400, 403):  # the configuration is gone, or not shared
                    return None
                raise

        found = self._rest.read("read the dataset's layers", layers)
        if found is None:
            raise WorkerError(
                "The dataset's view is not shared with you, so its image shows no layer to you",
                info=_ASK_FOR_THE_VIEW, title="No visible layer",
            )
        if not any(layer.get("visible", True) for layer in found):
            raise WorkerError(
                "No layer of the dataset's image is visible in your view of it, so the image is black",
                info="Make at least one layer visible in the app (with a contrast that shows the cells), then run "
                     "the tool again. Nothing was changed.",
                title="No visible layer",
            )

    def frame(self, location: Location, max_size: int | None = None) -> np.ndarray:
        """The frame as the user sees it: visible layers composited, (rows, cols, 3) float32
        in [0, 1]; with `max_size`, downsampled by the server so its longer side is at most that."""
        return self._rest.read(
            f"read the image at {_where(location)}",
            lambda: self._images.get_composite(
                xy=location.xy, z=location.z, time=location.time, dtype="float32", max_size=max_size
            ),
        )

    def window(self, location: Location, window: Window, max_size: int | None = None) -> np.ndarray:
        """The part of the frame `window` covers, as `frame` draws it; with `max_size`,
        downsampled by the server so its longer side is at most that."""
        crop = (window.left, window.top, window.left + window.width, window.top + window.height)
        return self._rest.read(
            f"read the image at {_where(location)}",
            lambda: self._images.get_composite(
                xy=location.xy, z=location.z, time=location.time, dtype="float32", max_size=max_size, crop=crop
            ),
        )


def _where(location: Location) -> str:
    return f"XY {location.xy + 1}, Z {location.z + 1}, Time {location.time + 1}"


def _memoized_contrast(contrast_range: Callable, answers: MutableMapping) -> Callable:
    """The SDK's `_contrast_range(contrast, frames)`, each answer kept in `answers` for the
    job (one histogram request per frame and contrast setting, whichever thread or process
    asks first; two asking at the same moment may both ask)."""
    lock = threading.Lock()

    def memoized(contrast: dict, frames: list[int]):
        key = (json.dumps(contrast, sort_keys=True, default=str), tuple(frames))
        with lock:
            try:
                return answers[key]
            except KeyError:
                pass
        answer = contrast_range(contrast, frames)
        with lock:
            answers.setdefault(key, answer)
        return answer

    return memoized
