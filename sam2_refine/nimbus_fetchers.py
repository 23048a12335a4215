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

An image comes back through shared memory where the system has it (a file in a directory
of the job's own under /dev/shm, which the worker maps and removes at once: no copy through
a pipe), through the pool's pipe otherwise or when shared memory is full. The directory is
removed when the job ends, and by the processes themselves when the worker is killed.

A fetch that fails raises its error in the worker, as a fetch in the worker would; the
processes are started and end as processes.py says. The token never leaves the processes
but in requests to the platform: a failure to connect is reported without it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from nimbusimage.worker import WorkerContext  # here, so the fork server has it imported for every process

from .errors import WorkerError
from .messages import Redactor
from .nimbus_images import Images
from .nimbus_transport import Rest, TransportSettings
from .parameters import Location
from .processes import start_context, watch_worker
from .seam import Window

SHARED_MEMORY = "/dev/shm"


@dataclass(frozen=True)
class Connection:
    """What a fetch process needs to reach the platform as the job does."""

    api_url: str
    token: str = field(repr=False)
    dataset_id: str | None
    parameters: dict = field(repr=False)
    transport: TransportSettings
    snapshot: dict | None = field(default=None, repr=False)  # Images.snapshot of the worker's connection


# In a fetch process: its connection, or why it could not be made; where images go.
_images: Images | None = None
_failed: WorkerError | None = None
_image_dir: str | None = None


def _start(connection: Connection, image_dir: str | None, worker_pid: int) -> None:
    """Each fetch process's start: its own connection (a failure is raised by each fetch,
    in the worker, whose job log keeps the token out)."""
    global _images, _failed, _image_dir
    _image_dir = image_dir
    watch_worker(worker_pid, on_end=lambda: image_dir and shutil.rmtree(image_dir, ignore_errors=True))
    try:
        context = WorkerContext(dataset_id=connection.dataset_id, api_url=connection.api_url, token=connection.token,
                                params=connection.parameters)
        transport = connection.transport
        answers = SharedAnswers(image_dir) if image_dir is not None else None
        _images = Images(Rest(context._gc, lambda: transport), lambda: context.dataset, answers)
        _images.restore(connection.snapshot)
    except Exception as error:
        redact = Redactor([connection.token])
        _failed = WorkerError(f"Could not connect to the platform: {redact.line(f'{type(error).__name__}: {error}')}",
                              info="Check the --apiUrl the platform passes.")


class SharedAnswers(MutableMapping):
    """Each frame's contrast answer (`nimbus_images._memoized_contrast`) kept as a small
    file in the job's directory, so that the fetch processes together ask for each frame's
    histogram once, as the worker's own threads would. A file appears whole (renamed into
    place); one that cannot be read counts as not there."""

    def __init__(self, directory: str):
        self._directory = directory

    def _path(self, key) -> str:
        return os.path.join(self._directory, f"contrast-{hashlib.sha256(repr(key).encode()).hexdigest()[:32]}.json")

    def __getitem__(self, key):
        try:
            with open(self._path(key)) as file:
                answer = json.load(file)
        except (OSError, ValueError):
            raise KeyError(key) from None
        return None if answer is None else tuple(answer)

    def __setitem__(self, key, answer) -> None:
        try:
            descriptor, temporary = tempfile.mkstemp(dir=self._directory, suffix=".part")
            with open(descriptor, "w") as file:
                json.dump(None if answer is None else list(answer), file)
            os.replace(temporary, self._path(key))
        except OSError:  # not kept (the job is ending, or shared memory is full): asked again if needed
            pass

    def __delitem__(self, key) -> None:
        os.unlink(self._path(key))

    def __iter__(self):
        return iter(())  # looked up by key only

    def __len__(self) -> int:
        return 0


def _ready() -> None:
    """A no-op for each fetch process, so they start before the first window is asked for."""


def _fetch(location: Location, window: Window | None, max_size: int | None) -> tuple:
    """The image (the frame when `window` is None) as `_shared` hands it back, and
    whether it is black."""
    if _failed is not None:
        raise _failed
    image = _images.frame(location, max_size) if window is None else _images.window(location, window, max_size)
    return _shared(np.ascontiguousarray(image)), not image.any()


def _shared(image: np.ndarray) -> tuple:
    """("file", path, shape, dtype): the image written to a file of the job's directory in
    shared memory; ("array", image) where there is none, or no room in it."""
    if _image_dir is not None:
        path = None
        try:
            descriptor, path = tempfile.mkstemp(dir=_image_dir)
            with open(descriptor, "wb", buffering=0) as file:
                data = memoryview(image).cast("B")
                while data:
                    data = data[file.write(data):]
            return "file", path, image.shape, image.dtype.str
        except OSError:  # full (a container's /dev/shm is small), or gone with the job's end
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
    return "array", image


def _received(shared: tuple) -> np.ndarray:
    """The image `_shared` handed back: a file is mapped (copy on write: the array is the
    caller's to change) and removed at once; the memory goes with the array."""
    if shared[0] == "array":
        return shared[1]
    _, path, shape, dtype = shared
    descriptor = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        if size == 0:  # an image of no pixels
            return np.empty(shape, dtype)
        mapped = mmap.mmap(descriptor, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(descriptor)
        os.unlink(path)
    return np.frombuffer(mapped, dtype=dtype).reshape(shape)


class Fetchers:
    """`count` fetch processes. `frame` and `window` wait for their image and return it with
    whether it is black (all zero); they may be called from several threads at once.
    `close` when done."""

    def __init__(self, connection: Connection, count: int):
        self._image_dir = None
        if os.path.isdir(SHARED_MEMORY) and os.access(SHARED_MEMORY, os.W_OK):
            self._image_dir = tempfile.mkdtemp(prefix=f"sam2-refine-{os.getpid()}-", dir=SHARED_MEMORY)
        self._pool = ProcessPoolExecutor(max_workers=count, mp_context=start_context(), initializer=_start,
                                         initargs=(connection, self._image_dir, os.getpid()))
        for _ in range(count):
            self._pool.submit(_ready)

    def frame(self, location: Location, max_size: int | None = None) -> tuple[np.ndarray, bool]:
        """As `Platform.frame_image`."""
        return self._received(self._pool.submit(_fetch, location, None, max_size).result())

    def window(self, location: Location, window: Window, max_size: int | None = None) -> tuple[np.ndarray, bool]:
        """As `Platform.window_image`."""
        return self._received(self._pool.submit(_fetch, location, window, max_size).result())

    @staticmethod
    def _received(result: tuple) -> tuple[np.ndarray, bool]:
        shared, black = result
        return _received(shared), black

    def close(self, wait: bool = True) -> None:
        """Stop the processes (fetches not started are cancelled) and remove the images
        not taken. `wait`: until the processes have ended (at a job's end they are idle),
        so the pool's semaphores are released before the worker exits; not after a failure
        or a cancel, when one may still be waiting for the platform."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if self._image_dir is not None:
            shutil.rmtree(self._image_dir, ignore_errors=True)
