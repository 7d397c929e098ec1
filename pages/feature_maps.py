"""Feature maps: every channel of a layer for the current image, one enlarged, ranked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from cnnlens import export, figures
from cnnlens.ui import cache, state
from cnnlens.ui.bars import bars_html
from cnnlens.ui.channel_card import channel_card_ui
from cnnlens.ui.context import Context, page_context
from cnnlens.ui.explanations import explain
from cnnlens.ui.image_input import input_image, upload_ui
from cnnlens.ui.map_view import map_view_data, map_view_ui
from cnnlens.ui.recipes import recipe_of, recipe_ui
from cnnlens.ui.value_explainer import pick_value, value_explainer_ui

# Above this many values (600 kB of float32) the grid's hover names the channel,
# x and y only; the enlarged channel below still reads out values.
GRID_VALUES_LIMIT = 150_000


@st.fragment
def view_ui(ctx: Context) -> None:
    """Everything that follows the image, layer and channel: a fragment, so that a new
    image reruns only this (no sidebar, no navigation), which is most of the clicks."""
    view = state.current_view(ctx.dataset)
    pixels, caption = input_image(view, ctx)
    layer, norm, predictions = top_row_ui(view, pixels, caption, ctx.spec.mode)
    try:
        features = cache.get_features(ctx.choice, view.layers, pixels)
    except ValueError as error:
        st.error(f"{error} Choose another image or model.", icon=":material/error:")
        return
    maps = features.maps[layer]
    if maps.ndim != 3:
        st.info(
            f"{layer} gives {'×'.join(map(str, maps.shape))} values, not image-shaped maps. "
            "Choose a convolutional layer or block: the Layers page shows each one's output shape.",
            icon=":material/info:",
        )
        return
    grid_ui(maps, layer, norm)
    with predictions.container():
        if features.probabilities is not None:
            predictions_ui(features.probabilities, ctx.loaded.classes)
    channel = channel_ui(maps, layer, features.seen)
    value_explainer_ui(ctx, pixels, layer, channel, maps.shape)
    channel_card_ui(ctx, view, layer, channel, pixels)
    ranking_ui(maps, layer)
    # A popover whose buttons are made only while it is open (opening it reruns this
    # view): made on every run, they cost the browser time on every click.
    saves = st.popover("Save this view", icon=":material/download:", key="saves", on_change="rerun")
    if saves.open:
        with saves:
            downloads_ui(ctx, features, layer, channel, norm, view, caption)
    state.sync_url()  # the entrypoint's call does not run on the fragment's own reruns


def top_row_ui(
    view: state.View, pixels: np.ndarray, caption: str, mode: str
) -> tuple[str, str, st.delta_generator.DeltaGenerator]:
    """The image with its buttons, the layer and colour-scale pickers, and the uploader.

    Returns:
        The chosen layer, the colour scale, and the empty slot for the predictions.
    """
    top = st.columns([1.4, 3, 2])
    with top[0]:
        st.image(pixels, caption=caption, width="stretch")  # the sidebar does not repeat it
        st.button(
            "Another random image",
            help="The next seed's pick from the dataset",
            on_click=state.next_seed,
            icon=":material/casino:",
            key="next_image",
            width="stretch",
        )
    with top[1]:
        layer = st.segmented_control(
            "Layer",
            view.layers,
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
            help="Per channel: each map uses the full colour range. "
            "Per layer: one scale for all maps, to compare strengths.",
        )
        upload_ui(mode)
    # Filled after the grid: the grid is what people wait for, so it is sent first.
    return layer, norm, top[2].empty()


def grid_ui(maps: np.ndarray, layer: str, norm: str) -> None:
    """Every channel of the layer, values on hover when they are few enough to send."""
    count, height, width = maps.shape
    st.subheader(f"{layer}: {count} channels of {height}×{width}")
    with_values = maps.size <= GRID_VALUES_LIMIT
    map_view_ui(map_view_data(maps, per=norm, with_values=with_values), key="grid")
    if not with_values:
        st.caption("Hover a square for its channel; pick that channel below to read its values.")


def likeliest(probabilities: np.ndarray, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """The ten likeliest classes and their probabilities: in class order for a handful
    (digits), else by rank."""
    order = np.argsort(probabilities)[::-1][:10]
    if len(probabilities) <= 10:
        order = np.sort(order)
    return [classes[i] for i in order], probabilities[order]


def predictions_ui(probabilities: np.ndarray, classes: list[str]) -> None:
    """The network's answer and the other likely classes, as bars."""
    names, shown = likeliest(probabilities, classes)
    best = names[int(np.argmax(shown))]
    st.html(
        bars_html(
            names,
            shown,
            title=f"The network says: {best} ({probabilities.max():.0%})",
            value_name="probability",
            highlight=best,
            percent=True,
        )
    )


def channel_ui(maps: np.ndarray, layer: str, seen: np.ndarray) -> int:
    """The channel picker, the chosen channel enlarged, and laid over the image.

    Returns:
        The chosen channel.
    """
    count = len(maps)
    if st.session_state[state.CHANNEL_KEY] >= count:
        st.session_state[state.CHANNEL_KEY] = 0
    channel = st.number_input(
        "Channel",
        min_value=0,
        max_value=count - 1,
        step=1,
        key=state.CHANNEL_KEY,
        persist_state="session",
        help="Hover the grid to find a channel's number.",
        width=220,
    )
    one = maps[channel : channel + 1]
    detail, overlay = st.columns(2)
    with detail:
        map_view_ui(
            map_view_data(one, title=f"{layer}, channel {channel}", colorbar=True),
            key="channel_map",
            on_pick=pick_value,  # "How is this value computed?", explained below
        )
    with overlay:
        map_view_ui(
            # Over the image as the network saw it: resized and centre-cropped.
            map_view_data(one, title=f"Channel {channel} laid over the image", under=seen),
            key="overlay",
        )
    return channel


def dead_note(dead: list[int]) -> str:
    """One line on the channels that are zero everywhere on this image."""
    if not dead:
        return "No dead channels: every channel responds somewhere on this image."
    listed = ", ".join(map(str, dead))
    return f"{len(dead)} dead channel(s), zero everywhere on this image: {listed}"


def ranking_ui(maps: np.ndarray, layer: str) -> None:
    """The layer's channels ranked by mean or max activation, dead ones greyed."""
    stats = figures.channel_stats(maps)
    rank_by = st.segmented_control(
        "Rank channels by",
        ["mean", "max"],
        format_func={"mean": "Mean activation", "max": "Max activation"}.get,
        required=True,
        default="mean",
        key="rank_by",
        persist_state="session",
    )
    ranked = stats.sort_values(rank_by, ascending=False)
    st.html(
        bars_html(
            ranked["channel"].tolist(),
            ranked[rank_by].to_numpy(),
            title=f"Channels of {layer} by {rank_by} activation (hover a bar for its channel)",
            value_name=f"{rank_by} activation",
            flagged=ranked["dead"].to_numpy(dtype=bool),
            # In the chart, not a caption: each element costs every click.
            note=dead_note(stats.loc[stats["dead"], "channel"].tolist()),
        )
    )


def downloads_ui(
    ctx: Context,
    features: cache.Features,
    layer: str,
    channel: int,
    norm: str,
    view: state.View,
    caption: str,
) -> None:
    """The view's maps (.npz), the layer's grid (.png) and its recipe (.json)."""
    meta = {
        "model": ctx.model_name,
        "weights": ctx.loaded.weights,
        "weights_id": ctx.loaded.weights_id,
        "image": caption,
        "normalisation": "none: raw activations",
    }
    recipe = recipe_of(view, layer, channel, norm, ctx)
    stem = f"{ctx.model_name}_{Path(view.image).stem if view.upload is None else 'upload'}"
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


page_ctx, _ = page_context(with_layers=True)
st.title("Feature maps")
# Outside the view's fragment: its text never changes, and drawing it again cost
# 30 ms of every click.
explain("heatmap", "convolution", "relu", "brightness")
view_ui(page_ctx)
# Outside the fragment: opening a recipe may change the dataset and model, a full rerun.
recipe_ui()
