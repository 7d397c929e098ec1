"""The convolution animation: a stencil of weights slides over one input channel.

As CNN Explainer's convolution view does, a play button moves a highlighted window
across the (padded) input and fills the output map cell by cell. It runs in the
browser alone (``conv_animation.js`` and ``.css`` beside this file): no reruns.
:func:`animation_data` builds what it is sent; large inputs are cropped around the
clicked point so the grids stay small enough to read.
"""

from __future__ import annotations

import numpy as np

from cnnlens.ui.components import own_component

__all__ = ["MAX_OUTPUT_SIDE", "animation_data", "conv_animation_ui"]

MAX_OUTPUT_SIDE = 10
"""The most output cells a side shows; a larger map is cropped around the clicked point."""


def _span(centre: int, size: int, limit: int) -> tuple[int, int]:
    """A range of at most ``limit`` cells of ``size`` around ``centre``."""
    if size <= limit:
        return 0, size
    start = min(max(centre - limit // 2, 0), size - limit)
    return start, start + limit


def animation_data(
    padded: np.ndarray,
    pad_mask: np.ndarray,
    kernel: np.ndarray,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    output_shape: tuple[int, int],
    point: tuple[int, int],
    bias: float = 0.0,
) -> dict:
    """What the animation shows: a crop of the padded input, the kernel, and the output.

    The output cells are computed here from the numbers sent (each is the sum of the
    window times the kernel, plus ``bias``), so what the browser fills in is exactly
    what the window covers.

    Args:
        padded: the input channel, padded the way the layer pads it (H'×W').
        pad_mask: bool, same shape: which cells are padding.
        kernel: kh×kw weights.
        stride, dilation: the layer's steps (rows, columns).
        output_shape: the output map's height and width.
        point: the clicked output cell (row, col); the crop is centred on it.
        bias: added to every output cell (the layer's bias when it has one input channel).

    Returns:
        A JSON-ready dict: ``input`` (rows of numbers), ``padding`` (rows of bools),
        ``kernel``, ``output`` (rows), ``stride``, ``dilation``, ``origin`` (the crop's
        first output row and column), ``input_origin`` (its first padded input cell),
        and ``start`` (the clicked cell within the crop).
    """
    kh, kw = kernel.shape
    rows0, rows1 = _span(point[0], output_shape[0], MAX_OUTPUT_SIDE)
    cols0, cols1 = _span(point[1], output_shape[1], MAX_OUTPUT_SIDE)
    top, left = rows0 * stride[0], cols0 * stride[1]
    bottom = (rows1 - 1) * stride[0] + (kh - 1) * dilation[0] + 1
    right = (cols1 - 1) * stride[1] + (kw - 1) * dilation[1] + 1
    crop = np.asarray(padded[top:bottom, left:right], dtype=np.float64)
    output = np.empty((rows1 - rows0, cols1 - cols0))
    for i in range(rows1 - rows0):
        for j in range(cols1 - cols0):
            window = crop[
                i * stride[0] : i * stride[0] + (kh - 1) * dilation[0] + 1 : dilation[0],
                j * stride[1] : j * stride[1] + (kw - 1) * dilation[1] + 1 : dilation[1],
            ]
            output[i, j] = float((window * kernel).sum()) + bias
    return {
        "input": crop.round(4).tolist(),
        "padding": np.asarray(pad_mask[top:bottom, left:right]).tolist(),
        "kernel": np.asarray(kernel, dtype=np.float64).round(4).tolist(),
        "output": output.round(4).tolist(),
        "stride": list(stride),
        "dilation": list(dilation),
        "origin": [rows0, cols0],
        "input_origin": [top, left],
        "start": [point[0] - rows0, point[1] - cols0],
    }


def conv_animation_ui(data: dict, key: str) -> None:
    """Show the animation of :func:`animation_data`; its element is styled ``.st-key-<key>``."""
    own_component("conv_animation")(data=data, key=key)
