"""Pixel data of one large-image item: tile metadata, regions, histograms.

Frames are flattened as ``((xy*T + t)*Z + z)*C + c`` and ``frames[]`` in the
metadata says so, as large_image does for a multi-frame source.
"""

from __future__ import annotations

import io
import threading
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from nimbus_server import resampling, styling
from nimbus_server.errors import ApiError

SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32)
HISTOGRAM_SIZE = 2048  # tiles/histogram's default width and height
STYLE_RANGE_SIZE = 1024  # the size at which large_image scans a frame's range for a style
# (name in IndexRange, size attribute), fastest-varying first.
_AXES = (("IndexC", "num_c"), ("IndexZ", "num_z"), ("IndexT", "num_t"), ("IndexXY", "num_xy"))


def _bad(message: str) -> ApiError:
    return ApiError(400, message, "rest")


@dataclass
class Region:
    """A binary HTTP answer: the encoded region and its content type."""

    content: bytes
    content_type: str


class ImageData:
    """The frames of a dataset, as its large-image item serves them."""

    def __init__(
        self,
        frames: np.ndarray,
        channel_names: list[str],
        mm_x: float | None = None,
    ) -> None:
        if frames.ndim != 6:
            raise ValueError(f"frames must be shaped (XY, Z, T, C, H, W), got {frames.shape}")
        if frames.dtype.type not in SUPPORTED_DTYPES:
            raise ValueError(f"frames dtype must be uint8, uint16 or float32, got {frames.dtype}")
        if 0 in frames.shape:
            raise ValueError(f"frames has an empty axis: {frames.shape}")
        self.num_xy, self.num_z, self.num_t, self.num_c, self.height, self.width = frames.shape
        if len(channel_names) != self.num_c:
            raise ValueError(f"{len(channel_names)} channel names for {self.num_c} channels")
        self.channel_names = list(channel_names)
        self.mm_x = mm_x
        # (XY, Z, T, C) -> (XY, T, Z, C): the flat frame order.
        self.planes = np.ascontiguousarray(
            frames.transpose(0, 2, 1, 3, 4, 5).reshape(-1, self.height, self.width)
        )
        self._histograms: dict[tuple[int, int, int | None], list[dict]] = {}
        self._histogram_lock = threading.Lock()  # requests come in on several threads at once

    @property
    def num_frames(self) -> int:
        return self.planes.shape[0]

    def frame_index(self, xy: int, z: int, t: int, c: int) -> int:
        return ((xy * self.num_t + t) * self.num_z + z) * self.num_c + c

    # --- metadata -----------------------------------------------------------

    def _sizes(self) -> dict[str, int]:
        return {key: getattr(self, attr) for key, attr in _AXES}

    def _frame_entry(self, frame: int, varying: dict[str, int]) -> dict:
        entry: dict[str, Any] = {"Channel": self.channel_names[frame % self.num_c], "Frame": frame,
                                 "Index": frame // self.num_c}
        rest = frame
        for key, attr in _AXES:
            size = getattr(self, attr)
            if key in varying:
                entry[key] = rest % size
            rest //= size
        return entry

    def tiles_metadata(self) -> dict:
        """As girder_large_image answers for the dataset's multi-source image: a single
        frame has no `frames`, `channels`, `channelmap` or `IndexRange` at all; with more
        frames, each names its channel, and only the axes longer than 1 are indexed."""
        tile, levels = resampling.pyramid(self.width, self.height)
        meta: dict[str, Any] = {
            "sizeX": self.width,
            "sizeY": self.height,
            "tileWidth": tile,
            "tileHeight": tile,
            "levels": levels,
            "magnification": None,
            "mm_x": self.mm_x,
            "mm_y": self.mm_x,
            "dtype": str(self.planes.dtype),
            "bandCount": 1,
        }
        if self.num_frames == 1:
            return meta
        varying = {key: size for key, size in self._sizes().items() if size > 1}
        stride, step = {}, 1
        for key, size in self._sizes().items():
            if key in varying:
                stride[key] = step
            step *= size
        meta.update({
            "channels": list(self.channel_names),
            "channelmap": {name: index for index, name in enumerate(self.channel_names)},
            "frames": [self._frame_entry(f, varying) for f in range(self.num_frames)],
            "IndexRange": varying,
            "IndexStride": stride,
        })
        return meta

    # --- tiles/region -------------------------------------------------------

    def _frame(self, value: Any) -> int:
        try:
            frame = int(value)
        except (TypeError, ValueError):
            raise _bad(f"Invalid value for integer parameter frame: {value}.") from None
        if not 0 <= frame < self.num_frames:
            raise _bad(f"Frame {frame} does not exist.")
        return frame

    def region(self, query: dict[str, str]) -> Region:
        """The region as girder_large_image serves it (`resampling`): read from the pyramid
        level its size needs, styled there if asked, then resampled to that size."""
        frame = self._frame(query.get("frame", 0))
        rows, cols = self._bounds(query)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            raise _bad("Region has no area.")
        read = resampling.plan(rows, cols, self.width, self.height, _optional_int(query, "width"),
                               _optional_int(query, "height"))
        if "style" in query:
            data = styling.style(styling.parse_style(query["style"]), lambda f: read.of(self.planes[self._frame(f)]),
                                 frame, self._style_bound)
            if read.needs_resample:
                data = resampling.resample_styled(data, read.size)
        else:
            data = read.of(self.planes[frame])
            if read.needs_resample:
                data = resampling.resample(data, read.size)
            data = data[..., np.newaxis]
        return _encode(np.ascontiguousarray(data), query.get("encoding", "JPEG"))

    def _bounds(self, query: dict[str, str]) -> tuple[slice, slice]:
        units = query.get("units", "base_pixels")
        if units not in ("base_pixels", "pixels", "fraction"):
            raise _bad(f"Unsupported units: {units} (base_pixels, pixels or fraction).")
        scale_x = self.width if units == "fraction" else 1
        scale_y = self.height if units == "fraction" else 1
        left = _optional_float(query, "left", 0.0) * scale_x
        right = _optional_float(query, "right", 1.0 if units == "fraction" else self.width) * scale_x
        top = _optional_float(query, "top", 0.0) * scale_y
        bottom = _optional_float(query, "bottom", 1.0 if units == "fraction" else self.height) * scale_y
        return _span(top, bottom, self.height), _span(left, right, self.width)

    def _level_pixels(self, frame: int, max_width: int, max_height: int) -> np.ndarray:
        """The pixels of the level large_image reads, without resampling, for the whole frame
        at no more than max_width x max_height (histograms; a style's frame range)."""
        whole = slice(0, self.height), slice(0, self.width)
        return resampling.plan(*whole, self.width, self.height, max_width, max_height).of(self.planes[frame])

    def _style_bound(self, value: Any, which: str, frame: int) -> float:
        """A style band's min or max; "min", "max" and "auto" read the frame's range as
        large_image scans it: the level it reads for 1024 x 1024."""
        def band_range() -> tuple[float, float]:
            pixels = self._level_pixels(self._frame(frame), min(self.width, STYLE_RANGE_SIZE),
                                        min(self.height, STYLE_RANGE_SIZE))
            return float(pixels.min()), float(pixels.max())

        return styling.style_bound(value, which, band_range, self.planes.dtype)

    # --- tiles/histogram ----------------------------------------------------

    def histogram(self, query: dict[str, str]) -> list[dict]:
        """The frame's histogram as girder_large_image answers it with `resample=false`, as
        the app and the SDK ask for it (large_image `histogram`): of the pyramid level it
        reads for `width` x `height` (2048 by default; the SDK asks for 2048), over [min,
        max + 1], every number a float but `bins`. (Without `resample=false` the platform
        resamples each tile through PIL in 8 bits; nobody asks so.) Computed once per (frame,
        bins, size), as large_image caches it: a client fetching many regions asks for it
        with each one."""
        width = _optional_int(query, "width") or HISTOGRAM_SIZE
        height = _optional_int(query, "height") or HISTOGRAM_SIZE
        key = (self._frame(query.get("frame", 0)), _optional_int(query, "bins") or 256, width, height)
        with self._histogram_lock:
            if key not in self._histograms:
                self._histograms[key] = self._histogram(*key)
            return self._histograms[key]

    def _histogram(self, frame: int, bins: int, width: int, height: int) -> list[dict]:
        values = self._level_pixels(frame, width, height)
        low, high = float(values.min()), float(values.max())
        as_float = values.astype(np.float64)
        mean = float(as_float.mean())
        variance = float((as_float ** 2).mean()) - mean ** 2  # as large_image computes it
        counts, edges = np.histogram(values, bins, (low, high + 1))
        return [{
            "min": low,
            "max": high,
            "mean": mean,
            "stdev": max(variance, 0.0) ** 0.5,
            "range": [low, high + 1],
            "hist": [float(count) for count in counts],
            "bin_edges": [float(edge) for edge in edges],
            "bins": bins,
            "density": False,
            "samples": float(counts.sum()),
        }]


def _optional_float(query: dict[str, str], key: str, default: float) -> float:
    if query.get(key) in (None, ""):
        return default
    try:
        return float(query[key])
    except ValueError:
        raise _bad(f"Invalid value for number parameter {key}: {query[key]}.") from None


def _optional_int(query: dict[str, str], key: str) -> int | None:
    if query.get(key) in (None, ""):
        return None
    try:
        value = int(float(query[key]))
    except ValueError:
        raise _bad(f"Invalid value for integer parameter {key}: {query[key]}.") from None
    if value < 1:
        raise _bad(f"Parameter {key} must be positive.")
    return value


def _span(low: float, high: float, size: int) -> slice:
    """large_image's region bounds: a negative edge counts from the far
    edge, then both edges are rounded and clamped."""
    low, high = (value + size if value < 0 else value for value in (low, high))
    start = min(size, max(0, round(low)))
    stop = min(size, max(start, round(high)))
    return slice(start, stop)


def _encode(data: np.ndarray, encoding: str) -> Region:
    if encoding == "pickle" or encoding.startswith("pickle:"):
        protocol_text = encoding.partition(":")[2] or str(pickle.DEFAULT_PROTOCOL)
        if not protocol_text.isdigit() or int(protocol_text) > pickle.HIGHEST_PROTOCOL:
            raise _bad(f"Invalid pickle protocol: {protocol_text}.")
        return Region(pickle.dumps(data, protocol=int(protocol_text)), "application/octet-stream")
    formats = {"PNG": ("PNG", "image/png"), "JPEG": ("JPEG", "image/jpeg")}
    if encoding not in formats:
        raise _bad(f"Unsupported encoding: {encoding} (pickle[:N], PNG or JPEG).")
    from PIL import Image

    pil_format, content_type = formats[encoding]
    image = Image.fromarray(_to_8bit(data[..., 0] if data.shape[2] == 1 else data[..., :3]))
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format)
    return Region(buffer.getvalue(), content_type)


def _to_8bit(data: np.ndarray) -> np.ndarray:
    """8 bits as large_image encodes an image (`_imageToPIL`): 16-bit data's high byte,
    anything else clipped to 0..255 and cut."""
    if data.dtype == np.uint8:
        return data
    if data.dtype == np.uint16:
        return (data >> 8).astype(np.uint8)
    return np.clip(np.nan_to_num(data, nan=0), 0, 255).astype(np.uint8)
