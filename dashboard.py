"""cnnlens dashboard: the entrypoint. Page config, navigation and the sidebar.

streamlit run dashboard.py
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

import cnnlens.ui
from cnnlens.ui import context, navigation, resources, state, streamlit_internals
from cnnlens.ui.sidebar import controls_ui, sidebar_ui

# Before the first element, which would walk the stack to look for a Python REPL.
streamlit_internals.skip_repl_check()

# A file shipped with the app: a ":material/...:" page icon is an SVG that the
# browser fetches from Google's font servers.
ICON = Path(cnnlens.ui.__file__).with_name("icon.png")
st.set_page_config(page_title="cnnlens", page_icon=ICON, layout="wide")

pages = st.navigation(navigation.all_pages())
context.show_notices(state.init_model())

with st.sidebar:
    controls = st.container()
    sidebar = st.container()

ctx = context.build_context()
try:
    pages.run()
    with sidebar:
        # After the page, so it shows the image the page's widgets just chose.
        sidebar_ui(ctx)
    state.sync_url()
finally:
    context.forget_context()
    # The pickers are drawn last, above the rest of the sidebar: drawn first, they held
    # back the first page's paint by about 0.18 s. A new choice is already in
    # st.session_state when the run starts, so the page sees it; and a page that stops
    # or fails still gets them.
    with controls, st.expander("Data and model", expanded=True, icon=":material/tune:"):
        controls_ui()
resources.warm_up_in_background()
