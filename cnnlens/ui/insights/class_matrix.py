"""Insights, classes × channels: which channels each class excites; a cell opens that
class's strongest images."""

from __future__ import annotations

import streamlit as st

from cnnlens import figures
from cnnlens.insights import ClassMatrixSpec, LayerStatsSpec, PredictionsSpec, TopImagesSpec
from cnnlens.ui import state
from cnnlens.ui.examples import PER_ROW, examples_ui
from cnnlens.ui.insights.focus import PLAIN, Focus, channel_ui, scores_chart
from cnnlens.ui.plain_words import plain_words
from cnnlens.ui.runner import result_ui

__all__ = ["CLASS_KEY", "matrix_section"]

CLASS_KEY = "insights_class"


def pick_cell() -> None:
    """Callback of the matrix: a clicked cell chooses its class and channel."""
    points = st.session_state["matrix"]["selection"]["points"]
    if points:
        st.session_state[state.CHANNEL_KEY] = int(points[0]["x"])
        st.session_state[CLASS_KEY] = str(points[0]["y"])


def matrix_options_ui(options: list[str]) -> tuple[str, bool]:
    """How to group the images and colour the cells.

    Returns:
        ``"label"`` or ``"predicted"``, and whether the colours compare across classes.
    """
    left, right = st.columns(2)
    group = left.segmented_control(
        "Group images by",
        options,
        format_func={"label": "Their label", "predicted": "The network's answer"}.get,
        required=True,
        default=options[0],
        key="insights_group",
        persist_state="session",
    )
    colour = right.segmented_control(
        "Colour",
        ["relative", "mean"],
        format_func={"relative": "Compared across classes", "mean": "Mean activation"}.get,
        required=True,
        default="relative",
        key="insights_colour",
        persist_state="session",
        help="Compared across classes: each channel's score for a class against its "
        "average over all classes (red: prefers it, blue: avoids it).",
    )
    return group, colour == "relative"


def matrix_section(focus: Focus) -> None:
    """Which channels each class excites; a cell opens that class's strongest images."""
    stats = focus.stats()
    if stats is None:
        return
    labelled = any(label is not None for label in stats.labels)
    options = (["label"] if labelled else []) + (["predicted"] if focus.ctx.loaded.classes else [])
    if not options:
        st.info("These images have no labels and the model no classes: nothing to group by.")
        return
    group, relative = matrix_options_ui(options)
    predicted = focus.predictions_spec() if group == "predicted" else None
    if predicted is not None and focus.predictions() is None:
        return
    stats_spec = focus.stats_spec()
    means = result_ui(ClassMatrixSpec(stats_spec, predictions=predicted), key="insights_means")
    matrix = result_ui(
        ClassMatrixSpec(stats_spec, predictions=predicted, relative=relative),
        key="insights_matrix",
    )
    st.plotly_chart(
        figures.class_matrix_figure(
            matrix,
            means,
            relative,
            title=f"Which classes each channel of {focus.layer} prefers"
            if relative
            else f"Mean activation of each channel of {focus.layer}, per class",
        ),
        key="matrix",
        on_select=pick_cell,
        selection_mode="points",
        config=PLAIN,
        theme=None,
    )
    plain_words("class_matrix")
    class_examples_ui(focus, stats_spec, predicted, [str(name) for name in matrix.index])


def class_examples_ui(
    focus: Focus, stats: LayerStatsSpec, predicted: PredictionsSpec | None, classes: list[str]
) -> None:
    """A class and a channel (or a clicked cell), and that class's images that excite it most."""
    if st.session_state.get(CLASS_KEY) not in classes:
        st.session_state[CLASS_KEY] = classes[0]
    left, right = st.columns(2)
    with left:
        chosen = st.selectbox("Class", classes, key=CLASS_KEY, help="Or click a cell above.")
    with right:
        channel = channel_ui(result_ui(stats, key="insights_stats").map_shape[0], focus.layer)
    rows = result_ui(
        TopImagesSpec(stats, channel, k=PER_ROW, of_class=chosen, predictions=predicted),
        key="insights_class_top",
    )
    st.subheader(f"Class {chosen}: the images that excite channel {channel} most")
    examples_ui(focus.ctx, focus.view.split, focus.layer, rows, channel)
    scores_chart(rows, f"Class {chosen}, channel {channel}", "max", "class_scores")
