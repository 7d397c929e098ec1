"""The channel atlas in a real browser (headless Chromium): while the demo's conv_4 atlas
paints, the rest of the page stays usable and never greys out, tiles show group by
group before the end, Cancel stops it, and a click on a tile opens its card.

Starts the dashboard on a free port with an empty results store (see
``tests/live_app.py``). Screenshots go to ``test-artifacts/browser/atlas-*.png`` and
the figures are printed (pytest shows them with ``-s``, or on failure).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests import live_app

pytestmark = pytest.mark.browser

SHOTS = live_app.ARTIFACTS / "browser"
# Elements outside the atlas fragment that a whole-page run would grey out (Streamlit marks
# an element of the last run that this run has not drawn yet with data-stale="true").
STALE_OUTSIDE = """() => {
  let count = document.querySelectorAll('[data-testid="stSidebar"] [data-stale="true"]').length;
  for (const selector of ["h1", ".st-key-insights_section", ".st-key-insights_layer"]) {
    const element = document.querySelector(selector);
    if (element && element.closest('[data-stale="true"]')) count += 1;
  }
  return count;
}"""
TILES_SHOWN = """(key) => {
  const img = document.querySelector(`.st-key-${key} .cnnlens-map-maps`);
  return Boolean(img && img.complete && img.naturalWidth);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with live_app.chromium_or_skip() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def server(browser: Any) -> Iterator[live_app.Server]:
    """The dashboard with a results store of its own, so every atlas is painted here."""
    with tempfile.TemporaryDirectory() as cache:
        before = os.environ.get("CNNLENS_CACHE_DIR")
        os.environ["CNNLENS_CACHE_DIR"] = cache
        try:
            with live_app.running_server() as running:
                yield running
        finally:
            if before is None:
                del os.environ["CNNLENS_CACHE_DIR"]
            else:
                os.environ["CNNLENS_CACHE_DIR"] = before


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"atlas-{name}.png"))


def open_atlas(browser: Any, server: live_app.Server, layer: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.set_default_timeout(60_000)
    page.goto(f"{server.url}/insights?layers=conv_2,conv_4&layer={layer}")
    live_app.wait_idle(page, 120)
    page.locator(".st-key-insights_section").get_by_role("radio", name="Channel atlas").click()
    page.wait_for_selector(".st-key-atlas_start button")
    live_app.wait_idle(page, 60)
    return page


def choose_layer(page: Any, layer: str, channels: int) -> float:
    """Click a layer; the seconds until the atlas's heading names it."""
    started = time.perf_counter()
    page.locator(".st-key-insights_layer").get_by_role("radio", name=layer).click()
    page.get_by_role("heading", name=f"What each of the {channels} channels of {layer}").wait_for()
    return time.perf_counter() - started


def test_the_atlas_paints_while_the_page_stays_usable(browser: Any, server: live_app.Server):
    page = open_atlas(browser, server, "conv_4")
    started = time.perf_counter()
    page.click(".st-key-atlas_start button")
    first = switched = back = None
    stale = 0
    while not page.evaluate(TILES_SHOWN, "atlas"):
        assert time.perf_counter() - started < 600, "the atlas took over 600 s"
        stale = max(stale, page.evaluate(STALE_OUTSIDE))
        if first is None and page.evaluate(TILES_SHOWN, "atlas_so_far"):
            first = round(time.perf_counter() - started, 1)
            shot(page, "first-tiles")
            # Mid-run, another layer and back: each answers at once, and the painting goes on.
            switched = round(choose_layer(page, "conv_2", 32), 2)
            live_app.wait_idle(page, 30)
            shot(page, "other-layer-while-painting")
            back = round(choose_layer(page, "conv_4", 64), 2)
            page.wait_for_selector(".st-key-atlas_cancel button")
            shot(page, "back-while-painting")
        time.sleep(0.2)
    everything = time.perf_counter() - started
    live_app.wait_idle(page, 30)
    shot(page, "done")
    print(
        f"conv_4 atlas: first tiles {first} s, all 64 {everything:.1f} s; layer switch while "
        f"painting {switched} s, back {back} s; stale outside the atlas {stale}"
    )
    assert first is not None, "no tile showed before the whole atlas"
    assert first < everything * 0.7
    assert switched < 5 and back < 5
    assert stale == 0
    shown = live_app.map_view(page, "atlas")
    assert shown["shape"][0] == 64 and shown["title"].startswith("conv_4")

    # A click on a tile opens its card, from the fragment's own run.
    tile = page.locator(".st-key-atlas .cnnlens-map-maps")
    box = tile.bounding_box()
    columns, rows = shown["columns"], 64 // shown["columns"]
    page.mouse.click(box["x"] + 1.5 * box["width"] / columns, box["y"] + box["height"] / rows / 2)
    page.get_by_role("heading", name="Feature maps").wait_for()
    page.get_by_text("Channel 1 of conv_4:").first.wait_for()
    page.close()


def test_cancel_stops_the_painting_and_keeps_the_finished_group(
    browser: Any, server: live_app.Server
):
    page = open_atlas(browser, server, "conv_2")
    page.click(".st-key-atlas_start button")
    page.wait_for_function(TILES_SHOWN, arg="atlas_so_far", timeout=300_000)
    started = time.perf_counter()
    page.click(".st-key-atlas_cancel button")
    page.get_by_text("Stopped; what was finished is kept").wait_for()
    answered = time.perf_counter() - started
    live_app.wait_idle(page, 30)
    shot(page, "cancelled")
    print(f"Cancel answered in {answered:.2f} s")
    assert answered < 5
    start = page.get_by_role("button", name="Draw the 16 channels still missing")
    assert start.count() == 1 and start.is_visible()
    assert page.evaluate(TILES_SHOWN, "atlas")  # the finished group, clickable
    assert page.locator('[data-testid="stProgress"]').count() == 0
    page.close()
