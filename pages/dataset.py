"""Dataset: the seeded pick, a grid of images with labels, and the label distribution."""

from __future__ import annotations

import streamlit as st

from cnnlens import figures
from cnnlens.ui import cache, state
from cnnlens.ui.context import page_context
from cnnlens.ui.explanations import explain
from cnnlens.ui.navigation import page

GRID_SIZE = 24
GRID_COLUMNS = 6

ctx, _ = page_context()
dataset = ctx.dataset

st.title("Dataset")
st.caption(f"Folder {dataset.root.name}: {len(dataset.index):,} labelled images")
explain("dataset", "heatmap")

controls = st.columns([1, 1, 2])
with controls[0]:
    st.number_input(
        "Random seed",
        min_value=0,
        max_value=2**32 - 1,
        step=1,
        key=state.SEED_KEY,
        on_change=state.choose_image,
        args=(None,),
        persist_state="session",
        help="The same seed always picks the same image (128 is the original recipe's).",
    )
with controls[1]:
    st.button("Another random image", on_click=state.next_seed, icon=":material/casino:")
with controls[2]:
    splits = ["train"] + (["test"] if dataset.test_index is not None else [])
    st.segmented_control(
        "Images",
        splits,
        format_func={"train": "Labelled (train)", "test": "Unlabelled (test)"}.get,
        default=st.session_state[state.SPLIT_KEY],
        required=True,
        key="split_widget",
        on_change=lambda: state.choose_image(None, st.session_state["split_widget"]),
    )

view = state.current_view(dataset)
chosen_col, grid_col = st.columns([2, 3])
with chosen_col:
    label = dataset.label_of(view.image) if view.split == "train" else None
    title = view.image + (f" · label {label}" if label is not None else "")
    pixels = cache.get_dataset_image(ctx.dataset, view.split, view.image, ctx.info.spec.mode)
    st.plotly_chart(
        figures.image_figure(pixels, title=title),
        config={"displayModeBar": False},
        key="chosen_image",
    )
    st.page_link(
        page("feature_maps"),
        label="See what the network sees in it",
        icon=":material/arrow_forward:",
    )

with grid_col:
    frame = dataset.rows(view.split)
    if view.split == "train":
        wanted = st.pills(
            "Show labels",
            dataset.labels,
            selection_mode="multi",
            key="label_filter",
            persist_state="session",
            help="Leave empty to show every label.",
        )
        if wanted:
            allowed = set(frame.loc[frame["label"].isin(wanted), "filename"])
            order = dataset.pick_many(view.seed, len(frame), view.split)
            names = [name for name in order if name in allowed][:GRID_SIZE]
        else:
            names = dataset.pick_many(view.seed, GRID_SIZE, view.split)
    else:
        names = dataset.pick_many(view.seed, GRID_SIZE, view.split)
    st.caption(f"{len(names)} images picked with seed {view.seed}; choose one to open it.")
    columns = st.columns(GRID_COLUMNS)
    for i, name in enumerate(names):
        with columns[i % GRID_COLUMNS]:
            thumb = cache.get_dataset_image(ctx.dataset, view.split, name, ctx.info.spec.mode)
            st.image(thumb, width="stretch")
            tile_label = dataset.label_of(name) if view.split == "train" else None
            st.button(
                f"Open {tile_label}" if view.split == "train" else "Open",
                key=f"open_{name}",
                on_click=state.choose_image,
                args=(name, view.split),
                type="primary" if name == view.image else "secondary",
                help=f"Open {name}",
                width="stretch",
            )

if view.split == "train":
    counts = dataset.index["label"].value_counts().sort_index()
    st.plotly_chart(
        figures.bar_figure(
            [str(v) for v in counts.index],
            counts.to_numpy(),
            title="How many images each label has",
            x_title="label",
            y_title="images",
            highlight=str(label) if label is not None else None,
        ),
        config={"displayModeBar": False},
        key="label_counts",
    )

problems = dataset.problems + dataset.test_problems
if problems:
    with st.expander(
        f"{len(problems)} rows were left out while loading", icon=":material/warning:"
    ):
        st.dataframe(
            {"file": [p.filename for p in problems], "reason": [p.reason for p in problems]},
            hide_index=True,
        )
