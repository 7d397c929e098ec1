"""The channel atlas on Insights: every channel of a layer as the image it looks for; a
click opens that channel's card on Feature maps.

The tiles are drawn from the dataset's own typical shapes (the card's legible
method) where the dataset's prior is stored or cheap to learn (a small input: the
painting learns it first); elsewhere by Lucid's recipe, and a caption says which.
Images are painted on request in groups of :data:`ATLAS_BATCH`, with progress and
Cancel (:mod:`cnnlens.ui.runner`); each finished group is stored, so a cancelled
atlas keeps what it drew, and the card shows the same images. The atlas is a
fragment and paints in the background: the rest of the page stays usable while it
paints (a minute or more for a large layer), and each group's tiles show as it is
finished.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import streamlit as st
from PIL import Image

from cnnlens.feature_visualization import ChannelImagesSpec
from cnnlens.priors import ImagePriorSpec
from cnnlens.ui import state
from cnnlens.ui.channel_card import (
    CARD_KEY,
    LEGIBLE,
    channel_images,
    prior_spec,
    say,
    small_input,
)
from cnnlens.ui.context import Context
from cnnlens.ui.map_view import map_view_ui
from cnnlens.ui.navigation import page
from cnnlens.ui.resources import get_model, result_store
from cnnlens.ui.runner import result_ui, running

__all__ = [
    "ATLAS_BATCH",
    "atlas_columns",
    "atlas_data",
    "atlas_prior",
    "atlas_ui",
    "drawn_by_words",
    "get_channel_count",
]

ATLAS_BATCH = 16
"""Channels optimised together in the atlas: each finished group is stored at once."""
ATLAS_GAP = 2
OPEN_CARD_KEY = "atlas_open_card"  # set by a click on the atlas; the run then switches page


@st.cache_data(max_entries=64, show_spinner=False)
def get_channel_count(choice: state.ModelChoice, layer: str) -> int:
    """How many channels a layer has (one probe forward, once per model and layer).

    Raises:
        ValueError: for a layer without channels.
    """
    from cnnlens.borrow import layer_channels

    return len(layer_channels(get_model(choice), layer))


def _open_card(layer: str, point: dict[str, int]) -> None:
    """Callback of a click on the atlas: that channel's card, opened by the next run."""
    st.session_state[state.LAYER_KEY] = layer
    st.session_state[state.CHANNEL_KEY] = int(point["channel"])
    st.session_state[OPEN_CARD_KEY] = True
    st.session_state[CARD_KEY] = True


def _picture(found: dict[tuple[int, bool], np.ndarray], count: int, title: str) -> dict:
    """The map view's data for the tiles found, each at its channel's place."""
    present = sorted(channel for channel, negative in found if not negative)
    tiles = np.stack([found[channel, False] for channel in present])
    return atlas_data(tiles, present, count, title)


def _so_far_ui(spec: ChannelImagesSpec, layer: str) -> None:
    """While the atlas paints: the tiles of the groups finished so far (not clickable yet)."""
    found = spec.found(result_store())
    if found:
        count = len(spec.channels)
        st.caption(
            f"{len(found)} of {count} channels are drawn so far; the others show as "
            f"each group of {ATLAS_BATCH} is finished."
        )
        map_view_ui(_picture(found, count, f"{layer}: painting…"), key="atlas_so_far")


def _painted_ui(spec: ChannelImagesSpec, layer: str) -> dict[tuple[int, bool], np.ndarray]:
    """The images painted so far, and the button that paints the rest; while they are
    painted, their progress and the tiles so far, and nothing is returned."""
    found = spec.found(result_store())
    count, drawn = len(spec.channels), len(found)
    if drawn == count:
        return found
    if drawn and not running(spec):
        st.caption(f"{drawn} of {count} channels are drawn.")
    side = spec.tile(0).side
    painted = result_ui(
        spec,
        key="atlas",
        start=f"Draw the {count - drawn} channels still missing"
        if drawn
        else f"Draw all {count} channels",
        icon=":material/auto_awesome_mosaic:",
        help=f"Paints {side}×{side}-pixel images, {ATLAS_BATCH} channels at a time, "
        f"{spec.steps} steps each. Each finished group is kept for everyone, also if you "
        "cancel. The rest of the page stays usable meanwhile.",
        in_background=True,
        so_far=lambda: _so_far_ui(spec, layer),
    )
    if painted is not None:
        return dict(zip(spec.tiles, painted, strict=True))
    return {} if running(spec) else found


@st.fragment
def atlas_ui(ctx: Context, layer: str) -> None:
    """Every channel of a layer as its feature visualization; a click opens its card.

    A fragment: its buttons and the painting rerun only the atlas, never the page.
    """
    if st.session_state.pop(OPEN_CARD_KEY, False):
        st.switch_page(page("feature_maps"))  # a callback cannot switch pages
    try:
        count = get_channel_count(ctx.choice, layer)
    except ValueError as error:
        st.info(str(error), icon=":material/info:")
        return
    prior = atlas_prior(ctx)
    spec = channel_images(ctx, layer, tuple(range(count)), batch_size=ATLAS_BATCH, prior=prior)
    st.subheader(f"What each of the {count} channels of {layer} looks for")
    say("atlas")
    st.caption(drawn_by_words(prior is not None))
    found = _painted_ui(spec, layer)
    if not found:
        return
    map_view_ui(
        _picture(found, count, f"{layer}: click a channel to open its card"),
        key="atlas",
        on_pick=lambda point: _open_card(layer, point),
        numbered=True,
    )
    st.caption(
        "Each tile is a picture, not a map of values: it is coloured as the network's input "
        "is, so a grayscale network's pictures are gray. Its number is the channel's."
    )


def atlas_prior(ctx: Context) -> ImagePriorSpec | None:
    """The dataset's prior for the atlas's pictures: where it is stored, or cheap to learn
    (a small input, where the painting learns it first); else ``None``, for Lucid's recipe."""
    spec = prior_spec(ctx)
    if small_input(ctx) or result_store().peek(spec) is not None:
        return spec
    return None


def drawn_by_words(legible: bool) -> str:
    """Which method draws the tiles, in one sentence."""
    if legible:
        return (
            "Drawn from the dataset's own typical shapes (its principal components, method "
            f"{LEGIBLE!r}), changed until each channel fires as much as it can: each picture "
            "stays close to what the dataset's images look like."
        )
    return (
        "Drawn by Lucid's recipe, from noise: this dataset's typical shapes are not learned "
        "yet. A channel card on Feature maps learns them (once, for everyone); the atlas "
        "then draws from them."
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
        "legend": None,
        "numbers": None,
        "max_height": min(max(rows * 120, 250), 1200),
        "under": None,
        "opacity": 0.5,
    }
