"""The drawing pad in the dashboard (AppTest): on by default for the demo, every view
follows a stroke, the link and the recipe keep the drawing, bad drawings get a message."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnlens import build_lens, demo_model, to_batch
from cnnlens.drawing import SAMPLE, Drawing, drawing_pixels
from cnnlens.export import Recipe
from cnnlens.registry import DEMO_INPUT, model_info
from cnnlens.ui import state
from tests.test_app import bars, map_view, open_app

LINE = Drawing.of([[[128, 30], [128, 226]]])  # a vertical line: a 1


def pad(at: AppTest, key: str = "pad") -> dict:
    """What the pad with this key was sent, with ``seen`` decoded (None without it)."""
    found = [e for e in at.get("bidi_component") if e.proto.id.endswith(f"-{key}")]
    assert found, f"no pad {key!r}"
    data = json.loads(found[0].proto.json)
    seen = data["seen"]
    data["seen"] = (
        None if seen is None else np.asarray(Image.open(io.BytesIO(base64.b64decode(seen))))
    )
    return data


def draw(at: AppTest, drawing: Drawing | list, key: str = "pad") -> AppTest:
    """Run the page as if the pad had sent this drawing at a stroke's end, as the browser does."""
    element = next(e for e in at.get("bidi_component") if e.proto.id.endswith(f"-{key}"))
    strokes = (
        drawing if isinstance(drawing, list) else [list(map(list, s)) for s in drawing.strokes]
    )
    width = drawing.width if isinstance(drawing, Drawing) else 22
    states = at._tree.get_widget_states()
    widget = states.widgets.add()
    widget.id = element.proto.id
    widget.json_value = json.dumps({"drawing": {"strokes": strokes, "width": width}})
    at._run(states)
    assert not at.exception, at.exception
    return at


def lens_on(pixels: np.ndarray, layer: str) -> np.ndarray:
    return build_lens(demo_model(), [layer])(to_batch(pixels))[layer][0].numpy()


def test_the_demo_opens_on_the_pad_with_a_sample_digit():
    at = open_app("feature_maps.py", input=None)
    data = pad(at)
    assert data["strokes"] == [[list(point) for point in SAMPLE.strokes[0]]]
    expected = drawing_pixels(SAMPLE, DEMO_INPUT)
    np.testing.assert_array_equal(data["seen"], expected)
    assert data["seen_title"] == "What the network sees: 28×28"
    assert bars(at, "The network says:")[0].startswith("The network says: 3")
    layer = at.session_state[state.LAYER_KEY]
    np.testing.assert_allclose(map_view(at, "grid")["maps"], lens_on(expected, layer), atol=1e-5)


def test_a_stroke_updates_the_answer_the_grid_the_channel_and_the_link():
    at = open_app("feature_maps.py", input=None)
    draw(at, LINE)
    pixels = drawing_pixels(LINE, DEMO_INPUT)
    np.testing.assert_array_equal(pad(at)["seen"], pixels)
    assert bars(at, "The network says:")[0].startswith("The network says: 1 (")
    layer, channel = at.session_state[state.LAYER_KEY], at.session_state[state.CHANNEL_KEY]
    maps = lens_on(pixels, layer)
    np.testing.assert_allclose(map_view(at, "grid")["maps"], maps, atol=1e-5)
    np.testing.assert_allclose(map_view(at, "channel_map")["maps"][0], maps[channel], atol=1e-5)
    assert at.query_params["input"] == "draw"
    assert at.query_params["drawing"] == LINE.encode()
    assert not at.warning  # the same weights: no notice
    assert "seed" not in at.query_params and "image" not in at.query_params


def test_a_link_reopens_the_drawing_and_a_link_to_an_image_opens_the_image():
    at = open_app("feature_maps.py", input="draw", drawing=LINE.encode())
    assert pad(at)["strokes"] == [[[128, 30], [128, 226]]]
    assert bars(at, "The network says:")[0].startswith("The network says: 1")
    at = open_app("feature_maps.py", input=None, seed="7")
    assert not [e for e in at.get("bidi_component") if e.proto.id.endswith("-pad")]
    assert at.session_state[state.INPUT_KEY] == "image"


def test_a_damaged_drawing_in_a_link_falls_back_with_a_notice():
    at = open_app("feature_maps.py", input="draw", drawing="AQ")
    assert any("drawing='AQ'" in w.value for w in at.warning)
    assert pad(at)["strokes"] == [[list(point) for point in SAMPLE.strokes[0]]]


@pytest.mark.parametrize(
    ("strokes", "words"),
    [
        ([], "The pad is empty: draw a digit on it."),
        ([[[120, 120]]], "That is a dot, not a digit"),
        ([[[x, y] for x in range(0, 256, 15)] for y in range(0, 256, 12)], "Ink covers"),
    ],
)
def test_a_drawing_with_no_digit_gets_a_plain_message_and_no_maps(strokes, words):
    at = open_app("feature_maps.py", input=None)
    draw(at, strokes)
    assert not at.error
    assert any(words in info.value for info in at.info), [i.value for i in at.info]
    assert not [e for e in at.get("bidi_component") if e.proto.id.endswith("-grid")]
    assert pad(at)["seen"] is None
    draw(at, LINE)  # and the next stroke brings everything back
    assert bars(at, "The network says:")[0].startswith("The network says: 1")


def test_what_the_pad_cannot_hold_keeps_the_drawing_before_it():
    at = open_app("feature_maps.py", input=None)
    draw(at, LINE)
    draw(at, [[[300, 3]]])  # off the pad: a page that was tampered with
    assert "off the 256×256 pad" in pad(at)["note"]
    assert at.session_state[state.DRAWING_KEY] == LINE.encode()
    assert bars(at, "The network says:")[0].startswith("The network says: 1")


def test_switching_to_an_image_and_back_keeps_the_drawing():
    at = open_app("feature_maps.py", input=None)
    draw(at, LINE)
    at.segmented_control(key="input_feature_maps").set_value("image").run()
    assert not at.exception
    assert at.session_state[state.INPUT_KEY] == "image"
    assert "seed" in at.query_params
    at.segmented_control(key="input_feature_maps").set_value("draw").run()
    assert pad(at)["strokes"] == [[[128, 30], [128, 226]]]


def test_the_network_page_follows_the_pen():
    at = open_app("network.py", input=None)
    draw(at, LINE, key="network_pad")
    scores = next(h.value for h in at.html if "data-class" in h.value)
    first = re.search(r'data-class="([^"]*)" data-probability="([^"]*)"', scores)
    assert first.group(1) == "1" and float(first.group(2)) > 0.9
    pixels = drawing_pixels(LINE, DEMO_INPUT)
    np.testing.assert_array_equal(pad(at, "network_pad")["seen"], pixels)
    np.testing.assert_allclose(map_view(at, "network_input")["maps"][0], pixels / 255.0, atol=1e-6)
    draw(at, [], key="network_pad")
    assert any("The pad is empty" in info.value for info in at.info)
    assert not at.error


def test_the_recipe_keeps_the_drawing():
    recipe = Recipe(
        dataset="d", split="train", seed=1, image="a.png", model="demo", weights_id="w",
        layers=("conv_1",), layer="conv_1", channel=0, norm="channel", drawing=LINE.encode(),
    )  # fmt: skip
    assert Recipe.from_json(recipe.to_json()) == recipe
    old = json.loads(recipe.to_json())
    del old["drawing"]  # a recipe saved before the pad opens on its image
    assert Recipe.from_json(json.dumps(old)).drawing is None
    with pytest.raises(ValueError, match="drawing: This is not a drawing"):
        Recipe.from_json(json.dumps({**old, "drawing": "AQ"}))


def test_a_colour_model_starts_on_its_image_and_may_take_a_drawing_black_on_white():
    query = {"model": "resnet18", "weights": "random", "layers": "layer1", "layer": "layer1"}
    at = open_app("feature_maps.py", input=None, **query)
    assert not [e for e in at.get("bidi_component") if e.proto.id.endswith("-pad")]
    at.segmented_control(key="input_feature_maps").set_value("draw").run()
    assert not at.exception
    data = pad(at)
    assert (data["ink"], data["paper"]) == ("#000000", "#ffffff")
    assert data["seen"].shape == (224, 224, 3)
    np.testing.assert_array_equal(data["seen"], drawing_pixels(SAMPLE, model_info("resnet18").spec))


def test_opening_a_recipe_with_a_drawing_shows_it_on_the_pad():
    from cnnlens import demo_dataset, open_model

    at = open_app("feature_maps.py", seed="7")  # on a dataset image
    recipe = Recipe(
        dataset=str(demo_dataset().root), split="train", seed=7, image=demo_dataset().pick(7),
        model="demo", weights_id=open_model("demo").weights_id, layers=("conv_1", "conv_2"),
        layer="conv_2", channel=3, norm="channel", drawing=LINE.encode(),
    )  # fmt: skip
    upload = at.file_uploader(key="recipe_widget")
    upload.set_value(("view.json", recipe.to_json().encode(), "application/json")).run()
    assert not at.exception
    assert pad(at)["strokes"] == [[[128, 30], [128, 226]]]
    assert bars(at, "The network says:")[0].startswith("The network says: 1")
    assert at.query_params["drawing"] == LINE.encode()
    assert not at.warning  # the same weights: no notice


@pytest.mark.parametrize(
    "page",
    ["home.py", "dataset.py", "layers.py", "network.py", "where_it_looks.py", "insights.py"],
)
def test_every_page_follows_the_drawing_and_an_empty_pad_is_no_fault(page):
    at = open_app(page, input="draw", drawing=LINE.encode())
    assert not at.error
    at = open_app(page, input="draw", drawing="")
    assert not at.exception and not at.error
    if page in ("network.py", "where_it_looks.py"):
        assert any("The pad is empty" in info.value for info in at.info)


def test_home_leads_a_person_who_chose_images_back_to_the_pad():
    at = open_app(None, input="image")
    [draw_button] = [b for b in at.button if b.label.startswith("Draw a digit")]
    draw_button.click().run()
    assert not at.exception
    assert at.session_state[state.INPUT_KEY] == "draw"
    assert pad(at)["strokes"] == [[list(point) for point in SAMPLE.strokes[0]]]


def test_a_colour_model_has_no_draw_button_on_home():
    at = open_app(None, input=None, model="resnet18", weights="random")
    assert not [b for b in at.button if b.label.startswith("Draw a digit")]
