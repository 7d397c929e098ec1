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
from cnnlens.private_copy import MODEL_FAILURES, PrivateCopy
from cnnlens.results import Cancelled, ModelSpec, Run

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel
    from cnnlens.store import ResultStore

__all__ = [
    "LARGEST_DEFAULT_SIDE",
    "MEMORY_LIMIT",
    "RECIPE_VERSION",
    "ChannelImageSpec",
    "ChannelImagesSpec",
    "default_side",
    "to_uint8",
    "visualize",
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


def visualize(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: int | Sequence[int],
    *,
    size: int | tuple[int, int] | None = None,
    steps: int = 256,
    seed: int = 0,
    negative: bool = False,
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
        steps: optimisation steps (256-512 in Lucid).
        seed: the seed of every random draw: the same seed gives the same images.
        negative: lower the channel's mean instead: what the channel is most against.
        batch_size: channels optimised together, at most: more channels go in several
            groups, and so do fewer where a group would take more than :data:`MEMORY_LIMIT`.
        on_progress: called with ``(steps done, steps in all)`` after each step.
        should_stop: asked before each step; ``True`` stops with :class:`Cancelled`.

    Returns:
        A ``len(channels)×C×size×size`` float32 tensor on the CPU, values in [0, 1]:
        the same on every run of a seed on the CPU, bit for bit (a GPU's
        scatter-adds may differ in the last bits).

    Raises:
        ValueError: for an unknown layer, a channel out of range (the message
            names the valid range), a layer without 2-D or 4-D output, a size that
            does not fit the network or needs more than :data:`MEMORY_LIMIT` for one
            image (the message names the largest side that fits), or a bad number of
            steps, size or batch.
        TypeError: for a model that is neither, or channels that are not integers.
        Cancelled: if ``should_stop()`` returned True.
    """
    chosen = channel_list(channels)
    _check_counts(steps=steps, batch_size=batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number 0 or more, got {seed!r}.")
    with borrowed_copy(model) as (copy, layers, spec):
        side = spec.side(size)
        path = layers.path(layer)
        batch_size = _group_size(model, layer, path, spec, side, copy.dtype, batch_size)
        check_channels(layer, chosen, count_channels(copy, layer, path, spec, side))
        groups = [chosen[start : start + batch_size] for start in range(0, len(chosen), batch_size)]
        progress = _Progress(steps * len(groups), on_progress, should_stop)
        # Whatever the caller's grad mode: the image's gradient is what is optimised.
        with torch.inference_mode(False), torch.enable_grad():
            images = [
                _optimise(copy, path, spec, group, side, steps, seed, negative, progress)
                for group in groups
            ]
    return torch.cat(images)


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


def _start(
    channels: list[int], image_channels: int, side: int, steps: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's start spectrum and its views' random numbers, from its own generator."""
    spectra, draws = [], []
    shape = (image_channels, side, side // 2 + 1, 2)  # real and imaginary parts of an rfft2
    for channel in channels:
        generator = torch.Generator().manual_seed(_item_seed(seed, channel))
        spectra.append(torch.randn(shape, generator=generator) * _START_SD)
        draws.append(torch.rand((steps, _DRAWS), generator=generator))
    return torch.stack(spectra), torch.stack(draws)


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


def _optimise(
    copy: PrivateCopy,
    path: str,
    spec: KnownInput,
    channels: list[int],
    side: int,
    steps: int,
    seed: int,
    negative: bool,
    progress: _Progress,
) -> torch.Tensor:
    """One batched optimisation: one image per channel, each raising its own channel's mean.

    Runs with gradients enabled, outside inference mode.
    """
    assert spec.channels is not None  # checked by count_channels
    device = copy.device
    start, draws = _start(channels, spec.channels, side, steps, seed)
    spectrum = start.to(device).requires_grad_(True)
    views = _Views(side, draws.to(device))
    scale = _frequency_scale(side, device)
    to_input = _model_input(copy, spec)
    items = torch.arange(len(channels), device=device)
    wanted = torch.tensor(channels, device=device)
    sign = 1.0 if negative else -1.0  # the loss: minus the channel's mean, or plus it
    optimizer = torch.optim.Adam([spectrum], lr=_LEARNING_RATE)
    for step in range(steps):
        progress.check()
        output = copy.run_to(to_input(views(_image(spectrum, scale, side), step)), path).output
        picked = output[items, wanted].float()
        score = picked.flatten(1).mean(1) if picked.dim() > 1 else picked
        # Each item's loss involves its own image only, so the sum's gradient is each
        # item's own, and Adam (element-wise) moves each image as if it were alone.
        optimizer.zero_grad(set_to_none=True)
        (sign * score.sum()).backward()
        optimizer.step()
        progress.step()
    with torch.no_grad():
        return _image(spectrum, scale, side).float().cpu()


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
    settings and :data:`RECIPE_VERSION`, so images of an older recipe are never read.

    Attributes:
        layer: the layer.
        channel: the channel.
        size: the image side; ``None`` for :func:`default_side`.
        steps: optimisation steps.
        seed: the random seed.
        negative: the image that lowers the channel most.
    """

    layer: str
    channel: int
    size: int | None = None
    steps: int = 256
    seed: int = 0
    negative: bool = False
    kind = "feature_visualization"
    version = RECIPE_VERSION

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
            on_progress=run.report,
            should_stop=run.should_stop,
        )
        return to_uint8(images)[0]

    def decode(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        tile = super().decode(arrays)
        if tile.dtype != np.uint8 or tile.ndim not in (2, 3):
            raise ValueError("A stored feature visualization is not an image.")
        return tile


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
        batch_size: channels optimised together (not part of the key).
    """

    layer: str
    channels: tuple[int, ...]
    size: int | None = None
    steps: int = 256
    seed: int = 0
    negatives: tuple[bool, ...] = (False,)
    batch_size: int = field(default=64, kw_only=True)
    kind = "channel_images"
    version = RECIPE_VERSION
    resumable = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(channel_list(self.channels)))
        _check_counts(batch_size=self.batch_size)

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
            self.loaded, self.layer, channel, self.size, self.steps, self.seed, negative
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
        for index, group in enumerate(groups):
            painted = visualize(
                self.loaded,
                self.layer,
                [channel for channel, _ in group],
                size=self.tile(*group[0]).side,
                steps=self.steps,
                seed=self.seed,
                negative=group[0][1],
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


def _offset(
    on_progress: Callable[[int, int], None], before: int, total: int
) -> Callable[[int, int], None]:
    """Progress of one group reported as progress over all groups."""

    def report(done: int, _: int) -> None:
        on_progress(before + done, total)

    return report
