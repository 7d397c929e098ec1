""" "How is this value computed?": one point of a layer explained with the real numbers.

Feature maps makes its enlarged channel clickable (:func:`pick_value`); the pick is
kept in session state with the view it was made on, and :func:`value_explainer_ui`
explains it below the map with :func:`cnnlens.explain_value`'s numbers: small grids
as HTML tables, coloured on one diverging scale centred on zero. A pick made on
another image, model, layer or channel is stale and is dropped.
"""

from __future__ import annotations

import hashlib
import html
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from cnnlens.ui import state
from cnnlens.ui.bars import bars_html
from cnnlens.ui.caching import in_memory
from cnnlens.ui.conv_animation import animation_data, conv_animation_ui
from cnnlens.ui.plain_words import WORDS
from cnnlens.ui.resources import get_model

if TYPE_CHECKING:
    from cnnlens.explain import PaddedInput, ValueExplanation
    from cnnlens.ui.context import Context

__all__ = [
    "PICK_KEY",
    "VIEW_KEY",
    "animation_sentence",
    "grid_html",
    "note_view",
    "pick_class",
    "pick_value",
    "slide_order",
    "value_explainer_ui",
    "view_token",
]

PICK_KEY = "value_pick"
"""Session state: the picked point, ``{"layer", "channel", "x", "y", "view"}``."""
VIEW_KEY = "value_view"
"""Session state: the token of the view shown last (model and image), for new picks."""
OPENED_INPUTS = 3
"""Input channels opened as patch × stencil grids when a layer has more than ``SHOW_ALL``."""
SHOW_ALL = 4
"""Up to this many input channels, each is opened."""
TOP_CLASSES = 10

_POSITIVE = (214, 96, 77)
_NEGATIVE = (67, 147, 195)
_PAD_STYLE = "background:repeating-linear-gradient(45deg,#e4e4e4 0 3px,#f6f6f6 3px 6px);color:#888"


@st.cache_data(max_entries=16, show_spinner=False)
def get_value_explanation(
    choice: state.ModelChoice, pixels: np.ndarray, layer: str, channel: int, row: int, col: int
) -> ValueExplanation:
    """How one value of a layer is computed for one image (see :func:`cnnlens.explain_value`).

    Raises:
        ValueError: for a point outside the layer's maps, or an image that does not fit.
    """
    from cnnlens.explain import explain_value

    loaded = get_model(choice)
    return explain_value(loaded, layer, loaded.batch(pixels), channel, row, col)


@in_memory(16)
def get_padded_input(
    choice: state.ModelChoice, pixels: np.ndarray, layer: str, channel: int
) -> PaddedInput:
    """One input channel of a conv layer for one image, padded as the layer pads it
    (:func:`cnnlens.explain.padded_input`), for the conv animation.

    Raises:
        ValueError: if the layer is not a convolution or does not run in the forward.
    """
    from cnnlens.explain import padded_input

    loaded = get_model(choice)
    return padded_input(loaded, layer, loaded.batch(pixels), channel)


def view_token(ctx: Context, pixels: np.ndarray) -> tuple:
    """What a pick was made on: the model (with weights and device) and the image's pixels."""
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=12).hexdigest()
    return (*ctx.choice, pixels.shape, digest)


def note_view(ctx: Context, pixels: np.ndarray) -> tuple:
    """Record the view shown now, on which the next pick is made; the Feature maps page
    calls it for every image it shows, where the explainer itself is not drawn again.

    Returns:
        The view's token (see :func:`view_token`).
    """
    token = st.session_state[VIEW_KEY] = view_token(ctx, pixels)
    return token


def pick_value(point: dict[str, int]) -> None:
    """Callback of the enlarged channel map: explain the clicked point of the shown channel."""
    st.session_state[PICK_KEY] = {
        "layer": st.session_state[state.LAYER_KEY],
        "channel": int(st.session_state[state.CHANNEL_KEY]),
        "x": int(point["x"]),
        "y": int(point["y"]),
        "view": st.session_state.get(VIEW_KEY),
    }


def pick_class(class_index: int) -> None:
    """Callback: explain how the scores become a class's probability (softmax), for the
    view shown now."""
    from cnnlens.explain import CLASS_SCORES

    st.session_state[PICK_KEY] = {
        "layer": CLASS_SCORES,
        "channel": int(class_index),
        "x": 0,
        "y": 0,
        "view": st.session_state.get(VIEW_KEY),
    }


def _clear_pick() -> None:
    st.session_state.pop(PICK_KEY, None)


def _current_pick(layer: str, channel: int, token: tuple) -> dict | None:
    """The pick when it belongs to this view (a stale one is dropped), else ``None``."""
    from cnnlens.explain import CLASS_SCORES

    pick = st.session_state.get(PICK_KEY)
    if pick is None:
        return None
    same_point = pick.get("layer") == CLASS_SCORES or (
        pick.get("layer") == layer and pick.get("channel") == channel
    )
    if pick.get("view") != token or not same_point:
        _clear_pick()
        return None
    return pick


def value_explainer_ui(
    ctx: Context, pixels: np.ndarray, layer: str, channel: int, map_shape: tuple[int, ...]
) -> None:
    """Below the enlarged map: the picked point explained, or how to pick one.

    Args:
        ctx: this run's context.
        pixels: the current image (uint8), as the page's maps were made from.
        layer, channel: the layer and channel the enlarged map shows.
        map_shape: the layer's maps' shape (C×H×W, or H×W).
    """
    token = note_view(ctx, pixels)
    pick = _current_pick(layer, channel, token)
    with st.container(border=True, key="value_explainer"):
        if pick is None:
            _prompt_ui(ctx)
            return
        try:
            found = _explanation(ctx, pixels, pick)
        except ValueError:  # a point outside the layer (its shape changed): start afresh
            _clear_pick()
            _prompt_ui(ctx)
            return
        _explanation_ui(found, ctx, pixels, tuple(map_shape[-2:]))
        st.button("Close the explanation", on_click=_clear_pick, icon=":material/close:")


def _prompt_ui(ctx: Context) -> None:
    st.markdown(
        "**How is this value computed?** Click a point of the enlarged map above to see "
        "where its number comes from, step by step."
    )
    if ctx.loaded.classes is not None:
        st.button(
            "How do the scores become probabilities?",
            on_click=pick_class,
            args=(-1,),
            icon=":material/functions:",
            key="explain_scores",
        )


def _explanation(ctx: Context, pixels: np.ndarray, pick: dict) -> ValueExplanation:
    """The core's explanation of the pick; class -1 stands for the likeliest class."""
    found = get_value_explanation(
        ctx.choice, pixels, pick["layer"], max(pick["channel"], 0), pick["y"], pick["x"]
    )
    if pick["channel"] < 0 and found.kind == "scores":
        best = int(np.argmax(found.probabilities))
        pick["channel"] = best
        found = get_value_explanation(ctx.choice, pixels, pick["layer"], best, 0, 0)
    return found


# ---- the pieces: numbers, colours, grids ----


def _number(value: float) -> str:
    if not np.isfinite(value):
        return "−∞" if value < 0 else "∞"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return text.replace("-", "−")


def _colour(value: float, reach: float) -> str:
    """A diverging colour centred on zero: blue below, white at zero, red above."""
    if not np.isfinite(value) or reach <= 0:
        return "#ffffff"
    t = max(-1.0, min(1.0, value / reach))
    r, g, b = _POSITIVE if t >= 0 else _NEGATIVE
    a = abs(t)
    return "#{:02x}{:02x}{:02x}".format(*(round(255 + (c - 255) * a) for c in (r, g, b)))


def grid_html(
    values: np.ndarray,
    padding: np.ndarray | None = None,
    winner: tuple[int, int] | None = None,
    caption: str = "",
    reach: float | None = None,
) -> str:
    """A small grid of numbers as an HTML table, each cell coloured by its value.

    Args:
        values: a 2-D array.
        padding: bool, same shape: cells drawn hatched and grey (outside the input).
        winner: a cell drawn with a thick border (max-pool's largest value).
        caption: a line under the grid.
        reach: the value that gets the strongest colour; default the largest absolute value.

    Returns:
        An HTML string; each cell carries its value as ``data-value``.
    """
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    if reach is None:
        reach = float(np.abs(finite).max()) if finite.size else 0.0
    rows = []
    for i, row in enumerate(array):
        cells = []
        for j, value in enumerate(row):
            pad = padding is not None and bool(padding[i, j])
            style = _PAD_STYLE if pad else f"background:{_colour(value, reach)}"
            if winner == (i, j):
                style += ";outline:3px solid #111;outline-offset:-3px;font-weight:700"
            title = ("padding: " if pad else "") + _number(value)
            cells.append(
                f'<td data-value="{float(value)!r}" title="{title}" style="{style};'
                f'border:1px solid #fff;padding:2px 4px;min-width:2.6em;text-align:center">'
                f"{_number(value)}</td>"
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    table = (
        '<table style="border-collapse:collapse;font-size:0.75rem;color:#222;'
        f'font-variant-numeric:tabular-nums;margin:0">{"".join(rows)}</table>'
    )
    under = (
        f'<div style="font-size:0.75rem;opacity:0.75;margin-top:2px">{html.escape(caption)}</div>'
        if caption
        else ""
    )
    return f'<div style="display:inline-block;vertical-align:middle">{table}{under}</div>'


def _row(*parts: str) -> str:
    """Grids and signs in one line (wrapping on a narrow screen)."""
    return (
        '<div style="display:flex;flex-wrap:wrap;align-items:center;gap:0.6rem;'
        f'margin:0.4rem 0">{"".join(parts)}</div>'
    )


def _sign(text: str) -> str:
    return f'<div style="font-size:1.3rem;opacity:0.7">{html.escape(text)}</div>'


def _words(text: str) -> str:
    return f'<div style="font-size:0.9rem">{text}</div>'


def _where(found: ValueExplanation) -> str:
    return (
        f"<b>{html.escape(found.layer)}</b>, channel {found.channel}, at x {found.col}, "
        f"y {found.row}"
    )


# ---- one view per kind of layer ----


def _explanation_ui(
    found: ValueExplanation, ctx: Context, pixels: np.ndarray, map_shape: tuple[int, int]
) -> None:
    views = {
        "conv": _conv_ui,
        "batchnorm": _batchnorm_ui,
        "relu": _relu_ui,
        "maxpool": _maxpool_ui,
        "avgpool": _avgpool_ui,
        "scores": _scores_ui,
    }
    if found.kind == "scores":
        st.markdown(f"#### How the scores become probabilities: class {found.channel}")
    else:
        st.markdown(f"#### How this value is computed: {_number(found.value)}")
    view = views.get(found.kind)
    if view is None:
        st.html(_words(f"{_where(found)} is <b>{_number(found.value)}</b>."))
        st.info(found.note, icon=":material/info:")
        return
    view(found, ctx, pixels, map_shape)


def _conv_ui(found: Any, ctx: Context, pixels: np.ndarray, map_shape: tuple[int, int]) -> None:
    count = len(found.per_input)
    st.markdown(WORDS["value_conv"])
    if count <= SHOW_ALL:
        opened = list(range(count))
    else:
        order = np.argsort(-np.abs(found.per_input), kind="stable")
        opened = sorted(order[:OPENED_INPUTS].tolist())
        labels = [int(c) for c in found.input_channels]
        st.html(
            bars_html(
                labels,
                found.per_input,
                title=f"What each of the {count} input channels adds (its patch × stencil sum)",
                value_name="sum",
                height=120,
                note=f"Below: the {OPENED_INPUTS} input channels that add the most, opened.",
            )
        )
    blocks = []
    for i in opened:
        reach = float(np.abs(found.products[i]).max()) or None
        blocks.append(
            _row(
                grid_html(
                    found.patches[i],
                    found.padding[i],
                    caption=f"input channel {int(found.input_channels[i])}: the patch",
                ),
                _sign("×"),
                grid_html(found.kernel[i], caption="the stencil"),
                _sign("="),
                grid_html(found.products[i], reach=reach, caption="cell by cell"),
                _sign("→"),
                _words(f"sum <b data-explained='sum-{i}'>{_number(found.per_input[i])}</b>"),
            )
        )
    total = float(found.per_input.sum())
    summary = (
        f"Sum over the {count} input channel{'s' if count != 1 else ''}: "
        f"<b>{_number(total)}</b> &nbsp;+&nbsp; bias <b>{_number(found.bias)}</b> "
        f"&nbsp;=&nbsp; <b data-explained='value'>{_number(found.value)}</b>"
    )
    if found.padding.any():
        summary += "<br><span style='opacity:0.75'>Hatched cells lie outside the image: "
        summary += "the layer pads its input there.</span>"
    st.html("".join(blocks) + _words(summary))
    animation_ui(found, ctx, pixels, map_shape)


def animation_ui(found: Any, ctx: Context, pixels: np.ndarray, map_shape: tuple[int, int]) -> None:
    """The play button: the stencil slides over the input channel that adds the most at
    the clicked point, or over the one chosen in the list."""
    order = slide_order(found)
    position = order[0]
    if len(order) > 1:
        position = st.selectbox(
            "Input channel to slide over",
            order,
            format_func=lambda i: (
                f"channel {int(found.input_channels[i])}: adds {_number(found.per_input[i])}"
            ),
            # One list per point: a new click starts again from the channel that adds most.
            key=f"conv_animation_input_{found.layer}_{found.channel}_{found.row}_{found.col}",
            help="By what each input channel adds at the clicked point, largest first.",
        )
    padded = get_padded_input(ctx.choice, pixels, found.layer, int(found.input_channels[position]))
    single = len(found.per_input) == 1
    data = animation_data(
        padded.plane,
        padded.padding,
        found.kernel[position],
        found.stride,
        found.dilation,
        map_shape,
        (found.row, found.col),
        bias=found.bias if single else 0.0,
    )
    st.markdown(animation_sentence(found, position))
    conv_animation_ui(data, key="conv_animation")


def slide_order(found: Any) -> list[int]:
    """The input channels (positions in ``found.input_channels``) by what they add at the
    point, largest first by size (either sign); ties keep channel order."""
    return np.argsort(-np.abs(found.per_input), kind="stable").tolist()


def animation_sentence(found: Any, position: int) -> str:
    """The line above the animation: which input channel, its share, and the steps when
    the stencil does not move one cell at a time."""
    count = len(found.per_input)
    text = f"**Watch the stencil slide** over input channel {int(found.input_channels[position])}"
    if count == 1:
        text += " (this layer reads only this one, so the output is the layer's map)."
    else:
        adds = _number(found.per_input[position])
        most = position == slide_order(found)[0]
        text += f", which adds the most here: {adds}" if most else f", which adds {adds} here"
        text += f" (only this channel's share: the layer adds up all {count})."
    return f"{text} {_steps_words(found.stride, found.dilation)}".rstrip()


def _steps_words(stride: tuple[int, int], dilation: tuple[int, int]) -> str:
    """How the stencil moves and spreads, in words, when either is not one cell."""
    parts = []
    if tuple(stride) != (1, 1):
        if stride[0] == stride[1]:
            parts.append(f"jumps {stride[0]} cells at each step (stride {stride[0]})")
        else:
            parts.append(
                f"jumps {stride[0]} rows down and {stride[1]} columns across "
                f"(stride {stride[0]}×{stride[1]})"
            )
    if tuple(dilation) != (1, 1):
        step = f"{dilation[0]}" if dilation[0] == dilation[1] else f"{dilation[0]}×{dilation[1]}"
        parts.append(f"reads cells {step} apart (dilation {step})")
    return f"The stencil {' and '.join(parts)}." if parts else ""


def _batchnorm_ui(found: Any, ctx: Context, pixels: np.ndarray, _shape: tuple) -> None:
    st.markdown(WORDS["value_batchnorm"])
    where = "this image's own" if found.batch_statistics else "the layer's stored"
    st.html(
        _words(
            f"{_where(found)}: the value coming in is <b>{_number(found.x)}</b>; "
            f"{where} average for this channel is <b>{_number(found.mean)}</b> and its "
            f"spread (variance) <b>{_number(found.var)}</b>.<br>"
            f"(x − average) ÷ √(variance + {found.eps:g}) × scale + shift<br>"
            f"= ({_number(found.x)} − {_number(found.mean)}) ÷ √({_number(found.var)} + "
            f"{found.eps:g}) × {_number(found.weight)} + {_number(found.bias)}<br>"
            f"= <b data-explained='value'>{_number(found.result)}</b>"
        )
    )


def _relu_ui(found: Any, ctx: Context, pixels: np.ndarray, _shape: tuple) -> None:
    st.markdown(WORDS["value_relu"])
    verdict = (
        "positive, so it is kept"
        if found.x > 0
        else "not positive, so it becomes 0"
        if found.function == "ReLU"
        else "changed as the formula says"
    )
    st.html(
        _words(
            f"{_where(found)}: the value coming in is <b>{_number(found.x)}</b>, "
            f"{verdict}.<br>{html.escape(found.function)}: {html.escape(found.formula)} "
            f"with x = {_number(found.x)} gives "
            f"<b data-explained='value'>{_number(found.value)}</b>"
        )
    )


def _maxpool_ui(found: Any, ctx: Context, pixels: np.ndarray, _shape: tuple) -> None:
    st.markdown(WORDS["value_maxpool"])
    rows, cols = found.window.shape
    st.html(
        _row(
            grid_html(
                found.window,
                found.padding,
                winner=found.winner,
                caption=f"the {rows}×{cols} square of the layer's input",
            ),
            _sign("→"),
            _words(
                f"the largest, framed: <b data-explained='value'>{_number(found.value)}</b>"
                f"<br>{_where(found)}"
            ),
        )
    )


def _avgpool_ui(found: Any, ctx: Context, pixels: np.ndarray, _shape: tuple) -> None:
    st.markdown(WORDS["value_avgpool"])
    rows, cols = found.window.shape
    st.html(
        _row(
            grid_html(found.window, found.padding, caption=f"the {rows}×{cols} window"),
            _sign("→"),
            _words(
                f"sum {_number(found.total)} ÷ {found.divisor:g} cells = "
                f"<b data-explained='value'>{_number(found.mean)}</b><br>{_where(found)}"
            ),
        )
    )


def _scores_ui(found: Any, ctx: Context, pixels: np.ndarray, _shape: tuple) -> None:
    st.markdown(WORDS["value_scores"])
    classes = ctx.loaded.classes
    count = len(found.logits)
    order = np.argsort(-found.probabilities, kind="stable")[:TOP_CLASSES]
    if found.channel not in order:
        order = np.append(order, found.channel)
    if count <= TOP_CLASSES:
        order = np.arange(count)
    head = "".join(
        f'<th style="text-align:right;padding:2px 10px">{h}</th>'
        for h in ("class", "score", f"e<sup>score − {_number(found.shift)}</sup>", "probability")
    )
    body = []
    for i in order:
        name = classes[i] if classes is not None and i < len(classes) else str(i)
        bold = "font-weight:700;background:rgba(255,75,75,0.12)" if i == found.channel else ""
        cells = (
            html.escape(str(name)),
            _number(found.logits[i]),
            _number(found.exponentials[i]),
            f"{found.probabilities[i]:.1%}",
        )
        body.append(
            f'<tr data-class="{int(i)}" style="{bold}">'
            + "".join(f'<td style="text-align:right;padding:2px 10px">{c}</td>' for c in cells)
            + "</tr>"
        )
    more = (
        f" (the {len(order)} shown here and {count - len(order)} more)"
        if count > len(order)
        else ""
    )
    st.html(
        '<table style="border-collapse:collapse;font-size:0.85rem;'
        f'font-variant-numeric:tabular-nums"><tr>{head}</tr>{"".join(body)}</table>'
        + _words(
            f"The exponentials of all {count} classes{more} add up to "
            f"<b>{_number(found.total)}</b>. Class {found.channel}: "
            f"{_number(found.exponentials[found.channel])} ÷ {_number(found.total)} = "
            f"<b data-explained='probability'>{found.probability:.1%}</b>"
        )
    )
