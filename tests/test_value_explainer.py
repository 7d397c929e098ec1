""" "How is this value computed?" on Feature maps, through AppTest.

A pick is set in session state as the enlarged map's click callback sets it; the
numbers the page shows must equal the core's ``explain_value`` on the demo.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cnnlens import build_lens, demo_dataset, demo_model, to_batch
from cnnlens.explain import CLASS_SCORES, explain_value
from cnnlens.ui import value_explainer
from cnnlens.ui.conv_animation import animation_data

APP = str(Path(__file__).resolve().parent.parent / "dashboard.py")
PAGES = Path(__file__).resolve().parent.parent / "pages"
DATASET = demo_dataset()
LAYERS = "conv_1,relu_1,conv_2,pool_2"


def open_maps(layer: str, channel: int) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    view = {"layers": LAYERS, "layer": layer, "channel": str(channel), "input": "image"}
    for key, value in view.items():
        at.query_params[key] = value
    at.switch_page(str(PAGES / "feature_maps.py"))
    at.run()
    assert not at.exception, at.exception
    return at


def pick(at: AppTest, layer: str, channel: int, x: int, y: int) -> None:
    """Set the pick as the enlarged map's click does, then rerun."""
    at.session_state[value_explainer.PICK_KEY] = {
        "layer": layer,
        "channel": channel,
        "x": x,
        "y": y,
        "view": at.session_state[value_explainer.VIEW_KEY],
    }
    at.run()
    assert not at.exception, at.exception


def core(at: AppTest, layer: str, channel: int, row: int, col: int):
    caption = at.main.get("image")[0].proto.imgs[0].caption
    image = DATASET.load_image(caption.split(" · ")[0], "L", "train")
    return explain_value(demo_model(), layer, to_batch(image), channel, row, col)


def explanation_html(at: AppTest) -> str:
    return "".join(h.value for h in at.html)


def shown(text: str, role: str) -> str:
    return html.unescape(re.search(rf"data-explained=['\"]{role}['\"]>([^<]*)<", text).group(1))


def number(text: str) -> float:
    return float(text.replace("−", "-").replace(",", "").rstrip("%"))


def grid_values(text: str) -> np.ndarray:
    return np.array([float(v) for v in re.findall(r'<td data-value="([^"]*)"', text)])


@pytest.mark.parametrize(("channel", "x", "y"), [(3, 0, 0), (7, 13, 9)])
def test_a_conv_value_shows_the_cores_patches_stencil_products_and_sum(channel, x, y):
    at = open_maps("conv_1", channel)
    pick(at, "conv_1", channel, x, y)
    found = core(at, "conv_1", channel, y, x)
    text = explanation_html(at)
    # One input channel: its patch, stencil and products, in that order, exactly.
    expected = np.concatenate([found.patches[0].ravel(), found.kernel[0].ravel()])
    expected = np.concatenate([expected, found.products[0].ravel()])
    np.testing.assert_allclose(grid_values(text), expected, rtol=1e-6)
    assert number(shown(text, "value")) == pytest.approx(found.value, rel=5e-3, abs=5e-4)
    assert number(shown(text, "sum-0")) == pytest.approx(found.per_input[0], rel=5e-3, abs=5e-4)
    if x == 0:  # the corner reads the padding, drawn hatched
        assert found.padding[0].any() and "repeating-linear-gradient" in text


def test_many_input_channels_show_contribution_bars_and_the_top_three_opened():
    at = open_maps("conv_2", 5)
    pick(at, "conv_2", 5, 10, 14)
    found = core(at, "conv_2", 5, 14, 10)
    text = explanation_html(at)
    contributions = next(h.value for h in at.html if "What each of the 32 input" in h.value)
    bars = re.findall(r'data-label="(\d+)" data-value="([^"]*)"', contributions)
    assert [int(label) for label, _ in bars] == list(found.input_channels)
    np.testing.assert_allclose([float(v) for _, v in bars], found.per_input, rtol=1e-6)
    opened = sorted(np.argsort(-np.abs(found.per_input), kind="stable")[:3].tolist())
    expected = np.concatenate(
        [np.concatenate([found.patches[i].ravel(), found.kernel[i].ravel(),
                         found.products[i].ravel()]) for i in opened]
    )  # fmt: skip
    np.testing.assert_allclose(grid_values(text), expected, rtol=1e-6)
    assert number(shown(text, "value")) == pytest.approx(found.value, rel=5e-3, abs=5e-4)


def test_the_animation_slides_over_the_layers_input_and_fills_its_map():
    at = open_maps("conv_1", 2)
    pick(at, "conv_1", 2, 20, 4)
    found = core(at, "conv_1", 2, 4, 20)
    views = [e for e in at.get("bidi_component") if e.proto.id.endswith("-conv_animation")]
    data = json.loads(views[0].proto.json)
    # conv_1 reads one input channel, so the filled map is the layer's own map (crop).
    caption = at.main.get("image")[0].proto.imgs[0].caption
    image = DATASET.load_image(caption.split(" · ")[0], "L", "train")
    maps = build_lens(demo_model(), ["conv_1"])(to_batch(image))["conv_1"][0, 2].numpy()
    r, c = data["origin"]
    out = np.array(data["output"])
    np.testing.assert_allclose(out, maps[r : r + out.shape[0], c : c + out.shape[1]], atol=2e-4)
    start = data["start"]
    assert out[start[0], start[1]] == pytest.approx(found.value, abs=2e-4)
    # The window at the clicked cell (stride 1) is the core's padded patch.
    assert data["input_origin"] == [r, c]
    window = np.array(data["input"])[start[0] : start[0] + 3, start[1] : start[1] + 3]
    np.testing.assert_allclose(window, found.patches[0], atol=1e-4)


def test_animation_data_crops_a_large_map_around_the_point():
    rng = np.random.default_rng(0)
    plane = rng.standard_normal((42, 42))
    kernel = rng.standard_normal((3, 3))
    data = animation_data(
        plane, np.zeros_like(plane, bool), kernel, (2, 2), (1, 1), (20, 20), (19, 0)
    )
    out = np.array(data["output"])
    assert out.shape == (10, 10) and data["origin"] == [10, 0] and data["start"] == [9, 0]
    row, col = 19, 0
    expected = (plane[row * 2 : row * 2 + 3, col * 2 : col * 2 + 3] * kernel).sum()
    assert out[9, 0] == pytest.approx(expected, abs=1e-3)


def test_relu_and_pool_values_show_the_cores_numbers():
    at = open_maps("relu_1", 4)
    pick(at, "relu_1", 4, 6, 11)
    found = core(at, "relu_1", 4, 11, 6)
    text = explanation_html(at)
    assert found.kind == "relu" and "max(0, x)" in text
    assert number(shown(text, "value")) == pytest.approx(found.value, rel=5e-3, abs=5e-4)
    assert f"<b>{value_explainer._number(found.x)}</b>" in text

    at = open_maps("pool_2", 9)
    pick(at, "pool_2", 9, 3, 5)
    found = core(at, "pool_2", 9, 5, 3)
    text = explanation_html(at)
    assert found.kind == "maxpool"
    np.testing.assert_allclose(grid_values(text), found.window.ravel(), rtol=1e-6)
    assert "outline:3px" in text  # the winner is framed
    winner = found.window[found.winner]
    assert number(shown(text, "value")) == pytest.approx(winner, rel=5e-3, abs=5e-4)


def test_the_scores_button_explains_the_softmax_of_the_likeliest_class():
    at = open_maps("conv_1", 0)
    at.button(key="explain_scores").click().run()
    assert not at.exception, at.exception
    found = core(at, CLASS_SCORES, 0, 0, 0)
    best = int(np.argmax(found.probabilities))
    text = explanation_html(at)
    assert number(shown(text, "probability")) == pytest.approx(
        100 * found.probabilities[best], abs=0.06
    )
    rows = re.findall(r'<tr data-class="(\d+)"', text)
    assert [int(r) for r in rows] == list(range(10))


def test_a_stale_or_out_of_range_pick_is_cleared():
    at = open_maps("conv_1", 0)
    pick(at, "conv_1", 0, 5, 5)
    assert value_explainer.PICK_KEY in at.session_state
    at.button(key="next_image").click().run()  # a new image: the pick is stale
    assert not at.exception, at.exception
    assert value_explainer.PICK_KEY not in at.session_state
    pick(at, "conv_1", 0, 99, 5)  # outside the 28×28 map
    assert value_explainer.PICK_KEY not in at.session_state
    assert any("Click a point of the enlarged map" in m.value for m in at.markdown)
    pick(at, "conv_2", 0, 5, 5)  # another layer than the one shown
    assert value_explainer.PICK_KEY not in at.session_state


def test_the_animation_slides_over_the_input_channel_that_adds_most_and_says_the_stride():
    """ResNet-18's layer2.0.conv1 (stride 2): at the picked point input channel 0 adds
    exactly 0, so the animation shows the channel that adds most, then the one chosen."""
    import torch
    import torch.nn.functional as F

    from cnnlens import open_model

    layer = "layer2.0.conv1"
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in {"model": "resnet18", "weights": "random", "layers": layer,
                       "layer": layer, "channel": "0"}.items():  # fmt: skip
        at.query_params[key] = value
    at.switch_page(str(PAGES / "feature_maps.py")).run()
    assert not at.exception, at.exception
    loaded = open_model("resnet18", weights="random")  # the same seeded weights as the app's
    caption = at.main.get("image")[0].proto.imgs[0].caption
    pixels = np.asarray(DATASET.load_image(caption.split(" · ")[0], "RGB", "train"))
    batch = loaded.batch(pixels)
    for row, col in [(14, 14), (5, 20), (20, 9), (3, 3)]:
        found = explain_value(loaded, layer, batch, 0, row, col)
        if found.per_input[0] == 0 and np.argmax(np.abs(found.per_input)) != 0:
            break
    assert found.per_input[0] == 0, "no point where input channel 0 adds exactly 0"
    pick(at, layer, 0, col, row)

    # The layer's input by a plain hook on the model (it returns None: the forward goes on).
    kept = {}
    conv = loaded.model.get_submodule(layer)

    def keep(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        kept.setdefault("in", args[0].clone())

    handle = conv.register_forward_hook(keep)
    with torch.no_grad():
        loaded.model(batch)
    handle.remove()

    def share_map(channel: int) -> np.ndarray:
        """What one input channel adds at every point: its plane convolved with its stencil."""
        weight = conv.weight[0:1, channel : channel + 1]
        return F.conv2d(kept["in"][:, channel : channel + 1], weight, stride=2, padding=1)[0, 0]

    def shown(channel: int) -> None:
        views = [e for e in at.get("bidi_component") if e.proto.id.endswith("-conv_animation")]
        data = json.loads(views[0].proto.json)
        r, c = data["origin"]
        out = np.array(data["output"])
        expected = share_map(channel).numpy()[r : r + out.shape[0], c : c + out.shape[1]]
        np.testing.assert_allclose(out, expected, atol=2e-4)
        assert data["stride"] == [2, 2]
        sentence = next(m.value for m in at.markdown if "Watch the stencil slide" in m.value)
        assert f"over input channel {channel}," in sentence and "(stride 2)" in sentence

    best = int(np.argmax(np.abs(found.per_input)))
    shown(best)
    assert share_map(best)[row, col].item() == pytest.approx(found.per_input[best], abs=1e-4)
    assert share_map(0)[row, col].item() == 0.0
    choice = at.selectbox(key=f"conv_animation_input_{layer}_0_{row}_{col}")
    order = np.argsort(-np.abs(found.per_input), kind="stable")
    assert choice.options[:3] == [
        f"channel {i}: adds {value_explainer._number(found.per_input[i])}" for i in order[:3]
    ]
    choice.set_value(0).run()
    assert not at.exception, at.exception
    shown(0)
