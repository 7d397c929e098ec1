"""The occlusion view in a real browser (headless Chromium): drag the square, read the bars.

A tiny Streamlit script (written to a temporary folder) runs the demo model with the
square at every position of a 1-pixel grid and shows :func:`occlusion_view_ui`; it saves
the Python-side table beside itself. The test drags the square with the mouse and checks
that the bars show that table's values for the place the square snapped to, that nothing
reaches the server during the drag, and that letting go reports the place once.
Screenshots go to ``test-artifacts/browser-occlusion/``.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnnlens.ui.occlusion_view import PROBABILITY_STEPS
from tests import live_app

pytestmark = pytest.mark.browser

SHOTS = live_app.ARTIFACTS / "browser-occlusion"
KEY = "occlusion"
WINDOW, STRIDE = 7, 1
APP = """
from pathlib import Path

import numpy as np
import streamlit as st

from cnnlens import demo_dataset, open_model
from cnnlens.attribution import occlusion_scores
from cnnlens.preprocess import to_uint8_image
from cnnlens.ui.occlusion_view import occlusion_view_data, occlusion_view_ui, square_fill


@st.cache_resource
def view() -> dict:
    loaded = open_model("demo")
    dataset = demo_dataset()
    batch = loaded.batch(dataset.load_image(dataset.pick(128), "L", "train"))
    scores = occlusion_scores(loaded, batch, window={window}, stride={stride})
    np.savez(
        Path(__file__).with_name("table.npz"),
        tops=scores.tops,
        probabilities=scores.probabilities(),
        classes=np.array(loaded.classes),
    )
    pixels = to_uint8_image(batch, loaded.spec)
    return occlusion_view_data(pixels, scores, loaded.classes, fill=square_fill(loaded.spec))


st.session_state.runs = st.session_state.get("runs", 0) + 1
st.subheader("Where it looks")
where = occlusion_view_ui(view(), key="{key}")
st.caption(f"runs {{st.session_state.runs}} · square {{where}}")
"""
# The bars as the browser shows them, and where the square is.
_READ_JS = """(keyClass) => {
  const view = document.querySelector(`.${keyClass} .cnnlens-occ`);
  if (!view) return null;
  const square = view.querySelector(".cnnlens-occ-square");
  return {
    square: [Number(square.dataset.row), Number(square.dataset.col)],
    bars: Array.from(view.querySelectorAll(".cnnlens-occ-row"), (row) => ({
      name: row.dataset.class,
      value: Number(row.dataset.value),
      base: Number(row.dataset.base),
      text: row.querySelector(".cnnlens-occ-text").textContent.replace(/\\s+/g, " ").trim(),
      width: row.querySelector(".cnnlens-occ-fill").getBoundingClientRect().width
        / row.querySelector(".cnnlens-occ-track").getBoundingClientRect().width,
    })),
  };
}"""
# Many moves of the held mouse, dispatched in the page: how long one update takes.
_MOVES_JS = """([keyClass, points]) => {
  const stack = document.querySelector(`.${keyClass} .cnnlens-occ-stack`);
  const start = performance.now();
  for (const [x, y] of points) {
    stack.dispatchEvent(new PointerEvent("pointermove", {
      pointerId: 1, pointerType: "mouse", clientX: x, clientY: y, bubbles: true,
    }));
  }
  return (performance.now() - start) / points.length;
}"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[live_app.Server, Path]]:
    """The tiny occlusion script, served; and its folder, where it saves its table."""
    if not live_app.CHROMIUM.exists():
        _unavailable(f"{live_app.CHROMIUM} is missing: install Debian's chromium")
    pytest.importorskip("playwright.sync_api")
    for stale in SHOTS.glob("*.png"):  # the screenshots show this run only
        stale.unlink()
    folder = tmp_path_factory.mktemp("occlusion")
    script = folder / "occlusion_app.py"
    script.write_text(textwrap.dedent(APP).format(window=WINDOW, stride=STRIDE, key=KEY))
    server = live_app.launch_server(script=str(script), log_name="occlusion.log")
    try:
        live_app.wait_healthy(server)
        yield server, folder
    finally:
        live_app.stop_server(server)


@pytest.fixture
def page(app: tuple[live_app.Server, Path]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = live_app.launch_browser(playwright)
        page = chromium.new_page(viewport={"width": 1000, "height": 720})
        page.set_default_timeout(30_000)
        yield page
        chromium.close()


def read(page: Any) -> dict:
    found = page.evaluate(_READ_JS, live_app.key_class(KEY))
    assert found is not None, "the occlusion view is not drawn"
    return found


def wait_square(page: Any, place: tuple[int, int]) -> None:
    """Wait until the square's top-left is ``place`` (row, col)."""
    page.wait_for_function(
        """([keyClass, row, col]) => {
          const square = document.querySelector(`.${keyClass} .cnnlens-occ-square`);
          return square && square.dataset.row === String(row)
            && square.dataset.col === String(col);
        }""",
        arg=[live_app.key_class(KEY), *place],
    )


def expect_bars(shown: dict, table: Any, place: tuple[int, int]) -> None:
    """The bars show the Python-side table's probabilities with the square at ``place``."""
    assert tuple(shown["square"]) == place
    position = np.flatnonzero((table["tops"] == place).all(axis=1))
    assert len(position) == 1, f"{place} is not one of the square's positions"
    classes = [str(name) for name in table["classes"]]
    for bar in shown["bars"]:
        expected = float(table["probabilities"][position[0], classes.index(bar["name"])])
        assert bar["value"] == pytest.approx(expected, abs=1 / PROBABILITY_STEPS)
        assert bar["width"] == pytest.approx(expected, abs=0.01)
        before, after = map(float, re.findall(r"\d\.\d\d", bar["text"])[:2])
        assert before == pytest.approx(bar["base"], abs=0.0051)
        assert after == pytest.approx(expected, abs=0.0051), bar["text"]


def test_dragging_the_square_reads_every_place_from_the_table(page: Any, app: tuple) -> None:
    server, folder = app
    sent: list[str] = []
    page.on("websocket", lambda socket: socket.on("framesent", lambda frame: sent.append(frame)))
    page.goto(server.url)
    page.wait_for_selector(f".{live_app.key_class(KEY)} .cnnlens-occ-row")
    live_app.wait_idle(page)
    page.get_by_text("runs 1 · square None").wait_for()
    table = np.load(folder / "table.npz")
    first = read(page)
    expect_bars(first, table, (0, 0))
    answer = first["bars"][0]["name"]
    # Where the square takes most from the answer, and a place on the way there.
    column = [str(name) for name in table["classes"]].index(answer)
    target = tuple(int(v) for v in table["tops"][np.argmin(table["probabilities"][:, column])])
    halfway = (target[0] // 2, target[1] // 2 + 3)

    picture = page.locator(f".{live_app.key_class(KEY)} .cnnlens-occ-stack").bounding_box()
    scale = picture["width"] / 28
    assert picture["width"] >= 224  # a 28-pixel digit, large enough to see

    def centre(place: tuple[int, int]) -> tuple[float, float]:
        return (
            picture["x"] + (place[1] + WINDOW / 2) * scale,
            picture["y"] + (place[0] + WINDOW / 2) * scale,
        )

    page.mouse.move(*centre((0, 0)))
    page.mouse.down()
    quiet = len(sent)
    page.mouse.move(*centre(halfway), steps=6)
    wait_square(page, halfway)
    expect_bars(read(page), table, halfway)
    page.mouse.move(*centre(target), steps=6)
    wait_square(page, target)
    during = read(page)
    expect_bars(during, table, target)
    assert during["bars"][0]["value"] < first["bars"][0]["value"] - 0.2
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "mid-drag.png"))
    path = [centre((r % 22, (3 * r) % 22)) for r in range(300)]
    per_move = page.evaluate(_MOVES_JS, [live_app.key_class(KEY), [list(p) for p in path]])
    page.mouse.move(*centre(target))
    print(f"one move of the square and its bars: {per_move * 1000:.0f} µs in the page")
    assert len(sent) == quiet, "the drag sent messages to the server"
    assert per_move < 16  # well within a frame
    # Letting go reports the place once: one rerun, for a caption.
    page.mouse.up()
    page.get_by_text(f"runs 2 · square {{'row': {target[0]}, 'col': {target[1]}}}").wait_for()
    live_app.wait_idle(page)
    assert len(sent) > quiet  # the report went over the socket that the drag left quiet
    expect_bars(read(page), table, target)  # the rerun keeps the square where it was let go
    page.screenshot(path=str(SHOTS / "let-go.png"))


def test_the_arrow_keys_move_the_square_one_place(page: Any, app: tuple) -> None:
    server, folder = app
    page.goto(server.url)
    square = page.locator(f".{live_app.key_class(KEY)} .cnnlens-occ-square")
    square.wait_for()
    live_app.wait_idle(page)
    # The demo takes its pixels as they are: 0, its square's fill, is black.
    assert square.get_attribute("aria-label").startswith("Black square: drag it over the image")
    table = np.load(folder / "table.npz")
    square.focus()
    start = time.perf_counter()
    for key in ("ArrowRight", "ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp", "ArrowUp"):
        page.keyboard.press(key)
    expect_bars(read(page), table, (0, STRIDE))  # up from the top row stays there
    page.keyboard.press("End")
    expect_bars(read(page), table, (28 - WINDOW, 28 - WINDOW))
    status = page.locator(f".{live_app.key_class(KEY)} .cnnlens-occ-status").text_content()
    assert status.startswith(f"Square at x {28 - WINDOW}, y {28 - WINDOW}:")
    # One report when the keys rest, not one rerun per key.
    page.get_by_text(f"runs 2 · square {{'row': {28 - WINDOW}, 'col': {28 - WINDOW}}}").wait_for()
    assert time.perf_counter() - start < 10


def test_a_finger_drags_the_square_too(page: Any, app: tuple) -> None:
    server, folder = app
    touch = page.context.browser.new_page(viewport={"width": 700, "height": 900}, has_touch=True)
    touch.goto(server.url)
    stack = touch.locator(f".{live_app.key_class(KEY)} .cnnlens-occ-stack")
    stack.wait_for()
    live_app.wait_idle(touch)
    box = stack.bounding_box()
    scale = box["width"] / 28
    table = np.load(folder / "table.npz")
    cdp = touch.context.new_cdp_session(touch)

    def finger(kind: str, place: tuple[int, int]) -> None:
        x = box["x"] + (place[1] + WINDOW / 2) * scale
        y = box["y"] + (place[0] + WINDOW / 2) * scale
        points = [] if kind == "touchEnd" else [{"x": x, "y": y}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    finger("touchStart", (0, 0))
    for step in range(1, 11):
        finger("touchMove", (step, step + 2))
    wait_square(touch, (10, 12))  # touch moves reach the page a frame after the call
    expect_bars(read(touch), table, (10, 12))
    finger("touchEnd", (10, 12))
    touch.get_by_text("square {'row': 10, 'col': 12}").wait_for()
    touch.close()
