"""cnnlens dashboard: the entrypoint. Page config, navigation and the sidebar.

streamlit run dashboard.py
"""

from __future__ import annotations

import streamlit as st

from cnnlens.ui import cache, state, widgets

st.set_page_config(page_title="cnnlens", page_icon=":material/visibility:", layout="wide")

pages = st.navigation(widgets.all_pages())
widgets.show_notices(state.init_model())

with st.sidebar:
    # Drawn before the context is read, so a new choice is seen in this run.
    with st.expander("Data and model", expanded=True, icon=":material/tune:"):
        widgets.controls_ui()
    sidebar = st.container()

ctx = widgets.build_context()
try:
    pages.run()
    with sidebar:
        # After the page, so it shows the image the page's widgets just chose.
        widgets.sidebar_ui(ctx)
    state.sync_url()
finally:
    widgets.forget_context()
cache.warm_up_in_background()
