"""The Insights page through AppTest: its charts against references computed here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from cnnlens import insights
from cnnlens.data import load_dataset
from cnnlens.embeddings import EmbeddingSpec, embedding
from cnnlens.insights import LayerStatsSpec
from cnnlens.layers import layer_names
from cnnlens.models import demo_model, open_model
from cnnlens.preprocess import to_batch
from cnnlens.store import ResultStore
from tests.generated import write_dataset
from tests.test_app import bars, chart, map_view, open_app, title

LABELS = [i % 4 for i in range(20)]
PAGE = "insights.py"


@pytest.fixture
def digits(tmp_path: Path, monkeypatch) -> Path:
    """A small dataset of 28×28 images, opened by the dashboard, with its own result store."""
    root = write_dataset(tmp_path / "digits", LABELS, size=28, seed=5)
    monkeypatch.setenv("CNNLENS_DATASET", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    return root


def reference(root: Path, layer: str) -> dict:
    """The layer's maps and the logits of every image, from the demo model itself."""
    dataset = load_dataset(root)
    filenames = dataset.index["filename"].tolist()
    model = demo_model()
    batch = to_batch([dataset.load_image(name) for name in filenames])
    with torch.no_grad():
        maps = model.features[: layer_names(model).index(layer) + 1](batch).numpy()
        logits = model(batch).numpy()
    return {"filenames": filenames, "maps": maps, "predicted": logits.argmax(axis=1)}


def strongest(ref: dict, channel: int, k: int, by: str = "max", among=None) -> list[int]:
    maps = ref["maps"][:, channel]
    scores = maps.max(axis=(1, 2)) if by == "max" else maps.mean(axis=(1, 2))
    order = [int(i) for i in np.argsort(-scores)]
    return [i for i in order if among is None or among[i]][:k], scores


def test_top_images_are_the_channels_strongest_and_are_stored_for_next_time(digits, monkeypatch):
    at = open_app(PAGE)
    ref = reference(digits, "conv_1")
    rows, scores = strongest(ref, 0, 12)
    _, names, values = bars(at, "conv_1, channel 0: its strongest images")
    assert names == [ref["filenames"][i] for i in rows]
    np.testing.assert_allclose(values, scores[rows], atol=1e-5)
    assert at.subheader[0].value == "The 12 images that excite channel 0 of conv_1 most"
    # One pass summarised every chosen layer and classified every image, each kept.
    assert len(list((digits.parent / "cache" / "insights").glob("*.npz"))) == 4 + 1

    passes = []
    monkeypatch.setattr(insights, "summarise", lambda *a, **k: passes.append(a))
    again = open_app(PAGE)
    assert passes == []
    assert bars(again, "conv_1, channel 0: its strongest images")[1] == names

    again.number_input(key="insights_channel").set_value(5).run()
    again.segmented_control(key="insights_rank").set_value("mean").run()
    rows, scores = strongest(ref, 5, 12, by="mean")
    assert captions(again) == [f"{ref['filenames'][i]} · {LABELS[i]}" for i in rows]
    # Their mean activations lie within 5% of each other: one line instead of a chart.
    assert scores[rows].min() > 0.95 * scores[rows].max()
    assert not [c for c in again.main.get("html") if "its strongest images" in str(c.proto)]
    low, high = scores[rows].min(), scores[rows].max()
    assert any(f"hardly differ ({low:.3g} to {high:.3g})" in c.value for c in again.caption)


def test_the_class_matrix_averages_each_label_and_a_class_shows_its_examples(digits):
    at = open_app(PAGE, layers="conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("matrix").run()
    ref = reference(digits, "conv_2")
    means = ref["maps"].mean(axis=(2, 3))
    expected = np.stack([means[np.array(LABELS) == label].mean(axis=0) for label in range(4)])
    relative = (expected - expected.mean(axis=0)) / expected.std(axis=0)
    matrix = chart(at, "matrix")["data"][0]
    assert list(matrix["y"]) == ["0", "1", "2", "3"]
    # The channels grouped by the class each prefers, strongest first within a class.
    order = np.lexsort((-relative.max(axis=0), relative.argmax(axis=0)))
    assert [int(channel) for channel in matrix["x"]] == order.tolist()
    np.testing.assert_allclose(matrix["z"], relative[:, order], atol=1e-4)
    np.testing.assert_allclose(matrix["customdata"], expected[:, order], atol=1e-5)  # hover
    at.segmented_control(key="insights_colour").set_value("mean").run()
    mean_order = np.lexsort((-expected.max(axis=0), expected.argmax(axis=0)))
    np.testing.assert_allclose(
        chart(at, "matrix")["data"][0]["z"], expected[:, mean_order], atol=1e-5
    )

    at.selectbox(key="insights_class").set_value("2").run()
    at.number_input(key="insights_channel").set_value(3).run()
    rows, _ = strongest(ref, 3, 6, among=np.array(LABELS) == 2)
    assert bars(at, "Class 2, channel 3")[1] == [ref["filenames"][i] for i in rows]

    at.segmented_control(key="insights_group").set_value("predicted").run()
    by_answer = chart(at, "matrix")["data"][0]
    classes = sorted({str(p) for p in ref["predicted"]})
    assert list(by_answer["y"]) == classes
    shown = [int(channel) for channel in by_answer["x"]]
    for row, name in enumerate(classes):
        np.testing.assert_allclose(
            by_answer["z"][row],
            means[ref["predicted"] == int(name)].mean(axis=0)[shown],
            atol=1e-5,
        )


def test_the_embedding_is_the_pca_of_channel_means_with_mistakes_marked(digits):
    at = open_app(PAGE, layers="conv_3", layer="conv_3")
    at.segmented_control(key="insights_section").set_value("embedding").run()
    assert not at.exception
    ref = reference(digits, "conv_3")
    expected = PCA(n_components=2).fit_transform(ref["maps"].mean(axis=(2, 3)))
    points = np.full((len(LABELS), 2), np.nan)
    crosses = np.zeros(len(LABELS), dtype=bool)
    for trace in chart(at, "embedding")["data"]:
        rows = np.asarray(trace["customdata"], dtype=int)
        points[rows] = np.column_stack([trace["x"], trace["y"]])
        crosses[rows] = trace["marker"]["symbol"] == "x"
        assert {LABELS[i] for i in rows} == {int(trace["legendgroup"])}
    for axis in range(2):
        sign = np.sign(points[:, axis] @ expected[:, axis])
        np.testing.assert_allclose(points[:, axis], sign * expected[:, axis], atol=1e-4)
    np.testing.assert_array_equal(crosses, ref["predicted"] != np.array(LABELS))
    assert any(f"of {len(LABELS)} images are classified wrongly" in c.value for c in at.caption)


def test_compare_shows_both_maps_and_their_difference(digits):
    at = open_app(PAGE, layers="conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("compare").run()
    at.text_input(key="compare_image").input("img_7.png").run()
    at.number_input(key="insights_channel").set_value(4).run()
    ref = reference(digits, "conv_2")
    dataset = load_dataset(digits)
    first = ref["maps"][ref["filenames"].index(dataset.pick(128)), 4]
    second = ref["maps"][ref["filenames"].index("img_7.png"), 4]
    np.testing.assert_allclose(chart(at, "compare_a")["data"][0]["z"], first, atol=1e-5)
    np.testing.assert_allclose(chart(at, "compare_b")["data"][0]["z"], second, atol=1e-5)
    for key in ("compare_a", "compare_b"):  # one colour range for both
        trace = chart(at, key)["data"][0]
        assert trace["zmin"] == pytest.approx(min(first.min(), second.min()), abs=1e-5)
        assert trace["zmax"] == pytest.approx(max(first.max(), second.max()), abs=1e-5)
    diff = chart(at, "compare_diff")["data"][0]
    np.testing.assert_allclose(diff["z"], first - second, atol=1e-5)
    assert diff["zmid"] == 0


def cancelled(*specs) -> frozenset[str]:
    """The session state the runner keeps for results cancelled by their Cancel button."""
    return frozenset(spec.key for spec in specs)


def test_a_cancelled_pass_waits_until_asked_to_go_on(digits):
    at = open_app("home.py")
    stats = LayerStatsSpec(open_model("demo"), load_dataset(digits), "conv_1")
    at.session_state["_cancelled_results"] = cancelled(stats)
    at.switch_page(str(Path(__file__).resolve().parent.parent / "pages" / PAGE)).run()
    assert any(
        i.value.startswith("Summarising conv_1") and i.value.endswith("was cancelled.")
        for i in at.info
    )
    assert not at.get("plotly_chart")
    at.button(key="insights_stats_go").click().run()
    assert not at.exception
    assert bars(at, "conv_1, channel 0: its strongest images")[1]


def test_layer_and_channel_follow_people_between_feature_maps_and_insights(digits):
    at = open_app("feature_maps.py")
    at.segmented_control(key="layer").set_value("conv_2").run()
    at.number_input(key="channel").set_value(5).run()
    at.switch_page(str(Path(__file__).resolve().parent.parent / "pages" / PAGE)).run()
    assert not at.exception and not at.error
    assert at.subheader[0].value == "The 12 images that excite channel 5 of conv_2 most"
    at.segmented_control(key="insights_layer").set_value("conv_3").run()
    at.number_input(key="insights_channel").set_value(7).run()
    at.switch_page(str(Path(__file__).resolve().parent.parent / "pages" / "feature_maps.py")).run()
    assert at.subheader[0].value == "conv_3: 64 channels of 14×14"
    assert map_view(at, "channel_map")["title"] == "conv_3, channel 7"


MANY = [i % 10 for i in range(3000)]


def select(at, key: str, selection: dict):
    """Run the page as if a box or lasso had been drawn on chart ``key`` (AppTest has no
    plotly selection of its own, so the widget state the browser would send is added)."""
    chart_id = next(c.proto.id for c in at.get("plotly_chart") if c.key == key)
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = chart_id
    full = {"points": [], "point_indices": [], "box": [], "lasso": [], **selection}
    state.string_value = json.dumps({"selection": full})
    return at._run(states)


def captions(at) -> list[str]:
    """The captions of the example crops (the first image of each pair)."""
    shown = [image.proto.imgs[0].caption for image in at.main.get("image")]
    return [caption for caption in shown if ".png" in caption]


def test_a_box_or_lasso_shows_exactly_the_images_inside_it(tmp_path, monkeypatch):
    root = write_dataset(tmp_path / "many", MANY, size=28, seed=3)
    monkeypatch.setenv("CNNLENS_DATASET", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    at = open_app(PAGE, layers="conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("embedding").run()
    points = np.full((len(MANY), 2), np.nan)
    for trace in chart(at, "embedding")["data"]:
        points[np.asarray(trace["customdata"], dtype=int)] = np.column_stack(
            [trace["x"], trace["y"]]
        )
    ref = reference(root, "conv_2")
    low, high = np.quantile(points, 0.3, axis=0), np.quantile(points, 0.7, axis=0)
    x, y = points[:, 0], points[:, 1]
    # A triangle, checked here by the side of each edge each point lies on.
    corners = np.array([[low[0], low[1]], [high[0], low[1]], [low[0], high[1]]])
    edges, offsets = np.roll(corners, -1, axis=0) - corners, points[:, None] - corners
    left = edges[:, 0] * offsets[..., 1] - edges[:, 1] * offsets[..., 0] > 0  # N×3
    cases = {
        "box": (
            {"box": [{"x": [high[0], low[0]], "y": [low[1], high[1]]}]},
            (x >= low[0]) & (x <= high[0]) & (y >= low[1]) & (y <= high[1]),
        ),
        "lasso": (
            {"lasso": [{"x": list(corners[:, 0]), "y": list(corners[:, 1])}]},
            left.all(axis=1),
        ),
        "points": (
            {"points": [{"customdata": 5}, {"customdata": [17]}]},
            np.isin(np.arange(len(MANY)), [5, 17]),
        ),
    }
    for name, (selection, inside) in cases.items():
        select(at, "embedding", selection)
        assert not at.exception, name
        rows, _ = strongest(ref, 0, 12, among=inside)
        assert 2 <= inside.sum() < len(MANY) and len(rows) == min(12, inside.sum()), name
        assert any(f"{int(inside.sum()):,} images chosen" in h.value for h in at.subheader), name
        assert captions(at) == [f"{ref['filenames'][i]} · {MANY[i]}" for i in rows], name


def test_tsne_runs_on_the_page_and_a_cancelled_one_waits_until_asked(digits):
    at = open_app(PAGE, layers="conv_3", layer="conv_3")
    at.segmented_control(key="insights_section").set_value("embedding").run()
    tsne = EmbeddingSpec(LayerStatsSpec(open_model("demo"), load_dataset(digits), "conv_3"), "tsne")
    at.session_state["_cancelled_results"] = cancelled(tsne)
    at.segmented_control(key="insights_method").set_value("tsne").run()
    assert any("Making the t-SNE map was cancelled" in i.value for i in at.info)
    assert not [c for c in at.get("plotly_chart") if c.key == "embedding"]
    at.button(key="insights_embedding_go").click().run()
    assert not at.exception
    stats = insights.layer_stats(open_model("demo"), load_dataset(digits), "conv_3")
    expected = embedding(stats, method="tsne", seed=0)
    points = np.full((len(LABELS), 2), np.nan)
    for trace in chart(at, "embedding")["data"]:
        points[np.asarray(trace["customdata"], dtype=int)] = np.column_stack(
            [trace["x"], trace["y"]]
        )
    np.testing.assert_allclose(points, expected, atol=1e-4)
    assert "(t-SNE)" in title(chart(at, "embedding"))


def test_compare_takes_a_typed_name_or_another_random_pick(digits):
    at = open_app(PAGE, layers="conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("compare").run()
    dataset = load_dataset(digits)
    assert at.text_input(key="compare_image").value == dataset.pick(129)
    at.button(key="compare_random").click().run()
    assert at.text_input(key="compare_image").value == dataset.pick(130)
    shown = [image.proto.imgs[0].caption for image in at.main.get("image")]
    assert f"Second: {dataset.pick(130)} · label {dataset.label_of(dataset.pick(130))}" in shown
    at.text_input(key="compare_image").input("nope.png").run()
    assert "has no image 'nope.png' in its train split" in at.error[0].value
    assert not [c for c in at.get("plotly_chart") if c.key == "compare_b"]


def test_tsne_and_a_classification_pass_on_one_page_show_no_traceback(digits):
    # The layer's statistics were made without the answers (from the Python API, or
    # before the labels matched): t-SNE and the classification pass each run with
    # their own progress and Cancel, and neither's button clashes with the other's.
    loaded, dataset = open_model("demo"), load_dataset(digits)
    ResultStore(digits.parent / "cache" / "insights").run(LayerStatsSpec(loaded, dataset, "conv_3"))
    at = open_app(PAGE, layers="conv_3", layer="conv_3")
    at.segmented_control(key="insights_section").set_value("embedding").run()
    assert at.toggle(key="insights_mark").value
    at.segmented_control(key="insights_method").set_value("tsne").run()
    assert not at.exception, at.exception
    answers = insights.predict_split(loaded, dataset)
    wrong = int(answers.misclassified.sum())
    assert any(
        f"{wrong:,} of {len(LABELS):,} images are classified wrongly" in c.value for c in at.caption
    )


def test_answers_that_cannot_be_judged_are_not_computed_to_mark_mistakes(tmp_path, monkeypatch):
    # Labels that name none of the model's classes (here: letters for a digit model).
    root = write_dataset(tmp_path / "letters", ["a", "b", "c", "d"] * 3, size=28, seed=2)
    monkeypatch.setenv("CNNLENS_DATASET", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    passes = []
    real = insights.summarise
    monkeypatch.setattr(
        insights,
        "summarise",
        lambda *a, **k: passes.append(k.get("with_predictions")) or real(*a, **k),
    )
    at = open_app(PAGE, layers="conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("embedding").run()
    assert not at.exception
    mark = at.toggle(key="insights_mark")
    assert not mark.value and mark.disabled
    assert "name none of the network's classes" in mark.help
    assert passes == [False]  # one pass, with no classification


def test_a_chart_of_scores_that_hardly_differ_is_left_out():
    from cnnlens.ui.insights.focus import scores_differ

    assert scores_differ(np.array([1.0, 0.9, 0.5]))
    assert not scores_differ(np.array([1.0, 0.99, 0.97, 0.96]))  # within 5% of the top
    assert not scores_differ(np.array([0.3]))
    assert scores_differ(np.array([-1.0, -2.0]))
