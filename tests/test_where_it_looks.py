"""The Where it looks page through AppTest: each card shows the core's map, checks and
layer for the current image; the class and layer choices reach the core; the square and
the dataset table show the core's numbers; a model's bad layer is said in its card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnlens.attribution import CAM_METHODS, METHODS, attribute
from cnnlens.data import load_dataset
from cnnlens.faithfulness_metrics import FaithfulnessSpec, most_faithful
from cnnlens.method_report import MethodChecksSpec, MethodMapSpec, OcclusionSpec, drag_grid
from cnnlens.models import open_model
from cnnlens.store import ResultStore
from tests.generated import write_dataset
from tests.test_app import open_app

LABELS = [i % 4 for i in range(12)]
PAGE = "where_it_looks.py"


@pytest.fixture
def digits(tmp_path: Path, monkeypatch) -> Path:
    """A small dataset of 28×28 images, opened by the dashboard, with its own result store."""
    root = write_dataset(tmp_path / "digits", LABELS, size=28, seed=5)
    monkeypatch.setenv("CNNLENS_DATASET", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    return root


def shown(root: Path) -> tuple[np.ndarray, object]:
    """The pixels of the image the page shows (the seeded pick) and the demo model."""
    dataset = load_dataset(root)
    return np.asarray(dataset.load_image(dataset.pick(128)).convert("L")), open_model("demo")


def store(root: Path) -> ResultStore:
    return ResultStore(root.parent / "cache" / "insights")


def test_every_method_shows_the_cores_map_layer_and_checks_of_the_current_image(digits):
    at = open_app(PAGE)
    pixels, loaded = shown(digits)
    batch = loaded.batch(pixels)
    kept = store(digits)
    captions = [c.value for c in at.caption]
    badges = [*at.warning, *at.success]
    assert len(badges) == len(METHODS)
    for method in METHODS:
        found = kept.peek(MethodMapSpec(loaded, pixels, method))
        assert found is not None, method  # the page computed this image's map
        expected = attribute(loaded, batch, method)
        np.testing.assert_allclose(found.map, expected, rtol=1e-5, atol=1e-6)
        assert found.target == int(loaded.probabilities(batch)[0].argmax())
        checks = kept.peek(MethodChecksSpec(loaded, MethodMapSpec(loaded, pixels, method)))
        line = (
            f"Deletion {checks.deletion:.2f} (lower is better) · "
            f"insertion {checks.insertion:.2f} (higher is better)"
        )
        assert line in captions, method
        assert any(f"ρ {checks.randomised:.2f}" in b.value for b in badges), method
    assert captions.count("Layer relu_4.") == len(CAM_METHODS)
    flagged = sum(
        kept.peek(MethodChecksSpec(loaded, MethodMapSpec(loaded, pixels, m))).shows_image
        for m in METHODS
    )
    assert len(at.warning) == flagged
    assert all(w.value.startswith("Shows the image more than the model") for w in at.warning)


def test_a_layer_before_its_relu_and_another_class_reach_the_core_and_are_said(digits):
    at = open_app(PAGE, layers="conv_1,conv_4")
    at.pills(key="looks_methods").set_value(["gradcam", "saliency"]).run()
    at.selectbox(key="looks_layer").set_value("conv_4").run()
    at.selectbox(key="looks_class").set_value(7).run()
    assert not at.exception
    pixels, loaded = shown(digits)
    found = store(digits).peek(MethodMapSpec(loaded, pixels, "gradcam", layer="conv_4", target=7))
    assert found is not None and found.target == 7 and found.layer == "relu_4"
    reference = attribute(loaded, loaded.batch(pixels), "gradcam", layer="relu_4", target=7)
    np.testing.assert_allclose(found.map, reference, rtol=1e-5, atol=1e-6)
    note = "conv_4 is taken before its activation, so its rectified output relu_4 is used."
    assert f"Layer relu_4. {note}" in [c.value for c in at.caption]
    assert len(at.warning) + len(at.success) == 2  # only the two chosen methods


def test_the_square_sends_the_cores_probabilities_for_every_place(digits):
    at = open_app(PAGE)
    at.segmented_control(key="looks_section").set_value("square").run()
    pixels, loaded = shown(digits)
    window, stride = drag_grid(28)
    assert (window, stride) == (7, 1)
    scores = store(digits).peek(OcclusionSpec(loaded, pixels, window, stride))
    assert scores is not None and len(scores.tops) == (28 - 7 + 1) ** 2
    views = [e for e in at.get("bidi_component") if e.proto.id.endswith("-looks_square_view")]
    data = json.loads(views[0].proto.json)
    answer = loaded.classes[int(scores.base.argmax())]
    assert data["answer"] == answer and data["window"] == 7
    assert data["base"][0] == pytest.approx(_softmax(scores.base).max(), abs=1e-4)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def test_the_dataset_table_measures_the_chosen_methods_and_names_the_most_faithful(digits):
    at = open_app(PAGE)
    at.segmented_control(key="looks_section").set_value("dataset").run()
    at.multiselect(key="looks_table_methods").set_value(["gradcam", "saliency"]).run()
    at.selectbox(key="looks_table_images").set_value(100).run()
    at.button(key="looks_table_start").click().run()
    assert not at.exception, at.exception
    loaded, dataset = open_model("demo"), load_dataset(digits)
    results = {
        m: store(digits).peek(FaithfulnessSpec(loaded, dataset, m, images=100))
        for m in ("gradcam", "saliency")
    }
    assert all(len(r) == len(LABELS) for r in results.values())  # every image of the split
    assert at.success[0].value == most_faithful(results)
    table = at.dataframe[0].value
    by_method = dict(zip(table["method"], table["deletion (lower is better)"], strict=True))
    assert by_method["Grad-CAM"] == pytest.approx(results["gradcam"].mean_deletion)
    assert by_method["Saliency"] == pytest.approx(results["saliency"].mean_deletion)


def test_a_layer_without_maps_is_said_in_its_card_and_the_page_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    at = open_app(PAGE, model="resnet18", weights="random", layers="layer4,fc")
    at.pills(key="looks_methods").set_value(["gradcam"]).run()
    at.selectbox(key="looks_layer").set_value("fc").run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "fc has no feature maps (its output has shape (1, 1000)), so a CAM has nothing to "
        "weigh: choose a convolutional layer, or leave layer=None for the last convolutional "
        "block."
    ]
    at.selectbox(key="looks_layer").set_value("automatic").run()
    assert not at.error and "Layer layer4." in [c.value for c in at.caption]
