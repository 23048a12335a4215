"""The embedded server serves the platform's own pixels (issue 23: answer as the platform
does). Measured against the platform's own server (Girder 5.0.21, girder_large_image
1.35.6a198, the app's multi-source image of a plain TIFF; `scripts/platform_check.py`
check 10): a region asked for at a smaller size is read from a pyramid level that is every
2^k-th pixel, then a 16-bit band takes the nearest pixels, while a styled region (what the
SDK asks for whenever it downsamples) is styled in float, cut to 8 bits and resized with
PIL's Lanczos filter; nothing is averaged over boxes. Full-resolution styled regions come
back as unclamped float32; histograms carry large_image's keys and types."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import requests
from PIL import Image

from nimbus_server import NimbusServer


@pytest.fixture
def server():
    with NimbusServer(token="region-token") as running:
        yield running


def _item(server, frames: np.ndarray) -> str:
    dataset_id = server.add_dataset(frames)
    items = requests.get(f"{server.url}/item", params={"folderId": dataset_id, "limit": 0},
                         headers={"Girder-Token": server.token}, timeout=30).json()
    return next(item["_id"] for item in items if "largeImage" in item)


def _get(server, item: str, what: str = "region", **params):
    answer = requests.get(f"{server.url}/item/{item}/tiles" + (f"/{what}" if what else ""), params=params,
                          headers={"Girder-Token": server.token}, timeout=30)
    assert answer.status_code == 200, answer.text
    return pickle.loads(answer.content) if what == "region" else answer.json()


def _region(server, item: str, **params) -> np.ndarray:
    return _get(server, item, encoding="pickle:5", frame=params.pop("frame", 0), **params)


def _gray(low: float, high: float, frame: int = 0) -> dict:
    return {"frame": frame, "min": low, "max": high, "palette": ["#000000", "#ffffff"]}


@pytest.mark.parametrize(("width", "height", "tile", "levels"), [
    (512, 512, 512, 1), (120, 100, 128, 1), (1536, 2048, 1024, 2), (999, 1201, 1024, 2), (4097, 3001, 1024, 4),
    (2600, 700, 1024, 3),
])
def test_the_tile_metadata_has_the_platforms_tile_size_and_levels(server, width, height, tile, levels):
    """As the platform answered for images of these sizes (a plain TIFF's pyramid: tiles of
    1024 halved while the image fits in half of one)."""
    tiles = _get(server, _item(server, np.zeros((1, 1, 1, 1, height, width), np.uint16)), "")
    assert (tiles["tileWidth"], tiles["tileHeight"], tiles["levels"]) == (tile, tile, levels)


def test_a_downscaled_16_bit_region_is_the_nearest_pixels_of_the_pyramid_level(server):
    """2048 rows at 512: the level at 1/2 (every second pixel), then every second pixel of
    that: every fourth pixel of the frame, none of them averaged."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60000, size=(1, 1, 1, 1, 2048, 16), dtype=np.uint16)
    item = _item(server, frames)

    region = _region(server, item, width=512, height=512)

    assert region.shape == (512, 4, 1) and region.dtype == np.uint16
    np.testing.assert_array_equal(region[..., 0], frames[0, 0, 0, 0, ::4, ::4])


def test_a_region_asked_larger_than_it_is_is_scaled_up_with_the_nearest_pixels(server):
    frames = np.arange(4 * 6, dtype=np.uint16).reshape(1, 1, 1, 1, 4, 6)
    region = _region(server, _item(server, frames), width=12, height=12)
    assert region.shape == (8, 12, 1)
    np.testing.assert_array_equal(region[..., 0], np.repeat(np.repeat(frames[0, 0, 0, 0], 2, 0), 2, 1))


def test_a_downscaled_styled_region_is_the_styled_level_cut_to_8_bits_through_lanczos(server):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 60000, size=(1, 1, 1, 2, 64, 96), dtype=np.uint16)
    item = _item(server, frames)
    bands = [_gray(10000.0, 50000.0, 0)]

    region = _region(server, item, width=48, height=48, style=json.dumps({"bands": bands}))

    styled = (frames[0, 0, 0, 0].astype(np.float64) - 10000.0) / 40000.0 * 255.0
    eight_bit = np.clip(styled, 0, 255).astype(np.uint8)
    expected = np.asarray(Image.fromarray(eight_bit, "L").resize((48, 32), Image.Resampling.LANCZOS))
    assert region.shape == (32, 48, 1) and region.dtype == np.uint8
    np.testing.assert_array_equal(region[..., 0], expected)

    # Two bands: RGBA, the bands' lighter value, opaque.
    both = _region(server, item, width=48, height=48,
                   style=json.dumps({"bands": bands + [_gray(1000.0, 50000.0, 1)]}))
    second = (frames[0, 0, 0, 1].astype(np.float64) - 1000.0) / 49000.0 * 255.0
    lighter = np.clip(np.maximum(styled, second), 0, 255).astype(np.uint8)
    rgba = np.dstack([lighter] * 3 + [np.full_like(lighter, 255)])
    expected = np.asarray(Image.fromarray(rgba, "RGBA").resize((48, 32), Image.Resampling.LANCZOS))
    assert both.shape == (32, 48, 4)
    np.testing.assert_array_equal(both, expected)


def test_a_full_resolution_styled_region_is_float32_and_not_clamped(server):
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 60000, size=(1, 1, 1, 1, 8, 16), dtype=np.uint16)
    region = _region(server, _item(server, frames), style=json.dumps({"bands": [_gray(10000.0, 50000.0)]}))
    expected = (frames[0, 0, 0, 0].astype(np.float64) - 10000.0) / 40000.0 * 255.0
    assert region.shape == (8, 16, 1) and region.dtype == np.float32
    np.testing.assert_allclose(region[..., 0], expected, rtol=1e-6)
    assert region.min() < 0 and region.max() > 255


def test_8_bit_and_float_regions_are_resized_with_lanczos_in_8_bits(server):
    """As the platform: 8-bit data through PIL's Lanczos; float data clipped to 0..255 and
    cut to 8 bits first (a float frame of values in 0..3 comes back as 0..3 in uint8)."""
    rng = np.random.default_rng(4)
    eight = rng.integers(0, 250, size=(1, 1, 1, 1, 64, 96), dtype=np.uint8)
    region = _region(server, _item(server, eight), width=48, height=48)
    expected = np.asarray(Image.fromarray(eight[0, 0, 0, 0], "L").resize((48, 32), Image.Resampling.LANCZOS))
    assert region.dtype == np.uint8
    np.testing.assert_array_equal(region[..., 0], expected)

    floats = (rng.random((1, 1, 1, 1, 64, 96)) * 3).astype(np.float32)
    region = _region(server, _item(server, floats), width=48, height=48)
    cut = np.clip(floats[0, 0, 0, 0], 0, 255).astype(np.uint8)
    assert region.dtype == np.uint8
    np.testing.assert_array_equal(region[..., 0], np.asarray(
        Image.fromarray(cut, "L").resize((48, 32), Image.Resampling.LANCZOS)))


def test_the_histogram_has_large_images_keys_types_and_range(server):
    rng = np.random.default_rng(5)
    frames = rng.integers(100, 1167, size=(1, 1, 1, 1, 64, 96), dtype=np.uint16)
    [histogram] = _get(server, _item(server, frames), "histogram", frame=0, bins=16, width=2048, height=2048,
                       resample="false", cache="none")
    plane = frames[0, 0, 0, 0]
    low, high = float(plane.min()), float(plane.max())
    counts, edges = np.histogram(plane, 16, (low, high + 1))
    assert histogram["range"] == [low, high + 1]
    assert histogram["hist"] == [float(count) for count in counts]
    assert histogram["bin_edges"] == [float(edge) for edge in edges]
    assert (histogram["min"], histogram["max"], histogram["samples"]) == (low, high, float(plane.size))
    assert histogram["bins"] == 16 and histogram["density"] is False
    assert all(isinstance(histogram[key], float) for key in ("min", "max", "mean", "stdev", "samples"))
    assert histogram["mean"] == pytest.approx(plane.mean()) and histogram["stdev"] == pytest.approx(plane.std())
