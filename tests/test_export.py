"""Exports: maps as .npz and PNG, the dataset's features as Parquet, and view recipes."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cnnlens.data import load_dataset
from cnnlens.export import Recipe, features_parquet, grid_png, maps_npz
from cnnlens.layers import layer_names
from cnnlens.models import demo_model, open_model
from cnnlens.preprocess import to_batch
from tests.generated import write_dataset

RECIPE = {
    "dataset": "/data/MNIST",
    "split": "train",
    "seed": 128,
    "image": "3282.png",
    "model": "demo",
    "weights_id": "0123456789abcdef",
    "layers": ["conv_1", "conv_3"],
    "layer": "conv_3",
    "channel": 5,
    "norm": "layer",
}


def test_maps_npz_holds_each_layer_under_its_name_and_the_metadata():
    rng = np.random.default_rng(0)
    maps = {
        "conv_1": rng.normal(size=(4, 6, 6)).astype(np.float32),
        "layer1.0.bn1": rng.normal(size=(2, 3, 3)).astype(np.float32),
    }
    meta = {"model": "demo", "image": "3282.png", "layers": ["conv_1", "layer1.0.bn1"]}
    with np.load(io.BytesIO(maps_npz(maps, meta)), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["__meta__", "conv_1", "layer1.0.bn1"]
        for name, array in maps.items():
            assert archive[name].dtype == np.float32
            np.testing.assert_array_equal(archive[name], array)
        assert json.loads(str(archive["__meta__"])) == meta


def test_maps_npz_refuses_nothing_to_export_and_the_reserved_name():
    with pytest.raises(ValueError, match="no maps to export"):
        maps_npz({}, {})
    with pytest.raises(ValueError, match="reserved"):
        maps_npz({"__meta__": np.zeros((1, 2, 2))}, {})
    with pytest.raises(TypeError):
        maps_npz({"conv_1": np.zeros((1, 2, 2))}, {"not json": object()})


def test_grid_png_tiles_each_channel_scaled_up_with_its_own_colour_range():
    maps = np.zeros((4, 8, 8), dtype=np.float32)
    maps[0, 2, 3] = 5.0  # one bright pixel per channel, in different places
    maps[1, 7, 0] = 0.1
    maps[2] = np.linspace(-1, 1, 64).reshape(8, 8)
    maps[3, 0, 0] = -3.0  # channel 3's peak is 0, everywhere but one dark pixel
    rgb = np.asarray(Image.open(io.BytesIO(grid_png(maps))).convert("RGB"))
    scale = 64 // 8  # small maps are enlarged to 64 px tiles
    assert rgb.shape == ((2 * 8 + 1) * scale, (2 * 8 + 1) * scale, 3)

    def pixel(channel: int, y: int, x: int) -> tuple[int, ...]:
        top = (channel // 2) * (8 + 1) * scale + y * scale + scale // 2
        left = (channel % 2) * (8 + 1) * scale + x * scale + scale // 2
        return tuple(rgb[top, left])

    bright, dark = (253, 231, 37), (68, 1, 84)  # Viridis' two ends
    assert pixel(0, 2, 3) == pixel(1, 7, 0) == pixel(2, 7, 7) == pixel(3, 5, 5) == bright
    assert pixel(0, 0, 0) == pixel(1, 0, 0) == pixel(2, 0, 0) == pixel(3, 0, 0) == dark
    assert tuple(rgb[8 * scale, 0]) == (240, 240, 240)  # the gap between tile rows


def test_grid_png_per_layer_uses_one_range_for_every_channel():
    maps = np.stack([np.full((2, 2), 0.0), np.full((2, 2), 1.0)]).astype(np.float32)
    maps[0, 0, 0] = 1.0
    rgb = np.asarray(Image.open(io.BytesIO(grid_png(maps, per="layer"))).convert("RGB"))
    scale = 64 // 2
    tile = (2 + 1) * scale
    assert tuple(rgb[scale // 2, scale // 2]) == tuple(rgb[scale // 2, tile + scale // 2])
    assert tuple(rgb[scale + scale // 2, scale // 2]) == (68, 1, 84)


def test_features_parquet_holds_every_images_pooled_features(tmp_path):
    labels = [i % 3 for i in range(7)]
    dataset = load_dataset(write_dataset(tmp_path / "digits", labels, size=28))
    data = features_parquet(open_model("demo"), dataset, ["conv_1", "conv_3"], batch_size=3)
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == ["filename", "label", "conv_1", "conv_3"]
    assert table["filename"].to_pylist() == [f"img_{i}.png" for i in range(7)]
    assert table["label"].to_pylist() == labels
    meta = json.loads(table.schema.metadata[b"cnnlens"])
    assert (meta["model"], meta["pool"], meta["layers"]["conv_3"]) == ("demo", "mean", [64, 14, 14])
    model, names = demo_model(), layer_names(demo_model())
    images = to_batch([dataset.load_image(f"img_{i}.png") for i in range(7)])
    for layer in ("conv_1", "conv_3"):
        with torch.no_grad():
            maps = model.features[: names.index(layer) + 1](images)
        expected = maps.mean(dim=(2, 3)).numpy()
        np.testing.assert_allclose(
            np.stack(table[layer].to_numpy(zero_copy_only=False)), expected, atol=1e-5
        )


def test_a_stopped_parquet_export_gives_nothing(tmp_path):
    dataset = load_dataset(write_dataset(tmp_path / "digits", [0, 1, 2, 3], size=28))
    stopped = features_parquet(
        open_model("demo"), dataset, ["conv_1"], batch_size=1, should_stop=lambda: True
    )
    assert stopped is None


def test_a_recipe_round_trips_through_json():
    recipe = Recipe(**RECIPE)
    assert recipe.layers == ("conv_1", "conv_3")
    text = recipe.to_json()
    assert json.loads(text) == RECIPE
    assert Recipe.from_json(text) == recipe
    assert Recipe.from_json(text.encode()) == recipe


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({k: v for k, v in RECIPE.items() if k != "layer"}), "missing layer"),
        (json.dumps({**RECIPE, "colour": "red"}), "unknown colour"),
        (json.dumps({**RECIPE, "channel": -1}), "channel must be a whole number"),
        (json.dumps({**RECIPE, "seed": "128"}), "seed must be a whole number"),
        (json.dumps({**RECIPE, "channel": True}), "channel must be a whole number"),
        (json.dumps({**RECIPE, "split": "validation"}), "split must be 'train' or 'test'"),
        (json.dumps({**RECIPE, "norm": "image"}), "norm must be 'channel' or 'layer'"),
        (json.dumps({**RECIPE, "layer": "conv_2"}), "layer 'conv_2' is not one of layers"),
        (json.dumps({**RECIPE, "layers": []}), "layers must be a non-empty list"),
        (json.dumps({**RECIPE, "layers": "conv_1"}), "layers must be a non-empty list"),
        (json.dumps({**RECIPE, "layers": ["conv_1", 3]}), "layers must hold layer names"),
        (json.dumps({**RECIPE, "model": ""}), "model must be a non-empty text"),
    ],
    ids=[
        "syntax",
        "array",
        "missing",
        "unknown",
        "negative",
        "text-seed",
        "bool",
        "split",
        "norm",
        "layer",
        "no-layers",
        "layers-text",
        "layers-number",
        "empty-model",
    ],
)
def test_a_bad_recipe_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_json(text)
