"""The renamed sequential net with extractors: the original recipe's idea, done right.

The original recipe walks a sequential CNN, copies each layer into a new
``nn.Sequential`` under a name made from its kind and conv block (``conv_1``,
``relu_1``, ...), and inserts an extractor after each target. The lens keeps
every layer (see :mod:`cnnlens.layers` for the names), stops the forward after
the deepest target, and keeps no per-call state on modules, so one lens can serve
many threads (browser sessions) at once. Its net holds the layers of a
:class:`~cnnlens.private_copy.PrivateCopy`, never copies of its own: lenses for
any number of target sets share one copy of the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from cnnlens.layers import Layers
from cnnlens.private_copy import PrivateCopy

__all__ = ["Extractor", "Lens", "build_lens"]

# Modules that may hand back their input tensor itself (or a view of it) in eval
# mode: an in-place op after them still writes into the target's output.
_MAY_ALIAS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten)


class Extractor(nn.Module):
    """Marks the place after a target layer in ``Lens.net``.

    It is an identity: the lens reads the tensor that reaches it during its own
    forward loop and keeps it in a dict local to that call. Nothing is stored on
    the module, unlike the original recipe, which kept each feature as an
    attribute of its module.
    """

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"target={self.target!r}"


def _written_later(layers: Sequence[nn.Module], index: int) -> bool:
    """Whether an in-place op after ``layers[index]`` may write into its output.

    Such a target (VGG's conv before its ``ReLU(inplace=True)``) is copied when
    captured; the shared layers stay as they are.
    """
    for layer in layers[index + 1 :]:
        if any(getattr(module, "inplace", False) for module in layer.modules()):
            return True
        if not isinstance(layer, _MAY_ALIAS):
            return False
    return False


class Lens:
    """A renamed sequential CNN that returns the maps of its target layers.

    Build it with :func:`build_lens`, or ``LoadedModel.extractor`` for a loaded
    sequential model. Calling it runs the net up to the deepest target only, in
    eval mode and under ``torch.inference_mode()``, and returns ``{target:
    tensor}`` in network order. It is safe to call from many threads at once:
    the features live in a dict local to each call.

    Args:
        source: the private copy whose sequential stack the lens runs.
        targets: one renamed layer or several (see :func:`cnnlens.layer_names`).

    Raises:
        TypeError: if the copy is not a sequential CNN or targets are not strings.
        ValueError: if a target is not a layer of the model.

    Attributes:
        net: the renamed ``nn.Sequential``, every layer kept, with an
            :class:`Extractor` after each target; its layers are the private copy's.
        layer_names: every renamed layer, in order (extractors excluded).
        targets: the target layers, in network order.
    """

    def __init__(self, source: PrivateCopy, targets: str | Iterable[str]) -> None:
        layers = Layers(source.model, renamed=True)
        chosen = layers.check(targets)
        stack = layers.stack
        self.net = nn.Sequential()
        for name, layer in zip(layers.names, stack, strict=True):
            self.net.add_module(name, layer)
            if name in chosen:
                self.net.add_module(f"extractor_{name}", Extractor(name))
        self.layer_names = layers.names
        self.targets = list(chosen)
        self.device = source.device
        self.dtype = source.dtype
        self._source = source  # keeps the copy alive as long as the lens
        self._copied = {
            name: _written_later(stack, i) for i, name in enumerate(layers.names) if name in chosen
        }
        children = list(self.net.children())
        last = max(i for i, m in enumerate(children) if isinstance(m, Extractor))
        self._steps = children[: last + 1]

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extract the target maps for a batch.

        Args:
            x: an N×C×H×W float tensor; it is moved to the lens's device and dtype.

        Returns:
            ``{target: N×C×H×W tensor}`` in network order, on the lens's device.

        Raises:
            TypeError: if ``x`` is not a tensor.
            ValueError: if the input does not fit the network (wrong channels or size).
        """
        features: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            x = self._source.prepare(x)
            try:
                for step in self._steps:
                    if isinstance(step, Extractor):
                        copied = self._copied[step.target]
                        features[step.target] = x.clone() if copied else x
                    else:
                        x = step(x)
            except RuntimeError as error:
                raise ValueError(
                    f"The input of shape {tuple(x.shape)} does not fit this network: {error}"
                ) from error
        return features

    def __repr__(self) -> str:
        return f"Lens(targets={self.targets}, device={self.device})\n{self.net}"


def build_lens(
    model: nn.Module,
    targets: str | Iterable[str],
    *,
    channels_last: bool = True,
) -> Lens:
    """Build the renamed sequential net with extractors after the target layers.

    The lens works on its own copy of the model's sequential stack, in eval mode,
    on the model's device; the caller's model is left exactly as it was. Lenses
    of a loaded model (``open_model(...).extractor``) share one copy instead.

    Args:
        model: an ``nn.Sequential`` CNN (such as ``vgg16().features``) or a model
            whose ``.features`` is one.
        targets: one renamed layer name or several (see :func:`cnnlens.layer_names`).
        channels_last: run the copy in channels-last memory format, which is
            0.5-0.8× the time of the default format on CPUs.

    Returns:
        A :class:`Lens`.

    Raises:
        TypeError: if the model is not sequential or targets are not strings.
        ValueError: if a target is not a layer of the model.
    """
    stack = nn.Sequential(*Layers(model, renamed=True).stack)
    return Lens(PrivateCopy(stack, channels_last=channels_last), targets)
