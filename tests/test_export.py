"""Exports: maps as .npz and PNG, the dataset's features as Parquet, and view recipes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cnnlens import export
from cnnlens.data import load_dataset
from cnnlens.export import ParquetSpec, Recipe, features_parquet, grid_png, maps_npz
from cnnlens.layers import layer_names
from cnnlens.models import demo_model, open_model
from cnnlens.parquet import extract_to_parquet
from cnnlens.preprocess import to_batch
from tests.generated import write_dataset
from tests.test_figures import lightness

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


def test_grid_png_colours_signed_maps_blue_white_red_each_on_its_own_scale():
    maps = np.zeros((4, 8, 8), dtype=np.float32)
    maps[0, 2, 3] = 5.0  # one bright pixel per channel, in different places
    maps[1, 7, 0] = 0.1
    maps[2] = np.linspace(-1, 1, 64).reshape(8, 8)
    maps[3, 0, 0] = -3.0  # channel 3: zero everywhere but one pixel below zero
    image = Image.open(io.BytesIO(grid_png(maps)))
    rgb = np.asarray(image.convert("RGB"))
    scale = 64 // 8  # small maps are enlarged to 64 px tiles
    side = (2 * 8 + 1) * scale
    assert rgb.shape[0] == side + 30 and rgb.shape[1] >= side  # the grid, a legend under it

    def pixel(channel: int, y: int, x: int) -> tuple[int, ...]:
        top = (channel // 2) * (8 + 1) * scale + y * scale + scale // 2
        left = (channel % 2) * (8 + 1) * scale + x * scale + scale // 2
        return tuple(int(v) for v in rgb[top, left])

    # Signed: white at zero, each channel's own largest value (in size) at an end.
    red, white, blue = (103, 0, 31), (247, 247, 247), (5, 48, 97)
    assert pixel(0, 2, 3) == pixel(1, 7, 0) == pixel(2, 7, 7) == red
    assert pixel(2, 0, 0) == pixel(3, 0, 0) == blue
    assert pixel(0, 0, 0) == pixel(1, 0, 0) == pixel(3, 5, 5) == white
    assert tuple(rgb[8 * scale, 0]) == (128, 128, 128)  # the gap: not a white zero
    assert image.text["Legend"] == (
        "blue: below zero · white: zero · red: above zero · "
        "each tile on its own scale, to its largest value"
    )
    # The legend strip runs from blue to red through white.
    strip = rgb[side + 14, 10 : 10 + 256]
    assert tuple(strip[0]) == blue and tuple(strip[-1]) == red
    assert tuple(strip[128]) == pytest.approx(white, abs=4)


def test_grid_png_per_layer_uses_one_range_from_zero_for_maps_never_below_zero():
    maps = np.stack([np.full((2, 2), 0.0), np.full((2, 2), 1.0)]).astype(np.float32)
    maps[0, 0, 0] = 2.0
    image = Image.open(io.BytesIO(grid_png(maps, per="layer")))
    rgb = np.asarray(image.convert("RGB"))
    scale = 64 // 2
    tile = (2 + 1) * scale
    assert tuple(rgb[scale + scale // 2, scale // 2]) == (68, 1, 84)  # zero: Viridis' dark end
    assert tuple(rgb[scale // 2, scale // 2]) == (253, 231, 37)  # 2, the layer's largest
    half = rgb[scale // 2, tile + scale // 2]  # 1: halfway, lighter than zero, darker than 2
    assert lightness((68, 1, 84)) < lightness(half) < lightness((253, 231, 37))
    assert image.text["Legend"].endswith("one scale for the layer, 0 to 2")


def path_of(loaded, dataset, layers, folder=None, split="train", pool="mean") -> Path:
    """Where the export of these settings goes (its spec's file)."""
    return ParquetSpec(loaded, dataset, tuple(layers), pool, split=split, folder=folder).path


def test_features_parquet_holds_every_images_pooled_features(tmp_path):
    labels = [i % 3 for i in range(7)]
    dataset = load_dataset(write_dataset(tmp_path / "digits", labels, size=28))
    loaded, layers = open_model("demo"), ["conv_1", "conv_3"]
    out = features_parquet(
        loaded,
        dataset,
        layers,
        out=path_of(loaded, dataset, layers, tmp_path / "exports"),
        batch_size=3,
    )
    assert out.parent == tmp_path / "exports"
    table = pq.read_table(out)
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


def test_a_cancelled_export_offers_nothing_and_goes_on_to_extract_to_parquets_file(tmp_path):
    dataset = load_dataset(write_dataset(tmp_path / "digits", [i % 4 for i in range(9)], size=28))
    loaded, folder = open_model("demo"), tmp_path / "exports"
    seen: list[tuple[int, int]] = []
    out = path_of(loaded, dataset, ["conv_2"], folder)
    stopped = features_parquet(
        loaded,
        dataset,
        ["conv_2"],
        out=out,
        batch_size=2,
        should_stop=lambda: len(seen) >= 2,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert stopped is None
    assert seen == [(2, 9), (4, 9)]
    assert not out.exists()  # nothing half-written where the finished file goes
    assert list(folder.glob("*.parquet")) == []
    seen.clear()
    finished = features_parquet(
        loaded,
        dataset,
        ["conv_2"],
        out=out,
        batch_size=2,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert finished == out and seen[0] == (6, 9) and seen[-1] == (9, 9)  # went on from 4
    reference = extract_to_parquet(
        loaded, dataset, tmp_path / "cli.parquet", ["conv_2"], batch_size=2
    )
    assert pq.read_table(out).equals(pq.read_table(reference.out))
    assert pq.read_schema(out).metadata == pq.read_schema(reference.out).metadata
    # Asked again, the finished file is served as it is, with no pass.
    again = features_parquet(loaded, dataset, ["conv_2"], out=out, should_stop=lambda: True)
    assert again == out


def test_the_export_file_is_named_by_everything_its_values_depend_on(tmp_path):
    digits = write_dataset(tmp_path / "digits", [0, 1, 2, 3], size=28)
    loaded, dataset = open_model("demo"), load_dataset(digits)
    base = path_of(loaded, dataset, ["conv_1"], tmp_path)
    assert base.parent == tmp_path and base.suffix == ".parquet"
    assert base == path_of(loaded, load_dataset(digits), ["conv_1"], tmp_path)
    others = {
        path_of(loaded, dataset, ["conv_2"], tmp_path),
        path_of(loaded, dataset, ["conv_1"], tmp_path, split="test"),
        path_of(loaded, dataset, ["conv_1"], tmp_path, pool="max"),
        path_of(dataclasses.replace(loaded, weights_id="other"), dataset, ["conv_1"], tmp_path),
    }
    (digits / "train" / "img_0.png").write_bytes((digits / "train" / "img_1.png").read_bytes())
    others.add(path_of(loaded, load_dataset(digits), ["conv_1"], tmp_path))
    assert len(others) == 5 and base not in others
    with pytest.raises(ValueError, match="check_images=False"):
        path_of(loaded, load_dataset(digits, check_images=False), ["conv_1"])


def test_old_exports_are_removed_past_the_folders_limit(tmp_path, monkeypatch):
    dataset = load_dataset(write_dataset(tmp_path / "digits", [0, 1, 2], size=28))
    loaded, folder = open_model("demo"), tmp_path / "exports"
    first = features_parquet(
        loaded, dataset, ["conv_1"], out=path_of(loaded, dataset, ["conv_1"], folder)
    )
    os.utime(first, (1, 1))  # long unused
    monkeypatch.setattr(export, "EXPORTS_MAX_MB", first.stat().st_size * 1.5 / 2**20)
    second = features_parquet(
        loaded, dataset, ["conv_2"], out=path_of(loaded, dataset, ["conv_2"], folder)
    )
    assert sorted(folder.glob("*.parquet")) == [second]


def test_a_recipe_round_trips_through_json():
    recipe = Recipe(**RECIPE)
    assert recipe.layers == ("conv_1", "conv_3")
    text = recipe.to_json()
    assert json.loads(text) == {**RECIPE, "drawing": None}
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


# --- the Insights page's export ------------------------------------------------------------


def test_the_insights_page_writes_the_export_to_disk_and_offers_only_a_finished_file(
    tmp_path, monkeypatch
):
    from cnnlens.ui.resources import PASS_BATCH
    from tests.test_app import open_app

    digits = write_dataset(tmp_path / "digits", [i % 4 for i in range(10)], size=28, seed=5)
    monkeypatch.setenv("CNNLENS_DATASET", str(digits))
    monkeypatch.setenv("CNNLENS_CACHE_DIR", str(tmp_path / "cache"))
    loaded, dataset, layers = open_model("demo"), load_dataset(digits), ["conv_1", "conv_2"]
    # An export cancelled after its first batch: its parts wait beside the file.
    out = path_of(loaded, dataset, layers)
    features_parquet(loaded, dataset, layers, out=out, batch_size=4, should_stop=lambda: True)
    assert out.parent == tmp_path / "cache" / "exports" and not out.exists()

    at = open_app("insights.py", layers=",".join(layers))
    assert not at.get("download_button")  # nothing half-written is offered
    go_on = at.button(key="insights_export_start")
    assert go_on.label == "Go on with the dataset's features (Parquet)"
    go_on.click().run()
    assert not at.exception, at.exception
    (offered,) = at.get("download_button")
    assert "Parquet" in offered.proto.label and offered.proto.deferred_file_id
    reference = extract_to_parquet(
        loaded, dataset, tmp_path / "cli.parquet", layers, batch_size=PASS_BATCH
    )
    assert pq.read_table(out).equals(pq.read_table(reference.out))
    # The session keeps the file's name at most, never its bytes.
    kept = list(at.session_state.to_dict().values())
    while kept:
        value = kept.pop()
        assert not isinstance(value, bytes)
        kept.extend(value if isinstance(value, tuple | list) else [])
