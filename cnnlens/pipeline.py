"""The batch pipeline: the features of every image of a dataset split, batch after batch.

:func:`iter_features` streams the pooled (or full) maps of the target layers:
a torch ``DataLoader`` decodes and preprocesses images in worker processes while
the network runs (on a CPU, worker threads can instead decode and run the
network, one intra-op thread each). An image that cannot be read is left out
and reported with its reason; it never stops a run. :func:`local_source` wraps
it as the :data:`FeatureSource` that :func:`cnnlens.parquet.extract_to_parquet`
writes from, as :func:`cnnlens.ray_engine.ray_source` does on Ray.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from cnnlens.data import Dataset, Problem
from cnnlens.models import LoadedModel
from cnnlens.one_image import maps_and_logits
from cnnlens.preprocess import decode_as_input, scale_uint8_batch, to_uint8_batch
from cnnlens.registry import InputSpec

__all__ = [
    "POOLS",
    "FeatureBatch",
    "FeatureSource",
    "iter_features",
    "load_batch",
    "load_pixels",
    "local_source",
    "map_shapes",
    "pixel_batches",
    "pool_maps",
]

POOLS = ("mean", "max", "none")
"""How each map is reduced: mean or max over its positions, or kept whole."""


@dataclass(frozen=True)
class FeatureBatch:
    """The features of one batch of images, on the CPU.

    Attributes:
        filenames: the images of the batch that were read, in dataset order.
        labels: their labels; ``None`` for the test split.
        features: per target layer, an N×C float32 array (pool ``mean``/``max``)
            or the maps as they are, N×C×H×W (pool ``none``).
        predictions: N×K class probabilities when asked for and the model has classes.
        problems: the images of this batch left out, with the reason.
    """

    filenames: list[str]
    labels: list[object | None]
    features: dict[str, np.ndarray]
    predictions: np.ndarray | None = None
    problems: list[Problem] = field(default_factory=list)


FeatureSource = Callable[
    [Collection[str], Callable[[], bool] | None, Callable[[int, int], None] | None],
    Iterable[FeatureBatch],
]
"""Runs a model over the images of a split not in ``skip``: ``(skip, should_stop,
on_progress) -> batches`` in dataset order, as :func:`iter_features` does."""


def pool_maps(maps: torch.Tensor, pool: str) -> torch.Tensor:
    """Reduce N×C×... maps over their positions (``mean``, ``max``) or keep them (``none``).

    The result is float32 and contiguous whatever the model's dtype and memory format.
    """
    if pool == "none" or maps.dim() <= 2:
        return maps.float().contiguous()
    # Reducing over the spatial dims as they are avoids a copy of channels-last maps.
    positions = tuple(range(2, maps.dim()))
    if pool == "mean":
        return maps.mean(dim=positions, dtype=torch.float32)
    return maps.amax(dim=positions).float()  # a max is exact in any dtype


def _check_targets(loaded: LoadedModel, targets: Sequence[str]) -> list[str]:
    """The targets as a list in the order given, each a layer name or module path of the model,
    or a ValueError listing the valid ones."""
    chosen = [targets] if isinstance(targets, str) else list(targets)
    if not chosen:
        raise ValueError("Choose at least one layer.")
    unknown = [name for name in chosen if name not in loaded.layers]
    if unknown:
        loaded.layers.check(unknown)  # raises the one message: valid layers, close matches
    return chosen


def map_shapes(loaded: LoadedModel, targets: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The shape of one image's maps at each target (C×H×W), from one blank input.

    Raises:
        ValueError: if a target is not a layer of the model.
    """
    extract = loaded.extractor(_check_targets(loaded, targets))
    with torch.inference_mode():
        maps = extract(torch.zeros((1, *loaded.spec.shape)))
    return {name: tuple(value.shape[1:]) for name, value in maps.items()}


def load_pixels(dataset: Dataset, filename: str, split: str, spec: InputSpec) -> torch.Tensor:
    """Decode one image of a split, in the model's mode and size: a C×H×W uint8 tensor.

    Pixels travel as bytes, a quarter of the floats;
    :func:`cnnlens.preprocess.scale_uint8_batch` scales them on the model's device.

    Raises:
        ValueError: if the image cannot be read or decoded, with the reason.
    """
    data = dataset.read_bytes(filename, split)
    return to_uint8_batch([decode_as_input(data, spec, filename)], spec)[0]


def load_batch(
    dataset: Dataset, filenames: Sequence[str], split: str, spec: InputSpec
) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Decode images of a split as one N×C×H×W uint8 batch, leaving out those that fail.

    Returns:
        The pixels of the images that were read (``None`` if none was), their
        positions in ``filenames``, and ``(position, reason)`` for the others.
    """
    images: list[Image.Image] = []
    read: list[int] = []
    failed: list[tuple[int, str]] = []
    for position, name in enumerate(filenames):
        try:
            images.append(decode_as_input(dataset.read_bytes(name, split), spec, name))
            read.append(position)
        except ValueError as error:
            failed.append((position, str(error)))
    return (to_uint8_batch(images, spec) if images else None), read, failed


class _Extraction:
    """The network's part of a batch: scale the pixels, extract the targets, pool, predict.

    This thread runs it, or, with ``network_in_workers`` on a CPU, the worker
    threads, which share the extractor (it serves many threads at once).
    """

    def __init__(self, loaded: LoadedModel, targets: list[str], pool: str, predict: bool) -> None:
        self.loaded = loaded
        self.targets = targets
        self.pool = pool
        self.predict = predict
        self._extract = loaded.extractor(targets)

    def __call__(
        self, pixels: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
        """Features and predictions of N×C×H×W uint8 pixels; ``None`` gives empty ones."""
        if pixels is None:
            # A batch whose every image failed still yields arrays of the right shape.
            features, predictions = self(
                torch.zeros((1, *self.loaded.spec.shape), dtype=torch.uint8)
            )
            empty = None if predictions is None else predictions[:0]
            return {name: value[:0] for name, value in features.items()}, empty
        loaded = self.loaded
        with torch.inference_mode():
            batch = scale_uint8_batch(pixels, loaded.spec, loaded.device, loaded.dtype)
            if not self.predict:
                maps, probabilities = self._extract(batch), None
            else:  # one forward to the end, the targets kept on the way
                maps, logits = maps_and_logits(loaded, batch, self.targets)
                probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
            features = {name: pool_maps(value, self.pool) for name, value in maps.items()}
            return features, probabilities


class _Item(NamedTuple):
    """One batch: decoded pixels, or features when a worker thread ran the network."""

    items: list[int]
    bad: list[tuple[int, str]]
    pixels: torch.Tensor | None
    features: dict[str, torch.Tensor] | None = None
    predictions: np.ndarray | None = None


class _SplitBatches(TorchDataset):
    """One item per batch: its images decoded and, with an extraction, their features.

    An unreadable image comes back as its reason instead of pixels, so one bad
    file costs its row, not the run.
    """

    def __init__(
        self,
        dataset: Dataset,
        filenames: list[str],
        split: str,
        spec: InputSpec,
        batch_size: int,
        extraction: _Extraction | None,
    ) -> None:
        self.dataset = dataset
        self.filenames = filenames
        self.split = split
        self.spec = spec
        self.batch_size = batch_size
        self.extraction = extraction

    def __len__(self) -> int:
        return -(-len(self.filenames) // self.batch_size)

    def __getitem__(self, index: int) -> _Item:
        start = index * self.batch_size
        names = self.filenames[start : start + self.batch_size]
        stacked, read, failed = load_batch(self.dataset, names, self.split, self.spec)
        items = [start + position for position in read]
        bad = [(start + position, reason) for position, reason in failed]
        if self.extraction is None:
            return _Item(items, bad, stacked)
        return _Item(items, bad, None, *self.extraction(stacked))


class _Pending:
    """One batch on its way back from the device: the copy starts at once, is read last.

    On a GPU the copies are asynchronous, so the next batch's forward is queued
    before this one is waited for.
    """

    def __init__(self, filenames: list[str], labels: list, problems: list[Problem], size: int):
        self.filenames = filenames
        self.labels = labels
        self.problems = problems
        self.size = size
        self.features: dict[str, torch.Tensor] = {}
        self.predictions: np.ndarray | None = None
        self.copied: torch.cuda.Event | None = None

    def start(
        self, features: dict[str, torch.Tensor], predictions: np.ndarray | None, on_gpu: bool
    ) -> None:
        self.features = {
            name: value.to("cpu", non_blocking=on_gpu) for name, value in features.items()
        }
        self.predictions = predictions
        if on_gpu:
            self.copied = torch.cuda.Event()
            self.copied.record()

    def finish(self) -> FeatureBatch:
        if self.copied is not None:
            self.copied.synchronize()
        return FeatureBatch(
            filenames=self.filenames,
            labels=self.labels,
            features={name: value.numpy() for name, value in self.features.items()},
            predictions=self.predictions,
            problems=self.problems,
        )


def _as_is(item: _Item) -> _Item:
    """The loader's collate function: each item is already a batch."""
    return item


def _in_threads(batches: _SplitBatches, threads: int) -> Iterator[_Item]:
    """The items of ``batches`` in order, each made on one of ``threads`` threads.

    Each thread runs its network on one intra-op thread (torch's thread count is
    per thread), so the threads never wait for each other inside a layer. At most
    two batches per thread are ahead of the consumer.
    """
    previous = torch.get_num_threads()
    pool = ThreadPoolExecutor(
        threads,
        thread_name_prefix="cnnlens-batch",
        initializer=torch.set_num_threads,
        initargs=(1,),
    )
    ahead: deque[Future[_Item]] = deque()
    try:
        for index in range(len(batches)):
            ahead.append(pool.submit(batches.__getitem__, index))
            if len(ahead) >= 2 * threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()
    finally:
        for future in ahead:
            future.cancel()
        pool.shutdown(wait=True)
        torch.set_num_threads(previous)  # torch's default for threads started later


def pixel_batches(
    dataset: Dataset,
    filenames: list[str],
    split: str,
    spec: InputSpec,
    *,
    batch_size: int,
    workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor | None, list[int], int]]:
    """The decoded pixels of these files, batch after batch, in order, for a pass that runs
    the network its own way (with gradients: relevance).

    Decoded as every pass decodes them (:func:`load_batch`), in ``workers`` DataLoader
    processes when asked; an unreadable image is left out.

    Yields:
        ``(pixels, positions, count)``: the batch's pixels (``None`` when none could be
        read), the positions in ``filenames`` of the images read, and how many files the
        batch covered.
    """
    batches = _SplitBatches(dataset, filenames, split, spec, batch_size, None)
    loader = DataLoader(
        batches, batch_size=None, num_workers=workers, collate_fn=_as_is, pin_memory=pin_memory
    )
    for item in loader:
        yield item.pixels, item.items, len(item.items) + len(item.bad)


def _check_run(pool: str, batch_size: int, workers: int) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}.")


def _rows_to_do(
    dataset: Dataset, split: str, skip: Collection[str]
) -> tuple[list[str], list[object | None]]:
    """The filenames of a split not in ``skip``, and their labels."""
    rows = dataset.rows(split)
    filenames, labels = rows["filename"].tolist(), rows["label"].tolist()
    skipped = set(skip)
    if not skipped:
        return filenames, labels
    kept = [i for i, name in enumerate(filenames) if name not in skipped]
    return [filenames[i] for i in kept], [labels[i] for i in kept]


def iter_features(
    loaded: LoadedModel,
    dataset: Dataset,
    targets: Sequence[str],
    *,
    split: str = "train",
    pool: str = "mean",
    batch_size: int = 64,
    workers: int = 0,
    with_predictions: bool = False,
    network_in_workers: bool = False,
    skip: Collection[str] = (),
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[FeatureBatch]:
    """Stream the features of every image of a split, batch after batch.

    With ``workers``, DataLoader processes decode the images while the network
    runs here; on a GPU the copy of one batch's features back to the CPU
    overlaps the next batch's forward. With ``network_in_workers`` on a CPU, the
    workers are threads of this process instead, each decoding its batches and
    running the network on them on one intra-op thread: with one worker per
    core, decoding never waits for the network or the reverse (decoding beside a
    forward on every core slows its threads, which wait for each other at each
    layer), and nothing is forked or copied between processes.

    Args:
        loaded: the model, from :func:`cnnlens.models.open_model`.
        dataset: the dataset whose split to run over, in its CSV order.
        targets: the layers to extract (see ``loaded.layer_names()``).
        split: ``"train"`` or ``"test"``.
        pool: ``"mean"`` or ``"max"`` over each map's positions (one value per
            channel), or ``"none"`` for the maps as they are.
        batch_size: images per forward pass.
        workers: DataLoader worker processes, or worker threads with
            ``network_in_workers`` (0: everything in this thread).
        with_predictions: also return class probabilities (one more forward
            through the whole network) when the model has classes.
        network_in_workers: on a CPU, the workers are threads that run the
            network too, each on one intra-op thread (ignored on a GPU or
            without workers).
        skip: filenames to leave out, such as those an interrupted run wrote.
        should_stop: asked before each batch; ``True`` ends the stream early.
        on_progress: called with ``(done, total)`` images of this run (skipped
            filenames excluded) after each batch.

    Yields:
        One :class:`FeatureBatch` per batch, in dataset order; images that cannot
        be read are left out of it and listed in its ``problems``.

    Raises:
        ValueError: for an unknown pool, split or target layer, or a batch size
            or worker count below its minimum.
    """
    _check_run(pool, batch_size, workers)
    filenames, labels = _rows_to_do(dataset, split, skip)
    predict = with_predictions and loaded.classes is not None
    extraction = _Extraction(loaded, _check_targets(loaded, targets), pool, predict)
    on_gpu = loaded.device.type == "cuda"
    in_threads = network_in_workers and workers > 0 and loaded.device.type == "cpu"
    batches = _SplitBatches(
        dataset, filenames, split, loaded.spec, batch_size, extraction if in_threads else None
    )
    items: Iterable[_Item] = (
        _in_threads(batches, workers)
        if in_threads
        else DataLoader(
            batches, batch_size=None, num_workers=workers, collate_fn=_as_is, pin_memory=on_gpu
        )
    )
    try:
        yield from _finished(items, extraction, filenames, labels, on_gpu, should_stop, on_progress)
    finally:
        if isinstance(items, Generator):
            items.close()  # the threads finish their batches and stop


def _finished(
    items: Iterable[_Item],
    extraction: _Extraction,
    filenames: list[str],
    labels: list[object | None],
    on_gpu: bool,
    should_stop: Callable[[], bool] | None,
    on_progress: Callable[[int, int], None] | None,
) -> Iterator[FeatureBatch]:
    """The batches of ``items`` run through the network (unless a worker did) and copied back.

    On a GPU one batch stays in flight, so its copy back overlaps the next forward.
    """
    depth = 1 if on_gpu else 0
    in_flight: deque[_Pending] = deque()
    done = 0

    def drain(keep: int) -> Iterator[FeatureBatch]:
        nonlocal done
        while len(in_flight) > keep:
            finished = in_flight.popleft()
            done += finished.size
            yield finished.finish()
            if on_progress is not None:
                on_progress(done, len(filenames))

    for item in items:
        if should_stop is not None and should_stop():
            break
        current = _Pending(
            filenames=[filenames[i] for i in item.items],
            labels=[labels[i] for i in item.items],
            problems=[Problem(filenames[i], reason) for i, reason in item.bad],
            size=len(item.items) + len(item.bad),
        )
        if item.features is None:
            current.start(*extraction(item.pixels), on_gpu)
        else:
            current.start(item.features, item.predictions, on_gpu)
        in_flight.append(current)
        yield from drain(depth)
    yield from drain(0)


def local_source(
    loaded: LoadedModel,
    dataset: Dataset,
    targets: Sequence[str],
    *,
    split: str = "train",
    pool: str = "mean",
    batch_size: int = 64,
    workers: int = 0,
    network_in_workers: bool = False,
) -> FeatureSource:
    """:func:`iter_features` in this process, as a :data:`FeatureSource` (its arguments)."""

    def batches(
        skip: Collection[str],
        should_stop: Callable[[], bool] | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> Iterator[FeatureBatch]:
        return iter_features(
            loaded,
            dataset,
            targets,
            split=split,
            pool=pool,
            batch_size=batch_size,
            workers=workers,
            network_in_workers=network_in_workers,
            skip=skip,
            should_stop=should_stop,
            on_progress=on_progress,
        )

    return batches
