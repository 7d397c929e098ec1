"""Relevance-ranked examples: the dataset images where a channel contributes most to the answer.

An activation-ranked example (:func:`cnnlens.insights.top_images`) is an image where
a channel fires strongly, whether or not that matters for the network's decision.
Relevance maximisation (Achtibat et al., Nature Machine Intelligence 2023) ranks the
images instead by how much the channel adds to the class the network predicts. Here
that contribution is gradient × activation summed over the channel's map:

    r_c = Σ_{h,w} A_c(h, w) · ∂y_pred / ∂A_c(h, w)

with ``y_pred`` the logit of the image's predicted class. For a layer whose output
is N×C (a linear layer) each unit is a channel and nothing is summed.

:func:`channel_relevance` makes it for every image of a split and every channel of
one layer, in batches: the score differentiated is ``Σ_i logits[i, pred_i]``. The
private copy runs in eval mode, where batch norm uses its running statistics and
dropout does nothing, so image ``i``'s logits depend on image ``i`` alone and the
gradient of that sum with respect to image ``i``'s maps is the gradient of its own
predicted logit. (A model whose forward mixes the images of a batch in eval mode
would break this; the test compares with a loop over single images.)

A layer taken before an activation (the demo's ``conv_4``) is scored as its output
is given. Gradient × activation is consistent through a ReLU: the gradient is zero
wherever the ReLU cuts, so ``conv_4`` and ``relu_4`` get the same relevance.

:class:`RelevanceSpec` is that pass as a result the store keeps (with the model's
answers, :class:`~cnnlens.insights.PredictionsSpec`, which it gives as well); :func:`top_relevant`
gives a channel's most relevant images in the frame :func:`~cnnlens.insights.top_images`
gives, so both show side by side; :func:`rank_agreement` measures how much the two
rankings agree. Pure numpy and torch; no streamlit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from cnnlens.insights import Predictions, PredictionsSpec, top_images
from cnnlens.results import Cancelled, DatasetSpec, Derived, Run

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.insights import LayerStats
    from cnnlens.models import LoadedModel
    from cnnlens.private_copy import PrivateCopy

__all__ = [
    "ChannelRelevance",
    "RankAgreement",
    "RelevanceSpec",
    "TopRelevantSpec",
    "channel_relevance",
    "rank_agreement",
    "top_relevant",
]


@dataclass(frozen=True, eq=False)
class ChannelRelevance:
    """Each channel's contribution to the predicted class, for every image of a split.

    Attributes:
        layer: the layer's name, as it was asked for.
        map_shape: ``(channels, height, width)`` of one image's maps, or ``(units,)``
            for a layer whose output is N×C.
        filenames: the images, in dataset order (unreadable images left out), as
            :class:`~cnnlens.insights.LayerStats` lists them.
        labels: their labels (``None`` for unlabelled images).
        classes: the model's class names.
        predicted: N int64 indices into ``classes``: the class each image's relevance is for.
        relevance: N×C float32, gradient × activation summed over each channel's map.
        peak_y: N×C int32, the row of the map where the channel contributes most
            (0 for a layer without maps).
        peak_x: N×C int32, its column.
    """

    layer: str
    map_shape: tuple[int, ...]
    filenames: list[str]
    labels: list[object | None]
    classes: tuple[str, ...]
    predicted: np.ndarray
    relevance: np.ndarray
    peak_y: np.ndarray
    peak_x: np.ndarray

    def __len__(self) -> int:
        return len(self.filenames)

    def __post_init__(self) -> None:
        shape = (len(self.filenames), self.map_shape[0])
        blocks = (self.relevance, self.peak_y, self.peak_x)
        predicted = self.predicted
        if (
            len(self.labels) != len(self.filenames)
            or predicted.shape != (len(self.filenames),)
            or any(block.shape != shape for block in blocks)
            or (len(predicted) and not 0 <= predicted.min() <= predicted.max() < len(self.classes))
        ):
            raise ValueError(f"The relevance of {self.layer} does not fit together.")


# --- one batch ---------------------------------------------------------------------------------


def _predicted_logits(found: list[torch.Tensor], logits: object) -> torch.Tensor:
    """``Σ_i logits[i, pred_i]``, keeping each image's predicted class in ``found``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"Relevance needs class scores (N×K), but this model outputs {shape}; "
            "choose a classifier."
        )
    predicted = logits.detach().argmax(dim=1)
    found.append(predicted)
    return logits.gather(1, predicted[:, None]).sum()


def _batch_relevance(
    copy: PrivateCopy, x: torch.Tensor, path: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One batch's predicted classes, relevance (N×C) and where each channel contributes most."""
    predicted: list[torch.Tensor] = []
    activation, gradient = copy.gradient(x, path, partial(_predicted_logits, predicted))
    contribution = activation.float() * gradient.float()
    classes = predicted[0].cpu().numpy().astype(np.int64)
    if contribution.dim() == 2:  # units: nothing to sum, no place in a map
        zeros = np.zeros(contribution.shape, np.int32)
        return classes, contribution.cpu().numpy(), zeros, zeros.copy()
    flat = contribution.flatten(2)
    peak = flat.argmax(dim=2)
    y, x_at = peak // contribution.shape[3], peak % contribution.shape[3]
    return (
        classes,
        flat.sum(dim=2).cpu().numpy(),
        y.int().cpu().numpy(),
        x_at.int().cpu().numpy(),
    )


# --- the pass ------------------------------------------------------------------------------------


_Decoded = tuple[torch.Tensor | None, list[int], int]
"""A decoded batch: its pixels (``None`` if no image was read), their positions, its size."""


def _batches(
    loaded: LoadedModel, dataset: Dataset, filenames: list[str], split: str, options: dict
) -> Iterator[_Decoded]:
    """The decoded batches of a split, in order: ``(pixels, positions read, images)``."""
    from cnnlens.pipeline import pixel_batches

    return pixel_batches(
        dataset,
        filenames,
        split,
        loaded.spec,
        batch_size=options["batch_size"],
        workers=options["workers"],
        pin_memory=loaded.device.type == "cuda",
    )


def _check_pass(
    loaded: LoadedModel, layer: str, batch_size: int, workers: int
) -> tuple[str, tuple[int, ...]]:
    """The layer's module path and one image's output shape, after every check that needs
    no image.

    Raises:
        ValueError: for a model without classes, an unknown layer, a layer whose output
            is neither maps nor units, a batch size below 1 or negative workers.
    """
    from cnnlens.pipeline import map_shapes

    if loaded.classes is None:
        raise ValueError(
            "This model has no classes, so no image has a predicted class to explain; "
            "choose a classifier."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}.")
    path = loaded.layers.path(layer)  # an unknown layer: the valid ones, close matches
    shape = map_shapes(loaded, [layer])[layer]
    if len(shape) not in (1, 3):
        raise ValueError(
            f"{layer} gives outputs of shape {shape} per image, neither feature maps (C×H×W) "
            "nor units (C); choose a convolutional or linear layer."
        )
    return path, tuple(int(n) for n in shape)


def channel_relevance(
    loaded: LoadedModel,
    dataset: Dataset,
    layer: str,
    *,
    split: str = "train",
    batch_size: int = 256,
    workers: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ChannelRelevance:
    """Every channel's relevance to the predicted class, for every image of a split, in one pass.

    See the module's notes: gradient × activation summed over each map, for the
    logit of each image's own predicted class, in batches.

    Example:
        >>> from cnnlens import demo_dataset, open_model
        >>> from cnnlens.relevance import channel_relevance
        >>> found = channel_relevance(open_model("demo"), demo_dataset(), "conv_4", split="test")
        >>> found.relevance.shape, found.map_shape  # 1,000 test digits × 64 channels of 14×14
        ((1000, 64), (64, 14, 14))

    Args:
        loaded: the model (:func:`cnnlens.models.open_model`); it must have classes.
        dataset: the dataset.
        layer: a layer name of ``loaded.layer_names()``, or a module path.
        split: ``"train"`` or ``"test"``.
        batch_size: images per forward and backward pass.
        workers: processes decoding images while the network runs (0: this thread).
        should_stop: asked before each batch; True (even once) stops the pass.
        on_progress: called with ``(images done, images in total)`` after each batch.

    Returns:
        The :class:`ChannelRelevance`; images that cannot be read are left out.

    Raises:
        Cancelled: if ``should_stop()`` returned True; nothing is kept.
        ValueError: for a model without classes or class scores, an unknown layer or
            split, a layer whose output is neither maps nor units, or a split without
            readable images.
    """
    from cnnlens.preprocess import scale_uint8_batch

    path, map_shape = _check_pass(loaded, layer, batch_size, workers)
    rows = dataset.rows(split)
    filenames, labels = rows["filename"].tolist(), rows["label"].tolist()
    copy, kept, parts = loaded.private_copy, [], []
    batches = _batches(
        loaded, dataset, filenames, split, {"batch_size": batch_size, "workers": workers}
    )
    done = 0
    while True:
        # Asked before each batch is decoded, so a stop costs at most the batch in flight.
        if should_stop is not None and should_stop():
            raise Cancelled(
                f"Stopped after {done:,} of {len(filenames):,} images; nothing was kept."
            )
        pixels, read, size = next(batches, (None, [], 0))
        if not size:
            break
        if pixels is not None:
            x = scale_uint8_batch(pixels, loaded.spec, copy.device, copy.dtype)
            parts.append(_batch_relevance(copy, x, path))
            kept.extend(read)
        done += size
        if on_progress is not None:
            on_progress(done, len(filenames))
    if not kept:
        raise ValueError(f"The {split} split has no readable images to score.")
    predicted, relevance, peak_y, peak_x = map(np.concatenate, zip(*parts, strict=True))
    return ChannelRelevance(
        layer=layer,
        map_shape=map_shape,
        filenames=[filenames[i] for i in kept],
        labels=[labels[i] for i in kept],
        classes=tuple(loaded.classes or ()),
        predicted=predicted,
        relevance=relevance.astype(np.float32, copy=False),
        peak_y=peak_y,
        peak_x=peak_x,
    )


# --- reading it ----------------------------------------------------------------------------------


def _check_channel(result: ChannelRelevance, channel: int) -> int:
    channels = result.map_shape[0]
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
        raise TypeError(f"channel must be an integer, not {type(channel).__name__}.")
    if not 0 <= channel < channels:
        raise ValueError(f"{result.layer} has channels 0 to {channels - 1}; got {channel}.")
    return int(channel)


def top_relevant(
    result: ChannelRelevance, channel: int, k: int = 9, among: np.ndarray | None = None
) -> pd.DataFrame:
    """The images where a channel contributes most to the predicted class.

    The frame has :func:`~cnnlens.insights.top_images`' columns, so the two show
    side by side (and :func:`~cnnlens.insights.fire_box` crops either), and the
    class each image's relevance is for.

    Example:
        >>> import numpy as np
        >>> from cnnlens.relevance import ChannelRelevance, top_relevant
        >>> found = ChannelRelevance(
        ...     "conv_1", (2, 4, 4), ["a.png", "b.png", "c.png"], [0, 1, 1], ("0", "1"),
        ...     np.array([0, 1, 1]), np.array([[0.1, 2.0], [0.5, -1.0], [0.3, 0.0]], np.float32),
        ...     np.zeros((3, 2), np.int32), np.ones((3, 2), np.int32),
        ... )
        >>> top_relevant(found, channel=0, k=2)[["filename", "score", "predicted"]].values.tolist()
        [['b.png', 0.5, '1'], ['c.png', 0.30000001192092896, '1']]

    Args:
        result: the layer's relevance (:func:`channel_relevance`).
        channel: the channel.
        k: how many images.
        among: a boolean mask over the images to rank only some (one class, say).

    Returns:
        Up to ``k`` rows, most relevant first (ties in dataset order): ``filename``,
        ``label``, ``score`` (the relevance), ``y``, ``x`` (where in the map the
        channel contributes most) and ``predicted`` (the class's name).

    Raises:
        TypeError: for a channel that is not a whole number.
        ValueError: for a channel out of range, ``k`` below 1, or a mask of the wrong length.
    """
    channel = _check_channel(result, channel)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    scores = result.relevance[:, channel]
    candidates = np.arange(len(result))
    if among is not None:
        among = np.asarray(among, dtype=bool)
        if among.shape != (len(result),):
            raise ValueError(
                f"among must mark each of the {len(result)} images; got {among.shape}."
            )
        candidates = candidates[among]
    order = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
    return pd.DataFrame(
        {
            "filename": [result.filenames[i] for i in order],
            "label": pd.Series([result.labels[i] for i in order], dtype=object),
            "score": scores[order].astype(np.float64),
            "y": result.peak_y[order, channel],
            "x": result.peak_x[order, channel],
            "predicted": [result.classes[i] for i in result.predicted[order]],
        }
    )


@dataclass(frozen=True)
class RankAgreement:
    """How much a channel's activation ranking and relevance ranking agree.

    Attributes:
        channel: the channel.
        k: the length of each top list.
        overlap: how many images both top-``k`` lists hold.
        spearman: Spearman's rank correlation over all images between the channel's
            activation and its relevance (NaN when either is constant).
    """

    channel: int
    k: int
    overlap: int
    spearman: float


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the ranks, ties given their average rank."""
    ranks_a = pd.Series(a, dtype=np.float64).rank().to_numpy()
    ranks_b = pd.Series(b, dtype=np.float64).rank().to_numpy()
    if np.ptp(ranks_a) == 0 or np.ptp(ranks_b) == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def rank_agreement(
    stats: LayerStats, result: ChannelRelevance, channel: int, *, k: int = 9, by: str = "max"
) -> RankAgreement:
    """How far a channel's activation-ranked and relevance-ranked examples agree.

    Example:
        >>> from cnnlens import demo_dataset, layer_stats, open_model
        >>> from cnnlens.relevance import channel_relevance, rank_agreement
        >>> loaded, digits = open_model("demo"), demo_dataset()
        >>> stats = layer_stats(loaded, digits, "conv_4", split="test")
        >>> found = channel_relevance(loaded, digits, "conv_4", split="test")
        >>> 0 <= rank_agreement(stats, found, 3).overlap <= 9
        True

    Args:
        stats: the layer's statistics (:func:`cnnlens.insights.layer_stats`).
        result: a layer's relevance over the same images (:func:`channel_relevance`).
        channel: the channel.
        k: the length of each top list.
        by: rank activations by the channel's ``"max"`` or ``"mean"``.

    Returns:
        The :class:`RankAgreement`: the top-``k`` overlap and Spearman's rho.

    Raises:
        ValueError: for results of other images or channel counts, an unknown ``by``,
            a channel out of range or ``k`` below 1.
    """
    if stats.filenames != result.filenames or stats.map_shape[0] != result.map_shape[0]:
        raise ValueError(
            f"The statistics of {stats.layer} and the relevance of {result.layer} are not of "
            "the same images and channels; compute both over the same split of one dataset."
        )
    by_activation = top_images(stats, channel, k=k, by=by)
    by_relevance = top_relevant(result, channel, k=k)
    overlap = len(set(by_activation["filename"]) & set(by_relevance["filename"]))
    activation = getattr(stats, by)[:, channel]
    return RankAgreement(
        channel=int(channel),
        k=k,
        overlap=overlap,
        spearman=_spearman(activation, result.relevance[:, channel]),
    )


# --- as results the store keeps ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RelevanceSpec(DatasetSpec[ChannelRelevance]):
    """Every channel's relevance to the predicted class over a split (:func:`channel_relevance`).

    Attributes:
        layer: the layer (a renamed layer or a module path: both give one key).
    """

    layer: str
    kind = "channel_relevance"
    version = 1
    result_type = ChannelRelevance

    def parts(self) -> dict[str, object]:
        return {**super().parts(), "layer": self.layer_path(self.layer)}

    @property
    def title(self) -> str:
        return f"scoring what each channel of {self.layer} adds to every answer"

    def progress_text(self, done: int, total: int) -> str:
        return f"{self.title[:1].upper()}{self.title[1:]}: {done:,} of {total:,} images"

    @property
    def predictions(self) -> PredictionsSpec:
        """The model's answers over the same split, which this pass gives as well."""
        return PredictionsSpec(self.loaded, self.dataset, split=self.split, **self.pass_options)

    def compute(self, run: Run) -> ChannelRelevance:
        found = channel_relevance(
            self.loaded,
            self.dataset,
            self.layer,
            split=self.split,
            should_stop=run.should_stop,
            on_progress=run.report,
            **self.pass_options,
        )
        if run.find(self.predictions) is None:
            answers = (found.filenames, found.labels, found.predicted, found.classes)
            run.keep(self.predictions, Predictions(*answers))
        return found


@dataclass(frozen=True, eq=False)
class TopRelevantSpec(Derived[pd.DataFrame]):
    """The images where one channel contributes most (:func:`top_relevant`), from a
    layer's relevance: found whenever the relevance is.

    Attributes:
        relevance: the layer's relevance.
        channel: the channel.
        k: how many images.
    """

    relevance: RelevanceSpec
    channel: int
    k: int = 9
    kind = "top_relevant"

    def parts(self) -> dict[str, object]:
        return {"relevance": self.relevance.key, "channel": int(self.channel), "k": self.k}

    def requires(self) -> tuple[RelevanceSpec]:
        return (self.relevance,)

    def derive(self, result: ChannelRelevance) -> pd.DataFrame:
        return top_relevant(result, self.channel, k=self.k)
