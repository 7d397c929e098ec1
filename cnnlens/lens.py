"""The renamed sequential net with extractors: the original recipe's idea, done right.

The original recipe walks a sequential CNN, copies each layer into a new
``nn.Sequential`` under a name made from its kind and conv block (``conv_1``,
``relu_1``, ...), and inserts an extractor after each target. A :class:`Lens`
shows that net (:attr:`Lens.net`, every layer kept; see :mod:`cnnlens.layers`
for the names), but reads the maps as every other extraction of cnnlens does:
from the model's :class:`~cnnlens.private_copy.PrivateCopy`, stopped after the
deepest target, with nothing kept on modules, so one lens can serve many threads
(browser sessions) at once, and lenses for any number of target sets share one
copy of the model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cnnlens.extractor import FeatureExtractor
from cnnlens.layers import Layers
from cnnlens.private_copy import PrivateCopy

__all__ = ["Extractor", "Lens", "build_lens"]


class Extractor(nn.Module):
    """Marks the place after a target layer in ``Lens.net``.

    It is an identity, for display: the lens reads its maps from the private
    copy, in a dict local to each call. Nothing is stored on the module, unlike
    the original recipe, which kept each feature as an attribute of its module.
    """

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"target={self.target!r}"


class Lens(FeatureExtractor):
    """A renamed sequential CNN that returns the maps of its target layers.

    Build it with :func:`build_lens`, or ``LoadedModel.extractor`` for a loaded
    model with renamed layers. Calling it runs the private copy up to the deepest
    target only, in eval mode, and returns ``{target: tensor}`` in network order,
    exact (a conv's values before the in-place ReLU after it). It is safe to call
    from many threads at once: the features live in a dict local to each call.

    Args:
        source: the private copy to read; its model must have renamed layers.
        targets: one layer or several: renamed layers (see
            :func:`cnnlens.layer_names`) or qualified module names.

    Raises:
        TypeError: if the copy has no renamed layers or targets are not strings.
        ValueError: if a target is not a layer of the model.

    Attributes:
        net: the renamed ``nn.Sequential`` for display, every layer kept, with an
            :class:`Extractor` after each target; its layers are the private copy's.
        layer_names: every renamed layer, in order (extractors excluded).
        targets: the target layers as given, in network order.
    """

    def __init__(self, source: PrivateCopy, targets: str | Iterable[str]) -> None:
        layers = Layers(source.model)
        stack = layers.stack  # a TypeError for a model without renamed layers
        super().__init__(source, targets)
        self.layer_names = layers.names
        read = set(self._paths)
        shown = {name for name in layers.names if layers.path(name) in read}
        self.net = nn.Sequential()
        for name, layer in zip(layers.names, stack, strict=True):
            self.net.add_module(name, layer)
            if name in shown:
                self.net.add_module(f"extractor_{name}", Extractor(name))

    def __repr__(self) -> str:
        return f"Lens(targets={list(self.targets)}, device={self.device})\n{self.net}"


class _Features(nn.Module):
    """A model's ``.features`` stack alone, under the same qualified names."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_lens(
    model: nn.Module,
    targets: str | Iterable[str],
    *,
    channels_last: bool = True,
) -> Lens:
    """Build the renamed sequential net with extractors after the target layers.

    The lens works on its own copy of the model's renamed stack, in eval mode,
    on the model's device; the caller's model is left exactly as it was. Lenses
    of a loaded model (``open_model(...).extractor``) share one copy instead.

    Example:
        >>> import torch
        >>> from torchvision.models import vgg16
        >>> from cnnlens import build_lens
        >>> lens = build_lens(vgg16().features, ["conv_1", "pool_2"])
        >>> {name: tuple(value.shape) for name, value in lens(torch.zeros(1, 3, 64, 64)).items()}
        {'conv_1': (1, 64, 64, 64), 'pool_2': (1, 64, 32, 32)}

    Args:
        model: a model with renamed layers: an ``nn.Sequential`` of plain layers
            (such as ``vgg16().features``) or a model whose ``.features`` is one.
        targets: one layer or several of its stack: renamed layers (see
            :func:`cnnlens.layer_names`) or their qualified names (``"features.0"``).
        channels_last: run the copy in channels-last memory format, which is
            0.5-0.8× the time of the default format on CPUs.

    Returns:
        A :class:`Lens`.

    Raises:
        TypeError: if the model has no renamed layers or targets are not strings.
        ValueError: if a target is not a layer of the stack.
    """
    layers = Layers(model)
    prefix = layers.stack_prefix  # a TypeError for a model without renamed layers
    chosen = layers.check(targets)
    stacked = {layers.path(name) for name in layers.names}
    outside = [name for name in chosen if layers.path(name) not in stacked]
    if outside:
        raise ValueError(
            f"{', '.join(map(repr, outside))} is not a layer of the renamed stack, the only "
            "part of the model a lens copies; cnnlens.build_extractor reads any module."
        )
    own = model if not prefix else _Features(model.get_submodule("features"))
    return Lens(PrivateCopy(own, channels_last=channels_last), chosen)
