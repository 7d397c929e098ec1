"""Which attribution method to believe on the user's own data: deletion and insertion
measured over many images of the dataset, per method and per class, in words.

One :class:`~cnnlens.faithfulness_metrics.FaithfulnessTableSpec` drawn by the runner:
stored results paint at once; otherwise a button starts the methods one after the
other, with progress and Cancel.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from cnnlens.attribution import METHODS, TITLES
from cnnlens.faithfulness_metrics import (
    FaithfulnessResult,
    FaithfulnessSpec,
    FaithfulnessTableSpec,
    most_faithful,
)
from cnnlens.ui import state
from cnnlens.ui.context import Context
from cnnlens.ui.resources import SMALL_SIDE, pass_options
from cnnlens.ui.runner import result_ui

__all__ = ["IMAGES", "ONE_PASS", "faithfulness_table_ui", "table_frame"]

ONE_PASS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "saliency")
"""The methods that take one forward and one backward per image."""

IMAGES = (100, 200, 1000)
"""How many images of the split the table may measure."""


def table_frame(results: dict[str, FaithfulnessResult]) -> pd.DataFrame:
    """One row per method: its images and mean deletion and insertion areas, the most
    faithful first (lowest deletion)."""
    rows = [
        {
            "method": TITLES[method],
            "layer": result.layer or "",
            "images": len(result),
            "deletion (lower is better)": result.mean_deletion,
            "insertion (higher is better)": result.mean_insertion,
        }
        for method, result in results.items()
    ]
    return pd.DataFrame(rows).sort_values("deletion (lower is better)", ignore_index=True)


def _choices(quick: Sequence[str], images_index: int) -> tuple[list[str], int]:
    """The methods and the number of images to measure."""
    left, right = st.columns([3, 1])
    methods = left.multiselect(
        "Methods to measure",
        METHODS,
        default=list(quick),
        format_func=TITLES.get,
        key="looks_table_methods",
        help="Score-CAM, SmoothGrad, Integrated Gradients and Occlusion run the network "
        "many times per image: they take much longer over a dataset.",
    )
    images = right.selectbox(
        "Images",
        IMAGES,
        index=images_index,
        format_func="{:,}".format,
        key="looks_table_images",
    )
    return [m for m in METHODS if m in methods], images


def faithfulness_table_ui(ctx: Context, view: state.View) -> None:
    """The faithfulness of each chosen method over a sample of the view's split: by
    default the methods of one forward and one backward per image on 200 small images,
    three of them on 100 large ones (each image's curves take 42 forwards)."""
    st.markdown(
        "One image says little. Here each method's maps are tested on many images of "
        "**your** dataset: the pixels each map ranks highest are removed first "
        "(*deletion*) or put back first into a blurred image (*insertion*), and the "
        "network's probability for its own answer is followed."
    )
    small = max(ctx.loaded.spec.size) <= SMALL_SIDE
    quick = ONE_PASS if small else ("gradcam", "layercam", "saliency")
    methods, images = _choices(quick, 1 if small else 0)
    if not methods:
        st.info("Choose at least one method to measure.")
        return
    options = pass_options(ctx.loaded)
    spec = FaithfulnessTableSpec(
        tuple(
            FaithfulnessSpec(ctx.loaded, ctx.dataset, m, images=images, split=view.split, **options)
            for m in methods
        )
    )
    results = result_ui(spec, key="looks_table", start=f"Measure on {images:,} images")
    if results is None:
        return
    st.success(most_faithful(results), icon=":material/verified:")
    st.dataframe(table_frame(results), hide_index=True, width="stretch")
    with st.expander("Per class", icon=":material/table_rows:"):
        for method, result in results.items():
            st.markdown(f"**{TITLES[method]}**, by the network's answer")
            st.dataframe(result.by_class(), hide_index=True, width="stretch")
