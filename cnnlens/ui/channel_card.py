"""The channel card on Feature maps and the channel atlas on Insights.

The card answers three questions about one channel, each in a plain sentence:
what it looks for (its feature visualization and the negative one), where it
fires in the data (its strongest dataset examples) and what it does (the
prediction with the channel set to zero, over this image and over the dataset;
for the first convolution, its kernel weights). The atlas shows every channel
of a layer as its feature visualization; a click opens that channel's card.

Everything long is started by a button, shown with progress and a Cancel button,
and kept in the results store: a stored result paints at once, computing nothing.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable

import numpy as np
import streamlit as st
from PIL import Image

from cnnlens.insights import top_images
from cnnlens.ui import cache, state
from cnnlens.ui.bars import bars_html
from cnnlens.ui.context import Context
from cnnlens.ui.examples import PAUSED_KEY, examples_ui, resume, run_with_progress
from cnnlens.ui.explanations import EXPLANATIONS
from cnnlens.ui.map_view import map_view_data, map_view_ui
from cnnlens.ui.navigation import page

__all__ = ["atlas_data", "atlas_ui", "channel_card_ui", "enlarge"]

STEPS = 256
"""Optimisation steps of a feature visualization (Lucid's recipe: 256-512)."""
SEED = 0
SHOWN_SIDE = 192
"""A small visualization is enlarged (nearest neighbour) to about this many pixels."""
EXAMPLES = 6  # dataset examples on the card
LIKELIEST = 10  # classes shown for a model with many
CHANGE_SPAN = 0.1  # change bars span at least 10 points, so that small changes look small
ATLAS_BATCH = 16
"""Channels optimised together in the atlas: each finished group is stored at once."""
ATLAS_GAP = 2
KERNEL_HEIGHT = 150  # CSS pixels of the first layer's kernel heatmap
CARD_KEY = "channel_card"  # the card's expander: open or closed, kept across clicks
OPEN_CARD_KEY = "atlas_open_card"  # set by a click on the atlas; the run then switches page
SPLIT = "train"  # the labelled split, over which the dataset ablation is judged


def _settings(ctx: Context) -> dict[str, int]:
    return {"size": cache.visual_side(ctx.choice), "steps": STEPS, "seed": SEED}


def _say(topic: str, small: bool = True) -> None:
    """One plain sentence of :mod:`cnnlens.ui.explanations`, as a caption or as text."""
    text = EXPLANATIONS[topic].strip().replace("\n", " ")
    st.caption(text) if small else st.markdown(text)


def _clicked(slot: st.delta_generator.DeltaGenerator, label: str, **button: object) -> bool:
    """A start button in ``slot``; a click empties the slot, so the run shows only progress."""
    if not slot.button(label, **button):
        return False
    slot.empty()
    return True


def enlarge(tile: np.ndarray) -> np.ndarray:
    """A small tile repeated pixel by pixel to about :data:`SHOWN_SIDE` (nearest neighbour)."""
    zoom = max(1, SHOWN_SIDE // max(tile.shape[:2]))
    return tile.repeat(zoom, axis=0).repeat(zoom, axis=1)


def channel_card_ui(
    ctx: Context, view: state.View, layer: str, channel: int, pixels: np.ndarray
) -> None:
    """One channel's card: what it looks for, where it fires in the data, what it does.

    Args:
        ctx: this run's context.
        view: the current view (its split gives the dataset examples).
        layer: the layer.
        channel: the channel.
        pixels: the current image (uint8), for the ablation.
    """
    # Made only while open: the card's dozen elements would cost every click of the
    # page (a new image painted in 0.33 s instead of 0.13 s on the demo).
    card = st.expander(
        f"Channel {channel} of {layer}: what it looks for, where it fires, what it does",
        icon=":material/psychology:",
        key=CARD_KEY,
        on_change="rerun",
    )
    if not card.open:
        return
    with card:
        looks, does = st.columns(2, gap="large")
        with looks:
            looks_for_ui(ctx, layer, channel)
        with does:
            does_ui(ctx, layer, channel, pixels)
        fires_ui(ctx, view.split, layer, channel)


# --- what it looks for ---------------------------------------------------------------------


def looks_for_ui(ctx: Context, layer: str, channel: int) -> None:
    """The channel's feature visualization and its negative: at once when stored, else on
    request with progress and Cancel."""
    _say("card_looks_for", small=False)
    settings = _settings(ctx)
    tiles = {
        negative: None
        if cache.missing_visualizations(
            ctx.choice, layer, (channel,), negative=negative, **settings
        )
        else cache.visualizations(ctx.choice, layer, (channel,), negative=negative, **settings)[0]
        for negative in (False, True)
    }
    missing = [negative for negative, tile in tiles.items() if tile is None]
    if missing and _asked_to_draw(ctx, layer, channel, settings["size"], len(missing) == 1):
        key = ("visualize", ctx.choice, layer, channel, settings["size"], STEPS)
        drawn = run_with_progress(
            key,
            "Painting what it looks for…",
            lambda progress: _draw(ctx, layer, channel, missing, settings, progress),
            lambda done, total: f"Painting what it looks for: step {done} of {total}",
            cancel_key="card_visualize_cancel",
        )
        if drawn is not None:
            tiles.update(drawn)
    if all(tile is None for tile in tiles.values()):
        return
    for column, negative, caption in zip(
        st.columns(2),
        (False, True),
        ("What excites it most", "What it fires least for"),
        strict=True,
    ):
        if tiles[negative] is not None:
            column.image(
                enlarge(tiles[negative]), caption=caption, output_format="PNG", width="stretch"
            )
    _say("card_exaggeration")


def _asked_to_draw(ctx: Context, layer: str, channel: int, side: int, one: bool) -> bool:
    """The button that starts the drawing (a note first if the last one was cancelled)."""
    if st.session_state.get(PAUSED_KEY) == ("visualize", ctx.choice, layer, channel, side, STEPS):
        st.caption("Stopped; nothing was kept.")
    return _clicked(
        st.empty(),
        "Show what it fires least for too" if one else "Show what it looks for",
        icon=":material/auto_awesome:",
        key="card_visualize",
        on_click=resume,
        help=f"Paints {side}×{side}-pixel images in {STEPS} small steps: a few seconds "
        "for a small network, up to a minute for a large one on a CPU. The size is the "
        "model's input, at most 128 pixels, to keep the time sane on a CPU. "
        "Kept for everyone once done.",
    )


def _draw(
    ctx: Context,
    layer: str,
    channel: int,
    which: list[bool],
    settings: dict[str, int],
    progress: Callable[[int, int], None],
) -> dict[bool, np.ndarray]:
    """The missing tiles (``which``: negative or not), computed and stored, one by one."""
    drawn = {}
    for index, negative in enumerate(which):

        def report(done: int, total: int, index: int = index) -> None:
            progress(index * total + done, len(which) * total)

        tiles = cache.visualizations(
            ctx.choice, layer, (channel,), on_progress=report, negative=negative, **settings
        )
        drawn[negative] = tiles[0]
    return drawn


# --- where it fires in the data ------------------------------------------------------------


def fires_ui(ctx: Context, split: str, layer: str, channel: int) -> None:
    """The channel's strongest dataset images, once the layer's dataset pass is stored."""
    _say("card_fires", small=False)
    stats = cache.find_layer_stats(ctx.choice, ctx.root, split, layer)
    if stats is None:
        what = f"summarising {layer}"
        key = (what, ctx.choice, ctx.root, split)  # the key Insights gives the same pass
        if st.session_state.get(PAUSED_KEY) == key:
            st.caption("Stopped; nothing was kept.")
        if not _clicked(
            st.empty(),
            "Find its strongest images in the dataset",
            icon=":material/image_search:",
            key="card_examples",
            on_click=resume,
            help=f"One pass over every image of the {split} split, kept for everyone: the "
            "Insights page then shows this layer's channels at once too.",
        ):
            return
        stats = run_with_progress(
            key,
            f"Summarising {layer} over the dataset…",
            lambda progress: cache.layer_stats(ctx.choice, ctx.root, split, layer, progress),
            lambda done, total: f"Summarising {layer}: {done:,} of {total:,} images",
            cancel_key="card_examples_cancel",
        )
        if stats is None:
            return
    rows = top_images(stats, channel, k=EXAMPLES, by="max")
    examples_ui(ctx, split, layer, rows, channel, per_row=EXAMPLES)


# --- what it does --------------------------------------------------------------------------


def does_ui(ctx: Context, layer: str, channel: int, pixels: np.ndarray) -> None:
    """What zeroing the channel does to this image's answer and to each class's accuracy;
    the kernel of a first-layer channel."""
    classes = ctx.loaded.classes
    if classes is None:
        st.caption(f"{ctx.info.title} has no classes, so there is no answer to change.")
    elif ctx.loaded.weights.startswith("random"):
        # As Feature maps hides the guesses of random weights, so does the card.
        st.caption(
            "With random weights the network's answers mean nothing, so switching this "
            "channel off is not tested. Choose trained weights in the sidebar."
        )
    else:
        _say("card_does", small=False)
        try:
            ablated = cache.get_ablation(ctx.choice, pixels, layer, channel)
        except ValueError as error:
            st.error(str(error), icon=":material/error:")
            return
        st.html(ablation_html(ablated, classes, channel))
        by_class_ui(ctx, layer, channel)
    kernel = cache.get_kernel(ctx.choice, layer, channel)
    if kernel is not None:
        kernel_ui(kernel, layer, channel)


def shown_classes(before: np.ndarray, classes: list[str]) -> np.ndarray:
    """The classes the bars show: all of a handful in their order, else the likeliest."""
    if len(classes) <= LIKELIEST:
        return np.arange(len(classes))
    return np.argsort(before)[::-1][:LIKELIEST]


def ablation_html(ablated: cache.Ablated, classes: list[str], channel: int) -> str:
    """This image's change in each class's probability with the channel off, as bars."""
    shown = shown_classes(ablated.before, classes)
    names = [classes[i] for i in shown]
    first, then = int(np.argmax(ablated.before)), int(np.argmax(ablated.after))
    change = ablated.after[shown] - ablated.before[shown]
    most = int(np.argmax(np.abs(change)))
    note = (
        f"The network says {classes[first]} ({ablated.before[first]:.1%}); with channel "
        f"{channel} off, {classes[then]} ({ablated.after[then]:.1%}). The largest change: "
        f"{change[most]:+.2%} for {names[most]}."
    )
    return bars_html(
        names,
        change,
        title=f"This image, channel {channel} off: change in each class's probability",
        value_name="change in probability",
        highlight=classes[first] if classes[first] in names else None,
        percent=True,
        height=120,
        note=note,
        least_span=CHANGE_SPAN,
    )


def by_class_ui(ctx: Context, layer: str, channel: int) -> None:
    """Each class's accuracy over the labelled images with the channel off: stored, or on
    request with progress and Cancel."""
    found = cache.find_ablation_by_class(ctx.choice, ctx.root, SPLIT, layer, channel)
    if found is None:
        key = ("ablation", ctx.choice, ctx.root, layer, channel)
        if st.session_state.get(PAUSED_KEY) == key:
            st.caption("Stopped; nothing was kept.")
        if not _clicked(
            st.empty(),
            "Test it on the whole dataset",
            icon=":material/science:",
            key="card_ablation",
            on_click=resume,
            help="One pass over every labelled image, with and without this channel: how "
            "often the network is right for each class. Kept for everyone.",
        ):
            return
        found = run_with_progress(
            key,
            "Testing every labelled image…",
            lambda progress: cache.ablation_by_class(
                ctx.choice, ctx.root, SPLIT, layer, channel, progress
            ),
            lambda done, total: (
                f"Testing with and without channel {channel}: {done:,} of {total:,} images"
            ),
            cancel_key="card_ablation_cancel",
        )
        if found is None:
            return
    most = int(np.argmax(np.abs(found.change)))
    st.html(
        bars_html(
            list(found.classes),
            found.change,
            title=f"The dataset, channel {channel} off: change in each class's accuracy",
            value_name="change in accuracy",
            percent=True,
            height=120,
            note=f"Right on {found.overall_before:.1%} of {int(found.counts.sum()):,} labelled "
            f"images; {found.overall_after:.1%} with channel {channel} off. The largest "
            f"change: {found.change[most]:+.2%} for {found.classes[most]}.",
            least_span=CHANGE_SPAN,
        )
    )


def kernel_ui(kernel: np.ndarray, layer: str, channel: int) -> None:
    """A first-layer channel's weights, one small heatmap per input channel, zero white."""
    inputs = {1: "the pixels", 3: "red, green and blue"}.get(len(kernel), f"{len(kernel)} inputs")
    title = f"Channel {channel}'s {kernel.shape[1]}×{kernel.shape[2]} weights on {inputs}"
    data = map_view_data(
        kernel,
        per="layer",
        columns=len(kernel),
        colorscale="RdBu_r",
        centre=True,
        colorbar=True,
        title=title,
    )
    data["max_height"] = KERNEL_HEIGHT  # a few weights: small, beside a colour bar as tall
    map_view_ui(data, key="card_kernel")
    _say("card_kernel")


# --- the atlas -----------------------------------------------------------------------------


def _open_card(layer: str, point: dict[str, int]) -> None:
    """Callback of a click on the atlas: that channel's card, opened by the next run."""
    st.session_state[state.LAYER_KEY] = layer
    st.session_state[state.CHANNEL_KEY] = int(point["channel"])
    st.session_state[OPEN_CARD_KEY] = True
    st.session_state[CARD_KEY] = True


def atlas_ui(ctx: Context, layer: str) -> None:
    """Every channel of a layer as its feature visualization; a click opens its card.

    Tiles are computed on request in groups of :data:`ATLAS_BATCH`, with progress and
    Cancel; each finished group is stored, so a cancelled atlas keeps what it drew.
    """
    if st.session_state.pop(OPEN_CARD_KEY, False):
        st.switch_page(page("feature_maps"))  # a callback cannot switch pages
    try:
        count = cache.get_channel_count(ctx.choice, layer)
    except ValueError as error:
        st.info(str(error), icon=":material/info:")
        return
    settings = _settings(ctx)
    channels = tuple(range(count))
    missing = cache.missing_visualizations(ctx.choice, layer, channels, negative=False, **settings)
    st.subheader(f"What each of the {count} channels of {layer} looks for")
    _say("atlas")
    if missing:
        side = settings["size"]
        key = ("atlas", ctx.choice, layer, side, STEPS)
        drawn = count - len(missing)
        if st.session_state.get(PAUSED_KEY) == key:
            st.info(
                f"Drawing was cancelled; {drawn} of {count} channels are drawn.",
                icon=":material/pause_circle:",
            )
        elif drawn:
            st.caption(f"{drawn} of {count} channels are drawn.")
        start = _clicked(
            st.empty(),
            f"Draw the {len(missing)} channels still missing"
            if drawn
            else f"Draw all {count} channels",
            icon=":material/auto_awesome_mosaic:",
            key="atlas_start",
            on_click=resume,
            help=f"Paints {side}×{side}-pixel images, {ATLAS_BATCH} channels at a time, "
            f"{STEPS} steps each. Each finished group is kept for everyone, also if you "
            "cancel.",
        )
        if start:
            done = run_with_progress(
                key,
                f"Drawing {len(missing)} channels…",
                lambda progress: cache.visualizations(
                    ctx.choice,
                    layer,
                    tuple(missing),
                    on_progress=progress,
                    batch_size=ATLAS_BATCH,
                    **settings,
                ),
                lambda done, total: (
                    f"Drawing {len(missing)} channels, {ATLAS_BATCH} at a "
                    f"time: step {done:,} of {total:,}"
                ),
                cancel_key="atlas_cancel",
            )
            if done is not None:
                missing = []
    present = [c for c in channels if c not in set(missing)]
    if not present:
        return
    tiles = cache.visualizations(ctx.choice, layer, tuple(present), negative=False, **settings)
    map_view_ui(
        atlas_data(tiles, present, count, f"{layer}: click a channel to open its card"),
        key="atlas",
        on_pick=lambda point: _open_card(layer, point),
    )


def atlas_columns(count: int) -> int:
    """Tiles per row: a square-ish grid, at least 8 wide."""
    return min(count, max(8, math.ceil(math.sqrt(count))))


def atlas_data(tiles: np.ndarray, channels: list[int], count: int, title: str) -> dict:
    """The map view's data for an atlas: the tiles as one RGBA picture, gaps and channels
    not drawn yet transparent, in the layout :func:`map_view_data` uses (so hover and
    click name the channel), for grayscale and RGB tiles alike.

    Args:
        tiles: N×H×W or N×H×W×3 uint8, one per entry of ``channels``.
        channels: the channel of each tile.
        count: the layer's channels.
        title: shown above.
    """
    side_y, side_x = tiles.shape[1:3]
    columns = atlas_columns(count)
    rows = math.ceil(count / columns)
    picture = np.zeros(
        (rows * (side_y + ATLAS_GAP) - ATLAS_GAP, columns * (side_x + ATLAS_GAP) - ATLAS_GAP, 4),
        np.uint8,
    )
    for tile, channel in zip(tiles, channels, strict=True):
        row, column = divmod(channel, columns)
        top, left = row * (side_y + ATLAS_GAP), column * (side_x + ATLAS_GAP)
        spot = picture[top : top + side_y, left : left + side_x]
        spot[..., :3] = tile[..., None] if tile.ndim == 2 else tile
        spot[..., 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(picture, "RGBA").save(buffer, format="PNG", compress_level=1)
    return {
        "png": base64.b64encode(buffer.getvalue()).decode(),
        "channels": count,
        "height": side_y,
        "width": side_x,
        "columns": columns,
        "gap": ATLAS_GAP,
        "values": None,
        "title": title,
        "low": 0.0,
        "high": 1.0,
        "colorbar": None,
        "max_height": min(max(rows * 120, 250), 1200),
        "under": None,
        "opacity": 0.5,
    }
