"""Layers: the network as a table (or a tree of modules), and the choice of target layers."""

from __future__ import annotations

import streamlit as st

from cnnlens.ui import state
from cnnlens.ui.context import page_context
from cnnlens.ui.navigation import page
from cnnlens.ui.plain_words import plain_words
from cnnlens.ui.resources import get_layer_table

ctx, names = page_context(with_layers=True)
spec = ctx.spec

st.title("Layers")
if ctx.loaded.layers.renamed:
    st.markdown(
        "The network as cnnlens sees it: every layer in order, named by its kind and the "
        "conv block it belongs to (`conv_1`, `relu_1`, `pool_1`, `conv_2`, …; `bn_1` where "
        "a network has batch norm)."
    )
else:
    block = next((n for n in names if any(m.startswith(n + ".") for m in names)), names[0])
    inner = next((n for n in names if n.startswith(block + ".") and n.count(".") >= 2), None)
    example = f", `{inner}` a part inside it" if inner else ""
    st.markdown(
        f"{ctx.info.title} is not a plain stack of layers, so its parts keep the names "
        f"PyTorch gives them: `{block}` is a block of the network{example}. Open a block "
        "below to see what is inside."
    )
plain_words("convolution", "relu")

st.multiselect(
    "Layers to look inside",
    names,
    key=state.LAYERS_KEY,
    persist_state="session",
    help="The Feature maps page shows these layers. The network runs only up to the deepest one.",
)
chosen = set(st.session_state[state.LAYERS_KEY])

table = get_layer_table(ctx.choice).copy()
table["map memory"] = table.pop("map bytes").map(lambda b: f"{b / 1024:,.1f} KiB")
shape_help = f"channels × height × width, for a {spec.size[0]}×{spec.size[1]} input"
columns = {
    "output shape": st.column_config.TextColumn("output shape", help=shape_help),
    "parameters": st.column_config.NumberColumn("parameters", format="localized"),
    "map memory": st.column_config.TextColumn(
        "map memory", help="Memory the feature maps of one image take (float32)"
    ),
    "shown": st.column_config.CheckboxColumn("shown", help="Shown on the Feature maps page"),
    "receptive field": st.column_config.NumberColumn(
        "receptive field",
        help="How many input pixels (per side) one value of this layer sees, skip "
        "connections included; empty where it cannot be traced",
    ),
}

if ctx.loaded.layers.renamed:
    table["shown"] = table["layer"].isin(chosen)
    flat = table.drop(columns=["depth", "children"])
    st.dataframe(flat, hide_index=True, column_config=columns)
else:
    table["shown"] = table["layer"].isin(chosen)
    top = table[table["depth"] == 0]
    rows = table.assign(
        module=[
            "\u2003" * depth + name.rsplit(".", 1)[-1]
            for name, depth in zip(table["layer"], table["depth"], strict=True)
        ]
    )
    shown = ["module", "layer", "type", "output shape", "receptive field", "parameters"]
    shown += ["map memory", "shown"]
    for block in top.to_dict("records"):
        inside = rows[rows["layer"].str.startswith(block["layer"] + ".")]
        mark = " · shown" if block["shown"] or inside["shown"].any() else ""
        title = (
            f"**{block['layer']}** · {block['type']} · {block['output shape'] or 'no map'} · "
            f"{block['parameters']:,} parameters{mark}"
        )
        if inside.empty:
            st.markdown(title)
            continue
        with st.expander(f"{title} · {len(inside)} modules inside"):
            st.dataframe(inside[shown], hide_index=True, column_config=columns)
st.page_link(page("feature_maps"), label="See the feature maps", icon=":material/arrow_forward:")
