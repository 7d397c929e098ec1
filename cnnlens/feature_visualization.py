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

:func:`cached_visualization` keeps each channel's image in the results store
(:mod:`cnnlens.store`), so a channel atlas and a channel card share tiles, and
everyone and every restart reuses them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.insights import Cancelled
from cnnlens.layers import Layers
from cnnlens.private_copy import PrivateCopy, Stop

if TYPE_CHECKING:
    from cnnlens.models import LoadedModel
    from cnnlens.store import ResultStore

__all__ = [
    "LARGEST_DEFAULT_SIDE",
    "RECIPE_VERSION",
    "cached_visualization",
    "default_side",
    "layer_channels",
    "missing_channels",
    "store_visualization",
    "to_uint8",
    "visualization_key",
    "visualize",
]

RECIPE_VERSION = 1
"""Bump when :func:`visualize` changes its images: stored tiles of older recipes are never read."""

LARGEST_DEFAULT_SIDE = 128
"""The largest side an image gets without ``size``: Lucid's 128 px. ResNet-18's 224 px
would cost three times as long on a CPU."""

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
        layer: a layer name (renamed layers for a sequential stack, qualified
            module names otherwise).
        channels: the channels to check; ``None`` for every channel of the layer.
        size: the input side; default :func:`default_side`. Needed for a plain module.

    Returns:
        ``channels`` as a list, or ``[0, 1, ..., C - 1]``.

    Raises:
        ValueError: for an unknown layer, a channel out of range (the message
            names the valid range), a layer that does not run or returns no 2-D or
            4-D tensor, or an input size that does not fit.
        TypeError: for a model that is neither, or channels that are not whole numbers.
    """
    with borrowed_copy(model) as (copy, layers, spec):
        count = _probe(copy, layer, layers.path(layer), spec.channels, _side(size, spec))
    if channels is None:
        return list(range(count))
    chosen = _channel_list(channels)
    _check_channels(layer, chosen, count)
    return chosen


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
        batch_size: channels optimised together; more channels go in several groups.
        on_progress: called with ``(steps done, steps in all)`` after each step.
        should_stop: asked before each step; ``True`` stops with :class:`Cancelled`.

    Returns:
        A ``len(channels)×C×size×size`` float32 tensor on the CPU, values in [0, 1]:
        the same on every run of a seed on the CPU, bit for bit (a GPU's
        scatter-adds may differ in the last bits).

    Raises:
        ValueError: for an unknown layer, a channel out of range (the message
            names the valid range), a layer without 2-D or 4-D output, a size that
            does not fit the network, or a bad number of steps, size or batch.
        TypeError: for a model that is neither, or channels that are not integers.
        Cancelled: if ``should_stop()`` returned True.
    """
    chosen = _channel_list(channels)
    _check_counts(steps=steps, batch_size=batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number 0 or more, got {seed!r}.")
    with borrowed_copy(model) as (copy, layers, spec):
        side = _side(size, spec)
        path = layers.path(layer)
        count = _probe(copy, layer, path, spec.channels, side)
        _check_channels(layer, chosen, count)
        groups = [chosen[start : start + batch_size] for start in range(0, len(chosen), batch_size)]
        progress = _Progress(steps * len(groups), on_progress, should_stop)
        # Whatever the caller's grad mode: the image's gradient is what is optimised.
        with torch.inference_mode(False), torch.enable_grad():
            images = [
                _optimise(copy, path, spec, group, side, steps, seed, negative, progress)
                for group in groups
            ]
    return torch.cat(images)


class _Spec:
    """What the image parameterisation needs to know about the model's input.

    ``channels`` is ``None`` for a plain module without a ``Conv2d`` to tell it.
    """

    def __init__(
        self,
        channels: int | None,
        size: tuple[int, int] | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        self.channels = channels
        self.size = size
        self.mean = mean
        self.std = std


@contextlib.contextmanager
def borrowed_copy(
    model: nn.Module | LoadedModel,
) -> Iterator[tuple[PrivateCopy, Layers, _Spec]]:
    """The private copy a call runs on, the model's layers, and its input.

    A LoadedModel's shared :attr:`~cnnlens.models.LoadedModel.private_copy` is
    used as it is (never closed: every session shares it). A plain module gets a
    temporary copy, closed on exit, even after an exception: the caller's model,
    its flags and its hooks are never touched.

    Raises:
        TypeError: if ``model`` is neither an ``nn.Module`` nor a LoadedModel.
    """
    from cnnlens.models import LoadedModel

    if isinstance(model, LoadedModel):
        yield model.private_copy, model.layers, _loaded_spec(model)
        return
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected a torch nn.Module or a model from open_model, got {type(model).__name__}."
        )
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    layers = Layers(model)
    copy = PrivateCopy(model)
    try:
        yield copy, layers, _Spec(first.in_channels if first else None, None, None, None)
    finally:
        copy.close()


def default_side(model: nn.Module | LoadedModel) -> int:
    """The side of an image when no ``size`` is given: the model's input side, at most
    :data:`LARGEST_DEFAULT_SIDE` (28 for the demo, 128 for ImageNet models).

    Raises:
        ValueError: for a plain ``nn.Module``, which has no input size.
    """
    from cnnlens.models import LoadedModel

    spec = _loaded_spec(model) if isinstance(model, LoadedModel) else _Spec(None, None, None, None)
    return _side(None, spec)


def _side(size: int | tuple[int, int] | None, spec: _Spec) -> int:
    if size is None:
        if spec.size is None:
            raise ValueError("A plain nn.Module has no input size: pass size=, such as size=128.")
        size = min(*spec.size, LARGEST_DEFAULT_SIDE)
    if isinstance(size, tuple):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"Feature visualizations are square: give one side, got {size}.")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be a whole number of pixels, at least 8; got {size!r}.")
    return size


def _channel_list(channels: int | Sequence[int]) -> list[int]:
    chosen = [channels] if isinstance(channels, int | np.integer) else list(channels)
    if not chosen:
        raise ValueError("Choose at least one channel.")
    for channel in chosen:
        if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
            raise TypeError(f"Channels are whole numbers, got {channel!r}.")
    return [int(channel) for channel in chosen]


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number, at least 1; got {value!r}.")


def _check_channels(layer: str, chosen: Sequence[int], count: int) -> None:
    bad = [channel for channel in chosen if not 0 <= channel < count]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{layer} has channels 0 to {count - 1}; got {shown}.")


class _StopAt:
    """A forward that ends at one module: its (first) output is kept, graph and all."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.output: torch.Tensor | None = None

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        if path != self.path:
            return
        if not isinstance(output, torch.Tensor):
            raise ValueError(
                f"Module {path!r} returns a {type(output).__name__}, not a tensor; choose "
                "one of its submodules."
            )
        self.output = output
        raise Stop


def _forward_to(copy: PrivateCopy, path: str, x: torch.Tensor) -> torch.Tensor:
    """The target's output for an input batch (with the caller's grad mode)."""
    call = _StopAt(path)
    copy.run(x, call)
    if call.output is None:
        raise ValueError(f"Module {path!r} did not run in the forward pass (in eval mode).")
    return call.output


def _probe(copy: PrivateCopy, layer: str, path: str, channels: int | None, side: int) -> int:
    """The layer's channel count, from one grey image; checks that the size fits."""
    if channels is None:
        raise ValueError(
            "This model has no Conv2d, so its input channels are unknown; open it with "
            "cnnlens.open_model or give a convolutional network."
        )
    with torch.inference_mode(False), torch.no_grad():
        grey = torch.full((1, channels, side, side), 0.5, device=copy.device, dtype=copy.dtype)
        output = _forward_to(copy, path, grey)
    if output.dim() not in (2, 4):
        raise ValueError(
            f"{layer} gives {output.dim()}-D outputs, not channels (N×C×H×W) or units (N×K): "
            "choose a convolutional or linear layer."
        )
    return output.shape[1]


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


def _model_input(copy: PrivateCopy, spec: _Spec) -> Callable[[torch.Tensor], torch.Tensor]:
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
    spec: _Spec,
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
    assert spec.channels is not None  # checked by _probe
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
        output = _forward_to(copy, path, to_input(views(_image(spectrum, scale, side), step)))
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


def visualization_key(
    loaded: LoadedModel,
    layer: str,
    channel: int,
    *,
    size: int,
    steps: int,
    seed: int,
    negative: bool,
) -> str:
    """The store key of one channel's image: model, weights, dtype, layer, channel, settings.

    :data:`RECIPE_VERSION` is part of it, so images of an older recipe are never read.
    """
    from cnnlens.store import result_key

    return result_key(
        kind="feature_visualization",
        recipe=RECIPE_VERSION,
        model=loaded.name,
        weights=loaded.weights_id,
        dtype=str(loaded.dtype),
        layer=layer,
        channel=int(channel),
        size=int(size),
        steps=int(steps),
        seed=int(seed),
        negative=bool(negative),
    )


def _decode_tile(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    tile = arrays["tile"]
    if tile.dtype != np.uint8 or tile.ndim not in (2, 3):
        raise ValueError("A stored feature visualization is not an image.")
    tile.setflags(write=False)  # one decoded tile serves every session
    return tile


def _store_or_default(store: ResultStore | None) -> ResultStore:
    from cnnlens.store import ResultStore

    return store if store is not None else ResultStore()


def _stored(
    loaded: LoadedModel, layer: str, channels: list[int], store: ResultStore, **settings: Any
) -> dict[int, np.ndarray]:
    """The tiles of ``channels`` already in the store, by channel."""
    found = {}
    for channel in dict.fromkeys(channels):
        key = visualization_key(loaded, layer, channel, **settings)
        tile = store.peek(key, _decode_tile)
        if tile is not None:
            found[channel] = tile
    return found


def missing_channels(
    loaded: LoadedModel,
    layer: str,
    channels: int | Sequence[int],
    *,
    store: ResultStore | None = None,
    size: int | None = None,
    steps: int = 256,
    seed: int = 0,
    negative: bool = False,
) -> list[int]:
    """The channels whose image is not in the store yet, in order, each once; computes nothing.

    Args are those of :func:`cached_visualization`.
    """
    chosen = list(dict.fromkeys(_channel_list(channels)))
    side = _side(size, _loaded_spec(loaded))
    settings = {"size": side, "steps": steps, "seed": seed, "negative": negative}
    found = _stored(loaded, layer, chosen, _store_or_default(store), **settings)
    return [channel for channel in chosen if channel not in found]


def store_visualization(
    loaded: LoadedModel,
    layer: str,
    channels: Sequence[int],
    tiles: np.ndarray,
    *,
    store: ResultStore | None = None,
    size: int | None = None,
    steps: int = 256,
    seed: int = 0,
    negative: bool = False,
) -> list[np.ndarray]:
    """Keep computed tiles (:func:`to_uint8` of :func:`visualize`), one store entry per channel.

    Args are those of :func:`cached_visualization`, and ``tiles``, one per channel.

    Returns:
        The tiles as stored: a tile another process stored meanwhile is kept, and returned.

    Raises:
        ValueError: if the tiles do not match the channels.
    """
    store = _store_or_default(store)
    if len(tiles) != len(channels):
        raise ValueError(f"{len(tiles)} tiles were given for {len(channels)} channels.")
    side = _side(size, _loaded_spec(loaded))
    settings = {"size": side, "steps": steps, "seed": seed, "negative": negative}
    return [
        store.get_or_compute(
            visualization_key(loaded, layer, channel, **settings),
            lambda tile=tile: {"tile": np.ascontiguousarray(tile)},
            _decode_tile,
        )
        for channel, tile in zip(channels, tiles, strict=True)
    ]


def cached_visualization(
    loaded: LoadedModel,
    layer: str,
    channels: int | Sequence[int],
    *,
    store: ResultStore | None = None,
    size: int | None = None,
    steps: int = 256,
    seed: int = 0,
    negative: bool = False,
    **options: Any,
) -> np.ndarray:
    """:func:`visualize`'s images as pixels, read from the store where computed before.

    Each channel is stored on its own (:func:`visualization_key`: the model's
    name, weights and dtype, the layer, the channel, ``size``, ``steps``,
    ``seed``, ``negative`` and :data:`RECIPE_VERSION`), so an atlas and a channel
    card share tiles. The missing channels are computed together, in groups of
    ``batch_size``; each group is stored as soon as it is finished, so a
    cancelled atlas keeps its finished groups, never part of one.

    Args:
        loaded: the model (:func:`cnnlens.models.open_model`).
        layer: the layer.
        channels: one channel or several.
        store: the store; default a :class:`~cnnlens.store.ResultStore` in
            :func:`~cnnlens.sources.cache_dir`, the dashboard's.
        size: the image side; default :func:`default_side`.
        steps: optimisation steps.
        seed: the random seed.
        negative: the images that lower each channel most.
        **options: passed to :func:`visualize` (``batch_size``, ``on_progress``,
            ``should_stop``); they do not change the images. Progress counts the
            steps of the missing channels only.

    Returns:
        uint8 pixels in the order of ``channels``: N×H×W for a grayscale model,
        N×H×W×3 for an RGB one; read-only (stored tiles serve every session).

    Raises:
        ValueError: as :func:`visualize`.
        Cancelled: if ``should_stop`` asked to stop; the unfinished group is not stored.
    """
    store = _store_or_default(store)
    chosen = _channel_list(channels)
    settings = {
        "size": _side(size, _loaded_spec(loaded)),
        "steps": steps,
        "seed": seed,
        "negative": negative,
    }
    found = _stored(loaded, layer, chosen, store, **settings)
    missing = [channel for channel in dict.fromkeys(chosen) if channel not in found]
    batch_size = options.pop("batch_size", 64)
    _check_counts(batch_size=batch_size)
    on_progress = options.pop("on_progress", None)
    groups = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]
    for index, group in enumerate(groups):
        images = visualize(
            loaded,
            layer,
            group,
            batch_size=batch_size,
            on_progress=_offset(on_progress, index * steps, len(groups) * steps),
            **settings,
            **options,
        )
        tiles = store_visualization(loaded, layer, group, to_uint8(images), store=store, **settings)
        found.update(zip(group, tiles, strict=True))
    pixels = np.stack([found[channel] for channel in chosen])
    pixels.setflags(write=False)
    return pixels


def _offset(
    on_progress: Callable[[int, int], None] | None, before: int, total: int
) -> Callable[[int, int], None] | None:
    """Progress of one group reported as progress over all groups."""
    if on_progress is None:
        return None

    def report(done: int, _: int) -> None:
        on_progress(before + done, total)

    return report


def _loaded_spec(loaded: LoadedModel) -> _Spec:
    spec = loaded.spec
    return _Spec(spec.shape[0], spec.size, spec.mean, spec.std)
