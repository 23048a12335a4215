"""The dataset itself: its folder and the size of its image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import WorkerError
from .nimbus_transport import Rest
from .parameters import DatasetSizes

WRITE_ACCESS = 1  # Girder's AccessType.WRITE; READ is 0, ADMIN 2


@dataclass(frozen=True)
class FrameGeometry:
    sizes: DatasetSizes
    width: int   # columns
    height: int  # rows


class Dataset:
    """One dataset (a folder of the platform), through the SDK's dataset (`sdk_dataset()`),
    which reads the folder, its image item and the tile metadata once."""

    def __init__(self, rest: Rest, dataset_id: str | None, sdk_dataset: Callable[[], Any]):
        self._rest = rest
        self._dataset_id = dataset_id
        self._dataset = sdk_dataset

    def require_write_access(self) -> None:
        """Refuse a job whose user may not write the dataset (the platform refuses to start
        one, but access can change while a job waits in the queue): one `GET folder/{id}`,
        whose `_accessLevel` is the caller's level on it. A server that does not say is
        taken at its word when it refuses the first write."""
        folder = self._rest.read("read the dataset", lambda: self._rest.get_json(f"folder/{self._dataset_id}", {}))
        level = folder.get("_accessLevel") if isinstance(folder, dict) else None
        if isinstance(level, int) and not isinstance(level, bool) and level < WRITE_ACCESS:
            raise WorkerError(
                "You may read this dataset but not change it, so SAM2 Refiner cannot save refined outlines to it",
                info="Ask the dataset's owner to give you write access to it, then run the tool again. "
                     "Nothing was changed.",
                title="No write access",
            )

    def frame_geometry(self) -> FrameGeometry:
        def read() -> FrameGeometry:
            dataset = self._dataset()
            height, width = dataset.shape
            return FrameGeometry(
                DatasetSizes(xy=dataset.num_xy, z=dataset.num_z, time=dataset.num_time), int(width), int(height)
            )

        return self._rest.read("read the dataset", read)
