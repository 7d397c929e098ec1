"""Insights: what a layer does across the whole dataset.

Each section lives in its own module under ``cnnlens/ui/insights/`` (the atlas in
``cnnlens/ui/atlas.py``); the current view's exports are on the Feature maps page.
"""

from __future__ import annotations

import streamlit as st

from cnnlens.ui import state
from cnnlens.ui.atlas import atlas_ui
from cnnlens.ui.context import page_context
from cnnlens.ui.insights.class_matrix import matrix_section
from cnnlens.ui.insights.compare import compare_section
from cnnlens.ui.insights.embedding_map import embedding_section
from cnnlens.ui.insights.focus import Focus
from cnnlens.ui.insights.parquet_export import parquet_ui
from cnnlens.ui.insights.top_images import top_section

SECTIONS = {
    "top": ("Top images", top_section),
    "matrix": ("Classes × channels", matrix_section),
    "embedding": ("Embedding map", embedding_section),
    "compare": ("Compare", compare_section),
    "atlas": ("Channel atlas", lambda focus: atlas_ui(focus.ctx, focus.layer)),
}


def choices_ui(view: state.View) -> tuple[str, str]:
    """The section to show and the layer, the same one as on the Feature maps page."""
    section = st.segmented_control(
        "Show",
        list(SECTIONS),
        format_func=lambda name: SECTIONS[name][0],
        required=True,
        default="top",
        key="insights_section",
        persist_state="session",
    )
    shown = st.session_state.get(state.LAYER_KEY)
    layer = st.segmented_control(
        "Layer",
        view.layers,
        required=True,
        help="Choose the layers offered here on the Layers page.",
        **state.shared_widget(
            state.LAYER_KEY, "insights_layer", shown if shown in view.layers else view.layers[0]
        ),
    )
    return section, layer


page_ctx, _ = page_context(with_layers=True)
page_view = state.current_view(page_ctx.dataset)
st.title("Insights")
st.markdown(
    "What a layer does across **the whole dataset**: which images excite each channel, "
    "which channels each class excites, how the layer arranges the images. Where the "
    "network looks in the current image when it decides is on **Where it looks**."
)
chosen_section, chosen_layer = choices_ui(page_view)
SECTIONS[chosen_section][1](Focus(page_ctx, page_view, chosen_layer))
with st.expander("Export the dataset's features", icon=":material/download:"):
    parquet_ui(page_ctx, page_view)
