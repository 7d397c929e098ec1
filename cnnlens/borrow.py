"""Borrowing a model for one call: the private copy it runs on, its layers and its input.

Every look inside a model that takes "an ``nn.Module`` or a LoadedModel"
(ablation, feature visualization, the value explainer) starts here.
:func:`borrowed_copy` hands it the copy to run: a LoadedModel's shared
:class:`~cnnlens.private_copy.PrivateCopy`, or a temporary one of a plain
module, closed afterwards. :class:`KnownInput` says what is known of the
model's input, and :func:`layer_channels` how many channels a layer has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cnnlens.layers import Layers
from cnnlens.private_copy import PrivateCopy

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel

__all__ = [
    "LARGEST_DEFAULT_SIDE",
    "KnownInput",
    "borrowed_copy",
    "channel_list",
    "check_channels",
    "count_channels",
    "layer_channels",
    "plain_module",
]

LARGEST_DEFAULT_SIDE = 128
"""The largest side an image gets without ``size``: Lucid's 128 px. ResNet-18's 224 px
would cost three times as long on a CPU."""


@dataclass(frozen=True)
class KnownInput:
    """What is known of a model's input: all of it for a LoadedModel, little for a plain module.

    Attributes:
        channels: image channels; for a plain module its first ``Conv2d``'s, ``None``
            without one.
        size: ``(height, width)``, ``None`` for a plain module.
        mean, std: the per-channel normalisation, ``None`` for none.
    """

    channels: int | None
    size: tuple[int, int] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    @classmethod
    def of(cls, model: nn.Module | LoadedModel) -> KnownInput:
        """What is known of a model's input.

        Raises:
            TypeError: if ``model`` is neither an ``nn.Module`` nor a LoadedModel.
        """
        from cnnlens.models import LoadedModel

        if isinstance(model, LoadedModel):
            spec = model.spec
            return cls(spec.shape[0], spec.size, spec.mean, spec.std)
        if not isinstance(model, nn.Module):
            raise TypeError(
                "Expected a torch nn.Module or a model from open_model, got "
                f"{type(model).__name__}."
            )
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        return cls(first.in_channels if first is not None else None)

    def side(self, size: int | tuple[int, int] | None = None) -> int:
        """The side of a square image: ``size`` checked, or by default the input's side,
        at most :data:`LARGEST_DEFAULT_SIDE`.

        Raises:
            ValueError: for no size where the input's is unknown, a size that is not
                square, or one below 8 pixels.
        """
        if size is None:
            if self.size is None:
                raise ValueError(
                    "A plain nn.Module has no input size: pass size=, such as size=128."
                )
            size = min(*self.size, LARGEST_DEFAULT_SIDE)
        if isinstance(size, tuple):
            if len(size) != 2 or size[0] != size[1]:
                raise ValueError(f"Feature visualizations are square: give one side, got {size}.")
            size = size[0]
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be a whole number of pixels, at least 8; got {size!r}.")
        return size


def plain_module(model: nn.Module | LoadedModel) -> nn.Module:
    """The model as a plain ``nn.Module``: a LoadedModel's own model (never its private
    copy, whose hooks and forwards belong to that copy).

    Raises:
        TypeError: if ``model`` is neither.
    """
    from cnnlens.models import LoadedModel

    if isinstance(model, LoadedModel):
        return model.model
    KnownInput.of(model)  # the TypeError for anything else
    return model


@contextlib.contextmanager
def borrowed_copy(
    model: nn.Module | LoadedModel, *, share_tensors: bool = False
) -> Iterator[tuple[PrivateCopy, Layers, KnownInput]]:
    """The private copy a call runs on, the model's layers, and what is known of its input.

    A LoadedModel's shared :attr:`~cnnlens.models.LoadedModel.private_copy` is
    used as it is (never closed: every session shares it). A plain module gets a
    temporary copy, closed on exit, even after an exception: the caller's model,
    its flags and its hooks are never touched.

    Args:
        model: an ``nn.Module`` or a LoadedModel.
        share_tensors: for a call that takes no gradient: a plain module's copy
            shares its tensors and keeps its memory format, so it costs almost no
            memory and its values equal a plain forward's bit for bit. Otherwise the
            copy has tensors of its own, in channels-last format.

    Raises:
        TypeError: if ``model`` is neither an ``nn.Module`` nor a LoadedModel.
    """
    from cnnlens.models import LoadedModel

    known = KnownInput.of(model)
    if isinstance(model, LoadedModel):
        yield model.private_copy, model.layers, known
        return
    layers = Layers(model)
    copy = PrivateCopy(model, channels_last=not share_tensors, share_tensors=share_tensors)
    try:
        yield copy, layers, known
    finally:
        copy.close()


def channel_list(channels: int | Sequence[int]) -> list[int]:
    """One channel or several as a list of ints.

    Raises:
        ValueError: for no channel.
        TypeError: for a channel that is not a whole number.
    """
    chosen = [channels] if isinstance(channels, int | np.integer) else list(channels)
    if not chosen:
        raise ValueError("Choose at least one channel.")
    for channel in chosen:
        if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
            raise TypeError(f"Channels are whole numbers, got {channel!r}.")
    return [int(channel) for channel in chosen]


def check_channels(layer: str, chosen: Sequence[int], count: int) -> None:
    """Check channels against a layer's ``count``.

    Raises:
        ValueError: naming the valid range and the channels outside it.
    """
    bad = [channel for channel in chosen if not 0 <= channel < count]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{layer} has channels 0 to {count - 1}; got {shown}.")


def count_channels(copy: PrivateCopy, layer: str, path: str, known: KnownInput, side: int) -> int:
    """A layer's channel count (units, for a 2-D output), from a forward of one grey image.

    Raises:
        ValueError: for unknown input channels, a size that does not fit, a layer
            that does not run or whose output is not 2-D or 4-D.
    """
    if known.channels is None:
        raise ValueError(
            "This model has no Conv2d, so its input channels are unknown; open it with "
            "cnnlens.open_model or give a convolutional network."
        )
    with torch.inference_mode(False), torch.no_grad():
        grey = torch.full(
            (1, known.channels, side, side), 0.5, device=copy.device, dtype=copy.dtype
        )
        output = copy.run_to(copy.prepare(grey), path).output
    if output.dim() not in (2, 4):
        raise ValueError(
            f"{layer} gives {output.dim()}-D outputs, not channels (N×C×H×W) or units (N×K): "
            "choose a convolutional or linear layer."
        )
    return output.shape[1]


def layer_channels(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: int | Sequence[int] | None = None,
    *,
    size: int | tuple[int, int] | None = None,
) -> list[int]:
    """A layer's channels (units, for a 2-D output): all of them, or the given ones, checked.

    One forward of one grey image, up to the layer, tells how many there are.

    Args:
        model: an ``nn.Module`` or a :class:`~cnnlens.models.LoadedModel`.
        layer: a layer name: a qualified module path (``"features.3"``), or a
            renamed layer (``"conv_2"``) where the model has them.
        channels: the channels to check; ``None`` for every channel of the layer.
        size: the input side; default :meth:`KnownInput.side`. Needed for a plain module.

    Returns:
        ``channels`` as a list, or ``[0, 1, ..., C - 1]``.

    Raises:
        ValueError: for an unknown layer, a channel out of range (the message
            names the valid range), a layer that does not run or returns no 2-D or
            4-D tensor, or an input size that does not fit.
        TypeError: for a model that is neither, or channels that are not whole numbers.
    """
    with borrowed_copy(model, share_tensors=True) as (copy, layers, known):
        count = count_channels(copy, layer, layers.path(layer), known, known.side(size))
    if channels is None:
        return list(range(count))
    chosen = channel_list(channels)
    check_channels(layer, chosen, count)
    return chosen
