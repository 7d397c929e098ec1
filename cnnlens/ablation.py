"""What a channel does for the prediction: set it to zero and see what changes.

:func:`ablate` runs a batch twice through the model's private copy, once as it
is and once with one channel of one layer's output set to zero, and returns
both logits. The zeroed output is a copy: nothing the model or another thread
holds is written into. :func:`ablation_by_class` does it over a dataset split
and counts, per class, how often the model is right before and after;
:class:`ClassAblationSpec` is that as a result the results store keeps.

A module the forward calls more than once (ResNet's shared ``relu``) is
ablated at its first call, the call whose output the rest of cnnlens shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cnnlens.borrow import borrowed_copy, layer_channels
from cnnlens.private_copy import PrivateCopy
from cnnlens.results import Cancelled, DatasetSpec, Run

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel

__all__ = ["ClassAblation", "ClassAblationSpec", "ablate", "ablation_by_class"]


def _zeroed(layer: str, channel: int, zero: bool, output: torch.Tensor) -> torch.Tensor | None:
    """A copy of a layer's output with one channel set to zero (``None``: left as it is)."""
    if output.dim() < 2:
        raise ValueError(
            f"{layer} returns no N×C… tensor, so it has no channels to set to zero; "
            "choose a convolutional or linear layer."
        )
    channels = output.shape[1]
    if not 0 <= channel < channels:
        raise ValueError(f"{layer} has channels 0 to {channels - 1}; got {channel}.")
    if not zero:
        return None
    ablated = output.clone()
    ablated[:, channel] = 0
    return ablated


def _check_channel(channel: int) -> int:
    if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
        raise TypeError(f"channel must be a whole number, not {type(channel).__name__}.")
    return int(channel)


def _both(
    copy: PrivateCopy, x: torch.Tensor, path: str, layer: str, channel: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs for a prepared batch, as it is and with the channel zeroed."""
    outputs = []
    for zero in (False, True):
        out = copy.run_to(x, path, replace=partial(_zeroed, layer, channel, zero)).result
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"The model returns a {type(out).__name__}, not a tensor of logits.")
        outputs.append(out.float().cpu())
    return outputs[0], outputs[1]


def ablate(
    model: nn.Module | LoadedModel, batch: torch.Tensor, layer: str, channel: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits for a batch, as they are and with one channel of a layer set to zero.

    Example:
        >>> from cnnlens import ablate, demo_dataset, open_model
        >>> loaded, dataset = open_model("demo"), demo_dataset()
        >>> batch = loaded.batch(dataset.load_image(dataset.pick(128)))
        >>> before, after = ablate(loaded, batch, "conv_2", 3)  # logits, channel 3 off
        >>> before.shape, after.shape
        (torch.Size([1, 10]), torch.Size([1, 10]))

    Args:
        model: an ``nn.Module`` (run on a temporary copy) or a
            :class:`~cnnlens.models.LoadedModel` (run on its private copy).
        batch: an N×C×H×W batch, preprocessed as the model expects
            (``LoadedModel.batch(images)``).
        layer: a layer name (renamed layers for a sequential stack, qualified
            module names otherwise).
        channel: the channel (a unit, for a 2-D output) to set to zero.

    Returns:
        ``(before, after)``: the model's outputs, float32 on the CPU.

    Raises:
        ValueError: for an unknown layer, a channel out of range (the message
            names the valid range), a layer that does not run, or a batch that does
            not fit the network.
        TypeError: for a model that is neither, a batch that is not a tensor, or a
            channel that is not a whole number.
    """
    channel = _check_channel(channel)
    with borrowed_copy(model) as (copy, layers, _):
        path = layers.path(layer)
        with torch.inference_mode():
            return _both(copy, copy.prepare(batch), path, layer, channel)


@dataclass(frozen=True, eq=False)
class ClassAblation:
    """How often the model is right for each class, before and after zeroing one channel.

    Only images whose label, as a string, is one of the model's class names
    count (as :attr:`cnnlens.insights.Predictions.misclassified` judges them);
    the model is right when its highest logit is that class.

    Attributes:
        layer: the layer.
        channel: the channel set to zero.
        classes: the model's classes that label at least one image, in the model's order.
        counts: images of each class (int64).
        accuracy_before: the share of each class's images the model gets right (float64).
        accuracy_after: the same with the channel set to zero.
        overall_before: the share of all counted images it gets right.
        overall_after: the same with the channel set to zero.
        unmatched: images left out because their label names none of the classes.
    """

    layer: str
    channel: int
    classes: tuple[str, ...]
    counts: np.ndarray
    accuracy_before: np.ndarray
    accuracy_after: np.ndarray
    overall_before: float
    overall_after: float
    unmatched: int = 0

    @property
    def change(self) -> np.ndarray:
        """``accuracy_after - accuracy_before`` per class: negative where the channel helps."""
        return self.accuracy_after - self.accuracy_before

    def __post_init__(self) -> None:
        blocks = (self.counts, self.accuracy_before, self.accuracy_after)
        if any(block.shape != (len(self.classes),) for block in blocks):
            raise ValueError(f"The ablation of {self.layer} does not fit together.")


def _matched_rows(
    loaded: LoadedModel, dataset: Dataset, split: str
) -> tuple[list[str], np.ndarray, int]:
    """The images whose label names a class, their class indices, and how many others."""
    classes = loaded.classes
    if classes is None:
        raise ValueError("This model has no classes, so it predicts none; choose a classifier.")
    index = {name: i for i, name in enumerate(classes)}
    rows = dataset.rows(split)
    filenames: list[str] = []
    targets: list[int] = []
    for name, label in zip(rows["filename"].tolist(), rows["label"].tolist(), strict=True):
        found = None if label is None else index.get(str(label))
        if found is not None:
            filenames.append(name)
            targets.append(found)
    if not filenames:
        raise ValueError(
            f"No label of the {split} split names one of {loaded.name}'s classes (such as "
            f"{', '.join(map(repr, classes[:3]))}), so its accuracy cannot be judged."
        )
    return filenames, np.array(targets, dtype=np.int64), len(rows) - len(filenames)


def ablation_by_class(
    loaded: LoadedModel,
    dataset: Dataset,
    layer: str,
    channel: int,
    *,
    split: str = "train",
    batch_size: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ClassAblation:
    """Each class's accuracy over a split, before and after setting one channel to zero.

    One pass: each batch of images is decoded once (as every dataset pass
    decodes them, :func:`cnnlens.pipeline.load_batch`) and run through the
    model twice, as it is and with the channel zeroed. Images that cannot be
    read are left out.

    Example:
        >>> from cnnlens import ablation_by_class, demo_dataset, open_model
        >>> found = ablation_by_class(open_model("demo"), demo_dataset(), "conv_4", 7)
        >>> found.classes[:3], int(found.counts.sum())
        (('0', '1', '2'), 4000)

    Args:
        loaded: the model (:func:`cnnlens.models.open_model`), with classes.
        dataset: the dataset.
        layer: a layer name of ``loaded.layer_names()``.
        channel: the channel to set to zero.
        split: ``"train"`` or ``"test"``.
        batch_size: images per forward pass.
        on_progress: called with ``(images done, images in all)`` after each batch;
            only images whose label names a class are counted.
        should_stop: asked before each batch; ``True`` stops with :class:`Cancelled`.

    Returns:
        A :class:`ClassAblation`.

    Raises:
        ValueError: for an unknown layer or split, a channel out of range, a model
            without classes, or a split whose labels name none of its classes or
            whose images cannot be read.
        Cancelled: if ``should_stop()`` returned True; nothing is kept.
    """
    from cnnlens.pipeline import load_batch
    from cnnlens.preprocess import scale_uint8_batch

    channel = _check_channel(channel)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    layer_channels(loaded, layer, [channel])  # before any image is read
    filenames, targets, unmatched = _matched_rows(loaded, dataset, split)
    classes = len(loaded.classes or ())
    counts = np.zeros(classes, np.int64)
    right = np.zeros((2, classes), np.int64)
    copy, path = loaded.private_copy, loaded.layers.path(layer)
    for start in range(0, len(filenames), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled(f"Stopped after {start} of {len(filenames)} images; nothing was kept.")
        names = filenames[start : start + batch_size]
        pixels, read, _ = load_batch(dataset, names, split, loaded.spec)
        if pixels is not None:
            truth = targets[start : start + batch_size][read]
            with torch.inference_mode():
                x = copy.prepare(scale_uint8_batch(pixels, loaded.spec, copy.device, copy.dtype))
                outputs = _both(copy, x, path, layer, channel)
            counts += np.bincount(truth, minlength=classes)
            for row, logits in zip(right, outputs, strict=True):
                predicted = logits.argmax(1).numpy()
                row += np.bincount(truth[predicted == truth], minlength=classes)
        if on_progress is not None:
            on_progress(min(start + batch_size, len(filenames)), len(filenames))
    if not counts.sum():
        raise ValueError(f"None of the labelled images of the {split} split could be read.")
    present = np.flatnonzero(counts)
    return ClassAblation(
        layer=layer,
        channel=channel,
        classes=tuple(loaded.classes[i] for i in present),  # type: ignore[index]
        counts=counts[present],
        accuracy_before=right[0, present] / counts[present],
        accuracy_after=right[1, present] / counts[present],
        overall_before=float(right[0].sum() / counts.sum()),
        overall_after=float(right[1].sum() / counts.sum()),
        unmatched=unmatched,
    )


@dataclass(frozen=True, eq=False)
class ClassAblationSpec(DatasetSpec[ClassAblation]):
    """Each class's accuracy over a split with one channel set to zero
    (:func:`ablation_by_class`), as a result the store keeps.

    Attributes:
        layer: the layer.
        channel: the channel to set to zero.
    """

    layer: str
    channel: int
    kind = "ablation_by_class"
    result_type = ClassAblation

    def parts(self) -> dict[str, object]:
        return {
            **super().parts(),
            "layer": self.layer_path(self.layer),
            "channel": _check_channel(self.channel),
        }

    @property
    def title(self) -> str:
        return f"testing every labelled image with and without channel {self.channel}"

    def progress_text(self, done: int, total: int) -> str:
        return f"Testing with and without channel {self.channel}: {done:,} of {total:,} images"

    def compute(self, run: Run) -> ClassAblation:
        return ablation_by_class(
            self.loaded,
            self.dataset,
            self.layer,
            self.channel,
            split=self.split,
            batch_size=self.batch_size,
            on_progress=run.report,
            should_stop=run.should_stop,
        )
