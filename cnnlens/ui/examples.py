"""A channel's dataset examples, and the long passes that find them, shared by the pages.

Insights (its top images, class examples and embedding selections) and the channel
card on Feature maps show a channel's strongest images the same way: the crop where
the channel fires, its map below, all maps on one colour scale. Both start dataset
passes the same way too: a progress bar and a Cancel button. Cancel reruns the page,
which stops the pass at its next progress update: nothing is stored.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from cnnlens import figures
from cnnlens.insights import fire_box
from cnnlens.ui import cache
from cnnlens.ui.context import Context

__all__ = [
    "PAUSED_KEY",
    "PER_ROW",
    "THUMB_SIDE",
    "examples_ui",
    "fire_crop",
    "map_tiles",
    "pause",
    "paused_ui",
    "resume",
    "run_with_progress",
]

T = TypeVar("T")

PER_ROW = 6  # example images side by side
THUMB_SIDE = 96  # pixels: crops and heatmaps of the examples are enlarged to about this
PAUSED_KEY = "insights_paused"  # the pass the user cancelled; not restarted by itself


# --- long passes ---------------------------------------------------------------------------


def pause(key: tuple) -> None:
    """Callback of Cancel: remember which pass was stopped, so it is not started again."""
    st.session_state[PAUSED_KEY] = key


def resume() -> None:
    """Callback of "Go on"."""
    st.session_state[PAUSED_KEY] = None


def paused_ui(key: tuple, what: str, button_key: str = "insights_resume") -> bool:
    """If the pass ``key`` was cancelled: say so with a "Go on" button, and return True."""
    if st.session_state.get(PAUSED_KEY) != key:
        return False
    st.info(f"{what[:1].upper()}{what[1:]} was cancelled.", icon=":material/pause_circle:")
    st.button("Go on", on_click=resume, icon=":material/play_arrow:", key=button_key)
    return True


def run_with_progress(
    key: tuple,
    start_text: str,
    compute: Callable[[Callable[[int, int], None]], T],
    describe: Callable[[int, int], str],
    cancel_key: str = "insights_cancel",
) -> T | None:
    """Run a long pass with a progress bar and a Cancel button; ``None`` if it failed.

    Cancel (its callback :func:`pause` records ``key``) reruns the page, which
    stops the pass at its next progress update, so nothing unfinished is kept.

    Args:
        key: what identifies the pass, recorded by Cancel.
        start_text: the bar's text before the first update.
        compute: runs the pass, calling its argument with ``(done, total)``.
        describe: the bar's text for ``(done, total)``.
        cancel_key: the Cancel button's widget key (unique on the page).

    Returns:
        The pass's result, or ``None`` after a ValueError, which is shown as an error.
    """
    bar = st.progress(0.0, text=start_text)
    cancel = st.empty()
    cancel.button("Cancel", on_click=pause, args=(key,), icon=":material/cancel:", key=cancel_key)

    def progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=describe(done, total))

    try:
        result = compute(progress)
    except ValueError as error:
        bar.empty()
        cancel.empty()
        st.error(str(error), icon=":material/error:")
        return None
    bar.empty()
    cancel.empty()
    return result


# --- a channel's strongest examples --------------------------------------------------------


def examples_ui(
    ctx: Context, split: str, layer: str, rows: pd.DataFrame, channel: int, per_row: int = PER_ROW
) -> None:
    """The images of ``rows``: the crop where the channel fires, and its map below.

    Args:
        ctx: this run's context (dataset and model).
        split: the split the rows come from.
        layer: the layer.
        rows: rows of :func:`cnnlens.insights.top_images` (``filename``, ``label``,
            ``score`` and the strongest spot).
        channel: the channel.
        per_row: images side by side.
    """
    if rows.empty:
        st.caption("No images to show.")
        return
    filenames = tuple(rows["filename"])
    maps = cache.get_channel_maps(ctx.choice, ctx.root, split, filenames, layer, channel)
    tiles = map_tiles(maps)
    field = cache.get_receptive_field(ctx.choice, layer)
    for start in range(0, len(rows), per_row):
        columns = st.columns(per_row)
        for offset, (_, row) in enumerate(rows.iloc[start : start + per_row].iterrows()):
            pixels = cache.get_network_input(ctx.choice, ctx.root, split, row["filename"])
            crop = fire_crop(pixels, row, maps.shape[1:], field)
            label = "" if row["label"] is None else f" · {row['label']}"
            with columns[offset]:
                st.image(crop, caption=f"{row['filename']}{label}", width="stretch")
                st.image(tiles[start + offset], caption=f"{row['score']:.3g}", width="stretch")


def map_tiles(maps: np.ndarray) -> list[Image.Image]:
    """One enlarged picture per map, all on one colour scale so that they compare."""
    count, height, width = maps.shape
    scale = max(1, THUMB_SIDE // max(height, width))
    # One strip on one colour scale, cut into a tile per image.
    strip = Image.open(
        io.BytesIO(figures.montage_png(maps, per="layer", columns=count, gap=0, scale=scale))
    ).convert("RGB")
    side_x, side_y = width * scale, height * scale
    return [strip.crop((i * side_x, 0, (i + 1) * side_x, side_y)) for i in range(count)]


def fire_crop(
    pixels: np.ndarray, row: pd.Series, map_shape: tuple[int, int], field: int | None
) -> Image.Image:
    """The part of the image around where the channel fires, that spot outlined, enlarged."""
    box = fire_box(row, map_shape, pixels.shape[:2], field)
    # A crop of a few pixels (an early layer's field) shows nothing recognisable:
    # show at least half the image around the spot.
    around = fire_box(row, map_shape, pixels.shape[:2], max(field or 0, min(pixels.shape[:2]) // 2))
    crop = Image.fromarray(pixels).convert("RGB").crop(around)
    zoom = max(1, THUMB_SIDE // max(crop.size))
    crop = crop.resize((crop.width * zoom, crop.height * zoom), Image.Resampling.NEAREST)
    left, top = (box[0] - around[0]) * zoom, (box[1] - around[1]) * zoom
    right, bottom = (box[2] - around[0]) * zoom - 1, (box[3] - around[1]) * zoom - 1
    outline = max(1, min(crop.size) // 48)
    ImageDraw.Draw(crop).rectangle(
        (left, top, right, bottom), outline=figures.HIGHLIGHT_COLOUR, width=outline
    )
    return crop
