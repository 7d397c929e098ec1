"""Dataset: the seeded pick, a grid of images with labels, and the label distribution."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from cnnlens.ui import state
from cnnlens.ui.bars import bars_html
from cnnlens.ui.context import page_context
from cnnlens.ui.image_input import get_dataset_image
from cnnlens.ui.navigation import page
from cnnlens.ui.plain_words import plain_words

if TYPE_CHECKING:
    from cnnlens.data import Dataset

GRID_SIZE = 24
GRID_COLUMNS = 6
PIXELATED_SIDE = 64
PIXELATED_CSS = ".st-key-chosen_image img, .st-key-dataset_grid img {image-rendering: pixelated}"


def grid_names(dataset: Dataset, view: state.View) -> list[str]:
    """The grid's images: the seed's picks, of the chosen labels when some are chosen."""
    if view.split != "train":
        return dataset.pick_many(view.seed, GRID_SIZE, view.split)
    wanted = st.pills(
        "Show labels",
        dataset.labels,
        selection_mode="multi",
        key="label_filter",
        persist_state="session",
        help="Leave empty to show every label.",
    )
    return dataset.pick_many(view.seed, GRID_SIZE, view.split, labels=wanted)


def grid_ui(dataset: Dataset, view: state.View, mode: str) -> None:
    """The grid of picked images, each with a button that opens it."""
    names = grid_names(dataset, view)
    st.caption(f"{len(names)} images picked with seed {view.seed}; choose one to open it.")
    with st.container(key="dataset_grid"):
        columns = st.columns(GRID_COLUMNS)
        for i, name in enumerate(names):
            with columns[i % GRID_COLUMNS]:
                thumb = get_dataset_image(dataset, view.split, name, mode)
                st.image(thumb, width="stretch", output_format="PNG")
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


ctx, _ = page_context()
dataset = ctx.dataset

st.title("Dataset")
st.caption(f"Folder {dataset.root.name}: {len(dataset.index):,} labelled images")
plain_words("dataset", "heatmap")

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
label = dataset.label_of(view.image) if view.split == "train" else None
# No plotly on this page: its code took seconds to start in the browser, before the
# first image showed. Pictures are plain images, the label counts HTML bars.
chosen_col, grid_col = st.columns([2, 3])
with chosen_col:
    title = view.image + (f" · label {label}" if label is not None else "")
    pixels = get_dataset_image(ctx.dataset, view.split, view.image, ctx.info.spec.mode)
    with st.container(key="chosen_image"):
        st.image(pixels, caption=title, width="stretch", output_format="PNG")  # exact pixels
    st.page_link(
        page("feature_maps"),
        label="See what the network sees in it",
        icon=":material/arrow_forward:",
    )
    if max(pixels.shape[:2]) <= PIXELATED_SIDE:  # small images: crisp pixels, not a blur
        st.html(f"<style>{PIXELATED_CSS}</style>")

with grid_col:
    grid_ui(dataset, view, ctx.info.spec.mode)

if view.split == "train":
    counts = dataset.index["label"].value_counts().sort_index()
    with st.container(key="label_counts"):
        st.html(
            bars_html(
                [str(v) for v in counts.index],
                counts.to_numpy(),
                title="How many images each label has",
                value_name="images",
                highlight=str(label) if label is not None else None,
            )
        )

problems = dataset.problems + dataset.test_problems
if problems:
    # The table is made only while the expander is open: a large dataset may list thousands.
    shown = st.expander(
        f"{len(problems):,} rows were left out while loading",
        icon=":material/warning:",
        key="problems",
        on_change="rerun",
    )
    if shown.open:
        with shown:
            st.dataframe(
                {"file": [p.filename for p in problems], "reason": [p.reason for p in problems]},
                hide_index=True,
            )
