"""Picking channels and the one colour convention, in a real browser (headless Chromium).

The Network page's squares are named and opened by their channel; on Feature maps a
click on a grid tile or a ranking bar chooses a channel, and a click on the enlarged
map marks the point and brings its explanation into view; every page colours maps as
:class:`cnnlens.figures.MapColours` says, read back from the pixels the browser shows.
The dashboard runs on forty of the demo digits (a dataset pass takes a moment), and
each step saves a screenshot under ``test-artifacts/browser-colours/``. Expected values
come from the core (the lens), never from the app.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cnnlens import build_lens, demo_dataset, demo_model, open_model, to_batch
from cnnlens.attribution import attribute
from cnnlens.data import load_dataset
from cnnlens.figures import grid_shape, overlay_png
from tests import live_app
from tests.test_figures import WHITE

pytestmark = pytest.mark.browser

SHOTS = live_app.ARTIFACTS / "browser-colours"
SEED = 7
RED, BLUE, DARK, YELLOW = (103, 0, 31), (5, 48, 97), (68, 1, 84), (253, 231, 37)
# The pixels of a picture as the browser decoded it: drawn on a canvas, read back.
_PIXELS_JS = """([selector, points]) => {
  const img = document.querySelector(selector);
  if (!img || !img.complete || !img.naturalWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  return points.map(([x, y]) => Array.from(context.getImageData(x, y, 1, 1).data));
}"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forty demo digits in the recipe's layout: real digits, and a quick dataset pass."""
    source = demo_dataset()
    root = tmp_path_factory.mktemp("colours") / "digits40"
    (root / "train").mkdir(parents=True)
    rows = source.index.head(40)
    for name in rows["filename"]:
        shutil.copy(source.root / "train" / name, root / "train" / name)
    rows[["filename", "label"]].to_csv(root / "train.csv", index=False)
    return root


@pytest.fixture(scope="module")
def server(digits: Path) -> Iterator[live_app.Server]:
    if not live_app.CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{live_app.CHROMIUM} is missing (CI is set, so this is a failure)")
        pytest.skip(f"{live_app.CHROMIUM} is missing: install Debian's chromium")
    saved = {key: os.environ.get(key) for key in ("CNNLENS_DATASET", "CNNLENS_CACHE_DIR")}
    os.environ["CNNLENS_DATASET"] = str(digits)
    os.environ["CNNLENS_CACHE_DIR"] = str(digits.parent / "cache")
    try:
        with live_app.running_server() as running:
            yield running
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def browser(server: live_app.Server) -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    for stale in SHOTS.glob("*.png"):  # the screenshots show this run only
        stale.unlink()
    with playwright_api.sync_playwright() as playwright:
        chromium = live_app.launch_browser(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A new session, in a window short enough that the page scrolls."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def image_of(digits: Path) -> tuple[str, Any]:
    dataset = load_dataset(digits)
    name = dataset.pick(SEED)
    return name, dataset.load_image(name, "L", "train")


def lens_maps(image: Any, layer: str) -> np.ndarray:
    return build_lens(demo_model(), [layer])(to_batch(image))[layer][0].numpy()


def pixels(page: Any, selector: str, points: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    """The RGBA the browser decoded at each ``(x, y)`` of a picture."""
    found = page.evaluate(_PIXELS_JS, [selector, [[int(v) for v in p] for p in points]])
    assert found is not None, f"{selector} is not drawn"
    return [tuple(pixel) for pixel in found]


def tile_pixel(channel: int, y: int, x: int, shape: tuple[int, ...], columns: int) -> tuple:
    """The picture pixel of one cell of one tile (gap 1)."""
    _, height, width = shape
    row, column = divmod(channel, columns)
    return column * (width + 1) + x, row * (height + 1) + y


def wait_channel(page: Any, channel: int) -> None:
    """Wait until the Channel input shows ``channel`` (it may update after the maps)."""
    page.wait_for_function(
        """(value) => Array.from(document.querySelectorAll('[data-testid="stNumberInput"]'))
              .some((e) => e.innerText.startsWith("Channel")
                           && e.querySelector("input").value === value)""",
        arg=str(channel),
        timeout=30_000,
    )


def point_at(page: Any, selector: str, x: float, y: float) -> tuple[float, float]:
    """The page coordinates of picture pixel (x, y) (its centre) of a map view's picture."""
    img = page.locator(selector)
    img.scroll_into_view_if_needed()
    box = img.bounding_box()
    natural = page.evaluate("(i) => [i.naturalWidth, i.naturalHeight]", img.element_handle())
    return (
        box["x"] + (x + 0.5) / natural[0] * box["width"],
        box["y"] + (y + 0.5) / natural[1] * box["height"],
    )


def test_a_network_square_is_named_and_opened_by_its_channel(server, page, digits):
    name, image = image_of(digits)
    maps = lens_maps(image, "relu_2")
    shown = np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:16]  # the 16 strongest
    assert shown[5] != 5  # the square in place 5 shows another channel
    page.goto(f"{server.url}/network?seed={SEED}&image={name}")
    live_app.wait_idle(page, 120)
    live_app.wait_chart(page, "network_relu_2")
    selector = ".st-key-network_relu_2 .cnnlens-map-maps"
    x, y = point_at(page, selector, *tile_pixel(5, 14, 14, maps.shape, 2))
    page.mouse.move(x, y)
    tip = page.locator(".st-key-network_relu_2 .cnnlens-map-tip")
    tip.wait_for(state="visible")
    # Thumbnails are small: the pointer may land a cell off; the value is read where it is.
    said = re.fullmatch(r"channel (\d+) · x (\d+) · y (\d+) · value (\S+)", tip.inner_text())
    assert said and int(said[1]) == shown[5], tip.inner_text()
    cell = (int(said[3]), int(said[2]))
    assert abs(cell[0] - 14) <= 1 and abs(cell[1] - 14) <= 1
    expected = float(maps[shown[5]][cell])
    assert float(said[4]) == pytest.approx(expected, rel=1e-3, abs=1e-4)
    shot(page, "network-hover")
    page.mouse.click(x, y)
    live_app.wait_chart(page, "channel_map", title=f"relu_2, channel {shown[5]}")
    live_app.wait_idle(page, 60)
    wait_channel(page, int(shown[5]))
    shot(page, "network-click-opened")


def test_the_network_colours_each_column_by_its_kind(server, page, digits):
    name, image = image_of(digits)
    page.goto(f"{server.url}/network?seed={SEED}&image={name}")
    live_app.wait_idle(page, 120)
    for layer in ("conv_1", "relu_1"):
        live_app.wait_chart(page, f"network_{layer}")
    page.locator(".st-key-network_conv_1").scroll_into_view_if_needed()
    shot(page, "network")
    for layer, ends in (("conv_1", (BLUE, RED)), ("relu_1", (DARK, YELLOW))):
        maps = lens_maps(image, layer)
        place = 0  # the strongest channel, first in its column, on its own scale
        channel = int(np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[0])
        tile = maps[channel]
        spots = [np.unravel_index(np.argmax(np.abs(tile)), tile.shape)]
        spots.append(np.unravel_index(np.argmin(np.abs(tile)), tile.shape))
        found = pixels(
            page,
            f".st-key-network_{layer} .cnnlens-map-maps",
            [tile_pixel(place, y, x, (16, *tile.shape), 2) for y, x in spots],
        )
        far = ends[1] if tile[spots[0]] > 0 else ends[0]
        assert found[0][:3] == far  # the largest value in size: the ramp's end
        if layer == "conv_1":  # the value nearest zero: near white
            assert np.allclose(found[1][:3], WHITE, atol=12), found[1]
        else:
            assert tile[spots[1]] == 0 and found[1][:3] == DARK


def test_feature_maps_picking_marking_revealing_and_colours(server, page, digits):
    name, image = image_of(digits)
    page.goto(
        f"{server.url}/feature_maps?seed={SEED}&image={name}&layers=conv_1,conv_2&layer=conv_2"
    )
    live_app.wait_idle(page, 120)
    live_app.wait_chart(page, "channel_map", title="conv_2, channel 0")
    maps = lens_maps(image, "conv_2")
    columns = grid_shape(len(maps))[1]
    # A click on a grid tile chooses its channel.
    page.mouse.click(
        *point_at(
            page, ".st-key-grid .cnnlens-map-maps", *tile_pixel(7, 10, 10, maps.shape, columns)
        )
    )
    live_app.wait_chart(page, "channel_map", title="conv_2, channel 7")
    live_app.wait_idle(page, 60)
    wait_channel(page, 7)
    assert page.locator(".st-key-grid .cnnlens-map-chosen").count() == 1
    assert page.locator(".st-key-grid .cnnlens-map-number").nth(7).inner_text() == "7"
    shot(page, "feature-maps-grid-click")
    # The grid's colours: signed conv_2, white at zero, each tile's largest size an end.
    tile = maps[7]
    top = np.unravel_index(np.argmax(np.abs(tile)), tile.shape)
    near_zero = np.unravel_index(np.argmin(np.abs(tile)), tile.shape)
    found = pixels(
        page,
        ".st-key-grid .cnnlens-map-maps",
        [tile_pixel(7, y, x, maps.shape, columns) for y, x in (top, near_zero)],
    )
    assert found[0][:3] == (RED if tile[top] > 0 else BLUE)
    assert np.allclose(found[1][:3], WHITE, atol=12), found[1]
    # A click on a ranking bar chooses its channel; every bar is numbered.
    means = maps.reshape(len(maps), -1).mean(1, dtype=np.float64)
    order = np.argsort(-means, kind="stable")
    bars = page.locator(".st-key-ranking [data-label]")
    assert [bars.nth(i).get_attribute("data-label") for i in range(3)] == [
        str(c) for c in order[:3]
    ]
    names = page.locator(".st-key-ranking span")
    assert names.nth(1).inner_text() == str(order[1]) and names.nth(1).is_visible()
    label = names.nth(1)
    label.scroll_into_view_if_needed()
    label.click()
    live_app.wait_chart(page, "channel_map", title=f"conv_2, channel {order[1]}")
    live_app.wait_idle(page, 60)
    shot(page, "feature-maps-ranking-click")
    # A click on the enlarged map marks the point in both panels and brings the
    # explanation into view.
    x, y = 11, 6
    selector = ".st-key-channel_map .cnnlens-map-clickable .cnnlens-map-maps"
    page.mouse.click(*point_at(page, selector, x, y))
    page.wait_for_selector(".st-key-value_explainer [data-explained='value']", state="attached")
    live_app.wait_idle(page, 60)
    marks = page.locator(".st-key-channel_map .cnnlens-map-point")
    assert marks.count() == 2 and marks.first.get_attribute("data-point") == f"{x},{y}"
    page.wait_for_function(
        """() => { const box = document.querySelector(".st-key-value_explainer")
                     .getBoundingClientRect();
                   return box.top >= 0 && box.top < 200; }""",
        timeout=10_000,
    )
    shot(page, "feature-maps-explained")
    page.locator(".st-key-channel_map").scroll_into_view_if_needed()
    img = page.locator(selector).bounding_box()
    mark = marks.first.bounding_box()
    centre = (mark["x"] + mark["width"] / 2, mark["y"] + mark["height"] / 2)
    assert centre[0] == pytest.approx(img["x"] + (x + 0.5) / 28 * img["width"], abs=2)
    assert centre[1] == pytest.approx(img["y"] + (y + 0.5) / 28 * img["height"], abs=2)
    shot(page, "feature-maps-marked")


def test_relu_maps_are_dark_at_zero_and_see_through_laid_over_the_image(server, page, digits):
    name, image = image_of(digits)
    maps = lens_maps(image, "relu_1")
    mixed = [c for c in range(len(maps)) if (maps[c] == 0).any() and maps[c].max() > 0]
    channel = mixed[0]  # zero somewhere, something found elsewhere
    url = f"{server.url}/feature_maps?seed={SEED}&image={name}&layers=relu_1&layer=relu_1"
    page.goto(f"{url}&channel={channel}")
    live_app.wait_idle(page, 120)
    live_app.wait_chart(page, "channel_map", title=f"relu_1, channel {channel}")
    tile = maps[channel]
    zero = tuple(int(v) for v in np.argwhere(tile == 0)[0])
    top = np.unravel_index(np.argmax(tile), tile.shape)
    alone = pixels(page, ".st-key-channel_map .cnnlens-map-maps", [zero[::-1], top[::-1]])
    assert alone[0][:3] == DARK and alone[1][:3] == YELLOW
    over = ".st-key-channel_map .cnnlens-map:nth-child(2) .cnnlens-map-maps"
    laid = pixels(page, over, [zero[::-1], top[::-1]])
    assert laid[0][3] == 0 and laid[1][3] == 255  # see-through at zero, opaque at the top
    legend = page.locator(".st-key-channel_map .cnnlens-map-legend").first
    assert legend.inner_text() == "dark: zero, nothing found · brighter: stronger"
    page.locator(".st-key-channel_map").scroll_into_view_if_needed()
    shot(page, "feature-maps-relu")


def test_home_and_insights_show_the_convention(server, page, digits):
    page.goto(server.url)
    live_app.wait_idle(page, 120)
    page.wait_for_selector("[data-legend]", timeout=30_000)  # idle can come before the paint
    legends = page.locator("[data-legend]")
    assert legends.count() == 2
    ramp = legends.first.locator("div").first.evaluate("(e) => getComputedStyle(e).backgroundImage")
    assert ramp.replace(" ", "").count("rgb(") == 11
    assert "rgb(247,247,247)" in ramp.replace(" ", "")  # white in the middle of the signed ramp
    page.set_viewport_size({"width": 1400, "height": 1300})
    shot(page, "home")
    page.goto(f"{server.url}/insights?seed={SEED}&layers=conv_2,relu_4&layer=relu_4")
    live_app.wait_idle(page, 120)
    page.locator('[data-testid="stButtonGroup"] button', has_text="Compare").click()
    live_app.wait_chart(page, "compare_diff", title="First minus second")
    live_app.settle(page, 120)
    shot(page, "insights-compare")
    page.locator('[data-testid="stButtonGroup"] button', has_text="Classes × channels").click()
    live_app.wait_chart(page, "matrix", title="Which classes each channel of")
    live_app.settle(page, 120)
    shot(page, "insights-matrix")


def test_where_it_looks_paints_the_cores_grad_cam_in_the_overlay_colours(server, page, digits):
    """The Grad-CAM card as the browser decoded it equals the core's map laid over the
    dimmed image: the image where there is no evidence, the ramp's top where most."""
    page.set_viewport_size({"width": 1400, "height": 1300})
    page.goto(f"{server.url}/where_it_looks?seed={SEED}")
    live_app.wait_idle(page, 180)
    card = f".{live_app.key_class('looks_card_gradcam')} img"
    page.wait_for_selector(card, timeout=60_000)
    dataset = load_dataset(digits)
    image = np.asarray(dataset.load_image(dataset.pick(SEED)).convert("L"))
    loaded = open_model("demo")
    cam = attribute(loaded, loaded.batch(image), "gradcam")
    expected = np.asarray(Image.open(io.BytesIO(overlay_png(image, cam, 0.8, side=224))))
    top = np.unravel_index(int(np.argmax(cam)), cam.shape)
    none = np.argwhere(cam == 0)
    points = [(int(top[1]) * 8 + 4, int(top[0]) * 8 + 4)]
    points += [(int(x) * 8 + 4, int(y) * 8 + 4) for y, x in none[:: max(1, len(none) // 5)][:5]]
    for (x, y), found in zip(points, pixels(page, card, points), strict=True):
        # within 2 of 255: the browser's own decoding may round a channel the other way
        np.testing.assert_allclose(found[:3], expected[y, x], atol=2, err_msg=str((x, y)))
    for x, y in points[1:]:  # no evidence: the dimmed image itself
        assert tuple(expected[y, x]) == (round(image[y // 8, x // 8] * 0.5),) * 3
    page.locator(card).scroll_into_view_if_needed()
    shot(page, "where-it-looks")


def test_atlas_tiles_carry_their_channel_numbers(server, page):
    page.set_viewport_size({"width": 1400, "height": 1300})
    page.goto(f"{server.url}/insights?seed={SEED}&layers=conv_1&layer=conv_1")
    live_app.wait_idle(page, 120)
    page.locator('[data-testid="stButtonGroup"] button', has_text="Channel atlas").click()
    live_app.wait_idle(page, 120)
    page.get_by_role("button", name=re.compile(r"^Draw all 32 channels")).click()
    numbers = page.locator(".st-key-atlas .cnnlens-map-number")
    numbers.first.wait_for(timeout=300_000)  # painting 32 small pictures: seconds
    live_app.wait_idle(page, 120)
    assert [numbers.nth(i).inner_text() for i in range(numbers.count())] == [
        str(c) for c in range(32)
    ]
    # Each number sits in its tile's top-left corner (8 tiles a row, channel 13: row 1, 5).
    img = page.locator(".st-key-atlas .cnnlens-map-maps").bounding_box()
    label = numbers.nth(13).bounding_box()
    step = img["width"] / (8 * 30 - 2) * 30  # 28-pixel tiles, 2-pixel gaps
    assert label["x"] == pytest.approx(img["x"] + 5 * step, abs=2)
    assert label["y"] == pytest.approx(img["y"] + 1 * step, abs=2)
    shot(page, "insights-atlas")
