"""large_image's band styling (`style=` on tiles/region; base.py `_applyStyle`), as the
app's layers and the SDK's composites ask for it: each band windowed to its min..max and
mapped through its palette, the bands composited with "lighten" (per-pixel maximum). The
result is float32 on a 0..255 scale, one channel for a single band with the plain black
to white palette and RGBA otherwise; values past the palette's ends are not clamped where
large_image does not clamp them (a two-color palette starting at 0 scales the band)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from nimbus_server.errors import ApiError

_NAMED_COLORS = {
    "black": "#000000", "white": "#ffffff", "red": "#ff0000",
    "green": "#00ff00", "blue": "#0000ff",
}
GRAY = np.array([[0, 0, 0, 255], [255, 255, 255, 255]], dtype=np.float64)


def _bad(message: str) -> ApiError:
    return ApiError(400, message, "rest")


def parse_style(text: str) -> list[dict]:
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


def color(text: Any) -> np.ndarray:
    """A color as large_image reads it: RGBA on 0..255 ('#rgb', '#rrggbb', '#rrggbbaa', a name)."""
    text = _NAMED_COLORS.get(text, text) if isinstance(text, str) else text
    if not isinstance(text, str) or not text.startswith("#") or len(text) not in (4, 5, 7, 9):
        raise _bad(f"Unsupported palette color: {text!r}.")
    digits = text[1:]
    if len(digits) in (3, 4):
        digits = "".join(ch * 2 for ch in digits)
    digits += "ff" if len(digits) == 6 else ""
    try:
        return np.array([int(digits[i:i + 2], 16) for i in (0, 2, 4, 6)], dtype=np.float64)
    except ValueError:
        raise _bad(f"Unsupported palette color: {text!r}.") from None


def palette_colors(palette: Any) -> np.ndarray:
    """(stops, 4) RGBA: a single color runs from black to it (getPaletteColors)."""
    stops = [color(c) for c in ([palette] if isinstance(palette, str) else palette)]
    if len(stops) == 1:
        stops.insert(0, color("#000000"))
    return np.array(stops)


def style_bound(value: Any, which: str, band_range: Callable[[], tuple[float, float]], dtype: np.dtype) -> float:
    """A band's min or max (`_getMinMax`): a number; "min"/"max", the frame's range as
    large_image scans it; "auto", 0..255 when that range lies within 8 bits, else the
    range; "full", 0 and the dtype's largest value."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value == "full":
        if which == "min":
            return 0.0
        return 65535.0 if dtype == np.uint16 else 1.0 if dtype.kind == "f" else 255.0
    if value == "auto":
        low, high = band_range()
        value = (0.0 if which == "min" else 255.0) if 0 <= low <= 254 and 2 <= high <= 255 else which
        if isinstance(value, float):
            return value
    if value in ("min", "max"):
        low, high = band_range()
        return float(low if value == "min" else high)
    raise _bad(f"Unsupported style {which}: {value!r}.")


def style(bands: list[dict], read: Callable[[int], np.ndarray], frame: int,
          bound: Callable[[Any, str, int], float]) -> np.ndarray:
    """The styled region: `read(frame)` gives a frame's pixels of the region, `bound(value,
    "min"|"max", frame)` a band's window. Returns (H, W, 1 or 4) float32."""
    palettes = [palette_colors(band.get("palette", ["#000", "#FFF"])) for band in bands]
    gray = len(bands) == 1 and np.array_equal(palettes[0], GRAY)
    output = None
    for index, (band, palette) in enumerate(zip(bands, palettes)):
        band_frame = band.get("frame", frame)
        data = read(band_frame)
        if output is None:
            output = np.zeros(data.shape + (1 if gray else 4,), np.float32)
        low, high = bound(band.get("min", "auto"), "min", band_frame), bound(band.get("max", "auto"), "max", band_frame)
        scaled = (data - low) / (high - low if high != low else 1)
        positions = np.linspace(0, 1, len(palette))
        for channel in range(output.shape[2]):
            stops = palette[:, channel]
            if np.all(stops == stops[0]):
                if stops[0] == 0:
                    continue
                values = np.full(scaled.shape, stops[0])
            elif len(stops) == 2 and stops[0] == 0:
                values = scaled * stops[1]
            else:
                values = np.interp(scaled, positions, stops)
            output[..., channel] = values if index == 0 else np.maximum(output[..., channel], values)
    assert output is not None
    return output
