"""Datasets in the seed's layout: the seeded pick, bad rows, image loading."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnlens import MAX_IMAGE_PIXELS, demo_dataset, load_dataset, open_image, to_mode
from cnnlens.models import DEMO_DATASET_DIR
from tests.generated import write_dataset


def seed_recipe_pick(root: Path, seed: int) -> str:
    """The seed recipe, verbatim in spirit: RandomState(seed).choice(train.filename)."""
    train = pd.read_csv(root / "train.csv")
    return np.random.RandomState(seed).choice(train.filename)


def test_demo_pick_for_seed_128_is_the_seed_recipes_pick():
    dataset = demo_dataset()
    assert dataset.pick(128) == seed_recipe_pick(DEMO_DATASET_DIR, 128)
    assert dataset.pick(128) == "3282.png"


@pytest.mark.parametrize("seed", [0, 1, 7, 128, 2024])
def test_pick_matches_the_recipe_for_any_seed(small_dataset, seed):
    assert load_dataset(small_dataset).pick(seed) == seed_recipe_pick(small_dataset, seed)


def test_demo_dataset_layout():
    dataset = demo_dataset()
    assert len(dataset.index) == 4000 and dataset.problems == []
    assert len(dataset.test_index) == 1000 and list(dataset.test_index.columns) == ["filename"]
    assert dataset.labels == list(range(10))
    assert dataset.index["label"].value_counts().min() > 300


def test_a_left_out_pick_takes_the_next_draw_of_the_same_generator(small_dataset):
    first = seed_recipe_pick(small_dataset, 128)
    (small_dataset / "train" / first).unlink()
    dataset = load_dataset(small_dataset)
    assert (first, "no such file in train/") in dataset.problems
    rng = np.random.RandomState(128)
    names = pd.read_csv(small_dataset / "train.csv").filename
    draws = [rng.choice(names) for _ in range(50)]
    assert draws[0] == first
    assert dataset.pick(128) == next(name for name in draws if name != first)


def test_pick_many_is_distinct_reproducible_and_starts_with_pick(small_dataset):
    dataset = load_dataset(small_dataset)
    for n in (5, 15, 20, 50):
        names = dataset.pick_many(7, n)
        assert len(names) == min(n, 20) == len(set(names))
        assert names == dataset.pick_many(7, n)
        assert names[0] == dataset.pick(7)
    assert dataset.pick_many(7, 5) != dataset.pick_many(8, 5)


def test_bad_rows_are_left_out_with_reasons(tmp_path):
    root = write_dataset(tmp_path / "d", [0, 1, 2, 3])
    (root / "train" / "notes.png").write_text("this is not a picture")
    (tmp_path / "secret.png").write_bytes((root / "train" / "img_0.png").read_bytes())
    with open(root / "train.csv", "a") as csv:
        csv.write("img_1.png,1\n")  # duplicate
        csv.write("missing.png,1\n")
        csv.write("notes.png,2\n")
        csv.write("../secret.png,3\n")
        csv.write("/etc/passwd,3\n")
        csv.write(",3\n")
        csv.write("img_2.png,\n")  # duplicate too, checked first
    dataset = load_dataset(root)
    assert list(dataset.index["filename"]) == ["img_0.png", "img_1.png", "img_2.png", "img_3.png"]
    assert dataset.problems == [
        ("img_1.png", "duplicate of line 3"),
        ("missing.png", "no such file in train/"),
        ("notes.png", "not an image Pillow can read"),
        ("../secret.png", "the path leaves the dataset folder"),
        ("/etc/passwd", "the path leaves the dataset folder"),
        ("(line 11)", "the filename is empty"),
        ("img_2.png", "duplicate of line 4"),
    ]
    with pytest.raises(ValueError, match="not a usable image"):
        dataset.load_image("../secret.png")


def test_row_without_a_label_is_left_out(tmp_path):
    root = write_dataset(tmp_path / "d", [0, 1])
    (root / "train.csv").write_text("filename,label\nimg_0.png,\nimg_1.png,5\n")
    dataset = load_dataset(root)
    assert dataset.problems == [("img_0.png", "line 2 has no label")]
    assert list(dataset.index["label"]) == [5]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "train.csv is empty"),
        ("name,label\na.png,1\n", "train.csv has no filename column"),
        ("filename\na.png\n", "train.csv has no label column"),
        ("filename,label\n", "has a header but no rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a readable CSV"),
    ],
)
def test_broken_csv_raises_a_clear_error(tmp_path, content, message):
    root = tmp_path / "d"
    (root / "train").mkdir(parents=True)
    path = root / "train.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        load_dataset(root)


def test_missing_folder_or_csv(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no train.csv"):
        load_dataset(tmp_path)


def test_extra_columns_and_the_seeds_test_csv_name(tmp_path):
    root = write_dataset(tmp_path / "d", [0, 1, 2])
    (root / "train.csv").write_text(
        "filename,label,source\nimg_0.png,0,a\nimg_1.png,1,b\nimg_2.png,2,c\n"
    )
    (root / "test").mkdir()
    Image.new("L", (8, 8), 9).save(root / "test" / "t.png")
    (root / "Test_fCbTej3.csv").write_text("filename\nt.png\ngone.png\n")
    dataset = load_dataset(root)
    assert list(dataset.index["source"]) == ["a", "b", "c"]
    assert list(dataset.test_index["filename"]) == ["t.png"]
    assert dataset.test_problems == [("gone.png", "no such file in test/")]
    assert dataset.pick(3, split="test") == "t.png"
    assert np.asarray(dataset.load_image("t.png", split="test")).max() == 9


def test_load_image_returns_the_pixels_in_the_models_mode():
    dataset = demo_dataset()
    name = dataset.pick(128)
    gray = dataset.load_image(name, "L")
    assert gray.mode == "L" and gray.size == (28, 28)
    raw = np.asarray(Image.open(DEMO_DATASET_DIR / "train" / name))
    assert np.array_equal(np.asarray(gray), raw)
    rgb = dataset.load_image(name, "RGB")
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb)[..., 1], raw)


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_unusual_modes_convert_by_value_not_by_clipping():
    sixteen = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert np.asarray(to_mode(open_image(png_bytes(sixteen)), "L")).tolist() == [[0, 128, 255]]
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))  # no ink: white
    assert np.asarray(to_mode(cmyk, "RGB")).min() == 255
    rgba = Image.new("RGBA", (2, 1), (255, 255, 255, 0))
    rgba.putpixel((1, 0), (255, 255, 255, 255))
    assert np.asarray(to_mode(rgba, "L")).tolist() == [[0, 255]]
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([10, 20, 30])
    assert np.asarray(to_mode(palette, "RGB")).tolist() == [[[10, 20, 30]]]
    with pytest.raises(ValueError, match="mode must be 'L'"):
        to_mode(rgba, "CMYK")


def test_corrupt_truncated_and_huge_images_raise_clear_errors():
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        open_image(b"hello", name="hello.png")
    good = png_bytes(Image.new("L", (64, 64), 5))
    with pytest.raises(ValueError, match="damaged or truncated"):
        open_image(good[: len(good) // 2], name="half.png")
    side = int(MAX_IMAGE_PIXELS**0.5) + 100
    bomb = png_bytes(Image.new("1", (side, side)))  # tiny file, huge canvas
    with pytest.raises(ValueError, match=r"megapixels, over the 150 MP limit"):
        open_image(bomb, name="bomb.png")


def test_large_images_are_scaled_down_on_load():
    big = Image.new("L", (6000, 3000), 200)
    image = open_image(png_bytes(big, "JPEG"))
    assert max(image.size) <= 2048 and image.size[0] == 2 * image.size[1]
    assert abs(int(np.asarray(image).mean()) - 200) <= 1
