"""The channel card (Feature maps) and the channel atlas (Insights) through AppTest.

Every picture and bar is checked against a reference computed here: feature
visualizations against ``visualize`` itself (Lucid's and the legible method with the
dataset's prior), relevance-ranked examples against ``top_relevant`` of a pass run
here, the accentuated example against ``accentuate``, ablations against a plain demo model
whose channel is zeroed by a hook of the test's own, kernels against the weights.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.components.v2.bidi_component.main import _make_trigger_id
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

import cnnlens.feature_visualization as visualize_module
from cnnlens.accentuation import accentuate
from cnnlens.data import load_dataset
from cnnlens.feature_visualization import ChannelImagesSpec, to_uint8, visualize
from cnnlens.layers import layer_names
from cnnlens.legibility import load_pixels
from cnnlens.models import demo_model, open_model
from cnnlens.preprocess import to_batch
from cnnlens.priors import ImagePriorSpec, image_prior
from cnnlens.relevance import RelevanceSpec, top_relevant
from cnnlens.store import ResultStore
from cnnlens.ui import channel_card
from tests.generated import write_dataset
from tests.test_app import bars, map_view, open_app
from tests.test_atlas import finish_painting
from tests.test_insights_page import reference, strongest

LABELS = [i % 10 for i in range(20)]
STEPS = 8  # few steps: the recipe itself is tested in the core's tests
SETTINGS = {"size": 28, "steps": STEPS, "seed": 0}


@pytest.fixture
def digits(tmp_path: Path, monkeypatch) -> Path:
    """Twenty 28×28 digits opened by the dashboard, with their own results store."""
    root = write_dataset(tmp_path / "digits", LABELS, size=28, seed=5)
    monkeypatch.setenv("CNNLENS_DATASET", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(channel_card, "STEPS", STEPS)
    return root


@pytest.fixture
def sent(monkeypatch) -> dict[str, bytes]:
    """The bytes of every picture the app sends to the browser, by media file id."""
    kept: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None) -> str:
        file_id = original(self, path_or_data, mimetype, kind, filename)
        kept[file_id] = path_or_data
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return kept


def open_card(**query: str):
    """Feature maps with the channel card opened, as a click on its expander does."""
    at = open_app("feature_maps.py", **query)
    at.session_state[channel_card.CARD_KEY] = True
    at.run()
    assert not at.exception, at.exception
    return at


def store(root: Path) -> ResultStore:
    return ResultStore(root.parent / "cache" / "insights")


def expected_tiles(layer: str, channels: list[int], negative: bool = False) -> np.ndarray:
    """Lucid's feature visualizations, computed here from scratch."""
    images = visualize(open_model("demo"), layer, channels, negative=negative, **SETTINGS)
    return to_uint8(images)


def expected_legible(root: Path, layer: str, channels: list[int]) -> np.ndarray:
    """The legible pictures, with a prior of the dataset computed here from scratch."""
    demo = open_model("demo")
    prior = image_prior(demo, load_dataset(root))
    images = visualize(demo, layer, channels, method="pca", prior=prior, **SETTINGS)
    return to_uint8(images)


def card_pictures(at, sent: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The card's feature visualizations as sent to the browser, shrunk back to 28 px."""
    found = {}
    for element in at.main.get("image"):
        image = element.proto.imgs[0]
        if image.caption in (channel_card.LEGIBLE_CAPTION, *channel_card.LUCID_CAPTIONS):
            pixels = np.asarray(Image.open(io.BytesIO(sent[Path(image.url).stem])))
            zoom = pixels.shape[0] // 28
            assert pixels.shape[:2] == (28 * zoom, 28 * zoom)
            found[image.caption] = pixels[::zoom, ::zoom]
    return found


def test_the_card_draws_what_a_channel_looks_for_once_and_every_session_reuses_it(
    digits, sent, monkeypatch
):
    at = open_card()
    assert any(e.label.startswith("Channel 0 of conv_1:") for e in at.expander)
    assert card_pictures(at, sent) == {}  # nothing stored: nothing drawn until asked
    excites, least = channel_card.LUCID_CAPTIONS
    at.button(key="card_visualize_start").click().run()
    assert not at.exception
    shown = card_pictures(at, sent)
    np.testing.assert_array_equal(shown[excites], expected_tiles("conv_1", [0])[0])
    np.testing.assert_array_equal(shown[least], expected_tiles("conv_1", [0], negative=True)[0])
    stored = ChannelImagesSpec(
        open_model("demo"), "conv_1", (0,), **SETTINGS, negatives=(False, True)
    )
    assert not stored.missing(store(digits))

    def no_compute(*args, **kwargs):
        raise AssertionError("a stored visualization was computed again")

    monkeypatch.setattr(visualize_module, "visualize", no_compute)
    again = open_card()  # another session: painted at once, from the store
    assert not again.exception
    shown_again = card_pictures(again, sent)
    for caption, pixels in shown.items():
        np.testing.assert_array_equal(shown_again[caption], pixels)
    assert not [b for b in again.button if b.key == "card_visualize_start"]


def click_during_run(key: str) -> None:
    """From inside a run: ask for a rerun in which the button ``key`` was clicked, as a
    browser does when Cancel is pressed while a pass runs."""
    ctx = get_script_run_ctx()
    states = WidgetStates()
    for state in ctx.session_state.get_widget_states():
        if not state.HasField("trigger_value"):
            states.widgets.append(state)
    button = ctx.session_state._state._key_id_mapper.get_id_from_key(key)
    assert button is not None, f"no button {key!r} in this run"
    clicked = states.widgets.add()
    clicked.id = button
    clicked.trigger_value = True
    ctx.script_requests.request_rerun(
        RerunData(
            widget_states=states,
            page_script_hash=ctx.page_script_hash,
            query_string=ctx.query_string,
        )
    )


def test_cancel_stops_the_drawing_keeps_nothing_and_waits_to_be_asked_again(digits, monkeypatch):
    real = visualize_module.visualize
    updates = []

    def cancelled_midway(*args, on_progress=None, **kwargs):
        def progress(done: int, total: int) -> None:
            updates.append(done)
            if len(updates) == 3:
                click_during_run("card_visualize_cancel")
            on_progress(done, total)  # the run stops here, at its next update

        return real(*args, on_progress=progress, **kwargs)

    monkeypatch.setattr(visualize_module, "visualize", cancelled_midway)
    at = open_card()
    at.button(key="card_visualize_start").click().run()
    assert not at.exception
    assert len(updates) == 3  # stopped at the update after the click
    assert any(c.value.startswith("Stopped; what was finished is kept") for c in at.caption)
    assert at.button(key="card_visualize_start")  # waits until asked again
    lucid = ChannelImagesSpec(
        open_model("demo"), "conv_1", (0,), **SETTINGS, negatives=(False, True)
    )
    assert lucid.missing(store(digits)) == lucid.tiles  # no picture kept
    at.run()
    assert len(updates) == 3  # a rerun does not start it by itself


def zeroed_logits(batch: torch.Tensor, layer: str, channel: int) -> tuple[np.ndarray, ...]:
    """The demo's logits as they are and with a channel zeroed by the test's own hook."""
    model = demo_model()
    index = layer_names(model).index(layer)

    def zero(module, inputs, output):
        output = output.clone()
        output[:, channel] = 0
        return output

    with torch.no_grad():
        before = model(batch)
        handle = model.features[index].register_forward_hook(zero)
        after = model(batch)
        handle.remove()
    return before.numpy(), after.numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def test_what_it_does_zeroes_the_channel_on_this_image_and_over_the_dataset(digits):
    at = open_card(channel="3")
    dataset = load_dataset(digits)
    image = dataset.load_image(dataset.pick(128))
    before, after = zeroed_logits(to_batch(image), "conv_1", 3)
    _, labels, values = bars(at, "This image, channel 3 off")
    assert labels == [str(i) for i in range(10)]
    np.testing.assert_allclose(values, (softmax(after) - softmax(before))[0], atol=1e-6)
    # The first convolution's kernel, the weights themselves.
    kernel = map_view(at, "card_kernel")
    np.testing.assert_array_equal(
        kernel["maps"], demo_model().features[0].weight[3].detach().numpy()
    )
    assert kernel["low"] == -kernel["high"]  # zero in the middle of the diverging colours

    at.button(key="card_ablation_start").click().run()
    assert not at.exception
    names = dataset.index["filename"].tolist()
    truth = np.array([int(dataset.label_of(name)) for name in names])
    before, after = zeroed_logits(to_batch([dataset.load_image(n) for n in names]), "conv_1", 3)
    classes = sorted(set(truth))
    change = [
        (after.argmax(1) == truth)[truth == c].mean()
        - (before.argmax(1) == truth)[truth == c].mean()
        for c in classes
    ]
    _, labels, values = bars(at, "The dataset, channel 3 off")
    assert labels == [str(c) for c in classes]
    np.testing.assert_allclose(values, change, atol=1e-9)
    again = open_card(channel="3")  # stored: shown at once
    np.testing.assert_allclose(bars(again, "The dataset, channel 3 off")[2], change, atol=1e-9)

    again.segmented_control(key="layer").set_value("conv_2").run()
    assert not [e for e in again.get("bidi_component") if e.proto.id.endswith("-card_kernel")]


def test_where_it_fires_shows_the_channels_strongest_images_after_one_pass(digits):
    at = open_card(channel="4")
    at.button(key="card_examples_start").click().run()
    assert not at.exception
    ref = reference(digits, "conv_1")
    rows, _ = strongest(ref, 4, 6)
    crops = [i.proto.imgs[0].caption for i in at.main.get("image")]
    # Not the image, nor the relevance-ranked examples (which name the answer).
    crops = [c for c in crops if c.startswith("img_") and "label" not in c and "says" not in c]
    assert crops == [f"{ref['filenames'][i]} · {LABELS[i]}" for i in rows]
    assert not [b for b in open_card().button if b.key == "card_examples_start"]


def pick(at, key: str, channel: int):
    """Run the page as if channel ``channel`` of map view ``key`` had been clicked."""
    view = next(e for e in at.get("bidi_component") if e.proto.id.endswith(f"-{key}"))
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = _make_trigger_id(view.proto.id, "events")  # the component's own events
    state.json_trigger_value = json.dumps(
        [{"event": "picked", "value": {"channel": channel, "x": 1, "y": 2}}]
    )
    return at._run(states)


def test_the_atlas_draws_every_channel_and_a_click_opens_its_card(digits, sent):
    at = open_app("insights.py", layers="conv_1,conv_2", layer="conv_2")
    at.segmented_control(key="insights_section").set_value("atlas").run()
    assert at.subheader[0].value == "What each of the 32 channels of conv_2 looks for"
    assert not [e for e in at.get("bidi_component") if e.proto.id.endswith("-atlas")]
    at.button(key="atlas_start").click().run()
    finish_painting(at)  # the atlas paints in the background
    assert not at.exception
    expected = expected_legible(digits, "conv_2", list(range(32)))
    prior = ImagePriorSpec(open_model("demo"), load_dataset(digits))
    assert not ChannelImagesSpec(
        open_model("demo"), "conv_2", tuple(range(32)), **SETTINGS, method="pca", prior=prior
    ).missing(store(digits))
    assert any("dataset's own typical shapes" in c.value for c in at.caption)
    atlas = map_view(at, "atlas")
    picture, step = atlas["picture"], 28 + atlas["gap"]
    assert (atlas["channels"], atlas["columns"]) == (32, 8)
    for channel in range(32):
        row, column = divmod(channel, 8)
        tile = picture[row * step : row * step + 28, column * step : column * step + 28]
        assert (tile[..., 3] == 255).all()
        for colour in range(3):
            np.testing.assert_array_equal(tile[..., colour], expected[channel])
    assert (picture[28:30, :, 3] == 0).all()  # the gaps are clear

    pick(at, "atlas", 13)
    assert not at.exception
    assert any(e.label.startswith("Channel 13 of conv_2:") for e in at.expander)
    assert at.number_input(key="channel").value == 13
    assert at.segmented_control(key="layer").value == "conv_2"
    # The card paints the tile the atlas stored at once; Lucid's are still to be drawn.
    shown = card_pictures(at, sent)
    np.testing.assert_array_equal(shown[channel_card.LEGIBLE_CAPTION], expected[13])
    assert set(shown) == {channel_card.LEGIBLE_CAPTION}
    assert at.button(key="card_visualize_start").label == "Compare with Lucid's recipe"


def test_a_change_too_small_to_see_is_called_no_visible_effect():
    small = np.array([-0.0001, 0.00004, 0.0])
    assert channel_card.effect_words(small, "probability").startswith(
        "No visible effect: no class's probability moves by a tenth of a point (at most 0.010%)"
    )
    assert channel_card.effect_words(np.array([0.002, -0.03]), "accuracy") == (
        "The largest change: -3.00%"
    )
    html = channel_card.ablation_html(
        channel_card.Ablated(np.array([0.6, 0.4]), np.array([0.59995, 0.40005])), ["a", "b"], 2
    )
    assert "No visible effect" in html


def test_the_examples_outline_the_part_the_value_reads_or_say_why_not():
    """The outline is the gradient method's box (each crop pixel tells where it comes from:
    red is the column × 8, green the row × 8); none, and a sentence, where the part is
    unknown or is the whole image."""
    import pandas as pd
    from PIL import ImageColor
    from torchvision.models import resnet18

    from cnnlens.figures import HIGHLIGHT_COLOUR
    from cnnlens.layers import Layers
    from cnnlens.ui.examples import fire_crop, outline_note
    from tests.test_receptive_fields import gradient_boxes

    line_colour = np.array(ImageColor.getrgb(HIGHLIGHT_COLOUR))

    def outline(crop) -> tuple[np.ndarray, ...]:
        return np.all(np.asarray(crop) == line_colour, axis=-1).nonzero()

    rows, cols = np.mgrid[0:28, 0:28]
    pixels = np.stack([cols * 8, rows * 8, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    demo = open_model("demo")
    field = demo.layers.receptive_field("conv_4", demo.spec.shape)
    spots = pd.DataFrame({"y": [0, 5], "x": [3, 6]})
    for y, x in zip(spots["y"], spots["x"], strict=True):
        crop = np.asarray(fire_crop(pixels, {"y": y, "x": x}, (14, 14), field, 2))
        line = outline(crop)
        top, left, bottom, right = line[0].min(), line[1].min(), line[0].max(), line[1].max()
        first, last = crop[top + 2, left + 2], crop[bottom - 2, right - 2]  # just inside it
        drawn = (first[0] // 8, first[1] // 8, last[0] // 8 + 1, last[1] // 8 + 1)
        expected = gradient_boxes(demo.model, (1, 28, 28), [("features.7", 2, y, x)])[0]
        assert drawn == expected
    assert outline_note("conv_4", 2, field, spots) is None

    # Unknown: the map cell's surroundings, no outline, and the page says so.
    assert not outline(fire_crop(pixels, {"y": 5, "x": 6}, (14, 14), None, 2))[0].size
    assert outline_note("layer9", 2, None, spots) == (
        "The part this channel sees is unknown for layer9: each image is cropped around "
        "where the channel fires, without an outline."
    )
    # ResNet-18's layer4 on a 64×64 input: every value sees the whole image.
    whole = Layers(resnet18()).receptive_field("layer4", (3, 64, 64))
    crop = fire_crop(np.zeros((64, 64, 3), dtype=np.uint8), {"y": 1, "x": 0}, (2, 2), whole, 7)
    assert crop.size == (64, 64) and not outline(crop)[0].size
    note = outline_note("layer4", 7, whole, pd.DataFrame({"y": [1], "x": [0]}))
    assert note == (
        "At each of these spots, channel 7 of layer4 sees the whole image, so nothing is outlined."
    )


def test_the_card_draws_the_legible_picture_from_the_datasets_prior(digits, sent):
    at = open_card(layer="conv_2", channel="3")
    # A small input: the prior is learned by itself; the picture waits to be asked.
    prior = ImagePriorSpec(open_model("demo"), load_dataset(digits))
    assert store(digits).peek(prior) is not None
    assert card_pictures(at, sent) == {}
    at.button(key="card_legible_start").click().run()
    assert not at.exception
    shown = card_pictures(at, sent)
    assert set(shown) == {channel_card.LEGIBLE_CAPTION}
    expected = expected_legible(digits, "conv_2", [3])[0]
    np.testing.assert_array_equal(shown[channel_card.LEGIBLE_CAPTION], expected)
    again = open_card(layer="conv_2", channel="3")  # stored: painted at once
    np.testing.assert_array_equal(
        card_pictures(again, sent)[channel_card.LEGIBLE_CAPTION], expected
    )
    assert not [b for b in again.button if b.key == "card_legible_start"]


def test_where_it_matters_ranks_by_relevance_and_the_strongest_image_is_accentuated(
    digits, sent, monkeypatch
):
    monkeypatch.setattr(channel_card, "ACCENTUATION_STEPS", 16)
    at = open_card(layer="conv_2", channel="3")
    demo, dataset = open_model("demo"), load_dataset(digits)
    relevance = ResultStore(digits.parent / "reference").run(RelevanceSpec(demo, dataset, "conv_2"))
    rows = top_relevant(relevance, 3, k=channel_card.EXAMPLES)
    crops = [i.proto.imgs[0].caption for i in at.main.get("image")]
    assert [c for c in crops if "says" in c] == [
        f"{r.filename} · {r.label} · says {r.predicted}" for r in rows.itertuples()
    ]
    at.button(key="card_examples_start").click().run()
    assert not at.exception
    ref = reference(digits, "conv_2")
    first = ref["filenames"][strongest(ref, 3, 6)[0][0]]
    pixels = load_pixels(demo, dataset, images=[first])
    found = accentuate(demo, "conv_2", 3, pixels[0], steps=16, strength=3.0)
    original, image = to_uint8(torch.cat([pixels, found.image[None]]))
    numbers = (found.distance, found.before, found.after)
    words = channel_card.accentuation_words(channel_card.Accentuated(original, image, *numbers), 3)
    assert words in [m.value for m in at.markdown]
    assert f"{found.before:.3g}** to **{found.after:.3g}" in words and found.after > found.before
    after = next(i for i in at.main.get("image") if i.proto.imgs[0].caption.startswith("Nudged"))
    shown = np.asarray(Image.open(io.BytesIO(sent[Path(after.proto.imgs[0].url).stem])))
    zoom = shown.shape[0] // 28
    np.testing.assert_array_equal(shown[::zoom, ::zoom], image)


def test_the_cards_legible_picture_shows_its_mask_from_visualize_with_masks(digits, sent):
    from cnnlens.feature_visualization import ChannelMaskSpec, visualize_with_masks
    from cnnlens.figures import overlay_png

    at = open_card(layer="conv_2", channel="3")
    at.button(key="card_legible_start").click().run()
    assert not at.exception
    demo = open_model("demo")
    prior = image_prior(demo, load_dataset(digits))
    expected = visualize_with_masks(demo, "conv_2", [3], method="pca", prior=prior, **SETTINGS)
    picture = to_uint8(expected.images)[0]
    tile = ChannelImagesSpec(
        demo,
        "conv_2",
        (3,),
        **SETTINGS,
        method="pca",
        prior=ImagePriorSpec(demo, load_dataset(digits)),
    ).tile(3)
    mask = store(digits).peek(ChannelMaskSpec.of(tile))
    np.testing.assert_array_equal(mask, expected.masks[0].numpy())
    shown = [
        np.asarray(Image.open(io.BytesIO(sent[Path(element.proto.imgs[0].url).stem])))
        for element in at.main.get("image")
        if element.proto.imgs[0].caption == channel_card.MASK_CAPTION
    ]
    overlay = overlay_png(picture, expected.masks[0].numpy().sum(0), side=channel_card.SHOWN_SIDE)
    assert len(shown) == 1
    np.testing.assert_array_equal(shown[0], np.asarray(Image.open(io.BytesIO(overlay))))
    sentence = channel_card.WORDS["card_mask"].strip().replace("\n", " ")
    assert sentence in [caption.value for caption in at.caption]
