"""The Network page through AppTest: its thumbnails, its graph, and a click to Feature maps.

Expected values come from the core (the lens, ``architecture_dot``), never from the app.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnlens import build_lens, demo_dataset, demo_model, open_model, to_batch
from cnnlens.figures import MapColours, colorscale_colours
from cnnlens.network import architecture_dot, overview
from cnnlens.ui import network_view, state
from tests.test_app import click, map_view

APP = str(Path(__file__).resolve().parent.parent / "dashboard.py")
PAGES = Path(__file__).resolve().parent.parent / "pages"
DATASET = demo_dataset()
DEMO_LAYERS = [
    "conv_1", "relu_1", "conv_2", "relu_2", "pool_2",
    "conv_3", "relu_3", "conv_4", "relu_4", "pool_4",
]  # fmt: skip


def open_page(page: str, **query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    for key, value in {"input": "image", **query}.items():  # the dataset's image, not the pad
        at.query_params[key] = value
    at.switch_page(str(PAGES / page))
    at.run()
    assert not at.exception, at.exception
    return at


def shown_image(at: AppTest) -> Image.Image:
    """The dataset image the page shows (its caption starts with the file name)."""
    caption = at.main.get("image")[0].proto.imgs[0].caption
    return DATASET.load_image(caption.split(" · ")[0], "L", "train")


def strongest(maps: np.ndarray, count: int = 16) -> np.ndarray:
    """The channels with the highest mean value, strongest first (an independent ranking)."""
    if len(maps) <= count:
        return np.arange(len(maps))
    return np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:count]


def test_demo_thumbnails_equal_the_lens_maps_and_the_scores_its_softmax():
    at = open_page("network.py")
    assert at.title[0].value == "Network"
    image = shown_image(at)
    batch = to_batch(image)
    lens = build_lens(demo_model(), DEMO_LAYERS)(batch)
    for layer in DEMO_LAYERS:
        maps = lens[layer][0].numpy()
        data = map_view(at, network_view.column_key(layer))
        channels = strongest(maps)
        np.testing.assert_allclose(data["maps"], maps[channels], rtol=1e-5, atol=1e-5)
        assert data["title"] == layer and data["caption"] == "×".join(map(str, maps.shape))
        # Each square names its channel: the hover and a click give that number.
        assert data["numbers"] == channels.tolist()
        # Signed layers (before a ReLU) span ±max |value|, white at zero; the others run
        # from zero (dark) to their largest value.
        signed = bool((maps[channels] < 0).any())
        assert data["signed"] == signed == layer.startswith("conv")
        assert data["high"] == pytest.approx(float(np.abs(maps[channels]).max()), rel=1e-6)
        assert data["low"] == (-data["high"] if signed else 0)
    np.testing.assert_allclose(map_view(at, "network_input")["maps"], batch[0].numpy(), atol=1e-6)
    with torch.no_grad():
        probabilities = torch.softmax(demo_model()(batch), dim=1)[0].numpy()
    scores = next(h.value for h in at.html if "data-probability" in h.value)
    found = re.findall(r'data-class="([^"]*)" data-probability="([^"]*)"', scores)
    top = np.argsort(-probabilities)[:5]
    assert [html.unescape(name) for name, _ in found] == [str(i) for i in top]
    np.testing.assert_allclose([float(p) for _, p in found], probabilities[top], rtol=1e-5)
    # Per layer: every thumbnail of a column on the same range.
    at.segmented_control(key=network_view.SCALE_KEY).set_value("layer").run()
    assert not at.exception
    data = map_view(at, network_view.column_key("conv_2"))
    assert data["high"] == pytest.approx(float(np.abs(data["maps"]).max()), rel=1e-6)


def test_resnet18_shows_its_graph_at_the_chosen_depth_and_the_stage_strip():
    at = open_page("network.py", model="resnet18", weights="random")
    loaded = open_model("resnet18", weights="random")
    charts = at.get("graphviz_chart")
    assert len(charts) == 1
    assert charts[0].proto.spec == architecture_dot(loaded, depth=2)
    at.slider(key=network_view.DEPTH_KEY).set_value(3).run()
    assert not at.exception
    assert at.get("graphviz_chart")[0].proto.spec == architecture_dot(loaded, depth=3)
    assert "layer1.0.conv1" in at.get("graphviz_chart")[0].proto.spec
    # The strip runs over the trunk's stages, each equal to the core's overview.
    image = Image.fromarray(np.asarray(shown_image(at).convert("RGB")))
    for name in ("layer1", "layer4"):
        data = map_view(at, network_view.column_key(name))
        assert data["title"] == name
    columns = {c.name: c for c in overview(loaded, loaded.batch(image))}
    assert set(columns) >= {"input", "layer1", "layer2", "layer3", "layer4", "class scores"}
    layer4 = map_view(at, "network_layer4")
    assert layer4["caption"] == "512×7×7"
    np.testing.assert_allclose(layer4["maps"], columns["layer4"].maps, rtol=1e-4, atol=1e-5)


def test_clicking_a_thumbnail_opens_feature_maps_on_that_layer_and_channel(monkeypatch):
    at = open_page("network.py")
    image = shown_image(at)
    names = at.session_state[state.LAYERS_KEY]
    shown = strongest(build_lens(demo_model(), ["relu_3"])(to_batch(image))["relu_3"][0].numpy())
    # The component calls this callback on a click: run it on a stand-in session state.
    fake: dict = {state.LAYERS_KEY: list(names)}
    monkeypatch.setattr(network_view.st, "session_state", fake)
    callback = network_view.open_channel("relu_3", DEMO_LAYERS)
    callback({"channel": int(shown[5]), "x": 2, "y": 3})  # the number the map view sends
    monkeypatch.undo()
    assert fake[state.LAYER_KEY] == "relu_3" and fake[state.CHANNEL_KEY] == int(shown[5])
    assert fake[state.LAYERS_KEY] == [n for n in DEMO_LAYERS if n in {*names, "relu_3"}]
    for key, value in fake.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Feature maps"
    detail = map_view(at, "channel_map")
    assert detail["title"] == f"relu_3, channel {int(shown[5])}"
    lens = build_lens(demo_model(), ["relu_3"])(to_batch(image))["relu_3"][0].numpy()
    np.testing.assert_allclose(detail["maps"][0], lens[int(shown[5])], rtol=1e-5, atol=1e-5)


def test_a_square_is_named_and_opened_by_its_channel_not_its_place():
    """relu_2 shows its 16 strongest of 32 channels: the square in place 5 is not channel 5,
    and the hover and the click both give its channel."""
    at = open_page("network.py")
    maps = build_lens(demo_model(), ["relu_2"])(to_batch(shown_image(at)))["relu_2"][0].numpy()
    shown = strongest(maps)
    assert shown[5] != 5
    data = map_view(at, network_view.column_key("relu_2"))
    assert data["numbers"][5] == int(shown[5])
    np.testing.assert_allclose(data["maps"][5], maps[shown[5]], rtol=1e-5, atol=1e-5)
    click(at, network_view.column_key("relu_2"), {"channel": int(shown[5]), "x": 1, "y": 1})
    assert at.title[0].value == "Feature maps"
    assert map_view(at, "channel_map")["title"] == f"relu_2, channel {int(shown[5])}"


def test_the_legend_shows_both_colourings_as_the_core_gives_them():
    at = open_page("network.py")
    (legend,) = [h.value for h in at.html if "data-legend" in h.value]
    for colours in (MapColours(True), MapColours(False)):
        assert html.escape(colours.words) in legend
        ramp = ",".join(colorscale_colours(colours.colorscale, 11))
        assert ramp.replace(" ", "") in legend.replace(" ", "")
