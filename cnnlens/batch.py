"""Batch feature extraction over a whole dataset split.

:func:`iter_features` streams the pooled (or full) maps of the target layers for
every image of a split, batch after batch: a torch ``DataLoader`` decodes and
preprocesses images in worker processes while the network runs (on a CPU, worker
threads can instead decode and run the network, one intra-op thread each). An
image that cannot be read is left out and reported with its reason; it never
stops a run.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import queue
import shutil
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from cnnlens.data import Dataset, Problem, open_image, to_mode
from cnnlens.models import LoadedModel, _resized
from cnnlens.registry import InputSpec

__all__ = [
    "FORMAT",
    "POOLS",
    "ExtractResult",
    "FeatureBatch",
    "FeatureFile",
    "FeatureSource",
    "RunSettings",
    "extract_to_parquet",
    "iter_features",
    "load_batch",
    "load_pixels",
    "map_shapes",
    "normalise",
    "pool_maps",
    "run_settings",
    "split_rows",
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


def split_rows(dataset: Dataset, split: str) -> tuple[list[str], list[object | None]]:
    """The usable filenames of a split and their labels (``None`` where unknown).

    Raises:
        ValueError: for a split other than ``train``/``test`` or a missing test CSV.
    """
    if split == "train":
        frame = dataset.index
    elif split == "test":
        if dataset.test_index is None:
            raise ValueError(f"{dataset.root.name} has no test CSV, so there are no test images.")
        frame = dataset.test_index
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    filenames = frame["filename"].tolist()
    labels = frame["label"].tolist() if "label" in frame.columns else [None] * len(filenames)
    return filenames, labels


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
    """The targets as a list, each a layer of the model, or a ValueError listing the valid ones."""
    chosen = [targets] if isinstance(targets, str) else list(targets)
    if not chosen:
        raise ValueError("Choose at least one layer.")
    valid = loaded.layer_names()
    unknown = [name for name in chosen if name not in valid]
    if unknown:
        raise ValueError(
            f"Unknown layer {', '.join(map(repr, unknown))} for {loaded.name}. "
            f"Valid layers: {', '.join(valid)}."
        )
    return chosen


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


def load_pixels(dataset: Dataset, filename: str, split: str, spec: InputSpec) -> torch.Tensor:
    """Decode one image of a split, in the model's mode and size: a C×H×W uint8 tensor.

    Pixels travel as bytes, a quarter of the floats; :func:`normalise` scales
    them on the model's device.

    Raises:
        ValueError: if the image cannot be read or decoded, with the reason.
    """
    return _stack([_decode(dataset, filename, split, spec)], spec)[0]


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
            images.append(_decode(dataset, name, split, spec))
            read.append(position)
        except ValueError as error:
            failed.append((position, str(error)))
    return (_stack(images, spec) if images else None), read, failed


def _decode(dataset: Dataset, filename: str, split: str, spec: InputSpec) -> Image.Image:
    """One image of a split, in the model's mode and size.

    A plain PNG already at the model's size (MNIST-style data) skips Pillow's
    file parser, with the same values for half the time.
    """
    data = dataset.read_bytes(filename, split)
    image = _plain_png(data, spec)
    if image is None:
        return _resized(to_mode(open_image(data, name=filename), spec.mode), spec)
    return image if image.mode == spec.mode else to_mode(image, spec.mode)


def _stack(images: list[Image.Image], spec: InputSpec) -> torch.Tensor:
    """Images in the model's mode and size as one N×C×H×W uint8 batch.

    They are pasted into one tall image, read out once: reading a small image
    out of Pillow costs as much as decoding it.
    """
    height, width = spec.size
    strip = Image.new(spec.mode, (width, height * len(images)))
    for i, image in enumerate(images):
        strip.paste(image, (0, i * height))
    pixels = torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8)
    return pixels.view(len(images), height, width, -1).permute(0, 3, 1, 2).contiguous()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# width, height, bit depth, colour type, compression, filter method, interlace
_IHDR = struct.Struct(">IIBBBBB")
_CHUNK = struct.Struct(">I4s")  # length, type
_CRC = struct.Struct(">I")
# Chunks that change no pixel Pillow gives: colour metadata Pillow does not apply,
# resolution, time. Any other (tRNS: alpha; eXIf, tEXt, iTXt, zTXt: orientation
# Pillow would apply) sends the file through Pillow's parser.
_PLAIN_PNG_CHUNKS = frozenset(
    (b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tIME")
)


def _plain_png(data: bytes, spec: InputSpec) -> Image.Image | None:
    """A plain 8-bit grey or RGB PNG at exactly ``spec.size``, decoded without Pillow's parser.

    The chunks are walked here, every CRC checked as Pillow does, and the image
    data goes straight to Pillow's PNG decoder: Pillow's pixels, without the
    parser's cost, which is most of a small image's. ``None`` for anything else,
    which :func:`cnnlens.data.open_image` then opens: other formats, bit depths
    or sizes, palette, alpha, interlacing, text that may hold an orientation, or
    a broken file (Pillow then words the error).
    """
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack_from(data, 16)
    if depth != 8 or colour not in (0, 2) or compression or filtering or interlace:
        return None
    if (height, width) != spec.size or (spec.resize is not None and spec.resize != min(spec.size)):
        return None  # resized by Pillow (a resize of the shorter side changes even this size)
    stream: list[bytes] = []
    at, end = 8, len(data)
    while True:
        if at + 12 > end:
            return None  # truncated before IEND
        length, kind = _CHUNK.unpack_from(data, at)
        body_end = at + 8 + length
        if kind not in _PLAIN_PNG_CHUNKS or body_end + 4 > end:
            return None
        if zlib.crc32(data[at + 4 : body_end]) != _CRC.unpack_from(data, body_end)[0]:
            return None
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            stream.append(data[at + 8 : body_end])
        at = body_end + 4
    mode = "RGB" if colour == 2 else "L"
    try:
        return Image.frombytes(mode, (width, height), b"".join(stream), "zip", mode)
    except (ValueError, OSError):  # damaged image data
        return None


def normalise(
    pixels: torch.Tensor, spec: InputSpec, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Scale an N×C×H×W uint8 batch as :func:`cnnlens.models.to_batch` does, on ``device``.

    The arithmetic is float32 whatever ``dtype``, so the values equal
    ``to_batch(images, spec).to(dtype)``.
    """
    scale, mean, std = _constants(spec, torch.device(device))
    x = pixels.to(device, non_blocking=True).float() / scale
    if mean is not None and std is not None:
        x = (x - mean) / std
    return x.to(dtype)


@functools.lru_cache(maxsize=16)
def _constants(
    spec: InputSpec, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The scaling tensors of a spec on a device, made once: making them waits for the GPU.

    The divisor is a 0-dim tensor, not a Python number, which torch would turn
    into a multiplication by its reciprocal, one rounding away from to_batch.
    """
    scale = torch.tensor(255.0, device=device)
    if spec.mean is None or spec.std is None:
        return scale, None, None
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    return scale, mean, std


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
            batch = normalise(pixels, loaded.spec, loaded.device, loaded.dtype)
            maps = self._extract(batch)
            features = {name: pool_maps(value, self.pool) for name, value in maps.items()}
            return features, loaded.probabilities(batch) if self.predict else None


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


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> None:
    """Let this process keep the memory a batch frees, for the next batch to reuse.

    glibc otherwise gives a batch's maps back to the kernel, or not, by a rule that
    depends on what was freed before, and faults them in again for the next batch:
    290,000 to 390,000 page faults and a third of the network's time over the
    demo's 4,000 digits. The command line calls it; it does nothing where the C
    library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: blocks up to 32 MB
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


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
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}.")
    filenames, labels = split_rows(dataset, split)
    skipped = set(skip)
    if skipped:
        kept = [i for i, name in enumerate(filenames) if name not in skipped]
        filenames = [filenames[i] for i in kept]
        labels = [labels[i] for i in kept]
    extraction = _Extraction(
        loaded,
        _check_targets(loaded, targets),
        pool,
        predict=with_predictions and loaded.classes is not None,
    )
    on_gpu = loaded.device.type == "cuda"
    in_threads = network_in_workers and workers > 0 and loaded.device.type == "cpu"
    batches = _SplitBatches(
        dataset, filenames, split, loaded.spec, batch_size, extraction if in_threads else None
    )
    items: Iterable[_Item] = (
        _in_threads(batches, workers)
        if in_threads
        else DataLoader(
            batches,
            batch_size=None,
            num_workers=workers,
            collate_fn=_as_is,
            pin_memory=on_gpu,
        )
    )
    total = len(filenames)
    done = 0
    in_flight: list[_Pending] = []
    # On a GPU one batch stays in flight so its copy back overlaps the next forward.
    depth = 1 if on_gpu else 0

    def drain(keep: int) -> Iterator[FeatureBatch]:
        nonlocal done
        while len(in_flight) > keep:
            finished = in_flight.pop(0)
            done += finished.size
            yield finished.finish()
            if on_progress is not None:
                on_progress(done, total)

    try:
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
    finally:
        if isinstance(items, Generator):
            items.close()  # the threads finish their batches and stop
    yield from drain(0)


FORMAT = "cnnlens.features/1"
"""The layout of a features file, recorded in its metadata under ``cnnlens``."""

# A part is written at whichever comes first: so many rows, bytes or seconds
# (a kill loses at most the rows of one unwritten part).
_PART_ROWS = 4096
_PART_BYTES = 64 << 20
_PART_SECONDS = 30.0
# Rows are written to the open part in groups of this many, as they come.
_GROUP_ROWS = 1024
# Dictionaries and min/max statistics only where they help: on float features
# they cost 5× the write time for nothing.
_WRITE_OPTIONS = {
    "use_dictionary": ["filename", "label"],
    "write_statistics": ["filename", "label"],
}


def map_shapes(loaded: LoadedModel, targets: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The shape of one image's maps at each target (C×H×W), from one blank input.

    Raises:
        ValueError: if a target is not a layer of the model.
    """
    extract = loaded.extractor(_check_targets(loaded, targets))
    with torch.inference_mode():
        maps = extract(torch.zeros((1, *loaded.spec.shape)))
    return {name: tuple(value.shape[1:]) for name, value in maps.items()}


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides the values of a features file; a resumed run must match it.

    Attributes:
        model: the model name (``demo`` or a torchvision architecture).
        weights: the weights' identity (``loaded.weights_id``).
        dtype: the model's floating-point type, e.g. ``float32``.
        dataset: the dataset folder, resolved.
        split: ``train`` or ``test``.
        pool: ``mean``, ``max`` or ``none``.
        shapes: per target layer, in network order, the shape of one image's maps.
    """

    model: str
    weights: str
    dtype: str
    dataset: str
    split: str
    pool: str
    shapes: dict[str, tuple[int, ...]]

    def metadata(self) -> dict[str, object]:
        """The JSON-ready form kept in the manifest and in the file's metadata."""
        return {
            "format": FORMAT,
            "model": self.model,
            "weights": self.weights,
            "dtype": self.dtype,
            "dataset": self.dataset,
            "split": self.split,
            "pool": self.pool,
            "layers": {name: list(shape) for name, shape in self.shapes.items()},
        }


def run_settings(
    loaded: LoadedModel, dataset: Dataset, targets: Sequence[str], split: str, pool: str
) -> RunSettings:
    """The settings of a run, with the map shapes probed from the model.

    Raises:
        ValueError: for an unknown pool or target layer.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}.")
    return RunSettings(
        model=loaded.name,
        weights=loaded.weights_id,
        dtype=str(loaded.dtype).removeprefix("torch."),
        dataset=str(Path(dataset.root).resolve()),
        split=split,
        pool=pool,
        shapes=map_shapes(loaded, targets),
    )


def _schema(settings: RunSettings, label_type: pa.DataType) -> pa.Schema:
    fields = [pa.field("filename", pa.string()), pa.field("label", label_type)]
    fields += [pa.field(name, pa.list_(pa.float32())) for name in settings.shapes]
    return pa.schema(fields, metadata={"cnnlens": json.dumps(settings.metadata())})


def _table(batch: FeatureBatch, schema: pa.Schema) -> pa.Table:
    columns = [
        pa.array(batch.filenames, pa.string()),
        pa.array(batch.labels, schema.field("label").type),
    ]
    for name in schema.names[2:]:
        values = batch.features[name].reshape(len(batch.filenames), -1)
        width = values.shape[1]
        offsets = np.arange(0, (len(values) + 1) * width, width, dtype=np.int32)
        columns.append(pa.ListArray.from_arrays(offsets, values.reshape(-1)))
    return pa.Table.from_arrays(columns, schema=schema)


class _PartWriter:
    """Writes batches into numbered part files from a background thread.

    Converting and writing overlap the forward passes: each part's row groups are
    written as they fill, so little is left to write when the batches end. A part
    is written under a temporary name and renamed when it is full, so a part on
    disk is always whole.
    """

    def __init__(self, folder: Path, schema: pa.Schema, first: int) -> None:
        self.folder = folder
        self.schema = schema
        self.next = first
        self.rows = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue[FeatureBatch | None] = queue.Queue(maxsize=2)
        self._group: list[pa.Table] = []  # the row group being filled
        self._part: pq.ParquetWriter | None = None
        self._part_rows = 0
        self._part_bytes = 0
        self._since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="cnnlens-writer", daemon=True)
        self._thread.start()

    def put(self, batch: FeatureBatch) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Write what is buffered and wait for the thread.

        Raises:
            OSError: if a part could not be written.
        """
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                table = _table(batch, self.schema)
                # Very large rows (pool none) are split so no part holds 2**31 values.
                step = max(1, _PART_BYTES // max(1, table.nbytes // max(1, table.num_rows)))
                for start in range(0, table.num_rows, step):
                    self._add(table.slice(start, step))
            self._end_part()
        except BaseException as error:  # handed to the producer thread, which raises it
            self.error = error
            if self._part is not None:
                self._part.close()  # its temporary file is removed by the next run

    def _add(self, table: pa.Table) -> None:
        self._group.append(table)
        self._part_rows += table.num_rows
        self._part_bytes += table.nbytes
        if (
            self._part_rows >= _PART_ROWS
            or self._part_bytes >= _PART_BYTES
            or time.monotonic() - self._since >= _PART_SECONDS
        ):
            self._end_part()
        elif sum(t.num_rows for t in self._group) >= _GROUP_ROWS:
            self._write_group()

    def _temporary(self) -> Path:
        """Where the open part is written until it is whole."""
        return self.folder / f"part-{self.next:06d}.tmp"

    def _write_group(self) -> None:
        if not self._group:
            return
        if self._part is None:
            self._part = pq.ParquetWriter(self._temporary(), self.schema, **_WRITE_OPTIONS)
        self._part.write_table(pa.concat_tables(self._group))
        self._group = []

    def _end_part(self) -> None:
        self._write_group()
        if self._part is not None:
            self._part.close()
            self._part = None
            os.replace(self._temporary(), self._temporary().with_suffix(".parquet"))
            self.next += 1
            self.rows += self._part_rows
        self._part_rows = self._part_bytes = 0
        self._since = time.monotonic()


class FeatureFile:
    """The Parquet file of a run, built from part files so that a run can resume.

    Finished batches land in ``OUT.parts/`` as numbered part files next to a
    manifest of the run's settings. A rerun with the same settings skips the
    filenames already there; :meth:`finish` joins the parts into ``OUT``
    (through ``OUT.partial`` and a rename) and removes the folder.

    Attributes:
        out: the final file.
        parts: the folder of part files.
        written: the filenames already in finished parts.
    """

    def __init__(
        self, out: str | Path, settings: RunSettings, label_type: pa.DataType, restart: bool = False
    ) -> None:
        """Open (or start) the parts of ``out`` for these settings.

        Raises:
            ValueError: if ``out`` does not end in ``.parquet``, or the parts of an
                unfinished run with other settings are there and ``restart`` is false.
        """
        self.out = Path(out)
        if self.out.suffix != ".parquet":
            raise ValueError(f"The output file must end in .parquet, got {self.out.name}.")
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.schema = _schema(settings, label_type)
        manifest = self.parts / "manifest.json"
        wanted = settings.metadata()
        if restart and self.parts.exists():
            shutil.rmtree(self.parts)
        if manifest.is_file():
            found = json.loads(manifest.read_text())
            if found != wanted:
                changed = [key for key in wanted if found.get(key) != wanted[key]]
                raise ValueError(
                    f"{self.parts} holds an unfinished run with other settings "
                    f"({', '.join(f'{key}: {found.get(key)!r}' for key in changed)}). Rerun "
                    "with those settings to finish it, or start over with --restart."
                )
        else:
            self.parts.mkdir(parents=True, exist_ok=True)
            if any(self.parts.glob("part-*.parquet")):
                raise ValueError(
                    f"{self.parts} holds part files but no manifest; remove the folder."
                )
            temporary = manifest.with_suffix(".tmp")
            temporary.write_text(json.dumps(wanted, indent=1))
            os.replace(temporary, manifest)
        for stale in self.parts.glob("*.tmp"):
            stale.unlink()  # a part cut short by a kill
        self._done = sorted(self.parts.glob("part-*.parquet"))
        self.written: frozenset[str] = frozenset(
            name
            for part in self._done
            for name in pq.read_table(part, columns=["filename"])["filename"].to_pylist()
        )

    def write(self, batches: Iterable[FeatureBatch]) -> tuple[int, list[Problem]]:
        """Write batches as parts, in a background thread, as they come.

        The rows buffered when the batches stop (or an exception, Ctrl-C
        included, ends them) are written before returning or raising.

        Returns:
            The rows written and the images left out on the way.
        """
        first = int(self._done[-1].stem.split("-")[1]) + 1 if self._done else 0
        writer = _PartWriter(self.parts, self.schema, first)
        problems: list[Problem] = []
        try:
            for batch in batches:
                problems += batch.problems
                if batch.filenames:
                    writer.put(batch)
        finally:
            writer.close()
        self._done = sorted(self.parts.glob("part-*.parquet"))
        return writer.rows, problems

    def finish(self) -> int:
        """Join the parts into the final file, replacing any file there, and remove them.

        A lone part already is the file, and is renamed.

        Returns:
            The number of rows in the file.
        """
        partial = self.out.with_name(self.out.name + ".partial")
        rows = 0
        if len(self._done) == 1:
            rows = pq.ParquetFile(self._done[0]).metadata.num_rows
            os.replace(self._done[0], partial)
        else:
            with pq.ParquetWriter(partial, self.schema, **_WRITE_OPTIONS) as writer:
                for part in self._done:
                    table = pq.read_table(part, schema=self.schema)
                    writer.write_table(table)
                    rows += table.num_rows
        os.replace(partial, self.out)
        shutil.rmtree(self.parts)
        return rows


FeatureSource = Callable[
    [Collection[str], Callable[[], bool] | None, Callable[[int, int], None] | None],
    Iterable[FeatureBatch],
]
"""Runs a model over the images of a split not in ``skip``: ``(skip, should_stop,
on_progress) -> batches`` in dataset order, as :func:`iter_features` does."""


@dataclass(frozen=True)
class ExtractResult:
    """How an extraction to Parquet went.

    Attributes:
        out: the features file (complete) or its parts folder (stopped early).
        rows: the rows written in all, earlier interrupted runs included.
        resumed: the rows an interrupted run had already written.
        problems: the images left out: the dataset's unusable rows, then the
            images that could not be decoded during the run.
        complete: whether every image was done and the file is in place.
    """

    out: Path
    rows: int
    resumed: int
    problems: list[Problem]
    complete: bool


def extract_to_parquet(
    loaded: LoadedModel,
    dataset: Dataset,
    out: str | Path,
    targets: Sequence[str] | None = None,
    *,
    split: str = "train",
    pool: str = "mean",
    batch_size: int = 64,
    workers: int = 0,
    network_in_workers: bool = False,
    restart: bool = False,
    source: FeatureSource | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExtractResult:
    """Extract the features of a split into a Parquet file, resuming an interrupted run.

    One row per image: ``filename``, ``label`` (null for the test split) and one
    ``list<float32>`` column per target layer (one value per channel, or the
    flattened map for pool ``none``). The metadata key ``cnnlens`` holds the
    settings as JSON: format, model, weights, dtype, dataset, split, pool and
    each layer's map shape (C, H, W).

    Args:
        loaded: the model, from :func:`cnnlens.models.open_model`.
        dataset: the dataset to run over.
        out: the ``.parquet`` file to write; it appears only when complete.
        targets: the layers; the model's default layers when ``None``.
        split: ``"train"`` or ``"test"``.
        pool: ``"mean"``, ``"max"`` or ``"none"``.
        batch_size: images per forward pass.
        workers: DataLoader processes that decode images (threads with
            ``network_in_workers``).
        network_in_workers: on a CPU, the workers are threads that run the network too (see
            :func:`iter_features`).
        restart: discard the parts of an unfinished run instead of resuming it.
        source: where batches come from instead of :func:`iter_features` in
            this process (the Ray engine); it must honour the same arguments.
        should_stop: asked between batches; ``True`` stops the run and keeps
            the parts for a rerun.
        on_progress: called with ``(done, total)`` images of the split, earlier
            runs included.

    Returns:
        An :class:`ExtractResult`.

    Raises:
        ValueError: for an unknown split, pool or layer, an output name that does
            not end in ``.parquet``, or an unfinished run with other settings.
    """
    chosen = list(loaded.default_layers() if targets is None else targets)
    settings = run_settings(loaded, dataset, chosen, split, pool)
    filenames, labels = split_rows(dataset, split)
    features = FeatureFile(out, settings, pa.array(labels).type, restart=restart)
    resumed = len(features.written & set(filenames))

    def local(
        skip: Collection[str],
        stop: Callable[[], bool] | None,
        progress: Callable[[int, int], None] | None,
    ) -> Iterator[FeatureBatch]:
        return iter_features(
            loaded,
            dataset,
            chosen,
            split=split,
            pool=pool,
            batch_size=batch_size,
            workers=workers,
            network_in_workers=network_in_workers,
            skip=skip,
            should_stop=stop,
            on_progress=progress,
        )

    stopped = False

    def stop() -> bool:
        nonlocal stopped
        stopped = stopped or (should_stop is not None and should_stop())
        return stopped

    def progress(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(resumed + done, resumed + total)

    rows, failed = features.write((source or local)(features.written, stop, progress))
    left_out = [*(dataset.problems if split == "train" else dataset.test_problems), *failed]
    if stopped:
        return ExtractResult(features.parts, resumed + rows, resumed, left_out, False)
    return ExtractResult(features.out, features.finish(), resumed, left_out, True)
