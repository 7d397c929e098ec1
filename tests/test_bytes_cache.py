"""The byte-bounded LRU cache behind the feature maps and the results store's memory."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cnnlens.bytes_cache import BytesCache


def arrays_cache(max_bytes: int) -> BytesCache[np.ndarray]:
    return BytesCache(max_bytes, lambda array: array.nbytes)


def test_least_recently_used_entries_go_first_once_the_bytes_are_over():
    cache = arrays_cache(300)
    for key in "abc":
        cache.put(key, np.zeros(100, np.uint8))
    assert cache.bytes == 300 and len(cache) == 3
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", np.zeros(150, np.uint8))
    assert cache.get("b") is None and cache.get("c") is None, "250 bytes had to go: b, then c"
    assert cache.get("a") is not None and cache.get("d") is not None
    assert cache.bytes == 250


def test_an_entry_larger_than_the_limit_is_returned_but_not_kept():
    cache = arrays_cache(100)
    cache.put("small", np.zeros(60, np.uint8))
    big = cache.put("big", np.zeros(101, np.uint8))
    assert big.nbytes == 101 and cache.get("big") is None
    assert cache.get("small") is not None and cache.bytes == 60


def test_replacing_a_key_counts_its_bytes_once():
    cache = arrays_cache(1000)
    cache.put("a", np.zeros(400, np.uint8))
    cache.put("a", np.zeros(100, np.uint8))
    assert cache.bytes == 100 and len(cache) == 1


def test_get_or_compute_keeps_what_it_computed_and_returns_the_same_object():
    cache = arrays_cache(1000)
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(10)

    first = cache.get_or_compute("k", compute)
    assert cache.get_or_compute("k", compute) is first and len(calls) == 1


def test_threads_never_push_it_over_its_limit():
    cache = arrays_cache(10_000)

    def work(offset: int) -> None:
        for i in range(500):
            cache.put((offset, i % 37), np.zeros(1 + (i * 7) % 900, np.uint8))
            assert cache.bytes <= 10_000

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0 < cache.bytes <= 10_000
    assert cache.bytes == sum(cache.get(k).nbytes for k in list(cache._entries))


def test_a_negative_limit_is_refused():
    with pytest.raises(ValueError, match="max_bytes must be 0 or more"):
        arrays_cache(-1)


def test_threads_missing_one_key_compute_it_once():
    cache = arrays_cache(1000)
    calls: list[int] = []
    barrier = threading.Barrier(6)

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(5)

    found: list[np.ndarray] = []

    def ask() -> None:
        barrier.wait()
        found.append(cache.get_or_compute("k", compute))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and all(value is found[0] for value in found)


def test_a_failed_computation_keeps_nothing():
    cache = arrays_cache(1000)

    def fail() -> np.ndarray:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        cache.get_or_compute("k", fail)
    assert cache.get("k") is None and len(cache) == 0
    assert cache.get_or_compute("k", lambda: np.arange(3)).tolist() == [0, 1, 2]
