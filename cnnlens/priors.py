"""What a dataset's images look like, as a model sees them: a prior for feature visualization.

:func:`image_prior` reads a seeded sample of a dataset split through the model's
own preprocessing (:meth:`~cnnlens.models.LoadedModel.batch`: its mode, its
resize and crop, its normalisation), at the model's input side or a given one,
and keeps three summaries of it in the model's input space:

- the mean image;
- the top principal components of the images, with the standard deviation of
  each component's coefficient (the cheap form of Nguyen et al. 2016's generator
  prior: an image in their span looks like the data);
- the average Fourier magnitude spectrum of each channel (MACO's magnitude,
  Fel et al. 2023, from the user's own data instead of ImageNet's).

:class:`ImagePriorSpec` is that summary as a dataset-wide result: the results
store computes it once per model input, dataset and sample, and keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from cnnlens.results import Cancelled, DatasetSpec, Run

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel

__all__ = ["PRIOR_VERSION", "ImagePrior", "ImagePriorSpec", "image_prior"]

PRIOR_VERSION = 1
"""Bump when :func:`image_prior` changes its values: older stored priors are never read."""

COMPONENTS = 128
"""Principal components kept. On the demo digits 128 of 784 keep 94% of the variance (64:
87%, 256: 98%); :func:`~cnnlens.feature_visualization.visualize`'s ``"pca"`` images with 64
or 128 lie about as near real digits (median 13-15 in the network's features), with 256
farther (17), so 128: the sharper of the two near ones."""

_BATCH = 256  # images decoded and preprocessed at a time


@dataclass(frozen=True, eq=False)
class ImagePrior:
    """A dataset's images in a model's input space (normalised, at one side).

    Attributes:
        mean: the mean image, C×S×S float32.
        components: the principal components, k×(C·S·S) float32, orthonormal rows,
            strongest first.
        deviations: each component's standard deviation over the sample, k float32.
        spectrum: the average magnitude of each channel's ``rfft2`` (``norm="ortho"``),
            C×S×(S//2+1) float32.
        pixel_mean, pixel_std: the normalisation that maps pixels in [0, 1] to this
            space (``(pixels - mean) / std``), C float32 each (0 and 1 for none).
        images: how many images the sample had.
    """

    mean: np.ndarray
    components: np.ndarray
    deviations: np.ndarray
    spectrum: np.ndarray
    pixel_mean: np.ndarray
    pixel_std: np.ndarray
    images: int

    def __post_init__(self) -> None:
        if self.mean.ndim != 3 or self.mean.shape[1] != self.mean.shape[2]:
            raise ValueError(f"A prior's mean is C×S×S, got shape {self.mean.shape}.")
        channels, side = self.mean.shape[:2]
        if self.components.shape[1:] != (self.mean.size,) or len(self.deviations) != len(
            self.components
        ):
            raise ValueError("A prior's components do not fit its mean image.")
        if self.spectrum.shape != (channels, side, side // 2 + 1):
            raise ValueError("A prior's spectrum does not fit its mean image.")

    @property
    def channels(self) -> int:
        """Image channels: 1 for grayscale, 3 for colour."""
        return int(self.mean.shape[0])

    @property
    def side(self) -> int:
        """The image side in pixels."""
        return int(self.mean.shape[-1])

    @property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        arrays = (
            self.mean,
            self.components,
            self.deviations,
            self.spectrum,
            self.pixel_mean,
            self.pixel_std,
        )
        return sum(array.nbytes for array in arrays)


def image_prior(
    model: LoadedModel,
    dataset: Dataset,
    *,
    side: int | None = None,
    split: str = "train",
    images: int = 2000,
    components: int = COMPONENTS,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ImagePrior:
    """What a dataset's images look like in a model's input space, from a seeded sample.

    Example:
        >>> from cnnlens import demo_dataset, open_model
        >>> from cnnlens.priors import image_prior
        >>> prior = image_prior(open_model("demo"), demo_dataset(), images=200, components=16)
        >>> prior.mean.shape, prior.components.shape, prior.spectrum.shape
        ((1, 28, 28), (16, 784), (1, 28, 15))

    Args:
        model: the model (:func:`cnnlens.models.open_model`); its preprocessing is used.
        dataset: the dataset.
        side: the image side; default the model's input side (as :func:`visualize`'s
            default, at most 128). The preprocessed images are resized to it.
        split: ``"train"`` or ``"test"``.
        images: how many images to sample (all of the split if it has fewer).
        components: principal components to keep (fewer if the sample has fewer images).
        seed: the sample's seed (:meth:`~cnnlens.data.Dataset.pick_many`).
        on_progress: called with ``(images done, images in all)`` after each batch.
        should_stop: asked before each batch; ``True`` stops with :class:`Cancelled`.

    Returns:
        The :class:`ImagePrior`.

    Raises:
        ValueError: for an unknown split, one without readable images, fewer than 2
            images, a bad side or component count.
        Cancelled: if ``should_stop()`` returned True.
    """
    from cnnlens.borrow import KnownInput

    side = KnownInput.of(model).side(side)
    for name, value, least in (("images", images, 2), ("components", components, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number, at least {least}; got {value!r}.")
    names = dataset.pick_many(seed, images, split)
    if len(names) < 2:
        raise ValueError(f"The {split} split has {len(names)} images; a prior needs at least 2.")
    sample = _sample(model, dataset, names, split, side, on_progress, should_stop)
    return _summarise(sample, model, components)


def _sample(
    model: LoadedModel,
    dataset: Dataset,
    names: list[str],
    split: str,
    side: int,
    on_progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> torch.Tensor:
    """The images preprocessed as the model expects, at ``side``: N×C×S×S float32 on the CPU."""
    mode = model.spec.mode
    batches = []
    for start in range(0, len(names), _BATCH):
        if should_stop is not None and should_stop():
            raise Cancelled(f"Stopped after {start} of {len(names)} images; nothing was kept.")
        chunk = names[start : start + _BATCH]
        batch = model.batch([dataset.load_image(name, mode, split) for name in chunk]).float()
        if batch.shape[-1] != side or batch.shape[-2] != side:
            batch = F.interpolate(
                batch, size=(side, side), mode="bilinear", antialias=True, align_corners=False
            )
        batches.append(batch.cpu())
        if on_progress is not None:
            on_progress(start + len(chunk), len(names))
    return torch.cat(batches)


def _summarise(sample: torch.Tensor, model: LoadedModel, components: int) -> ImagePrior:
    """The mean, the principal components and the spectrum of a sample (centred in place)."""
    count, channels = sample.shape[:2]
    # In chunks: the whole sample's complex spectrum would take as much as the sample.
    spectrum = (
        sum(
            torch.fft.rfft2(sample[start : start + _BATCH], norm="ortho").abs().double().sum(0)
            for start in range(0, count, _BATCH)
        )
        / count
    )
    mean = sample.mean(0)
    centred = sample.sub_(mean).flatten(1)  # in place: the sample is not needed any more
    keep = min(components, count - 1, centred.shape[1])
    singular, vectors = _principal(centred, keep)
    # Each component's sign fixed (its largest entry positive), so a prior is reproducible.
    peaks = vectors.abs().argmax(1, keepdim=True)
    vectors = vectors * vectors.gather(1, peaks).sign()
    spec = model.spec
    pixel_mean = np.zeros(channels) if spec.mean is None else np.asarray(spec.mean)
    pixel_std = np.ones(channels) if spec.std is None else np.asarray(spec.std)
    return ImagePrior(
        mean=mean.numpy().astype(np.float32),
        components=vectors.float().numpy(),
        deviations=(singular[:keep] / (count - 1) ** 0.5).float().numpy(),
        spectrum=torch.as_tensor(spectrum).numpy().astype(np.float32),
        pixel_mean=pixel_mean.astype(np.float32),
        pixel_std=pixel_std.astype(np.float32),
        images=int(count),
    )


def _principal(centred: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` largest singular values of centred N×D data and their right singular
    vectors (k×D). With fewer pixels than images, an SVD in float64; with more (colour
    images), the eigenvectors of the N×N Gram matrix, which never holds a D×N factor:
    ResNet's 128-px prior of 2,000 images takes a fraction of the SVD's time and memory."""
    count, width = centred.shape
    if width <= count:
        _, singular, vectors = torch.linalg.svd(centred.double(), full_matrices=False)
        return singular[:keep], vectors[:keep].float()
    gram = (centred @ centred.T).double()
    values, left = torch.linalg.eigh(gram)  # ascending
    values, left = values.flip(0)[:keep], left.flip(1)[:, :keep]
    singular = values.clamp(min=0).sqrt()
    vectors = (left.T.float() @ centred) / singular.float().clamp(min=1e-12)[:, None]
    return singular, vectors


@dataclass(frozen=True, eq=False)
class ImagePriorSpec(DatasetSpec[ImagePrior]):
    """A dataset's :class:`ImagePrior` for one model input, computed once and stored.

    Its key holds the model's input (mode, size, resize, normalisation), not its
    weights: every model with the same preprocessing shares the prior.

    Attributes:
        side: the image side; ``None`` for the model's input side (at most 128).
        images: images sampled.
        components: principal components kept.
        seed: the sample's seed.
    """

    side: int | None = None
    images: int = 2000
    components: int = COMPONENTS
    seed: int = 0
    kind = "image_prior"
    version = PRIOR_VERSION
    result_type = ImagePrior

    @property
    def image_side(self) -> int:
        """The image side in pixels."""
        from cnnlens.borrow import KnownInput

        return KnownInput.of(self.loaded).side(self.side)

    def parts(self) -> dict[str, object]:
        parts = super().parts()
        spec = self.loaded.spec
        return {
            "split": parts["split"],
            "dataset": parts["dataset"],
            "fingerprint": parts["fingerprint"],
            "input": [spec.mode, list(spec.size), spec.mean, spec.std, spec.resize],
            "interpolation": spec.interpolation,
            "side": self.image_side,
            "images": int(self.images),
            "components": int(self.components),
            "seed": int(self.seed),
        }

    @property
    def title(self) -> str:
        return f"learning what the {self.split} images look like"

    def progress_text(self, done: int, total: int) -> str:
        return f"Reading {done:,} of {total:,} {self.split} images for the image prior"

    def compute(self, run: Run) -> ImagePrior:
        return image_prior(
            self.loaded,
            self.dataset,
            side=self.image_side,
            split=self.split,
            images=self.images,
            components=self.components,
            seed=self.seed,
            on_progress=run.report,
            should_stop=run.should_stop,
        )
