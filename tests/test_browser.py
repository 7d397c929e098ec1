"""The dashboard in a real browser: a shared link, and a newcomer's walk from Home to an upload.

Starts ``streamlit run dashboard.py`` on a free port and drives Debian's headless Chromium
with playwright (see ``tests/live_app.py``). Each step saves a screenshot under
``test-artifacts/browser/`` and prints how long it took (pytest shows it on failure).
Expected values come from the core (cnnlens), never from the app itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests import live_app

pytestmark = pytest.mark.browser

SHOTS = live_app.ARTIFACTS / "browser"
NOT_READABLE = "not an image Pillow can read"
_clock = {"last": time.perf_counter()}
_visited = {"any": False}  # whether a test has opened the module's server yet
_requested: list[str] = []  # every URL the pages of the running test asked for
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
# Every URL the page refers to, asked for or not: a headless browser may leave out a
# favicon that a desktop browser would fetch.
_REFERENCED_JS = r"""() => {
  const urls = [
    ...Array.from(document.querySelectorAll("link[href]"), (e) => e.href),
    ...Array.from(document.querySelectorAll("[src]"), (e) => e.src),
  ];
  for (const sheet of document.styleSheets) {
    let rules;
    try { rules = sheet.cssRules; } catch (error) { urls.push(sheet.href); continue; }
    for (const rule of rules) {
      for (const m of rule.cssText.matchAll(/url\(["']?([^"')]+)["']?\)/g)) {
        urls.push(new URL(m[1], sheet.href || document.baseURI).href);
      }
    }
  }
  return urls;
}"""


def _unavailable(reason: str) -> None:
    """Without a browser these tests cannot run: a failure on CI, a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium, driven by playwright."""
    if not live_app.CHROMIUM.exists():
        _unavailable(
            f"{live_app.CHROMIUM} is missing: install Debian's chromium "
            "(`make /usr/bin/chromium`); never `playwright install`"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -r requirements-test.txt")
    for stale in SHOTS.glob("*.png"):  # the screenshots show this run only
        stale.unlink()
    with sync_playwright() as playwright:
        chromium = live_app.launch_browser(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(browser: Any) -> Iterator[live_app.Server]:
    """The dashboard on a free port (started after the browser, so a skip starts nothing)."""
    with live_app.running_server() as running:
        yield running


def new_page(browser: Any) -> Any:
    """A page in a fresh browser context, i.e. a new Streamlit session.

    The viewport is tall because Streamlit scrolls inside its own container, so a
    full-page screenshot would show no more than the viewport.
    """
    context = browser.new_context(viewport={"width": 1400, "height": 2200}, accept_downloads=True)
    context.set_default_timeout(30_000)
    context.on("request", lambda request: _requested.append(request.url))
    context.on("page", lambda page: page.on("websocket", lambda ws: _requested.append(ws.url)))
    return context.new_page()


def leaving(urls: Iterable[str]) -> list[str]:
    """The URLs that go to another machine than this one."""
    return sorted(
        {
            url
            for url in urls
            if urlsplit(url).scheme not in ("data", "blob", "about")
            and urlsplit(url).hostname not in LOCAL_HOSTS
        }
    )


@pytest.fixture(autouse=True)
def no_request_leaves_the_machine() -> Iterator[None]:
    """Every test of this module fails on a request its pages make to another machine."""
    _requested.clear()
    yield
    assert leaving(_requested) == [], "requests that left the machine"


def shot(page: Any, name: str) -> None:
    """Save a screenshot of the step and print how long the step took."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
    now = time.perf_counter()
    print(f"{name}: {now - _clock['last']:.2f} s")
    _clock["last"] = now


def assert_no_exception(page: Any, server: live_app.Server) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, f"{errors.first.inner_text()}\n{server.log_tail()}"


def sidebar_caption(page: Any) -> str:
    """The caption under the current image in the sidebar, e.g. "3282.png · label 9"."""
    caption = page.locator('[data-testid="stSidebar"] [data-testid="stImageCaption"]')
    return " ".join(caption.inner_text().split())


def image_caption(page: Any) -> str:
    """The caption under the Feature maps page's input image, e.g. "3282.png · label 9"
    (the sidebar leaves out an image the page shows)."""
    assert page.locator('[data-testid="stSidebar"] [data-testid="stImage"]').count() == 0
    caption = page.locator('[data-testid="stImageCaption"]').first
    return " ".join(caption.inner_text().split())


def eventually(check: Callable[[], None], timeout: float = 10.0) -> None:
    """Retry ``check`` until it passes: a chart may redraw just after the run is idle."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _assert_equal(found: object, expected: object) -> None:
    assert found == expected, f"{found!r} != {expected!r}"


def digit_png() -> bytes:
    """A white "7"-like stroke on black, 28×28."""
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(6, 6), (22, 6), (12, 23)], fill=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def demo_dataset() -> Any:
    import cnnlens

    return cnnlens.demo_dataset()


def expected_maps(image: Image.Image, layer: str) -> np.ndarray:
    """The demo model's C×H×W maps of ``layer`` for an image, straight from the core."""
    import cnnlens

    lens = cnnlens.build_lens(cnnlens.demo_model(), [layer])
    return lens(cnnlens.to_batch(image))[layer][0].numpy()


def _hover_tile(page, maps: np.ndarray, channel: int, y: int, x: int) -> None:
    """Point at one pixel of one tile and read the map view's hover text."""
    from cnnlens.figures import grid_shape

    count, height, width = maps.shape
    columns = grid_shape(count)[1]
    img = page.locator(".st-key-grid .cnnlens-map-maps")
    img.scroll_into_view_if_needed()
    box = img.bounding_box()
    natural = page.evaluate("(i) => [i.naturalWidth, i.naturalHeight]", img.element_handle())
    px = (channel % columns) * (width + 1) + x + 0.5
    py = (channel // columns) * (height + 1) + y + 0.5
    page.mouse.move(
        box["x"] + px / natural[0] * box["width"], box["y"] + py / natural[1] * box["height"]
    )
    tip = page.locator(".st-key-grid .cnnlens-map-tip")
    tip.wait_for(state="visible")
    value = float(np.float32(maps[channel, y, x]))
    assert tip.inner_text().startswith(f"channel {channel} · x {x} · y {y} · value ")
    shown = float(tip.inner_text().rsplit(" ", 1)[1])
    assert shown == pytest.approx(value, rel=1e-3, abs=1e-4)
    page.mouse.move(0, 0)


def assert_grid_shows(page: Any, maps: np.ndarray) -> None:
    """The grid shows ``maps``: its tiling and some raw hover values."""
    from cnnlens.figures import grid_shape, montage

    count, height, width = maps.shape
    probes = [(3, 5, 7), (0, 0, 0), (count - 1, height - 1, width - 1), (count // 2, 14, 20)]

    def check() -> None:
        grid = live_app.map_view(page, "grid", points=probes)
        assert grid is not None, "the grid is not drawn"
        assert grid["shape"] == list(maps.shape)
        assert grid["columns"] == grid_shape(count)[1]
        assert tuple(grid["picture"]) == montage(maps).shape
        expected = [float(maps[c, y, x]) for c, y, x in probes]
        assert grid["values"] == pytest.approx(expected, abs=1e-4)

    eventually(check)


def test_shared_link_to_a_fresh_server(browser: Any, server: live_app.Server) -> None:
    """A link to a deep page works when it is the server's first visitor.

    Until a session has run the entrypoint, Streamlit treats ``pages/`` as an old-style
    multipage folder and runs a deep-linked page on its own. This test comes first in the
    file so that it is the module server's first visitor; run after another test, it
    starts a server of its own.
    """
    dataset = demo_dataset()
    with contextlib.ExitStack() as stack:
        if _visited["any"]:
            server = stack.enter_context(live_app.running_server())
        _visited["any"] = True
        page = new_page(browser)
        stack.callback(page.context.close)
        _clock["last"] = time.perf_counter()
        page.goto(f"{server.url}/feature_maps?seed=7&layers=conv_1,conv_2&layer=conv_2&channel=3")
        shown = page.get_by_role("heading", name="conv_2: 32 channels of 28×28")
        shown.or_(page.locator('[data-testid="stException"]')).first.wait_for()
        live_app.wait_idle(page)
        assert_no_exception(page, server)
        live_app.wait_chart(page, "channel_map", "conv_2, channel 3")
        live_app.settle(page)
        picked = dataset.pick(7)
        assert image_caption(page) == f"{picked} · label {dataset.label_of(picked)}"
        shot(page, "00-shared-link-first-visitor")


def test_newcomer_walk(browser: Any, server: live_app.Server, tmp_path: Path) -> None:
    dataset = demo_dataset()
    _visited["any"] = True
    page = new_page(browser)
    nav = page.locator('[data-testid="stSidebarNav"]')
    _clock["last"] = time.perf_counter()

    # Home, then the Dataset page from the sidebar.
    page.goto(server.url)
    page.get_by_role("heading", name="See what a neural network sees").wait_for()
    live_app.settle(page)
    assert_no_exception(page, server)
    shot(page, "01-home")

    nav.get_by_role("link", name="Dataset").click()
    page.get_by_role("heading", name="Dataset", exact=True).wait_for()
    chosen = page.locator(".st-key-chosen_image")  # a plain image with its caption
    chosen.get_by_text("3282.png · label 9", exact=True).wait_for()
    live_app.settle(page)
    assert chosen.locator("img").evaluate("img => img.complete && img.naturalWidth") == 28
    assert sidebar_caption(page) == "your drawing"  # the demo's input starts on the pad
    shot(page, "02-dataset-seed-128")

    # Another seed picks another image.
    picked = dataset.pick(7)
    seed_input = page.locator(".st-key-seed input")
    seed_input.fill("7")
    seed_input.press("Enter")
    chosen.get_by_text(f"{picked} · label {dataset.label_of(picked)}", exact=True).wait_for()
    live_app.settle(page)
    assert picked in sidebar_caption(page)
    shot(page, "03-dataset-seed-7")

    # Open one of the grid's images.
    opened = next(name for name in dataset.pick_many(7, 24)[5:] if name != picked)
    label = dataset.label_of(opened)
    # Streamlit also renders a hidden copy of each button; the role picks the visible one.
    tile = page.locator(f".{live_app.key_class(f'open_{opened}')}").get_by_role("button")
    assert tile.inner_text().strip() == f"Open {label}"
    tile.click()
    chosen.get_by_text(f"{opened} · label {label}", exact=True).wait_for()
    live_app.settle(page)
    assert sidebar_caption(page) == f"{opened} · label {label}"
    assert_no_exception(page, server)
    shot(page, "04-dataset-opened-from-grid")

    # Feature maps of that image: layer conv_2, channel 3.
    nav.get_by_role("link", name="Feature maps").click()
    page.get_by_role("heading", name="Feature maps").wait_for()
    live_app.wait_chart(page, "grid")
    live_app.settle(page)
    page.locator(".st-key-layer").get_by_role("radio", name="conv_2").click()
    maps = expected_maps(dataset.load_image(opened), "conv_2")
    count, height, width = maps.shape
    subheader = f"conv_2: {count} channels of {height}×{width}"
    assert subheader == "conv_2: 32 channels of 28×28"
    page.get_by_role("heading", name=subheader).wait_for()
    live_app.settle(page)
    # The overlay's opacity slider works in the browser and outlives the next rerun.
    overlay = page.locator(".st-key-channel_map .cnnlens-map-overlay")
    overlay.locator("input[type=range]").fill("0.8")
    assert overlay.locator(".cnnlens-map-maps").evaluate("(img) => img.style.opacity") == "0.8"
    assert overlay.locator("output").inner_text() == "80%"
    channel_input = page.locator(".st-key-channel input")
    channel_input.fill("3")
    channel_input.press("Enter")
    live_app.wait_chart(page, "channel_map", "conv_2, channel 3")
    overlay.locator(".cnnlens-map-title", has_text="Channel 3 laid over the image").wait_for()
    live_app.settle(page)
    assert overlay.locator(".cnnlens-map-maps").evaluate("(img) => img.style.opacity") == "0.8"
    assert_no_exception(page, server)
    shot(page, "05-feature-maps-conv2-channel3")

    # 32 maps of 28×28 tile a 6×6 grid with 1-pixel gaps: 6·28 + 5 = 173 a side.
    assert live_app.map_view(page, "grid")["picture"] == [173, 173]
    assert_grid_shows(page, maps)
    enlarged = live_app.map_view(page, "channel_map", points=[(0, 5, 7), (0, 14, 20)])
    assert enlarged is not None
    assert enlarged["title"] == "conv_2, channel 3"
    assert enlarged["shape"] == [1, height, width]
    assert enlarged["values"] == pytest.approx([maps[3, 5, 7], maps[3, 14, 20]], abs=1e-4)
    # Hovering reads the raw value out: channel 3's tile, at x 7, y 5.
    _hover_tile(page, maps, channel=3, y=5, x=7)
    # "Save this view" holds the downloads; the recipe names this image, layer and channel.
    page.get_by_role("button", name="Save this view").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Recipe of this view (.json)").click()
    recipe = json.loads(Path(download.value.path()).read_text())
    assert (recipe["image"], recipe["layer"], recipe["channel"]) == (opened, "conv_2", 3)
    page.keyboard.press("Escape")

    # The URL reopens the same view in a fresh session.
    page.wait_for_url(re.compile(r"[?&]channel=3(&|$)"))
    url = page.url
    assert f"image={opened}" in url and "layer=conv_2" in url, url
    other = new_page(browser)
    other.goto(url)
    other.get_by_role("heading", name=subheader).wait_for()
    live_app.wait_chart(other, "channel_map", "conv_2, channel 3")
    live_app.settle(other)
    assert image_caption(other) == f"{opened} · label {label}"
    # The number box can take a frame or two longer than the chart to show its value.
    eventually(lambda: _assert_equal(other.locator(".st-key-channel input").input_value(), "3"))
    assert_no_exception(other, server)
    assert_grid_shows(other, maps)
    shot(other, "06-shared-url-new-session")
    other.context.close()

    # An image of one's own: its name shows and the maps are its maps.
    upload = tmp_path / "my_seven.png"
    upload.write_bytes(digit_png())
    uploader = page.locator(
        f'.{live_app.key_class("upload_widget")} [data-testid="stFileUploaderDropzoneInput"]'
    )
    uploader.set_input_files(str(upload))
    page.get_by_text("your image my_seven.png").first.wait_for()
    live_app.settle(page)
    assert image_caption(page) == "your image my_seven.png"
    assert_no_exception(page, server)
    assert_grid_shows(page, expected_maps(Image.open(upload), "conv_2"))
    shot(page, "07-uploaded-image")

    # A corrupt file: a readable error, and the page keeps working.
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    uploader.set_input_files(str(bad))
    page.get_by_text(NOT_READABLE).wait_for()
    live_app.settle(page)
    assert page.locator(".st-key-grid .cnnlens-map-maps").count() == 1
    assert page.get_by_role("heading", name=subheader).is_visible()
    assert_no_exception(page, server)
    shot(page, "08-corrupt-upload")
    page.context.close()


def test_every_page_stays_on_the_machine(browser: Any, server: live_app.Server) -> None:
    """Each page asks only this machine for anything, and refers to nothing elsewhere.

    The autouse fixture checks every request (websockets included) of every test; this
    walk also reads the URLs each page refers to, such as the favicon, which a headless
    browser need not fetch.
    """
    from cnnlens.ui.navigation import PAGES

    _visited["any"] = True
    page = new_page(browser)
    nav = page.locator('[data-testid="stSidebarNav"]')
    page.goto(server.url)
    referred: set[str] = set()
    for title, _ in PAGES.values():
        nav.get_by_role("link", name=title).click()
        heading = "See what a neural network sees" if title == "Home" else title
        page.get_by_role("heading", name=heading, exact=True).wait_for()
        live_app.settle(page)
        assert_no_exception(page, server)
        referred.update(page.evaluate(_REFERENCED_JS))
    assert leaving(referred) == [], "URLs on other machines that the page refers to"
    icons = page.locator("link[rel~='icon']").evaluate_all("(links) => links.map((l) => l.href)")
    assert icons and all(urlsplit(href).hostname in LOCAL_HOSTS for href in icons), icons
    assert any(url.startswith(f"ws://localhost:{server.port}/") for url in _requested)
    assert any("/_stcore/" in url for url in _requested)  # the recorder saw the app's own
    page.context.close()


def test_own_photos_through_a_torchvision_model(
    browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An analyst opens a folder of RGB photos by path and looks into ResNet-18's layer2."""
    import cnnlens
    from cnnlens.models import open_model
    from tests.generated import write_image_folder

    root = tmp_path / "data"
    write_image_folder(root / "photos", ["cat", "dog", "owl"] * 4, size=(48, 64), mode="RGB")
    monkeypatch.setenv("CNNLENS_DATA_ROOTS", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights: random
    dataset = cnnlens.load_dataset(root / "photos")
    picked = dataset.pick(128)
    with live_app.running_server() as server:
        page = new_page(browser)
        _clock["last"] = time.perf_counter()
        page.goto(server.url)
        page.get_by_role("heading", name="See what a neural network sees").wait_for()
        live_app.settle(page)

        # A path outside the data roots is refused, the folder under them opens.
        sidebar = page.locator('[data-testid="stSidebar"]')
        path_input = page.locator(f".{live_app.key_class('folder_path')} input")
        sidebar.get_by_role("button", name="Open other data").click()
        path_input.fill("/etc")
        path_input.press("Enter")
        page.get_by_role("button", name="Open folder").click()
        page.get_by_text("outside the folders cnnlens may read").wait_for()
        live_app.settle(page)
        shot(page, "09-path-outside-the-roots")
        if not path_input.is_visible():  # the popover may stay open across the rerun
            sidebar.get_by_role("button", name="Open other data").click()
        path_input.fill("photos")
        path_input.press("Enter")
        page.get_by_role("button", name="Open folder").click()
        page.get_by_text("12 labelled images").wait_for()
        live_app.settle(page)
        page.keyboard.press("Escape")  # close the popover

        # ResNet-18 from the model picker, then its layer2 on the Feature maps page.
        picker = page.locator(f".{live_app.key_class('model')}")
        picker.click()
        page.keyboard.type("ResNet-18")
        page.keyboard.press("Enter")
        page.get_by_text("ResNet-18").first.wait_for()
        live_app.settle(page)
        page.locator('[data-testid="stSidebarNav"]').get_by_role(
            "link", name="Feature maps"
        ).click()
        page.get_by_role("heading", name="Feature maps").wait_for()
        page.get_by_role("heading", name="relu: 64 channels of 112×112").wait_for()
        live_app.settle(page)
        assert sidebar.get_by_text("Random weights").first.is_visible()
        page.locator(".st-key-layer").get_by_role("radio", name="layer2").click()
        page.get_by_role("heading", name="layer2: 128 channels of 28×28").wait_for()
        live_app.settle(page)
        channel_input = page.locator(".st-key-channel input")
        channel_input.fill("5")
        channel_input.press("Enter")
        live_app.wait_chart(page, "channel_map", "layer2, channel 5")
        live_app.settle(page)
        assert_no_exception(page, server)
        assert picked in image_caption(page)
        shot(page, "10-own-photos-resnet18-layer2")

        loaded = open_model("resnet18", weights="random")
        model = loaded.model
        import torch

        with torch.inference_mode():
            x = model.maxpool(
                model.relu(model.bn1(model.conv1(loaded.batch(dataset.load_image(picked, "RGB")))))
            )
            expected = model.layer2(model.layer1(x))[0, 5].numpy()
        enlarged = live_app.map_view(page, "channel_map", points=[(0, 3, 4), (0, 20, 11)])
        assert enlarged["values"] == pytest.approx([expected[3, 4], expected[20, 11]], abs=1e-4)
        # The overlay lies over the 224×224 crop the network saw, not the whole photo.
        under = page.locator(".st-key-channel_map .cnnlens-map-overlay .cnnlens-map-under")
        assert under.evaluate("(i) => [i.naturalWidth, i.naturalHeight]") == [224, 224]
        page.context.close()
