"""Insights, the export: the dataset's features as Parquet, written to disk on request
with progress and Cancel, resumed when stopped, then downloaded straight from that file."""

from __future__ import annotations

import streamlit as st

from cnnlens.export import ParquetSpec
from cnnlens.ui import state
from cnnlens.ui.context import Context
from cnnlens.ui.resources import pass_options
from cnnlens.ui.runner import result_ui

__all__ = ["parquet_ui"]


def parquet_ui(ctx: Context, view: state.View) -> None:
    """The Parquet export: a start button, its progress and Cancel, then the download."""
    spec = ParquetSpec(
        ctx.loaded,
        ctx.dataset,
        tuple(view.layers),
        split=view.split,
        **pass_options(ctx.loaded),
    )
    try:
        spec.key  # noqa: B018  (a dataset indexed without its images has no key)
    except ValueError as error:
        st.info(str(error))
        return
    # A stopped export left its parts beside the file; the next one goes on from them.
    goes_on = spec.path.with_name(spec.path.name + ".parts").exists()
    out = result_ui(
        spec,
        key="insights_export",
        start=("Go on with" if goes_on else "Compute") + " the dataset's features (Parquet)",
        help="One row per image: each layer's channel means, as `cnnlens extract` writes them. "
        "The file is written to the results folder, and can be cancelled and resumed.",
        icon=":material/table:",
    )
    if out is None:
        return
    st.download_button(
        f"The dataset's features (Parquet, {out.stat().st_size / 1e6:,.1f} MB)",
        out.read_bytes,  # called on the click: the file is read then, not kept
        file_name=f"{ctx.model_name}-{ctx.dataset.root.name}-{view.split}-features.parquet",
        mime="application/vnd.apache.parquet",
        icon=":material/table:",
        on_click="ignore",
    )
