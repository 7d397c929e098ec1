"""Results cached on disk, so other sessions and restarts reuse dataset-wide insights.

Each result is one ``.npz`` file of plain arrays (no pickles) under
``$CNNLENS_CACHE_DIR/insights`` (default ``~/.cache/cnnlens/insights``), named
by a hash of everything it depends on: the model and its weights, the layer,
the split, the dataset folder and its fingerprint, and :data:`FORMAT_VERSION`.
A changed dataset or weights file gives a new key, so stale results are never
read; old files age out when the folder grows past its size limit.

Writes go to a temporary file that is renamed into place, so a reader sees a
whole file or none; a damaged file is treated as missing and removed. Two
sessions asking for the same result at once compute it once, also when they
are in two server processes sharing the folder (a lock file per key).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from cnnlens.bytes_cache import BytesCache
from cnnlens.sources import cache_dir

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.insights import LayerStats, Predictions
    from cnnlens.models import LoadedModel

__all__ = [
    "DEFAULT_MAX_MB",
    "FORMAT_VERSION",
    "ResultStore",
    "cached_layer_stats",
    "cached_layer_stats_and_predictions",
    "cached_predictions",
    "dataset_key",
    "layer_stats_key",
    "predictions_key",
    "result_key",
]

FORMAT_VERSION = 1
"""Bump when the layout of stored results changes: old files are then never read."""

DEFAULT_MAX_MB = 512.0
"""The store's size limit; beyond it the least recently used files are removed."""

_SUFFIX = ".npz"
_PARTIAL = ".partial"
_LOCK = ".lock"
# A partial file this old belongs to a writer that died; newer ones may still be written.
_STALE_PARTIAL_S = 3600.0
# Reading a damaged file fails in one of these ways; anything else is a real error.
_UNREADABLE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)

T = TypeVar("T")


def result_key(**parts: object) -> str:
    """A file-name-safe key for a result, from everything the result depends on.

    Args:
        **parts: names and values (strings, numbers, lists); their order does not matter.

    Returns:
        32 hex digits of a SHA-256 over the parts and :data:`FORMAT_VERSION`.
    """
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_guard = threading.Lock()
_key_locks: dict[str, list] = {}  # path -> [lock, number of threads holding or waiting]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One thread at a time per name; the lock is dropped once nobody needs it."""
    with _guard:
        entry = _key_locks.setdefault(name, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _key_locks[name]


@contextlib.contextmanager
def _file_locked(path: Path) -> Iterator[None]:
    """One process at a time per lock file; the holder removes the file when done.

    flock is released when its process dies, so a crashed server blocks nobody. A
    waiter that gets the lock of a file the holder has just removed tries again on
    a new one, so two processes never both think they hold it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        file = path.open("a")
        fcntl.flock(file, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(file.fileno()).st_ino:
                break
        file.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        file.close()


class ResultStore:
    """A folder of results (dicts of numpy arrays), bounded in size, safe to share.

    The most recently used results are also kept decoded in memory, so a page
    that asks again on every rerun does not read the disk each time.

    Args:
        folder: where the files go; default ``cache_dir() / "insights"``.
        max_mb: size limit of the folder in megabytes.
        memory_mb: how many megabytes of recent results to keep decoded in memory
            (counted as the bytes of their stored arrays).

    Raises:
        ValueError: if ``max_mb`` is not positive.
    """

    def __init__(
        self, folder: Path | None = None, max_mb: float = DEFAULT_MAX_MB, memory_mb: float = 256
    ) -> None:
        if max_mb <= 0:
            raise ValueError(f"max_mb must be positive, got {max_mb}.")
        self.folder = Path(folder) if folder is not None else cache_dir() / "insights"
        self.max_bytes = int(max_mb * 1024 * 1024)
        # (result, bytes of its arrays): the decoded result's own size is not known.
        self._memory = BytesCache[tuple[object, int]](
            int(memory_mb * 1024 * 1024), lambda entry: entry[1]
        )

    def path(self, key: str) -> Path:
        """The file a result is stored in."""
        return self.folder / f"{key}{_SUFFIX}"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The stored arrays, or ``None`` when missing; a damaged file is removed.

        Reading a result marks it as recently used, so eviction spares it.
        """
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except FileNotFoundError:
            return None
        except _UNREADABLE:
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return arrays

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        """Store arrays atomically (temporary file, then rename), then keep the size limit.

        Returns:
            The path of the stored file.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        handle, partial = tempfile.mkstemp(dir=self.folder, prefix=f"{key}.", suffix=_PARTIAL)
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)
        self._evict(keep=path)
        return path

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], dict[str, np.ndarray]],
        decode: Callable[[dict[str, np.ndarray]], T],
    ) -> T:
        """The decoded result for ``key``: from memory, from disk, or computed and stored.

        Threads or processes asking for one key at once compute it once; the
        others wait and read the stored result. If ``compute`` raises (a cancelled pass, say),
        nothing is stored and the exception propagates.

        Args:
            key: the result's key (see :func:`result_key`).
            compute: makes the arrays when they are not stored.
            decode: turns stored arrays into the result; a ``ValueError`` or
                ``KeyError`` from it marks the file as damaged (it is removed and
                the result computed again).
        """
        found = self.peek(key, decode)
        if found is not None:
            return found
        with _locked(str(self.path(key))), _file_locked(self.folder / f"{key}{_LOCK}"):
            found = self.peek(key, decode)
            if found is not None:
                return found
            arrays = compute()
            result = decode(arrays)
            self.save(key, arrays)
            self._remember(key, result, arrays)
            return result

    def peek(self, key: str, decode: Callable[[dict[str, np.ndarray]], T]) -> T | None:
        """The decoded result if it is in memory or on disk, else ``None``; never computes."""
        kept = self._memory.get(key)
        if kept is not None:
            return kept[0]  # type: ignore[return-value]
        arrays = self.load(key)
        if arrays is None:
            return None
        try:
            result = decode(arrays)
        except (ValueError, KeyError):
            self.path(key).unlink(missing_ok=True)
            return None
        self._remember(key, result, arrays)
        return result

    def _remember(self, key: str, result: object, arrays: dict[str, np.ndarray]) -> None:
        self._memory.put(key, (result, sum(array.nbytes for array in arrays.values())))

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used files until the folder fits its limit."""
        now = time.time()
        files = []
        for entry in os.scandir(self.folder):
            try:
                stat = entry.stat()
            except OSError:
                continue  # removed by another process meanwhile
            if entry.name.endswith(_PARTIAL):
                if now - stat.st_mtime > _STALE_PARTIAL_S:
                    Path(entry.path).unlink(missing_ok=True)
            elif entry.name.endswith(_SUFFIX):
                files.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size


def dataset_key(loaded: LoadedModel, dataset: Dataset, split: str, **parts: object) -> str:
    """A key for a result of one model over one split of a dataset, plus ``parts``.

    It changes with the model, its weights (``weights_id``) and dtype, the split,
    the dataset folder and its content (``dataset.fingerprint``), and the parts.

    Raises:
        ValueError: for a dataset indexed with ``check_images=False``, which has
            no fingerprint.
    """
    if not dataset.fingerprint:
        raise ValueError(
            f"{dataset.root} was indexed without looking at its images (check_images=False), "
            "so a change to them would go unnoticed: index it with load_dataset(root) to "
            "keep results of it on disk."
        )
    return result_key(
        model=loaded.name,
        weights=loaded.weights_id,
        dtype=str(loaded.dtype),
        split=split,
        dataset=str(Path(dataset.root).resolve()),
        fingerprint=dataset.fingerprint,
        **parts,
    )


def layer_stats_key(loaded: LoadedModel, dataset: Dataset, layer: str, split: str) -> str:
    """The store key of one layer's statistics over one split of a dataset.

    It changes with the model, its weights (``weights_id``) and dtype, the layer,
    the split, the dataset folder and its content (``dataset.fingerprint``).

    Raises:
        ValueError: for a dataset indexed with ``check_images=False``, which has
            no fingerprint.
    """
    return dataset_key(loaded, dataset, split, kind="layer_stats", layer=layer)


def predictions_key(loaded: LoadedModel, dataset: Dataset, split: str) -> str:
    """The store key of the model's predictions over one split of a dataset.

    Raises:
        ValueError: for a dataset indexed with ``check_images=False``.
    """
    return dataset_key(loaded, dataset, split, kind="predictions")


def cached_layer_stats(
    loaded: LoadedModel,
    dataset: Dataset,
    layer: str,
    *,
    split: str = "train",
    store: ResultStore | None = None,
    **options: object,
) -> LayerStats:
    """:func:`cnnlens.insights.layer_stats`, read from the store when it was computed before.

    Args:
        loaded: the model.
        dataset: the dataset.
        layer: the layer to summarise.
        split: ``"train"`` or ``"test"``.
        store: the store; default a :class:`ResultStore` in :func:`cache_dir`.
        **options: passed to ``layer_stats`` (``batch_size``, ``workers``,
            ``should_stop``, ``on_progress``); they do not change the result.

    Raises:
        Cancelled: if ``should_stop`` asked to stop; nothing is stored.
        ValueError: for an unknown layer or split.
    """
    from cnnlens import insights

    store = store if store is not None else ResultStore()
    return store.get_or_compute(
        layer_stats_key(loaded, dataset, layer, split),
        lambda: insights.layer_stats(loaded, dataset, layer, split=split, **options).to_arrays(),
        insights.LayerStats.from_arrays,
    )


def cached_predictions(
    loaded: LoadedModel,
    dataset: Dataset,
    *,
    split: str = "train",
    store: ResultStore | None = None,
    **options: object,
) -> Predictions:
    """:func:`cnnlens.insights.predict_split`, read from the store when it was computed before.

    Args and Raises are those of :func:`cached_layer_stats`, and:

    Raises:
        ValueError: if the model has no classes.
    """
    from cnnlens import insights

    store = store if store is not None else ResultStore()
    return store.get_or_compute(
        predictions_key(loaded, dataset, split),
        lambda: insights.predict_split(loaded, dataset, split=split, **options).to_arrays(),
        insights.Predictions.from_arrays,
    )


def cached_layer_stats_and_predictions(
    loaded: LoadedModel,
    dataset: Dataset,
    layer: str,
    *,
    split: str = "train",
    store: ResultStore | None = None,
    **options: object,
) -> tuple[LayerStats, Predictions]:
    """A layer's statistics and the model's answers, each read from the store when stored.

    What is missing is computed in one pass: both at once
    (:func:`cnnlens.insights.layer_stats_and_predictions`), or the one not yet
    stored alone. Each is stored under its own key, so :func:`cached_layer_stats`
    and :func:`cached_predictions` find it.

    Args and Raises are those of :func:`cached_layer_stats`, and:

    Raises:
        ValueError: if the model has no classes.
    """
    from cnnlens import insights

    store = store if store is not None else ResultStore()
    predictions_at = predictions_key(loaded, dataset, split)
    stored = store.peek(predictions_at, insights.Predictions.from_arrays)
    if stored is not None:
        stats = cached_layer_stats(loaded, dataset, layer, split=split, store=store, **options)
        return stats, stored
    computed: dict[str, np.ndarray] = {}

    def both() -> dict[str, np.ndarray]:
        stats, predicted = insights.layer_stats_and_predictions(
            loaded, dataset, layer, split=split, **options
        )
        computed.update(predicted.to_arrays())
        return stats.to_arrays()

    stats = store.get_or_compute(
        layer_stats_key(loaded, dataset, layer, split), both, insights.LayerStats.from_arrays
    )
    if computed:  # this pass made them: stored now, not computed again
        return stats, store.get_or_compute(
            predictions_at, lambda: computed, insights.Predictions.from_arrays
        )
    return stats, cached_predictions(loaded, dataset, split=split, store=store, **options)
