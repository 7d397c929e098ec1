"""What a dataset-wide result is: a spec that names it and computes it, and one way to
turn it into arrays on disk and back.

A **spec** is a small frozen object that says which result is meant and how to make
it. Its key is made of everything the result depends on (the model, its weights and
dtype, the dataset folder and its fingerprint, the split, the layer, the options)
and its kind's version, so a changed input or recipe gives a new key and a stale
result is never read. :meth:`Spec.compute` makes the result, reporting progress and
asking whether to stop through a :class:`Run`; it never knows where results live.

:class:`cnnlens.store.ResultStore` runs any spec (memory, disk, locks, cancel), and
the dashboard draws any spec with one runner (``cnnlens.ui.runner``). Three kinds:

- :class:`Spec`: computed, then stored on disk as plain arrays (:func:`to_arrays`).
- :class:`Derived`: computed at once from other results (top images from a layer's
  statistics): kept in memory only, found whenever its inputs are found.
- a spec may store its parts as it goes (:meth:`Run.keep`), so a stopped run resumes
  from its finished parts (the channel atlas, the Parquet export).

A stop asked once is remembered by the :class:`Run`, and a result is kept only when
its computation finished: a stopped pass never leaves half a result behind.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from cnnlens.data import Dataset
    from cnnlens.models import LoadedModel

__all__ = [
    "Cancelled",
    "DatasetSpec",
    "Derived",
    "ModelSpec",
    "Run",
    "Spec",
    "from_arrays",
    "result_key",
    "to_arrays",
]

T = TypeVar("T")

FORMAT_VERSION = 2
"""Bump when the layout of every stored result changes: old files are then never read."""

_META = "__meta__"
_VALUE = "value"


class Cancelled(Exception):
    """A computation stopped because ``should_stop()`` asked it to; nothing unfinished was kept."""


def result_key(**parts: object) -> str:
    """A file-name-safe key from everything a result depends on.

    Args:
        **parts: names and values (strings, numbers, lists); their order does not matter.

    Returns:
        32 hex digits of a SHA-256 over the parts and :data:`FORMAT_VERSION`.
    """
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --- the one serializer --------------------------------------------------------------------


def _plain(value: object) -> object:
    """A value as JSON keeps it: numpy scalars become Python numbers, tuples lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def to_arrays(result: object) -> dict[str, np.ndarray]:
    """Plain arrays for the results store (no pickles): an array as it is, or a dataclass's
    array fields as arrays and every other field as JSON.

    Raises:
        TypeError: for a result that is neither, or a field JSON cannot hold.
    """
    if isinstance(result, np.ndarray):
        return {_VALUE: result}
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(f"Only arrays and dataclasses are stored, not {type(result).__name__}.")
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, object] = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, np.ndarray):
            arrays[field.name] = value
        else:
            meta[field.name] = _plain(value)
    arrays[_META] = np.array(json.dumps(meta))
    return arrays


@functools.cache
def _tuple_fields(cls: type) -> frozenset[str]:
    """The fields of a dataclass annotated as tuples (JSON gives lists back)."""
    return frozenset(
        field.name
        for field in dataclasses.fields(cls)  # type: ignore[arg-type]
        if str(field.type).startswith("tuple")
    )


def from_arrays(cls: type[T], arrays: Mapping[str, np.ndarray]) -> T:
    """The inverse of :func:`to_arrays`, its arrays made read-only (one decoded result
    serves every session).

    Raises:
        KeyError: if an array is missing.
        ValueError: if the arrays do not fit together (the class's own checks).
    """
    if cls is np.ndarray:
        value = arrays[_VALUE]
        value.setflags(write=False)
        return value  # type: ignore[return-value]
    meta = json.loads(str(arrays[_META]))
    tuples = _tuple_fields(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in meta:
            value = meta[field.name]
            values[field.name] = tuple(value) if field.name in tuples else value
        else:
            array = arrays[field.name]
            array.setflags(write=False)
            values[field.name] = array
    try:
        return cls(**values)
    except TypeError as error:  # a field the stored file lacks
        raise KeyError(str(error)) from None


def result_bytes(result: object) -> int:
    """About the memory a result takes: its arrays (or a frame's columns) added up."""
    if isinstance(result, np.ndarray):
        return result.nbytes
    if hasattr(result, "memory_usage"):  # a pandas DataFrame
        return int(result.memory_usage(deep=True).sum())
    if dataclasses.is_dataclass(result):
        return (
            sum(value.nbytes for value in vars(result).values() if isinstance(value, np.ndarray))
            or 1
        )
    if isinstance(result, Path):
        return len(str(result))
    return 1


# --- running one -----------------------------------------------------------------------------


class ResultStore(Protocol):
    """What runs specs and keeps their results: :class:`cnnlens.store.ResultStore`."""

    def peek(self, spec: Spec[T]) -> T | None: ...

    def run_within(self, spec: Spec[T], run: Run) -> T: ...

    def keep(self, spec: Spec[T], result: T) -> T: ...

    def remembered(self, key: str) -> object | None: ...

    def remember(self, key: str, result: T) -> T: ...

    def load_result(self, key: str, decode: Callable[[dict[str, np.ndarray]], T]) -> T | None: ...

    def save_result(self, key: str, arrays: dict[str, np.ndarray], result: T) -> T: ...


class Run:
    """One computation's progress reports and stop requests, and its way to other results.

    A stop asked once is remembered: :attr:`stopped` stays True, and :meth:`keep`
    refuses to keep anything after it, so a pass that did not finish leaves nothing.

    Args:
        store: the store that runs the computation (its :meth:`get`, :meth:`find`
            and :meth:`keep` go there).
        on_progress: called with ``(done, total)`` as the computation goes.
        should_stop: asked between steps; True stops the computation.
        on_phase: called with each spec when its computation starts (a spec may
            need others first), so a progress bar can say what it is doing.
    """

    def __init__(
        self,
        store: ResultStore,
        on_progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_phase: Callable[[Spec], None] | None = None,
    ) -> None:
        self.store = store
        self._on_progress = on_progress
        self._should_stop = should_stop
        self._on_phase = on_phase
        self.stopped = False

    def report(self, done: int, total: int) -> None:
        """Say how far the computation is."""
        if self._on_progress is not None:
            self._on_progress(done, total)

    def should_stop(self) -> bool:
        """Whether to stop; once True, always True for this run."""
        if not self.stopped and self._should_stop is not None and self._should_stop():
            self.stopped = True
        return self.stopped

    def check(self, where: str) -> None:
        """Raise :class:`Cancelled` if a stop was asked for.

        Args:
            where: how far it got, in words ("after 256 of 4,000 images").
        """
        if self.should_stop():
            raise Cancelled(f"Stopped {where}; nothing unfinished was kept.")

    def started(self, spec: Spec) -> None:
        """Called by the store as it starts computing ``spec``."""
        if self._on_phase is not None:
            self._on_phase(spec)

    def get(self, spec: Spec[T]) -> T:
        """Another result this one needs: found, or computed now within this run."""
        return self.store.run_within(spec, self)

    def find(self, spec: Spec[T]) -> T | None:
        """Another result if it is stored, else ``None``; computes nothing."""
        return self.store.peek(spec)

    def keep(self, spec: Spec[T], result: T) -> T:
        """Store a finished part or companion result now (what a stopped run keeps).

        Raises:
            Cancelled: if a stop was asked for: a result made after it may be partial.
        """
        self.check("before its result was kept")
        return self.store.keep(spec, result)


# --- specs -----------------------------------------------------------------------------------


class Spec(ABC, Generic[T]):
    """One result: what it depends on (:meth:`parts`), how to compute it, how to store it.

    Subclasses are frozen dataclasses. Fields that do not change the result (batch
    size, worker processes) are left out of :meth:`parts`.

    Attributes:
        kind: the result's kind, part of its key.
        version: bump when the computation changes its values: older results are
            then never read.
        result_type: what :meth:`compute` returns: a dataclass or ``np.ndarray``.
        resumable: a stopped run keeps its finished parts and goes on from them.
    """

    kind: ClassVar[str]
    version: ClassVar[int] = 1
    result_type: ClassVar[type] = np.ndarray
    resumable: ClassVar[bool] = False

    @abstractmethod
    def parts(self) -> dict[str, object]:
        """Everything the result depends on, by name (plain values)."""

    @abstractmethod
    def compute(self, run: Run) -> T:
        """Make the result, reporting to ``run`` and stopping when it says so.

        Raises:
            Cancelled: if ``run`` asked to stop.
            ValueError: for inputs the result cannot be made of, in words.
        """

    @functools.cached_property
    def key(self) -> str:
        """The result's key, for memory and disk."""
        return result_key(kind=self.kind, version=self.version, **self.parts())

    @property
    def title(self) -> str:
        """What computing it does, in words ("summarising conv_1"), for progress and notes."""
        return f"computing {self.kind.replace('_', ' ')}"

    def progress_text(self, done: int, total: int) -> str:
        """A progress bar's text at ``(done, total)``."""
        return f"{self.title[:1].upper()}{self.title[1:]}: {done:,} of {total:,}"

    def requires(self) -> tuple[Spec, ...]:
        """The results this one is made from (found or computed first)."""
        return ()

    def find(self, store: ResultStore) -> T | None:
        """The stored result, or ``None``; by default the store's arrays of :attr:`key`."""
        return store.load_result(self.key, self.decode)

    def save(self, store: ResultStore, result: T) -> T:
        """Keep a finished result; by default as arrays under :attr:`key`."""
        return store.save_result(self.key, to_arrays(result), result)

    def decode(self, arrays: Mapping[str, np.ndarray]) -> T:
        """The result from its stored arrays (:func:`from_arrays`)."""
        return from_arrays(self.result_type, arrays)


class Derived(Spec[T]):
    """A result made at once from other results: kept in memory, never on disk.

    It is found whenever its inputs are found, so a view of a stored pass (the top
    images of a channel) paints without computing anything long.
    """

    @abstractmethod
    def requires(self) -> tuple[Spec, ...]:
        """The results this one is made from."""

    @abstractmethod
    def derive(self, *inputs: Any) -> T:
        """The result from the results of :meth:`requires`, in their order."""

    def compute(self, run: Run) -> T:
        return self.derive(*(run.get(spec) for spec in self.requires()))

    def find(self, store: ResultStore) -> T | None:
        kept = store.remembered(self.key)
        if kept is not None:
            return kept
        inputs = [store.peek(spec) for spec in self.requires()]
        if any(found is None for found in inputs):
            return None
        return store.remember(self.key, self.derive(*inputs))

    def save(self, store: ResultStore, result: T) -> T:
        return store.remember(self.key, result)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec(Spec[T]):
    """A result of one model: its key holds the model's name, weights and dtype.

    Attributes:
        loaded: the model (:func:`cnnlens.models.open_model`).
    """

    loaded: LoadedModel

    def parts(self) -> dict[str, object]:
        return {
            "model": self.loaded.name,
            "weights": self.loaded.weights_id,
            "dtype": str(self.loaded.dtype),
        }

    def layer_path(self, layer: str) -> str:
        """A layer's module path, one key part whichever name it was asked by.

        Raises:
            ValueError: for a name that is not a layer of the model.
        """
        return self.loaded.layers.path(layer)


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetSpec(ModelSpec[T]):
    """A result of one model over one split of a dataset.

    Its key also holds the dataset folder and its fingerprint (which changes with
    the CSVs and every usable file), and the split.

    Attributes:
        dataset: the dataset, indexed with its images checked.
        split: ``"train"`` or ``"test"``.
        batch_size: images per forward pass (not part of the key).
        workers: processes decoding images while the network runs (not part of the key).
    """

    dataset: Dataset
    split: str = dataclasses.field(default="train", kw_only=True)
    batch_size: int = dataclasses.field(default=256, kw_only=True)
    workers: int = dataclasses.field(default=0, kw_only=True)

    def parts(self) -> dict[str, object]:
        if not self.dataset.fingerprint:
            raise ValueError(
                f"{self.dataset.root} was indexed without looking at its images "
                "(check_images=False), so a change to them would go unnoticed: index it with "
                "load_dataset(root) to keep results of it."
            )
        return {
            **super().parts(),
            "split": self.split,
            "dataset": str(Path(self.dataset.root).resolve()),
            "fingerprint": self.dataset.fingerprint,
        }

    @property
    def pass_options(self) -> dict[str, int]:
        """How a pass over the split runs: ``batch_size`` and ``workers``."""
        return {"batch_size": self.batch_size, "workers": self.workers}

    def images(self) -> int:
        """How many images the split has."""
        return len(self.dataset.rows(self.split))
