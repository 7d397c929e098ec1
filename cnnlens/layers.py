"""What a model's layers are called: one object answers it for every kind of network.

A sequential CNN (an ``nn.Sequential``, or a model whose ``.features`` is one,
such as VGG or the demo CNN) has *renamed* layers, as in the original recipe:
each layer is named by its kind and the conv block it belongs to (``conv_1``,
``relu_1``, ``pool_1``, ``conv_2``, ...). Unlike the original recipe, no layer is
dropped and the ReLU after ``conv_1`` is ``relu_1``. Any other network keeps the
qualified names ``named_modules()`` gives (``layer1.0.conv1``).

:class:`Layers` is the one place that tells the two apart. It lists the names,
checks a choice of targets (with close matches for a typo), finds the module a
name stands for, and describes every layer in a table with output shapes,
parameters, receptive fields and map memory.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import pandas as pd
import torch
from torch import nn

__all__ = ["TABLE_COLUMNS", "Layers", "layer_names", "module_names"]

TABLE_COLUMNS = [
    "layer",
    "depth",
    "type",
    "children",
    "output shape",
    "parameters",
    "receptive field",
    "map bytes",
]
"""The columns of :meth:`Layers.table`, in order."""

# Short names for the layer kinds of the original recipe; any other layer keeps its class name.
_KIND_NAMES: dict[type[nn.Module], str] = {
    nn.Conv2d: "conv",
    nn.BatchNorm2d: "bn",
    nn.ReLU: "relu",
    nn.MaxPool2d: "pool",
}


def _stack_of(model: nn.Module) -> tuple[nn.Sequential, str] | None:
    """The sequential stack of a model and its qualified prefix, or ``None``."""
    if isinstance(model, nn.Sequential):
        return model, ""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return features, "features."
    return None


def _renamed(layers: Sequence[nn.Module]) -> list[str]:
    names: list[str] = []
    taken: set[str] = set()
    block = 0
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            block += 1
        kind = _KIND_NAMES.get(type(layer), type(layer).__name__.lower())
        # Layers before the first conv belong to the block that conv opens.
        base = f"{kind}_{max(block, 1)}"
        name, repeat = base, 1
        while name in taken:
            repeat += 1
            name = f"{base}_{repeat}"
        taken.add(name)
        names.append(name)
    return names


def _single(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


def _receptive_fields(stack: nn.Sequential, names: list[str]) -> dict[str, int | None]:
    """Input pixels per side that one value of each layer sees, from kernels and strides.

    ``None`` after a nested block or adaptive pooling, which have no single kernel to follow.
    """
    fields: dict[str, int | None] = {}
    field: int | None = 1
    jump = 1
    for name, layer in zip(names, stack, strict=True):
        kernel = getattr(layer, "kernel_size", None)
        if kernel is not None and field is not None:
            dilation = _single(getattr(layer, "dilation", 1))
            field += (dilation * (_single(kernel) - 1)) * jump
            jump *= _single(getattr(layer, "stride", 1) or _single(kernel))
        elif any(True for _ in layer.children()) or isinstance(layer, nn.AdaptiveAvgPool2d):
            field = None
        fields[name] = field
    return fields


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of the model with every parameter and buffer on the meta device.

    Copying the real tensors first would briefly double the model's memory.
    """
    memo: dict[int, Any] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(
            torch.empty_like(param, device="meta"), requires_grad=param.requires_grad
        )
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo)


def _output_shapes(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, torch.Size]:
    """Each submodule's output shape (without the batch) for one input, from a meta forward.

    A module the forward does not call, or whose output is not a tensor, is left
    out; a module called twice keeps its first call's shape.
    """
    probe = _meta_copy(model).eval()
    shapes: dict[str, torch.Size] = {}

    def record(name: str, module: nn.Module, args: Any, output: Any) -> None:
        if name not in shapes and isinstance(output, torch.Tensor):
            shapes[name] = output.shape[1:]

    for name, module in probe.named_modules():
        if name:
            module.register_forward_hook(partial(record, name))
    try:
        with torch.no_grad():
            probe(torch.zeros((1, *input_shape), device="meta"))
    except RuntimeError as error:
        raise ValueError(
            f"An input of shape {tuple(input_shape)} does not fit this network: {error}"
        ) from error
    return shapes


class Layers:
    """The layers of one model: their names, the modules they stand for, and a table.

    Args:
        model: any ``nn.Module``.
        renamed: name the layers of a sequential stack by kind and block
            (``conv_1``); ``False`` for qualified module names (``layer1.0.conv1``).
            By default, renamed when the model is an ``nn.Sequential`` or has one as
            ``.features``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, or ``renamed=True`` for a
            model without a sequential stack.

    Attributes:
        renamed: whether the names are renamed layers rather than module names.
        names: every layer name, in network order (renamed) or ``named_modules()``
            order (qualified); the root module itself is left out.
    """

    def __init__(self, model: nn.Module, renamed: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected a torch nn.Module, got {type(model).__name__}.")
        stack = _stack_of(model)
        if renamed and stack is None:
            raise TypeError(
                f"{type(model).__name__} is not a sequential CNN. Renamed layers need an "
                "nn.Sequential (such as torchvision's vgg16().features) or a model whose "
                ".features is one (vgg, alexnet, squeezenet, the demo CNN)."
            )
        self.model = model
        self.renamed = stack is not None if renamed is None else renamed
        if self.renamed:
            assert stack is not None
            self._stack, prefix = stack
            self.names = _renamed(list(self._stack))
            self._paths = {name: f"{prefix}{i}" for i, name in enumerate(self.names)}
        else:
            self.names = [name for name, _ in model.named_modules() if name]
            self._paths = {name: name for name in self.names}

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __repr__(self) -> str:
        kind = "renamed" if self.renamed else "qualified"
        return f"Layers({type(self.model).__name__}, {len(self)} {kind} names)"

    @property
    def stack(self) -> list[nn.Module]:
        """The layers of the sequential stack, in order (renamed layers only).

        Raises:
            TypeError: for qualified module names.
        """
        if not self.renamed:
            raise TypeError("Only renamed layers come from a sequential stack.")
        return list(self._stack)

    def check(self, targets: str | Iterable[str]) -> tuple[str, ...]:
        """Validate a choice of layers and put it in the order of :attr:`names`.

        Args:
            targets: one layer name or several; duplicates are dropped.

        Returns:
            The chosen names, in network order.

        Raises:
            TypeError: if targets are not strings.
            ValueError: if none is given or one is not a layer of the model; the
                message lists close matches (qualified names) or every layer (renamed).
        """
        if isinstance(targets, str):
            targets = [targets]
        try:
            wanted = list(targets)
        except TypeError:
            raise TypeError(
                f"targets must be a layer name or a list of names, got {type(targets).__name__}."
            ) from None
        if not wanted:
            raise ValueError(f"Choose at least one target layer. {self._valid_hint()}")
        for name in wanted:
            if not isinstance(name, str):
                raise TypeError(f"Layer names are strings, got {name!r}.")
        unknown = [name for name in wanted if name not in self._paths]
        if unknown:
            raise ValueError(self._unknown_message(unknown))
        chosen = set(wanted)
        return tuple(name for name in self.names if name in chosen)

    def _valid_hint(self) -> str:
        if self.renamed:
            return f"Valid layers: {', '.join(self.names)}."
        return "cnnlens.module_names(model) lists every valid name."

    def _unknown_message(self, unknown: list[str]) -> str:
        if self.renamed:
            return f"Unknown layer {', '.join(map(repr, unknown))}. {self._valid_hint()}"
        name = unknown[0]
        close = difflib.get_close_matches(name, self.names, n=5)
        hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
        return f"Unknown module {name!r}.{hint} {self._valid_hint()}"

    def path(self, name: str) -> str:
        """The qualified module name a layer stands for (``conv_2`` → ``features.2``).

        Raises:
            ValueError: for a name that is not a layer of the model.
        """
        return self._paths[self.check(name)[0]]

    def module(self, name: str, model: nn.Module | None = None) -> nn.Module:
        """The module a layer name stands for, in this model or in a copy of it.

        Raises:
            ValueError: for a name that is not a layer of the model.
        """
        return (model if model is not None else self.model).get_submodule(self.path(name))

    def receptive_field(self, name: str) -> int | None:
        """Input pixels per side that one value of a layer sees, where it can be derived.

        Known for renamed layers (from kernel sizes, strides and dilations alone),
        ``None`` for qualified module names and after nested blocks.
        """
        name = self.check(name)[0]
        if not self.renamed:
            return None
        return _receptive_fields(self._stack, self.names)[name]

    def table(self, input_shape: tuple[int, int, int]) -> pd.DataFrame:
        """Describe each layer for one input.

        Shapes come from a forward on the meta device, so nothing is computed and
        the model (its BatchNorm statistics included) is not touched.

        Args:
            input_shape: ``(channels, height, width)`` of one input image.

        Returns:
            One row per layer, with the columns of :data:`TABLE_COLUMNS`: ``layer``,
            ``depth`` (dots in a qualified name; 0 for renamed layers), ``type``,
            ``children`` (whether it has submodules), ``output shape`` (such as
            ``"64×56×56"``, without the batch; ``""`` when the forward does not call
            it or its output is not a tensor), ``parameters`` (its own and its
            descendants'), ``receptive field`` (input pixels per side, or ``None``)
            and ``map bytes`` (one image's output in float32; 0 without a shape).

        Raises:
            ValueError: if the input shape does not fit the network.
        """
        if self.renamed:  # the stack alone: a classifier may want another input size
            shapes = _output_shapes(self._stack, input_shape)
            fields = _receptive_fields(self._stack, self.names)
            keys = {name: str(i) for i, name in enumerate(self.names)}
        else:
            shapes = _output_shapes(self.model, input_shape)
            fields, keys = {}, self._paths
        rows = []
        for name in self.names:
            module, shape = self.module(name), shapes.get(keys[name])
            rows.append(
                {
                    "layer": name,
                    "depth": 0 if self.renamed else name.count("."),
                    "type": type(module).__name__,
                    "children": next(module.children(), None) is not None,
                    "output shape": "×".join(map(str, shape)) if shape is not None else "",
                    "parameters": sum(p.numel() for p in module.parameters()),
                    "receptive field": fields.get(name),
                    "map bytes": shape.numel() * 4 if shape is not None else 0,
                }
            )
        return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def layer_names(model: nn.Module) -> list[str]:
    """List the renamed layers of a sequential CNN, in network order.

    Args:
        model: an ``nn.Sequential`` or a model whose ``.features`` is one.

    Returns:
        Names such as ``["conv_1", "bn_1", "relu_1", "pool_1", "conv_2", ...]``.

    Raises:
        TypeError: if the model is not sequential.
    """
    return Layers(model, renamed=True).names


def module_names(model: nn.Module) -> list[str]:
    """List the qualified name of every submodule, in ``named_modules()`` order.

    Args:
        model: any ``nn.Module``.

    Returns:
        Names such as ``["conv1", "bn1", "relu", "maxpool", "layer1", "layer1.0", ...]``;
        the root module itself is left out.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
    """
    return Layers(model, renamed=False).names
