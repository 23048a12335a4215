"""Window images fetched and composited in processes of their own (`Fetchers`), so that the
worker's own process only receives them.

Drawing a window as the user sees it (the request, reading the answer, compositing the
visible layers in floating point) costs about as much CPU time as everything else the
worker's own process does for the objects in it; in processes of their own it runs beside
the model instead of taking turns with it. Each process holds its own connection to the
platform, made when it starts from the job's API URL, token and dataset and the job's
request settings (`Connection`), and starts from what the worker's own connection has read
of the dataset and of the user's view of it (`Images.snapshot`), so it draws each image by
the same view, asking only for the regions (and each frame's contrast histogram once).

A fetch that fails raises its error in the worker, as a fetch in the worker would; the
processes are started and end as processes.py says. The token never leaves the processes
but in requests to the platform: a failure to connect is reported without it.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import WorkerError
from .messages import Redactor
from .nimbus_images import Images
from .nimbus_transport import Rest, TransportSettings
from .parameters import Location
from .processes import start_context, watch_worker
from .seam import Window


@dataclass(frozen=True)
class Connection:
    """What a fetch process needs to reach the platform as the job does."""

    api_url: str
    token: str = field(repr=False)
    dataset_id: str | None
    parameters: dict = field(repr=False)
    transport: TransportSettings
    snapshot: dict | None = field(default=None, repr=False)  # Images.snapshot of the worker's connection


# This process's connection (in a fetch process), or why it could not be made.
_images: Images | None = None
_failed: WorkerError | None = None


def _start(connection: Connection, worker_pid: int) -> None:
    """Each fetch process's start: its own connection (a failure is raised by each fetch,
    in the worker, whose job log keeps the token out)."""
    global _images, _failed
    watch_worker(worker_pid)
    try:
        from nimbusimage.worker import WorkerContext

        context = WorkerContext(dataset_id=connection.dataset_id, api_url=connection.api_url, token=connection.token,
                                params=connection.parameters)
        transport = connection.transport
        _images = Images(Rest(context._gc, lambda: transport), lambda: context.dataset)
        _images.restore(connection.snapshot)
    except Exception as error:
        redact = Redactor([connection.token])
        _failed = WorkerError(f"Could not connect to the platform: {redact.line(f'{type(error).__name__}: {error}')}",
                              info="Check the --apiUrl the platform passes.")


def _ready() -> None:
    """A no-op for each fetch process, so they start before the first window is asked for."""


def _fetch(location: Location, window: Window | None, max_size: int | None) -> tuple[np.ndarray, bool]:
    """The image (the frame when `window` is None) and whether it is black."""
    if _failed is not None:
        raise _failed
    image = _images.frame(location, max_size) if window is None else _images.window(location, window, max_size)
    return image, not image.any()


class Fetchers:
    """`count` fetch processes. `frame` and `window` wait for their image and return it with
    whether it is black (all zero); they may be called from several threads at once."""

    def __init__(self, connection: Connection, count: int):
        self._pool = ProcessPoolExecutor(max_workers=count, mp_context=start_context(), initializer=_start,
                                         initargs=(connection, os.getpid()))
        for _ in range(count):
            self._pool.submit(_ready)

    def frame(self, location: Location, max_size: int | None = None) -> tuple[np.ndarray, bool]:
        """As `Platform.frame_image`."""
        return self._pool.submit(_fetch, location, None, max_size).result()

    def window(self, location: Location, window: Window, max_size: int | None = None) -> tuple[np.ndarray, bool]:
        """As `Platform.window_image`."""
        return self._pool.submit(_fetch, location, window, max_size).result()

    def close(self) -> None:
        """Stop the processes; fetches not started are cancelled."""
        self._pool.shutdown(wait=False, cancel_futures=True)
