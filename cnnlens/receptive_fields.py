"""Which input pixels each value of a layer sees: receptive fields on the executed graph.

:func:`trace_fields` runs one forward of a model whose tensors are on the meta device
(nothing is computed) under a torch dispatch mode that keeps, beside every tensor,
the box of input pixels each of its values depends on. Each aten operation passes the
boxes on by its own rule, so nested blocks, skip connections and concatenations need
nothing special:

- convolutions (transposed ones too), max, average and adaptive pooling, and nearest
  upsampling take the union of the boxes under each window; padding sees nothing;
- element-wise operations (a skip connection's addition, squeeze-and-excitation's
  multiplication, activations, batch norm with running statistics) take the union of
  their inputs' boxes, broadcast as the values are;
- views, permutes, slices, concatenation, padding, flips and rolls move the boxes with
  the values;
- reductions, softmax, layer and group norm, and matrix products unite the boxes along
  the dimensions they mix, so a global pool or a linear layer sees all its input saw.

Any other operation on values that depend on the input leaves its output's field
unknown, and everything computed from it. Each value keeps two boxes: the pixels of
the image it reads, and the span of its windows as if the image went on past its
edges (padding included), which gives the classic size of the field.

:class:`cnnlens.layers.Layers` gives these fields by layer name
(:meth:`~cnnlens.layers.Layers.receptive_field`, the layer table's column).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["ReceptiveField", "trace_fields"]

# A tensor's boxes: int64, shape broadcastable to (*tensor.shape, 8). Each value has two
# boxes, stored as (top, left, -bottom, -right) so that the union of boxes is their
# minimum: first the span of its windows, padding included, as if the image went on
# (the classic receptive field), then the pixels of the image it really reads. A box
# that holds nothing (a value that reads only padding) is _NOTHING everywhere.
_NOTHING = 1 << 40
_SIDES = 8


@dataclass(frozen=True, eq=False)
class ReceptiveField:
    """The part of the input each value of one layer's output sees.

    A value's box is the smallest rectangle around the pixels of the image its value
    depends on (the pixels whose gradient of it is not zero, for weights that do not
    cancel). For a map (a C×H×W output) the box of channel ``c`` at ``(row, col)`` is
    ``rows[c, row] × cols[c, col]``; any other output (a linear layer's) has one box.

    Attributes:
        input_size: ``(height, width)`` of the input image.
        size: the classic receptive field: input pixels per side that the windows of
            one value span at most, padding included (as if the image went on), capped
            at the input's side; for a plain stack, the textbook r += (k − 1)·d·j.
        whole: whether every value reads every pixel of the image.
        rows: int64, C×H×2 (1 along an axis where it does not change): each map row's
            first input row and the row after its last; first ≥ end where a value
            reads no pixel (only padding).
        cols: the same for map columns and input columns (C×W×2).
    """

    input_size: tuple[int, int]
    size: int
    whole: bool
    rows: np.ndarray
    cols: np.ndarray

    def box(
        self, row: int, col: int, channel: int | None = None
    ) -> tuple[int, int, int, int] | None:
        """The input pixels the value at a map position sees, as Pillow's crop box.

        Args:
            row, col: the position in the layer's map (0, 0 for an output without maps).
            channel: the channel; ``None`` for the union over all channels.

        Returns:
            ``(left, top, right, bottom)``, right and bottom exclusive; ``None`` when
            the value sees no pixel.

        Raises:
            ValueError: for a position or channel outside the layer's output.
        """
        rows = _along(self.rows, channel, row, "row")
        cols = _along(self.cols, channel, col, "column")
        top, bottom = int(rows[:, 0].min()), int(rows[:, 1].max())
        left, right = int(cols[:, 0].min()), int(cols[:, 1].max())
        if top >= bottom or left >= right:
            return None
        return left, top, right, bottom


def _along(bounds: np.ndarray, channel: int | None, index: int, what: str) -> np.ndarray:
    """The bounds (k×2) at one map row or column: of one channel, or of every channel."""
    channels, cells = bounds.shape[:2]
    if channel is not None and (channel < 0 or (channels > 1 and channel >= channels)):
        raise ValueError(f"Channel {channel} is outside this layer's {channels} channels.")
    if index < 0 or (cells > 1 and index >= cells):
        raise ValueError(f"Map {what} {index} is outside this layer's {cells} {what}s.")
    picked = bounds[:, min(index, cells - 1)]
    return picked if channel is None else picked[min(channel, channels - 1)][None]


def _nothing(ndim: int) -> np.ndarray:
    """The boxes of values that depend on no pixel, for a tensor of ``ndim`` dimensions."""
    return np.full((1,) * ndim + (_SIDES,), _NOTHING, dtype=np.int64)


def _pixels(height: int, width: int) -> np.ndarray:
    """The boxes of a 1×C×H×W input: each value sees its own pixel."""
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    boxes = np.empty((1, 1, height, width, _SIDES), dtype=np.int64)
    boxes[..., 0::4], boxes[..., 1::4] = rows[..., None], cols[..., None]
    boxes[..., 2::4], boxes[..., 3::4] = -(rows[..., None] + 1), -(cols[..., None] + 1)
    return boxes


def _align(boxes: np.ndarray, ndim: int) -> np.ndarray:
    """Boxes with leading axes added for a tensor of ``ndim`` dimensions, as broadcasting does."""
    return boxes.reshape((1,) * (ndim - boxes.ndim + 1) + boxes.shape)


def _union(parts: list[np.ndarray | None], ndim: int) -> np.ndarray | None:
    """What values made from all the parts see, broadcast as the values are."""
    if any(part is None or part.ndim - 1 > ndim for part in parts):
        return None
    result = _nothing(ndim)
    for part in parts:
        result = np.minimum(result, _align(part, ndim))
    return result


def _mix(boxes: np.ndarray | None, axes: tuple[int, ...]) -> np.ndarray | None:
    """Every value along ``axes`` sees what all of them see."""
    return None if boxes is None else boxes.min(axis=axes, keepdims=True)


def _gather(
    boxes: np.ndarray, axis: int, index: np.ndarray, valid: np.ndarray, cells: int
) -> np.ndarray:
    """Output cell ``o`` along ``axis`` sees the union of cells ``index[o][valid[o]]``.

    A cell past the edge (padding) reads no pixel of the image; for the span of the
    windows it counts as the grid of fields goes on there, by the step between the two
    cells at that edge, as if the image went on.

    Args:
        boxes: the input's boxes.
        axis: the axis the windows slide along.
        index, valid: the cells of each output cell's window (o × k) and which count.
        cells: the input's length along the axis (the boxes may hold 1 for all).
    """
    along = (1,) * axis + (-1,) + (1,) * (boxes.ndim - axis - 1)
    if boxes.shape[axis] == 1:  # the same boxes all along the axis, and past its edges
        inside = valid & (index >= 0) & (index < cells)
        span = np.where(valid.any(axis=1).reshape(along), boxes[..., :4], _NOTHING)
        real = np.where(inside.any(axis=1).reshape(along), boxes[..., 4:], _NOTHING)
        return np.concatenate([span, real], axis=-1)
    result = None
    for k in range(index.shape[1]):  # one tap of every window at a time: small temporaries
        part = np.take(boxes, index[:, k].clip(0, cells - 1), axis=axis)
        past = np.where(index[:, k] < 0, index[:, k], np.maximum(index[:, k] - (cells - 1), 0))
        if past.any():
            part = _past_edge(boxes, part, axis, past)
        if not valid[:, k].all():
            part = np.where(valid[:, k].reshape(along), part, _NOTHING)
        result = part if result is None else np.minimum(result, part)
    return result


def _past_edge(boxes: np.ndarray, part: np.ndarray, axis: int, past: np.ndarray) -> np.ndarray:
    """The boxes of cells past the edge: no pixel read; the span goes on by the edge's step."""
    where = (slice(None),) * axis + (np.nonzero(past)[0],)
    shift = past[past != 0].reshape((-1,) + (1,) * (boxes.ndim - axis - 1))
    low = np.take(boxes, [1], axis=axis) - np.take(boxes, [0], axis=axis)
    high = np.take(boxes, [-1], axis=axis) - np.take(boxes, [-2], axis=axis)
    step = np.where(shift < 0, low, high)[..., :4]
    span = part[where][..., :4] + shift * step
    lost = (np.abs(span) >= _NOTHING // 2).any(axis=-1, keepdims=True)  # from an empty edge
    part = part.copy()
    part[where] = np.concatenate(
        [np.where(lost, _NOTHING, span), np.full_like(span, _NOTHING)], axis=-1
    )
    return part


def _windows(
    n_out: int, kernel: int, stride: int, padding: int, dilation: int
) -> tuple[np.ndarray, np.ndarray]:
    """The cells under each output cell's window (a convolution's or a pool's), padding too."""
    index = np.arange(n_out)[:, None] * stride - padding + dilation * np.arange(kernel)[None, :]
    return index, np.ones(index.shape, dtype=bool)


def _transposed_windows(
    n_out: int, kernel: int, stride: int, padding: int, dilation: int
) -> tuple[np.ndarray, np.ndarray]:
    """The cells a transposed convolution spreads onto each output cell."""
    reach = np.arange(n_out)[:, None] + padding - dilation * np.arange(kernel)[None, :]
    return reach // stride, reach % stride == 0


def _adaptive_windows(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's adaptive pooling windows: from floor(o·n/m) to ceil((o+1)·n/m)."""
    cells = np.arange(n_out)
    starts, ends = (cells * n_in) // n_out, -((-(cells + 1) * n_in) // n_out)
    index = starts[:, None] + np.arange(int((ends - starts).max()))[None, :]
    return index, index < ends[:, None]


def _at(value: Any, i: int) -> int:
    """Item ``i`` of a per-dimension setting given as one int or a list."""
    if isinstance(value, (list, tuple)):
        return int(value[i] if len(value) > 1 else value[0])
    return int(value)


def _dim(dim: int, ndim: int) -> int:
    """A dimension counted from the front."""
    return dim + ndim if dim < 0 else dim


def _dims(dims: Any, ndim: int) -> tuple[int, ...]:
    """Dimensions as given to a reduction; none given means all."""
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        return tuple(range(ndim))
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return tuple(sorted(_dim(int(d), ndim) for d in dims))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a value made of tuples and lists."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


# ---- the rules: each takes the boxes lookup, the op's arguments by name and its output ----

Of = Callable[[torch.Tensor], "np.ndarray | None"]


def _pointwise(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """Element-wise: each value sees what the values it is made of see."""
    return _union([of(t) for t in _tensors(list(a.values()))], next(_tensors(out)).dim())


def _other(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """An operation without a rule: known only when each input has one box for all its
    values (a pooled vector, a constant), which whatever it computes cannot widen."""
    parts = [of(t) for t in _tensors(list(a.values()))]
    if any(part is None or part.shape[:-1] != (1,) * (part.ndim - 1) for part in parts):
        return None
    return _union([part.reshape(_SIDES) for part in parts], 0)


def _same(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """A copy, an alias or a broadcast of the first input."""
    return of(next(_tensors(list(a.values()))))


def _constant(of: Of, a: dict[str, Any], out: Any) -> np.ndarray:
    """A new tensor of zeros, ones or a fill value: it depends on no pixel."""
    return _nothing(0)


def _copy(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """``copy_``: the tensor now holds its source's values."""
    source = a["src"] if "src" in a else a["other"]
    return of(source) if isinstance(source, torch.Tensor) else _nothing(0)


def _conv(of: Of, a: dict[str, Any], out: torch.Tensor) -> np.ndarray | None:
    """A convolution (transposed too): its windows along each spatial axis, its groups."""
    x, weight, boxes = a["input"], a["weight"], of(a["input"])
    if boxes is None:
        return None
    groups, channels = int(a["groups"]), out.shape[1]
    if boxes.shape[1] > 1 and groups == 1:  # each output channel sees every input channel
        boxes = _mix(boxes, (1,))
    elif boxes.shape[1] > 1:  # or those of its group
        grouped = boxes.reshape(boxes.shape[0], groups, -1, *boxes.shape[2:]).min(axis=2)
        boxes = np.repeat(grouped, channels // groups, axis=1)
    windows = _transposed_windows if a["transposed"] else _windows
    for i, axis in enumerate(range(2, x.dim())):
        index, valid = windows(
            out.shape[axis],
            weight.shape[2 + i],
            _at(a["stride"], i),
            _at(a["padding"], i),
            _at(a["dilation"], i),
        )
        boxes = _gather(boxes, axis, index, valid, x.shape[axis])
    return boxes


def _pool(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """Max or average pooling: the union under each window."""
    x, boxes = a["self"], of(a["self"])
    kernel = a["kernel_size"]
    stride = a["stride"] or kernel
    for i, axis in enumerate((x.dim() - 2, x.dim() - 1)):
        if boxes is None:
            return None
        index, valid = _windows(
            next(_tensors(out)).shape[axis],
            _at(kernel, i),
            _at(stride, i),
            _at(a["padding"], i),
            _at(a.get("dilation", 1), i),
        )
        boxes = _gather(boxes, axis, index, valid, x.shape[axis])
    return boxes


def _adaptive(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """Adaptive pooling: the union under each of torch's adaptive windows."""
    x, boxes = a["self"], of(a["self"])
    for axis in (x.dim() - 2, x.dim() - 1):
        if boxes is None:
            return None
        index, valid = _adaptive_windows(next(_tensors(out)).shape[axis], x.shape[axis])
        boxes = _gather(boxes, axis, index, valid, x.shape[axis])
    return boxes


def _nearest(of: Of, a: dict[str, Any], out: torch.Tensor) -> np.ndarray | None:
    """Nearest upsampling: output cell o reads input cell min(floor(o·scale), n-1)."""
    x = a["self"] if "self" in a else a["input"]
    boxes = of(x)
    scales = a.get("scale_factors") or [a.get("scales_h"), a.get("scales_w")]
    for i, axis in enumerate((x.dim() - 2, x.dim() - 1)):
        if boxes is None:
            return None
        n_in, n_out = x.shape[axis], out.shape[axis]
        scale = 1 / scales[i] if scales[i] else n_in / n_out
        index = np.minimum(np.floor(np.arange(n_out) * scale).astype(np.int64), n_in - 1)
        boxes = _gather(boxes, axis, index[:, None], np.ones((n_out, 1), dtype=bool), n_in)
    return boxes


def _reduce(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """A reduction (mean, sum, max, a norm): each result sees all the values it reduces."""
    x, boxes = a["self"], of(a["self"])
    axes = _dims(a.get("dim"), x.dim())
    mixed = _mix(boxes, axes)
    if mixed is None or a.get("keepdim"):
        return mixed
    return mixed.reshape(tuple(n for i, n in enumerate(mixed.shape) if i not in axes))


def _softmax(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """Softmax: each value sees everything along its dimension."""
    return _mix(of(a["self"]), (_dim(int(a["dim"]), a["self"].dim()),))


def _layer_norm(of: Of, a: dict[str, Any], out: Any) -> list[np.ndarray | None]:
    """Layer norm: each value sees everything along the normalized dimensions."""
    ndim = a["input"].dim()
    return [_mix(of(a["input"]), tuple(range(ndim - len(a["normalized_shape"]), ndim))), None, None]


def _group_norm(of: Of, a: dict[str, Any], out: Any) -> list[np.ndarray | None]:
    """Group norm: each value sees its whole sample (its group's channels, the map)."""
    return [_mix(of(a["input"]), tuple(range(1, a["input"].dim()))), None, None]


def _batch_norm(of: Of, a: dict[str, Any], out: Any) -> list[np.ndarray | None]:
    """Running statistics act value by value; a batch's own mix the batch and the map."""
    boxes, ndim = of(a["input"]), a["input"].dim()
    if a.get("training", False) or a.get("running_mean") is None:
        boxes = _mix(boxes, tuple(i for i in range(ndim) if i != 1))
    return [boxes, None, None]


def _matmul(of: Of, a: dict[str, Any], out: torch.Tensor) -> np.ndarray | None:
    """mm, bmm and their ``add`` forms: a row of the first times a column of the second."""
    first, second = (a["mat1"], a["mat2"]) if "mat1" in a else (a["self"], a["mat2"])
    if "batch1" in a:
        first, second = a["batch1"], a["batch2"]
    rows, cols = of(first), of(second)
    if rows is None or cols is None:
        return None
    parts = [_mix(rows, (first.dim() - 1,)), _mix(cols, (second.dim() - 2,))]
    if "mat1" in a or "batch1" in a:
        parts.append(of(a["self"]))
    return _union(parts, out.dim())


def _reshape(of: Of, a: dict[str, Any], out: torch.Tensor) -> np.ndarray | None:
    """A view: the boxes of dimensions merged or split are merged or split alike."""
    x, boxes = a["self"], of(a["self"])
    if boxes is None:
        return None
    groups = _groups(tuple(x.shape), tuple(out.shape))
    if groups is None:
        return None
    full, target = list(boxes.shape[:-1]), []
    for (i0, i1), (j0, j1) in groups:
        if all(boxes.shape[k] == 1 for k in range(i0, i1)):
            target += [1] * (j1 - j0)
        else:
            full[i0:i1] = x.shape[i0:i1]
            target += list(out.shape[j0:j1])
    return np.broadcast_to(boxes, (*full, _SIDES)).reshape(*target, _SIDES)


def _groups(old: tuple[int, ...], new: tuple[int, ...]):
    """Runs of dimensions of two shapes with equal products, as a view maps them."""
    groups, i, j = [], 0, 0
    while i < len(old) or j < len(new):
        i0, j0, a, b = i, j, 1, 1
        if i < len(old):
            a, i = old[i], i + 1
        if j < len(new):
            b, j = new[j], j + 1
        while a != b:
            if a < b and i < len(old):
                a, i = a * old[i], i + 1
            elif b < a and j < len(new):
                b, j = b * new[j], j + 1
            else:
                return None
        groups.append(((i0, i), (j0, j)))
    return groups


def _permute(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """The boxes' axes move with the tensor's."""
    boxes, ndim = of(a["self"]), a["self"].dim()
    if boxes is None:
        return None
    order = [_dim(int(d), ndim) for d in a["dims"]]
    return np.transpose(boxes, (*order, ndim))


def _transpose(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """``transpose`` and ``t``: two axes swap."""
    boxes, ndim = of(a["self"]), a["self"].dim()
    if boxes is None or ndim < 2:
        return boxes
    first, second = (
        (_dim(int(a["dim0"]), ndim), _dim(int(a["dim1"]), ndim)) if "dim0" in a else (0, 1)
    )
    return np.swapaxes(boxes, first, second)


def _slice(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """A slice keeps the boxes of the cells it keeps."""
    boxes, axis = of(a["self"]), _dim(int(a["dim"]), a["self"].dim())
    if boxes is None or boxes.shape[axis] == 1:
        return boxes
    cut = [slice(None)] * boxes.ndim
    cut[axis] = slice(a["start"], a["end"], a["step"])
    return boxes[tuple(cut)]


def _select(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """``select``: one index of an axis, which goes."""
    boxes, axis = of(a["self"]), _dim(int(a["dim"]), a["self"].dim())
    if boxes is None:
        return None
    return np.take(boxes, 0 if boxes.shape[axis] == 1 else int(a["index"]), axis=axis)


def _split(of: Of, a: dict[str, Any], out: Any) -> list[np.ndarray | None]:
    """split and unbind: each piece is a slice of the input (a select for unbind)."""
    x = a["self"]
    boxes, axis = of(x), _dim(int(a.get("dim") or 0), x.dim())
    pieces: list[np.ndarray | None] = []
    start = 0
    for piece in out:
        unbound = piece.dim() < x.dim()
        width = 1 if unbound else piece.shape[axis]
        part = boxes
        if part is not None and part.shape[axis] > 1:
            part = np.take(part, np.arange(start, start + width), axis=axis)
        if part is not None and unbound:
            part = np.take(part, 0, axis=axis)
        pieces.append(part)
        start += width
    return pieces


def _cat(of: Of, a: dict[str, Any], out: torch.Tensor) -> np.ndarray | None:
    """Concatenation: the boxes are joined as the values are (channels keep their own)."""
    tensors = [t for t in a["tensors"] if t.dim() == out.dim()]
    axis, parts = _dim(int(a.get("dim", 0)), out.dim()), [of(t) for t in tensors]
    if any(part is None for part in parts):
        return None
    parts = [_align(part, out.dim()) for part in parts]
    if all(p.shape[axis] == 1 and p.shape == parts[0].shape for p in parts) and all(
        np.array_equal(p, parts[0]) for p in parts
    ):
        return parts[0]
    shape = [max(p.shape[k] for p in parts) for k in range(out.dim())]
    pieces = []
    for tensor, part in zip(tensors, parts, strict=True):
        shape[axis] = tensor.shape[axis]
        pieces.append(np.broadcast_to(part, (*shape, _SIDES)))
    return np.concatenate(pieces, axis=axis)


def _pad(of: Of, a: dict[str, Any], out: torch.Tensor) -> np.ndarray | None:
    """Constant padding: new cells lie past the edge (see :func:`_gather`); negative crops."""
    x, boxes = a["self"], of(a["self"])
    pad = list(a["pad"])
    for k in range(len(pad) // 2):
        if boxes is None:
            return None
        axis = x.dim() - 1 - k
        index = np.arange(out.shape[axis])[:, None] - pad[2 * k]
        boxes = _gather(boxes, axis, index, np.ones(index.shape, dtype=bool), x.shape[axis])
    return boxes


def _edge_pad(mode: str) -> Callable[[Of, dict[str, Any], Any], np.ndarray | None]:
    """Reflection or replication padding: each new cell copies an input cell."""

    def rule(of: Of, a: dict[str, Any], out: torch.Tensor) -> np.ndarray | None:
        x, boxes = a["self"], of(a["self"])
        pad = list(a["padding"])
        for k in range(len(pad) // 2):
            if boxes is None:
                return None
            axis, n_in = x.dim() - 1 - k, x.shape[x.dim() - 1 - k]
            index = np.arange(out.shape[axis]) - pad[2 * k]
            if mode == "reflect":
                index = np.abs(index)
                index = np.where(index >= n_in, 2 * (n_in - 1) - index, index)
            index = index.clip(0, n_in - 1)
            ones = np.ones((len(index), 1), dtype=bool)
            boxes = _gather(boxes, axis, index[:, None], ones, n_in)
        return boxes

    return rule


def _roll(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """A roll moves the boxes round with the values; one over the flattened tensor mixes all."""
    boxes, ndim = of(a["self"]), a["self"].dim()
    if boxes is None or not a["dims"]:
        return _mix(boxes, tuple(range(ndim)))
    for shift, dim in zip(a["shifts"], a["dims"], strict=True):
        boxes = np.roll(boxes, int(shift), axis=_dim(int(dim), ndim))
    return boxes


def _flip(of: Of, a: dict[str, Any], out: Any) -> np.ndarray | None:
    """A flip reverses the boxes along its axes."""
    boxes = of(a["self"])
    return None if boxes is None else np.flip(boxes, _dims(a["dims"], a["self"].dim()))


_aten = torch.ops.aten
_RULES: dict[Any, Callable[[Of, dict[str, Any], Any], Any]] = {
    _aten.convolution: _conv,
    _aten.max_pool2d_with_indices: _pool,
    _aten.max_pool2d: _pool,
    _aten.avg_pool2d: _pool,
    _aten._adaptive_avg_pool2d: _adaptive,
    _aten.adaptive_avg_pool2d: _adaptive,
    _aten.adaptive_max_pool2d: _adaptive,
    _aten.upsample_nearest2d: _nearest,
    _aten.mean: _reduce,
    _aten.sum: _reduce,
    _aten.amax: _reduce,
    _aten.amin: _reduce,
    _aten.linalg_vector_norm: _reduce,
    _aten._softmax: _softmax,
    _aten._log_softmax: _softmax,
    _aten._safe_softmax: _softmax,
    _aten.native_layer_norm: _layer_norm,
    _aten.native_group_norm: _group_norm,
    _aten.native_batch_norm: _batch_norm,
    _aten._native_batch_norm_legit_no_training: _batch_norm,
    _aten._native_batch_norm_legit: _batch_norm,
    _aten.mm: _matmul,
    _aten.addmm: _matmul,
    _aten.bmm: _matmul,
    _aten.baddbmm: _matmul,
    _aten.view: _reshape,
    _aten._unsafe_view: _reshape,
    _aten.reshape: _reshape,
    _aten.squeeze: _reshape,
    _aten.unsqueeze: _reshape,
    _aten.permute: _permute,
    _aten.transpose: _transpose,
    _aten.t: _transpose,
    _aten.slice: _slice,
    _aten.select: _select,
    _aten.split: _split,
    _aten.split_with_sizes: _split,
    _aten.unbind: _split,
    _aten.cat: _cat,
    _aten.constant_pad_nd: _pad,
    _aten.reflection_pad2d: _edge_pad("reflect"),
    _aten.replication_pad2d: _edge_pad("replicate"),
    _aten.roll: _roll,
    _aten.flip: _flip,
    _aten.hardswish: _pointwise,  # element-wise ops torch does not tag as such
    _aten.hardswish_: _pointwise,
    _aten._prelu_kernel: _pointwise,
    _aten.log_sigmoid_forward: _pointwise,
    _aten.masked_fill: _pointwise,
    _aten.where: _pointwise,
    _aten.native_dropout: _pointwise,
    _aten.expand: _same,
    _aten.alias: _same,
    _aten.detach: _same,
    _aten._to_copy: _same,
    _aten.lift_fresh: _same,
    _aten.copy_: _copy,
    _aten.zero_: _constant,
    _aten.fill_: _constant,
    _aten.new_zeros: _constant,
    _aten.new_ones: _constant,
    _aten.new_empty: _constant,
    _aten.new_full: _constant,
    _aten.zeros_like: _constant,
    _aten.ones_like: _constant,
    _aten.empty_like: _constant,
    _aten.full_like: _constant,
}


def _rule(func: Any) -> Callable[[Of, dict[str, Any], Any], Any]:
    """The rule of an aten operation: its own, element-wise (in place too), or none."""
    found = _RULES.get(func.overloadpacket)
    if found is not None:
        return found
    name = func._opname
    if torch.Tag.pointwise in func.tags:
        return _pointwise
    if name.endswith("_") and hasattr(_aten, name[:-1]):  # relu_, hardswish_, add_...
        packet = getattr(_aten, name[:-1])
        twin = getattr(packet, func._overloadname, None)
        if twin is not None and torch.Tag.pointwise in twin.tags:
            return _pointwise
    return _other


def _arguments(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """An operation's arguments by name, defaults included."""
    named = {
        arg.name: arg.default_value if arg.has_default_value() else None
        for arg in func._schema.arguments
    }
    named.update(zip((arg.name for arg in func._schema.arguments), args, strict=False))
    named.update(kwargs)
    return named


class _Boxes(TorchDispatchMode):
    """Keeps each tensor's boxes during one forward, and passes them on, op by op.

    A tensor not seen before (a weight, a constant) depends on no pixel. Boxes are
    kept by the tensor's id beside a weak reference, dropped when the tensor goes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[int, tuple[weakref.ref, np.ndarray | None]] = {}

    def of(self, tensor: torch.Tensor) -> np.ndarray | None:
        """A tensor's boxes: ``None`` when unknown, nothing seen for a tensor not met."""
        entry = self.known.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return _nothing(tensor.dim())
        return entry[1]

    def keep(self, tensor: torch.Tensor, boxes: np.ndarray | None) -> None:
        """Remember a tensor's boxes while it lives."""
        key = id(tensor)
        if boxes is not None:
            boxes = _align(boxes, tensor.dim()) if boxes.ndim - 1 <= tensor.dim() else None
        if boxes is not None and any(
            b not in (1, n) for b, n in zip(boxes.shape[:-1], tensor.shape, strict=True)
        ):
            boxes = None  # a rule that does not fit its output: unknown, never wrong

        def forget(ref: weakref.ref, key: int = key) -> None:
            if self.known.get(key, (None,))[0] is ref:
                del self.known[key]

        self.known[key] = (weakref.ref(tensor, forget), boxes)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = list(_tensors(out))
        if outputs:
            found = _rule(func)(self.of, _arguments(func, args, kwargs), out)
            if not isinstance(found, list):
                found = [found] * len(outputs)
            for tensor, boxes in zip(outputs, found, strict=False):
                self.keep(tensor, boxes)
        return out


def _field(
    boxes: np.ndarray | None, tensor: torch.Tensor, input_size: tuple[int, int]
) -> ReceptiveField | None:
    """A module output's field: its classic size capped at the image, and the pixels it
    reads per channel, map row and column for a map, else one box."""
    if boxes is None:
        return None
    boxes = _align(boxes, tensor.dim())
    height, width = input_size
    span = boxes[..., :4]
    spanned = span[..., 0] < -span[..., 2]
    heights = np.where(spanned, np.minimum(-span[..., 2] - span[..., 0], height), 0)
    widths = np.where(spanned, np.minimum(-span[..., 3] - span[..., 1], width), 0)
    real = boxes[..., 4:]
    whole = bool((real == np.array([0, 0, -height, -width])).all())
    if tensor.dim() == 4:
        real = real[0]
    else:
        real = real.min(axis=tuple(range(tensor.dim()))).reshape(1, 1, 1, 4)
    rows = np.stack([real[..., 0].min(axis=2), -real[..., 2].min(axis=2)], axis=-1)
    cols = np.stack([real[..., 1].min(axis=1), -real[..., 3].min(axis=1)], axis=-1)
    size = int(max(heights.max(), widths.max()))
    return ReceptiveField(input_size, size, whole, rows, cols)


def trace_fields(
    probe: nn.Module, input_shape: tuple[int, int, int]
) -> dict[str, ReceptiveField | None]:
    """The receptive field of every module's output, from one forward on the meta device.

    Args:
        probe: the model with its parameters and buffers on the meta device
            (:func:`cnnlens.layers.meta_copy`), in the mode to trace (eval); it gets
            forward hooks for this call, removed afterwards.
        input_shape: ``(channels, height, width)`` of one input image.

    Returns:
        Each module's field by qualified name, for its first call (a module called
        twice, like ResNet's shared ReLU, gives its first call's); ``None`` where the
        field is unknown. A module the forward does not reach is left out, as is every
        module after a failure of the forward (an input that does not fit a classifier).
    """
    mode = _Boxes()
    found: dict[str, ReceptiveField | None] = {}
    size = (int(input_shape[1]), int(input_shape[2]))

    def record(path: str, module: nn.Module, args: Any, output: Any) -> None:
        tensor = next(_tensors(output), None)
        if path not in found and tensor is not None:
            found[path] = _field(mode.of(tensor), tensor, size)

    handles = [
        module.register_forward_hook(lambda m, a, o, p=path: record(p, m, a, o))
        for path, module in probe.named_modules()
        if path
    ]
    x = torch.zeros((1, *input_shape), device="meta")
    mode.keep(x, _pixels(*size))
    try:
        with torch.no_grad(), mode:
            probe(x)
    except (RuntimeError, TypeError, ValueError, AssertionError, LookupError, ArithmeticError):
        pass  # the fields found so far hold; the modules after the failure have none
    finally:
        for handle in handles:
            handle.remove()
    return found
