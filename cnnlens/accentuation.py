"""Feature accentuation: a real image changed toward what one channel wants.

:func:`accentuate` follows Hamblin et al. (2024, "Feature Accentuation"): start from a
real image and raise the channel's mean activation, with an L2 penalty that keeps the
result close to the image. It answers "this image, the way the channel would like it",
which a person reads more easily than a picture synthesised from noise.

The change is a smooth field: a 1/f-scaled Fourier spectrum, as Lucid's recipe paints
(:mod:`cnnlens.feature_visualization`), starting at zero. It is added to the image
in logit space, so every pixel stays in [0, 1] and moves slowly near black and white,
and shifted so that a zero change is the image itself, exactly. The activation is
counted in units of the layer's spread on the image, so one ``strength`` serves layers
whose values differ tenfold and more. The model sees Lucid's random views of it (pad, jitter,
scale, rotate) at each step, so the result holds for the channel beyond one exact
pixel grid. Everything runs on the model's private copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cnnlens.borrow import KnownInput, borrowed_copy, check_channels, count_channels
from cnnlens.feature_visualization import _DRAWS, _frequency_scale, _item_seed, _Views
from cnnlens.legibility import checked_pixels, pixel_input
from cnnlens.private_copy import PrivateCopy

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel

__all__ = ["Accentuation", "accentuate"]

_LEARNING_RATE = 0.05
# Black and white pixels start a little inside (0, 1), where the logit is finite; a pixel
# moves slowly near 0 and 1, as in Lucid's sigmoid, so changes stay soft.
_EDGE = 0.01


@dataclass(frozen=True, eq=False)
class Accentuation:
    """What :func:`accentuate` made of an image.

    Attributes:
        image: the accentuated image, C×H×W float32 pixels in [0, 1], on the CPU.
        distance: the L2 (Euclidean) distance between it and the original in pixel
            values over every channel and pixel: what the penalty keeps small.
        before: the channel's mean activation on the original image.
        after: the channel's mean activation on the accentuated image.
        steps: optimisation steps taken.
    """

    image: torch.Tensor
    distance: float
    before: float
    after: float
    steps: int


def accentuate(
    model: nn.Module | LoadedModel,
    layer: str,
    channel: int,
    image: torch.Tensor,
    *,
    steps: int = 128,
    strength: float = 3.0,
    seed: int = 0,
) -> Accentuation:
    """Change a real image toward what one channel wants, keeping it close.

    Adam raises the channel's mean activation, seen through random views and
    measured in units of the layer's spread on the original image (so one strength
    serves every layer), minus ``strength`` times the mean squared pixel change.

    Example:
        >>> from cnnlens import demo_dataset, open_model
        >>> from cnnlens.accentuation import accentuate
        >>> from cnnlens.legibility import load_pixels
        >>> demo = open_model("demo")
        >>> digit = load_pixels(demo, demo_dataset(), images=1)[0]
        >>> result = accentuate(demo, "conv_2", 5, digit, steps=16)
        >>> result.image.shape, result.after > result.before
        (torch.Size([1, 28, 28]), True)

    Args:
        model: an ``nn.Module`` or a :class:`~cnnlens.models.LoadedModel`.
        layer: a layer name (renamed layers for a sequential stack, qualified module
            names otherwise).
        channel: the channel (a unit, for a 2-D output).
        image: pixels in [0, 1] before normalisation (what
            :func:`cnnlens.legibility.load_pixels` gives), C×H×W or 1×C×H×W, at the
            model's input size (any size for a plain module).
        steps: optimisation steps.
        strength: the weight of the mean squared pixel change against the activation
            gain; larger keeps the result closer to the image (on the demo's digits, 1
            repaints much of the image, 3 adds a visible texture, 10 changes little).
        seed: the seed of the random views: the same seed gives the same result.

    Returns:
        An :class:`Accentuation`.

    Raises:
        ValueError: for an image of the wrong size (naming the expected one) or
            channels, values outside [0, 1], an unknown layer, a channel out of range,
            a layer without maps, or bad steps, strength or seed.
        TypeError: for a model that is neither, an image that is not a tensor, or a
            channel that is not a whole number.
    """
    _check_settings(channel, steps, strength, seed)
    known = KnownInput.of(model)
    original = _checked_image(image, known)
    with borrowed_copy(model) as (copy, layers, _):
        path = layers.path(layer)
        side = original.shape[-1]
        check_channels(layer, [channel], count_channels(copy, layer, path, known, side))
        optimised = _Accentuator(copy, known, path, channel, original.to(copy.device))
        # Whatever the caller's grad mode: the change's gradient is what is optimised.
        with torch.inference_mode(False), torch.enable_grad():
            result = optimised.run(steps, strength, seed)
        with torch.no_grad():
            before = optimised.score(original.to(copy.device))
            after = optimised.score(result)
    result = result.float().cpu()
    distance = float(torch.linalg.vector_norm(result - original))
    return Accentuation(result[0], distance, float(before), float(after), steps)


def _check_settings(channel: int, steps: int, strength: float, seed: int) -> None:
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
        raise TypeError(f"channel is one whole number, got {channel!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number, at least 1; got {steps!r}.")
    if isinstance(strength, bool) or not isinstance(strength, int | float) or strength < 0:
        raise ValueError(f"strength must be a number, 0 or more; got {strength!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number 0 or more, got {seed!r}.")


def _checked_image(image: torch.Tensor, known: KnownInput) -> torch.Tensor:
    """The image as a 1×C×H×W float32 batch on the CPU, checked against the model."""
    if isinstance(image, torch.Tensor) and image.dim() == 3:
        image = image[None]
    pixels = checked_pixels(image, known, "accentuate")
    if len(pixels) != 1:
        raise ValueError(
            f"accentuate changes one image: pass C×H×W or 1×C×H×W, not {len(pixels)} images."
        )
    shape = tuple(pixels.shape[1:])
    expected = (known.channels, *known.size) if known.size is not None else None
    if expected is not None and shape != expected:
        raise ValueError(
            f"The image is {'×'.join(map(str, shape))} (C×H×W), but the model takes "
            f"{'×'.join(map(str, expected))}: load it with cnnlens.legibility.load_pixels "
            f"(model, dataset, size={known.size[0]}) or resize it first."
        )
    if pixels.shape[-1] != pixels.shape[-2]:
        raise ValueError(f"accentuate takes a square image, got {shape[1]}×{shape[2]} pixels.")
    return pixels.cpu()


class _Accentuator:
    """One image's optimisation on the private copy."""

    def __init__(
        self,
        copy: PrivateCopy,
        known: KnownInput,
        path: str,
        channel: int,
        original: torch.Tensor,
    ) -> None:
        self.copy, self.known, self.path, self.channel = copy, known, path, channel
        self.original = original
        self.side = original.shape[-1]
        with torch.no_grad():
            # The layer's spread on the image: activations in these units make one
            # strength serve layers whose values differ tenfold and more.
            output = copy.run_to(pixel_input(copy, known, original), path).output.float()
            self.unit = float(output.std()) or 1.0
        self.logit = torch.logit(original.clamp(_EDGE, 1 - _EDGE))
        self.start = torch.sigmoid(self.logit)

    def score(self, pixels: torch.Tensor) -> torch.Tensor:
        """The channel's mean activation on each image of a pixel batch."""
        output = self.copy.run_to(pixel_input(self.copy, self.known, pixels), self.path).output
        picked = output[:, self.channel].float()
        return picked.flatten(1).mean(1) if picked.dim() > 1 else picked

    def image(self, spectrum: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The original plus the change a spectrum stands for, in [0, 1]; zero is no change."""
        change = torch.fft.irfftn(
            torch.view_as_complex((spectrum * scale).contiguous()),
            s=(self.side, self.side),
            norm="ortho",
        )
        shifted = self.original + torch.sigmoid(self.logit + change) - self.start
        return shifted.clamp(0, 1)  # only the _EDGE next to black and white reaches past

    def run(self, steps: int, strength: float, seed: int) -> torch.Tensor:
        """Adam on the change's spectrum; returns the final 1×C×H×W image, detached."""
        device = self.original.device
        channels = self.original.shape[1]
        spectrum = torch.zeros(
            (1, channels, self.side, self.side // 2 + 1, 2), device=device, requires_grad=True
        )
        scale = _frequency_scale(self.side, device)
        generator = torch.Generator().manual_seed(_item_seed(seed, self.channel))
        views = _Views(self.side, torch.rand((1, steps, _DRAWS), generator=generator).to(device))
        optimizer = torch.optim.Adam([spectrum], lr=_LEARNING_RATE)
        for step in range(steps):
            image = self.image(spectrum, scale)
            distance = (image - self.original).square().mean()
            loss = strength * distance - self.score(views(image, step)).sum() / self.unit
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return self.image(spectrum, scale)
