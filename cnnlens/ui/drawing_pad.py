"""The drawing pad: a digit written with the mouse, a pen or a finger, as the input.

The pad is a custom component (``drawing_pad.js`` and ``drawing_pad.css`` beside this
file), drawn in the page like the map view. Strokes are drawn in the browser; when one
ends, the whole drawing comes back (one rerun) and is kept in session state as
:meth:`cnnlens.drawing.Drawing.encode`'s text, which the link carries too.
:func:`get_drawn_pixels` turns it into the model's input (:func:`cnnlens.drawing.
drawing_pixels`: MNIST's own preprocessing for a 28×28 grayscale model), shown small
beside the pad as "what the network sees".
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
import streamlit as st
from PIL import Image

from cnnlens.drawing import MAX_POINTS, MAX_STROKES, PAD_SIDE, Drawing, drawing_pixels
from cnnlens.registry import InputSpec
from cnnlens.ui import state
from cnnlens.ui.caching import in_memory
from cnnlens.ui.components import own_component

__all__ = ["get_drawn_pixels", "pad_ui", "seen_png", "source_ui"]

_SEEN_SIDE = 84
"""The network's input is shown this many CSS pixels a side, crisp (3× a 28-pixel digit)."""
_ERROR_KEY = "_pad_error"


@in_memory(16)
def get_drawn_pixels(text: str, spec: InputSpec) -> np.ndarray:
    """The model's input from a drawing's text, made once for every session.

    Raises:
        ValueError: for an empty pad, a dot or a pad full of ink (what to draw instead).
    """
    return drawing_pixels(Drawing.decode(text), spec)


def seen_png(pixels: np.ndarray) -> str:
    """The network's input as a base64 PNG of exactly its pixels (no contrast stretch)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pad_ui(
    text: str,
    spec: InputSpec,
    *,
    key: str,
    seen: np.ndarray | None = None,
    note: str | None = None,
    on_change: Callable[[], None] | None = None,
) -> None:
    """The pad with its Undo and Clear, and beside it what the network sees.

    Its element is styled ``.st-key-<key>`` and its canvas is named "Drawing pad".

    Args:
        text: the drawing to show (``Drawing.encode``'s text, ``""`` when empty).
        spec: the model's input: grayscale models get white ink on black (MNIST's),
            colour models black on white.
        key: the element's key.
        seen: the network's input made from the drawing, shown small; ``None`` when the
            drawing makes none (``note`` says why).
        note: a sentence under the pad.
        on_change: called after a new drawing is kept (a stroke's end, Undo, Clear).
    """
    component = own_component("drawing_pad")
    drawing = Drawing.decode(text)
    grey = spec.mode == "L"
    height, width = spec.size
    data = {
        "side": PAD_SIDE,
        "strokes": [[list(point) for point in stroke] for stroke in drawing.strokes],
        "width": drawing.width,
        "reset": st.session_state.get(state.PAD_RESET_KEY, 0),
        "ink": "#ffffff" if grey else "#000000",
        "paper": "#000000" if grey else "#ffffff",
        "max_points": MAX_POINTS,
        "max_strokes": MAX_STROKES,
        "seen": None if seen is None else seen_png(seen),
        "seen_side": _SEEN_SIDE if max(height, width) <= _SEEN_SIDE else 112,
        "seen_title": f"What the network sees: {width}×{height}",
        "note": st.session_state.pop(_ERROR_KEY, None) or note,
    }

    def drawn() -> None:
        sent = st.session_state[key].get("drawing") or {}
        try:
            new = Drawing.of(sent.get("strokes", []), int(sent.get("width", drawing.width)))
        except (TypeError, ValueError) as error:
            st.session_state[_ERROR_KEY] = f"{error} The pad shows the drawing before it."
            state.set_drawing(text, from_pad=False)
            return
        state.set_drawing(new.encode())
        if on_change is not None:
            on_change()

    component(data=data, key=key, on_drawing_change=drawn)


def source_ui(own_key: str) -> str:
    """The input's source: the drawing pad or an image (the dataset's, or an upload).

    Args:
        own_key: this page's widget key (pages' widgets cannot share one).

    Returns:
        ``"draw"`` or ``"image"``.
    """

    def changed() -> None:
        st.session_state[state.INPUT_KEY] = st.session_state[own_key]
        if st.session_state[own_key] == "draw":
            st.session_state[state.UPLOAD_KEY] = None

    st.session_state[own_key] = state.input_source()
    return st.segmented_control(
        "Input",
        state.INPUTS,
        format_func={"draw": "Draw a digit", "image": "An image"}.get,
        required=True,
        key=own_key,
        on_change=changed,
        help="Draw a digit with the mouse, a pen or a finger, or look at a dataset image "
        "(or your own, uploaded).",
    )
