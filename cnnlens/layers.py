"""What a model's layers are called: one object answers it for every kind of network.

Every submodule of every model answers to its qualified name, the one
``named_modules()`` gives (``layer1.0.conv1``, ``features.1.block.0.0``). A
stack made of the original recipe's kinds of layers (convolutions, activations,
pools, normalisation, dropout, and the flatten and linear layers of a small
classifier) also has *renamed* layers, as in the original recipe: each layer is
named by its kind and the conv block it belongs to (``conv_1``, ``relu_1``,
``pool_1``, ``conv_2``, ...). That stack is an ``nn.Sequential`` model, or a
model's ``.features`` (VGG, AlexNet, the demo CNN). Unlike the original recipe,
no layer is dropped and the ReLU after ``conv_1`` is ``relu_1``. A stack of
blocks (MobileNet's inverted residuals, SqueezeNet's Fire modules) has no
renamed layers: a block is not a layer of that recipe.

:class:`Layers` is the one place that knows this rule. It lists the names
(renamed layers where the model has them, else qualified names), accepts both
kinds wherever a layer is asked for, checks a choice of targets (with close
matches for a typo), finds the module a name stands for, and describes every
layer in a table with output shapes, parameters, receptive fields and map memory.
Receptive fields come from the executed graph (:mod:`cnnlens.receptive_fields`),
so they are known for any network, skip connections and nested blocks included.
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
from torch.nn.modules import activation

from cnnlens.receptive_fields import ReceptiveField, trace_fields

__all__ = ["TABLE_COLUMNS", "Layers", "layer_names", "meta_copy", "module_names"]

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

# Short names for some layer kinds; any other layer keeps its class name.
_KIND_NAMES: dict[type[nn.Module], str] = {
    nn.Conv2d: "conv",
    nn.BatchNorm2d: "bn",
    nn.ReLU: "relu",
    nn.MaxPool2d: "pool",
}

# The original recipe's kinds of layers. Every activation of torch.nn counts (ReLU,
# GELU, Softmax...); attention is not one. Flatten and Linear count so that a small
# CNN written as one nn.Sequential, its classifier included, keeps renamed layers.
_RECIPE_KINDS: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    *(getattr(activation, kind) for kind in activation.__all__ if kind != "MultiheadAttention"),
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.LPPool2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.Linear,
)


def _stack_of(model: nn.Module) -> tuple[nn.Sequential, str] | None:
    """The stack of recipe layers that gets renamed layers, and its qualified prefix.

    The model itself when it is an ``nn.Sequential`` of recipe layers, else its
    ``.features`` when that is one; ``None`` for any other model.
    """
    features = getattr(model, "features", None)
    for stack, prefix in ((model, ""), (features, "features.")):
        if (
            isinstance(stack, nn.Sequential)
            and len(stack) > 0
            and all(isinstance(layer, _RECIPE_KINDS) for layer in stack)
        ):
            return stack, prefix
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


def meta_copy(model: nn.Module) -> nn.Module:
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
    probe = meta_copy(model).eval()
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


_NOT_RENAMED = (
    "{} has no renamed layers: they need a stack of plain layers (convolutions, "
    "activations, pools, normalisation, dropout), an nn.Sequential such as torchvision's "
    "vgg16().features, or a model whose .features is one (vgg, alexnet, the demo CNN). "
    "Its modules' qualified names (cnnlens.module_names) work everywhere."
)


class Layers:
    """The layers of one model: their names, the modules they stand for, and a table.

    Every submodule answers to its qualified name. A model with a stack of the
    original recipe's kinds of layers (see the module's docstring) also has
    renamed layers (``conv_1``); both name the same module (``features.0``).

    Args:
        model: any ``nn.Module``.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.

    Attributes:
        renamed: whether the model has renamed layers.
        names: the layers to list: every renamed layer in network order where the
            model has them, else every qualified name in ``named_modules()`` order
            (the root module itself left out).
        module_names: every qualified name, in ``named_modules()`` order.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected a torch nn.Module, got {type(model).__name__}.")
        self.model = model
        self.module_names = [name for name, _ in model.named_modules() if name]
        order = {name: i for i, name in enumerate(self.module_names)}
        stack = _stack_of(model)
        self.renamed = stack is not None
        self._paths: dict[str, str] = {}
        if stack is not None:
            self._stack, self._prefix = stack
            self._keys = [key for key, _ in self._stack.named_children()]
            self.names = _renamed(list(self._stack))
            self._paths = {
                name: self._prefix + key for name, key in zip(self.names, self._keys, strict=True)
            }
        else:
            self.names = list(self.module_names)
        self._fields: dict[tuple[int, ...], dict[str, ReceptiveField | None]] = {}
        # Network order: by module; a renamed name before the path it stands for.
        self._order = {name: (order[path], 0) for name, path in self._paths.items()}
        for name in self.module_names:
            self._paths.setdefault(name, name)
            self._order.setdefault(name, (order[name], 1))

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
        """The layers of the renamed stack, in order.

        Raises:
            TypeError: for a model without renamed layers.
        """
        if not self.renamed:
            raise TypeError(_NOT_RENAMED.format(type(self.model).__name__))
        return list(self._stack)

    @property
    def stack_prefix(self) -> str:
        """The qualified prefix of the renamed stack's layers: ``""`` or ``"features."``.

        Raises:
            TypeError: for a model without renamed layers.
        """
        if not self.renamed:
            raise TypeError(_NOT_RENAMED.format(type(self.model).__name__))
        return self._prefix

    def check(self, targets: str | Iterable[str]) -> tuple[str, ...]:
        """Validate a choice of layers and put it in network order.

        Args:
            targets: one layer name or several, renamed layers or qualified module
                names; duplicates are dropped.

        Returns:
            The chosen names as given, in network order.

        Raises:
            TypeError: if targets are not strings.
            ValueError: if none is given or one is not a layer of the model; the
                message lists the renamed layers or close matches.
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
        return tuple(sorted(dict.fromkeys(wanted), key=self._order.__getitem__))

    def _valid_hint(self) -> str:
        if self.renamed:
            return (
                f"Valid layers: {', '.join(self.names)}; or a module path such as "
                f"{self._paths[self.names[0]]!r} (cnnlens.module_names lists them)."
            )
        return "cnnlens.module_names(model) lists every valid name."

    def _unknown_message(self, unknown: list[str]) -> str:
        name = unknown[0]
        close = difflib.get_close_matches(name, list(self._paths), n=5)
        hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
        if self.renamed:
            return f"Unknown layer {', '.join(map(repr, unknown))}. {self._valid_hint()}{hint}"
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

    def receptive_field(
        self, name: str, input_shape: tuple[int, int, int]
    ) -> ReceptiveField | None:
        """The part of the input each value of a layer sees, for one input size.

        Traced once per input size on the executed graph of the whole model (on the
        meta device: the model is not touched), so skip connections, concatenations
        and global pooling count. A field never leaves the image: a layer that would
        see past it sees the whole image.

        Example:
            >>> from torchvision.models import resnet18
            >>> from cnnlens import Layers
            >>> layers = Layers(resnet18())
            >>> layers.receptive_field("layer1", (3, 224, 224)).size
            43
            >>> layers.receptive_field("avgpool", (3, 224, 224)).whole
            True

        Args:
            name: a renamed layer or a qualified module name.
            input_shape: ``(channels, height, width)`` of one input image.

        Returns:
            The layer's :class:`~cnnlens.receptive_fields.ReceptiveField` (its first
            call's, for a module called more than once); ``None`` where it is unknown:
            an operation on the way has no rule, or the forward does not reach the
            layer with this input.

        Raises:
            ValueError: for a name that is not a layer of the model.
        """
        return self._traced(input_shape).get(self.path(name))

    def _traced(self, input_shape: tuple[int, ...]) -> dict[str, ReceptiveField | None]:
        shape = tuple(int(n) for n in input_shape)
        fields = self._fields.get(shape)
        if fields is None:  # two threads may both trace: the results are equal
            fields = self._fields[shape] = trace_fields(meta_copy(self.model).eval(), shape)
        return fields

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
            descendants'), ``receptive field`` (input pixels per side that one
            value sees at most, see :meth:`receptive_field`; ``None`` where unknown)
            and ``map bytes`` (one image's output in float32; 0 without a shape).

        Raises:
            ValueError: if the input shape does not fit the network.
        """
        if self.renamed:  # the stack alone: a classifier may want another input size
            shapes = _output_shapes(self._stack, input_shape)
            keys = dict(zip(self.names, self._keys, strict=True))
        else:
            shapes = _output_shapes(self.model, input_shape)
            keys = self._paths
        fields = self._traced(input_shape)  # a classifier that does not fit stops it there
        rows = []
        for name in self.names:
            module, shape = self.module(name), shapes.get(keys[name])
            field = fields.get(self._paths[name])
            rows.append(
                {
                    "layer": name,
                    "depth": 0 if self.renamed else name.count("."),
                    "type": type(module).__name__,
                    "children": next(module.children(), None) is not None,
                    "output shape": "×".join(map(str, shape)) if shape is not None else "",
                    "parameters": sum(p.numel() for p in module.parameters()),
                    "receptive field": field.size if field is not None else None,
                    "map bytes": shape.numel() * 4 if shape is not None else 0,
                }
            )
        table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
        # None stays None where a field is unknown, not NaN in a column of floats.
        table["receptive field"] = pd.Series([row["receptive field"] for row in rows], dtype=object)
        return table


def layer_names(model: nn.Module) -> list[str]:
    """List the renamed layers of a model with a stack of plain layers, in network order.

    Args:
        model: an ``nn.Sequential`` of plain layers, or a model whose ``.features`` is
            one (see :mod:`cnnlens.layers`).

    Returns:
        Names such as ``["conv_1", "bn_1", "relu_1", "pool_1", "conv_2", ...]``.

    Raises:
        TypeError: if the model has no renamed layers.
    """
    layers = Layers(model)
    if not layers.renamed:
        raise TypeError(_NOT_RENAMED.format(type(model).__name__))
    return layers.names


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
    return Layers(model).module_names
