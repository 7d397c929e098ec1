"""cnnlens dashboard: the entrypoint. Page config, navigation and the sidebar.

streamlit run dashboard.py
"""

from __future__ import annotations

import os

import streamlit as st

from cnnlens.data import DEMO_DATASET_DIR
from cnnlens.registry import MODELS
from cnnlens.ui import cache, state, widgets

st.set_page_config(page_title="cnnlens", page_icon=":material/visibility:", layout="wide")

ROOT = os.environ.get("CNNLENS_DATASET", str(DEMO_DATASET_DIR))

pages = st.navigation(widgets.all_pages())

try:
    dataset = cache.get_dataset(ROOT)
except ValueError as error:
    st.error(f"The dataset folder cannot be used: {error}", icon=":material/error:")
    st.stop()
widgets.show_notices(state.init_state(dataset))

with st.sidebar:
    # Drawn before the context is read, so a new choice is seen in this run.
    st.selectbox(
        "Model",
        list(MODELS),
        format_func=lambda name: MODELS[name].title,
        key=state.MODEL_KEY,
        persist_state="session",
    )

ctx = widgets.build_context(ROOT, dataset)

with st.sidebar:
    if ctx.info.note:
        st.info(ctx.info.note, icon=":material/info:")
    st.caption("Dataset")
    st.markdown(
        f"**{ctx.dataset.root.name}** · {len(ctx.dataset.index):,} images · "
        f"{len(ctx.dataset.labels)} labels"
    )
    current_image = st.container()

try:
    pages.run()
    with current_image:
        # After the page, so it shows the image the page's widgets just chose.
        widgets.current_image_ui(ctx)
    state.sync_url()
finally:
    widgets.forget_context()
cache.warm_up_in_background()
