"""cnnlens dashboard: the entrypoint. Page config, navigation and the sidebar.

streamlit run dashboard.py
"""

from __future__ import annotations

import os

import streamlit as st

from cnnlens.registry import DEMO_DATASET_DIR, MODELS
from cnnlens.ui import cache, state, widgets

st.set_page_config(page_title="cnnlens", page_icon=":material/visibility:", layout="wide")

ROOT = os.environ.get("CNNLENS_DATASET", str(DEMO_DATASET_DIR))

pages = st.navigation(widgets.all_pages())
widgets.show_notices(state.init_model())

with st.sidebar:
    # Drawn before the context is read, so a new choice is seen in this run.
    st.selectbox(
        "Model",
        list(MODELS),
        format_func=lambda name: MODELS[name].title,
        key=state.MODEL_KEY,
        persist_state="session",
    )
    sidebar = st.container()

ctx = widgets.build_context(ROOT)
try:
    pages.run()
    with sidebar:
        # After the page, so it shows the image the page's widgets just chose.
        widgets.sidebar_ui(ctx)
    state.sync_url()
finally:
    widgets.forget_context()
cache.warm_up_in_background()
