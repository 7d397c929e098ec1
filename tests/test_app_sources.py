"""The dashboard with other data and other networks: folders, zips, torchvision, own weights."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens import build_extractor, build_lens, demo_model, load_dataset, to_batch
from cnnlens.models import open_model
from cnnlens.registry import DEMO_WEIGHTS
from tests.generated import write_dataset, write_image_folder
from tests.test_app import assert_grid_shows, chosen, map_view, open_app


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with a tiny RGB photo dataset (image-folder layout), and no hub cache."""
    root = tmp_path / "data"
    write_image_folder(root / "photos", ["cat", "dog", "owl"] * 4, size=(40, 60), mode="RGB")
    monkeypatch.setenv("CNNLENS_DATA_ROOTS", str(root))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached: random weights
    return root


def test_rgb_photos_through_resnet18_equal_a_manual_forward(data_root):
    at = open_app(
        "feature_maps.py", data="photos", model="resnet18", layers="layer1", layer="layer1"
    )
    dataset = load_dataset(data_root / "photos")
    assert at.session_state["data"] == str(data_root / "photos")
    assert any("Random weights" in info.value for info in at.sidebar.info)
    assert at.subheader[0].value == "layer1: 64 channels of 56×56"
    at.number_input(key="channel").set_value(7).run()

    loaded = open_model("resnet18", weights="random")
    image = dataset.load_image(dataset.pick(128), "RGB")
    model = loaded.model
    with torch.inference_mode():
        x = loaded.batch(image)
        expected = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))[0]
    shown = map_view(at, "channel_map")["maps"][0]
    np.testing.assert_allclose(shown, expected[7].numpy(), atol=1e-4)
    # Random weights: no predictions.
    assert not [h for h in at.html if "The network says" in h.value]


def test_the_layers_page_shows_module_names_as_a_tree(data_root):
    at = open_app("layers.py", data="photos", model="resnet18")
    assert at.multiselect(key="layers").value == ["relu", "layer1", "layer2", "layer3", "layer4"]
    blocks = [e.label for e in at.expander if e.label.startswith("**layer")]
    assert blocks[0].startswith("**layer1** · Sequential · 64×56×56") and "· shown" in blocks[0]
    inside = next(e for e in at.expander if e.label.startswith("**layer2**")).dataframe[0].value
    assert "layer2.0.downsample.0" in set(inside["layer"])


def test_a_folder_outside_the_data_roots_is_refused(data_root):
    at = open_app("dataset.py")
    for outside in ["/etc", str(data_root / ".." / ".."), "../../.."]:
        at.text_input(key="folder_path").set_value(outside).run()
        at.button[next(i for i, b in enumerate(at.button) if b.label == "Open folder")].click()
        at.run()
        assert not at.exception
        assert "outside the folders cnnlens may read" in at.sidebar.error[0].value
        assert at.session_state["data"] == str(Path("cnnlens/demo/MNIST").resolve())
    at.text_input(key="folder_path").set_value("photos").run()
    at.button[next(i for i, b in enumerate(at.button) if b.label == "Open folder")].click()
    at.run()
    assert at.session_state["data"] == str(data_root / "photos")
    assert chosen(at).startswith(load_dataset(data_root / "photos").pick())


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_an_uploaded_zip_becomes_the_dataset_and_a_zip_slip_is_refused(data_root, tmp_path):
    source = write_dataset(tmp_path / "digits", [0, 1, 2] * 3, size=28)
    files = {
        str(path.relative_to(source)): path.read_bytes()
        for path in sorted(source.rglob("*"))
        if path.is_file()
    }
    at = open_app("dataset.py")
    at.file_uploader(key="zip_widget").set_value(
        ("evil.zip", _zip({"../evil.txt": b"x", **files}), "application/zip")
    ).run()
    assert not at.exception
    assert "evil.zip" in at.sidebar.error[0].value
    assert at.session_state["data"] == str(Path("cnnlens/demo/MNIST").resolve())

    at.file_uploader(key="zip_widget").set_value(
        ("digits.zip", _zip(files), "application/zip")
    ).run()
    assert not at.exception
    uploaded = load_dataset(at.session_state["data"])
    assert list(uploaded.index["filename"]) == list(load_dataset(source).index["filename"])
    assert chosen(at).startswith(uploaded.pick())
    assert "data" not in at.query_params  # an upload cannot travel in a link


def test_own_weights_are_used_and_a_wrong_file_is_refused(data_root, tmp_path):
    at = open_app("feature_maps.py")
    at.file_uploader(key="weights_widget").set_value(
        ("junk.pt", b"not a state dict", "application/octet-stream")
    ).run()
    assert not at.exception
    assert "junk.pt" in at.sidebar.error[0].value
    assert at.session_state["weights"] == "default"

    model = demo_model()
    with torch.no_grad():
        model.features[0].weight.mul_(-2.0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    at.file_uploader(key="weights_widget").set_value(
        ("flipped.pt", buffer.getvalue(), "application/octet-stream")
    ).run()
    assert not at.exception
    assert Path(at.session_state["weights"]).name == "flipped.pt"
    image = load_dataset(Path(DEMO_WEIGHTS).parent / "MNIST").load_image("3282.png")
    expected = build_lens(model, ["conv_1"])(to_batch(image))["conv_1"][0].numpy()
    assert_grid_shows(at, expected)


def test_a_grayscale_image_goes_to_an_rgb_model(data_root):
    # SqueezeNet's features hold Fire blocks: its layers keep their module paths.
    at = open_app("feature_maps.py", model="squeezenet1_1", layers="features.0", layer="features.0")
    assert not at.exception
    loaded = open_model("squeezenet1_1", weights="random")
    digit = Image.open(Path("cnnlens/demo/MNIST/train/3282.png"))
    maps = build_extractor(loaded.model, ["features.0"])(loaded.batch(digit))
    expected = maps["features.0"][0].numpy()
    at.number_input(key="channel").set_value(3).run()
    shown = map_view(at, "channel_map")["maps"][0]
    np.testing.assert_allclose(shown, expected[3], atol=1e-4)


def test_a_recipe_reopens_its_view_and_a_bad_one_is_refused(data_root):
    from cnnlens.export import Recipe

    dataset = load_dataset(data_root / "photos")
    image = dataset.pick_many(3, 2)[1]
    recipe = Recipe(
        dataset=str(data_root / "photos"),
        split="train",
        seed=3,
        image=image,
        model="resnet18",
        weights_id="random-seed0",
        layers=("layer1", "layer2"),
        layer="layer2",
        channel=9,
        norm="layer",
    )
    at = open_app("feature_maps.py")
    broken = recipe.to_json().replace('"layer2"', '"layer9"')
    at.file_uploader(key="recipe_widget").set_value(
        ("bad.json", broken.encode(), "application/json")
    )
    at.run()
    assert not at.exception
    assert "bad.json" in at.error[0].value and "layer9" in at.error[0].value
    assert at.session_state["model"] == "demo"

    at.file_uploader(key="recipe_widget").set_value(
        ("view.json", recipe.to_json().encode(), "application/json")
    ).run()
    assert not at.exception
    assert at.subheader[0].value == "layer2: 128 channels of 28×28"
    assert map_view(at, "channel_map")["title"] == "layer2, channel 9"
    assert at.session_state["image"] == image and at.session_state["seed"] == 3
    assert dict(at.query_params)["data"] == "photos"


def test_a_recipe_with_other_weights_warns_and_a_missing_image_says_why(tmp_path, monkeypatch):
    from cnnlens.export import Recipe

    digits = write_dataset(tmp_path / "digits", [i % 4 for i in range(20)], size=28, seed=5)
    monkeypatch.setenv("CNNLENS_DATASET", str(digits))
    at = open_app("feature_maps.py")
    recipe = Recipe(
        dataset=str(digits),
        split="train",
        seed=3,
        image="img_11.png",
        model="demo",
        weights_id="some-other-weights",
        layers=("conv_2", "conv_3"),
        layer="conv_3",
        channel=7,
        norm="layer",
    )
    upload = at.file_uploader(key="recipe_widget")
    upload.set_value(("view.json", recipe.to_json().encode(), "application/json")).run()
    assert not at.exception
    state = at.session_state
    assert (state["image"], state["seed"], state["layer"], state["channel"], state["norm"]) == (
        "img_11.png",
        3,
        "conv_3",
        7,
        "layer",
    )
    assert list(state["layers"]) == ["conv_2", "conv_3"]
    assert any("other weights (id some-other-weights)" in w.value for w in at.warning)
    assert at.subheader[0].value == "conv_3: 64 channels of 14×14"

    broken = json.loads(recipe.to_json()) | {"image": "missing.png"}
    at.file_uploader(key="recipe_widget").set_value(
        ("bad.json", json.dumps(broken).encode(), "application/json")
    ).run()
    assert any("'missing.png' is not a usable image" in e.value for e in at.error)
    assert at.session_state["image"] == "img_11.png"


def test_missing_pretrained_weights_download_with_progress_when_asked(
    data_root, tmp_path, monkeypatch
):
    import hashlib
    import socket

    import torchvision.models as tvm

    from cnnlens import weights as weights_module

    torch.manual_seed(4)
    state = tvm.resnet18().state_dict()
    source = tmp_path / "served.pth"
    torch.save(state, source)
    cached = (
        tmp_path / "hub" / f"resnet18-{hashlib.sha256(source.read_bytes()).hexdigest()[:8]}.pth"
    )
    monkeypatch.setattr(weights_module, "_cached_file", lambda name: cached)
    monkeypatch.setattr(weights_module, "_weights_url", lambda name: source.as_uri())

    def no_connection(*args, **kwargs):
        raise AssertionError(f"the server connected out before a download was asked: {args}")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    monkeypatch.delenv("CNNLENS_CHECK_ONLINE", raising=False)
    monkeypatch.setenv("CNNLENS_OFFLINE", "1")
    at = open_app("feature_maps.py", model="resnet18", layers="layer1", layer="layer1")
    assert not [b for b in at.sidebar.button if b.label.startswith("Download")]  # offline

    monkeypatch.delenv("CNNLENS_OFFLINE")
    at.run()
    download = next(b for b in at.sidebar.button if b.label.startswith("Download"))
    download.click().run()
    assert not at.exception
    assert cached.is_file()
    assert not any("Random weights" in info.value for info in at.sidebar.info)
    assert any("pretrained IMAGENET1K_V1" in c.value for c in at.sidebar.caption)
    at.number_input(key="channel").set_value(2).run()
    model = tvm.resnet18()
    model.load_state_dict(state)
    model.eval()
    loaded = open_model("resnet18")
    dataset = load_dataset(Path("cnnlens/demo/MNIST"))
    with torch.inference_mode():
        x = loaded.batch(dataset.load_image(dataset.pick(128), "RGB"))
        expected = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))[0, 2]
    shown = map_view(at, "channel_map")["maps"][0]
    np.testing.assert_allclose(shown, expected.numpy(), atol=1e-4)


def test_a_link_cannot_open_files_outside_the_data_roots(data_root):
    at = open_app("feature_maps.py", data="/etc", weights="/etc/passwd")
    assert not at.exception
    notices = " ".join(w.value for w in at.warning)
    assert "data='/etc' is not valid here" in notices
    assert "weights='/etc/passwd' is not valid here" in notices
    assert at.session_state["data"] == str(Path("cnnlens/demo/MNIST").resolve())
    assert at.session_state["weights"] == "default"
    at = open_app("feature_maps.py", weights="../../../../etc/passwd")
    assert "is not valid here" in " ".join(w.value for w in at.warning)
    assert at.session_state["weights"] == "default"
