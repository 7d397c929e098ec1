"""The Network page's view: the whole network at a glance for the current image.

A sequential CNN (the demo, VGG, AlexNet) shows one column per layer, from the
input to the class scores, as CNN Explainer lays out its own tiny network; any
other network shows the same strip over its top-level stages, and its
architecture graph (drawn in the browser by Streamlit's bundled Graphviz) with a
depth slider. Each column's maps are map views (``cnnlens.ui.map_view``) in the one
colour convention (:class:`cnnlens.figures.MapColours`): blue, white at zero, red for a
layer whose values go below zero, dark to bright yellow for one whose values never do;
hovering names a map's channel, and clicking one opens that layer and channel on the
Feature maps page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from cnnlens.ui import state
from cnnlens.ui.caching import in_memory
from cnnlens.ui.drawing_pad import pad_ui, source_ui
from cnnlens.ui.image_input import input_image
from cnnlens.ui.map_view import legend_html, map_view_data, map_view_ui
from cnnlens.ui.navigation import page
from cnnlens.ui.resources import get_model

if TYPE_CHECKING:
    from cnnlens.network import Column
    from cnnlens.ui.context import Context

__all__ = [
    "DEPTH_KEY",
    "SCALE_KEY",
    "column_data",
    "column_key",
    "get_architecture_dot",
    "get_overview",
    "get_overview_views",
    "network_ui",
    "open_channel",
    "switch_if_asked",
    "thumbnails",
]

SCALE_KEY = "network_scale"
DEPTH_KEY = "network_depth"
_SWITCH_KEY = "_network_open_feature_maps"
THUMB_SIDE = 56
"""Maps larger than this (a side) are shrunk for their thumbnails, by averaging blocks."""
THUMB_COLUMNS = 2
"""Thumbnails side by side in one layer's column."""
PER_ROW = 12
"""The most layer columns in one row; more wrap into rows of equal length."""


@dataclass(frozen=True)
class Overview:
    """The Network page's columns for one image (see :func:`cnnlens.network.overview`)."""

    columns: list[Column]

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return sum(
            array.nbytes
            for column in self.columns
            for array in (column.maps, column.channels, column.probabilities)
            if array is not None
        )


@in_memory(64)
def get_overview(choice: state.ModelChoice, pixels: np.ndarray) -> Overview:
    """The whole network at a glance for one image (uint8 pixels), one forward pass.

    Raises:
        ValueError: if the image does not fit the model.
    """
    from cnnlens.network import overview

    loaded = get_model(choice)
    return Overview(overview(loaded, loaded.batch(pixels)))


@dataclass(frozen=True)
class OverviewViews:
    """The map views of one image's columns, ready to send."""

    views: dict[str, dict]

    @property
    def nbytes(self) -> int:
        """The memory its text takes, about."""
        return sum(len(view["png"]) + len(view["values"] or "") for view in self.views.values())


@in_memory(64)
def get_overview_views(choice: state.ModelChoice, pixels: np.ndarray, per: str) -> OverviewViews:
    """Each map column's map view data for one image and scaling, built once."""
    columns = get_overview(choice, pixels).columns
    return OverviewViews(
        {column.name: column_data(column, per) for column in columns if column.maps is not None}
    )


@st.cache_data(max_entries=8, show_spinner=False)
def get_architecture_dot(choice: state.ModelChoice, depth: int) -> str:
    """The model's architecture graph (DOT text) opened to ``depth`` levels."""
    from cnnlens.network import architecture_dot

    return architecture_dot(get_model(choice), depth=depth)


def column_key(name: str) -> str:
    """The element key of a layer's column of thumbnails."""
    return f"network_{name}"


def thumbnails(maps: np.ndarray) -> tuple[np.ndarray, int]:
    """The maps as thumbnails: block means when larger than ``THUMB_SIDE``, and the factor.

    Returns:
        The C×h×w thumbnails (float32) and the shrink factor (1: the maps themselves).
    """
    _, height, width = maps.shape
    factor = max(1, math.ceil(max(height, width) / THUMB_SIDE))
    if factor == 1:
        return maps, 1
    h, w = height // factor, width // factor
    blocks = maps[:, : h * factor, : w * factor].reshape(-1, h, factor, w, factor)
    return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32), factor


def column_data(column: Column, per: str) -> dict:
    """The map view data of one column: its maps as thumbnails, each named by its channel."""
    small, factor = thumbnails(column.maps)
    shape = "×".join(map(str, column.shape))
    data = map_view_data(
        small,
        per="channel" if per == "map" else "layer",
        columns=min(THUMB_COLUMNS, len(small)),
        with_values=factor == 1,
        title=column.name,
        # The shown maps are the strongest few: the hover and a click name their channels.
        numbers=column.channels.tolist(),
    )
    return {**data, "max_height": min(data["max_height"], 8 * 60), "caption": shape}


def open_channel(layer: str, names: list[str]) -> Callable:
    """A callback for a column's thumbnails: open the clicked channel on Feature maps.

    The layer joins the view's layers (the Feature maps page shows only those), in
    network order; the page switch itself happens in the next run (a callback cannot).
    """

    def picked(point: dict[str, int]) -> None:
        ss = st.session_state
        chosen = set(ss.get(state.LAYERS_KEY) or ()) | {layer}
        ss[state.LAYERS_KEY] = [name for name in names if name in chosen]
        ss[state.LAYER_KEY] = layer
        ss[state.CHANNEL_KEY] = int(point["channel"])  # the map view's channel number
        ss[_SWITCH_KEY] = True

    return picked


def switch_if_asked() -> None:
    """Switch to Feature maps when a thumbnail was clicked in the run before."""
    if st.session_state.pop(_SWITCH_KEY, False):
        st.switch_page(page("feature_maps"))


def network_ui(ctx: Context, names: list[str]) -> None:
    """The input and scale toggle, the strip of columns, and (for other networks) the graph."""
    view = state.current_view(ctx.dataset)
    left, right = st.columns([1.4, 4])
    try:
        pixels, caption = input_image(view, ctx)
    except ValueError as error:
        if view.drawing is None:
            st.error(f"{error} Choose another image or model.", icon=":material/error:")
            return
        with left:
            input_ui(ctx, view, None, "")
        st.info(f"{error} Every column follows your pen.", icon=":material/draw:")
        return
    with left:
        input_ui(ctx, view, pixels, caption)
    with right:
        per = st.segmented_control(
            "Colour scale",
            ["map", "layer"],
            format_func={"map": "Per map", "layer": "Per layer"}.get,
            required=True,
            default="map",
            key=SCALE_KEY,
            persist_state="session",
            help="Per map: each square's colours reach its own largest value. "
            "Per layer: one scale for a whole column, to compare its maps. Either way "
            "zero keeps its colour.",
        )
        st.html(_legend())
    try:
        overview = get_overview(ctx.choice, pixels)
    except ValueError as error:
        st.error(f"{error} Choose another image or model.", icon=":material/error:")
        return
    views = get_overview_views(ctx.choice, pixels, per).views
    strip_ui(overview.columns, views, names, random=ctx.loaded.weights.startswith("random"))
    if not ctx.loaded.layers.renamed:
        graph_ui(ctx)


def input_ui(ctx: Context, view: state.View, pixels: np.ndarray | None, caption: str) -> None:
    """The input's source, and the pad with what the network sees, or the image with the
    button for another one."""
    source_ui("input_network")
    if view.drawing is not None:
        pad_ui(view.drawing, ctx.info.spec, key="network_pad", seen=pixels)
        return
    st.image(pixels, caption=caption, width=160)
    st.button(
        "Another random image",
        on_click=state.next_seed,
        icon=":material/casino:",
        key="network_next_image",
    )


def _legend() -> str:
    """Both colourings of the strip, and what a click does."""
    rows = [
        legend_html(True, "Layers whose values go below zero (convolution, batch norm)"),
        legend_html(False, "Layers never below zero (after ReLU, pooling)"),
    ]
    note = "<div style='opacity:0.7'>Click a square to open it on Feature maps.</div>"
    return f'<div style="font-size:0.85rem;display:grid;gap:0.2rem">{"".join(rows)}{note}</div>'


def strip_ui(columns: list[Column], views: dict[str, dict], names: list[str], random: bool) -> None:
    """Every column in network order, wrapped into rows of equal length."""
    rows = math.ceil(len(columns) / PER_ROW)
    per_row = math.ceil(len(columns) / rows)
    for start in range(0, len(columns), per_row):
        cells = st.columns(per_row, gap="small")
        for cell, column in zip(cells, columns[start : start + per_row], strict=False):
            with cell:
                column_ui(column, views.get(column.name), names, random)


def column_ui(column: Column, data: dict | None, names: list[str], random: bool) -> None:
    """One layer's maps (from :func:`column_data`), or the class scores, with its shape under it."""
    if column.kind == "scores" or data is None:
        st.html(scores_html(column, random))
        return
    pick = None
    if column.kind == "maps":
        pick = open_channel(column.name, names)
    map_view_ui(data, key=column_key(column.name), on_pick=pick)
    more = column.total - len(column.channels)
    note = f"{data['caption']}" + (f" · +{more} more" if more else "")
    st.html(
        f'<div style="font-size:0.75rem;opacity:0.75;margin-top:-0.5rem">{html.escape(note)}</div>'
    )


def scores_html(column: Column, random: bool) -> str:
    """The class scores: the likeliest classes with their probabilities, as bars."""
    rows = []
    for name, probability in zip(column.classes, column.probabilities, strict=True):
        rows.append(
            f'<div data-class="{html.escape(name)}" data-probability="{float(probability)!r}" '
            'style="margin-bottom:4px">'
            f'<div style="display:flex;justify-content:space-between;gap:4px">'
            f'<span style="overflow:hidden;text-overflow:ellipsis;white-space:nowrap">'
            f"{html.escape(name)}</span><span>{probability:.0%}</span></div>"
            f'<div style="height:6px;background:rgba(128,128,128,0.2);border-radius:3px">'
            f'<div style="height:6px;width:{probability * 100:.1f}%;border-radius:3px;'
            'background:#d6604d"></div></div></div>'
        )
    note = (
        "Random weights: these guesses mean nothing."
        if random
        else f"The {len(column.classes)} likeliest of {column.total} classes."
    )
    return (
        '<div style="font-size:0.9rem;margin-bottom:0.35rem">class scores</div>'
        f'<div style="font-size:0.75rem">{"".join(rows)}</div>'
        f'<div style="font-size:0.75rem;opacity:0.75">{note}</div>'
    )


def max_depth(ctx: Context) -> int:
    """How many levels the model's module tree has."""
    return max(
        (path.count(".") + 1 for path, _ in ctx.loaded.model.named_modules() if path), default=1
    )


def graph_ui(ctx: Context) -> None:
    """The architecture graph, opened to a chosen depth."""
    st.subheader("How the parts connect")
    deepest = max_depth(ctx)
    depth = 1
    if deepest > 1:
        depth = st.slider(
            "Depth: how far to open the boxes",
            1,
            deepest,
            value=min(2, deepest),
            key=DEPTH_KEY,
            help="1 shows the network's main parts; higher levels open each part.",
        )
    st.graphviz_chart(get_architecture_dot(ctx.choice, depth), width="content")
