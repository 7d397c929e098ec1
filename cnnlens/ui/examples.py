"""A channel's dataset examples, shown the same way by Insights and the channel card.

Insights (its top images, class examples and embedding selections) and the channel
card on Feature maps show a channel's strongest images alike: the crop where the
channel fires, the part of the image its value there reads outlined (its receptive
field, traced on the network's executed graph), its map below, all maps on one
colour scale. Where that part is unknown or is the whole image, nothing is outlined
and a sentence says why.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from cnnlens import figures
from cnnlens.insights import channel_maps, fire_box
from cnnlens.ui.caching import in_memory
from cnnlens.ui.context import Context
from cnnlens.ui.resources import get_dataset, get_model
from cnnlens.ui.state import ModelChoice

if TYPE_CHECKING:
    from cnnlens.receptive_fields import ReceptiveField

__all__ = [
    "PER_ROW",
    "THUMB_SIDE",
    "examples_ui",
    "fire_crop",
    "get_channel_maps",
    "get_network_input",
    "get_receptive_field",
    "map_tiles",
    "outline_note",
]

PER_ROW = 6  # example images side by side
THUMB_SIDE = 96  # pixels: crops and heatmaps of the examples are enlarged to about this


@in_memory(32)
def get_network_input(choice: ModelChoice, root: str, split: str, filename: str) -> np.ndarray:
    """A dataset image as the network sees it (resized, cropped), as uint8 pixels."""
    from cnnlens.preprocess import to_uint8_image

    loaded = get_model(choice)
    image = get_dataset(root).load_image(filename, loaded.spec.mode, split)
    return to_uint8_image(loaded.batch(image), loaded.spec)


@st.cache_data(max_entries=16, show_spinner=False)
def get_receptive_field(choice: ModelChoice, layer: str) -> ReceptiveField | None:
    """The part of the network's input each value of a layer reads (``None``: unknown)."""
    loaded = get_model(choice)
    return loaded.layers.receptive_field(layer, loaded.spec.shape)


@in_memory(64)
def get_channel_maps(
    choice: ModelChoice, root: str, split: str, filenames: tuple[str, ...], layer: str, channel: int
) -> np.ndarray:
    """One channel's maps for a few dataset images (k×H×W float32), in one forward pass."""
    return channel_maps(get_model(choice), get_dataset(root), filenames, layer, channel, split)


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
            ``score`` and the strongest spot), or of :func:`cnnlens.relevance.top_relevant`,
            whose ``predicted`` class is named too.
        channel: the channel.
        per_row: images side by side.
    """
    if rows.empty:
        st.caption("No images to show.")
        return
    filenames = tuple(rows["filename"])
    maps = get_channel_maps(ctx.choice, ctx.root, split, filenames, layer, channel)
    tiles = map_tiles(maps)
    field = get_receptive_field(ctx.choice, layer)
    note = outline_note(layer, channel, field, rows)
    if note:
        st.caption(note)
    for start in range(0, len(rows), per_row):
        columns = st.columns(per_row)
        for offset, (_, row) in enumerate(rows.iloc[start : start + per_row].iterrows()):
            pixels = get_network_input(ctx.choice, ctx.root, split, row["filename"])
            crop = fire_crop(pixels, row, maps.shape[1:], field, channel)
            label = "" if row["label"] is None else f" · {row['label']}"
            said = f" · says {row['predicted']}" if "predicted" in row else ""
            with columns[offset]:
                st.image(crop, caption=f"{row['filename']}{label}{said}", width="stretch")
                st.image(tiles[start + offset], caption=f"{row['score']:.3g}", width="stretch")


def outline_note(
    layer: str, channel: int, field: ReceptiveField | None, rows: pd.DataFrame
) -> str | None:
    """Why some crops have no outline: the part is unknown, or it is the whole image.

    Returns:
        A sentence, or ``None`` when every crop is outlined.
    """
    if field is None:
        return (
            f"The part this channel sees is unknown for {layer}: each image is cropped "
            "around where the channel fires, without an outline."
        )
    height, width = field.input_size
    whole = [
        field.box(int(y), int(x), channel) == (0, 0, width, height)
        for y, x in zip(rows["y"], rows["x"], strict=True)
    ]
    if whole and all(whole):
        return (
            f"At each of these spots, channel {channel} of {layer} sees the whole image, "
            "so nothing is outlined."
        )
    if any(whole):
        return f"Where channel {channel} of {layer} sees the whole image, nothing is outlined."
    return None


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
    pixels: np.ndarray,
    row: Mapping[str, Any],
    map_shape: tuple[int, int],
    field: ReceptiveField | None,
    channel: int | None = None,
) -> Image.Image:
    """The part of the image around where the channel fires, enlarged, with the part its
    value reads outlined; no outline where that part is unknown or the whole image."""
    size = pixels.shape[:2]
    box = fire_box(row, map_shape, size, field, channel)
    # A crop of a few pixels (an early layer's field) shows nothing recognisable:
    # show at least half the image around the spot.
    around = _around(box, size, min(size) // 2)
    crop = Image.fromarray(pixels).convert("RGB").crop(around)
    zoom = max(1, THUMB_SIDE // max(crop.size))
    crop = crop.resize((crop.width * zoom, crop.height * zoom), Image.Resampling.NEAREST)
    reads = field is not None and field.box(int(row["y"]), int(row["x"]), channel) is not None
    if not reads or box == (0, 0, size[1], size[0]):  # unknown, only padding, or everything
        return crop
    left, top = (box[0] - around[0]) * zoom, (box[1] - around[1]) * zoom
    right, bottom = (box[2] - around[0]) * zoom - 1, (box[3] - around[1]) * zoom - 1
    outline = max(1, min(crop.size) // 48)
    ImageDraw.Draw(crop).rectangle(
        (left, top, right, bottom), outline=figures.HIGHLIGHT_COLOUR, width=outline
    )
    return crop


def _around(
    box: tuple[int, int, int, int], size: tuple[int, int], side: int
) -> tuple[int, int, int, int]:
    """The box widened to at least ``side`` pixels per side around its centre, moved
    inside the image where it would stick out."""
    spans = []
    for low, high, pixels in ((box[0], box[2], size[1]), (box[1], box[3], size[0])):
        if high - low < side:
            low = int(np.floor((low + high - side) / 2))
            low = min(max(low, 0), pixels - side)
            high = low + side
        spans.append((low, high))
    (left, right), (top, bottom) = spans
    return left, top, right, bottom
