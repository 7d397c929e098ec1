"""The Parquet writer: the features of a run as one file, written in parts so a run can resume.

:func:`extract_to_parquet` runs a :data:`cnnlens.pipeline.FeatureSource` (this
process's :func:`cnnlens.pipeline.iter_features`, or Ray's) into a
:class:`FeatureFile`: finished batches land as numbered part files beside a
manifest of the run's :class:`RunSettings`; a rerun with the same settings skips
the images already written, and the parts are joined into the file at the end.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnnlens.data import Dataset, Problem
from cnnlens.models import LoadedModel
from cnnlens.pipeline import POOLS, FeatureBatch, FeatureSource, local_source, map_shapes

__all__ = [
    "FORMAT",
    "ExtractResult",
    "FeatureFile",
    "RunSettings",
    "extract_to_parquet",
    "run_settings",
]

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
# they cost several times the write time for nothing.
_WRITE_OPTIONS = {
    "use_dictionary": ["filename", "label"],
    "write_statistics": ["filename", "label"],
}


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
            :func:`cnnlens.pipeline.iter_features`).
        restart: discard the parts of an unfinished run instead of resuming it.
        source: where batches come from instead of this process's
            :func:`cnnlens.pipeline.local_source` (the Ray engine); it must honour
            the same arguments.
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
    rows = dataset.rows(split)
    label_type = pa.array(rows["label"].tolist()).type
    features = FeatureFile(out, settings, label_type, restart=restart)
    resumed = len(features.written & set(rows["filename"]))
    if source is None:
        source = local_source(
            loaded,
            dataset,
            chosen,
            split=split,
            pool=pool,
            batch_size=batch_size,
            workers=workers,
            network_in_workers=network_in_workers,
        )
    stop = _StopRequest(should_stop)

    def progress(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(resumed + done, resumed + total)

    written, failed = features.write(source(features.written, stop, progress))
    left_out = [*(dataset.problems if split == "train" else dataset.test_problems), *failed]
    if stop.stopped:
        return ExtractResult(features.parts, resumed + written, resumed, left_out, False)
    return ExtractResult(features.out, features.finish(), resumed, left_out, True)


class _StopRequest:
    """``should_stop`` for a source, remembering whether it ever said stop."""

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.should_stop = should_stop
        self.stopped = False

    def __call__(self) -> bool:
        self.stopped = self.stopped or (self.should_stop is not None and self.should_stop())
        return self.stopped
