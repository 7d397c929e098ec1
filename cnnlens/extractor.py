"""Feature maps of any ``nn.Module``, addressed by its layer names.

A target is a qualified module name as ``named_modules()`` gives it
(``layer1.0.conv1``), in any network (ResNet, MobileNet, EfficientNet, DenseNet,
ConvNeXt, RegNet, GoogLeNet, Inception, ShuffleNet, MNASNet, even a vision
transformer), or a renamed layer (``conv_1``) where the model has them (see
:mod:`cnnlens.layers`). The extractor works on a private copy of the model,
stops the forward once every target has its value, keeps no per-call state on
modules, and returns exact values even where an in-place op (a ``ReLU(inplace=
True)``, a residual ``out += identity``) later writes into a target's output.
:class:`cnnlens.lens.Lens` is the same extraction, seen as the original recipe's
renamed sequential net.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import torch
from torch import nn

from cnnlens.layers import Layers
from cnnlens.private_copy import PrivateCopy

__all__ = ["FeatureExtractor", "build_extractor"]


class FeatureExtractor:
    """The outputs of some target layers of a model, read from a private copy.

    Build it with :func:`build_extractor`, or ``LoadedModel.extractor`` for a
    loaded model (whose extractors all share one copy). Calling it runs the copy
    in eval mode under ``torch.no_grad()`` and stops as soon as every target has
    its output. One extractor may serve many threads at once: what a call
    captures is local to that call, never kept on modules.

    A module called more than once in a forward (a shared module, such as the one
    ReLU of a torchvision Bottleneck) gives the output of its first call. An
    in-place module after a target (``ReLU(inplace=True)``) runs out of place for
    the call; any other write into a target's output (a residual ``+=``) is caught
    by its version counter: the call is run again with a copy of that target, and
    later calls copy it directly. Writes that bypass the version counter (through
    ``tensor.data``) are not seen. A target whose output is not a tensor (the tuple of an
    attention layer) raises a ``ValueError`` that names it.

    Args:
        source: the private copy to read.
        targets: layer names of the copy: qualified module names (see
            :func:`cnnlens.module_names`) or renamed layers where it has them.
        owns_source: close the copy (remove its hooks) when this extractor closes.

    Raises:
        TypeError: if targets are not strings.
        ValueError: if a target is not a layer of the model.

    Attributes:
        model: the private copy of the model, with the hooks.
        targets: the target layers as given, in network order.
        device: where the copy lives; inputs are moved there.
        dtype: the copy's floating-point type; inputs are cast to it.
    """

    def __init__(
        self, source: PrivateCopy, targets: str | Iterable[str], *, owns_source: bool = False
    ) -> None:
        layers = Layers(source.model)
        self.targets = layers.check(targets)
        self.model = source.model
        self.device = source.device
        self.dtype = source.dtype
        self._source = source
        self._owns_source = owns_source
        self._closed = False
        self._paths = tuple(layers.path(name) for name in self.targets)
        self._unique = tuple(dict.fromkeys(self._paths))

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
        if self._closed:
            raise RuntimeError(f"This {type(self).__name__} is closed; build a new one.")
        maps = self._source.capture(x, self._unique)
        return {name: maps[path] for name, path in zip(self.targets, self._paths, strict=True)}

    def close(self) -> None:
        """Stop this extractor; one built by :func:`build_extractor` also removes its
        copy's hooks. Calling it again does nothing."""
        self._closed = True
        if self._owns_source:
            self._source.close()

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
        return f"{type(self).__name__}(targets={list(self.targets)}, device={self.device})"


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

    Example:
        >>> import torch
        >>> from torchvision.models import resnet18
        >>> from cnnlens import build_extractor
        >>> with build_extractor(resnet18(), ["layer1.0.bn1", "layer2"]) as extract:
        ...     maps = extract(torch.zeros(2, 3, 64, 64))
        >>> {name: tuple(value.shape) for name, value in maps.items()}
        {'layer1.0.bn1': (2, 64, 16, 16), 'layer2': (2, 128, 8, 8)}

    Args:
        model: any ``nn.Module``, such as ``torchvision.models.resnet18()``.
        targets: one layer name or several: qualified module names
            (``"layer1.0.bn1"``, see :func:`cnnlens.module_names`), or renamed layers
            (``"conv_1"``) where the model has them; duplicates are dropped.
        channels_last: run the copy in channels-last memory format, which is
            0.5-0.8× the time of the default format on CPUs.

    Returns:
        A :class:`FeatureExtractor`; use it as a context manager, or call
        ``close()``, to remove its hooks.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or targets are not strings.
        ValueError: if no target is given or a target is not a module of the model.
    """
    Layers(model).check(targets)  # before paying for the copy
    source = PrivateCopy(model, channels_last=channels_last)
    return FeatureExtractor(source, targets, owns_source=True)
