"""The Feature maps page's view: every channel of a layer for the current image, one
enlarged and laid over the image, the predictions, the channels ranked, and the saves.

Two fragments. :func:`view_ui` draws the widgets (layer, colour scale, uploader,
channel, explainer, channel card, ranking measure, saves) and leaves slots between
them; :func:`image_ui` draws the image with its "Another random image" button and
fills the slots with what shows the image. A new image, most of the clicks, reruns
only :func:`image_ui`: every widget is a message, and sending them again cost the
server about as much as the new image's maps.

The maps come from :func:`get_features`, kept in memory for every session, bounded
by bytes (``CNNLENS_FEATURE_CACHE_MB``, 512 by default): they are the largest values
the app holds, so they are kept once, read-only, never copied per session.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image
from streamlit.delta_generator import DeltaGenerator

from cnnlens import export, figures
from cnnlens.one_image import ImageFeatures, image_features
from cnnlens.ui import state
from cnnlens.ui.bars import NAMED_BARS, bars_html, bars_ui
from cnnlens.ui.caching import feature_cache_mb, in_memory
from cnnlens.ui.channel_card import CARD_KEY, channel_card_ui
from cnnlens.ui.context import Context
from cnnlens.ui.drawing_pad import get_drawn_pixels, pad_ui, source_ui
from cnnlens.ui.image_input import input_image, upload_ui
from cnnlens.ui.map_view import map_view_data, map_view_ui
from cnnlens.ui.recipes import recipe_of
from cnnlens.ui.resources import get_model
from cnnlens.ui.value_explainer import PICK_KEY, note_view, pick_value, value_explainer_ui

__all__ = ["get_features", "view_ui"]

# Above this many values (600 kB of float32) the grid's hover names the channel,
# x and y only; the enlarged channel below still reads out values.
GRID_VALUES_LIMIT = 150_000
NUMBERED_TILES = 64
"""Up to this many channels, the grid writes each one's number on its tile."""
EXPLAINER_KEY = "value_explainer"
"""The container of "How is this value computed?" (``value_explainer_ui``), brought
into view when a point of the enlarged map is clicked."""
OVERLAY_OPACITY = 0.8
"""The overlay slider's first value: the strongest values nearly opaque."""
VIEW_FRAGMENT = "feature_maps_view"
"""The key of :func:`view_ui`, for callbacks that must rerun all of it."""
SAVES_KEY = "saves"
"""The "Save this view" popover: open or closed."""
RANK_KEY = "rank_by"
"""The ranking's measure (mean or max activation)."""
PAD_KEY = "pad"
"""The drawing pad's element."""
_NO_MAPS_KEY = "_feature_maps_no_maps"  # the view's last run showed no maps


@in_memory(feature_cache_mb())
def get_features(
    choice: state.ModelChoice, targets: tuple[str, ...], pixels: np.ndarray
) -> ImageFeatures:
    """The target maps, class probabilities and the network's view of one image (uint8
    pixels), shared by every session that shows the same image (read-only).

    Raises:
        ValueError: if the image does not fit the model, or a target is not a layer.
    """
    return image_features(get_model(choice), pixels, targets)


@dataclass(frozen=True)
class Picture:
    """An image encoded as the browser gets it."""

    data: bytes

    @property
    def nbytes(self) -> int:
        """Its size, for the cache."""
        return len(self.data)


@in_memory(32)
def get_picture(pixels: np.ndarray) -> Picture:
    """The input image as ``st.image`` encodes an array (a JPEG of quality 100), made once
    per image for every session: a 512-pixel photo takes milliseconds, on every run."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=100)
    return Picture(buffer.getvalue())


@dataclass(frozen=True)
class ImageView:
    """What :func:`image_ui` sends for one image, layer, colour scale, channel and ranking
    measure: the grid's and the channel's map-view data, and the bars' HTML."""

    grid: dict
    channel: dict
    ranking: str
    predictions: str | None  # None without probabilities to show

    @property
    def nbytes(self) -> int:
        """About the memory it takes: its pictures, values and HTML."""
        texts = [*self.grid.values(), *self.channel.values(), self.ranking, self.predictions]
        return sum(len(text) for text in texts if isinstance(text, str))


@in_memory(32)
def get_image_view(
    choice: state.ModelChoice,
    targets: tuple[str, ...],
    pixels: np.ndarray,
    layer: str,
    norm: str,
    channel: int,
    rank_by: str,
    classes: tuple[str, ...] | None,
) -> ImageView:
    """What :func:`image_ui` sends, made once for every session that shows the same image
    the same way (sessions that start from one link click through the same images).

    Raises:
        ValueError: if the image does not fit the model, or a target is not a layer.
    """
    features = get_features(choice, targets, pixels)
    maps = features.maps[layer]
    probabilities = features.probabilities
    return ImageView(
        grid=map_view_data(maps, per=norm, with_values=maps.size <= GRID_VALUES_LIMIT, legend=True),
        channel=channel_data(maps, layer, channel, features.seen, norm),
        ranking=ranking_html(maps, layer, rank_by, channel),
        predictions=None if probabilities is None else predictions_html(probabilities, classes),
    )


@dataclass(frozen=True)
class Shown:
    """The image a run shows, and what the network makes of it."""

    view: state.View
    pixels: np.ndarray
    caption: str
    features: ImageFeatures


def shown_image(ctx: Context, view: state.View) -> Shown:
    """The view's image (the seed's pick or an upload), its caption and its features.

    Raises:
        ValueError: if the image does not fit the model, or a target is not a layer.
    """
    pixels, caption = input_image(view, ctx)
    return Shown(view, pixels, caption, get_features(ctx.choice, view.layers, pixels))


@dataclass(frozen=True)
class Slots:
    """Where :func:`image_ui` draws, in the page's order: containers made by
    :func:`view_ui` between its own widgets."""

    predictions: DeltaGenerator
    grid: DeltaGenerator
    channel: DeltaGenerator
    ranking: DeltaGenerator


@st.fragment(key=VIEW_FRAGMENT)
def view_ui(ctx: Context) -> None:
    """Everything that follows the image, layer and channel: a fragment, so that changing
    them reruns only this (no sidebar, no navigation).

    It draws the widgets and leaves slots for what shows the image, which
    :func:`image_ui`, a fragment of its own, fills: a new image (most of the clicks)
    reruns only that, and sends none of the widgets again.
    """
    view = state.current_view(ctx.dataset)
    top = st.columns([1.4, 3, 2])
    with top[0]:  # here, not in image_ui: a new image sends no widget again
        source_ui("input_feature_maps")
    with top[1]:
        layer, norm = pickers_ui(view.layers, ctx.spec.mode)
    try:
        shown = shown_image(ctx, view)
    except ValueError as error:
        if view.drawing is not None:
            message = f"{error} The answer and every map follow your pen."
            no_maps_ui(top[0], ctx, layer, norm, lambda: st.info(message, icon=":material/draw:"))
        else:
            message = f"{error} Choose another image or model."
            no_maps_ui(top[0], ctx, layer, norm, lambda: st.error(message, icon=":material/error:"))
        return
    maps = shown.features.maps[layer]
    if maps.ndim != 3:
        message = (
            f"{layer} gives {'×'.join(map(str, maps.shape))} values, not image-shaped maps. "
            "Choose a convolutional layer or block: the Layers page shows each one's output shape."
        )
        no_maps_ui(top[0], ctx, layer, norm, lambda: st.info(message, icon=":material/info:"))
        return
    st.session_state[_NO_MAPS_KEY] = False
    count, height, width = maps.shape
    st.subheader(f"{layer}: {count} channels of {height}×{width}")
    grid = st.container()
    if maps.size > GRID_VALUES_LIMIT:
        st.caption("Hover a square for its channel; pick that channel below to read its values.")
    channel = channel_picker_ui(count)
    channel_slot = st.container()
    value_explainer_ui(ctx, shown.pixels, layer, channel, maps.shape)
    channel_card_ui(ctx, shown.view, layer, channel, shown.pixels)
    rank_by = rank_by_ui()
    slots = Slots(predictions=top[2], grid=grid, channel=channel_slot, ranking=st.container())
    # A popover whose buttons are made only while it is open (opening it reruns this
    # view): made on every run, they cost the browser time on every click.
    saves = st.popover(
        "Save this view", icon=":material/download:", key=SAVES_KEY, on_change="rerun"
    )
    if saves.open:
        with saves:
            downloads_ui(ctx, shown, layer, channel, norm)
    with top[0]:
        image_ui(ctx, layer, norm, channel, rank_by, slots)


@st.fragment
def image_ui(
    ctx: Context, layer: str, norm: str, channel: int, rank_by: str, slots: Slots | None
) -> None:
    """The image with its button (or the pad), and in the slots what shows it: the grid,
    the predictions, the chosen channel enlarged and laid over the image, the ranking.

    A fragment: "Another random image", or a stroke on the pad, reruns only this. Without
    slots (the view shows no maps) it shows the input alone, in the same place: the pad
    keeps its element, and a stroke drawn while the view changes is kept.
    """
    view = state.current_view(ctx.dataset)
    if slots is None:
        input_alone_ui(ctx, view)
        state.sync_url()
        return
    try:
        pixels, caption = input_image(view, ctx)
        sent = get_image_view(
            ctx.choice, view.layers, pixels, layer, norm, channel, rank_by, ctx.loaded.classes
        )
    except ValueError as error:  # not for a dataset image; an upload reruns the whole view
        st.error(f"{error} Choose another image or model.", icon=":material/error:")
        next_image_ui()
        return
    input_ui(ctx, view, pixels, caption)
    token = note_view(ctx, pixels)
    with slots.grid:
        numbered = sent.grid["channels"] <= NUMBERED_TILES
        map_view_ui(
            sent.grid, key="grid", on_pick=choose_channel, chosen=channel, numbered=numbered
        )
    if sent.predictions is not None:
        with slots.predictions:
            st.html(sent.predictions)
    with slots.channel:
        # "How is this value computed?": a click explains that point, below the maps,
        # marks it, and brings the explanation into view.
        map_view_ui(
            sent.channel,
            key="channel_map",
            on_pick=explain_point,
            point=picked_point(layer, channel, token),
            reveal=EXPLAINER_KEY,
        )
    with slots.ranking:
        bars_ui(sent.ranking, key="ranking", on_pick=choose_ranked)
    state.sync_url()  # the entrypoint's call does not run on a fragment's own reruns


def no_maps_ui(
    column: DeltaGenerator, ctx: Context, layer: str, norm: str, why: Callable[[], None]
) -> None:
    """Where the view has no maps to show: the input in its place, and ``why`` below it."""
    st.session_state[_NO_MAPS_KEY] = True
    shown_why = st.container()
    with column:
        channel, rank_by = st.session_state[state.CHANNEL_KEY], st.session_state.get(RANK_KEY)
        image_ui(ctx, layer, norm, channel, rank_by or "mean", None)
    with shown_why:
        why()


def input_alone_ui(ctx: Context, view: state.View) -> None:
    """The pad (with nothing the network sees), or the image and its button."""
    if view.drawing is not None:
        pad_ui(view.drawing, ctx.info.spec, key=PAD_KEY, on_change=drawn(ctx))
    else:
        input_ui(ctx, view, *input_image(view, ctx))


def rerun_view() -> None:
    """In a callback: rerun the whole view, not only :func:`image_ui`."""
    st.rerun(VIEW_FRAGMENT)


def shown_elsewhere() -> bool:
    """Whether something outside :func:`image_ui` shows the input too: an upload's "Back"
    button, an explanation, the open channel card or saves."""
    session = st.session_state
    if session.get(state.UPLOAD_KEY) is not None or PICK_KEY in session:
        return True
    return bool(session.get(CARD_KEY) or session.get(SAVES_KEY))


def next_image() -> None:
    """Callback of "Another random image": the next seed's pick.

    Only :func:`image_ui` reruns, unless something outside it shows the image too.
    """
    elsewhere = shown_elsewhere()
    state.next_seed()
    if elsewhere:
        rerun_view()


def drawn(ctx: Context) -> Callable[[], None]:
    """Callback of the pad, after a stroke: only :func:`image_ui` reruns, unless something
    outside it shows the input too, or the drawing holds no digit (no maps to show)."""

    def after() -> None:
        try:
            get_drawn_pixels(st.session_state[state.DRAWING_KEY], ctx.info.spec)
        except ValueError:
            rerun_view()
        if shown_elsewhere() or st.session_state.get(_NO_MAPS_KEY):
            rerun_view()

    return after


def choose_channel(point: dict[str, int]) -> None:
    """Callback of the grid and the ranking: a click chooses that channel (the whole view
    reruns, its Channel input with it)."""
    st.session_state[state.CHANNEL_KEY] = int(point["channel"])
    st.rerun(VIEW_FRAGMENT)


def choose_ranked(label: str) -> None:
    """Callback of the ranking: a click on a bar chooses its channel."""
    choose_channel({"channel": int(label)})


def picked_point(layer: str, channel: int, token: tuple) -> tuple[int, int] | None:
    """The ``(x, y)`` of the point explained below, when it is on the enlarged map shown
    (this layer, channel and view), else ``None``."""
    pick = st.session_state.get(PICK_KEY)
    if not pick or pick.get("view") != token:
        return None
    if (pick.get("layer"), pick.get("channel")) != (layer, channel):
        return None
    return int(pick["x"]), int(pick["y"])


def explain_point(point: dict[str, int]) -> None:
    """Callback of the enlarged map: explain the clicked point, below the maps (outside
    :func:`image_ui`, so the whole view reruns)."""
    pick_value(point)
    st.rerun(VIEW_FRAGMENT)


def input_ui(ctx: Context, view: state.View, pixels: np.ndarray, caption: str) -> None:
    """The pad with what the network sees, or the image with the button for another one."""
    if view.drawing is not None:
        pad_ui(view.drawing, ctx.info.spec, key=PAD_KEY, seen=pixels, on_change=drawn(ctx))
        return
    # The sidebar does not repeat it.
    st.image(get_picture(pixels).data, caption=caption, width="stretch", output_format="JPEG")
    next_image_ui()


def next_image_ui() -> None:
    """The "Another random image" button."""
    st.button(
        "Another random image",
        help="The next seed's pick from the dataset",
        on_click=next_image,
        icon=":material/casino:",
        key="next_image",
        width="stretch",
    )


def pickers_ui(layers: tuple[str, ...], mode: str) -> tuple[str, str]:
    """The layer and colour-scale pickers, and the uploader.

    Returns:
        The chosen layer and the colour scale.
    """
    layer = st.segmented_control(
        "Layer",
        layers,
        required=True,
        key=state.LAYER_KEY,
        persist_state="session",
        help="Choose the layers to show on the Layers page.",
    )
    norm = st.segmented_control(
        "Colour scale",
        state.NORMS,
        format_func={"channel": "Per channel", "layer": "Per layer"}.get,
        required=True,
        key=state.NORM_KEY,
        persist_state="session",
        help="Per channel: each map's colours reach its own largest value, so faint maps "
        "show too. Per layer: one scale for all maps, to compare strengths. Either way "
        "zero keeps its colour: white, or dark purple after a ReLU.",
    )
    upload_ui(mode)
    return layer, norm


def likeliest(probabilities: np.ndarray, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The ten likeliest classes and their probabilities: in class order for a handful
    (digits), else by rank."""
    order = np.argsort(probabilities)[::-1][:10]
    if len(probabilities) <= 10:
        order = np.sort(order)
    return [classes[i] for i in order], probabilities[order]


def predictions_html(probabilities: np.ndarray, classes: Sequence[str]) -> str:
    """The network's answer and the other likely classes, as bars."""
    names, shown = likeliest(probabilities, classes)
    best = names[int(np.argmax(shown))]
    return bars_html(
        names,
        shown,
        title=f"The network says: {best} ({probabilities.max():.0%})",
        value_name="probability",
        highlight=best,
        percent=True,
    )


def channel_picker_ui(count: int) -> int:
    """The channel picker, its value kept within the layer's ``count`` channels.

    Returns:
        The chosen channel.
    """
    if st.session_state[state.CHANNEL_KEY] >= count:
        st.session_state[state.CHANNEL_KEY] = 0
    return st.number_input(
        "Channel",
        min_value=0,
        max_value=count - 1,
        step=1,
        key=state.CHANNEL_KEY,
        persist_state="session",
        help="Or click a square of the grid above, or a bar of the ranking below.",
        width=220,
    )


def channel_data(
    maps: np.ndarray, layer: str, channel: int, seen: np.ndarray, norm: str = "channel"
) -> dict:
    """The chosen channel enlarged, and beside it laid over the image: one map view, in
    its layer's colours (signed when the layer is) and, per layer, on the layer's scale."""
    colours = figures.map_colours(maps)
    reach = float(colours.reach(maps, "layer").max()) if norm == "layer" else None
    return map_view_data(
        maps[channel : channel + 1],
        title=f"{layer}, channel {channel}",
        colorbar=True,
        legend=True,
        centre=colours.signed,
        reach=reach,
        # Over the image as the network saw it: resized and centre-cropped.
        under=seen,
        under_title=f"Channel {channel} laid over the image",
        opacity=OVERLAY_OPACITY,
    )


def dead_note(dead: list[int]) -> str:
    """One line on the channels that are zero everywhere on this image."""
    if not dead:
        return "No dead channels: every channel responds somewhere on this image."
    listed = ", ".join(map(str, dead))
    return f"{len(dead)} dead channel(s), zero everywhere on this image: {listed}"


def rank_by_ui() -> str:
    """The ranking's measure: mean or max activation."""
    return st.segmented_control(
        "Rank channels by",
        ["mean", "max"],
        format_func={"mean": "Mean activation", "max": "Max activation"}.get,
        required=True,
        default="mean",
        key=RANK_KEY,
        persist_state="session",
    )


def ranking_html(maps: np.ndarray, layer: str, rank_by: str, channel: int | None = None) -> str:
    """The layer's channels ranked by mean or max activation (the strongest
    ``NAMED_BARS`` of a larger layer), each numbered, the chosen one highlighted, dead
    ones greyed."""
    stats = figures.channel_stats(maps)
    order = stats.ranked(rank_by)[:NAMED_BARS]
    more = f", the {len(order)} strongest of {len(maps)}" if len(maps) > len(order) else ""
    return bars_html(
        order.tolist(),
        stats.measure(rank_by)[order],
        title=f"Channels of {layer} by {rank_by} activation{more} (click a bar to choose it)",
        value_name=f"{rank_by} activation",
        highlight=channel if channel in order else None,
        flagged=stats.dead[order],
        # In the chart, not a caption: each element costs every click.
        note=dead_note(np.flatnonzero(stats.dead).tolist()),
    )


def downloads_ui(ctx: Context, shown: Shown, layer: str, channel: int, norm: str) -> None:
    """The view's maps (.npz), the layer's grid (.png) and its recipe (.json)."""
    features, view = shown.features, shown.view
    meta = {
        "model": ctx.model_name,
        "weights": ctx.loaded.weights,
        "weights_id": ctx.loaded.weights_id,
        "image": shown.caption,
        "normalisation": "none: raw activations",
    }
    recipe = recipe_of(view, layer, channel, norm, ctx)
    source = "drawing" if view.drawing is not None else "upload" if view.upload else None
    stem = f"{ctx.model_name}_{source or Path(view.image).stem}"
    st.download_button(
        "Feature maps (.npz)",
        data=lambda: export.maps_npz(features.maps, meta),
        file_name=f"{stem}_maps.npz",
        mime="application/octet-stream",
        on_click="ignore",
        icon=":material/download:",
        help="Every chosen layer's raw maps as NumPy arrays: np.load(file)[layer_name].",
        width="stretch",
    )
    st.download_button(
        f"{layer} grid (.png)",
        data=lambda: export.grid_png(features.maps[layer], per=norm),
        file_name=f"{stem}_{layer}.png",
        mime="image/png",
        on_click="ignore",
        icon=":material/image:",
        width="stretch",
    )
    st.download_button(
        "Recipe of this view (.json)",
        data=recipe.to_json() if recipe is not None else "",
        file_name=f"{stem}_recipe.json",
        mime="application/json",
        on_click="ignore",
        icon=":material/receipt_long:",
        disabled=recipe is None,
        help="Dataset, image, model, weights and layers: open it again below, or share it."
        if recipe is not None
        else "An uploaded image cannot be part of a recipe.",
        width="stretch",
    )
