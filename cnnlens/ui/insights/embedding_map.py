"""Insights, the embedding map: every image as a point placed by what the layer sees; a
box or lasso opens the images inside it."""

from __future__ import annotations

import numpy as np
import streamlit as st

from cnnlens import figures
from cnnlens.embeddings import EmbeddingSpec
from cnnlens.insights import LayerStats, labels_name_classes, top_images
from cnnlens.ui.examples import PER_ROW, examples_ui
from cnnlens.ui.insights.focus import Focus, channel_ui
from cnnlens.ui.plain_words import plain_words
from cnnlens.ui.runner import result_ui

__all__ = ["MAP_POINTS", "METHODS", "embedding_section", "selected_rows"]

METHODS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
MAP_POINTS = 5_000  # points drawn on the map; a selection still takes every image inside it


def selected_rows(event: dict, points: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """The rows of every image inside the boxes and lassos drawn on the embedding map.

    The map draws only ``shown`` (a sample of the rows), so the drawn shapes decide,
    over all of ``points``; a selection without shapes falls back to the reported points.
    """
    selection = event["selection"]
    inside = np.zeros(len(points), dtype=bool)
    x, y = points[:, 0], points[:, 1]
    for box in selection.get("box", []):
        (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
        inside |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    for lasso in selection.get("lasso", []):
        xs, ys = np.asarray(lasso["x"], dtype=float), np.asarray(lasso["y"], dtype=float)
        # Even-odd rule: a point is inside when a ray to its right crosses an odd number of edges.
        for x0, y0, x1, y1 in zip(xs, ys, np.roll(xs, 1), np.roll(ys, 1), strict=True):
            if y0 != y1:
                inside ^= ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0) + x0)
    if not selection.get("box") and not selection.get("lasso"):
        for point in selection["points"]:
            data = point["customdata"]
            inside[shown[int(data[0] if isinstance(data, list) else data)]] = True
    return np.flatnonzero(inside)


def embedding_options_ui(judged: bool) -> tuple[str, bool]:
    """The method that lays the images out, and whether to mark the network's mistakes
    (only where its answers can be judged: the labels name its classes)."""
    left, right = st.columns(2)
    with left:
        method = st.segmented_control(
            "Method",
            list(METHODS),
            format_func=METHODS.get,
            required=True,
            default="pca",
            key="insights_method",
            persist_state="session",
            help="PCA is instant. t-SNE keeps neighbours together but takes a while on "
            "a large dataset (with progress and Cancel).",
        )
    with right:
        mark = st.toggle(
            "Mark the images the network gets wrong",
            value=judged,
            disabled=not judged,
            key="insights_mark",
            help=None
            if judged
            else "The dataset's labels name none of the network's classes, so its answers "
            "cannot be judged right or wrong.",
        )
    return method, mark and judged


def embedding_section(focus: Focus) -> None:
    """Every image as a point placed by what the layer sees; a selection opens its images."""
    ctx = focus.ctx
    judged = labels_name_classes(ctx.dataset, ctx.loaded.classes, focus.view.split)
    method, mark = embedding_options_ui(judged)
    spec = EmbeddingSpec(focus.stats_spec(), method)
    points = result_ui(spec, key="insights_embedding")
    if points is None:
        return
    stats = result_ui(spec.stats, key="insights_stats")
    wrong = None
    if mark:
        answers = focus.predictions()
        if answers is None:
            return
        wrong = answers.misclassified
    shown = np.arange(len(points))
    if len(points) > MAP_POINTS:  # the same sample every run, so the map does not jump
        shown = np.sort(np.random.default_rng(0).choice(len(points), MAP_POINTS, replace=False))
    embedding_map(focus, stats, points, shown, wrong, METHODS[method])


@st.fragment
def embedding_map(
    focus: Focus,
    stats: LayerStats,
    points: np.ndarray,
    shown: np.ndarray,
    wrong: np.ndarray | None,
    method: str,
) -> None:
    """The map and the chosen images; a selection reruns only this part of the page."""
    layer = focus.layer
    event = st.plotly_chart(
        figures.embedding_figure(
            points[shown],
            [stats.labels[i] for i in shown],
            [stats.filenames[i] for i in shown],
            None if wrong is None else wrong[shown],
            title=f"Every image by what {layer} sees ({method})",
        ),
        key="embedding",
        on_select="rerun",
        selection_mode=("box", "lasso"),
        theme=None,
    )
    notes = []
    if len(shown) < len(points):
        notes.append(
            f"The map draws a sample of {len(shown):,} of the {len(points):,} images; "
            "a box or lasso takes every image inside it."
        )
    if wrong is not None:
        notes.append(f"{int(wrong.sum()):,} of {len(wrong):,} images are classified wrongly (×).")
    if notes:
        st.caption(" ".join(notes))
    plain_words("embedding")
    chosen = selected_rows(event, points, shown)
    if not len(chosen):
        st.caption("Draw a box or lasso around points to see those images here.")
        return
    channel = channel_ui(stats.map_shape[0], layer)
    among = np.zeros(len(stats), dtype=bool)
    among[chosen] = True
    # A selection is any set of images: ranked here, not a result kept for others.
    rows = top_images(stats, channel, k=2 * PER_ROW, among=among)
    st.subheader(
        f"{len(chosen):,} images chosen; the {len(rows)} that excite channel {channel} most"
    )
    examples_ui(focus.ctx, focus.view.split, layer, rows, channel)
