"""The on-disk results store: keys, atomic writes, damaged files, threads, size limit, and
the dataset passes it runs."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlens import insights, results, store
from cnnlens.data import load_dataset
from cnnlens.insights import LayerStatsSpec, PredictionsSpec
from cnnlens.models import open_model
from cnnlens.results import Cancelled, Run, Spec, result_key
from cnnlens.sources import cache_dir
from cnnlens.store import ResultStore
from tests.generated import write_dataset


@dataclasses.dataclass(frozen=True, eq=False)
class Filled(Spec[np.ndarray]):
    """A result of ``size`` copies of ``value``; each computation is noted in ``calls``."""

    value: float
    size: int = 10
    calls: list = dataclasses.field(default_factory=list)
    wait: float = 0.0
    kind = "filled"

    def parts(self) -> dict[str, object]:
        return {"value": self.value, "size": self.size}

    def compute(self, run: Run) -> np.ndarray:
        self.calls.append(1)
        time.sleep(self.wait)
        return np.full(self.size, self.value, dtype=np.float32)


def arrays(value: float, size: int = 10) -> dict[str, np.ndarray]:
    return {"a": np.full(size, value, dtype=np.float32), "b": np.arange(3)}


def same(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> bool:
    return found.keys() == expected.keys() and all(
        np.array_equal(found[k], expected[k]) for k in expected
    )


def test_the_key_depends_on_every_part_and_the_format_not_on_their_order(monkeypatch):
    parts = {"model": "demo", "weights": "abc", "layer": "conv_2", "fingerprint": "f1"}
    key = result_key(**parts)
    assert key == result_key(**dict(reversed(parts.items())))
    assert len(key) == 32 and int(key, 16) >= 0
    for name in parts:
        assert result_key(**{**parts, name: "other"}) != key
    monkeypatch.setattr(results, "FORMAT_VERSION", results.FORMAT_VERSION + 1)
    assert result_key(**parts) != key


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert ResultStore().folder == tmp_path / "c" / "insights"
    monkeypatch.delenv("CNNLENS_CACHE_DIR")
    assert cache_dir() == Path.home() / ".cache" / "cnnlens"


def test_saved_arrays_load_back_and_no_partial_file_is_left(tmp_path):
    results = ResultStore(tmp_path)
    assert results.load("k") is None
    path = results.save("k", arrays(1.5))
    assert path == tmp_path / "k.npz"
    assert same(results.load("k"), arrays(1.5))
    assert os.listdir(tmp_path) == ["k.npz"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"not a zip file at all"),
        lambda path: path.write_bytes(path.read_bytes()[:50]),
        lambda path: path.write_bytes(b""),
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_a_damaged_file_counts_as_missing_and_is_removed(tmp_path, damage):
    results = ResultStore(tmp_path)
    path = results.save("k", arrays(2.0))
    damage(path)
    assert results.load("k") is None
    assert not path.exists()


def test_a_result_is_computed_once_then_read_from_disk_by_another_store(tmp_path):
    spec = Filled(3.0)
    first = ResultStore(tmp_path).run(spec)
    again = ResultStore(tmp_path).run(spec)  # a restart: memory is empty
    assert spec.calls == [1]
    np.testing.assert_array_equal(first, np.full(10, 3.0, np.float32))
    np.testing.assert_array_equal(again, first)
    assert not again.flags.writeable  # one decoded result serves every session
    assert os.listdir(tmp_path) == [f"{spec.key}.npz"]


def test_a_file_that_does_not_decode_is_replaced_by_a_fresh_result(tmp_path):
    spec = Filled(4.0)
    ResultStore(tmp_path).save(spec.key, {"wrong": np.zeros(2)})
    assert ResultStore(tmp_path).peek(spec) is None
    np.testing.assert_array_equal(ResultStore(tmp_path).run(spec), np.full(10, 4.0))
    assert spec.calls == [1]


def test_a_failed_compute_stores_nothing(tmp_path):
    results_ = ResultStore(tmp_path)

    @dataclasses.dataclass(frozen=True, eq=False)
    class Failing(Filled):
        def compute(self, run: Run) -> np.ndarray:
            raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        results_.run(Failing(1.0))
    assert results_.peek(Failing(1.0)) is None
    assert os.listdir(tmp_path) == []


def test_a_stop_asked_once_keeps_nothing_even_when_the_computation_returns(tmp_path):
    answers = iter([False, True])  # asked twice: True only once, then never again

    @dataclasses.dataclass(frozen=True, eq=False)
    class Asking(Filled):
        def compute(self, run: Run) -> np.ndarray:
            run.should_stop()
            run.should_stop()
            assert run.should_stop()  # remembered
            return super().compute(run)

    results_ = ResultStore(tmp_path)
    with pytest.raises(Cancelled, match="nothing unfinished was kept"):
        results_.run(Asking(1.0), should_stop=lambda: next(answers, False))
    assert os.listdir(tmp_path) == []


def test_threads_asking_for_one_result_compute_it_once(tmp_path):
    results_ = ResultStore(tmp_path)
    spec = Filled(5.0, size=1000, wait=0.2)  # long enough for every thread to be waiting
    start = threading.Barrier(8)
    found = [None] * 8

    def ask(i: int) -> None:
        start.wait()
        found[i] = results_.run(spec)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert spec.calls == [1]
    assert all(np.array_equal(result, np.full(1000, 5.0)) for result in found)
    assert store._key_locks == {}  # every per-key lock was dropped afterwards


def test_concurrent_writers_of_one_key_leave_one_whole_file(tmp_path):
    # Two processes (here: stores without a shared lock) writing the same key at once.
    values = [float(i) for i in range(6)]
    threads = [
        threading.Thread(target=ResultStore(tmp_path).save, args=("k", arrays(v, 100_000)))
        for v in values
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = ResultStore(tmp_path).load("k")
    assert found is not None and found["a"][0] in values
    assert np.all(found["a"] == found["a"][0])
    assert os.listdir(tmp_path) == ["k.npz"]


def test_the_least_recently_used_files_go_first_when_the_folder_is_full(tmp_path):
    one = ResultStore(tmp_path).save("old", arrays(0.0, 100_000))
    size_mb = one.stat().st_size / 2**20
    results = ResultStore(tmp_path, max_mb=2.5 * size_mb)
    now = time.time()
    results.save("used", arrays(1.0, 100_000))
    os.utime(tmp_path / "old.npz", (now - 30, now - 30))
    os.utime(tmp_path / "used.npz", (now - 20, now - 20))
    assert results.load("used") is not None  # reading it makes it the most recent
    results.save("new", arrays(2.0, 100_000))
    assert sorted(os.listdir(tmp_path)) == ["new.npz", "used.npz"]


def test_a_result_larger_than_the_limit_is_still_kept(tmp_path):
    results = ResultStore(tmp_path, max_mb=0.001)
    results.save("big", arrays(1.0, 100_000))
    assert same(results.load("big"), arrays(1.0, 100_000))


def test_stale_partial_files_of_dead_writers_are_cleaned_up(tmp_path):
    stale, fresh = tmp_path / "x.123.partial", tmp_path / "y.456.partial"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    ResultStore(tmp_path).save("k", arrays(1.0))
    assert not stale.exists() and fresh.exists()


def test_the_limit_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_mb must be positive"):
        ResultStore(tmp_path, max_mb=0)


# --- layer statistics in the store ---------------------------------------------------------


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "digits", [i % 10 for i in range(12)], size=28)


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """Counts the dataset passes (one call of insights.summarise each), by their layers."""
    calls: list[str] = []
    real = insights.summarise

    def summarise(loaded, dataset, layers, **options):
        calls.append(",".join(layers) + (" +answers" if options.get("with_predictions") else ""))
        return real(loaded, dataset, layers, **options)

    monkeypatch.setattr(insights, "summarise", summarise)
    return calls


def test_layer_stats_are_computed_once_and_reused_after_a_restart(
    digits, counted, tmp_path, monkeypatch
):
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    loaded, dataset = open_model("demo"), load_dataset(digits)
    spec = LayerStatsSpec(loaded, dataset, "conv_2", batch_size=5)
    first = ResultStore().run(spec)
    again = ResultStore().run(LayerStatsSpec(loaded, load_dataset(digits), "conv_2"))
    assert counted == ["conv_2"]
    assert again.filenames == first.filenames and again.labels == first.labels
    assert again.map_shape == first.map_shape == (32, 28, 28)
    for name in ("mean", "max", "peak_y", "peak_x"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    folder = tmp_path / "cache" / "insights"
    assert list(folder.iterdir()) == [folder / f"{spec.key}.npz"]
    ResultStore().run(LayerStatsSpec(loaded, dataset, "conv_3"))
    assert counted == ["conv_2", "conv_3"]


def test_a_stopped_pass_stores_nothing_even_when_asked_to_stop_only_once(digits, tmp_path):
    loaded, dataset = open_model("demo"), load_dataset(digits)
    results_ = ResultStore(tmp_path / "cache")
    asked = iter([True])  # True once, then never again
    for spec in (
        LayerStatsSpec(loaded, dataset, "conv_1", batch_size=4),
        PredictionsSpec(loaded, dataset, batch_size=4),
        LayerStatsSpec(loaded, dataset, "conv_2", batch_size=4, with_predictions=True),
    ):
        asked = iter([True])
        with pytest.raises(Cancelled):
            results_.run(spec, should_stop=lambda asked=asked: next(asked, False))
        assert results_.peek(spec) is None
        assert ResultStore(tmp_path / "cache").peek(spec) is None
    assert not list((tmp_path / "cache").glob("*.npz"))
    # And the plain function, asked once, raises too instead of returning part of the split.
    asked = iter([False, True])
    with pytest.raises(Cancelled):
        insights.layer_stats(
            loaded, dataset, "conv_1", batch_size=4, should_stop=lambda: next(asked, False)
        )


def test_an_index_that_did_not_look_at_the_images_keys_no_result(digits, tmp_path):
    unchecked = load_dataset(digits, check_images=False)
    assert unchecked.fingerprint == ""
    with pytest.raises(ValueError, match="check_images=False.*load_dataset"):
        ResultStore(tmp_path).run(LayerStatsSpec(open_model("demo"), unchecked, "conv_1"))
    assert not list(tmp_path.rglob("*.npz"))


def test_changed_images_or_weights_are_computed_again(digits, counted, tmp_path):
    results_ = ResultStore(tmp_path / "cache")
    loaded, dataset = open_model("demo"), load_dataset(digits)
    before = results_.run(LayerStatsSpec(loaded, dataset, "conv_1"))
    (digits / "train" / "img_0.png").write_bytes((digits / "train" / "img_1.png").read_bytes())
    changed = load_dataset(digits)
    assert changed.fingerprint != dataset.fingerprint
    after = results_.run(LayerStatsSpec(loaded, changed, "conv_1"))
    assert counted == ["conv_1", "conv_1"]
    np.testing.assert_array_equal(after.mean[0], after.mean[1])  # the copied image's values
    assert not np.array_equal(after.mean[0], before.mean[0])
    other = dataclasses.replace(loaded, weights_id="other-weights")
    results_.run(LayerStatsSpec(other, changed, "conv_1"))
    assert counted == ["conv_1"] * 3
    results_.run(LayerStatsSpec(loaded, changed, "conv_1"))
    assert counted == ["conv_1"] * 3


def test_predictions_are_stored_once_per_dataset(digits, tmp_path, monkeypatch):
    calls = count_calls(monkeypatch, ("predict_split",))
    loaded, dataset = open_model("demo"), load_dataset(digits)
    spec = PredictionsSpec(loaded, dataset)
    first = ResultStore(tmp_path / "cache").run(spec)
    again = ResultStore(tmp_path / "cache").run(spec)
    assert calls == ["predict_split"]
    assert again.filenames == first.filenames and again.classes == first.classes
    np.testing.assert_array_equal(again.predicted, first.predicted)
    assert spec.key != LayerStatsSpec(loaded, dataset, "conv_1").key
    assert (tmp_path / "cache" / f"{spec.key}.npz").is_file()


def count_calls(monkeypatch, names: tuple[str, ...]) -> list[str]:
    """The calls of these functions of cnnlens.insights, by name, in order."""
    calls: list[str] = []

    def counting(name: str):
        real = getattr(insights, name)

        def counted(*args, **options):
            calls.append(name)
            return real(*args, **options)

        return counted

    for name in names:
        monkeypatch.setattr(insights, name, counting(name))
    return calls


def test_one_pass_stores_a_layers_statistics_and_the_predictions(digits, tmp_path, counted):
    expected = insights.predict_split(open_model("demo"), load_dataset(digits)).predicted
    results_ = ResultStore(tmp_path / "cache")
    loaded, dataset = open_model("demo"), load_dataset(digits)
    spec = LayerStatsSpec(loaded, dataset, "conv_2", batch_size=5, with_predictions=True)
    stats = results_.run(spec)
    assert counted == ["conv_2 +answers"]
    stored = {path.name for path in (tmp_path / "cache").iterdir()}
    assert stored == {f"{spec.key}.npz", f"{spec.predictions.key}.npz"}
    # Another process (a new store on the folder) finds both, with no pass.
    again = ResultStore(tmp_path / "cache")
    reread = again.run(LayerStatsSpec(loaded, dataset, "conv_2"))
    answers = again.run(PredictionsSpec(loaded, dataset))
    assert counted == ["conv_2 +answers"]
    np.testing.assert_array_equal(reread.mean, stats.mean)
    np.testing.assert_array_equal(answers.predicted, expected)
    # With the predictions stored, another layer needs its own pass only.
    other = again.run(LayerStatsSpec(loaded, dataset, "conv_3", with_predictions=True))
    assert counted == ["conv_2 +answers", "conv_3"]
    assert other.layer == "conv_3"


def test_one_pass_summarises_every_chosen_layer_and_classifies(digits, tmp_path, counted):
    loaded, dataset = open_model("demo"), load_dataset(digits)
    results_ = ResultStore(tmp_path / "cache")
    results_.run(LayerStatsSpec(loaded, dataset, "conv_3"))
    spec = LayerStatsSpec(
        loaded,
        dataset,
        "conv_1",
        along=("conv_1", "conv_2", "conv_3", "conv_4", "pool_4"),
        with_predictions=True,
    )
    results_.run(spec)
    # conv_3 was stored; every other layer rides along, in one pass with the answers.
    assert counted == ["conv_3", "conv_1,conv_2,conv_4,pool_4 +answers"]
    again = ResultStore(tmp_path / "cache")
    for layer in ("conv_1", "conv_2", "conv_4", "pool_4"):
        found = again.peek(LayerStatsSpec(loaded, dataset, layer))
        alone = insights.layer_stats(loaded, dataset, layer)
        np.testing.assert_allclose(found.mean, alone.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(found.peak_y, alone.peak_y)
    assert again.peek(spec.predictions) is not None
    one_pass = ["conv_3", "conv_1,conv_2,conv_4,pool_4 +answers"]
    assert counted == [*one_pass, "conv_1", "conv_2", "conv_4", "pool_4"]  # the references


def test_a_result_reaches_the_disk_before_its_name_and_the_name_before_save_returns(
    tmp_path, monkeypatch
):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(handle: int) -> None:
        path = os.readlink(f"/proc/self/fd/{handle}")
        events.append("sync folder" if os.path.isdir(path) else f"sync {Path(path).suffix}")
        real_fsync(handle)

    def replace(source, target) -> None:
        events.append(f"rename to {Path(target).suffix}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ResultStore(tmp_path).save("k", arrays(1.0))
    # As SQLite's and Git's writers do: data, then the rename, then the folder's entry.
    assert events == ["sync .partial", "rename to .npz", "sync folder"]
