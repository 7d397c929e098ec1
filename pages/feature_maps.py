"""Feature maps: every channel of a layer for the current image, one enlarged, ranked."""

from __future__ import annotations

import streamlit as st

from cnnlens.ui.context import page_context
from cnnlens.ui.feature_maps import view_ui
from cnnlens.ui.plain_words import plain_words
from cnnlens.ui.recipes import recipe_ui

page_ctx, _ = page_context(with_layers=True)
st.title("Feature maps")
# Outside the view's fragment: its text never changes, and drawing it again cost
# 30 ms of every click.
plain_words("drawing", "heatmap", "convolution", "relu", "brightness")
view_ui(page_ctx)
# Outside the fragment: opening a recipe may change the dataset and model, a full rerun.
recipe_ui()
