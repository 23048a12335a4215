"""Pixel data of one large-image item: tile metadata, regions, histograms.

Frames are flattened as ``((xy*T + t)*Z + z)*C + c`` and ``frames[]`` in the
metadata says so, as large_image does for a multi-frame source.
"""

from __future__ import annotations

import io
import json
import math
import threading
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from nimbus_server.errors import ApiError

SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32)
TILE_SIZE = 256
# (name in IndexRange, size attribute), fastest-varying first.
_AXES = (("IndexC", "num_c"), ("IndexZ", "num_z"), ("IndexT", "num_t"), ("IndexXY", "num_xy"))
_NAMED_COLORS = {
    "black": "#000000", "white": "#ffffff", "red": "#ff0000",
    "green": "#00ff00", "blue": "#0000ff",
}


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
        levels = max(1, math.ceil(math.log2(max(self.width, self.height) / TILE_SIZE)) + 1)
        meta: dict[str, Any] = {
            "sizeX": self.width,
            "sizeY": self.height,
            "tileWidth": TILE_SIZE,
            "tileHeight": TILE_SIZE,
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
        frame = self._frame(query.get("frame", 0))
        rows, cols = self._bounds(query)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            raise _bad("Region has no area.")
        height, width = rows.stop - rows.start, cols.stop - cols.start
        out_h, out_w = _output_size(height, width, _optional_int(query, "width"), _optional_int(query, "height"))
        factor = _level_factor(height, width, out_h, out_w)

        def read(band_frame: int) -> np.ndarray:
            """The region's raw pixels at the pyramid level large_image would read."""
            data = self.planes[band_frame, rows, cols]
            if factor == 1:
                return data
            return _box_resize(data[..., np.newaxis], -(-height // factor), -(-width // factor))[..., 0]

        if "style" in query:
            data = self._styled(_parse_style(query["style"]), frame, read)
        else:
            data = read(frame)[..., np.newaxis]
        if (out_h, out_w) != data.shape[:2]:
            data = _box_resize(data, out_h, out_w)
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

    def _styled(self, bands: list[dict], frame: int, read) -> np.ndarray:
        """Each band (its pixels from `read(frame)`) windowed to min..max through its
        palette; the bands composited with "lighten". Returns 8-bit RGBA."""
        rgb = None
        for band in bands:
            band_frame = self._frame(band.get("frame", frame))
            data = read(band_frame).astype(np.float64)
            full = self.planes[band_frame]
            low = _style_bound(band.get("min", "min"), full, "min")
            high = _style_bound(band.get("max", "max"), full, "max")
            scaled = np.clip((data - low) / ((high - low) if high != low else 1.0), 0.0, 1.0)
            colored = _apply_palette(scaled, band.get("palette", ["#000000", "#ffffff"]))
            rgb = colored if rgb is None else np.maximum(rgb, colored)
        assert rgb is not None
        out = np.empty(rgb.shape[:2] + (4,), dtype=np.uint8)
        out[..., :3] = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        out[..., 3] = 255
        return out

    # --- tiles/histogram ----------------------------------------------------

    def histogram(self, query: dict[str, str]) -> list[dict]:
        """The frame's histogram, computed once per (frame, bins, size) as large_image caches
        it: a client fetching many regions asks for it with each one. With `width`/`height`,
        of the pyramid level large_image reads without resampling: the smallest whose
        power-of-two step still gives at least that size."""
        largest = max(_optional_int(query, "width") or 0, _optional_int(query, "height") or 0) or None
        key = (self._frame(query.get("frame", 0)), _optional_int(query, "bins") or 256, largest)
        with self._histogram_lock:
            if key not in self._histograms:
                self._histograms[key] = self._histogram(*key)
            return self._histograms[key]

    def _histogram(self, frame: int, bins: int, largest: int | None) -> list[dict]:
        data = self.planes[frame]
        if largest:
            step = 2 ** max(0, math.floor(math.log2(max(data.shape) / largest)))
            data = data[::step, ::step]
        values = data[np.isfinite(data)] if data.dtype.kind == "f" else data.ravel()
        low, high = (values.min(), values.max()) if values.size else (0, 0)
        hist, edges = np.histogram(values, bins=bins, range=(float(low), float(max(high, low + 1))))
        as_number = int if data.dtype.kind in "ui" else float
        return [{
            "min": as_number(low),
            "max": as_number(high),
            "mean": float(values.mean()) if values.size else 0.0,
            "stdev": float(values.std()) if values.size else 0.0,
            "samples": int(values.size),
            "hist": [int(count) for count in hist],
            "bin_edges": [float(edge) for edge in edges],
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


def _output_size(height: int, width: int, max_w: int | None, max_h: int | None) -> tuple[int, int]:
    """The region's size fitted inside max_w x max_h, keeping the aspect
    ratio; never larger than the region."""
    if max_w is None and max_h is None:
        return height, width
    if max_w is not None and (max_h is None or max_w * height <= max_h * width):
        if max_w >= width:
            return height, width
        return max(1, height * max_w // width), max_w
    assert max_h is not None
    if max_h >= height:
        return height, width
    return max_h, max(1, width * max_h // height)


def _level_factor(height: int, width: int, out_h: int, out_w: int) -> int:
    """The downsampling of the pyramid level large_image reads a region from: the largest
    power of two that keeps the level at least as fine as the requested output."""
    ratio = min(height / out_h, width / out_w)
    return 2 ** int(math.floor(math.log2(ratio))) if ratio >= 2 else 1


def _box_resize(data: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Downsample (H, W, bands) by averaging the source pixels of each output pixel."""
    resized = data.astype(np.float64)
    for axis, size in ((0, out_h), (1, out_w)):
        length = resized.shape[axis]
        starts = (np.arange(size) * length) // size
        counts = np.diff(np.append(starts, length))
        shape = [1, 1, 1]
        shape[axis] = size
        resized = np.add.reduceat(resized, starts, axis=axis) / counts.reshape(shape)
    if data.dtype.kind in "ui":
        info = np.iinfo(data.dtype)
        resized = np.clip(np.round(resized), info.min, info.max)
    return resized.astype(data.dtype)


def _parse_style(text: str) -> list[dict]:
    try:
        style = json.loads(text)
    except ValueError:
        raise _bad("The style parameter must be JSON.") from None
    if not isinstance(style, dict):
        raise _bad("The style parameter must be a JSON object.")
    bands = style.get("bands", [style])
    if not isinstance(bands, list) or not bands or not all(isinstance(b, dict) for b in bands):
        raise _bad("style.bands must be a non-empty list of objects.")
    return bands


def _style_bound(value: Any, data: np.ndarray, which: str) -> float:
    """A band's min or max: a number, or the frame's own "min"/"max"
    ("auto" is taken as the frame's own bound, "full" as the dtype's range)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value == "auto":
        value = which
    if value in ("min", "max"):
        return float(data.min() if value == "min" else data.max())
    if value == "full":
        if which == "min":
            return 0.0
        return 1.0 if data.dtype.kind == "f" else float(np.iinfo(data.dtype).max)
    raise _bad(f"Unsupported style {which}: {value!r}.")


def _color(text: Any) -> np.ndarray:
    text = _NAMED_COLORS.get(text, text) if isinstance(text, str) else text
    if not isinstance(text, str) or not text.startswith("#") or len(text) not in (4, 7, 9):
        raise _bad(f"Unsupported palette color: {text!r}.")
    digits = text[1:]
    if len(digits) == 3:
        digits = "".join(ch * 2 for ch in digits)
    try:
        return np.array([int(digits[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float64) / 255.0
    except ValueError:
        raise _bad(f"Unsupported palette color: {text!r}.") from None


def _apply_palette(scaled: np.ndarray, palette: Any) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) colors interpolated along the palette."""
    stops = [_color(c) for c in ([palette] if isinstance(palette, str) else palette)]
    if len(stops) == 1:
        stops.insert(0, np.zeros(3))
    positions = np.linspace(0.0, 1.0, len(stops))
    return np.stack(
        [np.interp(scaled, positions, [stop[i] for stop in stops]) for i in range(3)], axis=-1
    )


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
    if data.dtype == np.uint8:
        return data
    if data.dtype.kind == "f":
        return np.clip(np.round(data * 255.0), 0, 255).astype(np.uint8)
    return (data >> 8).astype(np.uint8)
