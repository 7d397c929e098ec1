"""Result specs: the one serializer, derived results, runs that stop, and the specs of
the dataset-wide insights against the functions they run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnnlens import insights
from cnnlens.data import load_dataset
from cnnlens.embeddings import EmbeddingSpec, embedding
from cnnlens.export import ParquetSpec
from cnnlens.insights import (
    ClassMatrixSpec,
    LayerStats,
    LayerStatsSpec,
    Predictions,
    TopImagesSpec,
)
from cnnlens.models import open_model
from cnnlens.results import Cancelled, Derived, Run, from_arrays, to_arrays
from cnnlens.store import ResultStore
from tests.generated import write_dataset
from tests.test_store import Filled


def test_a_dataclass_goes_to_plain_arrays_and_back():
    stats = LayerStats(
        layer="conv_2",
        map_shape=(2, 3, 4),
        filenames=["a.png", "b.png", "c.png"],
        labels=[np.int64(7), None, "cat"],
        mean=np.arange(6, dtype=np.float32).reshape(3, 2),
        max=np.ones((3, 2), np.float32),
        peak_y=np.zeros((3, 2), np.int32),
        peak_x=np.full((3, 2), 2, np.int32),
    )
    arrays = to_arrays(stats)
    assert set(arrays) == {"__meta__", "mean", "max", "peak_y", "peak_x"}
    assert all(array.dtype != object for array in arrays.values())  # no pickles
    back = from_arrays(LayerStats, arrays)
    assert back.map_shape == (2, 3, 4) and isinstance(back.map_shape, tuple)
    assert back.filenames == ["a.png", "b.png", "c.png"] and back.labels == [7, None, "cat"]
    np.testing.assert_array_equal(back.mean, stats.mean)
    assert not back.mean.flags.writeable


def test_arrays_that_do_not_fit_together_are_refused():
    arrays = to_arrays(Predictions(["a", "b"], [1, 2], np.array([0, 1]), ("x", "y")))
    arrays["predicted"] = np.array([0, 5])  # a class the model does not have
    with pytest.raises(ValueError, match="do not fit together"):
        from_arrays(Predictions, arrays)
    del arrays["predicted"]
    with pytest.raises(KeyError):
        from_arrays(Predictions, arrays)


def test_only_arrays_and_dataclasses_are_stored():
    with pytest.raises(TypeError, match="Only arrays and dataclasses"):
        to_arrays({"a": 1})


@dataclasses.dataclass(frozen=True, eq=False)
class Doubled(Derived[np.ndarray]):
    source: Filled
    kind = "doubled"

    def parts(self) -> dict[str, object]:
        return {"source": self.source.key}

    def requires(self) -> tuple[Filled]:
        return (self.source,)

    def derive(self, source: np.ndarray) -> np.ndarray:
        return source * 2


def test_a_derived_result_is_found_once_its_inputs_are_and_never_stored(tmp_path):
    store = ResultStore(tmp_path)
    source = Filled(3.0)
    assert store.peek(Doubled(source)) is None  # its input is missing: nothing computed
    assert source.calls == []
    np.testing.assert_array_equal(store.run(Doubled(source)), np.full(10, 6.0))
    assert source.calls == [1]
    assert [p.name for p in tmp_path.iterdir()] == [f"{source.key}.npz"]
    again = ResultStore(tmp_path)  # a restart: found from the stored input alone
    np.testing.assert_array_equal(again.peek(Doubled(Filled(3.0))), np.full(10, 6.0))


def test_a_run_keeps_parts_until_a_stop_and_nothing_after_it(tmp_path):
    store = ResultStore(tmp_path)
    answers = iter([False, False, True])  # keep asks too
    run = Run(store, should_stop=lambda: next(answers, False))
    assert not run.should_stop()
    run.keep(Filled(1.0), np.full(10, 1.0, np.float32))
    assert run.should_stop() and run.should_stop()  # remembered
    with pytest.raises(Cancelled):
        run.keep(Filled(2.0), np.full(10, 2.0, np.float32))
    assert store.peek(Filled(1.0)) is not None and store.peek(Filled(2.0)) is None


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("d") / "digits", [i % 4 for i in range(16)])


def test_the_insight_specs_give_what_their_functions_give(digits, tmp_path):
    loaded, dataset = open_model("demo"), load_dataset(digits)
    store = ResultStore(tmp_path)
    stats_spec = LayerStatsSpec(loaded, dataset, "conv_3", batch_size=5, with_predictions=True)
    stats = insights.layer_stats(loaded, dataset, "conv_3")
    predictions = insights.predict_split(loaded, dataset)
    pd.testing.assert_frame_equal(
        store.run(TopImagesSpec(stats_spec, 5, k=4, by="mean")),
        insights.top_images(stats, 5, k=4, by="mean"),
    )
    mask = np.array(predictions.names) == "2"
    pd.testing.assert_frame_equal(
        store.run(
            TopImagesSpec(stats_spec, 1, k=3, of_class="2", predictions=stats_spec.predictions)
        ),
        insights.top_images(stats, 1, k=3, among=mask),
    )
    pd.testing.assert_frame_equal(  # batches of 5 and of 256 round alike to 1e-6
        store.run(ClassMatrixSpec(stats_spec, relative=True)),
        insights.class_channel_matrix(stats, relative=True),
        rtol=1e-4,
    )
    points = store.run(EmbeddingSpec(stats_spec))
    np.testing.assert_allclose(points, embedding(stats), atol=1e-5)
    plain = LayerStatsSpec(loaded, dataset, "conv_3")  # the same result: one key
    assert ResultStore(tmp_path).peek(EmbeddingSpec(plain)) is not None


def test_a_layer_named_two_ways_is_one_result(digits, tmp_path):
    loaded, dataset = open_model("demo"), load_dataset(digits)
    named = LayerStatsSpec(loaded, dataset, "conv_2")
    assert named.key == LayerStatsSpec(loaded, dataset, loaded.layers.path("conv_2")).key
    assert named.key != LayerStatsSpec(loaded, dataset, "conv_3").key
    assert named.key != LayerStatsSpec(loaded, dataset, "conv_2", split="test").key


def test_the_parquet_export_is_found_once_its_file_exists(digits, tmp_path):
    loaded, dataset = open_model("demo"), load_dataset(digits)
    spec = ParquetSpec(loaded, dataset, ("conv_1",), folder=tmp_path / "exports", batch_size=4)
    store = ResultStore(tmp_path / "store")
    assert store.peek(spec) is None
    with pytest.raises(Cancelled):
        store.run(spec, should_stop=lambda: True)
    assert store.peek(spec) is None and not spec.path.exists()
    out = store.run(spec)
    assert out == spec.path and out.is_file()
    assert ResultStore(tmp_path / "store").peek(spec) == out
