"""The floor of a stroke: the drawing pad, whose stroke swaps one map view's picture.

bench_dashboard.py draws on it beside the Feature maps page's pad, so the page's
figures can be read against what a Streamlit rerun, the pad and the map view cost on
the same machine in the same minutes. The maps are random, seeded by the drawing, and
as large as the demo's conv_1.
"""

import sys
import zlib
from pathlib import Path

import numpy as np
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnnlens.drawing import SAMPLE
from cnnlens.registry import DEMO_INPUT
from cnnlens.ui.drawing_pad import pad_ui
from cnnlens.ui.map_view import map_view_data, map_view_ui
from cnnlens.ui.state import DRAWING_KEY

st.set_page_config(layout="wide")
drawing = st.session_state.setdefault(DRAWING_KEY, SAMPLE.encode())
pad_ui(drawing, DEMO_INPUT, key="pad")
seed = zlib.crc32(drawing.encode())
maps = np.random.default_rng(seed).standard_normal((32, 28, 28)).astype(np.float32)
map_view_ui(map_view_data(maps), key="grid")
