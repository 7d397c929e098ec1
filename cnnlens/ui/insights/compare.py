"""Insights, compare: two images side by side on one channel, and their difference."""

from __future__ import annotations

import numpy as np
import streamlit as st

from cnnlens import figures
from cnnlens.insights import difference
from cnnlens.ui.feature_maps import get_features
from cnnlens.ui.image_input import get_dataset_image, input_image, input_problem_ui
from cnnlens.ui.insights.focus import PLAIN, Focus, channel_ui
from cnnlens.ui.plain_words import plain_words

__all__ = ["COMPARE_FOR_KEY", "another_image", "compare_section", "compared_ui"]

COMPARE_FOR_KEY = "compare_for"  # the dataset and split the other image was picked from


def another_image(focus: Focus) -> None:
    """Callback of "Another random image": the next seed's pick of the split."""
    seed = st.session_state.get("compare_seed", focus.view.seed) + 1
    st.session_state["compare_seed"] = seed
    st.session_state["compare_image"] = focus.ctx.dataset.pick(seed % 2**32, focus.view.split)


def other_image_ui(focus: Focus) -> str | None:
    """The dataset image to compare with, by name; first the next seed's pick.

    A text box and a button, not a list of every name: a list of tens of thousands
    of names would be sent to the browser again on every change.
    """
    dataset, split = focus.ctx.dataset, focus.view.split
    if st.session_state.get(COMPARE_FOR_KEY) != (focus.ctx.root, split):
        st.session_state[COMPARE_FOR_KEY] = (focus.ctx.root, split)
        st.session_state.pop("compare_seed", None)
        another_image(focus)
    name = st.text_input(
        "Compare with",
        key="compare_image",
        help="The file name of an image of the dataset, as the Dataset page shows it.",
    ).strip()
    st.button(
        "Another random image",
        on_click=another_image,
        args=(focus,),
        icon=":material/shuffle:",
        key="compare_random",
    )
    if not (focus.frame["filename"] == name).any():
        st.error(
            f"{dataset.root.name} has no image {name!r} in its {split} split. Type a file "
            "name as the Dataset page shows it, or press Another random image.",
            icon=":material/error:",
        )
        return None
    return name


def compare_section(focus: Focus) -> None:
    """Two images side by side on one channel, and their difference."""
    ctx, view, layer = focus.ctx, focus.view, focus.layer
    try:
        pixels_a, caption_a = input_image(view, ctx)
    except ValueError as error:
        input_problem_ui(view, error)
        return
    left, right = st.columns(2)
    with left:
        other = other_image_ui(focus)
    if other is None:
        return
    pixels_b = get_dataset_image(ctx.dataset, view.split, other, ctx.spec.mode)
    try:
        maps_a = get_features(ctx.choice, (layer,), pixels_a).maps[layer]
        maps_b = get_features(ctx.choice, (layer,), pixels_b).maps[layer]
    except ValueError as error:
        st.error(str(error), icon=":material/error:")
        return
    if maps_a.ndim != 3:
        st.info(f"{layer} gives no image-shaped maps; choose a convolutional layer.")
        return
    with right:
        channel = channel_ui(len(maps_a), layer)
    label = ctx.dataset.label_of(other) if view.split == "train" else None
    caption_b = other + (f" · label {label}" if label is not None else "")
    compared_ui(
        (pixels_a, caption_a, maps_a[channel]),
        (pixels_b, caption_b, maps_b[channel]),
        f"{layer}, channel {channel}",
    )
    plain_words("compare")


def compared_ui(
    first: tuple[np.ndarray, str, np.ndarray],
    second: tuple[np.ndarray, str, np.ndarray],
    title: str,
) -> None:
    """Each image over its channel map, on one colour range, and the first minus the second.

    Args:
        first: the first image's pixels, caption and channel map.
        second: the same for the second image.
        title: the channel's name, above each map.
    """
    # One colour range for both maps, so equal colours mean equal values.
    low = float(min(first[2].min(), second[2].min()))
    high = float(max(first[2].max(), second[2].max()))
    colours = figures.map_colours(np.stack([first[2], second[2]]))
    images, charts = st.columns(3), st.columns(3)
    for column, (image, caption, map2d), key, name in (
        (0, first, "compare_a", "First"),
        (1, second, "compare_b", "Second"),
    ):
        images[column].image(image, caption=f"{name}: {caption}", width=160)
        figure = figures.channel_figure(map2d, title, colours, value_range=(low, high))
        charts[column].plotly_chart(figure, config=PLAIN, key=key, theme=None)
    images[2].markdown(
        "**First minus second**: red where the first image excites the channel more, "
        "blue where the second does."
    )
    change = difference(first[2], second[2])
    reach = float(np.abs(change).max())
    figure = figures.channel_figure(
        change, "First minus second", figures.map_colours(change, signed=True), (-reach, reach)
    )
    figure.data[0].zmid = 0  # white where both are equal, in the colour bar's middle
    charts[2].plotly_chart(figure, config=PLAIN, key="compare_diff", theme=None)
    st.caption(f"The two maps: {colours.words}. The difference: white where both are equal.")
