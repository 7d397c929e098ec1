"""The channel card on Feature maps: what one channel looks for, where it fires in the
data, and what it does.

The card answers three questions about one channel, each in a plain sentence:
what it looks for (a picture made from the dataset's own typical shapes, with
Lucid's recipe beside it for comparison), where it fires in the data and where it
matters (its strongest dataset examples beside the ones where it adds most to the
network's answer, and the strongest one accentuated) and what it does (the
prediction with the channel set to zero, over this image and over the dataset;
for the first convolution, its kernel weights).

The legible picture needs the dataset's image prior (:class:`~cnnlens.priors.ImagePriorSpec`),
learned once per dataset and model input: by itself for a small input (at most
:data:`SMALL_SIDE` pixels), on request for a large one.

Everything long is started by a button and drawn by :mod:`cnnlens.ui.runner`,
with progress and Cancel, and kept in the results store: a stored result paints
at once, computing nothing. The channel atlas (:mod:`cnnlens.ui.atlas`) shares
the card's images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from cnnlens.ablation import ClassAblationSpec
from cnnlens.feature_visualization import ChannelImagesSpec, ChannelMaskSpec
from cnnlens.figures import overlay_png
from cnnlens.insights import TopImagesSpec
from cnnlens.priors import ImagePriorSpec
from cnnlens.relevance import RelevanceSpec, TopRelevantSpec
from cnnlens.ui import state
from cnnlens.ui.bars import bars_html
from cnnlens.ui.caching import in_memory
from cnnlens.ui.context import Context
from cnnlens.ui.examples import examples_ui
from cnnlens.ui.insights.focus import stats_spec
from cnnlens.ui.map_view import map_view_data, map_view_ui
from cnnlens.ui.plain_words import WORDS
from cnnlens.ui.resources import (
    SMALL_SIDE,
    get_dataset,
    get_model,
    pass_options,
    result_store,
)
from cnnlens.ui.runner import result_ui

__all__ = [
    "CARD_KEY",
    "LEGIBLE",
    "SEED",
    "STEPS",
    "Accentuated",
    "channel_card_ui",
    "channel_images",
    "enlarge",
    "get_accentuation",
    "prior_spec",
    "prior_ui",
    "say",
    "small_input",
]

STEPS = 256
"""Optimisation steps of a feature visualization (Lucid's recipe: 256-512)."""
SEED = 0
SHOWN_SIDE = 192
"""A small visualization is enlarged (nearest neighbour) to about this many pixels."""
EXAMPLES = 6  # dataset examples on the card
LIKELIEST = 10  # classes shown for a model with many
NO_EFFECT = 0.001
"""Changes below a tenth of a point are called "no visible effect": the bars, scaled to
the change, would otherwise make a rounding error look like an effect."""
KERNEL_HEIGHT = 150  # CSS pixels of the first layer's kernel heatmap
CARD_KEY = "channel_card"  # the card's expander: open or closed, kept across clicks
SPLIT = "train"  # the labelled split, over which the dataset ablation is judged
LEGIBLE = "pca"
"""The method of the card's and the atlas's pictures where the dataset's prior is there: the
most legible on the demo (:mod:`cnnlens.feature_visualization`)."""
ACCENTUATION_STEPS = 128
ACCENTUATION_STRENGTH = 3.0
LEGIBLE_CAPTION = "Made from the dataset's own shapes"
MASK_CAPTION = "Where it matters (yellow)"
ACCENTUATED_CAPTION = "Nudged toward what the channel wants"
ACCENTUATE_KEY = "_card_accentuate_asked"  # session state: the accentuations asked for
LUCID_CAPTIONS = ("Lucid's recipe: what excites it most", "Lucid's recipe: what it fires least for")


def say(topic: str, small: bool = True) -> None:
    """One plain sentence of :mod:`cnnlens.ui.plain_words`, as a caption or as text."""
    text = WORDS[topic].strip().replace("\n", " ")
    st.caption(text) if small else st.markdown(text)


def channel_images(
    ctx: Context,
    layer: str,
    channels: tuple[int, ...],
    negatives: tuple[bool, ...] = (False,),
    batch_size: int = 64,
    prior: ImagePriorSpec | None = None,
) -> ChannelImagesSpec:
    """The feature visualizations the card and the atlas show: the model's input side (at
    most 128 px), :data:`STEPS` steps, seed :data:`SEED`, as ``cnnlens visualize`` stores them;
    by the :data:`LEGIBLE` method with a ``prior``, else by Lucid's recipe."""
    return ChannelImagesSpec(
        ctx.loaded,
        layer,
        channels,
        steps=STEPS,
        seed=SEED,
        negatives=negatives,
        method="lucid" if prior is None else LEGIBLE,
        prior=prior,
        batch_size=batch_size,
    )


def prior_spec(ctx: Context) -> ImagePriorSpec:
    """The dataset's image prior at the side the card and the atlas paint."""
    return ImagePriorSpec(ctx.loaded, ctx.dataset)


def small_input(ctx: Context) -> bool:
    """Whether the pictures are at most :data:`SMALL_SIDE` pixels: cheap enough to start alone."""
    return prior_spec(ctx).image_side <= SMALL_SIDE


def prior_ui(ctx: Context, key: str) -> ImagePriorSpec | None:
    """The dataset's image prior once stored: learned by itself for a small input, on a
    click for a large one, with progress and Cancel; ``None`` meanwhile."""
    spec = prior_spec(ctx)
    found = result_ui(
        spec,
        key=key,
        start=None if small_input(ctx) else "Learn what the dataset's images look like",
        icon=":material/photo_library:",
        help=f"Reads up to {spec.images:,} images of the {spec.split} split once and keeps "
        "their typical shapes, from which the legible pictures are made. Kept for everyone.",
    )
    return None if found is None else spec


@dataclass(frozen=True)
class Ablated:
    """One image's class probabilities, as they are and with one channel set to zero."""

    before: np.ndarray  # K float32
    after: np.ndarray

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return self.before.nbytes + self.after.nbytes


@in_memory(16)
def get_ablation(
    choice: state.ModelChoice, pixels: np.ndarray, layer: str, channel: int
) -> Ablated:
    """The class probabilities for one image (uint8 pixels) before and after zeroing a channel.

    Raises:
        ValueError: for a layer without that channel, or an image that does not fit.
    """
    import torch

    from cnnlens.ablation import ablate

    loaded = get_model(choice)
    before, after = ablate(loaded, loaded.batch(pixels), layer, channel)
    return Ablated(torch.softmax(before, dim=1)[0].numpy(), torch.softmax(after, dim=1)[0].numpy())


@st.cache_data(max_entries=8, show_spinner=False)
def get_first_conv(choice: state.ModelChoice) -> str | None:
    """The qualified path of the model's first ``Conv2d``, or ``None``."""
    from torch import nn

    model = get_model(choice).model
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def get_kernel(choice: state.ModelChoice, layer: str, channel: int) -> np.ndarray | None:
    """A channel's kernel weights (C_in×kh×kw float32) if ``layer`` is the first
    convolution, else ``None``."""
    first = get_first_conv(choice)
    loaded = get_model(choice)
    if first is None or loaded.layers.path(layer) != first:
        return None
    weight = loaded.layers.module(layer).weight
    return weight[channel].detach().float().cpu().numpy()


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
        fires_ui(ctx, view, layer, channel)


# --- what it looks for ---------------------------------------------------------------------


def looks_for_ui(ctx: Context, layer: str, channel: int) -> None:
    """The channel's picture made from the dataset's own shapes, and Lucid's pair beside it
    for comparison: at once when stored, else on request with progress and Cancel."""
    say("card_looks_for", small=False)
    legible_ui(ctx, layer, channel)
    lucid_ui(ctx, layer, channel)
    say("card_exaggeration")


def legible_ui(ctx: Context, layer: str, channel: int) -> None:
    """The :data:`LEGIBLE` picture with its mask laid over it, once the dataset's prior is
    there: at once when both are stored, else on request (one run paints both)."""
    prior = prior_ui(ctx, key="card_prior")
    if prior is None:
        return
    tile = channel_images(ctx, layer, (channel,), prior=prior).tile(channel)
    mask_spec = ChannelMaskSpec.of(tile)
    store = result_store()
    found, mask = store.peek(tile), store.peek(mask_spec)
    if mask is None:
        side = tile.side
        mask = result_ui(
            mask_spec,
            key="card_legible",
            start="Show where it matters" if found is not None else "Show what it looks for",
            icon=":material/auto_awesome:",
            help=f"Paints a {side}×{side}-pixel image from the dataset's typical shapes in "
            f"{STEPS} small steps, and notes where the channel's answer changes most: "
            "seconds for a small network, a minute or more for a large one on a CPU. Kept "
            "for everyone once done.",
        )
        if mask is not None and found is None:
            found = store.peek(tile)
    if found is not None:
        legible_picture_ui(found, mask)


def legible_picture_ui(found: np.ndarray, mask: np.ndarray | None) -> None:
    """The legible picture, its mask laid over it beside it (where there is one), and
    one plain sentence for each."""
    picture, masked = st.columns(2)
    picture.image(enlarge(found), caption=LEGIBLE_CAPTION, output_format="PNG", width="stretch")
    if mask is not None:
        masked.image(
            overlay_png(found, mask.sum(0), side=SHOWN_SIDE),
            caption=MASK_CAPTION,
            output_format="PNG",
            width="stretch",
        )
    say("card_legible")
    if mask is not None:
        say("card_mask")


def lucid_ui(ctx: Context, layer: str, channel: int) -> None:
    """Lucid's pictures of what excites the channel most and least, for comparison."""
    spec = channel_images(ctx, layer, (channel,), negatives=(False, True))
    tiles = spec.found(result_store())
    if len(tiles) < 2:
        side = spec.tile(channel).side
        drawn = result_ui(
            spec,
            key="card_visualize",
            start="Show what it fires least for too" if tiles else "Compare with Lucid's recipe",
            icon=":material/compare:",
            help=f"Paints {side}×{side}-pixel images from noise in {STEPS} small steps, as "
            "Lucid did: a few seconds for a small network, up to a minute for a large one "
            "on a CPU. Kept for everyone once done.",
        )
        if drawn is not None:
            tiles = dict(zip(spec.tiles, drawn, strict=True))
    if not tiles:
        return
    say("card_lucid")
    for column, negative, caption in zip(st.columns(2), (False, True), LUCID_CAPTIONS, strict=True):
        if (channel, negative) in tiles:
            column.image(
                enlarge(tiles[channel, negative]),
                caption=caption,
                output_format="PNG",
                width="stretch",
            )


# --- where it fires in the data, where it matters -------------------------------------------


def fires_ui(ctx: Context, view: state.View, layer: str, channel: int) -> None:
    """The images where the channel fires most beside those where it counts most for the
    answer; the strongest one accentuated below."""
    fires, matters = st.columns(2, gap="large")
    with fires:
        rows = strongest_ui(ctx, view, layer, channel)
    with matters:
        relevant_ui(ctx, view, layer, channel)
    if rows is not None and not rows.empty:
        accentuated_ui(ctx, view.split, layer, channel, rows.iloc[0])


def strongest_ui(ctx: Context, view: state.View, layer: str, channel: int) -> pd.DataFrame | None:
    """The channel's strongest dataset images, once the layer's dataset pass is stored."""
    say("card_fires", small=False)
    stats = stats_spec(ctx, view, layer)
    found = result_ui(
        stats,
        key="card_examples",
        start="Find its strongest images in the dataset",
        icon=":material/image_search:",
        help=f"One pass over every image of the {view.split} split, kept for everyone: the "
        "Insights page then shows this layer's channels at once too.",
    )
    if found is None:
        return None
    rows = result_ui(TopImagesSpec(stats, channel, k=EXAMPLES, by="max"), key="card_top")
    if rows is not None:
        examples_ui(ctx, view.split, layer, rows, channel, per_row=EXAMPLES // 2)
    return rows


def relevant_ui(ctx: Context, view: state.View, layer: str, channel: int) -> None:
    """The images where the channel adds most to the network's answer (gradient ×
    activation), once the layer's relevance pass is stored."""
    say("card_matters", small=False)
    if ctx.loaded.classes is None:
        st.caption(f"{ctx.info.title} has no classes, so there is no answer to count toward.")
        return
    spec = RelevanceSpec(
        ctx.loaded, ctx.dataset, layer, split=view.split, **pass_options(ctx.loaded)
    )
    found = result_ui(
        spec,
        key="card_relevance",
        start=None if small_input(ctx) else "Find where it counts most",
        icon=":material/target:",
        help=f"One pass over every image of the {view.split} split, with gradients: how much "
        "each channel adds to the class the network picks. Kept for everyone.",
    )
    if found is None:
        return
    if not np.any(found.relevance[:, channel]):
        st.info(WORDS["card_no_relevance"].strip().replace("\n", " "), icon=":material/info:")
        return
    rows = result_ui(TopRelevantSpec(spec, channel, k=EXAMPLES), key="card_relevant")
    if rows is not None:
        examples_ui(ctx, view.split, layer, rows, channel, per_row=EXAMPLES // 2)


@dataclass(frozen=True)
class Accentuated:
    """A dataset image accentuated toward a channel (:func:`cnnlens.accentuation.accentuate`)."""

    original: np.ndarray  # H×W or H×W×3 uint8: the image as the network sees it
    image: np.ndarray  # the same, accentuated
    distance: float
    before: float
    after: float

    @property
    def nbytes(self) -> int:
        """The memory its pixels take."""
        return self.original.nbytes + self.image.nbytes


@in_memory(32)
def get_accentuation(
    choice: state.ModelChoice,
    root: str,
    split: str,
    filename: str,
    layer: str,
    channel: int,
    steps: int,
) -> Accentuated:
    """A dataset image, at the model's input, changed toward what the channel wants.

    Raises:
        ValueError: for a layer without that channel, or an image that cannot be read.
    """
    import torch

    from cnnlens.accentuation import accentuate
    from cnnlens.feature_visualization import to_uint8
    from cnnlens.legibility import load_pixels

    loaded = get_model(choice)
    pixels = load_pixels(loaded, get_dataset(root), split=split, images=[filename])
    found = accentuate(
        loaded, layer, channel, pixels[0], steps=steps, strength=ACCENTUATION_STRENGTH, seed=SEED
    )
    original, image = to_uint8(torch.cat([pixels, found.image[None]]))
    return Accentuated(original, image, found.distance, found.before, found.after)


def accentuated_ui(ctx: Context, split: str, layer: str, channel: int, row: pd.Series) -> None:
    """The channel's strongest image beside itself accentuated, with the activation before
    and after and how far it moved: by itself for a small input, on a click otherwise."""
    say("card_accentuated", small=False)
    asked = st.session_state.setdefault(ACCENTUATE_KEY, set())
    wanted = (ctx.choice, layer, channel, row["filename"])
    if not small_input(ctx) and wanted not in asked:
        st.button(
            "Accentuate its strongest image",
            key="card_accentuate",
            on_click=asked.add,
            args=(wanted,),
            icon=":material/tune:",
            help=f"{ACCENTUATION_STEPS} small steps on one image: seconds on a GPU, up to a "
            "minute for a large network on a CPU.",
        )
        return
    try:
        with st.spinner("Nudging the image toward what the channel wants…"):
            found = get_accentuation(
                ctx.choice, ctx.root, split, row["filename"], layer, channel, ACCENTUATION_STEPS
            )
    except ValueError as error:
        st.error(str(error), icon=":material/error:")
        return
    before, after, words = st.columns([1, 1, 2])
    for column, pixels, caption in (
        (before, found.original, f"As it is: {row['filename']}"),
        (after, found.image, ACCENTUATED_CAPTION),
    ):
        column.image(enlarge(pixels), caption=caption, output_format="PNG", width="stretch")
    words.markdown(accentuation_words(found, channel))


def accentuation_words(found: Accentuated, channel: int) -> str:
    """The accentuation's numbers in one sentence."""
    return (
        f"Channel {channel}'s mean activation goes from **{found.before:.3g}** to "
        f"**{found.after:.3g}**, while the image moves **{found.distance:.3g}** away (the "
        "straight-line distance between the two, over every pixel in 0 to 1)."
    )


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
        say("card_does", small=False)
        try:
            ablated = get_ablation(ctx.choice, pixels, layer, channel)
        except ValueError as error:
            st.error(str(error), icon=":material/error:")
            return
        st.html(ablation_html(ablated, classes, channel))
        by_class_ui(ctx, layer, channel)
    kernel = get_kernel(ctx.choice, layer, channel)
    if kernel is not None:
        kernel_ui(kernel, layer, channel)


def shown_classes(before: np.ndarray, classes: list[str]) -> np.ndarray:
    """The classes the bars show: all of a handful in their order, else the likeliest."""
    if len(classes) <= LIKELIEST:
        return np.arange(len(classes))
    return np.argsort(before)[::-1][:LIKELIEST]


def effect_words(change: np.ndarray, what: str) -> str:
    """The largest change, in words; "no visible effect" when every one is below
    :data:`NO_EFFECT`.

    Args:
        change: each class's change (a share: 0.01 is one point).
        what: what changed, for the sentence ("probability", "accuracy").
    """
    largest = float(np.abs(change).max()) if len(change) else 0.0
    if largest < NO_EFFECT:
        return (
            f"No visible effect: no class's {what} moves by a tenth of a point "
            f"(at most {largest:.3%}); the bars are scaled to that."
        )
    return (
        f"The largest change: {largest if change[np.abs(change).argmax()] > 0 else -largest:+.2%}"
    )


def ablation_html(ablated: Ablated, classes: list[str], channel: int) -> str:
    """This image's change in each class's probability with the channel off, as bars."""
    shown = shown_classes(ablated.before, classes)
    names = [classes[i] for i in shown]
    first, then = int(np.argmax(ablated.before)), int(np.argmax(ablated.after))
    change = ablated.after[shown] - ablated.before[shown]
    most = int(np.argmax(np.abs(change)))
    effect = effect_words(change, "probability")
    note = (
        f"The network says {classes[first]} ({ablated.before[first]:.1%}); with channel "
        f"{channel} off, {classes[then]} ({ablated.after[then]:.1%}). "
        + (effect if effect.startswith("No") else f"{effect} for {names[most]}.")
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
    )


def by_class_ui(ctx: Context, layer: str, channel: int) -> None:
    """Each class's accuracy over the labelled images with the channel off: stored, or on
    request with progress and Cancel."""
    spec = ClassAblationSpec(
        ctx.loaded, ctx.dataset, layer, channel, split=SPLIT, **pass_options(ctx.loaded)
    )
    found = result_ui(
        spec,
        key="card_ablation",
        start="Test it on the whole dataset",
        icon=":material/science:",
        help="One pass over every labelled image, with and without this channel: how "
        "often the network is right for each class. Kept for everyone.",
    )
    if found is None:
        return
    most = int(np.argmax(np.abs(found.change)))
    effect = effect_words(found.change, "accuracy")
    st.html(
        bars_html(
            list(found.classes),
            found.change,
            title=f"The dataset, channel {channel} off: change in each class's accuracy",
            value_name="change in accuracy",
            percent=True,
            height=120,
            note=f"Right on {found.overall_before:.1%} of {int(found.counts.sum()):,} labelled "
            f"images; {found.overall_after:.1%} with channel {channel} off. "
            + (effect if effect.startswith("No") else f"{effect} for {found.classes[most]}."),
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
    say("card_kernel")
