"""Feature maps of any ``nn.Module``, addressed by the names ``named_modules()`` gives.

:mod:`cnnlens.lens` runs the renamed layers of sequential CNNs. Every other
network (ResNet, MobileNet, EfficientNet, DenseNet, ConvNeXt, RegNet, GoogLeNet,
Inception, ShuffleNet, MNASNet, even a vision transformer) is read here, with
the same guarantees: the extractor works on a private copy of the model, stops
the forward once every target has its value, keeps no per-call state on
modules, and returns exact values even where an in-place op (a ``ReLU(inplace=
True)``, a residual ``out += identity``) later writes into a target's output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType

import torch
from torch import nn

from cnnlens.layers import Layers
from cnnlens.lens import Lens, build_lens
from cnnlens.private_copy import PrivateCopy

__all__ = ["FeatureExtractor", "build_extractor", "extractor_for"]


class FeatureExtractor:
    """The outputs of some target modules of a model, read from a private copy.

    Build it with :func:`build_extractor`, or ``LoadedModel.extractor`` for a
    loaded model (whose extractors all share one copy). Calling it runs the copy
    in eval mode under ``torch.no_grad()`` and stops as soon as every target has
    its output. One extractor may serve many threads at once: what a call
    captures is local to that call, never kept on modules.

    A module called more than once in a forward (a shared module, such as the one
    ReLU of a torchvision Bottleneck) gives the output of its first call. Outputs
    that an in-place op later overwrites are caught by their version counter: the
    call is run again with a copy of that target, and later calls copy it
    directly. Writes that bypass the version counter (through ``tensor.data``)
    are not seen. A target whose output is not a tensor (the tuple of an
    attention layer) raises a ``ValueError`` that names it.

    Args:
        source: the private copy to read.
        targets: qualified module names of the copy (see :func:`cnnlens.module_names`).
        owns_source: close the copy (remove its hooks) when this extractor closes.

    Attributes:
        model: the private copy of the model, with the hooks.
        targets: the target modules, in ``named_modules()`` order.
        device: where the copy lives; inputs are moved there.
        dtype: the copy's floating-point type; inputs are cast to it.
    """

    def __init__(
        self, source: PrivateCopy, targets: str | Iterable[str], *, owns_source: bool = False
    ) -> None:
        self.targets = Layers(source.model, renamed=False).check(targets)
        self.model = source.model
        self.device = source.device
        self.dtype = source.dtype
        self._source = source
        self._owns_source = owns_source
        self._closed = False

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
            raise RuntimeError("This FeatureExtractor is closed; build a new one.")
        return self._source.capture(x, self.targets)

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
            :func:`cnnlens.module_names`); duplicates are dropped.
        channels_last: run the copy in channels-last memory format, which is
            0.5-0.8× the time of the default format on CPUs.

    Returns:
        A :class:`FeatureExtractor`; use it as a context manager, or call
        ``close()``, to remove its hooks.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or targets are not strings.
        ValueError: if no target is given or a target is not a module of the model.
    """
    Layers(model, renamed=False).check(targets)  # before paying for the copy
    source = PrivateCopy(model, channels_last=channels_last)
    return FeatureExtractor(source, targets, owns_source=True)


def extractor_for(model: nn.Module, targets: Sequence[str]) -> Lens | FeatureExtractor:
    """Pick the extractor for some targets: a lens for renamed layers, hooks otherwise.

    Args:
        model: any ``nn.Module``.
        targets: renamed layers of a sequential CNN (``"conv_1"``, see
            :func:`cnnlens.layer_names`) or qualified module names (see
            :func:`cnnlens.module_names`).

    Returns:
        :func:`cnnlens.build_lens` when the targets are renamed layers of the
        model, :func:`build_extractor` when they are module names.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or targets are not strings.
        ValueError: if no target is given, a target names no layer, or renamed layers
            and module names are mixed.
    """
    wanted = [targets] if isinstance(targets, str) else targets
    layers = Layers(model)
    if (
        layers.renamed
        and isinstance(wanted, Sequence)
        and any(isinstance(name, str) and name in layers for name in wanted)
    ):
        return build_lens(model, wanted)  # its error for a mix lists the renamed layers
    return build_extractor(model, wanted)
