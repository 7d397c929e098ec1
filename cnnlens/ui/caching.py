"""How the dashboard caches: one decorator for results shared by every session, bounded
by bytes, and one call that forgets everything.

Resources (datasets, models, the results store) are ``st.cache_resource`` functions
in :mod:`cnnlens.ui.resources`; each feature keeps its own caches beside it, made
with :func:`in_memory`. Dataset-wide results live in the results store
(:mod:`cnnlens.store`), drawn by :mod:`cnnlens.ui.runner`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable, Hashable
from typing import TypeVar

import streamlit as st

from cnnlens.bytes_cache import BytesCache

__all__ = ["clear_all", "feature_cache_mb", "in_memory", "read_only"]

T = TypeVar("T")

_kept_in_memory: list[BytesCache] = []


def feature_cache_mb() -> float:
    """The feature-map cache's limit: ``CNNLENS_FEATURE_CACHE_MB`` megabytes, 512 by default.

    Raises:
        ValueError: if the setting is not a number of 0 or more.
    """
    raw = os.environ.get("CNNLENS_FEATURE_CACHE_MB", "512")
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = -1.0
    if megabytes < 0:
        raise ValueError(f"CNNLENS_FEATURE_CACHE_MB must be a number of megabytes, got {raw!r}.")
    return megabytes


def _key_part(value: object) -> Hashable:
    """A hashable stand-in for an argument: arrays and bytes by digest, a dataset by
    its folder and fingerprint (so an image changed on disk is read again)."""
    if isinstance(value, bytes):
        return hashlib.blake2b(value, digest_size=16).digest()
    if hasattr(value, "tobytes") and hasattr(value, "dtype"):  # a numpy array
        return (value.shape, str(value.dtype), _key_part(value.tobytes()))
    if hasattr(value, "fingerprint") and hasattr(value, "root"):  # a Dataset
        return (str(value.root), value.fingerprint)
    return value  # type: ignore[return-value]


def read_only(value: T) -> T:
    """Freeze every array of a shared result (in its fields, dicts, lists and tuples),
    so no session can change another's."""
    pending: list[object] = [value]
    while pending:
        item = pending.pop()
        if hasattr(item, "setflags"):
            item.setflags(write=False)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            pending.extend(vars(item).values())
    return value


def in_memory(megabytes: float) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Keep a function's results in memory for every session, at most ``megabytes`` of them.

    Unlike ``st.cache_data``, which counts entries, this counts bytes (a result's
    ``nbytes``), and it hands out the one kept result, read-only, instead of a copy.
    """

    def wrap(function: Callable[..., T]) -> Callable[..., T]:
        kept = BytesCache[T](int(megabytes * 1024 * 1024), lambda value: value.nbytes)

        @functools.wraps(function)
        def cached(*args: object) -> T:
            key = tuple(_key_part(arg) for arg in args)
            return kept.get_or_compute(key, lambda: read_only(function(*args)))

        _kept_in_memory.append(kept)
        return cached

    return wrap


def clear_all() -> None:
    """Forget every cached model and result, for every session (new weights came in)."""
    st.cache_resource.clear()
    st.cache_data.clear()
    for kept in _kept_in_memory:
        kept.clear()
