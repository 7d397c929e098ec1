"""What "Another random image" on Feature maps reruns and sends.

A click reruns only the image's fragment (``cnnlens.ui.feature_maps.image_ui``): the
new image, its grid, predictions, chosen channel and ranking, and none of the page's
widgets. Read from a live server through Streamlit's own websocket protocol, as a
browser's click (the button's trigger and its fragment's id), no browser needed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens import build_lens, demo_dataset, demo_model, to_batch
from cnnlens.explain import CLASS_SCORES
from cnnlens.ui import feature_maps, state
from cnnlens.ui.channel_card import CARD_KEY
from cnnlens.ui.value_explainer import PICK_KEY
from tests import live_app

# The page's widgets: drawn by the view, never by the image's fragment.
WIDGETS = {"button_group", "number_input", "file_uploader"}  # button_group: st.segmented_control


@pytest.fixture(scope="module")
def server() -> Iterator[live_app.Server]:
    with live_app.running_server() as running:
        yield running


def test_next_image_reruns_only_the_image_unless_the_view_shows_it_elsewhere(monkeypatch):
    session: dict = {
        state.SEED_KEY: 7,
        state.SPLIT_KEY: "train",
        state.IMAGE_KEY: "1.png",
        state.UPLOAD_KEY: None,
    }
    reruns: list[str] = []
    monkeypatch.setattr(feature_maps.st, "session_state", session)
    monkeypatch.setattr(feature_maps.st, "rerun", reruns.append)
    feature_maps.next_image()
    assert (session[state.SEED_KEY], session[state.IMAGE_KEY]) == (8, None)
    assert reruns == []  # the button's own fragment: the image's
    elsewhere = [
        {state.UPLOAD_KEY: ("mine.png", b"...")},  # its "Back to the dataset image" button
        {PICK_KEY: {"layer": CLASS_SCORES}},  # an explanation of the old image
        {CARD_KEY: True},  # the open channel card's ablation of this image
        {feature_maps.SAVES_KEY: True},  # the open downloads of this image's maps
    ]
    for shown in elsewhere:
        session.update(shown)
        feature_maps.next_image()
        assert reruns.pop() == feature_maps.VIEW_FRAGMENT
        assert session[state.UPLOAD_KEY] is None
        session.update({key: None for key in shown if key != PICK_KEY})
        session.pop(PICK_KEY, None)
    assert session[state.SEED_KEY] == 12


def test_the_image_view_is_made_once_for_every_session_that_shows_it():
    dataset = demo_dataset()
    pixels = np.asarray(dataset.load_image(dataset.pick(131)))
    choice = state.ModelChoice("demo", "default", "auto", False)
    args = (choice, ("conv_1", "conv_2"), pixels, "conv_2", "layer", 3, "max", tuple("0123456789"))
    first = feature_maps.get_image_view(*args)
    assert feature_maps.get_image_view(*args[:2], pixels.copy(), *args[3:]) is first
    with torch.inference_mode():
        expected = build_lens(demo_model(), ["conv_2"])(to_batch(Image.fromarray(pixels)))
    maps = expected["conv_2"][0].numpy()
    shown = np.frombuffer(base64.b64decode(first.grid["values"]), "<f4").reshape(maps.shape)
    np.testing.assert_allclose(shown, maps, atol=1e-5)
    assert first.channel["title"] == "conv_2, channel 3"
    assert first.ranking.startswith('<div style="font-weight:600;margin-bottom:0.4rem">Channels')
    labels = [int(label) for label in re.findall(r'data-label="(\d+)"', first.ranking)]
    assert labels == np.argsort(-maps.reshape(len(maps), -1).max(1), kind="stable").tolist()
    assert "The network says: " in first.predictions
    other = feature_maps.get_image_view(*args[:5], 4, *args[6:])
    assert other is not first and other.channel["title"] == "conv_2, channel 4"
    assert other.grid == first.grid


async def _click_once(port: int) -> tuple[list, list]:
    """Open Feature maps (conv_2) in a new session and click "Another random image" once.

    Returns:
        The (delta, element) pairs the opening run sent, and those the click's run sent.
    """
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    async with websockets.connect(
        f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"], max_size=None
    ) as socket:

        async def run(page: str = "", widget: str = "", fragment: str = "") -> list:
            back = BackMsg()
            back.rerun_script.page_script_hash = page
            back.rerun_script.query_string = "layers=conv_1,conv_2&layer=conv_2&input=image"
            back.rerun_script.fragment_id = fragment
            if widget:
                trigger = back.rerun_script.widget_states.widgets.add()
                trigger.id, trigger.trigger_value = widget, True
            await socket.send(back.SerializeToString())
            sent = []
            while True:
                message = ForwardMsg()
                message.ParseFromString(await asyncio.wait_for(socket.recv(), 120))
                kind = message.WhichOneof("type")
                if kind == "script_finished" and message.script_finished != 2:  # 2: a rerun
                    return sent
                if kind in ("new_session", "navigation"):  # the pages st.navigation lists
                    listed = getattr(message, kind).app_pages
                    pages.update({page.page_name: page.page_script_hash for page in listed})
                if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                    sent.append((message.delta, message.delta.new_element))

        pages: dict[str, str] = {}
        await run()
        opened = await run(page=pages["Feature maps"])
        delta, button = next(
            (delta, element)
            for delta, element in opened
            if element.WhichOneof("type") == "button"
            and element.button.label == "Another random image"
        )
        clicked = await run(pages["Feature maps"], button.button.id, delta.fragment_id)
        return opened, clicked


@pytest.mark.browser
def test_a_click_sends_the_new_images_maps_and_none_of_the_widgets(server):
    opened, clicked = asyncio.run(_click_once(server.port))
    drawn = {element.WhichOneof("type") for _, element in opened}
    assert drawn >= WIDGETS, drawn
    kinds = [element.WhichOneof("type") for _, element in clicked]
    assert not WIDGETS & set(kinds), kinds
    # The grid, the enlarged channel and the ranking (bars that pick) are components;
    # the predictions are HTML, and the button is "Another random image".
    assert sorted(kinds) == ["bidi_component"] * 3 + ["button", "html", "imgs"]
    # The grid shows the next seed's image (129), conv_2 as the lens computes it.
    grid = next(
        json.loads(element.bidi_component.json)
        for _, element in clicked
        if element.WhichOneof("type") == "bidi_component"
        and element.bidi_component.id.endswith("-grid")
    )
    dataset = demo_dataset()
    with torch.inference_mode():
        batch = to_batch(dataset.load_image(dataset.pick(129)))
        expected = build_lens(demo_model(), ["conv_2"])(batch)["conv_2"][0].numpy()
    shown = np.frombuffer(base64.b64decode(grid["values"]), "<f4").reshape(expected.shape)
    np.testing.assert_allclose(shown, expected, atol=1e-5)


@pytest.mark.browser
def test_an_explanation_shown_goes_with_its_image_and_the_page_keeps_working(server):
    """A click on the enlarged map reruns the whole view (the explanation is outside the
    image's fragment); the next image then drops it, and the maps show that image."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not live_app.CHROMIUM.exists():
        pytest.skip(f"{live_app.CHROMIUM} is missing: install Debian's chromium")
    with playwright_api.sync_playwright() as playwright:
        browser = live_app.launch_browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{server.url}/feature_maps?layer=conv_1&channel=2&input=image")
        live_app.wait_chart(page, "channel_map", "conv_1, channel 2")
        live_app.settle(page, 90)
        maps = page.locator(".st-key-channel_map .cnnlens-map-clickable .cnnlens-map-maps")
        maps.scroll_into_view_if_needed()
        box = maps.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        explained = page.locator(".st-key-value_explainer [data-explained='value']")
        explained.wait_for(state="attached", timeout=60_000)
        live_app.wait_idle(page, 60)
        page.get_by_role("button", name="Another random image").click()
        page.get_by_text("Click a point of the enlarged map").wait_for(timeout=60_000)
        live_app.settle(page, 60)
        assert explained.count() == 0
        dataset = demo_dataset()
        picked = dataset.pick(129)
        caption = page.locator('[data-testid="stImageCaption"]').first.inner_text()
        assert caption == f"{picked} · label {dataset.label_of(picked)}"
        with torch.inference_mode():
            batch = to_batch(dataset.load_image(picked))
            expected = build_lens(demo_model(), ["conv_1"])(batch)["conv_1"][0].numpy()
        shown = live_app.map_view(page, "grid", points=[(2, 14, 14), (31, 3, 20)])
        assert shown["values"] == pytest.approx(
            [expected[2, 14, 14], expected[31, 3, 20]], abs=1e-4
        )
        browser.close()
