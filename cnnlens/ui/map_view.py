"""The map view: feature maps as one picture whose raw values are read out on hover.

A browser draws a plotly chart from scratch on every rerun (Streamlit gives it a new
identity whenever its data changes): about 0.1 s each on two cores, and the first paint
waits for all of them. So the Feature maps page, where every click brings a new image,
uses none. Its grid, enlarged channel and overlay go through this custom component
(``map_view.js`` and ``map_view.css`` beside this file): :func:`map_view_data` builds
what it is sent, a ``montage_png`` picture plus the raw values, and
:func:`map_view_ui` draws it. The component keeps its element across reruns and only
swaps the picture. Given the input image, it shows the maps twice, side by side: alone,
and laid over the image in the browser, with an opacity slider there, from the one
picture and values sent.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from cnnlens import figures

__all__ = ["map_view_data", "map_view_ui"]

_GRID_GAP = 1
_GRID_ROW_PX = 75
_GRID_HEIGHT_RANGE = (250, 900)
_COLORBAR_STOPS = 11


def map_view_data(
    maps: np.ndarray,
    per: str = "channel",
    columns: int | None = None,
    colorscale: str = "Viridis",
    with_values: bool = True,
    title: str | None = None,
    colorbar: bool = False,
    under: np.ndarray | None = None,
    under_title: str | None = None,
    opacity: float = 0.5,
    centre: bool = False,
) -> dict:
    """What the map view shows for C×H×W maps: a grid of channels, or one channel enlarged.

    The colours are a ``montage_png``; hovering reads the raw value at that pixel
    from ``values``. The browser only swaps a picture when the maps change, where a
    plotly heatmap is drawn again from scratch.

    Args:
        maps: C×H×W activations (C = 1 for one channel).
        per: ``"channel"`` or ``"layer"`` scaling of the colours (see
            :func:`cnnlens.figures.scale_maps`).
        columns: Tiles per row; default ``ceil(sqrt(C))``.
        colorscale: A plotly colorscale name.
        with_values: Send the raw values for the hover; ``False`` for large layers, whose
            hover then names the channel, x and y only.
        title: Shown above the maps.
        colorbar: Show the colour scale with the lowest and highest raw value
            (meaningful for one channel, or with ``per="layer"``).
        under: An image (H×W grayscale or H×W×3 uint8 RGB, as for ``image_figure``)
            to lay one channel over, in a second panel beside the first (one
            component, one picture and one set of values for both). The browser
            stretches the map to the image, smoothly, and blends it with an opacity
            slider of its own: no rerun.
        under_title: The second panel's title.
        opacity: The slider's first value, 0 (only the image) to 1 (only the map).
        centre: Centre the colours on zero, for a diverging colorscale such as
            ``"RdBu_r"``: zero is the scale's middle colour, and the largest absolute
            value (per channel or per layer) its end; ``low``/``high`` are then
            ``-m`` and ``m``.

    Returns:
        A JSON-ready dict: ``png`` (base64), ``channels``, ``height``, ``width``,
        ``columns``, ``gap``, ``values`` (base64 little-endian float32, C·H·W in C
        order, or ``None``), ``title``, ``low``/``high`` (the raw range) and
        ``colorbar``: a list of CSS colours from low to high, or ``None``,
        ``max_height``: the tallest it should be drawn, in CSS pixels, ``under``:
        the image as a base64 PNG (grayscale spans black to white as in
        ``image_figure``), or ``None``, ``under_title`` and ``opacity``.

    Raises:
        ValueError: for the reasons of ``montage_png``, an image under more than one
            channel, or an opacity outside [0, 1].
        TypeError: for an RGB image that is not uint8, or an opacity that is not a number.
    """
    array = figures.check_maps(maps).astype(np.float32, copy=False)
    figures.check_opacity(opacity)
    channels, height, width = array.shape
    if under is not None and channels != 1:
        raise ValueError(f"Only one channel can be laid over an image; got {channels}.")
    # Checks the values are finite (in float32) and the colorscale is known.
    png = figures.montage_png(
        array, per=per, columns=columns, gap=_GRID_GAP, colorscale=colorscale, clear_gaps=True
    )
    low, high = float(array.min()), float(array.max())
    if centre:
        png, reach = _centred_png(array, per, columns, colorscale)
        low, high = -reach, reach
    rows, columns = figures.grid_shape(channels, columns)
    values = None
    if with_values:
        values = base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()
    return {
        "png": base64.b64encode(png).decode(),
        "channels": channels,
        "height": height,
        "width": width,
        "columns": columns,
        "gap": _GRID_GAP,
        "values": values,
        "title": title,
        "low": low,
        "high": high,
        "colorbar": figures.colorscale_colours(colorscale, _COLORBAR_STOPS) if colorbar else None,
        "max_height": _tallest(channels, rows),
        "under": None if under is None else base64.b64encode(figures.image_png(under)).decode(),
        "under_title": under_title,
        "opacity": float(opacity),
    }


def _centred_png(
    array: np.ndarray, per: str, columns: int | None, colorscale: str
) -> tuple[bytes, float]:
    """The montage PNG with zero at the colorscale's middle, and the largest absolute value."""
    axis = (1, 2) if per == "channel" else None
    reach = np.abs(array).max(axis=axis, keepdims=True)
    unit = np.divide(array, 2 * reach, out=np.zeros_like(array), where=reach > 0) + 0.5
    z = figures.montage(unit, columns, _GRID_GAP)
    levels = np.nan_to_num(z * (figures._PNG_LEVELS - 1) + 0.5, nan=figures._PNG_LEVELS)
    png = Image.fromarray(levels.astype(np.uint8))
    png.putpalette(figures._palette(colorscale), rawmode="RGB")
    buffer = io.BytesIO()
    png.save(buffer, format="PNG", compress_level=1, transparency=figures._PNG_LEVELS)
    return buffer.getvalue(), float(reach.max())


def _tallest(channels: int, rows: int) -> int:
    """How tall the view may be drawn: one channel as tall as an image figure, a grid by rows."""
    if channels == 1:
        return figures.IMAGE_HEIGHT
    low, high = _GRID_HEIGHT_RANGE
    return min(max(rows * _GRID_ROW_PX, low), high)


@cache
def _component_source(suffix: str) -> str:
    """The component's ``map_view.js`` or ``map_view.css``, read once per process."""
    return (Path(__file__).parent / f"map_view{suffix}").read_text(encoding="utf-8")


def map_view_ui(
    data: dict, key: str, on_pick: Callable[[dict[str, int]], None] | None = None
) -> None:
    """Show feature maps from :func:`map_view_data`, values on hover.

    Its element is styled ``.st-key-<key>``.

    Args:
        data: what :func:`map_view_data` made.
        key: the element's key.
        on_pick: makes the maps clickable: a click calls it, before the rerun, with the
            point clicked, ``{"channel": c, "x": x, "y": y}`` in map coordinates.
    """
    # Registering the same definition again is free and silent; doing it here
    # registers it with whichever runtime runs this script (AppTest makes several).
    component = st.components.v2.component(
        "cnnlens_map_view",
        js=_component_source(".js"),
        css=_component_source(".css"),
        isolate_styles=False,
    )
    if on_pick is None:
        component(data=data, key=key)
        return

    def picked() -> None:
        point = st.session_state[key].get("picked")
        if point is not None:
            on_pick({name: int(point[name]) for name in ("channel", "x", "y")})

    component(data={**data, "clickable": True}, key=key, on_picked_change=picked)
