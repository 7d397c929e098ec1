"""The floor of a click: one button whose click swaps one map view's picture.

bench_dashboard.py clicks it beside the Feature maps page, so the page's figures
can be read against what a Streamlit rerun and the map view cost on the same
machine in the same minutes. The maps are random but as large as the demo's conv_1.
"""

import sys
from pathlib import Path

import numpy as np
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlens.ui.map_view import map_view_data, map_view_ui

st.set_page_config(layout="wide")
clicks = st.session_state.setdefault("clicks", 0)
st.button(
    "Another random image",
    key="next_image",
    on_click=lambda: st.session_state.update(clicks=st.session_state["clicks"] + 1),
)
maps = np.random.default_rng(clicks).standard_normal((32, 28, 28)).astype(np.float32)
map_view_ui(map_view_data(maps), key="grid")
