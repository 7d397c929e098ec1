"""Where it looks: which parts of the current image the network's answer rests on,
by eleven methods side by side, and whether to believe each one."""

from __future__ import annotations

import streamlit as st

from cnnlens.attribution import METHODS, TITLES
from cnnlens.ui import state
from cnnlens.ui.context import page_context
from cnnlens.ui.faithfulness_table import faithfulness_table_ui
from cnnlens.ui.image_input import input_image, input_problem_ui
from cnnlens.ui.plain_words import method_words, plain_words
from cnnlens.ui.where_it_looks import (
    answer_ui,
    cards_ui,
    choices_ui,
    square_ui,
)

SECTIONS = {
    "methods": "The methods side by side",
    "square": "Cover part of the image",
    "dataset": "Which method to believe",
}

page_ctx, _ = page_context(with_layers=True)
page_view = state.current_view(page_ctx.dataset)
st.title("Where it looks")
st.markdown(
    "Which parts of the current image the network's answer rests on, by several methods "
    "side by side. Under each map: how **faithful** it is (the answer falls fast when its "
    "pixels are removed) and whether it passes the **sanity check** (it changes when the "
    "network's weights are random)."
)
plain_words("attribution", "faithfulness", "sanity")
with st.expander("The methods, one sentence each", icon=":material/list:"):
    st.markdown(method_words(TITLES))
classes = page_ctx.loaded.classes
if classes is None:
    st.info(f"{page_ctx.info.title} has no classes, so there is no decision to explain.")
    st.stop()
try:
    page_pixels, page_caption = input_image(page_view, page_ctx)
except ValueError as page_error:
    input_problem_ui(page_view, page_error)
    st.stop()
answer_ui(page_ctx, page_pixels, page_caption)
section = st.segmented_control(
    "Show",
    list(SECTIONS),
    format_func=SECTIONS.get,
    required=True,
    default="methods",
    key="looks_section",
    persist_state="session",
)
if section == "square":
    square_ui(page_ctx, page_pixels)
elif section == "dataset":
    faithfulness_table_ui(page_ctx, page_view)
else:
    page_choice = choices_ui(page_view, classes)
    page_methods = st.pills(
        "Methods",
        METHODS,
        selection_mode="multi",
        default=list(METHODS),
        format_func=TITLES.get,
        key="looks_methods",
    )
    cards_ui(page_ctx, page_pixels, [m for m in METHODS if m in page_methods], page_choice)
