"""One method on one image as results the store keeps: what their keys hold, that they
equal the core's functions, and that a stop keeps nothing."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlens import demo_dataset, open_model
from cnnlens.attribution import attribute, occlusion_scores
from cnnlens.faithfulness_metrics import faithfulness
from cnnlens.method_report import (
    MethodChecksSpec,
    MethodMapSpec,
    OcclusionSpec,
    drag_grid,
)
from cnnlens.results import Cancelled
from cnnlens.sanity import sanity_check
from cnnlens.store import ResultStore


@pytest.fixture(scope="module")
def demo():
    loaded, dataset = open_model("demo"), demo_dataset()
    pixels = np.asarray(dataset.load_image(dataset.pick(128)))
    return loaded, pixels, np.asarray(dataset.load_image(dataset.pick(7)))


def test_the_key_holds_the_image_method_layer_and_class(demo):
    loaded, pixels, other = demo
    base = MethodMapSpec(loaded, pixels, "gradcam")
    assert base.key == MethodMapSpec(loaded, pixels.copy(), "gradcam").key
    changed = [
        MethodMapSpec(loaded, other, "gradcam"),
        MethodMapSpec(loaded, pixels, "layercam"),
        MethodMapSpec(loaded, pixels, "gradcam", layer="relu_3"),
        MethodMapSpec(loaded, pixels, "gradcam", target=3),
    ]
    assert len({base.key, *(spec.key for spec in changed)}) == 5
    # A layer is one key part whichever name it was asked by.
    assert MethodMapSpec(loaded, pixels, "gradcam", layer="relu_4").key == (
        MethodMapSpec(loaded, pixels, "gradcam", layer=loaded.layers.path("relu_4")).key
    )
    with pytest.raises(ValueError, match="gradcam, gradcam\\+\\+, xgradcam"):
        MethodMapSpec(loaded, pixels, "guided_backprop").key  # noqa: B018


def test_map_and_checks_equal_the_core_functions(demo, tmp_path):
    loaded, pixels, _ = demo
    store = ResultStore(tmp_path)
    spec = MethodMapSpec(loaded, pixels, "gradcam", layer="conv_4", target=2)
    checks = store.run(MethodChecksSpec(loaded, spec))  # makes the map first
    found = store.peek(spec)
    batch = loaded.batch(pixels)
    reference = attribute(loaded, batch, "gradcam", layer="conv_4", target=2)
    np.testing.assert_array_equal(found.map, reference)
    assert (found.layer, found.target) == ("relu_4", 2) and "before its activation" in found.note
    for metric, area in (("deletion", checks.deletion), ("insertion", checks.insertion)):
        assert area == pytest.approx(faithfulness(loaded, batch, reference, metric, target=2).area)
    steps = sanity_check(loaded, batch, "gradcam", layer="relu_4", target=2, cascade=False)
    assert checks.randomised == pytest.approx(steps[-1].correlation)
    assert checks.shows_image == (steps[-1].correlation >= 0.5)


def test_the_square_grid_and_its_scores(demo, tmp_path):
    loaded, pixels, _ = demo
    assert drag_grid(28) == (7, 1) and drag_grid(224) == (56, 18)
    scores = ResultStore(tmp_path).run(OcclusionSpec(loaded, pixels, 7, 1))
    reference = occlusion_scores(loaded, loaded.batch(pixels), window=7, stride=1)
    np.testing.assert_array_equal(scores.logits, reference.logits)
    assert len(scores.tops) == 22 * 22


def test_a_stopped_score_cam_keeps_nothing(demo, tmp_path):
    loaded, pixels, _ = demo
    store = ResultStore(tmp_path)
    spec = MethodMapSpec(loaded, pixels, "scorecam")
    with pytest.raises(Cancelled):
        store.run(spec, should_stop=lambda: True)
    assert store.peek(spec) is None
