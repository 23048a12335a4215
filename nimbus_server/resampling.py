"""How girder_large_image serves a region at a size, so the embedded server gives the
platform's own pixels (large_image 1.35.6a198: tilesource/tileiterator.py, base.py
getRegion and _applyStyle, the multi and tifffile sources), for the app's multi-source
image of a plain (not pyramidal) TIFF:

- the pyramid: tiles of 1024 px, halved while both sides fit in half a tile (not below
  128); `levels` = ceil(log2(longest side / tile)) + 1; a lower level is every 2^k-th
  pixel from the origin (the tifffile source steps through the file; nothing is averaged);
- the output size: the region fitted inside width x height, keeping its aspect
  (`_calculateWidthHeight`; a larger size scales up);
- the level read: the coarsest whose step still reaches the output size, the region's
  bounds divided by the step and truncated;
- the last resample to the output size: a 16-bit band takes the nearest pixels (output
  index i reads int(i * region / output)); 8-bit data goes through PIL's Lanczos (down) or
  bicubic (up) filter; other data (float) is first clipped to 0..255 and cut to 8 bits;
- a style maps each band through its palette onto the level's pixels as float32 (values
  past the palette's end are not clamped), which a resample clips and cuts to 8 bits first.

Matched pixel for pixel against the platform's own server on random regions, sizes and
styles (`scripts/platform_check.py`, check 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_TILE = 1024   # the tifffile source's tile for a single-level file
MIN_TILE = 128


def pyramid(width: int, height: int) -> tuple[int, int]:
    """(tile side, number of levels) of the image's multi-source pyramid."""
    tile = MAX_TILE
    while tile // 2 >= width and tile // 2 >= height and tile // 2 >= MIN_TILE:
        tile //= 2
    levels = int(max(1, math.ceil(math.log(max(width / tile, height / tile)) / math.log(2)) + 1))
    return tile, levels


def output_size(region_width: int, region_height: int, max_width: int | None, max_height: int | None
                ) -> tuple[int, int]:
    """(width, height) of the answer: the region's own size without a cap, else the region
    fitted inside the cap, keeping its aspect (large_image's `_calculateWidthHeight`)."""
    if max_width is None and max_height is None:
        return region_width, region_height
    if max_height and not max_width:
        max_width = max_height * 16
    if max_width and not max_height:
        max_height = max_width * 16
    scaled_width = max(1, int(region_width * max_height / region_height))
    scaled_height = max(1, int(region_height * max_width / region_width))
    if scaled_width == max_width or (max_width * region_height > max_height * region_width
                                     and scaled_height != max_height):
        return int(scaled_width), int(max_height)
    return int(max_width), int(scaled_height)


@dataclass(frozen=True)
class Read:
    """What to read for one region: every `step`-th pixel, then `rows` and `cols` of that
    level; `size` (width, height) is the answer's."""

    step: int
    rows: slice
    cols: slice
    size: tuple[int, int]

    def of(self, plane: np.ndarray) -> np.ndarray:
        return plane[::self.step, ::self.step][self.rows, self.cols]

    @property
    def needs_resample(self) -> bool:
        return self.size != (self.cols.stop - self.cols.start, self.rows.stop - self.rows.start)


def plan(rows: slice, cols: slice, width: int, height: int, max_width: int | None, max_height: int | None
         ) -> Read:
    """The level and the part of it large_image reads for the region `rows` x `cols` of a
    `width` x `height` image asked for at no more than max_width x max_height."""
    region_width, region_height = cols.stop - cols.start, rows.stop - rows.start
    out = output_size(region_width, region_height, max_width, max_height)
    if out == (region_width, region_height):
        return Read(1, rows, cols, out)
    _, levels = pyramid(width, height)
    finest = levels - 1
    down = int(math.ceil(round(math.log(min(out[0] / region_width, out[1] / region_height)) / math.log(2), 4)))
    level = max(0, finest + down)
    if level >= finest:
        return Read(1, rows, cols, out)
    step = 2 ** (finest - level)
    left, top = int(cols.start / step), int(rows.start / step)
    right, bottom = max(int(cols.stop / step), left + 1), max(int(rows.stop / step), top + 1)
    return Read(step, slice(top, bottom), slice(left, right), out)


def resample(data: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An unstyled (H, W) region resampled to `size` (width, height) as getRegion does."""
    width, height = size
    if data.dtype == np.uint16:
        rows = (np.arange(height) * data.shape[0]) // height
        cols = (np.arange(width) * data.shape[1]) // width
        return data[rows][:, cols]
    return _pil_resize(data[..., np.newaxis] if data.dtype == np.uint8 else _clip_to_8bit(data[..., np.newaxis]),
                       size)[..., 0]


def resample_styled(styled: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A styled (H, W, 1 or 4) float32 region resampled to `size`: 8 bits, PIL's filter."""
    return _pil_resize(_clip_to_8bit(styled), size)


def _clip_to_8bit(data: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(data, nan=0), 0, 255).astype(np.uint8)


def _pil_resize(data: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 1 or 4) uint8 -> (height, width, same bands): Lanczos down, bicubic up."""
    from PIL import Image

    bands = data.shape[2]
    image = Image.fromarray(data[..., 0] if bands == 1 else data, "L" if bands == 1 else "RGBA")
    upscale = size[0] > data.shape[1]
    resized = np.asarray(image.resize(size, Image.Resampling.BICUBIC if upscale else Image.Resampling.LANCZOS))
    return resized[..., np.newaxis] if bands == 1 else resized
