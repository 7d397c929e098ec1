"""cnnlens dashboard: the entrypoint. Page config, navigation and the sidebar.

streamlit run dashboard.py
"""

from __future__ import annotations

import streamlit as st
import streamlit.delta_generator

from cnnlens.ui import cache, state, widgets

# Once per process, before its first element, Streamlit asks whether it runs in a
# Python REPL by walking the stack with inspect.stack(), which reads the source of
# every frame and indexes every loaded module: about 0.1 s of the first page's
# paint. A server never is one; if the flag goes away, this line does nothing.
streamlit.delta_generator._use_warning_has_been_displayed = True

st.set_page_config(page_title="cnnlens", page_icon=":material/visibility:", layout="wide")

pages = st.navigation(widgets.all_pages())
widgets.show_notices(state.init_model())

with st.sidebar:
    controls = st.container()
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
    # The pickers are drawn last, above the rest of the sidebar: drawn first, they held
    # back the first page's paint by about 0.18 s. A new choice is already in
    # st.session_state when the run starts, so the page sees it; and a page that stops
    # or fails still gets them.
    with controls, st.expander("Data and model", expanded=True, icon=":material/tune:"):
        widgets.controls_ui()
cache.warm_up_in_background()
