"""Where it looks: the attribution methods side by side on the current image, each with
its faithfulness on that image and its sanity check.

Each method's card is one :class:`~cnnlens.method_report.MethodReportSpec` drawn by
the runner: a stored report paints at once, a cheap one computes by itself, a slow
one (Score-CAM on a large model) waits for its button and shows progress and Cancel.
The grey square a person drags is :mod:`cnnlens.ui.occlusion_view`; the dataset-wide
table of which method to believe is :mod:`cnnlens.ui.faithfulness_table`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from cnnlens import figures
from cnnlens.attribution import CAM_METHODS, METHODS, TITLES
from cnnlens.method_report import (
    MethodChecks,
    MethodChecksSpec,
    MethodMap,
    MethodMapSpec,
    OcclusionSpec,
    drag_grid,
)
from cnnlens.preprocess import to_uint8_image
from cnnlens.ui import state
from cnnlens.ui.context import Context
from cnnlens.ui.faithfulness_table import ONE_PASS
from cnnlens.ui.feature_maps import predictions_html
from cnnlens.ui.occlusion_view import occlusion_view_data, occlusion_view_ui, square_fill
from cnnlens.ui.plain_words import METHOD_SENTENCES
from cnnlens.ui.resources import SMALL_SIDE
from cnnlens.ui.runner import result_ui

__all__ = [
    "answer_ui",
    "cards_ui",
    "checks_card",
    "choices_ui",
    "map_card",
    "quick_methods",
    "seen_image",
    "square_ui",
]


_OPACITY_KEY = "looks_opacity"
_AUTOMATIC = "automatic"


def quick_methods(side: int) -> tuple[str, ...]:
    """The methods that compute by themselves: all on a small image, else those that take
    one forward and one backward (the others wait for a click)."""
    return METHODS if side <= SMALL_SIDE else ONE_PASS


def choices_ui(view: state.View, classes: Sequence[str]) -> tuple[int | None, str | None, float]:
    """The class to explain (``None``: the network's answer), the CAMs' layer (``None``:
    automatic) and the overlays' opacity."""
    left, middle, right = st.columns(3)
    choices = [None, *range(len(classes))]
    if st.session_state.get("looks_class") not in choices:
        st.session_state["looks_class"] = None  # a class of the previous model
    target = left.selectbox(
        "Class to explain",
        choices,
        format_func=lambda i: "The network's answer" if i is None else classes[i],
        key="looks_class",
    )
    layers = [_AUTOMATIC, *view.layers]
    if st.session_state.get("looks_layer") not in layers:
        st.session_state["looks_layer"] = _AUTOMATIC
    layer = middle.selectbox(
        "Layer of the CAMs",
        layers,
        format_func=lambda name: "Last block's output" if name == _AUTOMATIC else name,
        key="looks_layer",
        help="The CAM methods read one layer. A layer taken before its ReLU is replaced by "
        "the ReLU's output (said under the map): before it, the map is often blank.",
    )
    opacity = right.slider("Overlay opacity", 0.0, 1.0, 0.8, 0.05, key=_OPACITY_KEY)
    return target, None if layer == _AUTOMATIC else layer, opacity


def map_card(found: MethodMap, pixels: np.ndarray, opacity: float) -> None:
    """One method's map over the image, and the layer it read."""
    st.image(figures.overlay_png(pixels, found.map, opacity, side=224), width="stretch")
    if found.layer:
        st.caption(f"Layer {found.layer}." + (f" {found.note}" if found.note else ""))


def checks_card(checks: MethodChecks) -> None:
    """Whether to believe one map: its faithfulness on this image and its sanity check."""
    st.caption(
        f"Deletion {checks.deletion:.2f} (lower is better) · "
        f"insertion {checks.insertion:.2f} (higher is better)"
    )
    if checks.shows_image:
        st.warning(
            "Shows the image more than the model: with random weights the map stays "
            f"alike (ρ {checks.randomised:.2f}).",
            icon=":material/warning:",
        )
    else:
        st.success(
            f"Depends on the model: with random weights it changes (ρ {checks.randomised:.2f}).",
            icon=":material/check_circle:",
        )


def _start(method: str, quick: Sequence[str], what: str) -> str | None:
    """No button for a quick method; else the label of the button that starts it."""
    return None if method in quick else f"{what} {TITLES[method]}"


def seen_image(ctx: Context, pixels: np.ndarray) -> np.ndarray:
    """The image as the network sees it (resized, as uint8): what the maps lie over."""
    return to_uint8_image(ctx.loaded.batch(pixels), ctx.loaded.spec)


def cards_ui(
    ctx: Context,
    pixels: np.ndarray,
    methods: Sequence[str],
    choice: tuple[int | None, str | None, float],
) -> dict[str, MethodMap]:
    """The chosen methods' cards, four to a row: every map first, then the checks of
    each (they take longer). Returns the maps that are ready."""
    target, layer, opacity = choice
    seen = seen_image(ctx, pixels)
    quick = quick_methods(max(seen.shape[:2]))
    maps: dict[str, MethodMap] = {}
    slots: dict[str, tuple[MethodMapSpec, DeltaGenerator]] = {}
    for start in range(0, len(methods), 4):
        for column, method in zip(st.columns(4), methods[start : start + 4], strict=False):
            with column, st.container(border=True, key=f"looks_card_{method}"):
                st.markdown(
                    f"**{TITLES[method]}**", help=f"{TITLES[method]} {METHOD_SENTENCES[method]}"
                )
                spec = MethodMapSpec(
                    ctx.loaded,
                    pixels,
                    method,
                    layer=layer if method in CAM_METHODS else None,
                    target=target,
                )
                found = result_ui(spec, key=f"looks_{method}", start=_start(method, quick, "Draw"))
                if found is not None:
                    map_card(found, seen, opacity)
                    maps[method] = found
                    slots[method] = spec, st.container()
    for method, (spec, slot) in slots.items():
        with slot:
            checks = result_ui(
                MethodChecksSpec(ctx.loaded, spec),
                key=f"looks_{method}_checks",
                start=_start(method, quick, "Check"),
            )
            if checks is not None:
                checks_card(checks)
    return maps


def answer_ui(ctx: Context, pixels: np.ndarray, caption: str) -> None:
    """The image and the network's answer, beside each other."""
    left, right = st.columns([1, 3])
    left.image(figures.image_png(pixels), caption=caption, width=160)
    probabilities = ctx.loaded.probabilities(ctx.loaded.batch(pixels))
    if probabilities is not None:
        with right:
            st.html(predictions_html(probabilities[0], ctx.loaded.classes))


def square_ui(ctx: Context, pixels: np.ndarray) -> None:
    """Cover part of the image with a square and watch each class's probability: every
    place of the square computed once, then dragged in the browser with no wait."""
    seen = seen_image(ctx, pixels)
    side = max(seen.shape[:2])
    window, stride = drag_grid(side)
    spec = OcclusionSpec(ctx.loaded, pixels, window, stride)
    scores = result_ui(
        spec,
        key="looks_square",
        start=None if side <= SMALL_SIDE else "Try every place of the square",
        help=f"{-(-(side - window) // stride) + 1:,}² forwards of the network.",
    )
    if scores is None:
        return
    fill = square_fill(ctx.loaded.spec)
    data = occlusion_view_data(seen, scores, ctx.loaded.classes, fill=fill)
    occlusion_view_ui(data, key="looks_square_view")
