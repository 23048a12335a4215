"""The dataset itself: its folder and the size of its image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .nimbus_transport import Rest
from .parameters import DatasetSizes


@dataclass(frozen=True)
class FrameGeometry:
    sizes: DatasetSizes
    width: int   # columns
    height: int  # rows


class Dataset:
    """One dataset (a folder of the platform), through the SDK's dataset (`sdk_dataset()`),
    which reads the folder, its image item and the tile metadata once."""

    def __init__(self, rest: Rest, sdk_dataset: Callable[[], Any]):
        self._rest = rest
        self._dataset = sdk_dataset

    def frame_geometry(self) -> FrameGeometry:
        def read() -> FrameGeometry:
            dataset = self._dataset()
            height, width = dataset.shape
            return FrameGeometry(
                DatasetSizes(xy=dataset.num_xy, z=dataset.num_z, time=dataset.num_time), int(width), int(height)
            )

        return self._rest.read("read the dataset", read)
