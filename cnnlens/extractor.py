"""Feature maps of any ``nn.Module``, addressed by the names ``named_modules()`` gives.

:mod:`cnnlens.lens` renames the layers of sequential CNNs. Every other network
(ResNet, MobileNet, EfficientNet, DenseNet, ConvNeXt, RegNet, GoogLeNet,
Inception, ShuffleNet, MNASNet, even a vision transformer) is read here, with
the same guarantees: the extractor works on its own copy of the model, stops
the forward once every target has its value, keeps no per-call state on
modules, and returns exact values even where an in-place op (a ``ReLU(inplace=
True)``, a residual ``out += identity``) later writes into a target's output.
"""

from __future__ import annotations

import copy
import difflib
import threading
from collections.abc import Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnlens.lens import Lens, build_lens, layer_names

__all__ = [
    "FeatureExtractor",
    "build_extractor",
    "extractor_for",
    "module_names",
    "module_table",
]


class _Stop(Exception):
    """Raised from the hook that captures the last target, to skip the rest of the forward."""


class _Call:
    """What one call of an extractor captures; lives only for that call, in its thread."""

    def __init__(self) -> None:
        self.features: dict[str, torch.Tensor] = {}
        # The version counter of each capture kept by reference, to notice later writes.
        self.versions: dict[str, int] = {}


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
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected a torch nn.Module, got {type(model).__name__}.")
    return [name for name, _ in model.named_modules() if name]


def _normalise_targets(targets: str | Iterable[str], valid: list[str]) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = [targets]
    try:
        wanted = list(targets)
    except TypeError:
        raise TypeError(
            f"targets must be a module name or a list of names, got {type(targets).__name__}."
        ) from None
    if not wanted:
        raise ValueError(
            "Choose at least one target module; cnnlens.module_names(model) lists them."
        )
    for name in wanted:
        if not isinstance(name, str):
            raise TypeError(f"Module names are strings, got {name!r}.")
    known = set(valid)
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, valid, n=5)
            hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
            raise ValueError(
                f"Unknown module {name!r}.{hint} cnnlens.module_names(model) lists every "
                "valid name."
            )
    chosen = set(wanted)
    return tuple(name for name in valid if name in chosen)


class FeatureExtractor:
    """Forward hooks on a private copy of a model that return the outputs of target modules.

    Build it with :func:`build_extractor`. Calling it runs the copy in eval mode
    under ``torch.no_grad()`` and stops as soon as every target has its output.
    One extractor may serve many threads at once: hooks write into a dict local
    to the call, never into modules.

    A module called more than once in a forward (a shared module, such as the one
    ReLU of a torchvision Bottleneck) gives the output of its first call. Outputs
    that an in-place op later overwrites are caught by their version counter: the
    call is run again with a copy of that target, and later calls copy it
    directly. Writes that bypass the version counter (through ``tensor.data``)
    are not seen. A target whose output is not a tensor (the tuple of an
    attention layer) raises a ``ValueError`` that names it.

    Attributes:
        model: the extractor's own copy of the model, with the hooks.
        targets: the target modules, in ``named_modules()`` order.
        device: where the copy lives; inputs are moved there.
        dtype: the copy's floating-point type; inputs are cast to it.
    """

    def __init__(self, model: nn.Module, targets: tuple[str, ...], channels_last: bool) -> None:
        self.model = model
        self.targets = targets
        self._channels_last = channels_last
        first = next(model.parameters(), None)
        if first is None:
            first = next(model.buffers(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = (
            first.dtype if first is not None and first.is_floating_point() else torch.float32
        )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clone: frozenset[str] = frozenset()
        modules = dict(model.named_modules())
        self._handles: list[RemovableHandle] = [
            modules[name].register_forward_hook(partial(self._capture, name)) for name in targets
        ]

    def _capture(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        call: _Call | None = getattr(self._local, "call", None)
        if call is None or name in call.features:
            return  # a forward outside __call__, or a later call of a shared module
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"Module {name!r} returns a {type(output).__name__}, not a tensor, so it has "
                "no feature map; choose one of its submodules or the module that uses its output."
            )
        if name in self._clone:
            output = output.clone()
        else:
            call.versions[name] = output._version
        call.features[name] = output
        if len(call.features) == len(self.targets):
            raise _Stop

    def _run(self, x: torch.Tensor) -> _Call:
        call = _Call()
        self._local.call = call
        try:
            self.model(x)
        except _Stop:
            pass
        except RuntimeError as error:
            raise ValueError(
                f"The input of shape {tuple(x.shape)} does not fit this network: {error}"
            ) from error
        finally:
            self._local.call = None
        return call

    def _extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.detach().to(self.device, self.dtype)
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.is_inference():  # it has no version counter, and an Identity target may return it
            x = x.clone()
        start = x._version
        while True:
            call = self._run(x)
            missing = [name for name in self.targets if name not in call.features]
            if missing:
                raise ValueError(
                    f"Module {', '.join(map(repr, missing))} did not run in the forward pass "
                    "(in eval mode), so it has no output; choose modules the forward calls."
                )
            overwritten = {
                name
                for name, version in call.versions.items()
                if call.features[name]._version != version
            }
            if not overwritten:
                return {name: call.features[name] for name in self.targets}
            with self._lock:
                self._clone |= overwritten
            if x._version != start:
                raise ValueError(
                    "The model writes into its input in place, so the overwritten maps of "
                    f"{', '.join(map(repr, sorted(overwritten)))} cannot be computed again."
                )

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extract the target outputs for a batch.

        Args:
            x: an N×C×H×W tensor; it is moved to the extractor's device and dtype.

        Returns:
            ``{target: tensor}`` in the order of :attr:`targets`, detached, on the
            extractor's device; the extractor keeps no reference to them.

        Raises:
            TypeError: if ``x`` is not a tensor.
            ValueError: if the input does not fit the network, a target returns no
                tensor or does not run in eval mode, or the model writes into its input.
            RuntimeError: if the extractor was closed.
        """
        if not self._handles:
            raise RuntimeError("This FeatureExtractor is closed; build a new one.")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"The extractor takes a torch.Tensor batch, got {type(x).__name__}.")
        # Version counters catch in-place writes into kept outputs; inference_mode drops
        # them, so it is switched off even when the caller runs inside it.
        with torch.inference_mode(False), torch.no_grad():
            return self._extract(x)

    def close(self) -> None:
        """Remove every hook from the extractor's copy; calling it again does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureExtractor(targets={list(self.targets)}, device={self.device})"


def build_extractor(
    model: nn.Module,
    targets: str | Iterable[str],
    *,
    channels_last: bool = True,
) -> FeatureExtractor:
    """Build an extractor for the outputs of modules of any network.

    The extractor works on its own copy of the model, in eval mode, on the
    model's device and dtype; the caller's model gets no hooks and is left
    exactly as it was.

    Args:
        model: any ``nn.Module``, such as ``torchvision.models.resnet18()``.
        targets: one qualified module name (``"layer1.0.bn1"``) or several (see
            :func:`module_names`); duplicates are dropped.
        channels_last: run the copy in channels-last memory format, which is
            0.5-0.8× the time of the default format on CPUs.

    Returns:
        A :class:`FeatureExtractor`; use it as a context manager, or call
        ``close()``, to remove its hooks.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or targets are not strings.
        ValueError: if no target is given or a target is not a module of the model.
    """
    chosen = _normalise_targets(targets, module_names(model))
    own = copy.deepcopy(model).eval().requires_grad_(False)
    if channels_last:
        own.to(memory_format=torch.channels_last)
    return FeatureExtractor(own, chosen, channels_last)


def extractor_for(model: nn.Module, targets: Sequence[str]) -> Lens | FeatureExtractor:
    """Pick the extractor for some targets: a lens for renamed layers, hooks otherwise.

    Args:
        model: any ``nn.Module``.
        targets: renamed layers of a sequential CNN (``"conv_1"``, see
            :func:`cnnlens.layer_names`) or qualified module names (see :func:`module_names`).

    Returns:
        :func:`cnnlens.build_lens` when the targets are renamed layers of the
        model, :func:`build_extractor` when they are module names.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or targets are not strings.
        ValueError: if no target is given, a target names no layer, or renamed layers
            and module names are mixed.
    """
    wanted = [targets] if isinstance(targets, str) else targets
    try:
        renamed = set(layer_names(model))
    except TypeError:  # not a sequential CNN: only qualified names apply
        renamed = set()
    if isinstance(wanted, Sequence) and any(
        isinstance(name, str) and name in renamed for name in wanted
    ):
        return build_lens(model, wanted)  # its error for a mix lists the renamed layers
    return build_extractor(model, wanted)


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


def module_table(model: nn.Module, input_shape: tuple[int, int, int]) -> pd.DataFrame:
    """Describe every submodule for one input: depth, type, output shape, parameters, memory.

    Shapes come from a forward on the meta device, so nothing is computed and
    the caller's model (its BatchNorm statistics included) is not touched.

    Args:
        model: any ``nn.Module``.
        input_shape: ``(channels, height, width)`` of one input image.

    Returns:
        One row per submodule, in ``named_modules()`` order: ``name``, ``depth``
        (dots in the name), ``type``, ``children`` (whether it has submodules),
        ``output shape`` (such as ``"64×56×56"``, without the batch; ``""`` when the
        forward does not call it or its output is not a tensor; a shared module shows
        its first call), ``parameters`` (its own and its descendants') and ``map bytes``
        (one image's output in float32; 0 without a shape).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if the input shape does not fit the network.
    """
    names = module_names(model)
    probe = _meta_copy(model).eval()
    shapes: dict[str, torch.Size] = {}

    def record(name: str, module: nn.Module, args: Any, output: Any) -> None:
        if name not in shapes and isinstance(output, torch.Tensor):
            shapes[name] = output.shape[1:]

    modules = dict(probe.named_modules())
    for name in names:
        modules[name].register_forward_hook(partial(record, name))
    try:
        with torch.no_grad():
            probe(torch.zeros((1, *input_shape), device="meta"))
    except RuntimeError as error:
        raise ValueError(
            f"An input of shape {tuple(input_shape)} does not fit this network: {error}"
        ) from error
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        shape = shapes.get(name)
        rows.append(
            {
                "name": name,
                "depth": name.count("."),
                "type": type(module).__name__,
                "children": next(module.children(), None) is not None,
                "output shape": "×".join(map(str, shape)) if shape is not None else "",
                "parameters": sum(p.numel() for p in module.parameters()),
                "map bytes": shape.numel() * 4 if shape is not None else 0,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["name", "depth", "type", "children", "output shape", "parameters", "map bytes"],
    )
