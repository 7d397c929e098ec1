"""Home: what cnnlens shows, how to read a heatmap, and one click to an image's maps."""

from __future__ import annotations

import streamlit as st

from cnnlens.ui import state
from cnnlens.ui.context import page_context
from cnnlens.ui.map_view import legend_html
from cnnlens.ui.navigation import page
from cnnlens.ui.plain_words import plain_words

ctx, _ = page_context()

st.title("See what a neural network sees")
st.markdown(
    """
A **convolutional neural network** (CNN) recognises images by passing them through
layers of small pattern detectors. cnnlens opens the network up: pick an image,
and see, layer by layer, which parts of it each detector responds to.
"""
)

left, right = st.columns(2)
with left, st.container(border=True):
    st.markdown("**Dataset**")
    st.markdown(
        f"{ctx.dataset.root.name}: {len(ctx.dataset.index):,} labelled images"
        + (
            f", {len(ctx.dataset.test_index):,} unlabelled"
            if ctx.dataset.test_index is not None
            else ""
        )
    )
with right, st.container(border=True):
    st.markdown("**Model**")
    st.markdown(ctx.info.title)
    st.caption("Change the dataset, the model or its weights in the sidebar.")

first, second = st.columns(2)
if ctx.info.spec.mode == "L" and first.button(
    "Draw a digit and watch the network follow your pen",
    type="primary",
    icon=":material/draw:",
    width="stretch",
):
    st.session_state[state.INPUT_KEY] = "draw"
    st.switch_page(page("feature_maps"))
if second.button(
    "Show me a random image and what the network sees",
    type="secondary" if ctx.info.spec.mode == "L" else "primary",
    icon=":material/casino:",
    width="stretch",
):
    state.next_seed()
    st.switch_page(page("feature_maps"))

st.subheader("How to read a feature map")
st.markdown(
    """
1. **Dataset**: browse the images and pick one (the same seed always picks the same image).
2. **Layers**: see the network's layers in order and choose which ones to look inside.
3. **Feature maps**: draw a digit on the pad (for a network of digits) or pick an image; each
   small square is one *channel* of a layer, painted as a heatmap of where it fired on it.
   Hover to read exact values; click a square to enlarge it and lay it over the image.
4. **Where it looks**: which parts of the image the network's answer rests on, by several
   methods side by side, each checked: does it mark what the network really uses?
5. **Insights**: the same layer across the whole dataset: which images excite a channel most,
   which channels each class excites, and how the layer arranges the images.
"""
)
st.markdown("**The colours**, the same on every page and in the saved pictures:")
st.html(
    legend_html(True, "Values that can go below zero (before a ReLU)")
    + legend_html(False, "Values never below zero (after a ReLU or pooling)")
)
plain_words("heatmap", "convolution", "relu", "brightness", title="The words, in plain English")
