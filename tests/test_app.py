"""The dashboard through Streamlit's AppTest: every page, uploads, URLs, bad input, sessions."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.components.v2.bidi_component.main import _make_trigger_id
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from cnnlens import build_lens, demo_dataset, demo_model, to_batch
from cnnlens.figures import montage
from cnnlens.ui.value_explainer import PICK_KEY
from tests.generated import write_dataset

APP = str(Path(__file__).resolve().parent.parent / "dashboard.py")
PAGES = Path(__file__).resolve().parent.parent / "pages"
DATASET = demo_dataset()


def open_app(page: str | None = None, **query: str | None) -> AppTest:
    """The app opened as a link with this query opens it.

    It opens on the dataset's image: the demo's pages start on the drawing pad, which
    ``tests/test_drawing_pad.py`` opens with ``input=None`` (the model's default) or
    ``input="draw"``.
    """
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in {"input": "image", **query}.items():
        if value is not None:
            at.query_params[key] = value
    if page:
        at.switch_page(str(PAGES / page))  # the first run opens it, as a shared link does
    at.run()
    assert not at.exception, at.exception
    return at


def chart(at: AppTest, key: str) -> dict:
    """The plotly spec of the chart with this key, numpy arrays decoded."""
    matches = [c for c in at.get("plotly_chart") if c.key == key]
    assert matches, f"no chart {key!r}; charts: {[c.key for c in at.get('plotly_chart')]}"
    return json.loads(matches[0].proto.spec, object_hook=_decode)


def _decode(obj: dict) -> object:
    if set(obj) == {"dtype", "bdata", "shape"}:
        data = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
        return data.reshape([int(n) for n in str(obj["shape"]).split(",")])
    if set(obj) == {"dtype", "bdata"}:
        return np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
    return obj


def bar_snippets(at: AppTest) -> list[str]:
    """The HTML of every bar chart: shown by ``st.html``, or by the bars that pick."""
    picking = [json.loads(e.proto.json) for e in at.get("bidi_component")]
    return [e.value for e in at.html] + [d["html"] for d in picking if "html" in d]


def bars(at: AppTest, title_start: str) -> tuple[str, list[str], np.ndarray]:
    """The HTML bar chart whose title starts so: its title, bar labels and values."""
    for snippet in bar_snippets(at):
        shown = re.match(r'<div style="font-weight:600[^"]*">([^<]*)</div>', snippet)
        if shown and html.unescape(shown.group(1)).startswith(title_start):
            found = re.findall(r'data-label="([^"]*)" data-value="([^"]*)"', snippet)
            labels = [html.unescape(label) for label, _ in found]
            return html.unescape(shown.group(1)), labels, np.array([float(v) for _, v in found])
    raise AssertionError(f"no bar chart titled {title_start!r}")


def title(spec: dict) -> str:
    return spec["layout"]["title"]["text"]


def lens_maps(image: Image.Image, layer: str) -> np.ndarray:
    return build_lens(demo_model(), [layer])(to_batch(image))[layer][0].numpy()


def map_view(at: AppTest, key: str) -> dict:
    """What the map view with this key was sent, with ``maps`` (C×H×W raw values, or
    None) and ``picture`` (the montage PNG's palette indices) decoded."""
    views = [e for e in at.get("bidi_component") if e.proto.id.endswith(f"-{key}")]
    assert views, f"no map view {key!r}"
    data = json.loads(views[0].proto.json)
    shape = (data["channels"], data["height"], data["width"])
    raw = data["values"]
    data["maps"] = (
        None if raw is None else np.frombuffer(base64.b64decode(raw), "<f4").reshape(shape)
    )
    data["picture"] = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["png"]))))
    return data


def click(at: AppTest, key: str, value: object) -> AppTest:
    """Run the page as if the component ``key`` (a map view, the ranking) had been clicked
    and had sent ``value`` as its "picked" trigger, as the browser does."""
    view = next(e for e in at.get("bidi_component") if e.proto.id.endswith(f"-{key}"))
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = _make_trigger_id(view.proto.id, "events")  # the component's own events
    state.json_trigger_value = json.dumps([{"event": "picked", "value": value}])
    at._run(states)
    assert not at.exception, at.exception
    return at


def palette(picture_png: str) -> np.ndarray:
    """The 256 RGB colours of a map view's palette PNG (base64)."""
    image = Image.open(io.BytesIO(base64.b64decode(picture_png)))
    return np.array(image.getpalette()[: 256 * 3]).reshape(256, 3)


def assert_grid_shows(at: AppTest, expected: np.ndarray) -> None:
    """The grid's hover values are the lens's maps, and its picture their montage."""
    grid = map_view(at, "grid")
    assert grid["picture"].shape == montage(expected).shape
    np.testing.assert_allclose(grid["maps"], expected, atol=1e-5, rtol=1e-5)


@pytest.fixture
def media(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The bytes of every picture the app sends to the browser, by media file id."""
    sent: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None) -> str:
        file_id = original(self, path_or_data, mimetype, kind, filename)
        sent[file_id] = path_or_data
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return sent


def chosen(at: AppTest) -> str:
    """The caption of the Dataset page's chosen image (the first picture of the page)."""
    return at.main.get("image")[0].proto.imgs[0].caption


def chosen_pixels(at: AppTest, media: dict[str, bytes]) -> np.ndarray:
    """The pixels of the Dataset page's chosen image, as the browser gets them."""
    url = at.main.get("image")[0].proto.imgs[0].url
    return np.asarray(Image.open(io.BytesIO(media[Path(url).stem])))


def grid_buttons(at: AppTest) -> list:
    """The "open this image" buttons of the Dataset page's grid."""
    return [b for b in at.button if (b.key or "").startswith("open_")]


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_home_explains_and_leads_to_a_random_digits_maps():
    at = open_app()
    assert at.title[0].value == "See what a neural network sees"
    assert any("4,000 labelled images" in m.value for m in at.markdown)
    [random_image] = [b for b in at.button if b.label.startswith("Show me a random image")]
    random_image.click().run()
    assert not at.exception
    assert at.session_state["seed"] == 129
    assert at.title[0].value == "Feature maps"
    name = DATASET.pick(129)
    assert_grid_shows(at, lens_maps(DATASET.load_image(name), "conv_1"))


def test_dataset_seed_128_shows_the_original_recipes_pick_with_its_pixels(media):
    at = open_app("dataset.py")
    assert chosen(at) == "3282.png · label 9"
    expected = np.asarray(Image.open(DATASET.root / "train" / "3282.png"))
    assert np.array_equal(chosen_pixels(at, media), expected)
    assert not at.get("plotly_chart")  # plotly's code took seconds to start in the browser


def test_changing_the_seed_picks_that_seeds_image_and_next_seed_moves_on():
    at = open_app("dataset.py")
    at.number_input(key="seed").set_value(7).run()
    assert chosen(at).startswith(DATASET.pick(7))
    at.button[0].click().run()  # "Another random image"
    assert at.session_state["seed"] == 8
    assert chosen(at).startswith(DATASET.pick(8))
    # The grid's buttons come column by column: 6 columns of 4.
    shown = [b.key[5:] for b in grid_buttons(at)]
    expected = DATASET.pick_many(8, 24)
    assert shown == [expected[row * 6 + col] for col in range(6) for row in range(4)]


def test_choosing_a_grid_image_opens_it():
    at = open_app("dataset.py")
    target = next(b for b in grid_buttons(at) if b.key != "open_3282.png")
    name = target.key[len("open_") :]
    target.click().run()
    assert chosen(at) == f"{name} · label {DATASET.label_of(name)}"


def test_label_filter_keeps_only_that_label():
    at = open_app("dataset.py")
    at.session_state["label_filter"] = [3]
    at.run()
    grid = grid_buttons(at)
    assert len(grid) == 24 and {b.label for b in grid} == {"Open 3"}
    # The order of the seed's picks of every image, threes only, column by column.
    threes = [name for name in DATASET.pick_many(128, 4000) if DATASET.label_of(name) == 3]
    shown = [b.key[5:] for b in grid]
    assert shown == [threes[row * 6 + col] for col in range(6) for row in range(4)]
    _, labels, counts = bars(at, "How many images each label has")
    assert labels == [str(d) for d in range(10)]
    assert counts.tolist() == DATASET.index["label"].value_counts().sort_index().tolist()


def test_unlabelled_test_images_can_be_browsed():
    at = open_app("dataset.py")
    at.segmented_control(key="split_widget").set_value("test").run()
    assert not at.exception
    assert chosen(at) == DATASET.pick(128, split="test")
    assert {b.label for b in grid_buttons(at)} == {"Open"}


def test_feature_maps_grid_equals_the_lens_output_for_the_image():
    at = open_app("feature_maps.py")
    image = DATASET.load_image("3282.png")
    assert_grid_shows(at, lens_maps(image, "conv_1"))
    at.segmented_control(key="layer").set_value("conv_3").run()
    assert at.subheader[0].value == "conv_3: 64 channels of 14×14"
    expected = lens_maps(image, "conv_3")
    assert_grid_shows(at, expected)
    at.number_input(key="channel").set_value(5).run()
    detail = map_view(at, "channel_map")
    assert detail["title"] == "conv_3, channel 5" and detail["colorbar"] is not None
    np.testing.assert_allclose(detail["maps"][0], expected[5], atol=1e-5)
    # conv_3 comes before its ReLU: its colours run from -m to m, white at zero.
    reach = float(np.abs(expected[5]).max())
    assert (detail["low"], detail["high"]) == pytest.approx((-reach, reach))
    assert detail["signed"] and detail["legend"]["words"].startswith("blue: below zero")
    # Beside it, the same channel laid over the digit as the network sees it (uint8,
    # 0..255 shown as is), from the same picture and values.
    assert detail["under_title"] == "Channel 5 laid over the image" and detail["opacity"] == 0.8
    under = np.asarray(Image.open(io.BytesIO(base64.b64decode(detail["under"]))).convert("L"))
    np.testing.assert_array_equal(under, np.asarray(image.convert("L")))
    said, labels, probabilities = bars(at, "The network says: ")
    assert said.startswith("The network says: 9")
    assert labels == [str(digit) for digit in range(10)]
    with torch.inference_mode():
        reference = torch.softmax(demo_model()(to_batch(image)), 1)[0].numpy()
    np.testing.assert_allclose(probabilities, reference, atol=1e-5)


def test_per_layer_normalisation_and_ranking():
    at = open_app("feature_maps.py", layer="conv_4", layers="conv_2,conv_4")
    at.segmented_control(key="norm").set_value("layer").run()
    maps = lens_maps(DATASET.load_image("3282.png"), "conv_4")
    # One colour scale for the layer, centred on zero (conv_4 comes before its ReLU): the
    # palette index is the value's place from -m to m, m the layer's largest size.
    picture = map_view(at, "grid")["picture"]
    tiles = montage(0.5 + maps / (2 * np.abs(maps).max()))
    expected = np.where(np.isnan(tiles), 255, np.floor(np.nan_to_num(tiles) * 254 + 0.5))
    np.testing.assert_allclose(picture, expected, atol=1)
    # The enlarged channel is on the layer's scale too, so it looks as its tile does.
    detail = map_view(at, "channel_map")
    assert detail["high"] == pytest.approx(float(np.abs(maps).max()))
    _, labels, scores = bars(at, "Channels of conv_4 by mean activation")
    shown = [int(label) for label in labels]
    means = maps.reshape(len(maps), -1).mean(1)
    assert sorted(shown) == list(range(64))
    np.testing.assert_allclose(scores, means[shown], rtol=1e-5, atol=1e-6)
    assert list(scores) == sorted(scores, reverse=True)
    # Under the bars, the dead channels: zero everywhere on this image.
    dead = [str(c) for c in range(64) if not maps[c].any()]
    note = (
        f"{len(dead)} dead channel(s), zero everywhere on this image: {', '.join(dead)}"
        if dead
        else "No dead channels: every channel responds somewhere on this image."
    )
    ranking = [h for h in bar_snippets(at) if "Channels of conv_4 by" in h]
    assert ranking[0].endswith(f">{note}</div>")


def test_a_click_on_a_grid_tile_or_a_ranking_bar_chooses_that_channel():
    at = open_app("feature_maps.py", layer="conv_2", layers="conv_1,conv_2")
    grid = map_view(at, "grid")
    assert grid["numbered"] and grid["chosen"] == 0  # numbers on the tiles, 0 outlined
    click(at, "grid", {"channel": 7, "x": 3, "y": 4})
    assert at.number_input(key="channel").value == 7
    assert map_view(at, "channel_map")["title"] == "conv_2, channel 7"
    assert map_view(at, "grid")["chosen"] == 7
    # The ranking: every bar numbered under it, the chosen one highlighted; a click on one
    # chooses its channel.
    maps = lens_maps(DATASET.load_image("3282.png"), "conv_2")
    _, labels, _ = bars(at, "Channels of conv_2 by mean activation")
    (ranking,) = [h for h in bar_snippets(at) if "Channels of conv_2 by" in h]
    written = re.findall(r"<span style=\"[^\"]*\">(\d+)</span>", ranking)
    means = maps.reshape(len(maps), -1).mean(1, dtype=np.float64)
    assert written == labels == [str(c) for c in np.argsort(-means, kind="stable")]
    assert re.search(r'data-label="7"[^>]*background:#EF553B', ranking)
    strongest = int(labels[0])
    click(at, "ranking", labels[0])
    assert at.number_input(key="channel").value == strongest
    detail = map_view(at, "channel_map")
    assert detail["title"] == f"conv_2, channel {strongest}"
    np.testing.assert_allclose(detail["maps"][0], maps[strongest], atol=1e-5)


def test_a_clicked_point_is_marked_on_the_enlarged_map_and_brought_into_view():
    at = open_app("feature_maps.py", layer="conv_1", channel="2")
    detail = map_view(at, "channel_map")
    assert detail["point"] is None and detail["reveal"] == "value_explainer"
    click(at, "channel_map", {"channel": 0, "x": 11, "y": 6})
    assert at.session_state[PICK_KEY]["x"] == 11
    assert map_view(at, "channel_map")["point"] == [11, 6]  # marked, in both panels
    at.number_input(key="channel").set_value(3).run()  # another channel: not its point
    assert map_view(at, "channel_map")["point"] is None


def test_feature_maps_colour_signed_layers_around_zero_and_others_from_zero():
    at = open_app("feature_maps.py", layer="conv_1", layers="conv_1,relu_1")
    conv = map_view(at, "grid")
    assert conv["signed"] and conv["legend"]["words"].startswith("blue: below zero")
    assert tuple(palette(conv["png"])[127]) == (247, 247, 247)  # zero: white
    at.segmented_control(key="layer").set_value("relu_1").run()
    relu = map_view(at, "grid")
    maps = lens_maps(DATASET.load_image("3282.png"), "relu_1")
    assert not relu["signed"] and relu["legend"]["words"].startswith("dark: zero")
    # Each tile from zero (index 0, Viridis' dark end) to its channel's largest value.
    tiles = montage(maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-30))
    expected = np.where(np.isnan(tiles), 255, np.floor(np.nan_to_num(tiles) * 254 + 0.5))
    np.testing.assert_allclose(relu["picture"], expected, atol=1)
    assert tuple(palette(relu["png"])[0]) == (68, 1, 84)
    detail = map_view(at, "channel_map")
    assert not detail["signed"] and detail["low"] == 0


def test_uploaded_image_replaces_the_dataset_image():
    at = open_app("feature_maps.py")
    stroke = np.zeros((56, 56), dtype=np.uint8)
    stroke[10:46, 26:30] = 255  # a "1", at twice the model's size
    upload = Image.fromarray(stroke)
    at.file_uploader(key="upload_widget").set_value(("one.png", png(upload), "image/png")).run()
    assert not at.exception and not at.error
    assert at.session_state["upload"][0] == "one.png"
    assert_grid_shows(at, lens_maps(upload, "conv_1"))
    assert bars(at, "The network says: ")[0].startswith("The network says: 1")


@pytest.mark.parametrize(
    "make",
    [
        lambda: png(Image.new("CMYK", (40, 30), (0, 0, 0, 255)), "JPEG"),
        lambda: png(Image.fromarray(np.arange(784, dtype=np.uint16).reshape(28, 28) * 80)),
        lambda: png(Image.new("RGBA", (28, 28), (255, 255, 255, 128))),
        lambda: png(Image.new("P", (28, 28), 3)),
        lambda: png(Image.new("L", (10_000, 10_000), 40)),
    ],
    ids=["cmyk-jpeg", "16-bit", "rgba", "palette", "10000x10000"],
)
def test_unusual_uploads_are_converted(make):
    at = open_app("feature_maps.py")
    at.file_uploader(key="upload_widget").set_value(("odd.png", make(), "image/png")).run()
    assert not at.exception and not at.error
    assert at.session_state["upload"][0] == "odd.png"
    assert map_view(at, "grid")["maps"].shape == (32, 28, 28)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not a picture", "not an image Pillow can read"),
        (png(Image.new("L", (64, 64), 9))[:60], "damaged or truncated"),
    ],
)
def test_bad_uploads_get_a_clear_error_and_the_page_keeps_working(data, message):
    at = open_app("feature_maps.py")
    at.file_uploader(key="upload_widget").set_value(("bad.png", data, "image/png")).run()
    assert not at.exception
    assert any(message in e.value for e in at.error)
    assert at.session_state["upload"] is None
    assert_grid_shows(at, lens_maps(DATASET.load_image("3282.png"), "conv_1"))
    at.segmented_control(key="layer").set_value("conv_2").run()
    assert not at.exception and at.subheader[0].value.startswith("conv_2")


def test_url_reopens_the_same_view():
    at = open_app(
        "feature_maps.py",
        seed="7",
        image="100.png",
        layers="conv_2,conv_4",
        layer="conv_4",
        channel="9",
        norm="layer",
    )
    assert at.session_state["image"] == "100.png"
    assert at.subheader[0].value == "conv_4: 64 channels of 14×14"
    assert map_view(at, "channel_map")["title"] == "conv_4, channel 9"
    assert at.session_state["norm"] == "layer"
    assert not at.warning


def test_invalid_url_values_fall_back_to_defaults_with_a_notice():
    at = open_app("feature_maps.py", seed="minus one", image="../../etc/passwd", layer="conv_99")
    notices = " ".join(w.value for w in at.warning)
    assert "seed='minus one'" in notices
    assert "'../../etc/passwd' is not in this dataset" in notices
    assert "layer='conv_99'" in notices
    assert at.session_state["seed"] == 128
    assert at.subheader[0].value.startswith("conv_1")


def test_layers_page_table_and_target_choice():
    at = open_app("layers.py")
    table = at.dataframe[0].value
    assert list(table["layer"])[:4] == ["conv_1", "relu_1", "conv_2", "relu_2"]
    assert list(table["output shape"])[-1] == "64×7×7"
    assert list(table["receptive field"]) == [3, 3, 5, 5, 6, 10, 10, 14, 14, 16]
    assert table["shown"].sum() == 4
    at.multiselect(key="layers").set_value(["relu_2", "pool_4"]).run()
    at.switch_page(str(PAGES / "feature_maps.py")).run()
    assert at.segmented_control(key="layer").options == ["relu_2", "pool_4"]
    assert at.subheader[0].value == "relu_2: 32 channels of 28×28"


def test_a_dataset_folder_with_broken_rows_lists_them(tmp_path, monkeypatch):
    root = write_dataset(tmp_path / "broken", [i % 3 for i in range(12)], size=28)
    with open(root / "train.csv", "a") as csv:
        csv.write("missing.png,1\n../escape.png,2\nimg_0.png,0\n")
    (root / "train" / "img_5.png").write_bytes(b"garbage")
    monkeypatch.setenv("CNNLENS_DATASET", str(root))
    at = open_app("dataset.py")
    expander = next(e for e in at.expander if "left out" in e.label)
    assert expander.label.startswith("4 rows")
    assert not expander.dataframe  # the table is made when the expander is opened
    at.session_state["problems"] = True
    at.run()
    expander = next(e for e in at.expander if "left out" in e.label)
    reasons = expander.dataframe[0].value
    assert set(reasons["file"]) == {"missing.png", "../escape.png", "img_0.png", "img_5.png"}
    at.switch_page(str(PAGES / "feature_maps.py")).run()
    assert not at.exception


def test_a_folder_that_is_not_a_dataset_gets_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLENS_DATASET", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "has no train.csv" in at.error[0].value


def test_the_url_follows_the_view_and_a_copy_reopens_it():
    at = open_app("feature_maps.py")
    at.segmented_control(key="layer").set_value("conv_3").run()
    at.number_input(key="channel").set_value(5).run()
    at.button(key="next_image").click().run()
    url = dict(at.query_params)
    assert url == {
        "seed": "129",
        "layers": "conv_1,conv_2,conv_3,conv_4",
        "layer": "conv_3",
        "channel": "5",
        "input": "image",
    }
    copy = open_app("feature_maps.py", **url)
    assert copy.subheader[0].value == at.subheader[0].value == "conv_3: 64 channels of 14×14"
    assert map_view(copy, "channel_map")["title"] == "conv_3, channel 5"
    np.testing.assert_array_equal(map_view(copy, "grid")["maps"], map_view(at, "grid")["maps"])


def test_a_page_that_streamlit_runs_alone_runs_the_entrypoint_in_the_same_run(monkeypatch):
    """With a pages/ folder beside it, Streamlit runs a page without dashboard.py while it
    treats that folder as its old multipage layout: a server until the first st.navigation
    call of its process (a deep link as its first visit), AppTest on every run (it resets
    that mode before each). The page then runs the entrypoint within the same run, so the
    widget change that started the run still counts."""
    from cnnlens.ui import context
    from cnnlens.ui.serve import DASHBOARD

    entered = []
    run_path = context.runpy.run_path

    def recorded(path: str, **kwargs: object) -> dict:
        entered.append(path)
        return run_path(path, **kwargs)

    monkeypatch.setattr(context.runpy, "run_path", recorded)
    at = open_app()  # Home, the default page: the entrypoint runs first
    assert entered == []
    at.switch_page(str(PAGES / "layers.py")).run()
    assert entered == [str(DASHBOARD)] and not at.exception
    at.multiselect(key="layers").set_value(["conv_2", "pool_4"]).run()
    assert entered == [str(DASHBOARD)] * 2 and not at.exception
    assert at.session_state["layers"] == ["conv_2", "pool_4"]
    assert at.dataframe[0].value["shown"].sum() == 2


def test_layers_follow_the_networks_order_whatever_the_order_they_were_picked_in():
    at = open_app("layers.py")
    at.multiselect(key="layers").set_value(["pool_4", "conv_1", "relu_2"]).run()
    assert not at.exception
    assert at.multiselect(key="layers").value == ["conv_1", "relu_2", "pool_4"]
    at.switch_page(str(PAGES / "feature_maps.py")).run()
    assert at.segmented_control(key="layer").options == ["conv_1", "relu_2", "pool_4"]
