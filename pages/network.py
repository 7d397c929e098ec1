"""Network: the whole network at a glance for the current image, input to class scores."""

from __future__ import annotations

import streamlit as st

from cnnlens.ui.context import page_context
from cnnlens.ui.network_view import network_ui, switch_if_asked
from cnnlens.ui.plain_words import plain_words

switch_if_asked()
ctx, names = page_context(with_layers=True)
st.title("Network")
plain_words(
    "network",
    "network_colours",
    *(() if ctx.loaded.layers.renamed else ("network_graph",)),
    "drawing",
)
network_ui(ctx, names)
