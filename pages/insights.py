"""Insights: what a layer does across the whole dataset, and where the network looks.

Top images per channel, the class × channel matrix, an embedding map of every
image, Grad-CAM for the current image, two images compared; and the dataset's
features as Parquet. (The current view's exports live on the Feature maps page.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from cnnlens import figures
from cnnlens.export import features_parquet, features_parquet_path
from cnnlens.insights import (
    TSNE_NEIGHBOUR_STEPS,
    LayerStats,
    Predictions,
    class_channel_matrix,
    difference,
    top_images,
)
from cnnlens.ui import cache, examples, state
from cnnlens.ui.bars import bars_html
from cnnlens.ui.channel_card import atlas_ui
from cnnlens.ui.context import Context, page_context
from cnnlens.ui.examples import PAUSED_KEY, PER_ROW, pause, paused_ui, resume, run_with_progress
from cnnlens.ui.explanations import explain
from cnnlens.ui.image_input import input_image

SECTIONS = {
    "top": "Top images",
    "matrix": "Classes × channels",
    "embedding": "Embedding map",
    "gradcam": "Grad-CAM",
    "compare": "Compare",
    "atlas": "Channel atlas",
}
METHODS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
CLASS_KEY = "insights_class"
PLAIN = {"displayModeBar": False}  # plotly's config for charts without a toolbar


@dataclass(frozen=True)
class Focus:
    """What every section looks at: this run's context, the view and the chosen layer."""

    ctx: Context
    view: state.View
    layer: str

    @property
    def frame(self) -> pd.DataFrame:
        """The dataset's table of the view's split (train or test)."""
        dataset = self.ctx.dataset
        return dataset.index if self.view.split == "train" else dataset.test_index


# --- dataset passes ----------------------------------------------------------------------


def dataset_result(
    focus: Focus,
    what: str,
    find: Callable[[], object | None],
    compute: Callable[[Callable[[int, int], None]], object],
) -> object:
    """A dataset-wide result: at once when stored, else computed now with progress.

    Cancel interrupts the pass at its next progress update (Streamlit stops the
    run there); nothing is stored and the pass is not restarted until asked.
    """
    found = find()
    if found is not None:
        return found
    key = (what, focus.ctx.choice, focus.ctx.root, focus.view.split)
    if paused_ui(key, what):
        st.stop()
    result = run_with_progress(
        key,
        f"{what.capitalize()}: {len(focus.frame):,} images…",
        compute,
        lambda done, total: f"{what.capitalize()}: {done:,} of {total:,} images",
    )
    if result is None:  # the error is shown
        st.stop()
    return result


def layer_summary(focus: Focus, with_predictions: bool = False) -> LayerStats:
    """The layer's per-image statistics over the whole split.

    Args:
        focus: what the section looks at.
        with_predictions: the section also shows the network's answers: a pass
            still to make computes them too, so they need no pass of their own.
    """
    choice, root, split, layer = focus.ctx.choice, focus.ctx.root, focus.view.split, focus.layer
    if with_predictions and focus.ctx.loaded.classes is not None:
        what = f"summarising {layer} and classifying every image"

        def compute(progress: Callable[[int, int], None]) -> LayerStats:
            return cache.layer_stats_and_predictions(choice, root, split, layer, progress)[0]
    else:
        what = f"summarising {layer}"

        def compute(progress: Callable[[int, int], None]) -> LayerStats:
            return cache.layer_stats(choice, root, split, layer, progress)

    return dataset_result(
        focus, what, lambda: cache.find_layer_stats(choice, root, split, layer), compute
    )


def class_predictions(focus: Focus) -> Predictions:
    """The network's answer for every image of the split."""
    choice, root, split = focus.ctx.choice, focus.ctx.root, focus.view.split
    return dataset_result(
        focus,
        "classifying every image",
        lambda: cache.find_predictions(choice, root, split),
        lambda progress: cache.predictions(choice, root, split, progress),
    )


# --- pieces shared by the sections ---------------------------------------------------------


def channel_ui(channels: int, layer: str) -> int:
    """The channel to show, the same one as on the Feature maps page."""
    shown = st.session_state.get(state.CHANNEL_KEY, 0)
    return st.number_input(
        "Channel",
        min_value=0,
        max_value=channels - 1,
        step=1,
        help=f"{layer} has {channels} channels, 0 to {channels - 1}.",
        **state.shared_widget(
            state.CHANNEL_KEY, "insights_channel", shown if shown < channels else 0
        ),
    )


def examples_ui(focus: Focus, rows: pd.DataFrame, channel: int) -> None:
    """The images of ``rows``: the crop where the channel fires, and its map below."""
    examples.examples_ui(focus.ctx, focus.view.split, focus.layer, rows, channel)


def scores_chart(rows: pd.DataFrame, title: str, by: str, key: str) -> None:
    """The example images' scores as bars."""
    # HTML bars, not plotly: the page's first chart shows before plotly's code has loaded.
    with st.container(key=key):
        st.html(
            bars_html(list(rows["filename"]), rows["score"].to_numpy(), title, f"{by} activation")
        )


# --- top images ----------------------------------------------------------------------------


def top_section(focus: Focus) -> None:
    """The images of the dataset that excite one channel most."""
    stats = layer_summary(focus)
    left, middle, right = st.columns(3)
    with left:
        channel = channel_ui(stats.map_shape[0], focus.layer)
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
    rows = top_images(stats, channel, k=count, by=by)
    layer = focus.layer
    st.subheader(f"The {len(rows)} images that excite channel {channel} of {layer} most")
    examples_ui(focus, rows, channel)
    scores_chart(rows, f"{layer}, channel {channel}: its strongest images", by, "top_scores")
    explain("top_images")


# --- classes × channels --------------------------------------------------------------------


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
    stats = layer_summary(focus)
    labelled = any(label is not None for label in stats.labels)
    classes = focus.ctx.loaded.classes
    options = (["label"] if labelled else []) + (["predicted"] if classes else [])
    if not options:
        st.info("These images have no labels and the model no classes: nothing to group by.")
        return
    group, relative = matrix_options_ui(options)
    predicted = class_predictions(focus) if group == "predicted" else None
    means = class_channel_matrix(stats, predictions=predicted)
    matrix = (
        class_channel_matrix(stats, predictions=predicted, relative=True) if relative else means
    )
    layer = focus.layer
    st.plotly_chart(
        figures.class_matrix_figure(
            matrix,
            means,
            relative,
            title=f"Which classes each channel of {layer} prefers"
            if relative
            else f"Mean activation of each channel of {layer}, per class",
        ),
        key="matrix",
        on_select=pick_cell,
        selection_mode="points",
        config=PLAIN,
        theme=None,
    )
    explain("class_matrix")
    names = predicted.names if predicted is not None else [str(label) for label in stats.labels]
    class_examples_ui(focus, stats, [str(name) for name in matrix.index], np.array(names))


def class_examples_ui(
    focus: Focus, stats: LayerStats, classes: list[str], names: np.ndarray
) -> None:
    """A class and a channel (or a clicked cell), and that class's images that excite it most."""
    if st.session_state.get(CLASS_KEY) not in classes:
        st.session_state[CLASS_KEY] = classes[0]
    left, right = st.columns(2)
    with left:
        chosen = st.selectbox("Class", classes, key=CLASS_KEY, help="Or click a cell above.")
    with right:
        channel = channel_ui(stats.map_shape[0], focus.layer)
    rows = top_images(stats, channel, k=PER_ROW, among=names == chosen)
    st.subheader(f"Class {chosen}: the images that excite channel {channel} most")
    examples_ui(focus, rows, channel)
    scores_chart(rows, f"Class {chosen}, channel {channel}", "max", "class_scores")


# --- embedding map -------------------------------------------------------------------------


MAP_POINTS = 5_000  # points drawn on the map; a selection still takes every image inside it
TSNE_KEY = "t-SNE"


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


def embedding_options_ui(has_classes: bool) -> tuple[str, bool]:
    """The method that lays the images out, and whether to mark the network's mistakes."""
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
            value=has_classes,
            disabled=not has_classes,
            key="insights_mark",
        )
    return method, mark


def embedding_points(focus: Focus, method: str) -> np.ndarray:
    """The map's coordinates: at once when made before, else made now (t-SNE with progress)."""
    ctx = focus.ctx
    args = (ctx.choice, ctx.root, focus.view.split, focus.layer, method, 0)
    found = cache.find_embedding(*args)
    if found is not None:
        return found
    if method != "tsne":
        return cache.get_embedding(*args)
    key = (TSNE_KEY, *args[:4])
    if st.session_state.get(PAUSED_KEY) == key:
        st.info("t-SNE was cancelled.", icon=":material/pause_circle:")
        st.button("Go on", on_click=resume, icon=":material/play_arrow:", key="insights_resume")
        st.stop()
    count = len(focus.frame)
    bar = st.progress(0.0, text=f"t-SNE over {count:,} images: finding each one's neighbours…")
    cancel = st.empty()
    cancel.button(
        "Cancel", on_click=pause, args=(key,), icon=":material/cancel:", key="insights_cancel"
    )

    def progress(done: int, total: int) -> None:
        # Cancel stops the run here: Streamlit interrupts it at this update.
        searched = TSNE_NEIGHBOUR_STEPS
        stage = (
            "finding each one's neighbours…"
            if done < searched
            else f"arranging the map, step {done - searched} of {total - searched}"
        )
        bar.progress(done / total, text=f"t-SNE over {count:,} images: {stage}")

    points = cache.get_embedding(*args, progress)
    bar.empty()
    cancel.empty()
    return points


def embedding_section(focus: Focus) -> None:
    """Every image as a point placed by what the layer sees; a selection opens its images."""
    classes = focus.ctx.loaded.classes
    method, mark = embedding_options_ui(classes is not None)
    stats = layer_summary(focus, with_predictions=mark)  # the mistakes come from the same pass
    try:
        points = embedding_points(focus, method)
    except ValueError as error:
        st.error(str(error), icon=":material/error:")
        return
    wrong = class_predictions(focus).misclassified if mark and classes else None
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
    explain("embedding")
    chosen = selected_rows(event, points, shown)
    if not len(chosen):
        st.caption("Draw a box or lasso around points to see those images here.")
        return
    channel = channel_ui(stats.map_shape[0], layer)
    among = np.zeros(len(stats), dtype=bool)
    among[chosen] = True
    rows = top_images(stats, channel, k=2 * PER_ROW, among=among)
    st.subheader(
        f"{len(chosen):,} images chosen; the {len(rows)} that excite channel {channel} most"
    )
    examples_ui(focus, rows, channel)


# --- Grad-CAM ------------------------------------------------------------------------------


def gradcam_section(focus: Focus) -> None:
    """Where the layer holds the evidence for a class, over the current image."""
    ctx, layer = focus.ctx, focus.layer
    classes = ctx.loaded.classes
    if classes is None:
        st.info(f"{ctx.info.title} has no classes, so there is no decision to explain.")
        return
    try:
        pixels, caption = input_image(focus.view, ctx)
    except ValueError as error:
        st.error(str(error))
        return
    choices = [None, *range(len(classes))]
    if st.session_state.get("gradcam_class") not in choices:
        st.session_state["gradcam_class"] = None  # a class of the previous model
    left, right = st.columns([1, 2])
    with left:
        st.image(pixels, caption=caption, width="stretch")
        class_index = st.selectbox(
            "Class to explain",
            choices,
            format_func=lambda i: "The network's answer" if i is None else classes[i],
            key="gradcam_class",
        )
        opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="gradcam_opacity")
    try:
        with st.spinner("Tracing the decision back…"):
            explanation = cache.get_grad_cam(ctx.choice, pixels, layer, class_index)
    except ValueError as error:
        st.error(str(error), icon=":material/error:")
        return
    answer = classes[explanation.class_index]
    with right:
        st.plotly_chart(
            figures.overlay_figure(
                explanation.pixels,
                explanation.cam,
                opacity=opacity,
                colorscale="Inferno",
                title=f"Where {layer} holds the evidence for {answer}",
            ),
            config=PLAIN,
            key="gradcam",
            theme=None,
        )
    explain("gradcam")


# --- compare -------------------------------------------------------------------------------


COMPARE_FOR_KEY = "compare_for"  # the dataset and split the other image was picked from


def another_image(focus: Focus) -> None:
    """Callback of "Another random image": the next seed's pick of the split."""
    seed = st.session_state.get("compare_seed", focus.view.seed) + 1
    st.session_state["compare_seed"] = seed
    st.session_state["compare_image"] = focus.ctx.dataset.pick(seed % 2**32, focus.view.split)


def other_image_ui(focus: Focus) -> str | None:
    """The dataset image to compare with, by name; first the next seed's pick.

    A text box and a button, not a list of every name: a list of tens of thousands
    of names would be sent to the browser again on every change.
    """
    dataset, split = focus.ctx.dataset, focus.view.split
    if st.session_state.get(COMPARE_FOR_KEY) != (focus.ctx.root, split):
        st.session_state[COMPARE_FOR_KEY] = (focus.ctx.root, split)
        st.session_state.pop("compare_seed", None)
        another_image(focus)
    name = st.text_input(
        "Compare with",
        key="compare_image",
        help="The file name of an image of the dataset, as the Dataset page shows it.",
    ).strip()
    st.button(
        "Another random image",
        on_click=another_image,
        args=(focus,),
        icon=":material/shuffle:",
        key="compare_random",
    )
    if not (focus.frame["filename"] == name).any():
        st.error(
            f"{dataset.root.name} has no image {name!r} in its {split} split. Type a file "
            "name as the Dataset page shows it, or press Another random image.",
            icon=":material/error:",
        )
        return None
    return name


def compare_section(focus: Focus) -> None:
    """Two images side by side on one channel, and their difference."""
    ctx, view, layer = focus.ctx, focus.view, focus.layer
    try:
        pixels_a, caption_a = input_image(view, ctx)
    except ValueError as error:
        st.error(str(error))
        return
    left, right = st.columns(2)
    with left:
        other = other_image_ui(focus)
    if other is None:
        return
    pixels_b = cache.get_dataset_image(ctx.dataset, view.split, other, ctx.spec.mode)
    try:
        maps_a = cache.get_features(ctx.choice, (layer,), pixels_a).maps[layer]
        maps_b = cache.get_features(ctx.choice, (layer,), pixels_b).maps[layer]
    except ValueError as error:
        st.error(str(error), icon=":material/error:")
        return
    if maps_a.ndim != 3:
        st.info(f"{layer} gives no image-shaped maps; choose a convolutional layer.")
        return
    with right:
        channel = channel_ui(len(maps_a), layer)
    label = ctx.dataset.label_of(other) if view.split == "train" else None
    caption_b = other + (f" · label {label}" if label is not None else "")
    compared_ui(
        (pixels_a, caption_a, maps_a[channel]),
        (pixels_b, caption_b, maps_b[channel]),
        f"{layer}, channel {channel}",
    )
    explain("compare")


def compared_ui(
    first: tuple[np.ndarray, str, np.ndarray],
    second: tuple[np.ndarray, str, np.ndarray],
    title: str,
) -> None:
    """Each image over its channel map, on one colour range, and the first minus the second.

    Args:
        first: the first image's pixels, caption and channel map.
        second: the same for the second image.
        title: the channel's name, above each map.
    """
    # One colour range for both maps, so equal colours mean equal values.
    low = float(min(first[2].min(), second[2].min()))
    high = float(max(first[2].max(), second[2].max()))
    images, charts = st.columns(3), st.columns(3)
    for column, (image, caption, map2d), key, name in (
        (0, first, "compare_a", "First"),
        (1, second, "compare_b", "Second"),
    ):
        images[column].image(image, caption=f"{name}: {caption}", width=160)
        figure = figures.channel_figure(map2d, title=title)
        figure.data[0].update(zmin=low, zmax=high)
        charts[column].plotly_chart(figure, config=PLAIN, key=key, theme=None)
    images[2].markdown(
        "**First minus second**: red where the first image excites the channel more, "
        "blue where the second does."
    )
    figure = figures.channel_figure(
        difference(first[2], second[2]), title="First minus second", colorscale="RdBu_r"
    )
    figure.data[0].zmid = 0  # white where both are equal
    charts[2].plotly_chart(figure, config=PLAIN, key="compare_diff", theme=None)


# --- channel atlas -------------------------------------------------------------------------


def atlas_section(focus: Focus) -> None:
    """Every channel of the layer as the image it looks for; a tile opens its card."""
    atlas_ui(focus.ctx, focus.layer)


# --- exports -------------------------------------------------------------------------------


def parquet_ui(ctx: Context, view: state.View) -> None:
    """The dataset's features as Parquet: written to disk on request, with progress and
    Cancel, then downloaded straight from that file (the session keeps no copy)."""
    layers = list(view.layers)
    try:
        out = features_parquet_path(ctx.loaded, ctx.dataset, layers, split=view.split)
    except ValueError as error:
        st.info(str(error))
        return
    if out.exists():
        st.download_button(
            f"The dataset's features (Parquet, {out.stat().st_size / 1e6:,.1f} MB)",
            out.read_bytes,  # called on the click: the file is read then, not kept
            file_name=f"{ctx.model_name}-{ctx.dataset.root.name}-{view.split}-features.parquet",
            mime="application/vnd.apache.parquet",
            icon=":material/table:",
            on_click="ignore",
        )
        return
    # A cancelled export left its parts beside the file; the next one goes on from them.
    goes_on = out.with_name(out.name + ".parts").exists()
    if not st.button(
        ("Go on with" if goes_on else "Compute") + " the dataset's features (Parquet)",
        help="One row per image: each layer's channel means, as `cnnlens extract` writes them. "
        "The file is written to the results folder, and can be cancelled and resumed.",
        icon=":material/table:",
        key="insights_export",
    ):
        return
    bar = st.progress(0.0, text="Extracting features…")
    # Its click reruns the page, which stops this run at its next progress update.
    st.button("Cancel", icon=":material/cancel:", key="insights_export_cancel")
    try:
        features_parquet(
            ctx.loaded,
            ctx.dataset,
            layers,
            split=view.split,
            batch_size=cache.INSIGHTS_BATCH,
            on_progress=lambda done, total: bar.progress(
                done / max(total, 1), text=f"Extracting features: {done:,} of {total:,} images"
            ),
        )
    except ValueError as error:
        st.error(str(error), icon=":material/error:")
        return
    st.rerun()


# --- the page ------------------------------------------------------------------------------


def choices_ui(view: state.View) -> tuple[str, str]:
    """The section to show and the layer, the same one as on the Feature maps page."""
    section = st.segmented_control(
        "Show",
        list(SECTIONS),
        format_func=SECTIONS.get,
        required=True,
        default="top",
        key="insights_section",
        persist_state="session",
    )
    shown = st.session_state.get(state.LAYER_KEY)
    layer = st.segmented_control(
        "Layer",
        view.layers,
        required=True,
        help="Choose the layers offered here on the Layers page.",
        **state.shared_widget(
            state.LAYER_KEY, "insights_layer", shown if shown in view.layers else view.layers[0]
        ),
    )
    return section, layer


SECTION_UI = {
    "top": top_section,
    "matrix": matrix_section,
    "embedding": embedding_section,
    "gradcam": gradcam_section,
    "compare": compare_section,
    "atlas": atlas_section,
}

page_ctx, _ = page_context(with_layers=True)
page_view = state.current_view(page_ctx.dataset)
st.title("Insights")
st.markdown(
    "What a layer does across **the whole dataset**: which images excite each channel, "
    "which channels each class excites, how the layer arranges the images; and, for the "
    "current image, where the network looks when it decides."
)
chosen_section, chosen_layer = choices_ui(page_view)
SECTION_UI[chosen_section](Focus(page_ctx, page_view, chosen_layer))
with st.expander("Export the dataset's features", icon=":material/download:"):
    parquet_ui(page_ctx, page_view)
