"""The results store: runs any dataset-wide result (:mod:`cnnlens.results`) once, and keeps it
so other sessions and restarts reuse it.

Each stored result is one ``.npz`` file of plain arrays (no pickles) under
``$CNNLENS_CACHE_DIR/insights`` (default ``~/.cache/cnnlens/insights``), named by its
spec's key: a hash of everything it depends on. A changed dataset or weights file
gives a new key, so stale results are never read; old files age out when the folder
grows past its size limit. The most recent results are also kept decoded in memory,
bounded by bytes.

Writes go to a temporary file that is renamed into place, so a reader sees a whole
file or none; a damaged file is treated as missing and removed. Two sessions asking
for the same result at once compute it once, also when they are in two server
processes sharing the folder (a lock file per key). A result is kept only when its
computation finished: a stop asked even once leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from cnnlens.results import Cancelled, Derived, Run, result_bytes
from cnnlens.sources import cache_dir

if TYPE_CHECKING:
    from cnnlens.results import Spec

__all__ = ["DEFAULT_MAX_MB", "ResultStore"]

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


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: after a power loss the new name is there."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class ResultStore:
    """A folder of results, bounded in size, safe to share; it runs any result spec.

    The most recently used results are also kept decoded in memory, so a page
    that asks again on every rerun does not read the disk each time.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cnnlens import LayerStatsSpec, ResultStore, demo_dataset, open_model
        >>> store = ResultStore(Path(tempfile.mkdtemp()))
        >>> spec = LayerStatsSpec(open_model("demo"), demo_dataset(), "conv_2")
        >>> store.peek(spec) is None  # not computed yet
        True
        >>> stats = store.run(spec)  # one pass, kept on disk for every later process
        >>> ResultStore(store.folder).peek(spec).mean.shape
        (4000, 32)

    Args:
        folder: where the files go; default ``cache_dir() / "insights"``.
        max_mb: size limit of the folder in megabytes.
        memory_mb: how many megabytes of recent results to keep decoded in memory
            (counted as the bytes of their arrays).

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

    # --- results by spec -------------------------------------------------------------------

    def peek(self, spec: Spec[T]) -> T | None:
        """The result if it is in memory or stored (or, for a derived one, its inputs
        are), else ``None``; never computes anything long."""
        return spec.find(self)

    def run(
        self,
        spec: Spec[T],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_phase: Callable[[Spec], None] | None = None,
    ) -> T:
        """The result: found, or computed now (with the results it needs) and kept.

        Threads or processes asking for one result at once compute it once; the
        others wait and read the stored result.

        Args:
            spec: the result.
            on_progress: called with ``(done, total)`` as each computation goes.
            should_stop: asked between steps; True stops, and nothing unfinished is kept.
            on_phase: called with each spec as its computation starts.

        Raises:
            Cancelled: if ``should_stop`` asked to stop, even once.
            ValueError: as the spec's computation raises it.
        """
        return self.run_within(spec, Run(self, on_progress, should_stop, on_phase))

    def run_within(self, spec: Spec[T], run: Run) -> T:
        """:meth:`run` as part of a computation already running (:meth:`Run.get`)."""
        found = self.peek(spec)
        if found is not None:
            return found
        if isinstance(spec, Derived):
            return spec.save(self, spec.compute(run))
        with _locked(str(self.path(spec.key))), _file_locked(self.folder / f"{spec.key}{_LOCK}"):
            found = self.peek(spec)
            if found is not None:
                return found
            run.started(spec)
            result = spec.compute(run)
            if run.stopped:  # a computation that returned anyway may be partial
                raise Cancelled(f"Stopped while {spec.title}; nothing unfinished was kept.")
            return spec.save(self, result)

    def keep(self, spec: Spec[T], result: T) -> T:
        """Store a result computed elsewhere (a Ray task's, a part of a longer run)."""
        return spec.save(self, result)

    # --- memory and files, for specs ---------------------------------------------------------

    def remembered(self, key: str) -> object | None:
        """A result kept decoded in memory, or ``None``."""
        kept = self._memory.get(key)
        return None if kept is None else kept[0]

    def remember(self, key: str, result: T) -> T:
        """Keep a decoded result in memory (bounded by bytes) and return it."""
        self._memory.put(key, (result, result_bytes(result)))
        return result

    def load_result(self, key: str, decode: Callable[[dict[str, np.ndarray]], T]) -> T | None:
        """A result from memory or its file, decoded; a file that does not decode is removed."""
        kept = self.remembered(key)
        if kept is not None:
            return kept  # type: ignore[return-value]
        arrays = self.load(key)
        if arrays is None:
            return None
        try:
            result = decode(arrays)
        except (ValueError, KeyError):
            self.path(key).unlink(missing_ok=True)
            return None
        return self.remember(key, result)

    def save_result(self, key: str, arrays: dict[str, np.ndarray], result: T) -> T:
        """Store a result's arrays under ``key`` and keep the result in memory."""
        self.save(key, arrays)
        return self.remember(key, result)

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
        """Store arrays durably and atomically (a synced temporary file, renamed), then
        keep the size limit.

        Returns:
            The path of the stored file.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        handle, partial = tempfile.mkstemp(dir=self.folder, prefix=f"{key}.", suffix=_PARTIAL)
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
                file.flush()
                os.fsync(file.fileno())  # the data on disk before its name is, as Git does
            os.replace(partial, path)
            _sync_folder(self.folder)
        finally:
            Path(partial).unlink(missing_ok=True)
        self._evict(keep=path)
        return path

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
