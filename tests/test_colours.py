"""The one colour convention on the Insights page (Compare, classes × channels),
through AppTest: signed values white at zero, others from dark at zero, overlays
see-through at zero. Expected colours come from independent references (CIELAB
lightness, RdBu's white), the values from the demo model run here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnlens.figures import MapColours
from tests.generated import write_dataset
from tests.test_app import chart, open_app
from tests.test_figures import WHITE, rgba_stops
from tests.test_insights_page import LABELS, PAGE, reference


@pytest.fixture
def digits(tmp_path: Path, monkeypatch) -> Path:
    """A small dataset of 28×28 images, opened by the dashboard, with its own result store."""
    root = write_dataset(tmp_path / "digits", LABELS, size=28, seed=5)
    monkeypatch.setenv("CNNLENS_DATASET", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    return root


def colour_at(trace: dict, value: float) -> np.ndarray:
    """The RGBA colour a heatmap trace gives ``value``: its stop there, found exactly."""
    places, colours = rgba_stops(trace["colorscale"])
    place = (value - trace["zmin"]) / (trace["zmax"] - trace["zmin"])
    hit = np.flatnonzero(np.isclose(places, place, atol=1e-9))
    assert hit.size, f"no stop at {value} (place {place})"
    return colours[hit[0]]


def test_compare_colours_both_maps_on_one_signed_scale_and_the_difference_white_at_zero(digits):
    at = open_app(PAGE, layers="conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("compare").run()
    at.text_input(key="compare_image").input("img_7.png").run()
    first, second = (chart(at, key)["data"][0] for key in ("compare_a", "compare_b"))
    assert first["colorscale"] == second["colorscale"]  # one scale: equal colours, equal values
    for trace in (first, second):
        assert tuple(colour_at(trace, 0.0)[:3]) == WHITE  # conv_2 comes before its ReLU
    diff = chart(at, "compare_diff")["data"][0]
    assert diff["zmin"] == -diff["zmax"] and tuple(colour_at(diff, 0.0)[:3]) == WHITE


def test_the_class_matrix_is_white_at_zero_when_relative_and_by_the_rule_for_means(digits):
    at = open_app(PAGE, layers="conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("matrix").run()
    relative = chart(at, "matrix")["data"][0]
    assert tuple(colour_at(relative, 0.0)[:3]) == WHITE
    at.segmented_control(key="insights_colour").set_value("mean").run()
    means = chart(at, "matrix")["data"][0]
    per_image = reference(digits, "conv_2")["maps"].mean(axis=(2, 3))
    labels = np.array(LABELS)
    by_class = np.stack([per_image[labels == label].mean(axis=0) for label in set(LABELS)])
    signed = bool((by_class < 0).any())  # a channel that averages below zero on a class
    low, high = float(means["z"].min()), float(means["z"].max())
    expected = MapColours(signed).plotly(low, high)
    assert means["colorscale"] == expected["colorscale"]
    if signed and low < 0 < high:
        assert tuple(colour_at(means, 0.0)[:3]) == WHITE
