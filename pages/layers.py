"""Layers: the renamed network as a table, and the choice of target layers."""

from __future__ import annotations

import streamlit as st

from cnnlens.ui import cache, state, widgets

ctx, names = widgets.context(with_layers=True)
spec = ctx.info.spec

st.title("Layers")
st.markdown(
    "The network as cnnlens sees it: every layer in order, named by its kind and the "
    "conv block it belongs to (`conv_1`, `relu_1`, `pool_1`, `conv_2`, …; `bn_1` where "
    "a network has batch norm)."
)
widgets.explain("convolution", "relu")

st.multiselect(
    "Layers to look inside",
    names,
    key=state.LAYERS_KEY,
    persist_state="session",
    help="The Feature maps page shows these layers (the conv layers when none are chosen). "
    "The network runs only up to the deepest one.",
)

table = cache.get_layer_table(ctx.model_name, spec.shape).copy()
table["map memory"] = table.pop("map bytes").map(lambda b: f"{b / 1024:,.1f} KiB")
table["chosen"] = table["layer"].isin(st.session_state[state.LAYERS_KEY])
st.dataframe(
    table,
    hide_index=True,
    column_config={
        "layer": st.column_config.TextColumn("layer", help="Renamed as in the seed recipe"),
        "output shape": st.column_config.TextColumn(
            "output shape",
            help=f"channels × height × width, for a {spec.size[0]}×{spec.size[1]} input",
        ),
        "parameters": st.column_config.NumberColumn("parameters", format="localized"),
        "receptive field": st.column_config.NumberColumn(
            "receptive field", help="How many input pixels (per side) one value of this layer sees"
        ),
        "map memory": st.column_config.TextColumn(
            "map memory", help="Memory the feature maps of one image take (float32)"
        ),
        "chosen": st.column_config.CheckboxColumn("shown", help="Shown on the Feature maps page"),
    },
)
st.page_link(
    widgets.page("feature_maps"), label="See the feature maps", icon=":material/arrow_forward:"
)
