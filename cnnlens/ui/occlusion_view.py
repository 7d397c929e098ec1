"""The occlusion view: drag a grey square over an image and watch each class's probability.

Occlusion the way a person tries it. The server runs the network once, in one batch,
with the square at every position of a grid (:func:`cnnlens.attribution.occlusion_scores`);
:func:`occlusion_view_data` packs that table for the browser, and
:func:`occlusion_view_ui` draws it through a custom component (``occlusion_view.js`` and
``occlusion_view.css`` beside this file). While the square is dragged (mouse, touch or
the arrow keys), the component snaps it to the nearest position of the grid and reads
the bars from the table: no server round trip per move. When the square is let go, the
component reports where it is, for a caption.

The square is drawn in the colour the network was shown there (:func:`square_fill`): 0
in the normalised input space, which is the dataset's mean colour (a grey for
photographs), or black for a model that takes its pixels as they are (the demo).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cnnlens import figures
from cnnlens.ui.components import own_component

if TYPE_CHECKING:
    from cnnlens.attribution import OcclusionScores
    from cnnlens.registry import InputSpec

__all__ = ["PROBABILITY_STEPS", "occlusion_view_data", "occlusion_view_ui", "square_fill"]

PROBABILITY_STEPS = 65535
"""Probabilities are sent as whole numbers of 1/65535 (two bytes each): finer than a
float16 near 1, and far finer than the two decimals shown."""
_DISPLAY_SIDE = 340  # CSS pixels a small image is enlarged towards, beside the bars
_CHANGE_STOPS = 11  # a drop is written in the diverging ramp's blue, a rise in its red


def square_fill(spec: InputSpec) -> tuple[int, int, int]:
    """The colour (uint8 RGB) of the occlusion square: 0 in the model's normalised space.

    That is the mean colour the spec normalises by (ImageNet's grey for photographs), or
    black for a model that takes its pixels as they are (the demo).
    """
    if spec.mean is None or spec.std is None:
        return (0, 0, 0)
    mean = [round(255 * float(m)) for m in spec.mean]
    return (mean[0], mean[0], mean[0]) if len(mean) == 1 else (mean[0], mean[1], mean[2])


def occlusion_view_data(
    pixels: np.ndarray,
    scores: OcclusionScores,
    classes: Sequence[str],
    *,
    top: int = 5,
    fill: tuple[int, int, int] = (128, 128, 128),
) -> dict:
    """What the occlusion view is sent: the image, the grid and the probabilities table.

    The classes shown are the network's answer without the square, then those that reach
    the highest probability anywhere (with the square or without it), in that order: the
    bars never swap places during a drag.

    Args:
        pixels: The image as the network sees it (H×W or H×W×3 uint8), the size of
            the input the scores were computed on.
        scores: The network's class scores with the square at every position of a grid.
        classes: One name per class score.
        top: How many classes get a bar.
        fill: The square's colour (uint8 RGB), as :func:`square_fill` gives it: what
            the network was shown under the square.

    Returns:
        A JSON-ready dict: ``image`` (a PNG data URL), ``height``, ``width``,
        ``display`` (the image's longer side on screen, in CSS pixels), ``window``, ``stride``,
        ``rows`` and ``cols`` (the squares' top-left rows and columns, ascending: every
        pair is a position), ``classes`` (the names shown), ``answer`` (the network's
        answer without the square, a name), ``base`` (their probabilities without the
        square), ``table`` (base64 little-endian uint16: probabilities in steps of
        1/``steps``, one row of ``len(classes)`` per position, the positions row by row
        of ``rows`` then ``cols``), ``steps``, ``fill`` (a CSS colour), ``square`` (the
        square's name, "Grey square" or "Black square"), ``fill_words`` (what it is filled
        with, in words) and ``colours`` (``bar``, ``answer``, ``down``, ``up``: CSS colours).

    Raises:
        ValueError: If the image and the scores disagree in size, the positions are not a
            full grid, ``classes`` is not one name per score, or ``top`` is below 1.
    """
    image = np.asarray(pixels)
    height, width = image.shape[:2]
    rows, cols, order = _grid(scores.tops, height, width, scores.window)
    probabilities = np.asarray(scores.probabilities(), dtype=np.float64)
    base = _softmax(np.asarray(scores.base, dtype=np.float64))
    shown = _shown_classes(base, probabilities, classes, top)
    table = np.rint(probabilities[np.ix_(order, shown)] * PROBABILITY_STEPS).astype("<u2")
    png = base64.b64encode(figures.image_png(image)).decode()
    return {
        "image": f"data:image/png;base64,{png}",
        "height": int(height),
        "width": int(width),
        "display": _display_side(max(height, width)),
        "window": int(scores.window),
        "stride": int(scores.stride),
        "rows": rows.tolist(),
        "cols": cols.tolist(),
        "classes": [str(classes[k]) for k in shown],
        "answer": str(classes[shown[0]]),
        "base": [round(float(p), 5) for p in base[shown]],
        "table": base64.b64encode(table.tobytes()).decode(),
        "steps": PROBABILITY_STEPS,
        **_square(fill),
        "colours": _colours(),
    }


def _display_side(side: int) -> int:
    """The image's longer side on screen: a small image enlarged by a whole factor (drawn
    pixelated, crisp), a larger one stretched to about ``_DISPLAY_SIDE`` (drawn smooth)."""
    if 2 * side <= _DISPLAY_SIDE:
        return side * (_DISPLAY_SIDE // side)
    return max(side, _DISPLAY_SIDE)


def _square(fill: tuple[int, int, int]) -> dict:
    """The square's colour, name and what it is filled with, in words."""
    red, green, blue = (int(c) for c in fill)
    black = red == green == blue == 0
    return {
        "fill": f"rgb({red}, {green}, {blue})",
        "square": "Black square" if black else "Grey square",
        "fill_words": "black (the value 0)" if black else "the dataset's mean colour",
    }


def _colours() -> dict:
    """The project's bar colours, and the diverging ramp's blue (a drop) and red (a rise)."""
    down, *_, up = figures.colorscale_colours(figures.DIVERGING, _CHANGE_STOPS)[1:-1]
    return {"bar": figures.BAR_COLOUR, "answer": figures.HIGHLIGHT_COLOUR, "down": down, "up": up}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _grid(
    tops: np.ndarray, height: int, width: int, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid's rows and columns, and the positions' order row by row.

    ``order[g]`` is the index in ``tops`` of grid place ``g = i * len(cols) + j``.
    """
    tops = np.asarray(tops)
    if tops.ndim != 2 or tops.shape[1] != 2 or len(tops) == 0:
        raise ValueError(f"The squares' positions must be P×2 (row, col); got {tops.shape}.")
    if window > height or window > width:
        raise ValueError(
            f"The square ({window} px) is larger than the image ({height}×{width}): "
            "is this the image the scores were computed on?"
        )
    rows, cols = np.unique(tops[:, 0]), np.unique(tops[:, 1])
    places = np.searchsorted(rows, tops[:, 0]) * len(cols) + np.searchsorted(cols, tops[:, 1])
    if len(tops) != len(rows) * len(cols) or len(np.unique(places)) != len(tops):
        raise ValueError(
            f"The {len(tops)} square positions are not a full grid of {len(rows)} rows "
            f"by {len(cols)} columns, which the view needs to snap the square to them."
        )
    if rows.max() + window > height or cols.max() + window > width:
        raise ValueError(
            f"A square at ({int(rows.max())}, {int(cols.max())}) reaches past the image "
            f"({height}×{width}): is this the image the scores were computed on?"
        )
    order = np.empty(len(tops), dtype=np.intp)
    order[places] = np.arange(len(tops))
    return rows.astype(int), cols.astype(int), order


def _shown_classes(
    base: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], top: int
) -> list[int]:
    """The answer, then the classes that reach the highest probability anywhere (with the
    square or without it), highest first."""
    if len(classes) != base.shape[-1]:
        raise ValueError(
            f"{len(classes)} class names were given for {base.shape[-1]} class scores."
        )
    if top < 1:
        raise ValueError(f"top must be at least 1 (classes with a bar); got {top}.")
    answer = int(np.argmax(base))
    reach = np.maximum(base, probabilities.max(axis=0))
    reach[answer] = np.inf
    return [int(k) for k in np.argsort(-reach, kind="stable")[: min(top, len(base))]]


def occlusion_view_ui(data: dict, *, key: str) -> dict | None:
    """Draw the occlusion view of :func:`occlusion_view_data`: the image with a square to
    drag, and a bar per class, updated in the browser as it moves.

    Its element is styled ``.st-key-<key>``.

    Args:
        data: What :func:`occlusion_view_data` made.
        key: The element's key.

    Returns:
        Where the square was last let go, ``{"row": r, "col": c}``: its top-left in input
        pixels, one of ``scores.tops``; ``None`` before it was first let go on this grid.
    """
    component = own_component("occlusion_view")
    result = component(data=data, key=key, on_square_change=lambda: None)
    square = result.get("square")
    # A place reported for another grid (an image of another size) is no place on this one.
    if not square or square["row"] not in data["rows"] or square["col"] not in data["cols"]:
        return None
    return {"row": int(square["row"]), "col": int(square["col"])}
