"""The on-disk results store: keys, atomic writes, damaged files, threads, size limit."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlens import insights, store
from cnnlens.data import load_dataset
from cnnlens.models import open_model
from cnnlens.sources import cache_dir
from cnnlens.store import (
    ResultStore,
    cached_layer_stats,
    cached_layer_stats_and_predictions,
    cached_predictions,
    layer_stats_key,
    predictions_key,
    result_key,
)
from tests.generated import write_dataset


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
    monkeypatch.setattr(store, "FORMAT_VERSION", store.FORMAT_VERSION + 1)
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
    calls = []

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return arrays(3.0)

    first = ResultStore(tmp_path).get_or_compute("k", compute, dict)
    again = ResultStore(tmp_path).get_or_compute("k", compute, dict)  # a restart: memory is empty
    assert len(calls) == 1
    assert same(first, arrays(3.0)) and same(again, arrays(3.0))


def test_a_file_that_does_not_decode_is_replaced_by_a_fresh_result(tmp_path):
    ResultStore(tmp_path).save("k", {"wrong": np.zeros(2)})

    def decode(found: dict[str, np.ndarray]) -> float:
        return float(found["a"][0])  # KeyError for the old file

    assert ResultStore(tmp_path).get_or_compute("k", lambda: arrays(4.0), decode) == 4.0
    assert same(ResultStore(tmp_path).load("k"), arrays(4.0))


def test_a_failed_compute_stores_nothing(tmp_path):
    results = ResultStore(tmp_path)

    def cancelled() -> dict[str, np.ndarray]:
        raise insights.Cancelled("stopped")

    with pytest.raises(insights.Cancelled):
        results.get_or_compute("k", cancelled, dict)
    assert results.load("k") is None
    assert os.listdir(tmp_path) == []


def test_threads_asking_for_one_key_compute_it_once(tmp_path):
    results = ResultStore(tmp_path)
    calls = []
    start = threading.Barrier(8)
    found = [None] * 8

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        time.sleep(0.2)  # long enough for every thread to be waiting on the key
        return arrays(5.0, size=1000)

    def ask(i: int) -> None:
        start.wait()
        found[i] = results.get_or_compute("k", compute, dict)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert all(same(result, arrays(5.0, size=1000)) for result in found)
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
    """Counts the dataset passes that cached_layer_stats makes."""
    calls: list[str] = []
    real = insights.layer_stats

    def layer_stats(loaded, dataset, layer, **options):
        calls.append(layer)
        return real(loaded, dataset, layer, **options)

    monkeypatch.setattr(insights, "layer_stats", layer_stats)
    return calls


def test_layer_stats_are_computed_once_and_reused_after_a_restart(
    digits, counted, tmp_path, monkeypatch
):
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    loaded, dataset = open_model("demo"), load_dataset(digits)
    first = cached_layer_stats(loaded, dataset, "conv_2", batch_size=5)
    again = cached_layer_stats(loaded, load_dataset(digits), "conv_2")  # a new store: from disk
    assert counted == ["conv_2"]
    assert again.filenames == first.filenames and again.labels == first.labels
    for name in ("mean", "max", "peak_y", "peak_x"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    folder = tmp_path / "cache" / "insights"
    key = layer_stats_key(loaded, dataset, "conv_2", "train")
    assert list(folder.iterdir()) == [folder / f"{key}.npz"]
    cached_layer_stats(loaded, dataset, "conv_3")
    assert counted == ["conv_2", "conv_3"]


def test_an_index_that_did_not_look_at_the_images_keys_no_cache(digits, tmp_path):
    unchecked = load_dataset(digits, check_images=False)
    assert unchecked.fingerprint == ""
    with pytest.raises(ValueError, match="check_images=False.*load_dataset"):
        cached_layer_stats(open_model("demo"), unchecked, "conv_1", store=ResultStore(tmp_path))
    assert not list(tmp_path.rglob("*.npz"))


def test_changed_images_or_weights_are_computed_again(digits, counted, tmp_path):
    results = ResultStore(tmp_path / "cache")
    loaded, dataset = open_model("demo"), load_dataset(digits)
    before = cached_layer_stats(loaded, dataset, "conv_1", store=results)
    (digits / "train" / "img_0.png").write_bytes((digits / "train" / "img_1.png").read_bytes())
    changed = load_dataset(digits)
    assert changed.fingerprint != dataset.fingerprint
    after = cached_layer_stats(loaded, changed, "conv_1", store=results)
    assert counted == ["conv_1", "conv_1"]
    np.testing.assert_array_equal(after.mean[0], after.mean[1])  # the copied image's values
    assert not np.array_equal(after.mean[0], before.mean[0])
    other = dataclasses.replace(loaded, weights_id="other-weights")
    cached_layer_stats(other, changed, "conv_1", store=results)
    assert counted == ["conv_1"] * 3
    cached_layer_stats(loaded, changed, "conv_1", store=results)
    assert counted == ["conv_1"] * 3


def test_predictions_are_stored_once_per_dataset(digits, tmp_path, monkeypatch):
    calls = []
    real = insights.predict_split

    def predict_split(loaded, dataset, **options):
        calls.append(1)
        return real(loaded, dataset, **options)

    monkeypatch.setattr(insights, "predict_split", predict_split)
    results = ResultStore(tmp_path / "cache")
    loaded, dataset = open_model("demo"), load_dataset(digits)
    first = cached_predictions(loaded, dataset, store=results)
    again = cached_predictions(loaded, dataset, store=ResultStore(tmp_path / "cache"))
    assert calls == [1]
    assert again.filenames == first.filenames and again.classes == first.classes
    np.testing.assert_array_equal(again.predicted, first.predicted)
    key = predictions_key(loaded, dataset, "train")
    assert key != layer_stats_key(loaded, dataset, "conv_1", "train")
    assert (tmp_path / "cache" / f"{key}.npz").is_file()


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


def test_one_pass_stores_a_layers_statistics_and_the_predictions(digits, tmp_path, monkeypatch):
    expected = insights.predict_split(open_model("demo"), load_dataset(digits)).predicted
    calls = count_calls(
        monkeypatch, ("layer_stats", "predict_split", "layer_stats_and_predictions")
    )
    results = ResultStore(tmp_path / "cache")
    loaded, dataset = open_model("demo"), load_dataset(digits)
    stats, answers = cached_layer_stats_and_predictions(
        loaded, dataset, "conv_2", store=results, batch_size=5
    )
    assert calls == ["layer_stats_and_predictions"]
    stored = {path.name for path in (tmp_path / "cache").iterdir()}
    assert stored == {
        f"{layer_stats_key(loaded, dataset, 'conv_2', 'train')}.npz",
        f"{predictions_key(loaded, dataset, 'train')}.npz",
    }
    # Another process (a new store on the folder) finds both, with no pass.
    again = ResultStore(tmp_path / "cache")
    reread = cached_layer_stats(loaded, dataset, "conv_2", store=again)
    reanswered = cached_predictions(loaded, dataset, store=again)
    assert calls == ["layer_stats_and_predictions"]
    np.testing.assert_array_equal(reread.mean, stats.mean)
    np.testing.assert_array_equal(reanswered.predicted, answers.predicted)
    np.testing.assert_array_equal(answers.predicted, expected)
    # With the predictions stored, another layer needs its own pass only.
    calls.clear()
    other, same_answers = cached_layer_stats_and_predictions(loaded, dataset, "conv_3", store=again)
    assert calls == ["layer_stats"]
    assert other.layer == "conv_3" and same_answers is reanswered
