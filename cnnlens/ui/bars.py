"""Bar charts as small HTML snippets, for ``st.html``: no chart library to start.

The Feature maps page draws its bars this way on every click, and the Insights page's
first chart shows before plotly's code has loaded in the browser. Bars that a click
picks (the Feature maps page's channel ranking) go through :func:`bars_ui`, a small
component (``bars.js``): ``st.html`` only shows HTML and cannot tell Python what was
clicked.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import numpy as np
import streamlit as st

from cnnlens.figures import BAR_COLOUR, DEAD_COLOUR, HIGHLIGHT_COLOUR
from cnnlens.ui.components import own_component

__all__ = ["NAMED_BARS", "bars_html", "bars_ui"]

_NOTE_STYLE = "font-size:0.875rem;opacity:0.7;margin-top:0.5rem"
NAMED_BARS = 64
"""Up to this many bars, each one's label is written under it (upright up to 20)."""
_UPRIGHT_NAMES = 20


def bars_html(
    labels: list,
    values: list | np.ndarray,
    title: str,
    value_name: str,
    highlight: object | None = None,
    flagged: np.ndarray | None = None,
    flag_name: str = "dead",
    percent: bool = False,
    height: int = 180,
    note: str | None = None,
    least_span: float = 0.0,
) -> str:
    """A bar chart as a small HTML snippet (for ``st.html``): no chart library to start.

    Bars go up from zero, or down for negative values; hovering one shows its label
    and value. Labels are written under the bars when there are at most ``NAMED_BARS``
    (turned on their side above 20).

    Args:
        labels: One label per bar, in display order.
        values: One value per label.
        title: Shown above the bars.
        value_name: What the values are, for the hover (e.g. "mean activation").
        highlight: The label whose bar gets ``HIGHLIGHT_COLOUR`` (e.g. the prediction).
        flagged: Boolean mask of bars drawn in ``DEAD_COLOUR`` and named ``flag_name``.
        flag_name: What a flagged bar is, for its hover.
        percent: Write values as percentages.
        height: Height of the bar area, in CSS pixels.
        note: A line of small text under the bars.
        least_span: The smallest range from lowest to highest bar the chart spans, so
            that tiny values (a change of 0.01%) draw as tiny bars, not full ones.

    Returns:
        An HTML string; each bar carries ``data-label`` and ``data-value``.

    Raises:
        ValueError: If labels, values and ``flagged`` differ in length, ``highlight``
            is not a label, or there are no values or one is NaN or infinite.
    """
    labels = list(labels)
    heights = np.asarray(values, dtype=float)
    mask = _checked(labels, heights, flagged, highlight)
    top, bottom = max(float(heights.max(initial=0)), 0.0), max(-float(heights.min(initial=0)), 0.0)
    span = max(top + bottom, least_span) or 1.0
    zero = bottom / span * 100
    width = 100 / max(len(labels), 1)
    bars = []
    for i, (label, value, off) in enumerate(zip(labels, heights, mask, strict=True)):
        shown = f"{value:.1%}" if percent else f"{value:.4g}"
        colour = DEAD_COLOUR if off else HIGHLIGHT_COLOUR if label == highlight else BAR_COLOUR
        size = abs(value) / span * 100
        base = zero if value >= 0 else zero - size
        words = f"{label} · {value_name} {shown}" + (f" · {flag_name}" if off else "")
        bars.append(
            f'<div data-label="{html.escape(str(label))}" data-value="{float(value)!r}" '
            f'title="{html.escape(words)}" style="position:absolute;left:{i * width:.4f}%;'
            f"width:calc({width:.4f}% - 1px);bottom:{base:.3f}%;height:max({size:.3f}%,1px);"
            f'background:{colour}"></div>'
        )
    names = _names_row(labels) if len(labels) <= NAMED_BARS else ""
    return (
        f'<div style="font-weight:600;margin-bottom:0.4rem">{html.escape(title)}</div>'
        f'<div style="position:relative;height:{height}px">{"".join(bars)}'
        f'<div style="position:absolute;left:0;right:0;bottom:{zero:.3f}%;height:1px;'
        f'background:rgba(128,128,128,0.5)"></div></div>{names}'
        + (f'<div style="{_NOTE_STYLE}">{html.escape(note)}</div>' if note else "")
    )


def _names_row(labels: list) -> str:
    """The labels written under their bars, each as wide as its bar; on their side (read
    from the bottom up) when there are too many to fit upright."""
    upright = len(labels) <= _UPRIGHT_NAMES
    turned = "" if upright else "writing-mode:vertical-rl;transform:rotate(180deg);"
    cells = "".join(
        f'<div style="flex:1;min-width:0;display:flex;justify-content:center;overflow:hidden">'
        f'<span style="{turned}overflow:hidden;text-overflow:ellipsis;white-space:nowrap">'
        f"{html.escape(str(label))}</span></div>"
        for label in labels
    )
    size = "0.8rem" if upright else "0.7rem"
    return f'<div style="display:flex;font-size:{size};opacity:0.8">{cells}</div>'


def bars_ui(snippet: str, key: str, on_pick: Callable[[str], None]) -> None:
    """Bars from :func:`bars_html` that a click picks: a click in a bar's column (the bar,
    the space above it, or its label) calls ``on_pick`` with its label, before the rerun.

    Its element is styled ``.st-key-<key>``.
    """
    component = own_component("bars")

    def picked() -> None:
        label = st.session_state[key].get("picked")
        if label is not None:
            on_pick(str(label))

    component(data={"html": snippet}, key=key, on_picked_change=picked)


def _checked(
    labels: list, heights: np.ndarray, flagged: np.ndarray | None, highlight: object | None
) -> np.ndarray:
    """The flags as a boolean mask, once labels, values, flags and highlight agree."""
    mask = np.zeros(len(labels), bool) if flagged is None else np.asarray(flagged, dtype=bool)
    if heights.ndim != 1 or len(heights) != len(labels) or mask.shape != heights.shape:
        raise ValueError(
            f"bars_html needs one value (and flag) per label; got {len(labels)} labels, "
            f"values of shape {heights.shape} and flags of shape {mask.shape}."
        )
    if highlight is not None and highlight not in labels:
        raise ValueError(f"highlight {highlight!r} is not one of the labels {labels}.")
    if heights.size == 0:
        raise ValueError("There are no values, so there are no bars to draw.")
    if not np.isfinite(heights).all():
        raise ValueError("The bar values contain NaN or infinite values; check what was measured.")
    return mask
