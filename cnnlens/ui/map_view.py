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
import html
from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

from cnnlens import figures
from cnnlens.ui.components import own_component

__all__ = ["legend_html", "map_view_data", "map_view_ui"]

_GRID_GAP = 1
_GRID_ROW_PX = 75
_GRID_HEIGHT_RANGE = (250, 900)
_COLORBAR_STOPS = 11


def map_view_data(
    maps: np.ndarray,
    per: str = "channel",
    columns: int | None = None,
    colorscale: str | None = None,
    with_values: bool = True,
    title: str | None = None,
    colorbar: bool = False,
    under: np.ndarray | None = None,
    under_title: str | None = None,
    opacity: float = 0.5,
    centre: bool = False,
    numbers: Sequence[int] | None = None,
    legend: bool = False,
    reach: float | None = None,
) -> dict:
    """What the map view shows for C×H×W maps: a grid of channels, or one channel enlarged.

    The colours are a ``montage_png`` in the one convention (:class:`cnnlens.figures.
    MapColours`): blue, white at zero, red where a value is below zero, else dark at zero
    to bright yellow; hovering reads the raw value at that pixel from ``values``. The
    browser only swaps a picture when the maps change, where a plotly heatmap is drawn
    again from scratch.

    Args:
        maps: C×H×W activations (C = 1 for one channel).
        per: ``"channel"``: each channel's colours reach its own largest value;
            ``"layer"``: one reach for all.
        columns: Tiles per row; default ``ceil(sqrt(C))``.
        colorscale: A plotly colorscale name instead of the convention's ramp.
        with_values: Send the raw values for the hover; ``False`` for large layers, whose
            hover then names the channel, x and y only.
        title: Shown above the maps.
        colorbar: Show the colour scale with the values at its ends (meaningful for one
            channel, or with ``per="layer"``): ``-m`` and ``m`` for signed maps, ``0``
            and ``m`` for others, ``m`` being the largest value in size.
        under: An image (H×W grayscale or H×W×3 uint8 RGB, as for ``image_figure``)
            to lay one channel over, in a second panel beside the first (one
            component, one set of values for both). The browser stretches the map to
            the image, smoothly, and blends it with an opacity slider of its own: no
            rerun. The map laid over is see-through at zero.
        under_title: The second panel's title.
        opacity: The slider's first value, 0 (only the image) to 1 (the map as opaque as
            the convention makes it).
        centre: The maps are signed by nature (weights, differences): the diverging
            colours, centred on zero, even where no value is below zero.
        numbers: The channel number of each tile, when the tiles are not channels
            ``0..C-1`` (the strongest few of a layer): the hover names it and a click
            reports it.
        legend: Write what the colours mean under the maps.
        reach: The value at the colours' ends for every map, instead of ``per``'s (one
            channel enlarged on its layer's scale).

    Returns:
        A JSON-ready dict: ``png`` (base64), ``channels``, ``height``, ``width``,
        ``columns``, ``gap``, ``values`` (base64 little-endian float32, C·H·W in C
        order, or ``None``), ``title``, ``low``/``high`` (the values at the colour
        scale's ends), ``signed``, ``colorbar``: a list of CSS colours from low to high,
        or ``None``, ``legend``: ``{"colours", "words", "overlay_words"}`` or ``None``, ``numbers``,
        ``max_height``: the tallest it should be drawn, in CSS pixels, ``under``: the
        image as a base64 PNG (grayscale spans black to white as in ``image_figure``),
        or ``None``, ``overlay``: the maps as laid over it (base64 PNG with opacity),
        ``under_title`` and ``opacity``.

    Raises:
        ValueError: for the reasons of ``montage_png``, an image under more than one
            channel, ``numbers`` not one per channel, or an opacity outside [0, 1].
        TypeError: for an RGB image that is not uint8, or an opacity that is not a number.
    """
    array = figures.check_maps(maps).astype(np.float32, copy=False)
    figures.check_opacity(opacity)
    channels, height, width = array.shape
    if under is not None and channels != 1:
        raise ValueError(f"Only one channel can be laid over an image; got {channels}.")
    if numbers is not None and len(numbers) != channels:
        raise ValueError(f"numbers must give one channel number per map; got {len(numbers)}.")
    colours = figures.map_colours(array, signed=centre or None)
    shown = {"per": per, "reach": reach, "columns": columns, "gap": _GRID_GAP}
    shown["signed"] = colours.signed
    # Checks the values are finite (in float32) and the colorscale is known.
    png = figures.montage_png(array, colorscale=colorscale, clear_gaps=True, **shown)
    if reach is None:
        reach = float(colours.reach(array, "layer").max())
    ramp = colorscale or colours.colorscale
    rows, columns = figures.grid_shape(channels, columns)
    values = None
    if with_values:
        values = base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()
    return {
        "png": _b64(png),
        "channels": channels,
        "height": height,
        "width": width,
        "columns": columns,
        "gap": _GRID_GAP,
        "values": values,
        "title": title,
        "low": -reach if colours.signed else 0.0,
        "high": reach,
        "signed": colours.signed,
        "colorbar": figures.colorscale_colours(ramp, _COLORBAR_STOPS) if colorbar else None,
        "legend": _legend(colours, ramp) if legend else None,
        "numbers": None if numbers is None else [int(n) for n in numbers],
        "max_height": _tallest(channels, rows),
        "under": None if under is None else _b64(figures.image_png(under)),
        "overlay": None if under is None else _b64(_overlay_png(array, colorscale, shown)),
        "under_title": under_title,
        "opacity": float(opacity),
    }


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def _overlay_png(array: np.ndarray, colorscale: str | None, shown: dict) -> bytes:
    """The maps as laid over an image: see-through at zero, opaque at the ramp's ends."""
    return figures.montage_png(array, colorscale=colorscale, overlay=True, **shown)


def _legend(colours: figures.MapColours, ramp: str) -> dict:
    """What the colours mean, in words, beside a strip of the ramp."""
    return {
        "colours": figures.colorscale_colours(ramp, _COLORBAR_STOPS),
        "words": colours.words,
        "overlay_words": colours.overlay_words,
    }


def legend_html(signed: bool, which: str) -> str:
    """One colouring of the convention as a line of HTML: its ramp, then ``which`` maps
    it colours and what its colours mean."""
    colours = figures.MapColours(signed)
    ramp = ", ".join(figures.colorscale_colours(colours.colorscale, _COLORBAR_STOPS))
    return (
        f'<div data-legend="{"signed" if signed else "sequential"}" '
        'style="display:flex;align-items:center;gap:0.5rem;font-size:0.85rem">'
        '<div style="flex:0 0 120px;height:10px;border-radius:2px;'
        f'background:linear-gradient(to right,{ramp})"></div>'
        f"<span>{html.escape(which)}: {html.escape(colours.words)}</span></div>"
    )


def _tallest(channels: int, rows: int) -> int:
    """How tall the view may be drawn: one channel as tall as an image figure, a grid by rows."""
    if channels == 1:
        return figures.IMAGE_HEIGHT
    low, high = _GRID_HEIGHT_RANGE
    return min(max(rows * _GRID_ROW_PX, low), high)


def map_view_ui(
    data: dict,
    key: str,
    on_pick: Callable[[dict[str, int]], None] | None = None,
    *,
    chosen: int | None = None,
    point: tuple[int, int] | None = None,
    numbered: bool = False,
    reveal: str | None = None,
) -> None:
    """Show feature maps from :func:`map_view_data`, values on hover.

    Its element is styled ``.st-key-<key>``.

    Args:
        data: what :func:`map_view_data` made.
        key: the element's key.
        on_pick: makes the maps clickable: a click calls it, before the rerun, with the
            point clicked, ``{"channel": c, "x": x, "y": y}`` in map coordinates (``c``
            the tile's number from ``data["numbers"]``, else its place).
        chosen: the channel whose tile is outlined.
        point: ``(x, y)``: a cell of the first map marked, in every panel.
        numbered: write each tile's channel number on it.
        reveal: the key of an element to scroll into view once a click's rerun has
            drawn the point it picked (the explanation of that point).
    """
    component = own_component("map_view")
    marks = {"chosen": chosen, "point": None if point is None else list(point)}
    data = {**data, **marks, "numbered": numbered, "reveal": reveal}
    if on_pick is None:
        component(data=data, key=key)
        return

    def picked() -> None:
        point = st.session_state[key].get("picked")
        if point is not None:
            on_pick({name: int(point[name]) for name in ("channel", "x", "y")})

    component(data={**data, "clickable": True}, key=key, on_picked_change=picked)
