"""The map view's data and the HTML bars: what the Feature maps page sends the browser."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import re

import numpy as np
import pytest
from PIL import Image

from cnnlens.figures import (
    BAR_COLOUR,
    DEAD_COLOUR,
    HIGHLIGHT_COLOUR,
    montage_png,
    tile_at,
)
from cnnlens.ui.bars import bars_html
from cnnlens.ui.map_view import map_view_data


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# --- map view ------------------------------------------------------------------------------


def test_map_view_data_sends_the_montage_picture_and_the_raw_values():
    maps = np.random.default_rng(1).standard_normal((7, 4, 5)).astype(np.float32)
    data = map_view_data(maps, per="layer", columns=3, title="conv_1")
    assert json.loads(json.dumps(data)) == data  # JSON-ready
    assert (data["channels"], data["height"], data["width"]) == (7, 4, 5)
    assert (data["columns"], data["gap"], data["title"]) == (3, 1, "conv_1")
    png = base64.b64decode(data["png"])
    assert png == montage_png(maps, per="layer", columns=3, clear_gaps=True)
    # Gaps and the two unused tiles are see-through; the tiles are opaque.
    alpha = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3]
    assert alpha[0, 5] == 0 and (alpha[10:, 11:] == 0).all() and (alpha[:4, :5] == 255).all()
    raw = np.frombuffer(base64.b64decode(data["values"]), "<f4").reshape(7, 4, 5)
    np.testing.assert_array_equal(raw, maps)
    # The browser finds a pixel's channel as tile_at does: row-major tiles, 1-pixel gaps.
    picture = decode(base64.b64decode(data["png"]))
    for row, col in itertools.product(range(picture.shape[0]), range(picture.shape[1])):
        where = tile_at(row, col, (4, 5), 3, gap=1)
        if where is not None and where[0] < 7:
            channel, y, x = where
            assert (channel * 4 + y) * 5 + x < raw.size
    # Signed maps: the colour scale runs from -m to m, m the largest value in size.
    reach = float(np.abs(maps).max())
    assert (data["low"], data["high"], data["signed"]) == (-reach, reach, True)
    assert data["colorbar"] is None and data["legend"] is None and data["numbers"] is None
    assert 250 <= data["max_height"] <= 900


def test_map_view_data_of_one_channel_with_a_colorbar_and_without_values():
    one = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    data = map_view_data(one, colorbar=True, with_values=False)
    assert data["values"] is None and data["channels"] == 1 and data["columns"] == 1
    assert data["colorbar"][0] == "rgb(68, 1, 84)"  # Viridis, low to high
    assert len(data["colorbar"]) == 11 and (data["low"], data["high"]) == (0.0, 11.0)
    tall = [map_view_data(np.ones((c, 2, 2)))["max_height"] for c in (16, 64, 512)]
    assert tall == sorted(tall) and tall[-1] == 900
    with pytest.raises(ValueError, match="not finite|NaN|infinite"):
        map_view_data(np.full((1, 2, 2), np.nan))


def test_the_convention_its_legend_and_the_channel_numbers_are_sent():
    signed = np.array([[[-2.0, 0.0], [1.0, 0.5]]], dtype=np.float32)
    data = map_view_data(signed, legend=True, colorbar=True)
    assert data["signed"] and (data["low"], data["high"]) == (-2.0, 2.0)
    assert data["legend"]["words"] == "blue: below zero · white: zero · red: above zero"
    assert data["legend"]["colours"][5] == "rgb(247, 247, 247)" == data["colorbar"][5]
    assert data["legend"]["overlay_words"].startswith("see-through at zero")
    assert tuple(decode(base64.b64decode(data["png"]))[0, 1]) == (247, 247, 247)  # zero
    positive = map_view_data(np.abs(signed), legend=True)
    assert not positive["signed"] and (positive["low"], positive["high"]) == (0.0, 2.0)
    assert positive["legend"]["words"] == "dark: zero, nothing found · brighter: stronger"
    # Weights or differences are signed by nature, whatever their values.
    assert map_view_data(np.abs(signed), centre=True)["signed"]
    # One channel enlarged on its layer's scale: the reach given, not its own.
    wider = map_view_data(np.abs(signed), reach=4.0)
    assert (
        wider["high"] == 4.0
        and wider["png"]
        == base64.b64encode(montage_png(np.abs(signed), reach=4.0, clear_gaps=True)).decode()
    )
    # The strongest few of a layer: each tile's channel number, for the hover and a click.
    few = map_view_data(np.ones((3, 2, 2)), numbers=np.array([26, 5, 11]))
    assert few["numbers"] == [26, 5, 11] and json.loads(json.dumps(few)) == few
    with pytest.raises(ValueError, match="one channel number per map; got 2"):
        map_view_data(np.ones((3, 2, 2)), numbers=[1, 2])


def test_unknown_colorscale_is_a_clear_value_error():
    with pytest.raises(ValueError, match="Unknown colorscale 'Virdis'"):
        map_view_data(np.ones((1, 2, 2)), colorscale="Virdis")


def test_map_view_data_under_an_image_sends_it_as_shown_and_the_slider_start():
    gray = np.zeros((7, 7), dtype=np.uint8)
    gray[:, 3:] = 200
    ramp = np.arange(49, dtype=np.float32).reshape(1, 7, 7)
    data = map_view_data(ramp, under=gray, under_title="over", opacity=0.25, title="alone")
    assert json.loads(json.dumps(data)) == data and data["opacity"] == 0.25
    assert (data["title"], data["under_title"]) == ("alone", "over")  # the two panels
    # The map as the channel view shows it, and as laid over the image: see-through at
    # zero, opaque at its largest value.
    assert base64.b64decode(data["png"]) == montage_png(ramp, clear_gaps=True)
    over = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["overlay"]))).convert("RGBA"))
    assert over[0, 0, 3] == 0 and over[6, 6, 3] == 255
    assert np.all(np.diff(over[..., 3].ravel().astype(int)) >= 0)
    np.testing.assert_array_equal(over[..., :3], decode(base64.b64decode(data["png"])))
    shown = decode(base64.b64decode(data["under"]))
    np.testing.assert_array_equal(shown[..., 0], gray)  # uint8 grayscale spans 0..255
    floats = decode(base64.b64decode(map_view_data(ramp, under=gray / 400.0)["under"]))
    np.testing.assert_array_equal(floats[..., 0], np.rint(gray / 400.0 * 255))  # [0, 1]
    rgb = np.random.default_rng(0).integers(0, 256, (7, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        decode(base64.b64decode(map_view_data(ramp, under=rgb)["under"])), rgb
    )
    assert map_view_data(ramp)["under"] is None and map_view_data(ramp)["overlay"] is None
    with pytest.raises(ValueError, match="Only one channel can be laid over an image; got 2"):
        map_view_data(np.ones((2, 7, 7)), under=gray)
    with pytest.raises(ValueError, match="opacity must be between 0 and 1"):
        map_view_data(ramp, under=gray, opacity=1.5)
    with pytest.raises(TypeError, match="opacity must be a number"):
        map_view_data(ramp, under=gray, opacity="0.5")
    with pytest.raises(TypeError, match="must be uint8"):
        map_view_data(ramp, under=rgb.astype(np.float32))


# --- HTML bars ----------------------------------------------------------------------------


def _bars(snippet: str) -> list[tuple[str, float, str, str]]:
    """(label, value, hover title, colour) of each bar of a bars_html snippet."""
    found = re.findall(
        r'data-label="([^"]*)" data-value="([^"]*)" title="([^"]*)" '
        r'style="[^"]*background:([^"]+)"',
        snippet,
    )
    return [(html.unescape(a), float(b), html.unescape(c), d) for a, b, c, d in found]


def test_bars_html_keeps_the_callers_order_and_greys_flagged_bars():
    snippet = bars_html(
        [5, 2, 7, 1],
        np.array([0.9, 0.5, 0.0, -0.25]),
        "Most <active>",
        "mean activation",
        flagged=np.array([False, False, True, False]),
    )
    assert "Most &lt;active&gt;" in snippet  # escaped
    shown = _bars(snippet)
    assert [(label, value) for label, value, _, _ in shown] == [
        ("5", 0.9), ("2", 0.5), ("7", 0.0), ("1", -0.25)
    ]  # fmt: skip
    assert [colour for *_, colour in shown] == [BAR_COLOUR, BAR_COLOUR, DEAD_COLOUR, BAR_COLOUR]
    assert shown[2][2] == "7 · mean activation 0 · dead"
    # Heights share one scale from the lowest to the highest value; the negative bar hangs down.
    heights = [float(h) for h in re.findall(r"height:max\(([\d.]+)%", snippet)]
    expected = [0.9 / 1.15 * 100, 0.5 / 1.15 * 100, 0, 0.25 / 1.15 * 100]
    np.testing.assert_allclose(heights, expected, atol=1e-3)
    assert "bottom:0.000%" in re.findall(r'data-label="1"[^>]*', snippet)[0]


def test_bars_html_writes_every_label_up_to_64_on_its_side_above_20():
    def names(count: int) -> list[str]:
        snippet = bars_html(list(range(count)), np.ones(count), "t", "v")
        return re.findall(r"<span style=\"([^\"]*)\">(\d+)</span>", snippet)

    upright = names(20)
    assert [label for _, label in upright] == [str(i) for i in range(20)]
    assert not any("vertical" in style for style, _ in upright)
    turned = names(64)
    assert [label for _, label in turned] == [str(i) for i in range(64)]
    assert all("writing-mode:vertical-rl" in style for style, _ in turned)
    assert names(65) == []  # too many to write: the hover names them


def test_bars_html_percent_highlight_and_errors():
    snippet = bars_html(list("abc"), [0.1, 0.7, 0.2], "P", "probability", "b", percent=True)
    shown = _bars(snippet)
    assert [colour for *_, colour in shown] == [BAR_COLOUR, HIGHLIGHT_COLOUR, BAR_COLOUR]
    assert "note" not in snippet and snippet.endswith("</div></div>")
    noted = bars_html(list("abc"), [0.1, 0.7, 0.2], "P", "probability", note="1 < 2")
    assert noted.endswith(">1 &lt; 2</div>")
    assert shown[1][2] == "b · probability 70.0%"
    with pytest.raises(ValueError, match="not one of the labels"):
        bars_html(["a", "b"], [1, 2], "t", "v", highlight="c")
    with pytest.raises(ValueError, match="one value"):
        bars_html(["a", "b"], [1, 2, 3], "t", "v")
    with pytest.raises(ValueError, match="not finite|NaN|infinite"):
        bars_html(["a", "b"], [1, float("nan")], "t", "v")
