"""Two processes share one results store, as two servers behind a proxy would.

Each test starts worker processes (``spawn``, so nothing is shared but the folder)
that use :class:`cnnlens.store.ResultStore` on the same directory.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlens.results import Run, Spec
from cnnlens.store import ResultStore

CONTEXT = multiprocessing.get_context("spawn")
SIZE = 50_000  # floats per stored array: a few hundred kB, so a write takes a moment


def result(value: int) -> dict[str, np.ndarray]:
    """A result whose every element is ``value``: a torn or mixed file is easy to spot."""
    return {"values": np.full(SIZE, value, dtype=np.float64), "tag": np.array([value])}


def whole(arrays: dict[str, np.ndarray]) -> bool:
    """Whether ``arrays`` is one complete result, not parts of two."""
    values, tag = arrays["values"], arrays["tag"]
    return values.shape == (SIZE,) and tag.shape == (1,) and bool(np.all(values == tag[0]))


@dataclass(frozen=True, eq=False)
class Logged(Spec[np.ndarray]):
    """A result whose computation notes its process id in ``log`` and takes a second."""

    value: int
    log: str
    started: object  # a multiprocessing Event, set when the computation begins
    kind = "logged"

    def parts(self) -> dict[str, object]:
        return {"value": "shared"}  # the same key whichever value a process would compute

    def compute(self, run: Run) -> np.ndarray:
        self.started.set()
        with open(self.log, "a") as file:
            file.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # the other process asks meanwhile
        return np.full(SIZE, self.value, dtype=np.float64)


def compute_or_reuse(folder: str, log: str, started, value: int, wait_for_start: bool) -> None:
    """Ask the store for one result; a computation notes its process id in ``log``."""
    if wait_for_start:
        assert started.wait(30), "the other process never began computing"
    found = ResultStore(Path(folder)).run(Logged(value, log, started))
    assert found.shape == (SIZE,) and np.all(found == 7), found[:3]


def keep_saving(folder: str, keys: list[str], seconds: float, max_mb: float) -> None:
    """Save the keys in turn, each time with a new value, for ``seconds``."""
    store = ResultStore(Path(folder), max_mb=max_mb, memory_mb=1)
    deadline, value = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        for key in keys:
            value += 1
            store.save(key, result(value))


def keep_reading(folder: str, keys: list[str], seconds: float, queue) -> None:
    """Load the keys in turn for ``seconds``; report (whole files, missing, torn or failed)."""
    store = ResultStore(Path(folder), memory_mb=1)
    counts = {"whole": 0, "missing": 0, "bad": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key in keys:
            try:
                arrays = store.load(key)
            except Exception:  # any failure is what this test looks for
                counts["bad"] += 1
                continue
            if arrays is None:
                counts["missing"] += 1
            else:
                counts["whole" if whole(arrays) else "bad"] += 1
    queue.put(counts)


def run_all(*processes) -> None:
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"


def test_one_process_computes_and_the_other_waits_and_reuses_it(tmp_path):
    log = tmp_path / "computed.log"
    started = CONTEXT.Event()
    first = CONTEXT.Process(
        target=compute_or_reuse, args=(str(tmp_path / "store"), str(log), started, 7, False)
    )
    second = CONTEXT.Process(
        target=compute_or_reuse, args=(str(tmp_path / "store"), str(log), started, 8, True)
    )
    run_all(first, second)
    assert log.read_text().split() == [str(first.pid)]


def test_concurrent_saves_and_reads_see_only_whole_files(tmp_path):
    folder = tmp_path / "store"
    ResultStore(folder).save("busy", result(0))
    queue = CONTEXT.Queue()
    writers = [
        CONTEXT.Process(target=keep_saving, args=(str(folder), ["busy"], 3.0, 512.0))
        for _ in range(2)
    ]
    reader = CONTEXT.Process(target=keep_reading, args=(str(folder), ["busy"], 3.0, queue))
    run_all(*writers, reader)
    counts = queue.get(timeout=10)
    # The key exists throughout, and a rename swaps whole files: never missing, never torn.
    assert counts["bad"] == 0 and counts["missing"] == 0, counts
    assert counts["whole"] > 20, counts
    assert not list(folder.glob("*.partial"))
    assert whole(ResultStore(folder).load("busy"))


def test_eviction_by_one_process_never_breaks_the_others_reads(tmp_path):
    folder = tmp_path / "store"
    keys = [f"k{i}" for i in range(8)]
    queue = CONTEXT.Queue()
    # About three results fit in 1 MB, so nearly every save evicts a file the reader wants.
    evicting = CONTEXT.Process(target=keep_saving, args=(str(folder), keys, 3.0, 1.0))
    reader = CONTEXT.Process(target=keep_reading, args=(str(folder), keys, 3.0, queue))
    run_all(evicting, reader)
    counts = queue.get(timeout=10)
    assert counts["bad"] == 0, counts
    assert counts["whole"] > 0 and counts["missing"] > 0, counts
    stored = sum(path.stat().st_size for path in folder.glob("*.npz"))
    assert 0 < stored <= 1024 * 1024
