"""Everything the worker asks of the NimbusImage platform, through the `nimbusimage` SDK.

`Platform` is one job's connection: it composes one small accessor per resource, as the
SDK arranges its own:

| accessor | module | what it is |
|---|---|---|
| `Rest` | `nimbus_transport` | the transport (timeouts, retries, writes sent once), error translation, paging, the id cursor |
| `Dataset` | `nimbus_dataset` | the folder and the image's size |
| `Images` | `nimbus_images` | frames and windows as the user sees them |
| `Fetchers` | `nimbus_fetchers` | the same in processes of their own, each with its own connection |
| `Annotations` | `nimbus_annotations` | reads reduced to compact records (`nimbus_records`); creates and deletes |
| `Connections` | `nimbus_connections` | the same for annotation connections |

The job's request settings live here, read at each request by the transport and by
`writeback` (which waits on them): `configure` sets `HTTP_TIMEOUT` and `RETRY_SECONDS`
from the environment.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping

import numpy as np

from .errors import WorkerError
from .seam import Window
from .nimbus_annotations import Annotations
from .nimbus_connections import Connections
from .nimbus_dataset import Dataset, FrameGeometry
from .nimbus_fetchers import Connection, Fetchers
from .nimbus_images import Images
from .nimbus_records import (  # noqa: F401 (the names write-back and tests import from here)
    DOUBTED_KEY, MARKER_KEY, SOURCE_KEY, AnnotationRecord, ConnectionRecord, outline_digest, record_of,
)
from .nimbus_transport import (  # noqa: F401 (the same)
    JobTransport, OutcomeUnknown, PayloadTooLarge, Rest, TransportSettings, access_error, chunks_by_size, describe,
    iter_chunks, json_size,
)
from .parameters import Location

DEFAULT_HTTP_TIMEOUT = 120.0
DEFAULT_RETRY_SECONDS = 60.0
HTTP_TIMEOUT = DEFAULT_HTTP_TIMEOUT
RETRY_SECONDS = DEFAULT_RETRY_SECONDS
FIRST_BACKOFF = 0.25


def _seconds_setting(environment: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = environment.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise WorkerError(
            f"The environment variable {name} is {raw!r}, not a number of seconds"
            + (f" of at least {minimum:g}" if minimum > 0 else ""),
            info=f"Set {name} to a number of seconds such as {default:g}, or leave it unset for {default:g}.",
            title="Invalid setting",
        )
    return value


def configure(environment: Mapping[str, str]) -> None:
    """Read SAM2_REFINE_HTTP_TIMEOUT and SAM2_REFINE_RETRY_SECONDS from `environment`;
    a WorkerError names a value that is not a usable number of seconds."""
    global HTTP_TIMEOUT, RETRY_SECONDS
    timeout = _seconds_setting(environment, "SAM2_REFINE_HTTP_TIMEOUT", DEFAULT_HTTP_TIMEOUT, 0.001)
    retry = _seconds_setting(environment, "SAM2_REFINE_RETRY_SECONDS", DEFAULT_RETRY_SECONDS, 0.0)
    HTTP_TIMEOUT, RETRY_SECONDS = timeout, retry


def transport_settings() -> TransportSettings:
    """The settings as they are now (`configure`, or a test's own)."""
    return TransportSettings(timeout=HTTP_TIMEOUT, retry_seconds=RETRY_SECONDS, first_backoff=FIRST_BACKOFF)


class Platform:
    """One job's connection to the platform: the dataset, its image, annotations and
    connections. The methods `writeback.Platform` names keep their names and parameters
    (tests run write-back against an in-memory fake with the same ones)."""

    def __init__(self, api_url: str, token: str, dataset_id: str | None, parameters: dict):
        from nimbusimage.worker import WorkerContext

        # The SDK's worker context: its client, its dataset accessors and its message lines.
        self.context = WorkerContext(dataset_id=dataset_id, api_url=api_url, token=token, params=parameters)
        self.dataset_id = dataset_id
        self._connection = (api_url, token, dataset_id, parameters)
        self._rest = Rest(self.context._gc, transport_settings)
        self._dataset = Dataset(self._rest, dataset_id, lambda: self.context.dataset)
        self._images = Images(self._rest, lambda: self.context.dataset)
        self._annotations = Annotations(self._rest, dataset_id, lambda: self._dataset.frame_geometry().sizes)
        self._connections = Connections(self._rest, dataset_id)

    # --- interface ---------------------------------------------------------------------

    def post_interface(self, image: str, interface: dict) -> None:
        try:
            self.context.set_interface(image, interface)
        except Exception as error:
            raise access_error(error) or WorkerError(
                f"Could not save the tool's interface: {describe(error)}",
                info="Try refreshing the tool list in the app.",
            ) from error

    # --- the dataset and its image ---------------------------------------------------------

    def require_write_access(self) -> None:
        """A WorkerError if this job's user may read the dataset but not write it."""
        self._dataset.require_write_access()

    def require_visible_layer(self) -> None:
        """A WorkerError if the dataset's image shows this job's user no layer."""
        self._images.require_visible_layer()

    def frame_geometry(self) -> FrameGeometry:
        return self._dataset.frame_geometry()

    def frame_image(self, location: Location, max_size: int | None = None) -> np.ndarray:
        return self._images.frame(location, max_size)

    def window_image(self, location: Location, window: Window, max_size: int | None = None) -> np.ndarray:
        return self._images.window(location, window, max_size)

    def fetchers(self, count: int) -> Fetchers:
        """`count` processes that draw frames and windows as `frame_image` and `window_image`
        do, each with its own connection, starting from what this one has read of the dataset
        and its view (`require_visible_layer` and `frame_geometry` read all of it)."""
        api_url, token, dataset_id, parameters = self._connection
        connection = Connection(api_url, token, dataset_id, parameters, transport_settings(),
                                self._rest.read("read the dataset's view", self._images.snapshot))
        return Fetchers(connection, count)

    # --- annotations -------------------------------------------------------------------------

    def cursor(self) -> str | None:
        """An id before any the server creates from now on (None before the job saw one)."""
        return self._rest.cursor()

    def polygons(self, any_of_tags: tuple[str, ...], locations: Collection[Location] | None = None
                 ) -> list[AnnotationRecord]:
        """Every polygon and rectangle (both outline an object) carrying any of
        `any_of_tags` (all of them if none), at `locations` (all if None)."""
        return self._annotations.outlines(any_of_tags, locations)

    def tagged_annotations(self, any_of_tags: tuple[str, ...], locations: Collection[Location] | None = None
                           ) -> list[AnnotationRecord]:
        """Every annotation of any shape carrying any of `any_of_tags`, at `locations` (all if None)."""
        return self._annotations.tagged(any_of_tags, locations)

    def output_polygons(self, tags: tuple[str, ...], locations: Collection[Location] | None = None
                        ) -> list[AnnotationRecord]:
        """The polygons carrying all of `tags` (every polygon if none) at `locations`: where
        refined polygons of earlier runs are, marked or (edited in the app) not."""
        return self._annotations.polygons_with_all(tags, locations)

    def annotations_since(self, cursor: str | None, tags: tuple[str, ...]) -> Iterator[AnnotationRecord]:
        """The polygons carrying all of `tags` created after `cursor`."""
        return self._annotations.since(cursor, tags)

    def existing_annotations(self, annotation_ids: list[str]) -> set[str]:
        """Which of `annotation_ids` the dataset still holds."""
        return self._annotations.existing(annotation_ids)

    def create_annotations(self, documents: list[dict]) -> list[dict]:
        """POST one chunk; returns the created documents in request order."""
        return self._annotations.create(documents)

    def delete_annotations(self, annotation_ids: list[str]) -> None:
        self._annotations.delete(annotation_ids)

    # --- connections -------------------------------------------------------------------------

    def connections(self, touching: Collection[str] | None = None) -> list[ConnectionRecord]:
        """The dataset's connections with an end in `touching` (all if None)."""
        return self._connections.touching(touching)

    def dataset_connections(self) -> list[ConnectionRecord]:
        """Every annotation connection of the dataset."""
        return self._connections.touching()

    def connections_since(self, cursor: str | None) -> Iterator[ConnectionRecord]:
        """The connections created after `cursor`."""
        return self._connections.since(cursor)

    def existing_connections(self, connection_ids: list[str]) -> set[str]:
        """Which of `connection_ids` the dataset still holds."""
        return self._connections.existing(connection_ids)

    def create_connections(self, connections: list[dict]) -> list[dict]:
        return self._connections.create(connections)

    def delete_connections(self, connection_ids: list[str]) -> None:
        self._connections.delete(connection_ids)
