"""Measured legibility of a channel's pictures: is it a picture at all, does it look like
the data, does the channel still fire on it.

Three measures, so that no one judges feature visualizations by eye alone:

- :func:`near_uniform`: an image whose pixels nearly all sit at one value (85% of them
  within 0.1 of its median) shows nothing. The mean of a linear conv channel is
  maximised by such an image, which is why Lucid's recipe paints the demo's ``conv_1``
  as white squares.
- :func:`plausibility`: the distance, in the model's own penultimate features (the
  input of the last ``nn.Linear`` its forward calls), from each image to its nearest
  real image (:func:`reference_features`). Real test digits lie 10.9 from their
  nearest training digit (median; 95th percentile 17.5); Lucid's images of the demo's
  ``conv_1`` lie 21.8 away.
- :func:`fires`: the channel's mean activation on each image, against
  :func:`median_activation`, the median over the dataset's images: a legible picture
  that no longer excites its channel explains nothing.

:func:`legibility_table` puts the three side by side, one row per method, with the
real images' own distance as the yardstick. Every forward runs on the model's private
copy (:func:`cnnlens.borrow.borrowed_copy`); images are pixels in [0, 1], normalised
as the model expects on the way in, as :func:`cnnlens.visualize` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cnnlens.borrow import KnownInput, borrowed_copy, channel_list, check_channels, count_channels
from cnnlens.layers import Layers
from cnnlens.preprocess import to_batch
from cnnlens.private_copy import PrivateCopy, check_batch
from cnnlens.registry import InputSpec

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel

__all__ = [
    "fires",
    "legibility_table",
    "load_pixels",
    "median_activation",
    "near_uniform",
    "penultimate_features",
    "plausibility",
    "reference_features",
]

_BATCH = 256  # images per forward in a dataset pass
_SLACK = 1e-4  # pixels a little outside [0, 1] from rounding are still pixels


def near_uniform(
    images: torch.Tensor | np.ndarray, *, share: float = 0.85, within: float = 0.1
) -> np.ndarray:
    """Which images are nearly one flat value: at least ``share`` of their pixels lie
    within ``within`` of the image's median.

    For colour, a pixel's distance is the largest over its channels, each channel
    measured from its own median.

    Args:
        images: N×C×H×W pixels in [0, 1] (a tensor or an array).
        share: the least fraction of pixels near the median, in (0, 1].
        within: how near, in pixel values.

    Returns:
        N booleans.

    Raises:
        ValueError: for images that are not N×C×H×W, or a share outside (0, 1].
    """
    if not 0 < share <= 1:
        raise ValueError(f"share is a fraction of the pixels in (0, 1], got {share!r}.")
    pixels = np.asarray(
        images.detach().float().cpu() if isinstance(images, torch.Tensor) else images,
        dtype=np.float64,
    )
    if pixels.ndim != 4:
        raise ValueError(f"Expected N×C×H×W images, got shape {pixels.shape}.")
    flat = pixels.reshape(*pixels.shape[:2], -1)
    distance = np.abs(flat - np.median(flat, axis=2, keepdims=True)).max(axis=1)
    return (distance <= within).mean(axis=1) >= share


def pixel_input(copy: PrivateCopy, known: KnownInput, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] as the copy's input: normalised as the model expects, in its
    dtype, device and memory format; differentiable (unlike ``PrivateCopy.prepare``)."""
    x = pixels.to(copy.device, torch.float32)
    if known.mean is not None and known.std is not None:
        mean = torch.tensor(known.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(known.std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    x = x.to(copy.dtype)
    if copy.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def checked_pixels(images: Any, known: KnownInput, name: str) -> torch.Tensor:
    """``images`` checked as an N×C×H×W batch of pixels in [0, 1] with the model's channels.

    Raises:
        TypeError: for something that is not a tensor.
        ValueError: for another shape, other channels, NaN, or values outside [0, 1].
    """
    images = check_batch(images, name=name)
    if known.channels is not None and images.shape[1] != known.channels:
        raise ValueError(
            f"{name} takes images with the model's {known.channels} channel(s), got "
            f"{images.shape[1]} (shape {tuple(images.shape)})."
        )
    if images.numel() and (images.min() < -_SLACK or images.max() > 1 + _SLACK):
        raise ValueError(
            f"{name} takes pixels in [0, 1], got values from {float(images.min()):.3g} to "
            f"{float(images.max()):.3g}: pass images before normalisation (what "
            "cnnlens.visualize and load_pixels return)."
        )
    return images.detach().float()


class _LinearCalls:
    """A call of the private copy that notes the last ``nn.Linear`` the forward runs."""

    def __init__(self, model: nn.Module) -> None:
        self.linear = {path for path, m in model.named_modules() if isinstance(m, nn.Linear)}
        self.last: str | None = None

    def on_output(self, path: str, inputs: tuple[Any, ...], output: Any) -> None:
        if path in self.linear:
            self.last = path


def _feature_reader(
    copy: PrivateCopy, known: KnownInput, layers: Layers, layer: str | None, sample: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from a pixel batch to its N×D features: the input of the last
    ``nn.Linear`` the forward calls, or ``layer``'s output, flattened."""
    if layer is not None:
        path = layers.path(layer)
        return lambda x: copy.run_to(pixel_input(copy, known, x), path).output.flatten(1)
    calls = _LinearCalls(copy.model)
    copy.run(pixel_input(copy, known, sample[:1]), calls)
    if calls.last is None:
        raise ValueError(
            "This model's forward calls no nn.Linear, so it has no penultimate features: "
            "pass layer= to compare images by a layer's output instead."
        )
    last = calls.last
    return lambda x: copy.run_to(pixel_input(copy, known, x), last).inputs[0].flatten(1)


def penultimate_features(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    *,
    layer: str | None = None,
) -> np.ndarray:
    """The model's penultimate features of images: the input of the last ``nn.Linear``
    its forward calls (the demo's 128 hidden units), or a layer's output, flattened.

    Args:
        model: an ``nn.Module`` or a :class:`~cnnlens.models.LoadedModel`.
        images: N×C×H×W pixels in [0, 1].
        layer: compare by this layer's output instead.

    Returns:
        N×D float32 features.

    Raises:
        ValueError: for images that are not pixels of the model's channels, an unknown
            layer, or a model that calls no ``nn.Linear`` (without ``layer``).
        TypeError: for a model that is neither, or images that are not a tensor.
    """
    known = KnownInput.of(model)
    images = checked_pixels(images, known, "penultimate_features")
    with borrowed_copy(model, share_tensors=True) as (copy, layers, _), torch.no_grad():
        read = _feature_reader(copy, known, layers, layer, images)
        parts = [read(images[i : i + _BATCH]).float().cpu() for i in range(0, len(images), _BATCH)]
    return torch.cat(parts).numpy()


def plausibility(
    model: nn.Module | LoadedModel,
    images: torch.Tensor,
    reference: np.ndarray,
    *,
    layer: str | None = None,
) -> np.ndarray:
    """How far each image lies from the nearest real image, as the model sees them: the
    Euclidean distance between penultimate features (:func:`penultimate_features`).

    Example:
        >>> from cnnlens import demo_dataset, open_model
        >>> from cnnlens.legibility import load_pixels, plausibility, reference_features
        >>> demo, digits = open_model("demo"), demo_dataset()
        >>> train = reference_features(demo, digits, images=100)
        >>> test = load_pixels(demo, digits, split="test", images=3)
        >>> plausibility(demo, test, train).shape
        (3,)

    Args:
        model: an ``nn.Module`` or a :class:`~cnnlens.models.LoadedModel`.
        images: N×C×H×W pixels in [0, 1].
        reference: the real images' features (:func:`reference_features`), M×D,
            taken with the same ``layer``.
        layer: compare by this layer's output instead of the penultimate features.

    Returns:
        N float32 distances; lower is more like the data.

    Raises:
        ValueError: as :func:`penultimate_features`, or for a reference of other features.
    """
    reference = np.asarray(reference, dtype=np.float32)
    features = penultimate_features(model, images, layer=layer)
    if reference.ndim != 2 or len(reference) == 0 or reference.shape[1] != features.shape[1]:
        raise ValueError(
            f"The reference holds {reference.shape} features, but these images have "
            f"{features.shape[1]} each: compute it with reference_features on the same "
            "model and layer."
        )
    distances = torch.cdist(
        torch.from_numpy(features),
        torch.from_numpy(reference),
        compute_mode="donot_use_mm_for_euclid_dist",  # exact, not |a|²+|b|²-2ab
    )
    return distances.min(dim=1).values.numpy()


def fires(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: int | Sequence[int],
    images: torch.Tensor,
) -> np.ndarray:
    """Each channel's mean activation over its map on each image (a unit's value, for a
    2-D output): what :func:`cnnlens.visualize` raises.

    Args:
        model: an ``nn.Module`` or a :class:`~cnnlens.models.LoadedModel`.
        layer: a layer name.
        channels: one channel or several.
        images: N×C×H×W pixels in [0, 1].

    Returns:
        N float32 values for one channel; N×K for a list of K.

    Raises:
        ValueError: for an unknown layer, a channel out of range, a layer without
            maps, or images that are not pixels of the model's channels.
        TypeError: for a model that is neither, or channels that are not whole numbers.
    """
    known = KnownInput.of(model)
    images = checked_pixels(images, known, "fires")
    chosen = channel_list(channels)
    with borrowed_copy(model, share_tensors=True) as (copy, layers, _), torch.no_grad():
        path = layers.path(layer)
        check_channels(layer, chosen, count_channels(copy, layer, path, known, images.shape[-1]))
        means = torch.cat([_means(copy, known, path, chosen, batch) for batch in _chunks(images)])
    values = means.numpy()
    return values[:, 0] if isinstance(channels, int | np.integer) else values


def _chunks(images: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), _BATCH):
        yield images[start : start + _BATCH]


def _means(
    copy: PrivateCopy, known: KnownInput, path: str, chosen: list[int], pixels: torch.Tensor
) -> torch.Tensor:
    """The chosen channels' means over their maps, N×K, on the CPU."""
    output = copy.run_to(pixel_input(copy, known, pixels), path).output[:, chosen].float()
    return (output.flatten(2).mean(2) if output.dim() > 2 else output).cpu()


def load_pixels(
    model: nn.Module | LoadedModel,
    dataset: Dataset,
    *,
    split: str = "train",
    images: int | Sequence[str] | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """A dataset's images as pixels in [0, 1] in the model's mode, at the square side
    that :func:`cnnlens.visualize` paints: a LoadedModel's images are resized and
    cropped as its preprocessing does, then resized to the side; a plain module's are
    resized to the side as a whole.

    Args:
        model: an ``nn.Module`` or a :class:`~cnnlens.models.LoadedModel`.
        dataset: a :class:`~cnnlens.data.Dataset`.
        split: ``"train"`` or ``"test"``.
        images: every image of the split (``None``), the first ``images`` of it, or
            these filenames.
        size: the side; default the model's input side, at most 128
            (:meth:`~cnnlens.borrow.KnownInput.side`). Needed for a plain module.

    Returns:
        An N×C×side×side float32 tensor.

    Raises:
        ValueError: for an unknown split or filename, no image, or no size for a
            plain module.
    """
    return torch.cat(list(_pixel_batches(model, dataset, split, images, size)))


def _pixel_batches(
    model: nn.Module | LoadedModel,
    dataset: Dataset,
    split: str,
    images: int | Sequence[str] | None,
    size: int | None,
) -> Iterator[torch.Tensor]:
    """A dataset's pixels in batches of :data:`_BATCH`, so memory stays bounded."""
    known = KnownInput.of(model)
    side = known.side(size)
    if known.channels is None:
        raise ValueError("This model has no Conv2d, so its input channels are unknown.")
    mode = "L" if known.channels == 1 else "RGB"
    names = dataset.rows(split)["filename"].tolist()
    if isinstance(images, int):
        if isinstance(images, bool) or images < 1:
            raise ValueError(f"images must be a count of at least 1, got {images!r}.")
        names = names[:images]
    elif images is not None:
        names = list(images)
    if not names:
        raise ValueError(f"The {split} split has no usable image.")
    spec = _pixel_spec(model, mode, side)
    for start in range(0, len(names), _BATCH):
        chunk = names[start : start + _BATCH]
        batch = to_batch([dataset.load_image(name, mode, split) for name in chunk], spec)
        if batch.shape[-2:] != (side, side):
            batch = F.interpolate(
                batch, size=(side, side), mode="bilinear", antialias=True, align_corners=False
            )
        yield batch.clamp(0, 1)


def _pixel_spec(model: nn.Module | LoadedModel, mode: str, side: int) -> InputSpec:
    """A LoadedModel's own resize and crop, without normalisation (as
    :func:`cnnlens.priors.image_prior` sees the images); else straight to the side."""
    from cnnlens.models import LoadedModel

    if isinstance(model, LoadedModel):
        return dataclasses.replace(model.spec, mode=mode, mean=None, std=None)
    return InputSpec(mode, (side, side))


def reference_features(
    model: nn.Module | LoadedModel,
    dataset: Dataset,
    *,
    split: str = "train",
    images: int | Sequence[str] | None = None,
    size: int | None = None,
    layer: str | None = None,
) -> np.ndarray:
    """The penultimate features of a dataset's real images: what :func:`plausibility`
    measures against. Compute it once per model, side and dataset.

    Args:
        model: an ``nn.Module`` or a :class:`~cnnlens.models.LoadedModel`.
        dataset, split, images, size: which images, as :func:`load_pixels`.
        layer: as :func:`penultimate_features`.

    Returns:
        N×D float32 features.

    Raises:
        ValueError: as :func:`load_pixels` and :func:`penultimate_features`.
    """
    parts = [
        penultimate_features(model, batch, layer=layer)
        for batch in _pixel_batches(model, dataset, split, images, size)
    ]
    return np.concatenate(parts)


def median_activation(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: int | Sequence[int],
    dataset: Dataset,
    *,
    split: str = "train",
    images: int | Sequence[str] | None = None,
    size: int | None = None,
) -> np.ndarray:
    """The median over a dataset's images of each channel's mean activation
    (:func:`fires`): "the channel still fires" means at least this.

    Args:
        model, layer, channels: as :func:`fires`.
        dataset, split, images, size: which images, as :func:`load_pixels`.

    Returns:
        One float per channel (a 0-d array for one channel).

    Raises:
        ValueError: as :func:`fires` and :func:`load_pixels`.
    """
    chosen = channel_list(channels)
    means = np.concatenate(
        [
            fires(model, layer, chosen, batch)
            for batch in _pixel_batches(model, dataset, split, images, size)
        ]
    )
    medians = np.median(means, axis=0).astype(np.float32)
    return medians[0] if isinstance(channels, int | np.integer) else medians


def legibility_table(
    model: nn.Module | LoadedModel,
    layer: str,
    channels: Sequence[int],
    images: Mapping[str, torch.Tensor],
    dataset: Dataset,
    *,
    reference: np.ndarray | None = None,
    medians: np.ndarray | None = None,
    real: int = 500,
    baseline: str = "lucid",
) -> pd.DataFrame:
    """The three measures for each method's images of a layer's channels, side by side.

    Args:
        model: an ``nn.Module`` or a :class:`~cnnlens.models.LoadedModel`.
        layer: the layer the images were painted for.
        channels: the K channels; each method's image ``i`` is channel ``channels[i]``'s.
        images: method name → K×C×S×S pixels in [0, 1] (what ``visualize`` returns).
        dataset: the real images.
        reference: :func:`reference_features` of the training split at side S;
            computed from every training image when ``None``.
        medians: :func:`median_activation` of the channels at side S; computed from
            every training image when ``None``.
        real: a row for the first ``real`` test images (0 for none): their distance to
            the nearest training image is the yardstick of plausibility.
        baseline: the method the ``vs_baseline`` column divides by.

    Returns:
        One row per method (and ``"real images"``), indexed by name, with columns
        ``images``, ``near_uniform`` (a count), ``plausibility`` (the median distance),
        ``plausibility_p95``, ``vs_baseline`` (the median over the baseline's) and
        ``fires`` (channels at least as active as on the median training image; none
        for real images).

    Raises:
        ValueError: for no method, images of another count or side, or as the measures.
    """
    if not images:
        raise ValueError("Give at least one method's images, such as {'lucid': images}.")
    chosen = channel_list(channels)
    sides = {tuple(batch.shape[-2:]) for batch in images.values()}
    counts = {name: len(batch) for name, batch in images.items()}
    if len(sides) != 1 or set(counts.values()) != {len(chosen)}:
        raise ValueError(
            f"Each method needs one image per channel ({len(chosen)}), all of one side; got "
            f"{counts} images of sides {sorted(sides)}."
        )
    side = sides.pop()[0]
    if reference is None:
        reference = reference_features(model, dataset, size=side)
    if medians is None:
        medians = median_activation(model, layer, chosen, dataset, size=side)
    rows = {}
    for name, batch in images.items():
        means = fires(model, layer, chosen, batch)[np.arange(len(chosen)), np.arange(len(chosen))]
        rows[name] = _row(model, batch, reference, fired=int((means >= medians).sum()))
    if real:
        pixels = load_pixels(model, dataset, split="test", images=real, size=side)
        rows["real images"] = _row(model, pixels, reference, fired=None)
    table = pd.DataFrame.from_dict(rows, orient="index")
    base = table["plausibility"].get(baseline, np.nan)
    table.insert(4, "vs_baseline", table["plausibility"] / base)
    return table.astype({"near_uniform": "Int64", "fires": "Int64"})


def _row(
    model: nn.Module | LoadedModel, pixels: torch.Tensor, reference: np.ndarray, fired: int | None
) -> dict[str, object]:
    distances = plausibility(model, pixels, reference)
    return {
        "images": len(pixels),
        "near_uniform": int(near_uniform(pixels).sum()),
        "plausibility": float(np.median(distances)),
        "plausibility_p95": float(np.percentile(distances, 95)),
        "fires": pd.NA if fired is None else fired,
    }
