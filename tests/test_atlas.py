"""The channel atlas paints in the background (AppTest): the page reruns meanwhile, each
finished group shows at once, Cancel stops it with the finished groups kept, and an
error is shown. ``tests/test_browser_atlas.py`` checks the same in a real browser.

A gate holds the painting before its second group, so each test looks at the atlas
mid-run for as long as it needs; the images themselves are checked against
``visualize`` in ``tests/test_channel_card.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cnnlens.feature_visualization as visualize_module
from cnnlens.data import load_dataset
from cnnlens.feature_visualization import ChannelImagesSpec
from cnnlens.models import open_model
from cnnlens.priors import ImagePriorSpec
from cnnlens.store import ResultStore
from cnnlens.ui import channel_card, runner
from cnnlens.ui.atlas import ATLAS_BATCH
from tests.generated import write_dataset
from tests.test_app import map_view, open_app

LABELS = [i % 10 for i in range(20)]
STEPS = 8
SETTINGS = {"size": 28, "steps": STEPS, "seed": 0}
CHANNELS = 32  # conv_2 of the demo: two groups of ATLAS_BATCH


def finish_painting(at, timeout: float = 60.0):
    """Wait for every result computing in the background, then run the page again."""
    for thread in threading.enumerate():
        if thread.name.startswith(runner._THREAD_PREFIX):
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} still runs after {timeout} s"
    return at.run()


@pytest.fixture
def digits(tmp_path: Path, monkeypatch) -> Path:
    """Twenty 28×28 digits opened by the dashboard, with their own results store."""
    root = write_dataset(tmp_path / "digits", LABELS, size=28, seed=5)
    monkeypatch.setenv("CNNLENS_DATASET", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(channel_card, "STEPS", STEPS)
    return root


@pytest.fixture
def gate(monkeypatch) -> Iterator[threading.Event]:
    """Holds the painting before its second group until the test sets it (or 20 s pass)."""
    opened = threading.Event()
    calls = []
    paint = visualize_module.visualize

    def held(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            opened.wait(20)
        return paint(*args, **kwargs)

    monkeypatch.setattr(visualize_module, "visualize", held)
    yield opened
    opened.set()  # never leave a thread waiting


def atlas_spec(root: Path) -> ChannelImagesSpec:
    """The atlas's tiles: a small input, so drawn from the dataset's prior."""
    demo = open_model("demo")
    prior = ImagePriorSpec(demo, load_dataset(root))
    channels = tuple(range(CHANNELS))
    return ChannelImagesSpec(demo, "conv_2", channels, **SETTINGS, method="pca", prior=prior)


def drawn(root: Path) -> int:
    """How many of the atlas's tiles the store holds."""
    return len(atlas_spec(root).found(ResultStore(root.parent / "cache" / "insights")))


def wait_for_tiles(root: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while drawn(root) < count:
        assert time.monotonic() < deadline, f"{drawn(root)} tiles after {timeout} s"
        time.sleep(0.02)


def opaque_tiles(view: dict) -> list[int]:
    """The channels whose tile the atlas picture shows (opaque), in order."""
    picture, height, width = view["picture"], view["height"], view["width"]
    shown = []
    for channel in range(view["channels"]):
        row, column = divmod(channel, view["columns"])
        top, left = row * (height + view["gap"]), column * (width + view["gap"])
        if (picture[top : top + height, left : left + width, 3] == 255).all():
            shown.append(channel)
    return shown


def has_view(at, key: str) -> bool:
    return any(e.proto.id.endswith(f"-{key}") for e in at.get("bidi_component"))


def open_atlas():
    at = open_app("insights.py", layers="conv_1,conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("atlas").run()
    assert at.subheader[0].value == f"What each of the {CHANNELS} channels of conv_2 looks for"
    return at


def test_the_atlas_paints_in_the_background_and_shows_each_group_when_finished(digits, gate):
    at = open_atlas()
    at.button(key="atlas_start").click().run()
    # The run that started it has ended while it paints: progress and Cancel, no atlas yet.
    assert not at.exception, at.exception
    assert at.button(key="atlas_cancel").label == "Cancel"
    assert len(at.get("progress")) == 1
    assert not has_view(at, "atlas")

    wait_for_tiles(digits, ATLAS_BATCH)
    at.run()  # what the page's next look shows: the first group, not clickable yet
    assert not at.exception, at.exception
    so_far = map_view(at, "atlas_so_far")
    assert opaque_tiles(so_far) == list(range(ATLAS_BATCH))
    assert "clickable" not in so_far
    assert any(c.value.startswith(f"{ATLAS_BATCH} of {CHANNELS} channels") for c in at.caption)
    assert drawn(digits) == ATLAS_BATCH  # still held: the page did not wait for the rest

    gate.set()
    finish_painting(at)
    assert not at.exception, at.exception
    atlas = map_view(at, "atlas")
    assert opaque_tiles(atlas) == list(range(CHANNELS))
    assert atlas["clickable"] is True
    assert not has_view(at, "atlas_so_far")
    assert not at.get("progress")
    assert not [b for b in at.button if b.key in ("atlas_cancel", "atlas_start")]


def test_the_painting_goes_on_while_the_rest_of_the_page_changes(digits, gate):
    at = open_atlas()
    at.button(key="atlas_start").click().run()
    wait_for_tiles(digits, ATLAS_BATCH)
    # Another layer, another section: whole-page reruns that leave the painting going.
    at.segmented_control(key="insights_layer").set_value("conv_1").run()
    assert at.subheader[0].value == "What each of the 32 channels of conv_1 looks for"
    at.segmented_control(key="insights_section").set_value("top").run()
    assert not at.exception, at.exception
    gate.set()
    finish_painting(at)
    assert drawn(digits) == CHANNELS
    at.segmented_control(key="insights_section").set_value("atlas").run()
    at.segmented_control(key="insights_layer").set_value("conv_2").run()
    assert opaque_tiles(map_view(at, "atlas")) == list(range(CHANNELS))


def test_cancel_stops_the_painting_and_keeps_the_finished_groups(digits, gate):
    at = open_atlas()
    at.button(key="atlas_start").click().run()
    wait_for_tiles(digits, ATLAS_BATCH)
    at.button(key="atlas_cancel").click().run()
    gate.set()  # the held group starts, and stops at its first step
    finish_painting(at)
    assert not at.exception, at.exception
    assert drawn(digits) == ATLAS_BATCH
    assert (
        at.button(key="atlas_start").label
        == f"Draw the {CHANNELS - ATLAS_BATCH} channels still missing"
    )
    assert any(c.value.startswith("Stopped; what was finished is kept") for c in at.caption)
    assert opaque_tiles(map_view(at, "atlas")) == list(range(ATLAS_BATCH))
    assert not at.get("progress")

    # Going on paints only the missing group.
    at.button(key="atlas_start").click().run()
    finish_painting(at)
    assert drawn(digits) == CHANNELS
    assert opaque_tiles(map_view(at, "atlas")) == list(range(CHANNELS))


def test_an_error_in_the_background_is_shown_once(digits, monkeypatch):
    def fails(*args, **kwargs):
        raise ValueError("This layer cannot be painted.")

    monkeypatch.setattr(visualize_module, "visualize", fails)
    at = open_atlas()
    at.button(key="atlas_start").click().run()
    finish_painting(at)
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["This layer cannot be painted."]
    assert not [t for t in threading.enumerate() if t.name.startswith(runner._THREAD_PREFIX)]
    at.run()  # shown once; the start button is back, nothing starts by itself
    assert not at.error
    assert at.button(key="atlas_start").label == f"Draw all {CHANNELS} channels"
