"""Feature visualization: an image synthesised to excite one channel most.

:func:`visualize` follows Lucid/Lucent's published recipe in plain torch. The
image is parameterised in Fourier space with a 1/f spectrum (colours
decorrelated by ImageNet's colour correlation for an RGB model, one channel
for a grayscale one) and squashed into [0, 1] by a sigmoid. Adam at learning
rate 0.05 raises the channel's mean over its map, seen through a random view
at each step: padded with grey, jittered, scaled by 0.9-1.1, rotated by up to
±10° and jittered again, in one ``affine_grid``/``grid_sample``. Lucent's pad
and jitters (12, 8 and 4 pixels at 128 px) scale with the image: 3, 2 and 1 on
the demo's 28 px. The network runs on a private copy of the model, up to the
target layer only, so the caller's model is never touched and no hook is left
behind. The negative objective lowers the channel's mean instead, through the
same views: what the channel is most against.

One batch item per channel: one optimisation serves many channels. Each
channel draws its start noise and its views from its own generator, seeded
by ``(seed, channel)``, so a channel's image does not depend on which other
channels shared its batch (beyond floating-point rounding), and the same seed
gives the same image.

Lucid's images often say little: the mean of a linear channel is largest for a
uniform image (7 of 8 of the demo's ``conv_1`` channels are white or black
squares). With a prior of the dataset's own images
(:func:`~cnnlens.priors.image_prior`) two more methods make images that
look like the data, through the same views:

- ``"pca"``, the default where a prior is given (the cheap form of Nguyen et
  al. 2016's generator prior): the mean image plus the dataset's principal
  components, each coefficient bounded by tanh to 3 standard deviations and the
  whole vector to 0.7 of a real image's typical length. On the demo's
  ``conv_1`` and ``conv_2`` it draws digit strokes (3s, 0s, 6s): no uniform
  image, and the network places them nearer real digits than Lucid's.
- ``"maco"`` (Fel et al. 2023): the dataset's average magnitude spectrum with
  the phase optimised; sharp textures. Its mask (:func:`visualize_with_masks`)
  adds up the gradient's magnitude on the image over the steps, as MACO does.

Both raise the rectified output where an activation follows the layer
(:func:`_rectified`); ``"pca"`` adds a tenth of the layer's own mean to it, so a
raw (pre-ReLU) channel's own mean rises too: on the demo's ``conv_1`` 6 of 8
channels then reach the median digit's mean, against 5 with the rectified mean
alone. :class:`ChannelMaskSpec` stores a picture's mask beside it.
``diversity=k`` paints k images per channel, pushed apart by Lucid's diversity
objective on the layer's Gram matrices.

:class:`ChannelImageSpec` is one channel's image as a result the store keeps
(:mod:`cnnlens.store`), so a channel atlas and a channel card share tiles, and
everyone and every restart reuses them; :class:`ChannelImagesSpec` is an atlas of
them, stored group by group as it is painted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.borrow import (
    LARGEST_DEFAULT_SIDE,
    KnownInput,
    borrowed_copy,
    channel_list,
    check_channels,
    count_channels,
    plain_module,
)
from cnnlens.layers import meta_copy
from cnnlens.priors import ImagePrior, ImagePriorSpec
from cnnlens.private_copy import MODEL_FAILURES, ModuleNotRun, PrivateCopy, Stop, tensor_output
from cnnlens.results import Cancelled, ModelSpec, Run

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel
    from cnnlens.store import ResultStore

__all__ = [
    "DEFAULT_METHOD",
    "LARGEST_DEFAULT_SIDE",
    "MEMORY_LIMIT",
    "METHODS",
    "RECIPE_VERSION",
    "ChannelImageSpec",
    "ChannelImagesSpec",
    "ChannelMaskSpec",
    "Visualization",
    "default_side",
    "to_uint8",
    "visualize",
    "visualize_with_masks",
]

RECIPE_VERSION = 1
"""Bump when :func:`visualize` changes its images: stored tiles of older recipes are never read."""

MEMORY_LIMIT = 2_000_000_000
"""The most bytes (2 GB) one group of :func:`visualize` may take for its forward and its
gradient. A group that would take more is split; an image that takes more alone is
refused, with the largest side that fits."""

# Lucid's ImageNet colour correlation (the square root of its SVD), scaled so that its
# largest column has norm 1: independent noise per row becomes natural-looking colour.
_COLOR_CORRELATION = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
_COLOR_CORRELATION /= _COLOR_CORRELATION.norm(dim=0).max()
_START_SD = 0.01  # the spectrum's start noise
_SATURATION = 4.0  # Lucid divides the image by 4 before the sigmoid: a grey start, less saturation
_LEARNING_RATE = 0.05
# Lucent's view, in pixels of a 128-px image: pad 12, jitter 8, jitter 4. They scale with
# the image: on the demo's 28 px they are 3, 2 and 1.
_REFERENCE_SIDE = 128
_PAD, _JITTER, _FINE_JITTER = 12, 8, 4
_SCALES = (0.9, 1.1)
_DEGREES = 10.0
_DRAWS = 6  # per step: jitter x, y; scale; angle; fine jitter x, y

METHODS = ("lucid", "pca", "maco")
"""The ways :func:`visualize` makes an image: Lucid's recipe; the dataset's principal
components (Nguyen et al. 2016's cheap prior); MACO's phase with the dataset's magnitude
spectrum (Fel et al. 2023)."""

DEFAULT_METHOD = "pca"
"""The method :func:`visualize` uses when it is given a prior (``"lucid"`` without one)."""

PCA_BOUND = 3.0
"""The most a principal component's coefficient may reach, in standard deviations."""

_RADIUS = 0.7  # the coefficients' largest norm, in sqrt(k) standard deviations
_METHOD_VERSIONS = {"pca": 2, "maco": 1}  # bump one when its images change
_RAW_SHARE = 0.1  # pca: the rectified mean plus this share of the layer's own mean (issue 24)
_DIVERSITY = 1.0  # the diversity term's weight, relative to the channels' mean objective


def visualize(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: int | Sequence[int],
    *,
    size: int | tuple[int, int] | None = None,
    steps: int = 256,
    seed: int = 0,
    negative: bool = False,
    method: str | None = None,
    prior: ImagePrior | None = None,
    diversity: int = 1,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Synthesise the image that excites each channel of a layer most (or least).

    Example:
        >>> from cnnlens import open_model, visualize
        >>> visualize(open_model("demo"), "conv_2", [0, 1], steps=8).shape
        torch.Size([2, 1, 28, 28])

    Args:
        model: an ``nn.Module`` (its input channels are its first ``Conv2d``'s, and
            nothing is normalised), or a :class:`~cnnlens.models.LoadedModel` (its
            input spec's channels, and its mean/std normalisation is applied inside
            the forward).
        layer: a layer name (renamed layers for a sequential stack, qualified
            module names otherwise).
        channels: one channel or several; a 2-D output's units count as channels.
        size: the image side in pixels. Default :func:`default_side`: the
            LoadedModel's input side, at most 128; required for a plain module.
            With a ``prior``, the prior's side.
        steps: optimisation steps (256-512 in Lucid).
        seed: the seed of every random draw: the same seed gives the same images.
        negative: lower the channel's mean instead: what the channel is most against.
        method: how the image is made (:data:`METHODS`): ``"lucid"`` (Lucid's recipe, as
            it always was: the layer's own mean), ``"pca"`` (the image stays in the span
            of the dataset's principal components) or ``"maco"`` (the phase of the
            dataset's magnitude spectrum). The last two raise the channel's rectified
            mean where an activation follows the layer (see :func:`_rectified`; ``"pca"``
            adds 0.1 of the layer's own mean), and its plain mean for ``negative``.
            Default (``None``): :data:`DEFAULT_METHOD` (``"pca"``, the most legible on
            the demo) when a ``prior`` is given, else ``"lucid"``.
        prior: what the dataset's images look like (:func:`~cnnlens.priors.image_prior`),
            needed by every method but ``"lucid"``.
        diversity: images per channel; above 1 they are pushed apart (Lucid's diversity
            objective) and the ``diversity`` images of a channel come one after another.
        batch_size: images optimised together, at most: more go in several groups,
            and so do fewer where a group would take more than :data:`MEMORY_LIMIT`.
        on_progress: called with ``(steps done, steps in all)`` after each step.
        should_stop: asked before each step; ``True`` stops with :class:`Cancelled`.

    Returns:
        A ``len(channels)·diversity×C×size×size`` float32 tensor on the CPU, values in
        [0, 1]: the same on every run of a seed on the CPU, bit for bit (a GPU's
        scatter-adds may differ in the last bits).

    Raises:
        ValueError: for an unknown layer or method, a channel out of range (the
            message names the valid range), a layer without 2-D or 4-D output, a size
            that does not fit the network or needs more than :data:`MEMORY_LIMIT` for
            one image (the message names the largest side that fits), a method that
            needs a prior without one, a prior of another model input, or a bad number
            of steps, size, diversity or batch.
        TypeError: for a model that is neither, or channels that are not integers.
        Cancelled: if ``should_stop()`` returned True.
    """
    return visualize_with_masks(
        model,
        layer,
        channels,
        size=size,
        steps=steps,
        seed=seed,
        negative=negative,
        method=method,
        prior=prior,
        diversity=diversity,
        batch_size=batch_size,
        on_progress=on_progress,
        should_stop=should_stop,
    ).images


@dataclass(frozen=True, eq=False)
class Visualization:
    """Feature visualizations and where each image matters.

    Attributes:
        images: N×C×S×S float32 in [0, 1] (:func:`visualize`'s images).
        masks: N×C×S×S float32, each image's attribution mask as MACO makes it: the
            absolute gradient of the objective with respect to the image, added up over
            the steps. Large where a change of the image changes the channel most.
        method: the method that made them.
    """

    images: torch.Tensor
    masks: torch.Tensor
    method: str


def visualize_with_masks(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: int | Sequence[int],
    *,
    size: int | tuple[int, int] | None = None,
    steps: int = 256,
    seed: int = 0,
    negative: bool = False,
    method: str | None = None,
    prior: ImagePrior | None = None,
    diversity: int = 1,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Visualization:
    """:func:`visualize`'s images with their attribution masks (MACO's transparency).

    Example:
        >>> from cnnlens import demo_dataset, open_model
        >>> from cnnlens.priors import image_prior
        >>> demo = open_model("demo")
        >>> prior = image_prior(demo, demo_dataset(), images=200, components=16)
        >>> found = visualize_with_masks(demo, "conv_2", [0], method="maco", prior=prior, steps=4)
        >>> found.images.shape == found.masks.shape
        True

    Args:
        model, layer, channels, size, steps, seed, negative, method, prior, diversity,
            batch_size, on_progress, should_stop: as :func:`visualize`.

    Returns:
        A :class:`Visualization`; its images equal :func:`visualize`'s.

    Raises:
        ValueError, TypeError, Cancelled: as :func:`visualize`.
    """
    method = _check_method(method, prior)
    chosen = channel_list(channels)
    _check_counts(steps=steps, batch_size=batch_size, diversity=diversity)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number 0 or more, got {seed!r}.")
    with borrowed_copy(model) as (copy, layers, spec):
        side = _checked_side(spec, size, prior, method)
        path = layers.path(layer)
        check_channels(layer, chosen, count_channels(copy, layer, path, spec, side))
        target = path if method == "lucid" or negative else _rectified(copy, path, spec, side)
        per_group = _group_size(model, layer, target, spec, side, copy.dtype, batch_size)
        per_group = max(1, per_group // diversity)  # a channel's images share a group
        groups = [chosen[start : start + per_group] for start in range(0, len(chosen), per_group)]
        task = _Task(
            copy, target, spec, side, steps, seed, negative, method, prior, diversity, path
        )
        progress = _Progress(steps * len(groups), on_progress, should_stop)
        # Whatever the caller's grad mode: the image's gradient is what is optimised.
        with torch.inference_mode(False), torch.enable_grad():
            found = [task.optimise(group, progress) for group in groups]
    return Visualization(
        torch.cat([images for images, _ in found]), torch.cat([masks for _, masks in found]), method
    )


def default_side(model: nn.Module | LoadedModel) -> int:
    """The side of an image when no ``size`` is given: the model's input side, at most
    :data:`LARGEST_DEFAULT_SIDE` (28 for the demo, 128 for ImageNet models).

    Raises:
        ValueError: for a plain ``nn.Module``, which has no input size.
    """
    return KnownInput.of(model).side()


class _Reached(Exception):
    """Ends a meta forward at its target module."""


def _image_bytes(
    model: nn.Module, path: str, channels: int, dtype: torch.dtype
) -> Callable[[int], int | None]:
    """The bytes one image's forward keeps up to a module, for an image side, from a
    forward on the meta device (nothing is computed): the input and every distinct output
    (an in-place op's counted once). ``None`` where the meta device cannot run it."""
    probe = meta_copy(model).eval()
    kept: list[torch.Tensor] = []

    def record(name: str, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and not any(output is seen for seen in kept):
            kept.append(output)
        if name == path:
            raise _Reached

    for name, module in probe.named_modules():
        module._forward_hooks.clear()  # the copy's: the caller's own hooks never see meta tensors
        module._forward_pre_hooks.clear()
        if name:
            module.register_forward_hook(partial(record, name))

    def measure(side: int) -> int | None:
        kept.clear()
        x = torch.empty((1, channels, side, side), device="meta", dtype=dtype)
        try:
            with torch.no_grad():
                probe(x)
        except _Reached:
            pass
        except (*MODEL_FAILURES, TypeError, ValueError):
            return None  # a forward the meta device cannot run; the real one says why
        return (x.numel() + sum(t.numel() for t in kept)) * x.element_size()

    return measure


def _group_size(
    model: nn.Module | LoadedModel,
    layer: str,
    path: str,
    spec: KnownInput,
    side: int,
    dtype: torch.dtype,
    batch_size: int,
) -> int:
    """Channels optimised together: ``batch_size``, or fewer where their forward and its
    gradient would take more than :data:`MEMORY_LIMIT`.

    Raises:
        ValueError: for an image that takes more alone, naming the largest side that fits.
    """
    if spec.channels is None:
        return batch_size  # count_channels says why nothing can be painted
    measure = _image_bytes(plain_module(model), path, spec.channels, dtype)
    one = measure(side)
    if one is None:
        return batch_size
    need = 2 * one  # the outputs and their gradients
    if need > MEMORY_LIMIT:
        low, high = 8, side  # memory grows with the side: the largest side that fits
        while low < high:
            middle = (low + high + 1) // 2
            if 2 * (measure(middle) or 0) <= MEMORY_LIMIT:
                low = middle
            else:
                high = middle - 1
        raise ValueError(
            f"A {side}×{side}-pixel image for {layer} needs about {need / 1e9:,.1f} GB for "
            f"its forward and gradient, more than the {MEMORY_LIMIT / 1e9:g} GB bound "
            f"(MEMORY_LIMIT): choose size={low} or less."
        )
    return max(1, min(batch_size, MEMORY_LIMIT // need))


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number, at least 1; got {value!r}.")


class _Progress:
    """Steps done over every group, reported and checked for a stop request."""

    def __init__(
        self,
        total: int,
        on_progress: Callable[[int, int], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.total = total
        self.done = 0
        self.on_progress = on_progress
        self.should_stop = should_stop

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"Stopped after {self.done} of {self.total} steps; nothing was kept.")

    def step(self) -> None:
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)


def _item_seed(seed: int, channel: int) -> int:
    """One well-mixed 63-bit seed per (seed, channel)."""
    state = np.random.SeedSequence([seed, channel]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _image(spectrum: torch.Tensor, scale: torch.Tensor, side: int) -> torch.Tensor:
    """The N×C×side×side image in (0, 1) that a spectrum stands for."""
    scaled = torch.view_as_complex((spectrum * scale).contiguous())
    image = torch.fft.irfftn(scaled, s=(side, side), norm="ortho") / _SATURATION
    if image.shape[1] == 3:
        image = torch.einsum("dc,nchw->ndhw", _COLOR_CORRELATION.to(image.device), image)
    return torch.sigmoid(image)


def _frequency_scale(side: int, device: torch.device) -> torch.Tensor:
    """1/f over the rfft2 grid, the lowest frequency capped at one cycle per image."""
    fy = torch.fft.fftfreq(side, device=device)[:, None]
    fx = torch.fft.rfftfreq(side, device=device)[None, :]
    frequencies = torch.sqrt(fx * fx + fy * fy)
    return (1.0 / frequencies.clamp(min=1.0 / side))[..., None]


class _Views:
    """Lucent's random view of each item at each step, as one affine resampling.

    The model sees a ``window``-pixel square of the image padded with grey
    (Lucent's crop after pad and jitters), resampled to the image's own side.
    """

    def __init__(self, side: int, draws: torch.Tensor) -> None:
        amount = side / _REFERENCE_SIDE
        pad = round(_PAD * amount)
        self.jitter = max(1, round(_JITTER * amount))
        self.fine_jitter = max(1, round(_FINE_JITTER * amount))
        self.side = side
        self.window = side + 2 * pad - self.jitter - self.fine_jitter
        self.draws = draws  # N×steps×_DRAWS uniform numbers in [0, 1)

    def __call__(self, images: torch.Tensor, step: int) -> torch.Tensor:
        d = self.draws[:, step]
        shift = (d[:, 0:2] - 0.5) * self.jitter
        scale = _SCALES[0] + (_SCALES[1] - _SCALES[0]) * d[:, 2]
        angle = torch.deg2rad((d[:, 3] - 0.5) * 2 * _DEGREES)
        fine = (d[:, 4:6] - 0.5) * self.fine_jitter
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        # Output pixel u (in [-1, 1]) -> window offset u·window/2 px -> fine jitter, rotate,
        # scale -> coarse jitter -> the image's normalised coordinates (half a side = 1).
        linear = rotation * (self.window / self.side / scale)[:, None, None]
        offset = (torch.einsum("nij,nj->ni", rotation, fine) / scale[:, None] + shift) * (
            2 / self.side
        )
        theta = torch.cat([linear, offset[:, :, None]], 2)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # Sampling the image minus grey with zeros outside pads it with grey everywhere.
        centred = F.grid_sample(
            images - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return centred + 0.5


def _item_generator(seed: int, channel: int, copy: int) -> torch.Generator:
    """The generator of one image: ``(seed, channel)``'s for a channel's first image (as
    before diversity), ``(seed, channel, copy)``'s for its others."""
    if copy == 0:
        return torch.Generator().manual_seed(_item_seed(seed, channel))
    state = np.random.SeedSequence([seed, channel, copy]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def _start(
    items: list[tuple[int, int]], shape: tuple[int, ...], sd: float, steps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's start parameters and its views' random numbers, from its own generator."""
    starts, draws = [], []
    for channel, copy in items:
        generator = _item_generator(seed, channel, copy)
        starts.append(torch.randn(shape, generator=generator) * sd)
        draws.append(torch.rand((steps, _DRAWS), generator=generator))
    return torch.stack(starts), torch.stack(draws)


def _model_input(copy: PrivateCopy, spec: KnownInput) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels in [0, 1] -> the copy's input: normalised as the spec says, its dtype and format."""
    mean = std = None
    if spec.mean is not None and spec.std is not None:
        mean = torch.tensor(spec.mean, device=copy.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, device=copy.device).view(1, -1, 1, 1)

    def convert(x: torch.Tensor) -> torch.Tensor:
        if mean is not None and std is not None:
            x = (x - mean) / std
        x = x.to(copy.dtype)  # differentiable, unlike PrivateCopy.prepare, which detaches
        if copy.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    return convert


def _check_method(method: str | None, prior: ImagePrior | None) -> str:
    """The method to use: the one asked for, checked, or the default for the prior given."""
    if prior is not None and not isinstance(prior, ImagePrior):
        raise TypeError(
            f"prior must be an ImagePrior (cnnlens.priors.image_prior), got {type(prior).__name__}."
        )
    if method is None:
        return DEFAULT_METHOD if prior is not None else "lucid"
    if method not in METHODS:
        raise ValueError(
            f"Unknown method {method!r}: choose one of {', '.join(map(repr, METHODS))}."
        )
    if method != "lucid" and prior is None:
        raise ValueError(
            f"method={method!r} needs to know what the dataset's images look like: pass "
            "prior=image_prior(model, dataset) (from cnnlens.priors), or use "
            "method='lucid'."
        )
    return method


def _checked_side(
    spec: KnownInput, size: int | tuple[int, int] | None, prior: ImagePrior | None, method: str
) -> int:
    """The image side: ``size``, or the prior's, or the model's; a prior checked to fit it.

    Raises:
        ValueError: for a prior of another side, channel count or normalisation.
    """
    uses_prior = method != "lucid" and prior is not None
    side = spec.side(prior.side if size is None and uses_prior else size)
    if not uses_prior:
        return side
    assert prior is not None
    mean = np.zeros(prior.channels) if spec.mean is None else np.asarray(spec.mean)
    std = np.ones(prior.channels) if spec.std is None else np.asarray(spec.std)
    if prior.side != side or prior.channels != spec.channels:
        raise ValueError(
            f"The prior holds {prior.channels}-channel images of {prior.side} px, and this "
            f"picture is {spec.channels}-channel at {side} px: make one with "
            f"image_prior(model, dataset, side={side})."
        )
    if not (np.allclose(prior.pixel_mean, mean) and np.allclose(prior.pixel_std, std)):
        raise ValueError(
            "The prior was made with another normalisation than this model's: make one with "
            "image_prior(model, dataset) for this model."
        )
    return side


def _rectified(copy: PrivateCopy, path: str, spec: KnownInput, side: int) -> str:
    """The module whose output the methods other than Lucid's raise: the layer's own, or,
    where an activation module follows it before the next convolution with an output of
    the same shape (the demo's ``conv_1`` -> ``relu_1``, a ResNet ``conv1`` -> its ``relu``
    after ``bn1``), that activation's. The mean of a linear channel is largest for a
    uniform image; its rectified mean is not."""
    from cnnlens.attribution import _ACTIVATIONS, _holder, _Record

    assert spec.channels is not None  # checked by count_channels
    record = _Record(copy.model)
    noise = torch.rand((1, spec.channels, side, side), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        copy.run(copy.prepare(noise), record)
    fired = record.fired
    index = next((i for i, call in enumerate(fired) if call.path == path), None)
    if index is None or isinstance(record.modules[path], _ACTIVATIONS):
        return path
    shape = getattr(fired[index].output, "shape", None)
    for later in range(index + 1, len(fired)):
        call = fired[later]
        if call.conv:
            break
        if isinstance(record.modules[call.path], _ACTIVATIONS) and (
            getattr(call.output, "shape", None) == shape
        ):
            return _holder(fired, later) or path
    return path


class _Lucid:
    """Lucid's image: a 1/f-scaled spectrum, decorrelated colours, a sigmoid."""

    raw_share = 0.0  # the share of the layer's own mean added to the rectified one
    learning_rate = _LEARNING_RATE
    start_sd = _START_SD

    @staticmethod
    def start_shape(channels: int, side: int, prior: ImagePrior | None) -> tuple[int, ...]:
        return (channels, side, side // 2 + 1, 2)  # real and imaginary parts of an rfft2

    def __init__(self, start: torch.Tensor, side: int, prior: ImagePrior | None) -> None:
        self.tensor = start.requires_grad_(True)
        self.scale = _frequency_scale(side, start.device)
        self.side = side

    def image(self) -> torch.Tensor:
        return _image(self.tensor, self.scale, self.side)


class _FromPrior:
    """An image in the model's input space of a prior, shown as pixels in [0, 1]."""

    def __init__(self, start: torch.Tensor, side: int, prior: ImagePrior | None) -> None:
        assert prior is not None  # checked by _check_method
        device = start.device
        self.tensor = start.requires_grad_(True)
        self.prior = prior
        self.mean = torch.from_numpy(np.array(prior.mean)).to(device)
        self.pixel_mean = torch.from_numpy(np.array(prior.pixel_mean)).to(device).view(-1, 1, 1)
        self.pixel_std = torch.from_numpy(np.array(prior.pixel_std)).to(device).view(-1, 1, 1)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> pixels, clipped to [0, 1] with the gradient passed straight
        through, so a pixel pushed past black or white can come back."""
        pixels = x * self.pixel_std + self.pixel_mean
        return pixels + (pixels.clamp(0, 1) - pixels).detach()


class _Pca(_FromPrior):
    """Nguyen et al. 2016's cheap prior: the mean image plus the principal components, each
    coefficient bounded by tanh to :data:`PCA_BOUND` of its standard deviation."""

    raw_share = _RAW_SHARE
    learning_rate = 0.05
    start_sd = 0.5

    @staticmethod
    def start_shape(channels: int, side: int, prior: ImagePrior | None) -> tuple[int, ...]:
        assert prior is not None
        return (len(prior.deviations),)

    def __init__(self, start: torch.Tensor, side: int, prior: ImagePrior | None) -> None:
        super().__init__(start, side, prior)
        components = torch.from_numpy(np.array(self.prior.components)).to(start.device)
        deviations = torch.from_numpy(np.array(self.prior.deviations)).to(start.device)
        self.basis = components * deviations[:, None]

    def span(self) -> torch.Tensor:
        """The image in the model's input space, before clipping: in the components' span."""
        return self.combine(self.tensor)

    def combine(self, raw: torch.Tensor) -> torch.Tensor:
        """The mean image plus the components weighted by bounded coefficients."""
        coefficients = PCA_BOUND * torch.tanh(raw / PCA_BOUND)
        # A real image's coefficients (in standard deviations) have a norm of about
        # sqrt(k): a longer vector is shrunk to it, so the image keeps a real one's energy.
        typical = _RADIUS * coefficients.shape[-1] ** 0.5
        norms = coefficients.norm(dim=-1, keepdim=True)
        coefficients = coefficients * (typical / norms.clamp(min=typical))
        return self.mean + (coefficients @ self.basis).view(-1, *self.mean.shape)

    def image(self) -> torch.Tensor:
        return self.pixels(self.span())


class _Maco(_FromPrior):
    """MACO: the dataset's average magnitude spectrum, with the phase optimised (the mean
    brightness, the zero frequency, kept as the dataset's)."""

    raw_share = 0.0
    learning_rate = 0.1
    start_sd = 1.0

    @staticmethod
    def start_shape(channels: int, side: int, prior: ImagePrior | None) -> tuple[int, ...]:
        return (channels, side, side // 2 + 1)

    def __init__(self, start: torch.Tensor, side: int, prior: ImagePrior | None) -> None:
        super().__init__(start, side, prior)
        self.magnitude = torch.from_numpy(np.array(self.prior.spectrum)).to(start.device)
        self.free = torch.ones_like(self.magnitude)
        self.free[:, 0, 0] = 0
        self.side = side

    def image(self) -> torch.Tensor:
        spectrum = torch.polar(self.magnitude, self.tensor * self.free)
        return self.pixels(torch.fft.irfft2(spectrum, s=(self.side, self.side), norm="ortho"))


_PARAMETERISATIONS: dict[str, Any] = {
    "lucid": _Lucid,
    "pca": _Pca,
    "maco": _Maco,
}


class _Pair:
    """A forward's call that keeps a layer's own output (a copy: an in-place activation
    would overwrite it) and stops at its rectified output."""

    def __init__(self, layer: str, path: str) -> None:
        self.layer = layer
        self.path = path
        self.raw: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        if path == self.layer and self.raw is None:
            self.raw = tensor_output(path, output).clone()
        elif path == self.path and self.raw is not None and self.output is None:
            self.output = tensor_output(path, output)
            raise Stop


def _similarity(output: torch.Tensor, diversity: int) -> torch.Tensor:
    """Lucid's diversity term: the mean cosine similarity of the Gram matrices (of the
    feature vectors, for a 2-D output) of each channel's images, summed over channels."""
    features = output.float()
    if features.dim() == 4:
        flat = features.reshape(features.shape[0], features.shape[1], -1)
        features = flat @ flat.transpose(1, 2) / flat.shape[-1]
    grams = F.normalize(features.reshape(-1, diversity, features[0].numel()), dim=2)
    similarity = grams @ grams.transpose(1, 2)
    off = ~torch.eye(diversity, dtype=torch.bool, device=similarity.device)
    return similarity[:, off].mean(1).sum()


@dataclass(frozen=True)
class _Task:
    """One call's settings: what each group of channels is optimised with."""

    copy: PrivateCopy
    path: str
    spec: KnownInput
    side: int
    steps: int
    seed: int
    negative: bool
    method: str
    prior: ImagePrior | None
    diversity: int
    layer: str  # the layer's own module; ``path`` is its rectified output's (or the same)

    def output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target's output, and the layer's own where the method adds a share of it
        (:func:`_rectified`'s target differs from the layer), else ``None``."""
        share = _PARAMETERISATIONS[self.method].raw_share
        if not share or self.layer == self.path:
            return self.copy.run_to(x, self.path).output, None
        pair = _Pair(self.layer, self.path)
        self.copy.run(x, pair)
        if pair.output is None or pair.raw is None:
            raise ModuleNotRun([self.path])
        return pair.output, pair.raw

    def score(
        self,
        output: torch.Tensor,
        raw: torch.Tensor | None,
        index: torch.Tensor,
        wanted: torch.Tensor,
    ) -> torch.Tensor:
        """Each item's objective: its channel's mean on the target, plus the method's
        share of its mean on the layer's own output where there is one."""
        picked = output[index, wanted].float()
        score = picked.flatten(1).mean(1) if picked.dim() > 1 else picked
        if raw is not None:
            share = _PARAMETERISATIONS[self.method].raw_share
            score = score + share * raw[index, wanted].float().flatten(1).mean(1)
        return score

    def optimise(
        self, channels: list[int], progress: _Progress
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched optimisation: ``diversity`` images per channel, each raising its own
        channel's mean; the images and their masks. Runs with gradients enabled."""
        assert self.spec.channels is not None  # checked by count_channels
        device = self.copy.device
        kind = _PARAMETERISATIONS[self.method]
        items = [(channel, copy) for channel in channels for copy in range(self.diversity)]
        shape = kind.start_shape(self.spec.channels, self.side, self.prior)
        start, draws = _start(items, shape, kind.start_sd, self.steps, self.seed)
        image = kind(start.to(device), self.side, self.prior)
        views = _Views(self.side, draws.to(device))
        to_input = _model_input(self.copy, self.spec)
        index = torch.arange(len(items), device=device)
        wanted = torch.tensor([channel for channel, _ in items], device=device)
        sign = 1.0 if self.negative else -1.0  # the loss: minus the channel's mean, or plus it
        optimizer = torch.optim.Adam([image.tensor], lr=kind.learning_rate)
        masks = torch.zeros((len(items), self.spec.channels, self.side, self.side), device=device)
        for step in range(self.steps):
            progress.check()
            pixels = image.image()
            pixels.retain_grad()
            output, raw = self.output(to_input(views(pixels, step)))
            score = self.score(output, raw, index, wanted)
            # Each item's loss involves its own image only (the diversity term, its
            # channel's), so Adam (element-wise) moves each as if it were alone.
            loss = sign * score.sum()
            if self.diversity > 1:
                loss = loss + _DIVERSITY * score.detach().abs().mean() * _similarity(
                    output, self.diversity
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            assert pixels.grad is not None
            masks += pixels.grad.abs()
            optimizer.step()
            progress.step()
        with torch.no_grad():
            return image.image().float().cpu(), masks.float().cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] as pixels: N×H×W uint8 for one channel, N×H×W×3 for three.

    Raises:
        ValueError: for a batch that is not N×C×H×W.
    """
    if images.dim() != 4:
        raise ValueError(f"Expected N×C×H×W images, got shape {tuple(images.shape)}.")
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


@dataclass(frozen=True, eq=False)
class ChannelImageSpec(ModelSpec[np.ndarray]):
    """One channel's feature visualization as uint8 pixels (:func:`to_uint8` of
    :func:`visualize`), stored so an atlas and a channel card share it.

    Its key holds the model's name, weights and dtype, the layer, the channel, the
    settings and :data:`RECIPE_VERSION`, so images of an older recipe are never read;
    for a method other than ``"lucid"`` also the method, its version and the prior's key.

    Attributes:
        layer: the layer.
        channel: the channel.
        size: the image side; ``None`` for :func:`default_side`.
        steps: optimisation steps.
        seed: the random seed.
        negative: the image that lowers the channel most.
        method: :func:`visualize`'s method; ``"lucid"`` by default, whose tiles keep
            the keys they always had.
        prior: the dataset's :class:`~cnnlens.priors.ImagePriorSpec`, for every
            method but ``"lucid"`` (``None`` for it): computed once, stored, and part
            of the key.
    """

    layer: str
    channel: int
    size: int | None = None
    steps: int = 256
    seed: int = 0
    negative: bool = False
    method: str = field(default="lucid", kw_only=True)
    prior: ImagePriorSpec | None = field(default=None, kw_only=True)
    kind = "feature_visualization"
    version = RECIPE_VERSION

    def __post_init__(self) -> None:
        _check_spec_method(self.method, self.prior)

    @property
    def side(self) -> int:
        """The image side in pixels."""
        return KnownInput.of(self.loaded).side(self.size)

    def parts(self) -> dict[str, object]:
        return {
            **super().parts(),
            "layer": self.layer_path(self.layer),
            "channel": int(self.channel),
            "size": self.side,
            "steps": int(self.steps),
            "seed": int(self.seed),
            "negative": bool(self.negative),
            **_method_parts(self.method, self.prior),
        }

    @property
    def title(self) -> str:
        return f"painting what channel {self.channel} of {self.layer} looks for"

    def progress_text(self, done: int, total: int) -> str:
        return f"Painting channel {self.channel} of {self.layer}: step {done} of {total}"

    def compute(self, run: Run) -> np.ndarray:
        images = visualize(
            self.loaded,
            self.layer,
            [self.channel],
            size=self.side,
            steps=self.steps,
            seed=self.seed,
            negative=self.negative,
            method=self.method,
            prior=None if self.prior is None else run.get(self.prior),
            on_progress=run.report,
            should_stop=run.should_stop,
        )
        return to_uint8(images)[0]

    def decode(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        tile = super().decode(arrays)
        if tile.dtype != np.uint8 or tile.ndim not in (2, 3):
            raise ValueError("A stored feature visualization is not an image.")
        return tile


@dataclass(frozen=True, eq=False)
class ChannelMaskSpec(ChannelImageSpec):
    """Where one channel's picture matters: its attribution mask
    (:func:`visualize_with_masks`), C×S×S float32, stored beside the picture.

    Its fields are :class:`ChannelImageSpec`'s, and so are its key's parts, under a kind
    of its own. Computing it paints the picture too: the picture's tile is stored as well
    where it is missing (a stored one is left as it is), so one run gives both.
    """

    kind = "feature_visualization_mask"

    @classmethod
    def of(cls, tile: ChannelImageSpec) -> ChannelMaskSpec:
        """The mask of a stored picture's spec."""
        return cls(
            tile.loaded,
            tile.layer,
            tile.channel,
            tile.size,
            tile.steps,
            tile.seed,
            tile.negative,
            method=tile.method,
            prior=tile.prior,
        )

    @property
    def image(self) -> ChannelImageSpec:
        """The picture's own spec."""
        return ChannelImageSpec(
            self.loaded,
            self.layer,
            self.channel,
            self.size,
            self.steps,
            self.seed,
            self.negative,
            method=self.method,
            prior=self.prior,
        )

    def compute(self, run: Run) -> np.ndarray:
        found = visualize_with_masks(
            self.loaded,
            self.layer,
            [self.channel],
            size=self.side,
            steps=self.steps,
            seed=self.seed,
            negative=self.negative,
            method=self.method,
            prior=None if self.prior is None else run.get(self.prior),
            on_progress=run.report,
            should_stop=run.should_stop,
        )
        if run.find(self.image) is None:
            run.keep(self.image, np.ascontiguousarray(to_uint8(found.images)[0]))
        return found.masks[0].numpy()

    def decode(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        mask = ModelSpec.decode(self, arrays)
        if mask.dtype != np.float32 or mask.ndim != 3:
            raise ValueError("A stored attribution mask is not a C×H×W float32 array.")
        return mask


Tile = tuple[int, bool]
"""One image of a :class:`ChannelImagesSpec`: a channel, and whether it is the negative one."""


@dataclass(frozen=True, eq=False)
class ChannelImagesSpec(ModelSpec[np.ndarray]):
    """Several channels' feature visualizations (a channel atlas, or a channel card's
    pair), each stored on its own as a :class:`ChannelImageSpec`.

    The missing images are computed together in groups of ``batch_size`` (one
    objective per group), and each group is stored as soon as it is finished: a
    stopped atlas keeps its finished groups, never part of one, and the next run
    goes on from them.

    Attributes:
        layer: the layer.
        channels: the channels.
        size, steps, seed: as :class:`ChannelImageSpec`.
        negatives: which images of each channel: ``(False,)`` what excites it most,
            ``(True,)`` what it is most against, ``(False, True)`` both.
        method, prior: as :class:`ChannelImageSpec`.
        batch_size: channels optimised together (not part of the key).
    """

    layer: str
    channels: tuple[int, ...]
    size: int | None = None
    steps: int = 256
    seed: int = 0
    negatives: tuple[bool, ...] = (False,)
    method: str = field(default="lucid", kw_only=True)
    prior: ImagePriorSpec | None = field(default=None, kw_only=True)
    batch_size: int = field(default=64, kw_only=True)
    kind = "channel_images"
    version = RECIPE_VERSION
    resumable = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(channel_list(self.channels)))
        _check_counts(batch_size=self.batch_size)
        _check_spec_method(self.method, self.prior)

    @property
    def tiles(self) -> list[Tile]:
        """Every image, in the order the result stacks them: by objective, then channel."""
        return list(
            dict.fromkeys(
                (channel, negative) for negative in self.negatives for channel in self.channels
            )
        )

    def tile(self, channel: int, negative: bool = False) -> ChannelImageSpec:
        """One channel's image."""
        return ChannelImageSpec(
            self.loaded,
            self.layer,
            channel,
            self.size,
            self.steps,
            self.seed,
            negative,
            method=self.method,
            prior=self.prior,
        )

    def parts(self) -> dict[str, object]:
        return {"tiles": [self.tile(*tile).key for tile in self.tiles]}

    @property
    def title(self) -> str:
        count = len(self.tiles)
        return f"painting {count} image{'s' if count > 1 else ''} of {self.layer}"

    def progress_text(self, done: int, total: int) -> str:
        return f"Painting {len(self.tiles)} images of {self.layer}: step {done:,} of {total:,}"

    def found(self, store: ResultStore) -> dict[Tile, np.ndarray]:
        """The images already stored, by tile; computes nothing."""
        images = {}
        for tile in self.tiles:
            image = store.peek(self.tile(*tile))
            if image is not None:
                images[tile] = image
        return images

    def missing(self, store: ResultStore) -> list[Tile]:
        """The images not stored yet, in order."""
        found = self.found(store)
        return [tile for tile in self.tiles if tile not in found]

    def groups(self, missing: Sequence[Tile], at_least: int = 1) -> list[list[Tile]]:
        """The missing images in groups of one objective each, at most ``batch_size``
        images a group and at least ``at_least`` groups per objective (one per worker)."""
        groups = []
        for negative in self.negatives:
            todo = [tile for tile in missing if tile[1] == negative]
            if todo:
                count = max(-(-len(todo) // self.batch_size), min(at_least, len(todo)))
                parts = np.array_split(np.arange(len(todo)), count)
                groups.extend([todo[i] for i in part] for part in parts)
        return groups

    def find(self, store: ResultStore) -> np.ndarray | None:
        images = self.found(store)
        return self._stack(images) if len(images) == len(self.tiles) else None

    def save(self, store: ResultStore, result: np.ndarray) -> np.ndarray:
        return result  # each image was stored as it was finished

    def compute(self, run: Run) -> np.ndarray:
        images = self.found(run.store)
        groups = self.groups([tile for tile in self.tiles if tile not in images])
        prior = None if self.prior is None or not groups else run.get(self.prior)
        for index, group in enumerate(groups):
            painted = visualize(
                self.loaded,
                self.layer,
                [channel for channel, _ in group],
                size=self.tile(*group[0]).side,
                steps=self.steps,
                seed=self.seed,
                negative=group[0][1],
                method=self.method,
                prior=prior,
                batch_size=self.batch_size,
                on_progress=_offset(run.report, index * self.steps, len(groups) * self.steps),
                should_stop=run.should_stop,
            )
            for tile, image in zip(group, to_uint8(painted), strict=True):
                images[tile] = run.keep(self.tile(*tile), np.ascontiguousarray(image))
        return self._stack(images)

    def _stack(self, images: dict[Tile, np.ndarray]) -> np.ndarray:
        pixels = np.stack([images[tile] for tile in self.tiles])
        pixels.setflags(write=False)  # stored images serve every session
        return pixels


def _check_spec_method(method: str, prior: ImagePriorSpec | None) -> None:
    """A stored image's method, checked: a prior is given exactly where one is needed.

    Raises:
        ValueError: for an unknown method, or a prior missing or given in vain.
    """
    if method not in METHODS:
        raise ValueError(
            f"Unknown method {method!r}: choose one of {', '.join(map(repr, METHODS))}."
        )
    if (method == "lucid") != (prior is None):
        raise ValueError(
            f"method={method!r} "
            + (
                "takes no prior: leave prior=None."
                if prior is not None
                else "needs prior=ImagePriorSpec(loaded, dataset) (cnnlens.priors)."
            )
        )


def _method_parts(method: str, prior: ImagePriorSpec | None) -> dict[str, object]:
    """The key parts of a method: none for Lucid's (its stored tiles keep their keys)."""
    if prior is None:
        return {}
    return {"method": method, "method_version": _METHOD_VERSIONS[method], "prior": prior.key}


def _offset(
    on_progress: Callable[[int, int], None], before: int, total: int
) -> Callable[[int, int], None]:
    """Progress of one group reported as progress over all groups."""

    def report(done: int, _: int) -> None:
        on_progress(before + done, total)

    return report
