"""How one value of a layer is computed, with the real numbers of the current image.

:func:`explain_value` answers "where does this number come from?" for one point
(channel, row, column) of a layer's output, as CNN Explainer does for its own
tiny network, but for any model cnnlens opens. It runs one forward of the
model's private copy, stops it at the layer (at the model's end for the class
scores), and returns the numbers that make the value:

- a convolution: for each input channel, the input patch under the kernel (the
  layer's own padding marked), the kernel slice and their products; the sum of
  the products plus the bias is the value;
- batch norm: the affine formula with the layer's running statistics;
- ReLU (ReLU6, LeakyReLU): the input and ``max(0, x)``;
- max and average pooling: the window, with the winner or the mean;
- the class scores (the model's output, or the Linear layer that gives it): the
  softmax, from logits to exponentials to probabilities.

Any other layer gets its value and a sentence saying it is not explained. The
value is always read from the layer's real output, never recomputed.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.borrow import borrowed_copy
from cnnlens.private_copy import ModuleNotRun, PrivateCopy, Stop, check_batch, tensor_output

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel

__all__ = [
    "CLASS_SCORES",
    "ActivationExplanation",
    "AvgPoolExplanation",
    "BatchNormExplanation",
    "ConvExplanation",
    "MaxPoolExplanation",
    "OtherExplanation",
    "PaddedInput",
    "ScoresExplanation",
    "ValueExplanation",
    "explain_value",
    "padded_input",
]

CLASS_SCORES = "class scores"
"""The layer name that stands for the model's output, the class scores, in every model."""


@dataclass(frozen=True, eq=False)
class ValueExplanation:
    """One value of a layer and how it is computed; each layer kind adds its own fields.

    Attributes:
        kind: what explains the value, for the page to pick its view: ``"conv"``,
            ``"batchnorm"``, ``"relu"``, ``"maxpool"``, ``"avgpool"``, ``"scores"``
            or ``"other"``.
        layer: the layer name as given.
        channel, row, col: the point of the layer's output (for the class scores,
            the class index and 0, 0).
        value: the layer's real output at that point.
    """

    kind: ClassVar[str] = "other"
    layer: str
    channel: int
    row: int
    col: int
    value: float


@dataclass(frozen=True, eq=False)
class ConvExplanation(ValueExplanation):
    """A convolution: ``products.sum() + bias == value``, within float rounding.

    Arrays are indexed by the output channel's input channels (its group's only,
    ``input_channels``), then kernel row and column.

    Attributes:
        bias: the layer's bias for this channel, 0.0 without one.
        patches: float32, the input values under the (dilated) kernel, taken from
            the input padded the way the layer pads it (zeros, or reflected,
            replicated or circular copies of the input).
        padding: bool, same shape: which cells of ``patches`` are padding.
        kernel: float32, the kernel slice of each input channel.
        products: float64, ``patches * kernel``.
        per_input: float64, each input channel's sum of products.
        input_channels: the indices of the input channels this output channel reads.
        top, left: the window's top-left cell in input coordinates (negative in the padding).
        stride, dilation: the layer's ``(rows, columns)`` steps.
    """

    kind: ClassVar[str] = "conv"
    bias: float
    patches: np.ndarray
    padding: np.ndarray
    kernel: np.ndarray
    products: np.ndarray
    per_input: np.ndarray
    input_channels: np.ndarray
    top: int
    left: int
    stride: tuple[int, int]
    dilation: tuple[int, int]


@dataclass(frozen=True, eq=False)
class BatchNormExplanation(ValueExplanation):
    """Batch norm: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Attributes:
        x: the layer's input at the point.
        mean, var: the channel's running statistics (the image batch's own when the
            layer keeps none: ``batch_statistics``).
        eps, weight, bias: the layer's constants for the channel (1 and 0 without affine).
        result: the formula computed from these numbers in float64; equals ``value``.
        batch_statistics: whether ``mean`` and ``var`` come from the batch.
    """

    kind: ClassVar[str] = "batchnorm"
    x: float
    mean: float
    var: float
    eps: float
    weight: float
    bias: float
    result: float
    batch_statistics: bool


@dataclass(frozen=True, eq=False)
class ActivationExplanation(ValueExplanation):
    """ReLU, ReLU6 or LeakyReLU: the input and what the function keeps of it.

    Attributes:
        x: the layer's input at the point.
        function: ``"ReLU"``, ``"ReLU6"`` or ``"LeakyReLU"``.
        formula: the function in symbols, e.g. ``"max(0, x)"``.
        negative_slope: what negative inputs are multiplied by (0 for ReLU).
        ceiling: the largest output (6 for ReLU6), else ``None``.
    """

    kind: ClassVar[str] = "relu"
    x: float
    function: str
    formula: str
    negative_slope: float
    ceiling: float | None


@dataclass(frozen=True, eq=False)
class MaxPoolExplanation(ValueExplanation):
    """Max pooling: the window and its largest value.

    Attributes:
        window: float32 kernel rows × columns, ``-inf`` at padding (as torch pads).
        padding: bool, same shape: cells outside the input.
        winner: ``(row, col)`` of the largest value in the window (the first one on a tie).
        top, left: the window's top-left cell in input coordinates.
    """

    kind: ClassVar[str] = "maxpool"
    window: np.ndarray
    padding: np.ndarray
    winner: tuple[int, int]
    top: int
    left: int


@dataclass(frozen=True, eq=False)
class AvgPoolExplanation(ValueExplanation):
    """Average pooling (fixed or adaptive): the window and its mean.

    Attributes:
        window: float32 rows × columns (zero at padding).
        padding: bool, same shape: cells outside the input.
        total: the window's sum (float64).
        divisor: what the sum is divided by: the cells counted, or the layer's
            ``divisor_override``.
        mean: ``total / divisor``; equals ``value``.
        top, left: the window's top-left cell in input coordinates.
    """

    kind: ClassVar[str] = "avgpool"
    window: np.ndarray
    padding: np.ndarray
    total: float
    divisor: float
    mean: float
    top: int
    left: int


@dataclass(frozen=True, eq=False)
class ScoresExplanation(ValueExplanation):
    """The class scores: softmax turns the logits into probabilities.

    The exponentials are taken of ``logits - shift`` (the largest logit), which
    gives the same probabilities without overflow; every array is float64.

    Attributes:
        logits: the model's outputs, one per class; ``value`` is the chosen class's.
        shift: the largest logit.
        exponentials: ``exp(logits - shift)``.
        total: the sum of the exponentials.
        probabilities: ``exponentials / total``.
        probability: the chosen class's probability.
    """

    kind: ClassVar[str] = "scores"
    logits: np.ndarray
    shift: float
    exponentials: np.ndarray
    total: float
    probabilities: np.ndarray
    probability: float


@dataclass(frozen=True, eq=False)
class OtherExplanation(ValueExplanation):
    """A layer this explanation does not cover: its value and why there is no more.

    Attributes:
        layer_type: the module's class name.
        note: a sentence for people saying what is not explained.
    """

    kind: ClassVar[str] = "other"
    layer_type: str
    note: str


class _Probe:
    """The call that keeps the target's first input and output, then stops the forward.

    For an in-place target (a ``ReLU(inplace=True)``) the input is overwritten by
    the time its hook runs, so the value at the point of every earlier module's
    output is kept beside a weak reference and version counter; the target's input
    is that kept value when nothing but the target wrote into it since.
    """

    def __init__(self, path: str | None, stop: bool, point: tuple[int, ...] | None) -> None:
        self.path = path
        self.stop = stop
        self.point = point
        self.found = False
        self.inputs: tuple[Any, ...] = ()
        self.output: Any = None
        self._kept: list[tuple[weakref.ref, int, torch.Tensor]] = []

    def keep(self, tensor: Any) -> None:
        if self.point is not None and isinstance(tensor, torch.Tensor):
            value = _at(tensor, self.point)
            if value is not None:
                self._kept.append((weakref.ref(tensor), tensor._version, value.clone()))

    def before_write(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The value at the point before the target's own in-place write, if known."""
        for ref, version, value in reversed(self._kept):
            if ref() is tensor:
                return value if tensor._version == version + 1 else None
        return None

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        if self.found:
            return
        if path != self.path:
            self.keep(output)
            return
        self.found, self.inputs, self.output = True, inputs, output
        if self.stop:
            raise Stop


def _at(tensor: torch.Tensor, point: tuple[int, ...]) -> torch.Tensor | None:
    """``tensor[point]`` when the tensor has that point, else ``None``.

    A 1×C tensor has the point ``(0, channel, 0, 0)`` as ``(0, channel)``.
    """
    if tensor.dim() == 2 and len(point) == 4 and point[2:] == (0, 0):
        point = point[:2]
    if tensor.dim() != len(point) or any(
        not 0 <= i < n for i, n in zip(point, tensor.shape, strict=True)
    ):
        return None
    return tensor[point]


def _run(
    source: PrivateCopy, x: torch.Tensor, path: str | None, stop: bool, point: tuple[int, ...]
) -> tuple[_Probe, Any]:
    """One forward of the copy with a probe at ``path`` (``None``: the model's output)."""
    module = source.model.get_submodule(path) if path else None
    inplace = module is not None and getattr(module, "inplace", False)
    probe = _Probe(path, stop, point if inplace else None)
    # Version counters tell whether an in-place target's kept input is still good;
    # inference mode drops them, so it is off even when the caller runs inside it.
    with torch.inference_mode(False), torch.no_grad():
        x = source.prepare(x)
        if x.is_inference():
            x = x.clone()
        probe.keep(x)
        result = source.run(x, probe)
    if path is not None and not probe.found:
        raise ModuleNotRun([path])
    return probe, result


def _point(shape: torch.Size, layer: str, channel: int, row: int, col: int) -> tuple[int, ...]:
    """The index of the point in a 1×C×H×W (or 1×C) output, or a ValueError that says the range."""
    for name, value in (("channel", channel), ("row", row), ("col", col)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if len(shape) == 4:
        _, channels, height, width = shape
        if not 0 <= channel < channels:
            raise ValueError(
                f"Channel {channel} is out of range: {layer} has {channels} channels "
                f"(0 to {channels - 1})."
            )
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(
                f"Point (row {row}, col {col}) is outside the {height}×{width} maps of {layer}: "
                f"rows go from 0 to {height - 1} and columns from 0 to {width - 1}."
            )
        return (0, int(channel), int(row), int(col))
    if len(shape) == 2:
        _, features = shape
        if not 0 <= channel < features:
            raise ValueError(
                f"Channel {channel} is out of range: {layer} has {features} outputs "
                f"(0 to {features - 1})."
            )
        if row != 0 or col != 0:
            raise ValueError(
                f"{layer} gives one number per channel, not maps: row and col must be 0, "
                f"got ({row}, {col})."
            )
        return (0, int(channel))
    raise ValueError(
        f"{layer} outputs a tensor of shape {tuple(shape)}, which has no channel, row and "
        "column to explain."
    )


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """The layer's padding as (top, bottom, left, right) input cells."""
    if conv.padding == "valid":
        return 0, 0, 0, 0
    if conv.padding == "same":  # as torch pads: any odd cell goes after
        sides = []
        for kernel, dilation in zip(conv.kernel_size, conv.dilation, strict=True):
            total = dilation * (kernel - 1)
            sides += [total // 2, total - total // 2]
        return sides[0], sides[1], sides[2], sides[3]
    rows, cols = _pair(conv.padding)
    return rows, rows, cols, cols


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _explain_conv(
    conv: nn.Conv2d, inp: torch.Tensor, at: tuple[int, ...], layer: str, value: float
) -> ConvExplanation:
    _, channel, row, col = at
    weight = conv.weight
    per_group = weight.shape[1]
    group = channel // (conv.out_channels // conv.groups)
    first = group * per_group
    top_pad, bottom_pad, left_pad, right_pad = _conv_padding(conv)
    stride, dilation = _pair(conv.stride), _pair(conv.dilation)
    kh, kw = weight.shape[2:]
    height, width = inp.shape[2:]
    top, left = row * stride[0] - top_pad, col * stride[1] - left_pad
    rows = top + dilation[0] * torch.arange(kh)
    cols = left + dilation[1] * torch.arange(kw)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(
        inp[:, first : first + per_group], (left_pad, right_pad, top_pad, bottom_pad), mode=mode
    )[0]
    device = padded.device
    patches = padded[:, (rows + top_pad).to(device)][:, :, (cols + left_pad).to(device)]
    padding = ((rows < 0) | (rows >= height))[:, None] | ((cols < 0) | (cols >= width))[None, :]
    patches_np, kernel_np = _numpy(patches), _numpy(weight[channel])
    products = patches_np.astype(np.float64) * kernel_np.astype(np.float64)
    return ConvExplanation(
        layer=layer,
        channel=channel,
        row=row,
        col=col,
        value=value,
        bias=float(conv.bias[channel].detach()) if conv.bias is not None else 0.0,
        patches=patches_np,
        padding=np.broadcast_to(padding.numpy(), patches_np.shape).copy(),
        kernel=kernel_np,
        products=products,
        per_input=products.sum(axis=(1, 2)),
        input_channels=np.arange(first, first + per_group),
        top=top,
        left=left,
        stride=stride,
        dilation=dilation,
    )


def _explain_batchnorm(
    bn: nn.BatchNorm2d, inp: torch.Tensor, at: tuple[int, ...], layer: str, value: float
) -> BatchNormExplanation:
    channel = at[1]
    x = float(inp[at])
    batch_statistics = bn.training or bn.running_mean is None or bn.running_var is None
    if batch_statistics:
        plane = inp[:, channel].double()
        mean, var = float(plane.mean()), float(plane.var(unbiased=False))
    else:
        mean, var = float(bn.running_mean[channel]), float(bn.running_var[channel])
    weight = float(bn.weight[channel].detach()) if bn.weight is not None else 1.0
    bias = float(bn.bias[channel].detach()) if bn.bias is not None else 0.0
    return BatchNormExplanation(
        layer=layer,
        channel=channel,
        row=at[2],
        col=at[3],
        value=value,
        x=x,
        mean=mean,
        var=var,
        eps=float(bn.eps),
        weight=weight,
        bias=bias,
        result=(x - mean) / math.sqrt(var + bn.eps) * weight + bias,
        batch_statistics=batch_statistics,
    )


def _activation_formula(module: nn.Module) -> tuple[str, str, float, float | None]:
    """(function, formula, negative slope, ceiling) of a ReLU-like module."""
    if isinstance(module, nn.ReLU6):
        return "ReLU6", "min(max(0, x), 6)", 0.0, 6.0
    if isinstance(module, nn.LeakyReLU):
        slope = float(module.negative_slope)
        return "LeakyReLU", f"x if x > 0, else {slope:g} × x", slope, None
    return "ReLU", "max(0, x)", 0.0, None


def _explain_activation(
    module: nn.Module, x: float, at: tuple[int, ...], layer: str, value: float
) -> ActivationExplanation:
    function, formula, slope, ceiling = _activation_formula(module)
    row, col = (at[2], at[3]) if len(at) == 4 else (0, 0)
    return ActivationExplanation(
        layer=layer,
        channel=at[1],
        row=row,
        col=col,
        value=value,
        x=x,
        function=function,
        formula=formula,
        negative_slope=slope,
        ceiling=ceiling,
    )


def _window(
    plane: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """The cells of a 2-D map at the given rows and columns, ``fill`` where outside it."""
    height, width = plane.shape
    outside = ((rows < 0) | (rows >= height))[:, None] | ((cols < 0) | (cols >= width))[None, :]
    device = plane.device
    inside_rows = rows.clamp(0, height - 1).to(device)
    inside_cols = cols.clamp(0, width - 1).to(device)
    values = _numpy(plane[inside_rows][:, inside_cols])
    outside_np = outside.numpy()
    values[outside_np] = fill
    return values, outside_np


def _pool_rows(
    index: int, stride: int, padding: int, kernel: int, dilation: int = 1
) -> torch.Tensor:
    return index * stride - padding + dilation * torch.arange(kernel)


def _explain_maxpool(
    pool: nn.MaxPool2d, inp: torch.Tensor, at: tuple[int, ...], layer: str, value: float
) -> MaxPoolExplanation:
    _, channel, row, col = at
    kernel, padding, dilation = _pair(pool.kernel_size), _pair(pool.padding), _pair(pool.dilation)
    stride = _pair(pool.stride) if pool.stride else kernel
    rows = _pool_rows(row, stride[0], padding[0], kernel[0], dilation[0])
    cols = _pool_rows(col, stride[1], padding[1], kernel[1], dilation[1])
    window, outside = _window(inp[0, channel], rows, cols, -math.inf)
    winner = np.unravel_index(int(np.argmax(window)), window.shape)
    return MaxPoolExplanation(
        layer=layer,
        channel=channel,
        row=row,
        col=col,
        value=value,
        window=window,
        padding=outside,
        winner=(int(winner[0]), int(winner[1])),
        top=int(rows[0]),
        left=int(cols[0]),
    )


def _explain_avgpool(
    pool: nn.AvgPool2d, inp: torch.Tensor, at: tuple[int, ...], layer: str, value: float
) -> AvgPoolExplanation:
    _, channel, row, col = at
    kernel, padding = _pair(pool.kernel_size), _pair(pool.padding)
    stride = _pair(pool.stride) if pool.stride else kernel
    height, width = inp.shape[2:]
    rows = _pool_rows(row, stride[0], padding[0], kernel[0])
    cols = _pool_rows(col, stride[1], padding[1], kernel[1])
    window, outside = _window(inp[0, channel], rows, cols, 0.0)
    if pool.divisor_override:
        divisor = float(pool.divisor_override)
    elif pool.count_include_pad:  # padding counts, cells past it (ceil_mode) do not
        in_rows = int(((rows >= -padding[0]) & (rows < height + padding[0])).sum())
        in_cols = int(((cols >= -padding[1]) & (cols < width + padding[1])).sum())
        divisor = float(in_rows * in_cols)
    else:
        divisor = float((~outside).sum())
    total = float(window.astype(np.float64).sum())
    return AvgPoolExplanation(
        layer=layer,
        channel=channel,
        row=row,
        col=col,
        value=value,
        window=window,
        padding=outside,
        total=total,
        divisor=divisor,
        mean=total / divisor,
        top=int(rows[0]),
        left=int(cols[0]),
    )


def _explain_adaptive_avgpool(
    pool: nn.AdaptiveAvgPool2d, inp: torch.Tensor, at: tuple[int, ...], layer: str, value: float
) -> AvgPoolExplanation:
    _, channel, row, col = at
    height, width = inp.shape[2:]
    size = pool.output_size
    out_h, out_w = (size, size) if isinstance(size, int) else size
    out_h, out_w = out_h or height, out_w or width
    # torch's adaptive windows: from floor(i·H/h) to ceil((i+1)·H/h).
    top, bottom = (row * height) // out_h, -((-(row + 1) * height) // out_h)
    left, right = (col * width) // out_w, -((-(col + 1) * width) // out_w)
    window = _numpy(inp[0, channel, top:bottom, left:right])
    total = float(window.astype(np.float64).sum())
    return AvgPoolExplanation(
        layer=layer,
        channel=channel,
        row=row,
        col=col,
        value=value,
        window=window,
        padding=np.zeros(window.shape, dtype=bool),
        total=total,
        divisor=float(window.size),
        mean=total / window.size,
        top=top,
        left=left,
    )


def _explain_scores(logits: torch.Tensor, at: tuple[int, ...], layer: str) -> ScoresExplanation:
    values = logits[0].detach().double().cpu().numpy()
    shift = float(values.max())
    exponentials = np.exp(values - shift)
    total = float(exponentials.sum())
    probabilities = exponentials / total
    return ScoresExplanation(
        layer=layer,
        channel=at[1],
        row=0,
        col=0,
        value=float(values[at[1]]),
        logits=values,
        shift=shift,
        exponentials=exponentials,
        total=total,
        probabilities=probabilities,
        probability=float(probabilities[at[1]]),
    )


_EXPLAINED = "convolutions, batch norm, ReLU, max and average pooling, and the class scores"


def _other(
    layer: str, module: nn.Module, at: tuple[int, ...], value: float, note: str | None = None
) -> OtherExplanation:
    kind = type(module).__name__
    row, col = (at[2], at[3]) if len(at) == 4 else (0, 0)
    return OtherExplanation(
        layer=layer,
        channel=at[1],
        row=row,
        col=col,
        value=value,
        layer_type=kind,
        note=note
        or (
            f"This step is a {kind} layer, which is not explained here: only {_EXPLAINED} "
            "are shown step by step. Its value is shown alone."
        ),
    )


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


def _explain_module(
    source: PrivateCopy,
    x: torch.Tensor,
    path: str,
    layer: str,
    point: tuple[int, int, int],
) -> ValueExplanation:
    module = source.model.get_submodule(path)
    final_linear = isinstance(module, nn.Linear)
    # Stopped at the layer, unless a Linear must show it gives the model's output.
    probe, result = _run(source, x, path, not final_linear, (0, *point))
    output = tensor_output(path, probe.output)
    at = _point(output.shape, layer, *point)
    value = float(output[at])
    if final_linear and result is output:
        return _explain_scores(output, at, layer)
    inp = probe.inputs[0] if probe.inputs else None
    if isinstance(module, _ACTIVATIONS) and isinstance(inp, torch.Tensor):
        return _explain_activation_input(module, probe, inp, output, at, layer, value)
    if not isinstance(inp, torch.Tensor) or inp.dim() != 4 or len(at) != 4:
        return _other(layer, module, at, value)
    if isinstance(module, nn.Conv2d):
        return _explain_conv(module, inp, at, layer, value)
    if isinstance(module, nn.BatchNorm2d):
        return _explain_batchnorm(module, inp, at, layer, value)
    if isinstance(module, nn.MaxPool2d):
        return _explain_maxpool(module, inp, at, layer, value)
    if isinstance(module, nn.AvgPool2d):
        return _explain_avgpool(module, inp, at, layer, value)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return _explain_adaptive_avgpool(module, inp, at, layer, value)
    return _other(layer, module, at, value)


def _explain_activation_input(
    module: nn.Module,
    probe: _Probe,
    inp: torch.Tensor,
    output: torch.Tensor,
    at: tuple[int, ...],
    layer: str,
    value: float,
) -> ValueExplanation:
    """An activation, with its input read before an in-place write overwrote it."""
    if inp.shape != output.shape:
        return _other(layer, module, at, value)
    if inp.untyped_storage().data_ptr() != output.untyped_storage().data_ptr():
        return _explain_activation(module, float(inp[at]), at, layer, value)
    before = probe.before_write(inp)
    if before is None:
        return _other(
            layer,
            module,
            at,
            value,
            note=(
                f"This {type(module).__name__} writes its result over its input, and the input "
                "came from an operation outside any layer, so the value before it cannot be "
                "shown."
            ),
        )
    return _explain_activation(module, float(before), at, layer, value)


def explain_value(
    model: nn.Module | LoadedModel,
    layer: str,
    x: torch.Tensor,
    channel: int,
    row: int = 0,
    col: int = 0,
) -> ValueExplanation:
    """Explain how one value of a layer's output is computed, with the real numbers.

    One forward of the model's private copy runs up to the layer and stops there
    (to the end for the class scores). Only slices around the point are copied.

    Example:
        >>> from cnnlens import demo_dataset, explain_value, open_model
        >>> loaded, dataset = open_model("demo"), demo_dataset()
        >>> batch = loaded.batch(dataset.load_image(dataset.pick(128)))
        >>> why = explain_value(loaded, "conv_2", batch, channel=3, row=12, col=8)
        >>> bool(abs(why.products.sum() + why.bias - why.value) < 1e-4)  # the real arithmetic
        True

    Args:
        model: an ``nn.Module``, or what :func:`cnnlens.open_model` returns (its
            shared private copy is used; a plain module gets a temporary copy that
            shares its tensors and is left exactly as it was).
        layer: a qualified module name (``"features.1.block.0.0"``), a renamed
            layer (``"conv_2"``) where the model has them, or :data:`CLASS_SCORES`
            for the model's output.
        x: one preprocessed image, a 1×C×H×W batch (``loaded.batch(image)``).
        channel: the output channel (for the class scores, the class index).
        row, col: the point of the channel's map (0, 0 for the class scores).

    Returns:
        A :class:`ValueExplanation` of the layer's kind: :class:`ConvExplanation`,
        :class:`BatchNormExplanation`, :class:`ActivationExplanation`,
        :class:`MaxPoolExplanation`, :class:`AvgPoolExplanation`,
        :class:`ScoresExplanation` (the class scores, or a Linear layer whose output
        the model returns), or :class:`OtherExplanation` for any other layer.
        ``.kind`` names which. Values in a bfloat16 or float16 model agree with the
        formulas to that type's precision only.

    Raises:
        TypeError: if ``model`` is not a module, ``x`` not a tensor, or the point not ints.
        ValueError: for an unknown layer, a batch of more than one image, an input that
            does not fit the network, or a channel or point outside the layer's output
            (the message gives the valid range).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor batch, got {type(x).__name__}.")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(
            f"Explain one image at a time: pass a 1×C×H×W batch, not shape {tuple(x.shape)}."
        )
    with borrowed_copy(model, share_tensors=True) as (source, layers, _):
        if layer != CLASS_SCORES:
            return _explain_module(source, x, layers.path(layer), layer, (channel, row, col))
        _, logits = _run(source, x, None, False, ())
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(f"This model outputs {shape}, not class scores (1×classes).")
        return _explain_scores(logits, _point(logits.shape, layer, channel, row, col), layer)


@dataclass(frozen=True)
class PaddedInput:
    """One input channel of a Conv2d, padded as the layer pads it.

    Attributes:
        plane: the padded channel, float32.
        padding: True where a cell is padding, not the input.
    """

    plane: np.ndarray
    padding: np.ndarray

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return self.plane.nbytes + self.padding.nbytes


def padded_input(
    model: nn.Module | LoadedModel, layer: str, x: torch.Tensor, channel: int
) -> PaddedInput:
    """One input channel of a Conv2d as the layer sees it: padded in its own mode.

    The kernel of output point ``(row, col)`` covers the cells from
    ``(row * stride, col * stride)`` on, as :class:`ConvExplanation`'s ``top`` and
    ``left`` plus the padding put it.

    Args:
        model: an ``nn.Module`` or what :func:`cnnlens.open_model` returns.
        layer: a Conv2d layer's name.
        x: one preprocessed image, a 1×C×H×W batch.
        channel: the input channel.

    Returns:
        The padded channel and the mask of its padding cells.

    Raises:
        TypeError: if ``x`` is not a tensor.
        ValueError: for a layer that is not a Conv2d or does not run, a channel outside
            its input, or an ``x`` that is not one image (1×C×H×W) or holds NaN.
    """
    check_batch(x, one_image=True, name="padded_input")
    with borrowed_copy(model, share_tensors=True) as (source, layers, _):
        path = layers.path(layer)
        conv = source.model.get_submodule(path)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"{layer} is a {type(conv).__name__}, not a convolution.")
        if not 0 <= channel < conv.in_channels:
            raise ValueError(
                f"Input channel {channel} is out of range: {layer} reads {conv.in_channels} "
                f"channels (0 to {conv.in_channels - 1})."
            )
        probe, _ = _run(source, x, path, True, ())
    plane = probe.inputs[0][:, channel : channel + 1].float()
    top, bottom, left, right = _conv_padding(conv)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(plane, (left, right, top, bottom), mode=mode)[0, 0]
    height, width = plane.shape[2:]
    mask = np.ones(tuple(padded.shape), dtype=bool)
    mask[top : top + height, left : left + width] = False
    return PaddedInput(_numpy(padded), mask)
