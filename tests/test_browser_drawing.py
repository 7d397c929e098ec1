"""The drawing pad in a real browser (headless Chromium): mouse strokes on the canvas named
"Drawing pad", and every view following them.

Expected values come from the core (the lens run on the app's own preprocessed drawing,
and that drawing made again from the link's strokes), never from the app's maps.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from cnnlens import build_lens, demo_model, to_batch
from cnnlens.drawing import Drawing, drawing_pixels
from cnnlens.registry import DEMO_INPUT
from tests import live_app

pytestmark = pytest.mark.browser

SHOTS = live_app.ARTIFACTS / "browser"
SEEN_JS = """(key) => {
  const img = document.querySelector(`.st-key-${key} .cnnlens-pad-seen:not([hidden]) img`);
  return img ? img.src : null;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with live_app.chromium_or_skip() as chromium:
        yield chromium


def stroke(page: Any, points: list[tuple[float, float]], key: str = "pad") -> None:
    """Draw one stroke with the mouse through ``points`` (fractions of the pad's side)."""
    canvas = page.locator(f".st-key-{key}").get_by_role("img", name="Drawing pad")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * box["width"], box["y"] + y * box["height"]

    page.mouse.move(*at(*points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*at(*point), steps=10)
    page.mouse.up()


def seen(page: Any, key: str = "pad") -> np.ndarray | None:
    """The pixels of "what the network sees" beside the pad, as the page shows them."""
    src = page.evaluate(SEEN_JS, key)
    if not src:
        return None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def wait_answer(page: Any, digit: str, timeout: float = 30.0) -> None:
    page.get_by_text(f"The network says: {digit} (").first.wait_for(timeout=timeout * 1000)


def linked_drawing(page: Any) -> Drawing:
    return Drawing.decode(parse_qs(urlparse(page.url).query)["drawing"][0])


def test_strokes_drive_the_answer_and_the_grid_and_clear_asks_for_a_digit(browser: Any):
    with live_app.running_server() as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server.url}/feature_maps?layer=conv_2")
        live_app.wait_idle(page, 90)
        wait_answer(page, "3")  # the sample
        page.locator(".st-key-pad").get_by_role("button", name="Clear").click()
        page.get_by_text("The pad is empty: draw a digit on it.").last.wait_for(timeout=30_000)
        live_app.wait_idle(page)
        assert page.locator("[data-testid='stException']").count() == 0
        assert page.locator(".st-key-grid").count() == 0
        assert seen(page) is None

        stroke(page, [(0.5, 0.12), (0.5, 0.88)])
        wait_answer(page, "1")
        live_app.wait_idle(page)
        pixels = seen(page)
        assert pixels is not None and pixels.shape == (28, 28)
        # The link carries exactly the strokes drawn: the core makes the same input of them.
        np.testing.assert_array_equal(drawing_pixels(linked_drawing(page), DEMO_INPUT), pixels)
        expected = build_lens(demo_model(), ["conv_2"])(to_batch(pixels))["conv_2"][0].numpy()
        for _ in range(100):  # the picture may still be swapping in
            grid = live_app.map_view(page, "grid", everything=True)
            if grid and grid["shape"] == list(expected.shape):
                break
            time.sleep(0.1)
        np.testing.assert_allclose(
            np.array(grid["all"]).reshape(expected.shape), expected, atol=1e-5, rtol=1e-5
        )
        page.screenshot(path=str(SHOTS / "drawing_pad_one.png"))


def test_a_stroke_drawn_while_the_page_reruns_is_kept(browser: Any):
    with live_app.running_server() as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server.url}/feature_maps")
        live_app.wait_idle(page, 90)
        wait_answer(page, "3")
        page.locator(".st-key-pad").get_by_role("button", name="Clear").click()
        live_app.wait_idle(page)
        # A 7: its bar, then at once (no wait for the rerun) its stem.
        stroke(page, [(0.2, 0.15), (0.8, 0.15)])
        stroke(page, [(0.8, 0.15), (0.45, 0.9)])
        wait_answer(page, "7")
        live_app.wait_idle(page)
        assert len(linked_drawing(page).strokes) == 2


def test_the_network_page_follows_the_pen(browser: Any):
    with live_app.running_server() as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server.url}/network")
        live_app.wait_idle(page, 90)
        page.locator(".st-key-network_pad").get_by_role("button", name="Clear").click()
        live_app.wait_idle(page)
        stroke(page, [(0.5, 0.1), (0.5, 0.9)], key="network_pad")
        top = page.locator("[data-class]").first
        top.wait_for(timeout=30_000)
        for _ in range(100):
            if top.get_attribute("data-class") == "1":
                break
            time.sleep(0.1)
        assert top.get_attribute("data-class") == "1"
        assert float(top.get_attribute("data-probability")) > 0.9
        assert page.locator("[data-testid='stException']").count() == 0


def test_a_finger_draws_too(browser: Any):
    with live_app.running_server() as server:
        page = browser.new_page(viewport={"width": 700, "height": 1000}, has_touch=True)
        page.goto(f"{server.url}/feature_maps")
        live_app.wait_idle(page, 90)
        wait_answer(page, "3")
        page.locator(".st-key-pad").get_by_role("button", name="Clear").click()
        live_app.wait_idle(page)
        canvas = page.locator(".st-key-pad").get_by_role("img", name="Drawing pad")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        cdp = page.context.new_cdp_session(page)
        scrolled = page.evaluate("window.scrollY")
        x = box["x"] + box["width"] / 2
        for i, kind in enumerate(["touchStart", *["touchMove"] * 12, "touchEnd"]):
            y = box["y"] + box["height"] * (0.1 + 0.8 * min(i, 12) / 12)
            points = [] if kind == "touchEnd" else [{"x": x, "y": y}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
        wait_answer(page, "1")
        assert page.evaluate("window.scrollY") == scrolled  # the finger drew, not scrolled
        assert len(linked_drawing(page).strokes) == 1
