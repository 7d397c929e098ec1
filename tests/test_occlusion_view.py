"""The occlusion view's data: what the "Where it looks" page sends the browser for the square
a person drags. Expected values come from the scores (softmax of their logits), not from
the view."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlens import figures
from cnnlens.registry import DEMO_INPUT, InputSpec
from cnnlens.ui import occlusion_view
from cnnlens.ui.occlusion_view import (
    PROBABILITY_STEPS,
    occlusion_view_data,
    square_fill,
)

STEP = 1 / PROBABILITY_STEPS


@dataclass(frozen=True)
class Scores:
    """The fields of ``cnnlens.attribution.OcclusionScores`` that the view reads."""

    window: int
    stride: int
    tops: np.ndarray
    logits: np.ndarray
    base: np.ndarray

    def probabilities(self) -> np.ndarray:
        return softmax(self.logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def grid_tops(side: int, window: int, stride: int) -> np.ndarray:
    starts = range(0, side - window + 1, stride)
    return np.array([(r, c) for r in starts for c in starts])


def random_scores(seed: int = 0, side: int = 12, window: int = 4, stride: int = 2) -> Scores:
    rng = np.random.default_rng(seed)
    tops = rng.permutation(grid_tops(side, window, stride))  # any order of positions
    logits = rng.normal(0, 3, (len(tops), 10)).astype(np.float32)
    return Scores(window, stride, tops, logits, rng.normal(0, 3, 10).astype(np.float32))


def table_of(data: dict) -> np.ndarray:
    """The probabilities sent, positions × classes, in grid order (row by row)."""
    raw = np.frombuffer(base64.b64decode(data["table"]), "<u2")
    places = len(data["rows"]) * len(data["cols"])
    return raw.reshape(places, len(data["classes"])) / data["steps"]


def test_the_table_sent_is_the_softmax_of_the_scores_at_each_position():
    scores = random_scores()
    pixels = np.random.default_rng(1).integers(0, 256, (12, 12), dtype=np.uint8)
    classes = [f"class {k}" for k in range(10)]
    data = occlusion_view_data(pixels, scores, classes, top=4)
    assert json.loads(json.dumps(data)) == data  # JSON-ready
    assert (data["window"], data["stride"], data["height"], data["width"]) == (4, 2, 12, 12)
    assert data["rows"] == data["cols"] == [0, 2, 4, 6, 8]
    expected = softmax(scores.logits.astype(np.float64))
    shown = [classes.index(name) for name in data["classes"]]
    table = table_of(data)
    for i, row in enumerate(data["rows"]):
        for j, col in enumerate(data["cols"]):
            position = np.flatnonzero((scores.tops == (row, col)).all(axis=1))[0]
            got = table[i * len(data["cols"]) + j]
            np.testing.assert_allclose(got, expected[position, shown], atol=STEP / 2 + 1e-7)
    base = softmax(scores.base.astype(np.float64))
    np.testing.assert_allclose(data["base"], base[shown], atol=1e-5)
    # The image is sent as the network sees it.
    png = base64.b64decode(data["image"].removeprefix("data:image/png;base64,"))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)


def test_the_classes_shown_are_the_answer_then_those_the_square_makes_likely():
    tops = grid_tops(6, 2, 2)
    logits = np.zeros((len(tops), 6), np.float32)
    logits[:, 0] = 5.0  # the answer, everywhere but at one place
    logits[4, 0], logits[4, 5] = 0.0, 9.0  # covering the middle makes class 5 the answer
    logits[:, 3] = 1.0
    base = np.array([6.0, 1.0, 0.5, 2.0, 3.0, -1.0], np.float32)
    scores = Scores(2, 2, tops, logits, base)
    data = occlusion_view_data(np.zeros((6, 6), np.uint8), scores, list("abcdef"), top=3)
    # a (the answer), f (which covering the middle makes likely) and e (the next without
    # the square, 0.05): d (0.02 at most) is left out.
    assert data["answer"] == "a" and data["classes"] == ["a", "f", "e"]
    middle = table_of(data)[1 * 3 + 1]
    assert middle[1] > 0.98 and middle[0] < 0.01
    everything = occlusion_view_data(np.zeros((6, 6), np.uint8), scores, list("abcdef"), top=99)
    assert everything["classes"] == ["a", "f", "e", "d", "b", "c"]
    assert occlusion_view_data(np.zeros((6, 6)), scores, list("abcdef"), top=1)["classes"] == ["a"]


def test_a_small_image_is_shown_large_and_the_colours_are_the_projects():
    data = occlusion_view_data(np.zeros((12, 12, 3), np.uint8), random_scores(), list("0123456789"))
    assert data["display"] % 12 == 0 and 224 <= data["display"] <= 480
    digit = Scores(7, 1, grid_tops(28, 7, 1), np.zeros((484, 10)), np.zeros(10))
    assert (
        occlusion_view_data(np.zeros((28, 28), np.uint8), digit, list("0123456789"))["display"]
        == 28 * 12
    )
    photo = Scores(48, 16, grid_tops(224, 48, 16), np.zeros((144, 3)), np.zeros(3))
    assert (
        224 <= occlusion_view_data(np.zeros((224, 224, 3), np.uint8), photo, "abc")["display"] < 448
    )
    colours = data["colours"]
    assert (colours["bar"], colours["answer"]) == (figures.BAR_COLOUR, figures.HIGHLIGHT_COLOUR)
    ramp = figures.colorscale_colours(figures.DIVERGING, 11)  # blue for a drop, red for a rise
    assert (colours["down"], colours["up"]) == (ramp[1], ramp[-2])
    assert (data["fill"], data["square"]) == ("rgb(128, 128, 128)", "Grey square")
    assert data["fill_words"] == "the dataset's mean colour"
    filled = occlusion_view_data(np.zeros((12, 12)), random_scores(), "0123456789", fill=(1, 2, 3))
    assert filled["fill"] == "rgb(1, 2, 3)"


def test_the_square_is_filled_with_zero_of_the_normalised_space():
    assert square_fill(DEMO_INPUT) == (0, 0, 0)  # the demo takes its pixels as they are
    imagenet = InputSpec("RGB", (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert square_fill(imagenet) == (124, 116, 104)
    gray = InputSpec("L", (28, 28), (0.1307,), (0.3081,))
    assert square_fill(gray) == (33, 33, 33)


def test_scores_that_do_not_fit_are_refused_with_the_reason():
    scores = random_scores()
    pixels = np.zeros((12, 12), np.uint8)
    with pytest.raises(ValueError, match="not a full grid"):
        occlusion_view_data(
            pixels, Scores(4, 2, scores.tops[1:], scores.logits[1:], scores.base), "0123456789"
        )
    with pytest.raises(ValueError, match="3 class names were given for 10"):
        occlusion_view_data(pixels, scores, ["a", "b", "c"])
    with pytest.raises(ValueError, match="top must be at least 1"):
        occlusion_view_data(pixels, scores, "0123456789", top=0)
    with pytest.raises(ValueError, match="reaches past the image"):
        occlusion_view_data(np.zeros((10, 10), np.uint8), scores, "0123456789")


def test_the_component_files_are_there():
    """The page draws it (tests/test_where_it_looks.py); here, its files."""
    folder = Path(occlusion_view.__file__).parent
    script = (folder / "occlusion_view.js").read_text(encoding="utf-8")
    assert "export default function" in script
    assert "drag it over the image" in script and "aria-label" in script
    assert '"square"' in script and "pointerdown" in script and "ArrowLeft" in script
    assert ".cnnlens-occ-square" in (folder / "occlusion_view.css").read_text(encoding="utf-8")


def test_the_demo_digits_table_from_the_core_is_sent_as_it_is():
    from cnnlens import demo_dataset, open_model
    from cnnlens.attribution import occlusion_scores
    from cnnlens.preprocess import to_uint8_image

    loaded = open_model("demo")
    dataset = demo_dataset()
    batch = loaded.batch(dataset.load_image(dataset.pick(128), "L", "train"))
    scores = occlusion_scores(loaded, batch, window=7, stride=1)
    pixels = to_uint8_image(batch, loaded.spec)
    data = occlusion_view_data(pixels, scores, loaded.classes, fill=square_fill(loaded.spec))
    assert data["rows"] == data["cols"] == list(range(22)) and data["window"] == 7
    expected = softmax(scores.logits.astype(np.float64))  # grid order is the core's here
    shown = [loaded.classes.index(name) for name in data["classes"]]
    np.testing.assert_allclose(table_of(data), expected[:, shown], atol=STEP / 2 + 1e-6)
    assert data["answer"] == loaded.classes[int(np.argmax(scores.base))]
    assert (data["fill"], data["square"]) == ("rgb(0, 0, 0)", "Black square")  # 0 is black
    assert data["display"] >= 224
    assert len(json.dumps(data)) < 16_000  # a 28-pixel digit and 484 places: small
