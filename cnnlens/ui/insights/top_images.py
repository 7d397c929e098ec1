"""Insights, top images: the images of the dataset that excite one channel most."""

from __future__ import annotations

import streamlit as st

from cnnlens.insights import TopImagesSpec
from cnnlens.ui.examples import examples_ui
from cnnlens.ui.insights.focus import Focus, channel_ui, scores_chart
from cnnlens.ui.plain_words import plain_words
from cnnlens.ui.runner import result_ui

__all__ = ["top_section"]


def _ranking_ui(
    middle: st.delta_generator.DeltaGenerator, right: st.delta_generator.DeltaGenerator
) -> tuple[str, int]:
    """How to rank the images, and how many to show, in two columns."""
    with middle:
        by = st.segmented_control(
            "Rank by",
            ["max", "mean"],
            format_func={"max": "Strongest spot", "mean": "Whole image"}.get,
            required=True,
            default="max",
            key="insights_rank",
            persist_state="session",
        )
    with right:
        count = st.segmented_control(
            "Images", [6, 12, 24], required=True, default=12, key="insights_count"
        )
    return by, count


def top_section(focus: Focus) -> None:
    """The images of the dataset that excite one channel most."""
    stats_spec = focus.stats_spec()
    stats = focus.stats()
    if stats is None:
        return
    left, middle, right = st.columns(3)
    with left:
        channel = channel_ui(stats.map_shape[0], focus.layer)
    by, count = _ranking_ui(middle, right)
    rows = result_ui(TopImagesSpec(stats_spec, channel, k=count, by=by), key="insights_top")
    layer = focus.layer
    st.subheader(f"The {len(rows)} images that excite channel {channel} of {layer} most")
    examples_ui(focus.ctx, focus.view.split, layer, rows, channel)
    scores_chart(rows, f"{layer}, channel {channel}: its strongest images", by, "top_scores")
    plain_words("top_images")
