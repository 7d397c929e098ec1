"""A least-recently-used cache bounded by the bytes of what it holds, not by a count.

A count says nothing about memory: 16 feature-map sets of the demo CNN take 3 MB,
16 of VGG16 at 224 pixels take 800 MB. This cache drops the least recently used
entries once their sizes add up to more than its limit, and it is safe to share
between threads (browser sessions). Values are handed out as they are, never
copied: keep them read-only (NumPy arrays can be frozen with ``setflags``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BytesCache"]

V = TypeVar("V")


class BytesCache(Generic[V]):
    """A thread-safe LRU cache whose entries' sizes add up to at most ``max_bytes``.

    Args:
        max_bytes: the limit; an entry larger than it is returned but not kept.
        size_of: the size of a value in bytes.

    Raises:
        ValueError: if ``max_bytes`` is negative.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}.")
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # One lock per key being computed, with the number of threads holding or awaiting it.
        self._computing: dict[Hashable, tuple[threading.Lock, int]] = {}

    @property
    def bytes(self) -> int:
        """The sizes of the entries held now, added up."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        """The value kept under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: V) -> V:
        """Keep a value, dropping the least recently used entries to stay within the limit."""
        size = self._size_of(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return value
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value under ``key``, computed and kept when missing.

        Threads missing the same key at once compute it once: the others wait for
        it. Threads computing other keys never wait for each other. If ``compute``
        raises, nothing is kept and the next caller tries again.
        """
        found = self.get(key)
        if found is not None:
            return found
        with self._lock:
            lock, waiting = self._computing.get(key, (threading.Lock(), 0))
            self._computing[key] = (lock, waiting + 1)
        try:
            with lock:
                found = self.get(key)
                return found if found is not None else self.put(key, compute())
        finally:
            with self._lock:
                lock, waiting = self._computing[key]
                if waiting == 1:
                    del self._computing[key]
                else:
                    self._computing[key] = (lock, waiting - 1)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
