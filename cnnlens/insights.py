"""Dataset-wide insights: which images excite a channel, how a layer separates the classes,
where the network looks when it decides.

One pass over a dataset (:func:`layer_stats`) reduces every image's maps of one
layer to a few numbers per channel as the batches arrive, so memory stays
bounded however large the dataset is. The other functions work on that summary:
:func:`top_images` (the dataset examples of a channel, like OpenAI Microscope),
:func:`class_channel_matrix`, :func:`embedding`. The model's answers come from
the same pass as a layer's (:func:`layer_stats_and_predictions`), or from a pass
of their own (:func:`predict_split`), once per dataset however many layers are
looked at. Grad-CAM (:mod:`cnnlens.gradcam`) explains one decision. Pure numpy
and torch; no streamlit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cnnlens.results import Cancelled, DatasetSpec, Derived, Run

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel
    from cnnlens.pipeline import FeatureBatch
    from cnnlens.receptive_fields import ReceptiveField

__all__ = [
    "ClassMatrixSpec",
    "LayerStats",
    "LayerStatsSpec",
    "Predictions",
    "PredictionsSpec",
    "TopImagesSpec",
    "channel_maps",
    "class_channel_matrix",
    "difference",
    "fire_box",
    "labels_name_classes",
    "layer_stats",
    "layer_stats_and_predictions",
    "predict_split",
    "summarise",
    "top_images",
]

_SCORES = ("mean", "max")


@dataclass(frozen=True, eq=False)
class LayerStats:
    """One layer over a dataset: a few numbers per image and channel.

    Attributes:
        layer: the layer's name.
        map_shape: ``(channels, height, width)`` of the layer's maps for one image.
        filenames: the images, in dataset order (unreadable images left out).
        labels: their labels (``None`` for unlabelled images).
        mean: N×C float32, each channel's mean activation.
        max: N×C float32, each channel's highest activation.
        peak_y: N×C int32, the row of that highest activation in map coordinates.
        peak_x: N×C int32, its column.
    """

    layer: str
    map_shape: tuple[int, int, int]
    filenames: list[str]
    labels: list[object | None]
    mean: np.ndarray
    max: np.ndarray
    peak_y: np.ndarray
    peak_x: np.ndarray

    def __len__(self) -> int:
        return len(self.filenames)

    def __post_init__(self) -> None:
        shape = (len(self.filenames), self.map_shape[0])
        blocks = (self.mean, self.max, self.peak_y, self.peak_x)
        if len(self.labels) != len(self.filenames) or any(b.shape != shape for b in blocks):
            raise ValueError(f"The statistics of {self.layer} do not fit together.")


@dataclass(frozen=True, eq=False)
class Predictions:
    """The class the model predicts for each image of a dataset.

    Kept apart from :class:`LayerStats`: it is stored once per dataset, however
    many layers are looked at.

    Attributes:
        filenames: the images, in dataset order (unreadable images left out).
        labels: their labels (``None`` for unlabelled images).
        predicted: N int64 indices into ``classes``.
        classes: the model's class names.
    """

    filenames: list[str]
    labels: list[object | None]
    predicted: np.ndarray
    classes: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        """The predicted class of each image, by name."""
        return [self.classes[i] for i in self.predicted]

    @property
    def misclassified(self) -> np.ndarray | None:
        """True where a label is one of the model's classes and the prediction differs.

        ``None`` when no label names one of the classes: a dataset labelled
        differently from the model's classes cannot be judged.
        """
        known = set(self.classes)
        labels = [None if label is None else str(label) for label in self.labels]
        if not any(label in known for label in labels):
            return None
        names = self.names
        return np.array(
            [label in known and label != name for label, name in zip(labels, names, strict=True)],
            dtype=bool,
        )

    def __post_init__(self) -> None:
        predicted = self.predicted
        if (
            len(self.labels) != len(self.filenames)
            or predicted.shape != (len(self.filenames),)
            or (len(predicted) and not 0 <= predicted.min() <= predicted.max() < len(self.classes))
        ):
            raise ValueError("The predictions do not fit together.")


def _plain(label: object) -> object:
    """A label as JSON keeps it: numpy scalars become Python numbers."""
    return label.item() if isinstance(label, np.generic) else label


def _pass(
    loaded: LoadedModel,
    dataset: Dataset,
    targets: Sequence[str],
    split: str,
    options: dict,
    should_stop: Callable[[], bool] | None,
    **features: object,
) -> Iterator[FeatureBatch]:
    """The batches of one pass over a split, raising :class:`Cancelled` when asked to stop."""
    from cnnlens.pipeline import iter_features

    stopped = False

    def stop() -> bool:
        # Remembered: a stop asked once ends the pass even if asked no more.
        nonlocal stopped
        stopped = stopped or (should_stop is not None and bool(should_stop()))
        return stopped

    batches = iter_features(
        loaded, dataset, list(targets), split=split, should_stop=stop, **options, **features
    )
    done = 0
    with contextlib.closing(batches):
        for batch in batches:
            yield batch
            done += len(batch.filenames)
            if stop():
                break
    if stopped:
        raise Cancelled(f"Stopped after {done} images; nothing was kept.")


class _Reduced:
    """One layer's maps reduced batch by batch to each channel's mean, maximum and its place."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.map_shape: tuple[int, int, int] | None = None
        self.blocks: dict[str, list[np.ndarray]] = {
            name: [] for name in ("mean", "max", "peak_y", "peak_x")
        }

    def add(self, maps: np.ndarray) -> None:
        if maps.ndim != 4:
            raise ValueError(
                f"{self.layer} gives {maps.ndim - 1}-D outputs, not feature maps; choose a "
                "convolutional layer."
            )
        count, channels, height, width = maps.shape
        self.map_shape = (channels, height, width)
        flat = maps.reshape(count, channels, height * width)
        peak = flat.argmax(axis=2)
        y, x = np.divmod(peak, width)
        self.blocks["mean"].append(flat.mean(axis=2, dtype=np.float32))
        self.blocks["max"].append(np.take_along_axis(flat, peak[..., None], axis=2)[..., 0])
        self.blocks["peak_y"].append(y.astype(np.int32))
        self.blocks["peak_x"].append(x.astype(np.int32))

    def stats(self, filenames: list[str], labels: list[object | None]) -> LayerStats:
        assert self.map_shape is not None
        return LayerStats(
            self.layer,
            self.map_shape,
            filenames,
            labels,
            *(np.concatenate(self.blocks[name]) for name in ("mean", "max", "peak_y", "peak_x")),
        )


def summarise(
    loaded: LoadedModel,
    dataset: Dataset,
    layers: Sequence[str],
    *,
    split: str = "train",
    with_predictions: bool = False,
    batch_size: int = 256,
    workers: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, LayerStats], Predictions | None]:
    """Several layers' statistics, and the model's answers if asked, from ONE pass over a split.

    Each image is read and decoded once; the network runs to the deepest layer (to
    its classes with ``with_predictions``). Each batch's maps are reduced right away
    to each channel's mean, maximum and the maximum's position, so memory holds one
    batch of maps at a time. Equal to :func:`layer_stats` per layer and
    :func:`predict_split`, at the cost of one pass.

    Example:
        >>> from cnnlens import demo_dataset, open_model, summarise
        >>> stats, answers = summarise(
        ...     open_model("demo"), demo_dataset(), ["conv_1", "conv_4"], with_predictions=True
        ... )
        >>> stats["conv_4"].mean.shape, len(answers.predicted)
        ((4000, 64), 4000)

    Args:
        loaded: the model (:func:`cnnlens.models.open_model`).
        dataset: the dataset.
        layers: layer names (renamed layers or module paths), at least one.
        split: ``"train"`` or ``"test"``.
        with_predictions: also the model's answer for every image.
        batch_size: images per forward pass.
        workers: processes decoding images while the network runs (0: this thread).
        should_stop: called between batches; returning True (even once) stops the pass.
        on_progress: called with ``(images done, images in total)`` after each batch.

    Returns:
        ``{layer: LayerStats}`` in the order given, and the :class:`Predictions` (or
        ``None``); images that cannot be read are left out.

    Raises:
        Cancelled: if ``should_stop()`` returned True; the partial pass is dropped.
        ValueError: for an unknown layer or split, a layer whose output is not a map,
            a split without readable images, or predictions of a model without classes.
    """
    if with_predictions and loaded.classes is None:
        raise ValueError("This model has no classes, so it predicts none; choose a classifier.")
    options = {"batch_size": batch_size, "workers": workers, "on_progress": on_progress}
    reduced = {layer: _Reduced(layer) for layer in layers}
    filenames: list[str] = []
    labels: list[object | None] = []
    predicted: list[np.ndarray] = []
    for batch in _pass(
        loaded,
        dataset,
        list(reduced),
        split,
        options,
        should_stop,
        pool="none",
        with_predictions=with_predictions,
    ):
        for layer, summary in reduced.items():
            summary.add(batch.features[layer])
        if with_predictions:
            predicted.append(np.asarray(batch.predictions).argmax(axis=1))
        filenames.extend(batch.filenames)
        labels.extend(_plain(label) for label in batch.labels)
    if not filenames:
        raise ValueError(f"The {split} split has no readable images to summarise.")
    stats = {layer: summary.stats(filenames, labels) for layer, summary in reduced.items()}
    answers = None
    if with_predictions:
        answers = Predictions(
            filenames, labels, np.concatenate(predicted).astype(np.int64), tuple(loaded.classes)
        )
    return stats, answers


def layer_stats(
    loaded: LoadedModel,
    dataset: Dataset,
    layer: str,
    *,
    split: str = "train",
    batch_size: int = 256,
    workers: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LayerStats:
    """Summarise one layer over a whole split of a dataset, in one pass (:func:`summarise`).

    The network runs only up to the layer.

    Example:
        >>> from cnnlens import demo_dataset, layer_stats, open_model
        >>> stats = layer_stats(open_model("demo"), demo_dataset(), "conv_2")
        >>> stats.mean.shape, stats.map_shape  # 4,000 digits × 32 channels of 28×28
        ((4000, 32), (32, 28, 28))

    Args:
        loaded: the model (:func:`cnnlens.models.open_model`).
        dataset: the dataset.
        layer: a layer name of ``loaded.layer_names()``, or a module path.
        split: ``"train"`` or ``"test"``.
        batch_size: images per forward pass.
        workers: processes decoding images while the network runs (0: this thread).
        should_stop: called between batches; returning True stops the pass.
        on_progress: called with ``(images done, images in total)`` after each batch.

    Returns:
        The :class:`LayerStats`; images that cannot be read are left out.

    Raises:
        Cancelled: if ``should_stop()`` returned True; the partial pass is dropped.
        ValueError: for an unknown layer or split, or a layer whose output is not a map.
    """
    options = {"batch_size": batch_size, "workers": workers}
    found, _ = summarise(
        loaded,
        dataset,
        [layer],
        split=split,
        should_stop=should_stop,
        on_progress=on_progress,
        **options,
    )
    return found[layer]


def layer_stats_and_predictions(
    loaded: LoadedModel,
    dataset: Dataset,
    layer: str,
    *,
    split: str = "train",
    batch_size: int = 256,
    workers: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[LayerStats, Predictions]:
    """A layer's statistics and the model's answers, from one pass over a split
    (:func:`summarise`).

    Args and Raises are those of :func:`layer_stats`, and:

    Raises:
        ValueError: if the model has no classes.
    """
    options = {"batch_size": batch_size, "workers": workers}
    found, answers = summarise(
        loaded,
        dataset,
        [layer],
        split=split,
        with_predictions=True,
        should_stop=should_stop,
        on_progress=on_progress,
        **options,
    )
    assert answers is not None
    return found[layer], answers


def predict_split(
    loaded: LoadedModel,
    dataset: Dataset,
    *,
    split: str = "train",
    batch_size: int = 256,
    workers: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Predictions:
    """The class the model predicts for every image of a split, in one pass.

    For the answers alone, when the layer's statistics are already at hand; see
    :func:`layer_stats_and_predictions` for both at once.

    Args and Raises are those of :func:`layer_stats`, and:

    Example:
        >>> from cnnlens import demo_dataset, open_model, predict_split
        >>> answers = predict_split(open_model("demo"), demo_dataset(), split="test")
        >>> len(answers.names), answers.classes[:3]
        (1000, ('0', '1', '2'))

    Raises:
        ValueError: if the model has no classes.
    """
    if loaded.classes is None:
        raise ValueError("This model has no classes, so it predicts none; choose a classifier.")
    filenames: list[str] = []
    labels: list[object | None] = []
    predicted = []
    options = {"batch_size": batch_size, "workers": workers, "on_progress": on_progress}
    # The first layer is the cheapest target: the pass is for the predictions.
    first = loaded.layer_names()[0]
    for batch in _pass(
        loaded, dataset, [first], split, options, should_stop, pool="mean", with_predictions=True
    ):
        predicted.append(np.asarray(batch.predictions).argmax(axis=1))
        filenames.extend(batch.filenames)
        labels.extend(batch.labels)
    if not filenames:
        raise ValueError(f"The {split} split has no readable images to classify.")
    return Predictions(
        filenames=filenames,
        labels=[_plain(label) for label in labels],
        predicted=np.concatenate(predicted).astype(np.int64),
        classes=tuple(loaded.classes),
    )


def labels_name_classes(
    dataset: Dataset, classes: Sequence[str] | None, split: str = "train"
) -> bool:
    """Whether some label of the split is one of the model's class names: only then can the
    network's answers be judged right or wrong (ImageNet's classes never name a digit)."""
    if not classes:
        return False
    labels = dataset.rows(split)["label"].dropna().unique()
    return not set(map(str, labels)).isdisjoint(classes)


def _check_aligned(stats: LayerStats, predictions: Predictions) -> None:
    if stats.filenames != predictions.filenames:
        raise ValueError(
            "The predictions are for other images than the layer's statistics; compute both "
            "for the same dataset and split."
        )


def _scores(stats: LayerStats, by: str) -> np.ndarray:
    if by not in _SCORES:
        raise ValueError(f"by must be 'mean' or 'max', got {by!r}.")
    return stats.mean if by == "mean" else stats.max


def _check_channel(stats: LayerStats, channel: int) -> int:
    channels = stats.map_shape[0]
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
        raise TypeError(f"channel must be an integer, not {type(channel).__name__}.")
    if not 0 <= channel < channels:
        raise ValueError(f"{stats.layer} has channels 0 to {channels - 1}; got {channel}.")
    return int(channel)


def top_images(
    stats: LayerStats,
    channel: int,
    k: int = 9,
    by: str = "max",
    among: np.ndarray | None = None,
) -> pd.DataFrame:
    """The images that excite one channel most: the channel's dataset examples.

    Example:
        >>> from cnnlens import demo_dataset, layer_stats, open_model, top_images
        >>> stats = layer_stats(open_model("demo"), demo_dataset(), "conv_2")
        >>> list(top_images(stats, channel=5, k=3).columns)
        ['filename', 'label', 'score', 'y', 'x']

    Args:
        stats: the layer's statistics.
        channel: the channel.
        k: how many images.
        by: rank by the channel's ``"max"`` (strongest spot) or ``"mean"`` (overall) activation.
        among: a boolean mask over the images to rank only some (one class, say).

    Returns:
        Up to ``k`` rows, highest score first (ties in dataset order): ``filename``,
        ``label``, ``score``, and ``y``, ``x``, where in the map the channel peaks.

    Raises:
        ValueError: for an unknown channel or ``by``, ``k`` below 1, or a mask of
            the wrong length.
    """
    channel = _check_channel(stats, channel)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    scores = _scores(stats, by)[:, channel]
    candidates = np.arange(len(stats))
    if among is not None:
        among = np.asarray(among, dtype=bool)
        if among.shape != (len(stats),):
            raise ValueError(f"among must mark each of the {len(stats)} images; got {among.shape}.")
        candidates = candidates[among]
    order = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
    return pd.DataFrame(
        {
            "filename": [stats.filenames[i] for i in order],
            "label": pd.Series([stats.labels[i] for i in order], dtype=object),
            "score": scores[order].astype(np.float64),
            "y": stats.peak_y[order, channel],
            "x": stats.peak_x[order, channel],
        }
    )


def channel_maps(
    loaded: LoadedModel,
    dataset: Dataset,
    filenames: Sequence[str],
    layer: str,
    channel: int,
    split: str = "train",
) -> np.ndarray:
    """One channel's maps for a few dataset images (such as a channel's top images), in one
    forward pass.

    Returns:
        k×H×W float32, in the order of ``filenames``.

    Raises:
        ValueError: for an unknown layer or image, or a channel the layer does not have.
    """
    images = [dataset.load_image(name, loaded.spec.mode, split) for name in filenames]
    maps = loaded.extractor(layer)(loaded.batch(images))[layer]
    channels = maps.shape[1]
    if not 0 <= channel < channels:
        raise ValueError(f"{layer} has channels 0 to {channels - 1}; got {channel}.")
    return maps[:, channel].float().cpu().numpy()


def fire_box(
    row: Mapping[str, int],
    map_shape: tuple[int, int],
    input_size: tuple[int, int],
    receptive_field: ReceptiveField | None = None,
    channel: int | None = None,
) -> tuple[int, int, int, int]:
    """The part of the input image where a channel fires, for cropping.

    With the layer's receptive field, it is the part of the image the value at that
    map position reads, placed where the layer's windows put it. Without one (a field
    that is unknown) it is the map cell scaled to the input: roughly where, not what
    the value reads.

    Args:
        row: a mapping with the map position ``y`` and ``x`` (a :func:`top_images` row).
        map_shape: ``(height, width)`` of the layer's maps.
        input_size: ``(height, width)`` of the network's input.
        receptive_field: the layer's field for this input size
            (:meth:`cnnlens.Layers.receptive_field`), if known.
        channel: the channel, whose own field it is (channels joined from branches
            see different parts); ``None`` for the union over all channels.

    Returns:
        ``(left, top, right, bottom)`` in input pixels, right and bottom exclusive,
        inside the input, as Pillow's ``Image.crop`` takes it.

    Raises:
        ValueError: if the position lies outside the map, or the field is for another
            input or map size.
    """
    y, x = int(row["y"]), int(row["x"])
    map_h, map_w = map_shape
    if not (0 <= y < map_h and 0 <= x < map_w):
        raise ValueError(f"Position ({y}, {x}) is outside a {map_h}×{map_w} map.")
    if receptive_field is not None:
        field_h, field_w = receptive_field.rows.shape[1], receptive_field.cols.shape[1]
        if tuple(receptive_field.input_size) != tuple(input_size) or (
            field_h not in (1, map_h) or field_w not in (1, map_w)
        ):
            raise ValueError(
                f"This receptive field is for a {field_h}×{field_w} map of a "
                f"{receptive_field.input_size[0]}×{receptive_field.input_size[1]} input, "
                f"not a {map_h}×{map_w} map of a {input_size[0]}×{input_size[1]} one: "
                "take the layer's field for this input size."
            )
        box = receptive_field.box(y, x, channel)
        if box is not None:
            return box
    box = []
    for position, cells, pixels in ((x, map_w, input_size[1]), (y, map_h, input_size[0])):
        step = pixels / cells
        low_px = min(max(int(np.floor(position * step)), 0), pixels - 1)
        box.append((low_px, min(max(int(np.ceil((position + 1) * step)), low_px + 1), pixels)))
    (left, right), (top, bottom) = box
    return left, top, right, bottom


def class_channel_matrix(
    stats: LayerStats,
    by: str = "mean",
    predictions: Predictions | None = None,
    relative: bool = False,
) -> pd.DataFrame:
    """The average activation of each channel for each class.

    Example:
        >>> from cnnlens import class_channel_matrix, demo_dataset, layer_stats, open_model
        >>> stats = layer_stats(open_model("demo"), demo_dataset(), "conv_4")
        >>> class_channel_matrix(stats, relative=True).shape  # 10 digits × 64 channels
        (10, 64)

    Args:
        stats: the layer's statistics.
        by: average each image's channel ``"mean"`` or ``"max"``.
        predictions: group images by the class the model predicts (from
            :func:`predict_split` on the same images) instead of by their label.
        relative: give each channel's averages as standard scores across the classes
            (0 for a channel that responds to every class alike), so a channel strong
            for every class does not hide which classes the others prefer.

    Returns:
        A classes × channels frame (index: the labels or predicted classes, sorted;
        columns: channel numbers).

    Raises:
        ValueError: for an unknown ``by``, images without labels (and no predictions),
            or predictions for other images.
    """
    scores = _scores(stats, by)
    if predictions is None:
        groups = pd.Series(stats.labels, dtype=object)
        if groups.isna().all():
            raise ValueError("These images have no labels; group them by the predicted class.")
    else:
        _check_aligned(stats, predictions)
        groups = pd.Series(predictions.names, dtype=object)
    frame = pd.DataFrame(scores.astype(np.float64), columns=range(scores.shape[1]))
    matrix = frame.groupby(groups.to_numpy(), sort=True).mean()
    if relative:
        spread = matrix.std(axis=0, ddof=0)
        matrix = (matrix - matrix.mean(axis=0)) / spread.where(spread > 0, np.inf)
    matrix.index.name = "label" if predictions is None else "predicted"
    matrix.columns.name = "channel"
    return matrix


def difference(map_a: np.ndarray, map_b: np.ndarray) -> np.ndarray:
    """``map_a - map_b``: where the first image excites the layer more (positive) or less.

    Example:
        >>> import numpy as np
        >>> from cnnlens import difference
        >>> difference(np.ones((2, 2)), np.zeros((2, 2))).tolist()
        [[1.0, 1.0], [1.0, 1.0]]

    Raises:
        ValueError: if the maps differ in shape.
    """
    a, b = np.asarray(map_a), np.asarray(map_b)
    if a.shape != b.shape:
        raise ValueError(f"Maps of shapes {a.shape} and {b.shape} cannot be compared.")
    return a.astype(np.float32) - b.astype(np.float32)


# --- the results of a dataset pass, as specs the results store runs ------------------------


@dataclass(frozen=True, eq=False)
class PredictionsSpec(DatasetSpec[Predictions]):
    """The model's answer for every image of a split (:func:`predict_split`)."""

    kind = "predictions"
    result_type = Predictions

    @property
    def title(self) -> str:
        return "classifying every image"

    def progress_text(self, done: int, total: int) -> str:
        return f"Classifying every image: {done:,} of {total:,}"

    def compute(self, run: Run) -> Predictions:
        return predict_split(
            self.loaded,
            self.dataset,
            split=self.split,
            should_stop=run.should_stop,
            on_progress=run.report,
            **self.pass_options,
        )


@dataclass(frozen=True, eq=False)
class LayerStatsSpec(DatasetSpec[LayerStats]):
    """One layer's statistics over a split (:func:`layer_stats`).

    The pass that makes them can make more at no extra decoding: the statistics of
    other layers (``along``) and the model's answers (``with_predictions``), each
    kept as its own result when it is not stored yet. Neither is part of the key.

    Attributes:
        layer: the layer (a renamed layer or a module path: both give one key).
        along: other layers to summarise in the same pass (those without maps are skipped).
        with_predictions: classify every image in the same pass (:class:`PredictionsSpec`).
    """

    layer: str
    along: tuple[str, ...] = field(default=(), kw_only=True)
    with_predictions: bool = field(default=False, kw_only=True)
    kind = "layer_stats"
    result_type = LayerStats

    def parts(self) -> dict[str, object]:
        return {**super().parts(), "layer": self.layer_path(self.layer)}

    @property
    def title(self) -> str:
        more = " with the other chosen layers" if self.along else ""
        answers = " and classifying every image" if self.with_predictions else ""
        return f"summarising {self.layer}{more}{answers}"

    def progress_text(self, done: int, total: int) -> str:
        return f"{self.title[:1].upper()}{self.title[1:]}: {done:,} of {total:,} images"

    def of(self, layer: str) -> LayerStatsSpec:
        """Another layer's statistics over the same split."""
        return LayerStatsSpec(
            self.loaded, self.dataset, layer, split=self.split, **self.pass_options
        )

    @property
    def predictions(self) -> PredictionsSpec:
        """The model's answers over the same split."""
        return PredictionsSpec(self.loaded, self.dataset, split=self.split, **self.pass_options)

    def _riders(self, run: Run) -> list[LayerStatsSpec]:
        """The other layers still to summarise, those with maps only."""
        from cnnlens.pipeline import map_shapes

        others = [self.of(layer) for layer in dict.fromkeys(self.along) if layer != self.layer]
        missing = [spec for spec in others if spec.key != self.key and run.find(spec) is None]
        if not missing:
            return []
        shapes = map_shapes(self.loaded, [spec.layer for spec in missing])
        return [spec for spec in missing if len(shapes[spec.layer]) == 3]

    def compute(self, run: Run) -> LayerStats:
        riders = self._riders(run)
        classify = (
            self.with_predictions
            and self.loaded.classes is not None
            and run.find(self.predictions) is None
        )
        stats, answers = summarise(
            self.loaded,
            self.dataset,
            [self.layer, *(spec.layer for spec in riders)],
            split=self.split,
            with_predictions=classify,
            should_stop=run.should_stop,
            on_progress=run.report,
            **self.pass_options,
        )
        for spec in riders:
            run.keep(spec, stats[spec.layer])
        if answers is not None:
            run.keep(self.predictions, answers)
        return stats[self.layer]


def _group_names(stats: LayerStats, predictions: Predictions | None) -> np.ndarray:
    """Each image's class: its label, or the predicted class."""
    if predictions is None:
        return np.array([str(label) for label in stats.labels])
    _check_aligned(stats, predictions)
    return np.array(predictions.names)


@dataclass(frozen=True, eq=False)
class TopImagesSpec(Derived[pd.DataFrame]):
    """The images that excite one channel most (:func:`top_images`), from a layer's
    statistics, optionally among the images of one class.

    Attributes:
        stats: the layer's statistics.
        channel: the channel.
        k: how many images.
        by: ``"max"`` or ``"mean"``.
        of_class: only the images of this class (by label, or by ``predictions``).
        predictions: group the images by the model's answer instead of their label.
    """

    stats: LayerStatsSpec
    channel: int
    k: int = 9
    by: str = "max"
    of_class: str | None = None
    predictions: PredictionsSpec | None = None
    kind = "top_images"

    def parts(self) -> dict[str, object]:
        return {
            "stats": self.stats.key,
            "channel": int(self.channel),
            "k": self.k,
            "by": self.by,
            "of_class": self.of_class,
            "predictions": None if self.predictions is None else self.predictions.key,
        }

    def requires(self) -> tuple[DatasetSpec, ...]:
        return (self.stats,) if self.predictions is None else (self.stats, self.predictions)

    def derive(self, stats: LayerStats, predictions: Predictions | None = None) -> pd.DataFrame:
        among = None
        if self.of_class is not None:
            among = _group_names(stats, predictions) == self.of_class
        return top_images(stats, self.channel, k=self.k, by=self.by, among=among)


@dataclass(frozen=True, eq=False)
class ClassMatrixSpec(Derived[pd.DataFrame]):
    """Each channel's average activation per class (:func:`class_channel_matrix`).

    Attributes:
        stats: the layer's statistics.
        by: average each image's channel ``"mean"`` or ``"max"``.
        predictions: group the images by the model's answer instead of their label.
        relative: standard scores across the classes.
    """

    stats: LayerStatsSpec
    by: str = "mean"
    predictions: PredictionsSpec | None = None
    relative: bool = False
    kind = "class_matrix"

    def parts(self) -> dict[str, object]:
        return {
            "stats": self.stats.key,
            "by": self.by,
            "predictions": None if self.predictions is None else self.predictions.key,
            "relative": self.relative,
        }

    def requires(self) -> tuple[DatasetSpec, ...]:
        return (self.stats,) if self.predictions is None else (self.stats, self.predictions)

    def derive(self, stats: LayerStats, predictions: Predictions | None = None) -> pd.DataFrame:
        return class_channel_matrix(stats, self.by, predictions, self.relative)
